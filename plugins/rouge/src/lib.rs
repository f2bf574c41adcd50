//! ROUGE-1, ROUGE-2 and ROUGE-L (Lin 2004), computed exactly as Google's `rouge-score` 0.1.2
//! package does with `RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=...)`, averaged over
//! records.
//!
//! Tokens, with the default tokenizer, are rouge-score's: the text is lowercased, every run of
//! characters other than ASCII `a-z0-9` becomes a separator (so accented letters split words, as
//! in rouge-score), and empty pieces are dropped. ROUGE-N counts clipped n-gram overlaps; ROUGE-L
//! uses the longest common subsequence of the two token lists. With several references, each
//! ROUGE type takes the reference with the highest F1 (the first one on a tie), as `score_multi`
//! does.
//!
//! Statistics per record: precision, recall and F1 of each type, then a count of 1; the host sums
//! them. Reported values: `rouge1`, `rouge2`, `rougeL` (mean F1, 0-1 scale) and
//! `rouge1_precision`, `rouge1_recall`, ... (mean precision and recall).
//!
//! Config (defaults are rouge-score's):
//! - `use_stemmer` (bool, false): Porter-stem every token longer than 3 characters, as
//!   rouge-score's `use_stemmer=True` does with nltk's `PorterStemmer()` (see [`porter`]).
//! - `tokenizer` ("default" | "char", "default"): "default" is rouge-score's tokenizer above,
//!   which drops Chinese text entirely. "char" is for Chinese, Japanese and mixed text: the text is
//!   lowercased, each maximal run of ASCII `a-z0-9` is one token (so English words and numbers stay
//!   whole, and are stemmed with `use_stemmer`), every other character that is alphabetic or
//!   numeric in Unicode (Rust's `char::is_alphanumeric`: the Alphabetic property or a category N
//!   number, Unicode 17) is a token by itself, and everything else (whitespace, punctuation such
//!   as `，。！`, symbols) separates tokens and is dropped, as the default tokenizer drops ASCII
//!   punctuation. On ASCII text it gives the default tokenizer's tokens. Its reference is
//!   rouge-score itself, `RougeScorer(..., tokenizer=...)` given a tokenizer object that applies
//!   this rule (tests/make_fixture.py).

pub mod porter;

use std::collections::HashMap;

use triad_plugin_sdk::prelude::*;

/// The ROUGE types reported, in the order of the statistics vector.
const TYPES: [&str; 3] = ["rouge1", "rouge2", "rougeL"];

/// How texts are split into tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Tokenizer {
    /// rouge-score's own: runs of ASCII `a-z0-9` after lowercasing.
    #[default]
    Default,
    /// Runs of ASCII `a-z0-9`, and every other alphanumeric character alone (for Chinese).
    Char,
}

impl TryFrom<String> for Tokenizer {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "default" => Ok(Tokenizer::Default),
            "char" => Ok(Tokenizer::Char),
            _ => Err(format!("tokenizer must be \"default\" or \"char\", got {name:?}")),
        }
    }
}

/// The ROUGE metric and its configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rouge {
    /// Porter-stem tokens longer than 3 characters, as rouge-score's `use_stemmer`.
    pub use_stemmer: bool,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
}

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
        let prediction = self.tokenize(&record.prediction);
        let references: Vec<Vec<String>> = record.references.iter().map(|r| self.tokenize(r)).collect();
        let best = score_multi(&references, &prediction);
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

impl Rouge {
    /// The tokens of one text under this configuration's tokenizer and stemmer.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let tokens = match self.tokenizer {
            Tokenizer::Default => tokenize(text),
            Tokenizer::Char => tokenize_char(text),
        };
        if !self.use_stemmer {
            return tokens;
        }
        // rouge_score/tokenize.py: "Only stem words more than 3 characters long" (characters,
        // not bytes: a Chinese character alone is never stemmed).
        tokens.into_iter().map(|t| if t.chars().count() > 3 { porter::stem(&t) } else { t }).collect()
    }
}

fn is_ascii_token_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// rouge-score's default tokenizer (`rouge_score.tokenize.tokenize` without a stemmer).
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !is_ascii_token_char(c)).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// The "char" tokenizer: runs of ASCII `a-z0-9` after lowercasing, and each other alphanumeric
/// character as a token of its own; the rest separates.
pub fn tokenize_char(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.to_lowercase().chars() {
        if is_ascii_token_char(c) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if !c.is_ascii() && c.is_alphanumeric() {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of a tokenized prediction against each tokenized reference,
/// keeping per type the reference with the best F1 (the first on a tie, like `numpy.argmax`).
pub fn score_multi(references: &[Vec<String>], prediction: &[String]) -> [Score; 3] {
    let mut best: [Option<Score>; 3] = [None; 3];
    for reference in references {
        let scores =
            [rouge_n(reference, prediction, 1), rouge_n(reference, prediction, 2), rouge_l(reference, prediction)];
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

    /// Real English and Chinese answers and reviews with rouge-score's values for each config; see
    /// tests/make_fixture.py.
    const FIXTURE: &str = include_str!("../tests/fixture.json");
    /// nltk's Porter stems of real English words; see tests/make_fixture.py.
    const STEMMER: &str = include_str!("../tests/stemmer.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("fixture.json is valid JSON")
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
    }

    fn record(pair: &Value) -> MetricRecord {
        MetricRecord {
            prediction: pair["pred"].as_str().expect("pred").to_string(),
            references: strings(&pair["refs"]),
        }
    }

    /// Each config of the fixture: its name and the plugin configured with it.
    fn configs(fixture: &Value) -> Vec<(String, Rouge)> {
        let configs = fixture["configs"].as_object().expect("configs");
        assert_eq!(configs.len(), 4);
        configs.iter().map(|(name, config)| (name.clone(), configure(&config.to_string()).expect("config"))).collect()
    }

    /// The pairs that rouge-score scored under a config, with its scores.
    fn scored<'a>(fixture: &'a Value, config: &str) -> Vec<(MetricRecord, &'a Value)> {
        let pairs = fixture["pairs"].as_array().expect("pairs");
        pairs.iter().filter_map(|p| p["scores"].get(config).map(|s| (record(p), s))).collect()
    }

    use triad_plugin_sdk::testing::metric as value;

    #[test]
    fn tokenizers_match_rouge_score() {
        let fixture = fixture();
        let cases = fixture["token_cases"].as_array().expect("token_cases");
        assert!(cases.len() > 50);
        for (name, rouge) in configs(&fixture) {
            for case in cases {
                let text = case["text"].as_str().expect("text");
                assert_eq!(rouge.tokenize(text), strings(&case["tokens"][&name]), "{name}: tokenizing {text:?}");
            }
        }
        // Accented letters are not in [a-z0-9], so rouge-score splits words at them; the "char"
        // tokenizer keeps them as tokens of their own.
        assert_eq!(tokenize("Münch's Guzmán"), ["m", "nch", "s", "guzm", "n"]);
        assert_eq!(tokenize_char("Münch's Guzmán"), ["m", "ü", "nch", "s", "guzm", "á", "n"]);
        assert_eq!(tokenize_char("我喜欢iPhone12，很好用！"), ["我", "喜", "欢", "iphone12", "很", "好", "用"]);
        assert!(tokenize("我喜欢很好用").is_empty());
    }

    #[test]
    fn per_pair_scores_match_rouge_score_for_every_config() {
        let fixture = fixture();
        let (mut compared, mut max_difference) = (0, 0.0f64);
        for (name, mut rouge) in configs(&fixture) {
            let pairs = scored(&fixture, &name);
            // English pairs under every config; Chinese ones under the "char" configs.
            assert!(pairs.len() > if name.starts_with("char") { 300 } else { 200 }, "{name}: {} pairs", pairs.len());
            for (record, expected) in pairs {
                let stats = rouge.statistics(&record).expect("statistics");
                let expected: Vec<f64> =
                    expected.as_array().expect("scores").iter().map(|x| x.as_f64().expect("score")).collect();
                assert_eq!(expected.len(), 9);
                for (j, (got, want)) in stats.iter().zip(&expected).enumerate() {
                    assert!(
                        (got - want).abs() < 1e-9,
                        "{name}: {} {} of {:?} vs {:?}: {got} vs rouge-score {want}",
                        TYPES[j / 3],
                        ["precision", "recall", "f"][j % 3],
                        record.prediction,
                        record.references,
                    );
                    max_difference = max_difference.max((got - want).abs());
                }
                compared += 1;
            }
        }
        eprintln!("{compared} (pair, config) scores, largest difference from rouge-score {max_difference:e}");
    }

    #[test]
    fn stemming_changes_the_scores_where_word_forms_differ() {
        let fixture = fixture();
        let differ = |a: &str, b: &str| {
            scored(&fixture, a).iter().zip(scored(&fixture, b)).filter(|((_, x), (_, y))| x != y).count()
        };
        assert!(differ("default", "stemmed") >= 10, "stemmed English pairs that score differently");
        let rouge: Rouge = configure(r#"{"use_stemmer": true}"#).expect("config");
        assert_eq!(rouge.tokenize("The cats were running"), ["the", "cat", "were", "run"]);
        let chinese: Rouge = configure(r#"{"tokenizer": "char", "use_stemmer": true}"#).expect("config");
        assert_eq!(chinese.tokenize("猫们running快"), ["猫", "们", "run", "快"]);
    }

    #[test]
    fn porter_stemmer_matches_nltk_on_real_words() {
        let fixture: Value = serde_json::from_str(STEMMER).expect("stemmer.json is valid JSON");
        let words: Vec<&str> = fixture["words"].as_str().expect("words").split(' ').collect();
        let stems: Vec<&str> = fixture["stems"].as_str().expect("stems").split(' ').collect();
        assert_eq!(words.len(), stems.len());
        assert!(words.len() > 8000, "{} words", words.len());
        let wrong: Vec<String> = words
            .iter()
            .zip(&stems)
            .filter(|(w, s)| porter::stem(w) != **s)
            .map(|(w, s)| format!("{w}: {} vs nltk {s}", porter::stem(w)))
            .collect();
        assert!(wrong.is_empty(), "{} of {} words: {:?}", wrong.len(), words.len(), &wrong[..wrong.len().min(20)]);
    }

    #[test]
    fn corpus_mean_matches_rouge_score_for_any_chunking() {
        let fixture = fixture();
        for (name, mut rouge) in configs(&fixture) {
            let records: Vec<MetricRecord> = scored(&fixture, &name).into_iter().map(|(r, _)| r).collect();
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
                for rouge_type in TYPES {
                    let expected = fixture["mean_f"][&name][rouge_type].as_f64().expect("mean");
                    let got = value(&values, rouge_type);
                    assert!(
                        (got - expected).abs() < 1e-9,
                        "{name}, chunks of {chunk}: {rouge_type} {got} vs rouge-score {expected}"
                    );
                }
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
        let err = configure::<Rouge>(r#"{"tokenizer": "jieba"}"#).expect_err("unknown tokenizer").message;
        assert!(err.contains("tokenizer") && err.contains("jieba") && err.contains("\"char\""), "{err}");
        assert!(configure::<Rouge>(r#"{"use_stemer": true}"#).is_err());
        assert!(configure::<Rouge>(r#"{"use_stemmer": "yes"}"#).is_err());
        let mut rouge = Rouge::default();
        let orphan = MetricRecord { prediction: "Sort of.".into(), references: vec![] };
        assert!(rouge.statistics(&orphan).is_err());
        assert!(rouge.finish(&[]).is_err());
        assert!(rouge.finish(&[0.5; 4]).is_err());
    }
}
