//! Train/validation splits, deterministic.
//!
//! - `Hash(valid_fraction: 0.1, seed: 0)`: a record goes to validation when a hash of
//!   (seed, its text) falls below the fraction. The side of a record depends on nothing but its
//!   own text, so adding, removing or reordering other records (a changed filter, a reshuffled
//!   file) never moves it, and duplicated texts land on the same side (no copy of a validation
//!   record in training). The hash is sha256, so the split is the same on every platform and
//!   Rust version.
//! - `Tail(valid_fraction: 0.1)`: nanoGPT's split, the last fraction held out. Over several
//!   records, the last `n - floor(n * (1 - f))` records; over a single document (tiny-shakespeare
//!   as one `Whole` record), the text is cut at character `floor(chars * (1 - f))`, so 90/10
//!   gives nanoGPT's 1,003,854 / 111,540 characters.
//!
//! The split has its own seed, defaulting to 0, rather than the experiment's: a sweep over
//! training seeds then compares runs on one validation set.

use serde::{Deserialize, Serialize};

use super::source::{Origin, Record};

/// How a data set is divided into training and validation records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Split {
    /// By a hash of (seed, text): stable under any change to other records.
    Hash {
        valid_fraction: f64,
        #[serde(default)]
        seed: u64,
    },
    /// The last fraction of the records, or of the single document's characters.
    Tail { valid_fraction: f64 },
}

/// A data set, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitParts {
    pub train: Vec<Record>,
    pub valid: Vec<Record>,
}

/// A split that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("valid_fraction must be at least 0 and below 1, not {0}")]
    Fraction(f64),
    #[error(
        "the {side} split is empty ({records} records, valid_fraction {fraction}): use more data or another fraction"
    )]
    Empty { side: &'static str, records: usize, fraction: f64 },
}

impl Split {
    /// The fraction of data held out.
    pub fn valid_fraction(&self) -> f64 {
        match self {
            Split::Hash { valid_fraction, .. } | Split::Tail { valid_fraction } => *valid_fraction,
        }
    }

    /// Divide `records`. A non-zero fraction must leave both sides non-empty; a zero fraction
    /// gives an empty validation side (no evaluation).
    pub fn apply(&self, records: Vec<Record>) -> Result<SplitParts, SplitError> {
        let fraction = self.valid_fraction();
        if !(0.0..1.0).contains(&fraction) {
            return Err(SplitError::Fraction(fraction));
        }
        let total = records.len();
        let parts = match *self {
            Split::Hash { seed, .. } => {
                let (valid, train) = records.into_iter().partition(|r| hash_unit(seed, &r.text) < fraction);
                SplitParts { train, valid }
            }
            Split::Tail { .. } if total == 1 => {
                let mut train = records;
                let text = std::mem::take(&mut train[0].text);
                let chars = text.chars().count();
                let cut_chars = (chars as f64 * (1.0 - fraction)) as usize;
                let cut = text.char_indices().nth(cut_chars).map_or(text.len(), |(i, _)| i);
                let (head, tail) = text.split_at(cut);
                let origin = &train[0].origin;
                let valid_origin = Origin { file: origin.file.clone(), line: origin.line + head.matches('\n').count() };
                let valid = (!tail.is_empty())
                    .then(|| Record { text: tail.to_string(), fields: train[0].fields.clone(), origin: valid_origin })
                    .into_iter()
                    .collect();
                train[0].text = head.to_string();
                if train[0].text.is_empty() {
                    train.clear();
                }
                SplitParts { train, valid }
            }
            Split::Tail { .. } => {
                let mut train = records;
                let cut = (total as f64 * (1.0 - fraction)) as usize;
                let valid = train.split_off(cut);
                SplitParts { train, valid }
            }
        };
        let records = total;
        if parts.train.is_empty() {
            return Err(SplitError::Empty { side: "training", records, fraction });
        }
        if parts.valid.is_empty() && fraction > 0.0 {
            return Err(SplitError::Empty { side: "validation", records, fraction });
        }
        tracing::info!(train = parts.train.len(), valid = parts.valid.len(), "split");
        Ok(parts)
    }
}

/// Items split as records would be, by a key of each instead of a record's text: `Hash` by
/// the key (items sharing a key land on one side), `Tail` the last fraction of the items.
/// Returns (train, valid); either side may be empty.
pub fn partition_by_key<T>(
    split: &Split,
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
) -> Result<(Vec<T>, Vec<T>), SplitError> {
    let fraction = split.valid_fraction();
    if !(0.0..1.0).contains(&fraction) {
        return Err(SplitError::Fraction(fraction));
    }
    Ok(match *split {
        Split::Hash { seed, .. } => {
            let (valid, train) = items.into_iter().partition(|item| hash_unit(seed, key(item)) < fraction);
            (train, valid)
        }
        Split::Tail { .. } => {
            let mut train = items;
            let cut = (train.len() as f64 * (1.0 - fraction)) as usize;
            let valid = train.split_off(cut);
            (train, valid)
        }
    })
}

/// sha256(seed as 8 little-endian bytes, text) read as a number in [0, 1).
fn hash_unit(seed: u64, text: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(text.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The top 53 bits: exactly representable, uniform in [0, 1).
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn records(texts: &[&str]) -> Vec<Record> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Record {
                text: t.to_string(),
                fields: BTreeMap::new(),
                origin: Origin { file: PathBuf::from("x"), line: i + 1 },
            })
            .collect()
    }

    #[test]
    fn tail_of_one_document_cuts_its_characters() {
        let split = Split::Tail { valid_fraction: 0.25 };
        let parts = split.apply(records(&["ab\ncdéf\ngh"])).expect("splits");
        // 10 characters: the first floor(10 * 0.75) = 7 train.
        assert_eq!(parts.train[0].text, "ab\ncdéf");
        assert_eq!(parts.valid[0].text, "\ngh");
        assert_eq!(parts.valid[0].origin.line, 2);
        let parts = split.apply(records(&["a", "b", "c", "d", "e"])).expect("splits");
        assert_eq!((parts.train.len(), parts.valid.len()), (3, 2));
    }

    #[test]
    fn bad_fractions_and_empty_sides_are_errors() {
        assert!(Split::Tail { valid_fraction: 1.0 }.apply(records(&["a", "b"])).is_err());
        let err = Split::Tail { valid_fraction: 0.1 }.apply(records(&["a"])).expect_err("empty train").to_string();
        assert!(err.contains("training split is empty"), "{err}");
        assert!(Split::Hash { valid_fraction: -0.1, seed: 0 }.apply(records(&["a"])).is_err());
        // So small a fraction that 1 - f rounds to 1: nothing is held out.
        let err =
            Split::Tail { valid_fraction: 1e-17 }.apply(records(&["a", "b"])).expect_err("empty valid").to_string();
        assert!(err.contains("validation split is empty"), "{err}");
        let none = Split::Hash { valid_fraction: 0.0, seed: 0 }.apply(records(&["a", "b"])).expect("no validation");
        assert_eq!(none.valid.len(), 0);
    }

    #[test]
    fn in_ron() {
        let split: Split = ron::from_str("Hash(valid_fraction: 0.1)").expect("parses");
        assert_eq!(split, Split::Hash { valid_fraction: 0.1, seed: 0 });
        assert!(ron::from_str::<Split>("Tail(valid_fraction: 0.1, seed: 3)").is_err());
    }
}
