//! Reward plugin: is the response's final number the reference solution's? For GRPO on
//! arithmetic word problems (GSM8K and the like).
//!
//! The reference answer is the final number of the episode's `reference` (the reference
//! solution): the first number after its last `####` if it has one ("... #### 40"), else its last
//! number ("23 + 17 = 40. The answer is 40."). An episode without a reference, or whose reference
//! has no number, is an error (the host names the episode's index).
//!
//! The response's answer is the first number after its last `####`; else, if it has none, the
//! first number after its last "answer is" (ASCII letters in any case); else, with `fallback:
//! "last-number"`, its last number. A marker with no number after it gives no answer, and no
//! answer is scored incorrect.
//!
//! A number is ASCII digits, with an optional sign (`-` or `+`, not right after a letter or a
//! digit: "3-5" is 3 and 5), thousands commas in groups of three ("1,234"), a decimal part
//! ("2.5"; the "." ending a sentence is not one) and a fraction with a whole denominator ("3/4",
//! "-1.5/2"). "12 apples" is 12 and "$1,234.50." is 1234.5; ".5" is 5 and "1e3" is 1 then 3.
//! A fraction over zero, or a value past f64's range, is a number without a value: no answer.
//! Numbers are compared as f64 (a fraction is its quotient).
//!
//! Config (all optional):
//! - `correct` (1.0) and `incorrect` (0.0): the score when the answer is within `tolerance` of
//!   the reference's, and when it is not (or there is no answer);
//! - `tolerance` (1e-6): the largest absolute difference counted as equal (finite, >= 0);
//! - `format_bonus` (0.0): added when the response states an answer in the `format`, right or
//!   wrong, so that format and correctness are rewarded separately;
//! - `format`: "hash" (default; "#### 40") or "answer-is" ("The answer is 40"): the marker
//!   occurs and a number follows its last occurrence;
//! - `fallback`: "last-number" (default) or "none": without a marker, the response's answer is
//!   its last number, or it has none.
//!
//! The score is `correct` or `incorrect`, plus `format_bonus` or 0. `bench/math_answer.py` is the
//! same reward as a TRL reward function, for the PyTorch reference runs.

use triad_plugin_sdk::prelude::*;

/// The marker of a GSM8K-style final answer.
pub const HASH: &str = "####";
/// The marker of an answer stated in words (matched with ASCII letters in any case).
pub const ANSWER_IS: &str = "answer is";

/// The form in which a response earns the format bonus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Format {
    /// "#### 40".
    #[default]
    Hash,
    /// "The answer is 40".
    AnswerIs,
}

impl Format {
    /// The marker an answer in this form follows.
    pub fn marker(self) -> &'static str {
        match self {
            Format::Hash => HASH,
            Format::AnswerIs => ANSWER_IS,
        }
    }
}

impl TryFrom<String> for Format {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "hash" => Ok(Format::Hash),
            "answer-is" => Ok(Format::AnswerIs),
            other => Err(format!(r#"format must be "hash" or "answer-is", got "{other}""#)),
        }
    }
}

/// What a response without a marker answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Fallback {
    /// Its last number.
    #[default]
    LastNumber,
    /// Nothing: it is scored incorrect.
    None,
}

impl TryFrom<String> for Fallback {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "last-number" => Ok(Fallback::LastNumber),
            "none" => Ok(Fallback::None),
            other => Err(format!(r#"fallback must be "last-number" or "none", got "{other}""#)),
        }
    }
}

/// A number found in a text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Number {
    /// Byte offset of its first character (its sign, if any).
    pub start: usize,
    /// Byte offset just past it.
    pub end: usize,
    /// Its value; `None` for a fraction over zero or a value past f64's range.
    pub value: Option<f64>,
}

/// End of the run of ASCII digits starting at `i`.
fn digits_end(b: &[u8], i: usize) -> usize {
    i + b[i.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// The number starting at byte `start`, if one does.
fn number_at(text: &str, start: usize) -> Option<Number> {
    let b = text.as_bytes();
    let mut i = start;
    if matches!(b[i], b'-' | b'+') {
        if start > 0 && b[start - 1].is_ascii_alphanumeric() {
            return None;
        }
        i += 1;
    }
    let whole_end = digits_end(b, i);
    if whole_end == i {
        return None;
    }
    let mut end = whole_end;
    // Thousands groups: ",ddd" not followed by another digit, after at most three digits.
    if whole_end - i <= 3 {
        while b.get(end) == Some(&b',') && digits_end(b, end + 1) == end + 4 {
            end += 4;
        }
    }
    if b.get(end) == Some(&b'.') && digits_end(b, end + 1) > end + 1 {
        end = digits_end(b, end + 1);
    }
    let numerator: String = text[start..end].chars().filter(|&c| c != ',').collect();
    let mut value: f64 = numerator.parse().ok()?;
    if b.get(end) == Some(&b'/') && digits_end(b, end + 1) > end + 1 {
        let denominator_end = digits_end(b, end + 1);
        value /= text[end + 1..denominator_end].parse::<f64>().ok()?;
        end = denominator_end;
    }
    Some(Number { start, end, value: value.is_finite().then_some(value) })
}

/// Every number in `text`, left to right.
pub fn numbers(text: &str) -> Vec<Number> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match number_at(text, i) {
            Some(number) => {
                i = number.end;
                found.push(number);
            }
            None => i += 1,
        }
    }
    found
}

/// The value of the last number in `text`.
pub fn last_number(text: &str) -> Option<f64> {
    numbers(text).last().and_then(|n| n.value)
}

/// Byte offset just past the last occurrence of `marker` (ASCII letters in any case).
fn after_last(text: &str, marker: &str) -> Option<usize> {
    text.to_ascii_lowercase().rfind(marker).map(|i| i + marker.len())
}

/// The value of the first number at or after byte `from`.
fn first_from(numbers: &[Number], from: usize) -> Option<f64> {
    numbers.iter().find(|n| n.start >= from).and_then(|n| n.value)
}

/// The value of the first number after the last `marker` in `text`; `None` without the marker
/// or without a number after it.
pub fn answer_after(text: &str, marker: &str) -> Option<f64> {
    after_last(text, marker).and_then(|from| first_from(&numbers(text), from))
}

/// The reference solution's final answer: the number after its last `####`, else its last
/// number.
pub fn reference_answer(text: &str) -> Option<f64> {
    match after_last(text, HASH) {
        Some(_) => answer_after(text, HASH),
        None => last_number(text),
    }
}

/// A response's answer: the number after its last `####`, else after its last "answer is",
/// else (`Fallback::LastNumber`) its last number.
pub fn extract_answer(text: &str, fallback: Fallback) -> Option<f64> {
    if after_last(text, HASH).is_some() {
        answer_after(text, HASH)
    } else if after_last(text, ANSWER_IS).is_some() {
        answer_after(text, ANSWER_IS)
    } else {
        match fallback {
            Fallback::LastNumber => last_number(text),
            Fallback::None => None,
        }
    }
}

/// Whether `text` states an answer in `format`: a number follows the marker's last occurrence.
pub fn states_answer(text: &str, format: Format) -> bool {
    answer_after(text, format.marker()).is_some()
}

/// The math reward; its fields are its config.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MathAnswer {
    /// Score of a correct answer.
    pub correct: f64,
    /// Score of a wrong or missing answer.
    pub incorrect: f64,
    /// Largest absolute difference counted as equal.
    pub tolerance: f64,
    /// Added when the answer is stated in `format`.
    pub format_bonus: f64,
    /// The form that earns the bonus.
    pub format: Format,
    /// The answer of a response without a marker.
    pub fallback: Fallback,
}

impl Default for MathAnswer {
    fn default() -> Self {
        MathAnswer {
            correct: 1.0,
            incorrect: 0.0,
            tolerance: 1e-6,
            format_bonus: 0.0,
            format: Format::Hash,
            fallback: Fallback::LastNumber,
        }
    }
}

/// At most 100 characters of `text`, for an error message.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{:?}...", &text[..i]),
        None => format!("{text:?}"),
    }
}

impl MathAnswer {
    /// The score of `response` against the reference answer `reference`.
    pub fn reward(&self, response: &str, reference: f64) -> f64 {
        let right = extract_answer(response, self.fallback).is_some_and(|a| (a - reference).abs() <= self.tolerance);
        let base = if right { self.correct } else { self.incorrect };
        base + if states_answer(response, self.format) { self.format_bonus } else { 0.0 }
    }

    /// The score of `response` against the reference solution `reference`; an error when there
    /// is no reference or it has no number.
    pub fn score_texts(&self, response: &str, reference: Option<&str>) -> Result<f64, String> {
        let reference = reference.ok_or(
            "episode has no reference: math-answer compares the response's answer with the reference \
             solution's final number (\"... #### 40\")",
        )?;
        let answer = reference_answer(reference).ok_or_else(|| {
            format!("episode's reference has no final number to compare with: {}", excerpt(reference))
        })?;
        Ok(self.reward(response, answer))
    }
}

impl Plugin for MathAnswer {
    fn init(&mut self) -> Result<(), String> {
        for (field, value) in
            [("correct", self.correct), ("incorrect", self.incorrect), ("format_bonus", self.format_bonus)]
        {
            if !value.is_finite() {
                return Err(format!("{field} must be a finite number, got {value}"));
            }
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(format!("tolerance must be a finite number >= 0, got {}", self.tolerance));
        }
        Ok(())
    }
}

impl Reward for MathAnswer {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        self.score_texts(&episode.response, episode.reference.as_deref())
    }
}

// Exported on wasm only: the export macro defines unmangled `info`, `configure` and `score`
// symbols, which would clash with another reward plugin's where the host's tests link this crate
// natively beside lexicon-sentiment (for `score_texts`).
#[cfg(target_arch = "wasm32")]
export_reward!(MathAnswer);

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;

    /// Hand cases: a response and its answer with the default fallback (the last number).
    /// `bench/math_answer.py` checks the same cases.
    const CASES: &[(&str, Option<f64>)] = &[
        ("#### 1,234", Some(1234.0)),
        ("The answer is 12.", Some(12.0)),
        ("the ANSWER IS -7", Some(-7.0)),
        ("So 3/4 of the cake is left", Some(0.75)),
        ("He paid $1,234.50 in total.", Some(1234.5)),
        ("She has 12 apples", Some(12.0)),
        ("No number here.", None),
        ("", None),
        ("Step 1: 5 + 7 = 12. Step 2: 12 * 2 = 24", Some(24.0)),
        ("Total: 40.", Some(40.0)),
        ("3-5", Some(5.0)),
        ("x = -5", Some(-5.0)),
        ("x=+3", Some(3.0)),
        ("(-0.25)", Some(-0.25)),
        ("The answer is 12 because 3 * 4 = 12. Check: 13", Some(12.0)),
        ("The answer is 5. #### 6", Some(6.0)),
        ("#### 7 then 8", Some(7.0)),
        ("#### none", None),
        ("I think 4. #### ", None),
        ("The answer is unclear, maybe 4", Some(4.0)),
        ("The answer is 12. Another answer is unknown.", None),
        ("1,2345", Some(2345.0)),
        ("12,34", Some(34.0)),
        ("1,234,567 people", Some(1234567.0)),
        ("1234,567", Some(567.0)),
        ("1,000.5", Some(1000.5)),
        ("The answer is: 1,000,000", Some(1000000.0)),
        ("#### -1/2", Some(-0.5)),
        ("1.5/3", Some(0.5)),
        ("72 / 8 = 9", Some(9.0)),
        ("1/0", None),
        ("3.14.15", Some(15.0)),
        ("version v2", Some(2.0)),
        ("####-5", Some(-5.0)),
        ("answer is-5", Some(5.0)),
        ("≈-3 km", Some(-3.0)),
        (".5", Some(5.0)),
        ("1e3", Some(3.0)),
        ("#####42", Some(42.0)),
        ("0.1 + 0.2", Some(0.2)),
        ("007", Some(7.0)),
    ];

    #[test]
    fn hand_cases() {
        for &(text, expected) in CASES {
            assert_eq!(extract_answer(text, Fallback::LastNumber), expected, "{text:?}");
        }
        assert!(CASES.len() >= 30);
    }

    #[test]
    fn numbers_and_their_spans() {
        let text = "Sam had 1,234 apples, ate -3/4 of 12. Then 5-2.";
        let found: Vec<(&str, Option<f64>)> = numbers(text).iter().map(|n| (&text[n.start..n.end], n.value)).collect();
        assert_eq!(
            found,
            [("1,234", Some(1234.0)), ("-3/4", Some(-0.75)), ("12", Some(12.0)), ("5", Some(5.0)), ("2", Some(2.0))]
        );
        // Past f64's range: a number without a value.
        let huge = "9".repeat(400);
        assert_eq!(numbers(&huge), [Number { start: 0, end: 400, value: None }]);
        assert_eq!(last_number(&huge), None);
    }

    #[test]
    fn fallback_none_needs_a_marker() {
        assert_eq!(extract_answer("She has 12 apples", Fallback::None), None);
        assert_eq!(extract_answer("The answer is 12.", Fallback::None), Some(12.0));
        assert_eq!(extract_answer("so #### 12", Fallback::None), Some(12.0));
    }

    #[test]
    fn reference_answers() {
        assert_eq!(reference_answer("23 + 17 = 40. The answer is 40."), Some(40.0));
        assert_eq!(reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n48+24 = 72\n#### 72"), Some(72.0));
        assert_eq!(reference_answer("#### 1,000"), Some(1000.0));
        // Without `####`, the last number even after "answer is".
        assert_eq!(reference_answer("The answer is 5, not 6"), Some(6.0));
        assert_eq!(reference_answer("no number"), None);
        assert_eq!(reference_answer("12 #### x"), None);
    }

    fn episode(response: &str, reference: Option<&str>) -> Episode {
        Episode { prompt: "Q".into(), response: response.into(), reference: reference.map(Into::into) }
    }

    #[test]
    fn scores_with_defaults() {
        let mut plugin: MathAnswer = configure("{}").expect("config");
        let mut score = |response: &str| plugin.score(&episode(response, Some("... #### 40"))).expect("score");
        assert_eq!(score("#### 40"), 1.0);
        assert_eq!(score("The answer is 40."), 1.0);
        assert_eq!(score("40"), 1.0);
        assert_eq!(score("40.0000001"), 1.0);
        assert_eq!(score("40.00001"), 0.0);
        assert_eq!(score("#### 41"), 0.0);
        assert_eq!(score("It is 40, I think. #### 39"), 0.0);
        assert_eq!(score("80/2"), 1.0);
        assert_eq!(score("nothing"), 0.0);
    }

    #[test]
    fn format_bonus_is_separate_from_correctness() {
        let hash: MathAnswer = configure(r#"{"format_bonus": 0.25}"#).expect("config");
        assert_eq!(hash.reward("#### 40", 40.0), 1.25);
        assert_eq!(hash.reward("#### 41", 40.0), 0.25);
        assert_eq!(hash.reward("The answer is 40", 40.0), 1.0);
        assert_eq!(hash.reward("#### forty", 40.0), 0.0);
        let words: MathAnswer =
            configure(r#"{"format_bonus": 0.5, "format": "answer-is", "correct": 2, "incorrect": -1}"#)
                .expect("config");
        assert_eq!(words.reward("The answer is 40", 40.0), 2.5);
        assert_eq!(words.reward("The Answer Is 39", 40.0), -0.5);
        assert_eq!(words.reward("#### 40", 40.0), 2.0);
        // "answer is" followed by a number earns the bonus even where `####` gives the answer.
        assert_eq!(words.reward("The answer is 39. #### 40", 40.0), 2.5);
        let strict: MathAnswer = configure(r#"{"tolerance": 0, "fallback": "none"}"#).expect("config");
        assert_eq!(strict.reward("40", 40.0), 0.0);
        assert_eq!(strict.reward("#### 40.0000001", 40.0), 0.0);
        assert_eq!(strict.reward("#### 1/3", 1.0 / 3.0), 1.0);
    }

    #[test]
    fn a_missing_or_numberless_reference_is_an_error() {
        let mut plugin = MathAnswer::default();
        let err = plugin.score(&episode("#### 4", None)).expect_err("no reference");
        assert!(err.contains("no reference"), "{err}");
        let err = plugin.score(&episode("#### 4", Some("four"))).expect_err("no number");
        assert!(err.contains("no final number") && err.contains("\"four\""), "{err}");
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, field) in [
            (r#"{"tolerance": -1}"#, "tolerance"),
            (r#"{"format": "boxed"}"#, "format must be"),
            (r#"{"fallback": "first-number"}"#, "fallback must be"),
            (r#"{"format_bonsu": 0.1}"#, "format_bonsu"),
        ] {
            let err = configure::<MathAnswer>(config).err().unwrap_or_else(|| panic!("{config} accepted"));
            assert!(err.message.contains(field), "{config}: {}", err.message);
        }
    }
}
