//! Exact match: the fraction of predictions equal to at least one of their references after
//! normalisation, as in the SQuAD v1.1 evaluation script's `normalize_answer`.
//!
//! Normalisation runs in SQuAD's order: lowercase, delete ASCII punctuation, replace the words
//! "a", "an" and "the" by a space, then collapse whitespace (and trim it at both ends). A "word"
//! for article removal is a maximal run of letters, digits and underscores, as Python's `\b`
//! sees it, and the match is case-sensitive, so with lowercasing off "The" stays.
//!
//! Statistics per record: `[matches, count]`. Reported values: `exact_match` (0-1) and
//! `accuracy`, the same number under the name classification-style evaluations use.
//!
//! Config: `normalize` with four booleans, all true by default (SQuAD's behaviour):
//! `lowercase`, `strip_punctuation`, `strip_articles`, `collapse_whitespace`. Example:
//! `{"normalize": {"lowercase": false}}` for case-sensitive matching.

use triad_plugin_sdk::prelude::*;

/// The exact-match metric and its configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExactMatch {
    /// How predictions and references are normalised before comparison.
    pub normalize: Normalize,
}

/// The steps of SQuAD's `normalize_answer`, each of which can be turned off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Normalize {
    /// Lowercase the text.
    pub lowercase: bool,
    /// Delete ASCII punctuation (Python's `string.punctuation`).
    pub strip_punctuation: bool,
    /// Replace the words "a", "an" and "the" by a space.
    pub strip_articles: bool,
    /// Trim the text and replace each run of whitespace with one space.
    pub collapse_whitespace: bool,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize { lowercase: true, strip_punctuation: true, strip_articles: true, collapse_whitespace: true }
    }
}

impl Plugin for ExactMatch {}

impl Metric for ExactMatch {
    fn statistics(&mut self, record: &MetricRecord) -> Result<Vec<f64>, String> {
        if record.references.is_empty() {
            return Err("exact match needs at least one reference per prediction".into());
        }
        let prediction = self.normalize.apply(&record.prediction);
        let matched = record.references.iter().any(|r| self.normalize.apply(r) == prediction);
        Ok(vec![if matched { 1.0 } else { 0.0 }, 1.0])
    }

    fn finish(&mut self, totals: &[f64]) -> Result<Vec<(String, f64)>, String> {
        match totals {
            [matches, count] if *count > 0.0 => {
                let score = matches / count;
                Ok(vec![("exact_match".to_string(), score), ("accuracy".to_string(), score)])
            }
            [] | [_, _] => Err("exact match saw no records".into()),
            _ => Err(format!("exact match expects 2 statistics, got {}", totals.len())),
        }
    }
}

export_metric!(ExactMatch);

impl Normalize {
    /// Normalise one text; with every step on this is SQuAD's `normalize_answer`.
    pub fn apply(&self, text: &str) -> String {
        let mut text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        if self.strip_punctuation {
            text.retain(|c| !c.is_ascii_punctuation());
        }
        if self.strip_articles {
            text = remove_articles(&text);
        }
        if self.collapse_whitespace {
            text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        text
    }
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)`: the pattern can only match a whole word, so replace
/// every maximal word run that is exactly an article.
fn remove_articles(text: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut word_start: Option<usize> = None;
    let flush = |out: &mut String, word: &str| {
        if matches!(word, "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
    };
    for (i, c) in text.char_indices() {
        match (is_word(c), word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(start)) => {
                flush(&mut out, &text[start..i]);
                word_start = None;
                out.push(c);
            }
            (false, None) => out.push(c),
            (true, Some(_)) => {}
        }
    }
    if let Some(start) = word_start {
        flush(&mut out, &text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use triad_plugin_sdk::configure;

    /// Real trivia answers and SQuAD's verdicts on them; see tests/make_fixture.py.
    const FIXTURE: &str = include_str!("../tests/fixture.json");

    fn record(pair: &Value) -> MetricRecord {
        MetricRecord {
            prediction: pair["pred"].as_str().expect("pred").to_string(),
            references: pair["refs"]
                .as_array()
                .expect("refs")
                .iter()
                .map(|r| r.as_str().expect("ref").to_string())
                .collect(),
        }
    }

    #[test]
    fn matches_squad_normalize_answer_under_every_config() {
        let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture.json is valid JSON");
        let pairs = fixture["pairs"].as_array().expect("pairs");
        assert!(pairs.len() >= 150);
        let configs = fixture["configs"].as_object().expect("configs");
        assert_eq!(configs.len(), 6);
        for (name, config) in configs {
            let mut metric: ExactMatch = configure(&config.to_string()).expect("config");
            let mut totals = [0.0, 0.0];
            for pair in pairs {
                let stats = metric.statistics(&record(pair)).expect("statistics");
                let expected = pair["match"][name].as_bool().expect("match");
                assert_eq!(stats[0] == 1.0, expected, "config {name}: {:?} vs {:?}", pair["pred"], pair["refs"]);
                totals[0] += stats[0];
                totals[1] += stats[1];
            }
            let values = metric.finish(&totals).expect("finish");
            let expected = fixture["matches"][name].as_f64().expect("matches") / pairs.len() as f64;
            assert_eq!(values[0], ("exact_match".to_string(), expected), "config {name}");
            assert_eq!(values[1], ("accuracy".to_string(), expected), "config {name}");
        }
    }

    #[test]
    fn squad_normalization_by_hand() {
        let squad = Normalize::default();
        assert_eq!(squad.apply("  The Soviet Union and the United States. "), "soviet union and united states");
        assert_eq!(squad.apply("A. A. Milne"), "milne");
        // Curly quotes are not ASCII punctuation, and "a" next to one is still a whole word.
        assert_eq!(squad.apply("Snow White’s dwarfs: a’s"), "snow white’s dwarfs ’s");
        assert_eq!(squad.apply("theatre another_a a_b"), "theatre anothera ab");
        // An underscore belongs to the word, so "a_b" is not the article "a".
        let keep_punctuation = Normalize { strip_punctuation: false, ..Normalize::default() };
        assert_eq!(keep_punctuation.apply("another_a a_b the-end"), "another_a a_b -end");
        let case_sensitive = Normalize { lowercase: false, ..Normalize::default() };
        assert_eq!(case_sensitive.apply("The Andromeda Galaxy, the nearest"), "The Andromeda Galaxy nearest");
    }

    #[test]
    fn any_reference_may_match() {
        let mut metric = ExactMatch::default();
        let record = MetricRecord {
            prediction: "the great dane".into(),
            references: vec!["Irish Wolfhound".into(), "The Great Dane.".into()],
        };
        assert_eq!(metric.statistics(&record).expect("statistics"), [1.0, 1.0]);
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(configure::<ExactMatch>(r#"{"normalize": {"stem": true}}"#).is_err());
        assert!(configure::<ExactMatch>(r#"{"lowercase": true}"#).is_err());
        let mut metric = ExactMatch::default();
        let orphan = MetricRecord { prediction: "Paris".into(), references: vec![] };
        assert!(metric.statistics(&orphan).is_err());
        assert!(metric.finish(&[]).is_err());
        assert!(metric.finish(&[0.0, 0.0]).is_err());
        assert!(metric.finish(&[1.0, 2.0, 3.0]).is_err());
    }
}
