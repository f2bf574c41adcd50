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
