//! Data filter: keeps records whose text length lies within bounds.
//!
//! Config (every bound optional; an absent bound does not apply):
//! - `min_chars`, `max_chars`: length in characters (Unicode scalar values, so "café" is 4,
//!   not its 5 UTF-8 bytes), inclusive bounds;
//! - `min_words`, `max_words`: number of whitespace-separated words, inclusive bounds.
//!
//! Character bounds are checked first, then word bounds; the first failing bound is the drop
//! reason. Reasons name the bound and its configured value, never the record's own length
//! ("too short (min_chars 20)"), so the host's filter report groups records by reason.

use triad_plugin_sdk::prelude::*;

/// The length filter; its fields are its config.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LengthFilter {
    /// Fewest characters a kept text may have.
    pub min_chars: Option<usize>,
    /// Most characters a kept text may have.
    pub max_chars: Option<usize>,
    /// Fewest words a kept text may have.
    pub min_words: Option<usize>,
    /// Most words a kept text may have.
    pub max_words: Option<usize>,
}

impl LengthFilter {
    /// Why `text` is dropped, or `None` when it is kept.
    pub fn reject(&self, text: &str) -> Option<String> {
        if self.min_chars.is_some() || self.max_chars.is_some() {
            let chars = text.chars().count();
            if let Some(min) = self.min_chars.filter(|&min| chars < min) {
                return Some(format!("too short (min_chars {min})"));
            }
            if let Some(max) = self.max_chars.filter(|&max| chars > max) {
                return Some(format!("too long (max_chars {max})"));
            }
        }
        if self.min_words.is_some() || self.max_words.is_some() {
            let words = text.split_whitespace().count();
            if let Some(min) = self.min_words.filter(|&min| words < min) {
                return Some(format!("too short (min_words {min})"));
            }
            if let Some(max) = self.max_words.filter(|&max| words > max) {
                return Some(format!("too long (max_words {max})"));
            }
        }
        None
    }
}

fn check_range(min: Option<usize>, max: Option<usize>, unit: &str) -> Result<(), String> {
    match (min, max) {
        (Some(min), Some(max)) if min > max => {
            Err(format!("min_{unit} ({min}) is greater than max_{unit} ({max}): no text could pass"))
        }
        _ => Ok(()),
    }
}

impl Plugin for LengthFilter {
    fn init(&mut self) -> Result<(), String> {
        check_range(self.min_chars, self.max_chars, "chars")?;
        check_range(self.min_words, self.max_words, "words")
    }
}

impl DataFilter for LengthFilter {
    fn filter(&mut self, sample: &Sample) -> Result<Decision, String> {
        Ok(match self.reject(&sample.text) {
            Some(reason) => Decision::Drop(reason),
            None => Decision::Keep,
        })
    }
}

export_data_filter!(LengthFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::{decide, review_texts};

    #[test]
    fn counts_on_real_snippets_match_an_independent_count() {
        let mut f: LengthFilter =
            configure(r#"{"min_chars": 40, "max_chars": 200, "min_words": 8, "max_words": 30}"#).expect("valid config");
        let mut counts = BTreeMap::new();
        for text in review_texts() {
            *counts.entry(decide(&mut f, text)).or_insert(0) += 1;
        }
        // Counted independently with Python over the same 303 texts: len(text) for characters,
        // len(text.split()) for words, checked in the same order.
        let expected = BTreeMap::from([
            ("keep".to_string(), 237),
            ("too short (min_chars 40)".to_string(), 20),
            ("too long (max_chars 200)".to_string(), 15),
            ("too short (min_words 8)".to_string(), 13),
            ("too long (max_words 30)".to_string(), 18),
        ]);
        assert_eq!(counts, expected);
    }

    #[test]
    fn counts_characters_not_bytes_and_bounds_are_inclusive() {
        let mut f: LengthFilter = configure(r#"{"min_chars": 4, "max_chars": 4}"#).expect("config");
        // 4 characters, 5 bytes.
        assert_eq!(decide(&mut f, "café"), "keep");
        // 3 characters, 12 bytes.
        assert_eq!(decide(&mut f, "😀😀😀"), "too short (min_chars 4)");
        assert_eq!(decide(&mut f, "cafés"), "too long (max_chars 4)");
    }

    #[test]
    fn words_are_split_on_any_whitespace() {
        let mut f: LengthFilter = configure(r#"{"min_words": 3, "max_words": 3}"#).expect("config");
        assert_eq!(decide(&mut f, "  Effective\tbut\n tepid  "), "keep");
        assert_eq!(decide(&mut f, "Effective but"), "too short (min_words 3)");
        assert_eq!(decide(&mut f, ""), "too short (min_words 3)");
    }

    #[test]
    fn empty_config_keeps_everything() {
        let mut f: LengthFilter = configure("").expect("no config");
        assert!(review_texts().iter().all(|t| decide(&mut f, t) == "keep"));
        assert_eq!(decide(&mut f, ""), "keep");
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = configure::<LengthFilter>(r#"{"min_chars": 50, "max_chars": 20}"#).err().expect("min > max");
        assert!(err.message.contains("min_chars") && err.message.contains("max_chars"), "{}", err.message);
        let err = configure::<LengthFilter>(r#"{"min_words": 9, "max_words": 2}"#).err().expect("min > max");
        assert!(err.message.contains("min_words (9)"), "{}", err.message);
        let err = configure::<LengthFilter>(r#"{"max_tokens": 5}"#).err().expect("unknown field");
        assert!(err.message.contains("unknown field `max_tokens`"), "{}", err.message);
        let err = configure::<LengthFilter>(r#"{"min_chars": -1}"#).err().expect("negative");
        assert!(err.message.contains("invalid value"), "{}", err.message);
    }
}
