"""Make tests/fixture.json: real trivia answers, predicted variants, and SQuAD exact match.

Run from the repository root with PyYAML installed (`~/.cache/triad/venv/bin/pip install pyyaml`):

    python3 -m pip download --no-deps -d ~/.cache/triad/pip chatterbot-corpus==1.3.3
    ~/.cache/triad/venv/bin/python plugins/exact-match/tests/make_fixture.py \
        ~/.cache/triad/pip/chatterbot_corpus-1.3.3-py2.py3-none-any.whl

Text: the answers in chatterbot_corpus/data/english/trivia.yml of PyPI wheel
chatterbot-corpus==1.3.3 (references). Predictions are those answers changed by a fixed rule
(case, articles, punctuation, spacing, an extra word, another question's answer). Expected
matches come from `normalize_answer` of the SQuAD v1.1 evaluation script, copied below with
each of its four steps made optional.
"""
import json
import re
import string
import sys
import zipfile

import yaml

OUT = __file__.rsplit("/", 1)[0] + "/fixture.json"


def normalize_answer(s, lowercase=True, strip_punctuation=True, strip_articles=True,
                     collapse_whitespace=True):
    """SQuAD v1.1's normalize_answer: lower, remove punctuation, articles, extra whitespace."""

    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    if lowercase:
        s = s.lower()
    if strip_punctuation:
        s = remove_punc(s)
    if strip_articles:
        s = remove_articles(s)
    if collapse_whitespace:
        s = white_space_fix(s)
    return s


def variant(answer, kind, other):
    if kind == "identical":
        return answer
    if kind == "lowercase":
        return answer.lower()
    if kind == "article":
        return "the " + answer
    if kind == "period":
        return answer.rstrip(".") + "."
    if kind == "spacing":
        return "  " + answer.replace(" ", "   ") + " \n"
    if kind == "no_punctuation":
        return "".join(c for c in answer if c.isalnum() or c.isspace())
    if kind == "uppercase":
        return answer.upper()
    if kind == "extra_word":
        return "Probably " + answer
    if kind == "other_answer":
        return other
    raise ValueError(kind)


KINDS = ["identical", "lowercase", "article", "period", "spacing", "no_punctuation",
         "uppercase", "extra_word", "other_answer"]
CONFIGS = {
    "default": {},
    "no_lowercase": {"lowercase": False},
    "no_punctuation": {"strip_punctuation": False},
    "no_articles": {"strip_articles": False},
    "no_whitespace": {"collapse_whitespace": False},
    "raw": {"lowercase": False, "strip_punctuation": False, "strip_articles": False,
            "collapse_whitespace": False},
}


def main():
    with zipfile.ZipFile(sys.argv[1]) as z:
        convs = yaml.safe_load(z.read("chatterbot_corpus/data/english/trivia.yml"))["conversations"]
    grouped = {}
    for conv in convs:
        if len(conv) >= 2 and isinstance(conv[1], str):
            grouped.setdefault(conv[0], []).append(conv[1])
    answers = [refs for refs in grouped.values() if len(refs[0]) <= 80][:180]

    pairs = []
    for i, refs in enumerate(answers):
        kind = KINDS[i % len(KINDS)]
        other = answers[(i * 5 + 3) % len(answers)][0]
        pairs.append({"kind": kind, "pred": variant(refs[0], kind, other), "refs": refs})
    for p in pairs:
        p["match"] = {name: any(normalize_answer(p["pred"], **cfg) == normalize_answer(r, **cfg)
                                for r in p["refs"]) for name, cfg in CONFIGS.items()}
    totals = {name: sum(p["match"][name] for p in pairs) for name in CONFIGS}
    fixture = {
        "_source": "made by plugins/exact-match/tests/make_fixture.py from PyPI chatterbot-corpus==1.3.3 "
                   "(chatterbot_corpus/data/english/trivia.yml); matches from SQuAD v1.1 normalize_answer",
        "configs": {name: {"normalize": cfg} for name, cfg in CONFIGS.items()},
        "matches": totals, "pairs": pairs,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
