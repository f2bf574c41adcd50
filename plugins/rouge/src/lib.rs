//! ROUGE-1, ROUGE-2 and ROUGE-L (Lin 2004), computed exactly as Google's `rouge-score` package
//! does with `RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=False)`, averaged over
//! records.
//!
//! Tokens are rouge-score's default: the text is lowercased, every run of characters other than
//! ASCII `a-z0-9` becomes a separator (so accented letters split words, as in rouge-score), and
//! empty pieces are dropped. ROUGE-N counts clipped n-gram overlaps; ROUGE-L uses the longest
//! common subsequence of the two token lists. With several references, each ROUGE type takes the
//! reference with the highest F1 (the first one on a tie), as `score_multi` does.
//!
//! Statistics per record: precision, recall and F1 of each type, then a count of 1; the host sums
//! them. Reported values: `rouge1`, `rouge2`, `rougeL` (mean F1, 0-1 scale) and
//! `rouge1_precision`, `rouge1_recall`, ... (mean precision and recall).
//!
//! Config: none (an empty object).

use std::collections::HashMap;

use triad_plugin_sdk::prelude::*;

/// The ROUGE types reported, in the order of the statistics vector.
const TYPES: [&str; 3] = ["rouge1", "rouge2", "rougeL"];

/// The ROUGE metric. It has no configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rouge {}

impl Plugin for Rouge {}

/// Precision, recall and F1 of one ROUGE type for one prediction/reference pair.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// Overlap over prediction size.
    pub precision: f64,
    /// Overlap over reference size.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Score {
        let f = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Score { precision, recall, f }
    }
}

impl Metric for Rouge {
    fn statistics(&mut self, record: &MetricRecord) -> Result<Vec<f64>, String> {
        if record.references.is_empty() {
            return Err("ROUGE needs at least one reference per prediction".into());
        }
        let prediction = tokenize(&record.prediction);
        let best = score_multi(&record.references, &prediction);
        let mut stats = Vec::with_capacity(3 * TYPES.len() + 1);
        for s in best {
            stats.extend([s.precision, s.recall, s.f]);
        }
        stats.push(1.0);
        Ok(stats)
    }

    fn finish(&mut self, totals: &[f64]) -> Result<Vec<(String, f64)>, String> {
        if totals.is_empty() {
            return Err("ROUGE saw no records".into());
        }
        if totals.len() != 3 * TYPES.len() + 1 {
            return Err(format!("ROUGE expects {} statistics, got {}", 3 * TYPES.len() + 1, totals.len()));
        }
        let count = totals[3 * TYPES.len()];
        if count <= 0.0 {
            return Err("ROUGE saw no records".into());
        }
        let mut values = Vec::with_capacity(3 * TYPES.len());
        for (k, name) in TYPES.iter().enumerate() {
            values.push((name.to_string(), totals[3 * k + 2] / count));
        }
        for (k, name) in TYPES.iter().enumerate() {
            values.push((format!("{name}_precision"), totals[3 * k] / count));
            values.push((format!("{name}_recall"), totals[3 * k + 1] / count));
        }
        Ok(values)
    }
}

export_metric!(Rouge);

/// rouge-score's default tokenizer (`rouge_score.tokenize.tokenize` without a stemmer).
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of a tokenized prediction against each reference, keeping per
/// type the reference with the best F1 (the first on a tie, like `numpy.argmax`).
pub fn score_multi(references: &[String], prediction: &[String]) -> [Score; 3] {
    let mut best: [Option<Score>; 3] = [None; 3];
    for reference in references {
        let reference = tokenize(reference);
        let scores =
            [rouge_n(&reference, prediction, 1), rouge_n(&reference, prediction, 2), rouge_l(&reference, prediction)];
        for (slot, score) in best.iter_mut().zip(scores) {
            if slot.is_none_or(|b| score.f > b.f) {
                *slot = Some(score);
            }
        }
    }
    best.map(Option::unwrap_or_default)
}

/// ROUGE-N: clipped n-gram overlap; an empty side counts as size 1, as in rouge-score.
pub fn rouge_n(reference: &[String], prediction: &[String], n: usize) -> Score {
    let ref_ngrams = ngram_counts(reference, n);
    let pred_ngrams = ngram_counts(prediction, n);
    let overlap: usize =
        ref_ngrams.iter().map(|(ngram, &count)| count.min(pred_ngrams.get(ngram).copied().unwrap_or(0))).sum();
    let ref_total = reference.len().saturating_sub(n - 1);
    let pred_total = prediction.len().saturating_sub(n - 1);
    Score::new(overlap as f64 / pred_total.max(1) as f64, overlap as f64 / ref_total.max(1) as f64)
}

/// ROUGE-L: longest common subsequence over prediction and reference lengths.
pub fn rouge_l(reference: &[String], prediction: &[String]) -> Score {
    if reference.is_empty() || prediction.is_empty() {
        return Score::default();
    }
    let lcs = lcs_length(reference, prediction) as f64;
    Score::new(lcs / prediction.len() as f64, lcs / reference.len() as f64)
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for ngram in tokens.windows(n) {
        *counts.entry(ngram).or_insert(0) += 1;
    }
    counts
}

/// Length of the longest common subsequence, with two rows of the dynamic-programming table so
/// that memory stays linear even for long texts.
fn lcs_length(a: &[String], b: &[String]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y { previous[j] + 1 } else { previous[j + 1].max(current[j]) };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use triad_plugin_sdk::configure;

    /// Real QA answers and review snippets with rouge-score's values; see tests/make_fixture.py.
    const FIXTURE: &str = include_str!("../tests/fixture.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("fixture.json is valid JSON")
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
    }

    fn records(fixture: &Value) -> Vec<MetricRecord> {
        fixture["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| MetricRecord {
                prediction: p["pred"].as_str().expect("pred").to_string(),
                references: strings(&p["refs"]),
            })
            .collect()
    }

    use triad_plugin_sdk::testing::metric as value;

    #[test]
    fn tokenizer_matches_rouge_score() {
        let fixture = fixture();
        for case in fixture["token_cases"].as_array().expect("token_cases") {
            let text = case["text"].as_str().expect("text");
            assert_eq!(tokenize(text), strings(&case["tokens"]), "tokenizing {text:?}");
        }
        // Accented letters are not in [a-z0-9], so rouge-score splits words at them.
        assert_eq!(tokenize("Münch's Guzmán"), ["m", "nch", "s", "guzm", "n"]);
    }

    #[test]
    fn per_pair_scores_match_rouge_score() {
        let fixture = fixture();
        let pairs = fixture["pairs"].as_array().expect("pairs");
        assert!(pairs.len() > 200);
        let mut rouge: Rouge = configure("{}").expect("default config");
        for (pair, record) in pairs.iter().zip(records(&fixture)) {
            let stats = rouge.statistics(&record).expect("statistics");
            for (k, name) in TYPES.iter().enumerate() {
                let expected: Vec<f64> = pair["scores"][name]
                    .as_array()
                    .expect("scores")
                    .iter()
                    .map(|x| x.as_f64().expect("score"))
                    .collect();
                for (j, what) in ["precision", "recall", "f"].iter().enumerate() {
                    let got = stats[3 * k + j];
                    assert!(
                        (got - expected[j]).abs() < 1e-9,
                        "{name} {what} of {:?} vs {:?}: {got} vs rouge-score {}",
                        record.prediction,
                        record.references,
                        expected[j]
                    );
                }
            }
        }
    }

    #[test]
    fn corpus_mean_matches_rouge_score_for_any_chunking() {
        let fixture = fixture();
        let records = records(&fixture);
        let mut rouge = Rouge::default();
        for chunk in [1usize, 3, 64, records.len()] {
            let mut totals = vec![0.0; 10];
            for part in records.chunks(chunk).rev() {
                let mut part_totals = vec![0.0; 10];
                for record in part {
                    let stats = rouge.statistics(record).expect("statistics");
                    part_totals.iter_mut().zip(&stats).for_each(|(t, s)| *t += s);
                }
                totals.iter_mut().zip(&part_totals).for_each(|(t, s)| *t += s);
            }
            assert_eq!(totals[9], records.len() as f64);
            let values = rouge.finish(&totals).expect("finish");
            for name in TYPES {
                let expected = fixture["mean_f"][name].as_f64().expect("mean");
                let got = value(&values, name);
                assert!((got - expected).abs() < 1e-9, "chunks of {chunk}: {name} {got} vs rouge-score {expected}");
            }
        }
    }

    #[test]
    fn hand_checked_example() {
        // Reference 6 tokens, prediction 5; 4 unigrams and 1 bigram overlap; LCS "the cat on mat".
        let reference = tokenize("The cat sat on the mat.");
        let prediction = tokenize("the cat lay on mat");
        let r1 = rouge_n(&reference, &prediction, 1);
        assert!((r1.precision - 4.0 / 5.0).abs() < 1e-12 && (r1.recall - 4.0 / 6.0).abs() < 1e-12);
        let r2 = rouge_n(&reference, &prediction, 2);
        assert!((r2.precision - 1.0 / 4.0).abs() < 1e-12 && (r2.recall - 1.0 / 5.0).abs() < 1e-12);
        let rl = rouge_l(&reference, &prediction);
        assert!((rl.f - 2.0 * 0.8 * (4.0 / 6.0) / (0.8 + 4.0 / 6.0)).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(configure::<Rouge>(r#"{"use_stemmer": true}"#).is_err());
        let mut rouge = Rouge::default();
        let orphan = MetricRecord { prediction: "Sort of.".into(), references: vec![] };
        assert!(rouge.statistics(&orphan).is_err());
        assert!(rouge.finish(&[]).is_err());
        assert!(rouge.finish(&[0.5; 4]).is_err());
    }
}
