//! Win-rate of one model against another on the same prompts, with a 95% confidence interval,
//! and the blinded file a person can label to give the same figure from human judgement.
//!
//! Each prompt is one outcome for model A: a win (1), a tie (1/2) or a loss (0). The win-rate
//! is the mean outcome; wins, ties and losses are also reported apart. The interval is Wilson's
//! score interval around the mean outcome (good near 0 and 1, where the normal one is not).
//!
//! The human file lists each prompt with the two answers in a random order (a seeded coin per
//! prompt) and no model names; the key that undoes the order is written to a separate file.
//! A person sets `"preferred"` to 1, 2 or "tie" on each line; [`read_labels`] turns the labelled
//! file and the key back into a [`WinRate`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::blocks::splitmix64;
use crate::util::atomic::{FileError, write_atomically};

/// Outcomes of A against B.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinRate {
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

impl WinRate {
    /// From judge scores of A's and B's answers to the same prompts: a tie when the scores
    /// differ by at most `tie_tolerance`.
    pub fn from_scores(a: &[f64], b: &[f64], tie_tolerance: f64) -> WinRate {
        let mut rate = WinRate::default();
        for (x, y) in a.iter().zip(b) {
            if (x - y).abs() <= tie_tolerance {
                rate.ties += 1;
            } else if x > y {
                rate.wins += 1;
            } else {
                rate.losses += 1;
            }
        }
        rate
    }

    pub fn total(&self) -> usize {
        self.wins + self.ties + self.losses
    }

    /// Mean outcome, ties counted half; NaN without outcomes.
    pub fn rate(&self) -> f64 {
        (self.wins as f64 + 0.5 * self.ties as f64) / self.total() as f64
    }

    /// Wilson's 95% score interval around [`rate`](Self::rate).
    pub fn interval(&self) -> (f64, f64) {
        wilson_interval(self.rate(), self.total() as f64)
    }

    /// `0.712 (95% CI 0.646-0.770; 142 wins, 6 ties, 52 losses)`.
    pub fn describe(&self) -> String {
        let (low, high) = self.interval();
        format!(
            "{:.3} (95% CI {low:.3}-{high:.3}; {} wins, {} ties, {} losses)",
            self.rate(),
            self.wins,
            self.ties,
            self.losses
        )
    }
}

/// One line of the file a person labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelItem {
    pub id: usize,
    pub prompt: String,
    pub answer_1: String,
    pub answer_2: String,
    /// 1, 2 or "tie" once labelled; null until then.
    pub preferred: Option<serde_json::Value>,
}

/// Which model wrote `answer_1` of each item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelKey {
    pub model_a: String,
    pub model_b: String,
    /// `a_first[id]`: whether answer 1 of item `id` is model A's.
    pub a_first: Vec<bool>,
}

/// Why labels cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}:{line}: {message}")]
    Line { file: String, line: usize, message: String },
}

/// Write the blinded `labels` file and its `key` for the answers of A and B to `prompts`.
pub fn write_label_files(
    labels: &Path,
    key: &Path,
    prompts: &[String],
    (model_a, answers_a): (&str, &[String]),
    (model_b, answers_b): (&str, &[String]),
    seed: u64,
) -> Result<(), FileError> {
    let mut state = seed ^ 0x6c62_272e_07bb_0142;
    let mut lines = String::new();
    let mut a_first = Vec::with_capacity(prompts.len());
    for (id, prompt) in prompts.iter().enumerate() {
        let first_is_a = splitmix64(&mut state) & 1 == 1;
        let (one, two) = if first_is_a { (&answers_a[id], &answers_b[id]) } else { (&answers_b[id], &answers_a[id]) };
        let item =
            LabelItem { id, prompt: prompt.clone(), answer_1: one.clone(), answer_2: two.clone(), preferred: None };
        lines.push_str(&serde_json::to_string(&item).map_err(|e| FileError::new(labels, e))?);
        lines.push('\n');
        a_first.push(first_is_a);
    }
    write_atomically(labels, lines.as_bytes())?;
    let key_json = LabelKey { model_a: model_a.into(), model_b: model_b.into(), a_first };
    write_atomically(key, &serde_json::to_vec_pretty(&key_json).map_err(|e| FileError::new(key, e))?)
}

/// A's win-rate from a labelled file and its key; unlabelled lines are skipped.
pub fn read_labels(labels: &Path, key: &Path) -> Result<(LabelKey, WinRate), LabelError> {
    let key_bytes = std::fs::read(key).map_err(|e| FileError::new(key, e))?;
    let key_json: LabelKey = serde_json::from_slice(&key_bytes).map_err(|e| LabelError::Line {
        file: key.display().to_string(),
        line: e.line(),
        message: e.to_string(),
    })?;
    let text = std::fs::read_to_string(labels).map_err(|e| FileError::new(labels, e))?;
    let mut rate = WinRate::default();
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let error = |message: String| LabelError::Line { file: labels.display().to_string(), line: index + 1, message };
        let item: LabelItem = serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
        let a_first = *key_json.a_first.get(item.id).ok_or_else(|| {
            error(format!("item {} is not in the key (it has {} items)", item.id, key_json.a_first.len()))
        })?;
        let preferred = match &item.preferred {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => 1,
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(2) => 2,
            Some(serde_json::Value::String(s)) if s == "1" || s == "2" => s.parse().unwrap_or(0),
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("tie") => 0,
            Some(other) => return Err(error(format!("`preferred` must be 1, 2 or \"tie\", not {other}"))),
        };
        match (preferred, a_first) {
            (0, _) => rate.ties += 1,
            (1, true) | (2, false) => rate.wins += 1,
            _ => rate.losses += 1,
        }
    }
    Ok((key_json, rate))
}

/// The 95% Wilson score interval of a proportion `p` observed over `n` trials (NaN for none).
pub fn wilson_interval(p: f64, n: f64) -> (f64, f64) {
    if n == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_judgements_give_known_rates_and_intervals() {
        let a = [3.0, 1.0, 2.0, 5.0, 0.0];
        let b = [1.0, 1.0, 4.0, 4.0, 0.05];
        let rate = WinRate::from_scores(&a, &b, 0.1);
        assert_eq!(rate, WinRate { wins: 2, ties: 2, losses: 1 });
        assert!((rate.rate() - 0.6).abs() < 1e-12);
        // Wilson's interval for p = 0.7 on n = 100 (textbook value 0.604-0.781).
        let (low, high) = WinRate { wins: 70, ties: 0, losses: 30 }.interval();
        assert!((low - 0.6042).abs() < 1e-3 && (high - 0.7810).abs() < 1e-3, "{low} {high}");
        let (low, high) = WinRate { wins: 10, ties: 0, losses: 0 }.interval();
        // All wins: the interval still leaves room below, n / (n + z²) = 0.7225.
        assert!(high > 0.9999 && (low - 0.7225).abs() < 1e-3, "{low} {high}");
    }

    #[test]
    fn human_labels_round_trip_through_the_blinded_file() {
        let dir = std::env::temp_dir().join(format!("triad-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let prompts: Vec<String> = (0..20).map(|i| format!("prompt {i}")).collect();
        let a: Vec<String> = (0..20).map(|i| format!("good answer {i}")).collect();
        let b: Vec<String> = (0..20).map(|i| format!("bad answer {i}")).collect();
        let (labels, key) = (dir.join("labels.jsonl"), dir.join("key.json"));
        write_label_files(&labels, &key, &prompts, ("ppo", &a), ("sft", &b), 7).expect("write");
        let text = std::fs::read_to_string(&labels).expect("labels");
        assert!(!text.contains("ppo") && !text.contains("sft"), "blinded");
        let firsts = text.lines().filter(|l| l.contains("\"answer_1\":\"good")).count();
        assert!(firsts > 3 && firsts < 17, "the order is randomised: {firsts} of 20 first");
        // A person prefers the good answer, except one tie and two left unlabelled.
        let labelled: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let mut item: LabelItem = serde_json::from_str(line).expect("item");
                item.preferred = match i {
                    0 => Some(serde_json::json!("tie")),
                    1 | 2 => None,
                    _ => Some(serde_json::json!(if item.answer_1.starts_with("good") { 1 } else { 2 })),
                };
                serde_json::to_string(&item).expect("json")
            })
            .collect();
        std::fs::write(&labels, labelled.join("\n")).expect("write labels");
        let (read_key, rate) = read_labels(&labels, &key).expect("read");
        assert_eq!(read_key.model_a, "ppo");
        assert_eq!(rate, WinRate { wins: 17, ties: 1, losses: 0 });
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
