"""The `math-answer` reward plugin (plugins/math-answer) as a TRL reward function, for the
PyTorch reference runs of GRPO on arithmetic word problems.

    from math_answer import math_answer_reward
    GRPOTrainer(..., reward_funcs=[math_answer_reward])   # the dataset has an "answer" column

The rules are the plugin's, to the bit:

- the reference answer is the first number after the last "####" of the reference solution if it
  has one, else its last number; a missing reference, or one without a number, is an error
  naming the completion's index;
- a completion's answer is the first number after its last "####", else after its last "answer
  is" (ASCII letters in any case), else (fallback "last-number") its last number; a marker with
  no number after it gives no answer, which is scored incorrect;
- a number is ASCII digits with an optional sign ("-" or "+", not right after an ASCII letter or
  digit), thousands commas in groups of three, a decimal part and a fraction with a whole
  denominator ("3/4"); a fraction over zero or a value past float's range has no value;
- the score is `correct` (1.0) if |answer - reference| <= `tolerance` (1e-6), else `incorrect`
  (0.0), plus `format_bonus` (0.0) when a number follows the last marker of `format` ("hash":
  "####", or "answer-is": "answer is").

Dependency-free: `python3 bench/math_answer.py` checks the plugin's hand cases.
"""

import math
import re

HASH = "####"
ANSWER_IS = "answer is"

# The plugin's scanner as a regular expression: leftmost, non-overlapping matches.
_NUMBER = re.compile(
    r"(?:(?<![A-Za-z0-9])[-+])?"  # a sign, not right after an ASCII letter or digit
    r"(?:[0-9]{1,3}(?:,[0-9]{3}(?![0-9]))+|[0-9]+)"  # digits, maybe in thousands groups
    r"(?:\.[0-9]+)?"  # a decimal part
    r"(?:/([0-9]+))?"  # a fraction's denominator
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def numbers(text):
    """Every number in `text`: (start, end, value), value None for a fraction over zero or a
    value past float's range."""
    found = []
    for match in _NUMBER.finditer(text):
        token = match.group(0)
        denominator = match.group(1)
        numerator = token[: match.start(1) - match.start(0) - 1] if denominator is not None else token
        value = float(numerator.replace(",", ""))
        if denominator is not None:
            den = float(denominator)
            value = value / den if den != 0 else None
        if value is not None and not math.isfinite(value):
            value = None
        found.append((match.start(), match.end(), value))
    return found


def last_number(text):
    found = numbers(text)
    return found[-1][2] if found else None


def _after_last(text, marker):
    """Index just past the last `marker` in `text` (ASCII letters in any case), or None."""
    i = text.translate(_ASCII_LOWER).rfind(marker)
    return None if i < 0 else i + len(marker)


def answer_after(text, marker):
    """The first number after the last `marker`, or None."""
    start = _after_last(text, marker)
    if start is None:
        return None
    for begin, _, value in numbers(text):
        if begin >= start:
            return value
    return None


def reference_answer(text):
    if _after_last(text, HASH) is not None:
        return answer_after(text, HASH)
    return last_number(text)


def extract_answer(text, fallback="last-number"):
    if _after_last(text, HASH) is not None:
        return answer_after(text, HASH)
    if _after_last(text, ANSWER_IS) is not None:
        return answer_after(text, ANSWER_IS)
    return last_number(text) if fallback == "last-number" else None


def states_answer(text, format="hash"):
    return answer_after(text, HASH if format == "hash" else ANSWER_IS) is not None


def reward(response, reference, correct=1.0, incorrect=0.0, format_bonus=0.0, format="hash",
           fallback="last-number", tolerance=1e-6):
    """The score of `response` against the reference answer `reference` (a float)."""
    answer = extract_answer(response, fallback)
    right = answer is not None and abs(answer - reference) <= tolerance
    return (correct if right else incorrect) + (format_bonus if states_answer(response, format) else 0.0)


def _check_config(correct, incorrect, format_bonus, format, fallback, tolerance):
    for name, value in [("correct", correct), ("incorrect", incorrect), ("format_bonus", format_bonus)]:
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if format not in ("hash", "answer-is"):
        raise ValueError(f'format must be "hash" or "answer-is", got "{format}"')
    if fallback not in ("last-number", "none"):
        raise ValueError(f'fallback must be "last-number" or "none", got "{fallback}"')


def math_answer_reward(completions, answer, correct=1.0, incorrect=0.0, format_bonus=0.0, format="hash",
                       fallback="last-number", tolerance=1e-6, **kwargs):
    """TRL reward function: one score per completion. `completions` are strings, or message lists
    (conversational data: the last message's "content" is scored); `answer` is the dataset's
    reference-solution column. Other dataset columns arrive in `kwargs` and are ignored; bind
    another config with functools.partial."""
    _check_config(correct, incorrect, format_bonus, format, fallback, tolerance)
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    scores = []
    for i, (completion, solution) in enumerate(zip(completions, answer)):
        response = completion if isinstance(completion, str) else completion[-1]["content"]
        if solution is None:
            raise ValueError(f"completion {i} has no reference answer")
        expected = reference_answer(solution)
        if expected is None:
            raise ValueError(f"completion {i}: the reference has no final number to compare with: {solution[:100]!r}")
        scores.append(reward(response, expected, correct, incorrect, format_bonus, format, fallback, tolerance))
    return scores


# The plugin's hand cases (plugins/math-answer/src/lib.rs, `CASES`): a response and its answer
# with the default fallback.
CASES = [
    ("#### 1,234", 1234.0),
    ("The answer is 12.", 12.0),
    ("the ANSWER IS -7", -7.0),
    ("So 3/4 of the cake is left", 0.75),
    ("He paid $1,234.50 in total.", 1234.5),
    ("She has 12 apples", 12.0),
    ("No number here.", None),
    ("", None),
    ("Step 1: 5 + 7 = 12. Step 2: 12 * 2 = 24", 24.0),
    ("Total: 40.", 40.0),
    ("3-5", 5.0),
    ("x = -5", -5.0),
    ("x=+3", 3.0),
    ("(-0.25)", -0.25),
    ("The answer is 12 because 3 * 4 = 12. Check: 13", 12.0),
    ("The answer is 5. #### 6", 6.0),
    ("#### 7 then 8", 7.0),
    ("#### none", None),
    ("I think 4. #### ", None),
    ("The answer is unclear, maybe 4", 4.0),
    ("The answer is 12. Another answer is unknown.", None),
    ("1,2345", 2345.0),
    ("12,34", 34.0),
    ("1,234,567 people", 1234567.0),
    ("1234,567", 567.0),
    ("1,000.5", 1000.5),
    ("The answer is: 1,000,000", 1000000.0),
    ("#### -1/2", -0.5),
    ("1.5/3", 0.5),
    ("72 / 8 = 9", 9.0),
    ("1/0", None),
    ("3.14.15", 15.0),
    ("version v2", 2.0),
    ("####-5", -5.0),
    ("answer is-5", 5.0),
    ("\u2248-3 km", -3.0),
    (".5", 5.0),
    ("1e3", 3.0),
    ("#####42", 42.0),
    ("0.1 + 0.2", 0.2),
    ("007", 7.0),
]


def _self_check():
    for text, expected in CASES:
        got = extract_answer(text)
        assert got == expected, f"{text!r}: {got} != {expected}"

    text = "Sam had 1,234 apples, ate -3/4 of 12. Then 5-2."
    spans = [(text[s:e], v) for s, e, v in numbers(text)]
    assert spans == [("1,234", 1234.0), ("-3/4", -0.75), ("12", 12.0), ("5", 5.0), ("2", 2.0)], spans
    assert numbers("9" * 400) == [(0, 400, None)]

    assert extract_answer("She has 12 apples", "none") is None
    assert extract_answer("The answer is 12.", "none") == 12.0
    assert extract_answer("so #### 12", "none") == 12.0

    assert reference_answer("23 + 17 = 40. The answer is 40.") == 40.0
    assert reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n48+24 = 72\n#### 72") == 72.0
    assert reference_answer("#### 1,000") == 1000.0
    assert reference_answer("The answer is 5, not 6") == 6.0
    assert reference_answer("no number") is None
    assert reference_answer("12 #### x") is None

    responses = ["#### 40", "The answer is 40.", "40", "40.0000001", "40.00001", "#### 41",
                 "It is 40, I think. #### 39", "80/2", "nothing"]
    got = math_answer_reward(responses, ["... #### 40"] * len(responses))
    assert got == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0], got

    assert reward("#### 40", 40.0, format_bonus=0.25) == 1.25
    assert reward("#### 41", 40.0, format_bonus=0.25) == 0.25
    assert reward("The answer is 40", 40.0, format_bonus=0.25) == 1.0
    assert reward("#### forty", 40.0, format_bonus=0.25) == 0.0
    words = dict(format_bonus=0.5, format="answer-is", correct=2.0, incorrect=-1.0)
    assert reward("The answer is 40", 40.0, **words) == 2.5
    assert reward("The Answer Is 39", 40.0, **words) == -0.5
    assert reward("#### 40", 40.0, **words) == 2.0
    assert reward("The answer is 39. #### 40", 40.0, **words) == 2.5
    strict = dict(tolerance=0.0, fallback="none")
    assert reward("40", 40.0, **strict) == 0.0
    assert reward("#### 40.0000001", 40.0, **strict) == 0.0
    assert reward("#### 1/3", 1.0 / 3.0, **strict) == 1.0

    # Conversational completions: the last message is scored.
    chat = [[{"role": "assistant", "content": "#### 40"}], [{"role": "assistant", "content": "#### 4"}]]
    assert math_answer_reward(chat, ["#### 40", "#### 40"], format_bonus=0.1) == [1.1, 0.1]

    for bad in [None, "four"]:
        try:
            math_answer_reward(["#### 4"], [bad])
        except ValueError as e:
            assert "completion 0" in str(e), e
        else:
            raise AssertionError(f"reference {bad!r} accepted")
    try:
        math_answer_reward(["4"], ["4"], tolerance=-1.0)
    except ValueError as e:
        assert "tolerance" in str(e), e
    else:
        raise AssertionError("tolerance -1 accepted")
    print(f"math_answer.py: {len(CASES)} hand cases and the scoring checks agree with the plugin's tests")


if __name__ == "__main__":
    _self_check()
