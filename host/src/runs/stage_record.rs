//! `stage.json`: a stage output's cache key, whether it finished, and its final metrics. The
//! pipeline writes it (incomplete before the stage runs, complete after); tables read it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::util::atomic::write_atomically;

/// What `stage.json` records about a stage's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageRecord {
    pub key: String,
    pub complete: bool,
    /// Final metrics (`eval/loss`, ...), all finite.
    pub metrics: BTreeMap<String, f64>,
}

impl StageRecord {
    /// The file's name inside a stage folder.
    pub const FILE: &'static str = "stage.json";

    /// The record in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<StageRecord>, StoreError> {
        super::read_json(&dir.join(Self::FILE))
    }

    /// Write the record into `dir`, atomically. A metric that is not a finite number (an
    /// explained variance of a constant return, say) is left out: JSON has no NaN, and a
    /// `null` would break every reader.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let mut record = self.clone();
        record.metrics.retain(|name, value| {
            let keep = value.is_finite();
            if !keep {
                tracing::warn!(metric = name.as_str(), "final metric is {value}: left out of stage.json");
            }
            keep
        });
        let path = dir.join(Self::FILE);
        let json =
            serde_json::to_vec_pretty(&record).map_err(|source| StoreError::Json { path: path.clone(), source })?;
        Ok(write_atomically(&path, &json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::metrics::{MetricsWriter, read_rows};

    /// JSON has no NaN: a value that is not a number never becomes a `null` that every reader
    /// of `stage.json` or `metrics.jsonl` would then refuse.
    #[test]
    fn values_that_are_not_numbers_are_left_out_of_both_files() {
        let dir = std::env::temp_dir().join(format!("triad-stage-record-{}", std::process::id()));
        let metrics = [("eval/pair_accuracy", f64::NAN), ("train/loss", 0.5), ("eval/huge", f64::INFINITY)];
        let record = StageRecord {
            key: "k".into(),
            complete: true,
            metrics: metrics.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        };
        record.write(&dir).expect("written");
        let back = StageRecord::read(&dir).expect("readable").expect("present");
        assert_eq!(back.metrics.keys().collect::<Vec<_>>(), ["train/loss"]);

        let mut writer = MetricsWriter::open(&dir.join("metrics.jsonl"), "s", None).expect("open");
        for (step, (name, value)) in metrics.iter().enumerate() {
            writer.write(step as u64, name, *value).expect("write");
        }
        writer.write(9, "eval/pair_accuracy", f64::NAN).expect("a second NaN");
        let rows = read_rows(&dir.join("metrics.jsonl")).expect("rows");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(!std::fs::read_to_string(dir.join("metrics.jsonl")).expect("text").contains("null"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
