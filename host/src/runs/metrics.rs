//! Metrics as they happen: one JSON object per line (`{"stage", "step", "metric", "value"}`),
//! flushed at every write so that a crash loses nothing already measured. The long format is what
//! the result tables read.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::util::atomic::{FileError, write_atomically};

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub stage: String,
    pub step: u64,
    pub metric: String,
    pub value: f64,
}

/// Appends metric rows to a JSONL file.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    stage: String,
    /// Metrics that had a value that is not a number, said once each.
    not_finite: BTreeSet<String>,
}

impl MetricsWriter {
    /// Open (or create) `path` for the stage. Rows from a crashed run past `keep_through_step`
    /// are dropped first, so a resumed run does not log the same steps twice.
    pub fn open(path: &Path, stage: &str, keep_through_step: Option<u64>) -> Result<Self, FileError> {
        if let Some(last) = keep_through_step {
            let kept: Vec<MetricRow> = read_rows(path)?.into_iter().filter(|r| r.step <= last).collect();
            let mut text = String::new();
            for row in &kept {
                text.push_str(&serde_json::to_string(row).map_err(|e| FileError::new(path, e))?);
                text.push('\n');
            }
            write_atomically(path, text.as_bytes())?;
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| FileError::new(path, e))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| FileError::new(path, e))?;
        Ok(MetricsWriter { path: path.to_path_buf(), file, stage: stage.to_string(), not_finite: BTreeSet::new() })
    }

    /// Record `metric = value` at `step`. A value that is not a finite number (an explained
    /// variance of constant returns, say) is not recorded: JSON has no NaN, and a `null` would
    /// break every reader. The first such value of each metric is reported.
    pub fn write(&mut self, step: u64, metric: &str, value: f64) -> Result<(), FileError> {
        if !value.is_finite() {
            if self.not_finite.insert(metric.to_string()) {
                tracing::warn!(
                    stage = self.stage.as_str(),
                    step,
                    "`{metric}` is {value}: not recorded (nor any later non-finite value of it)"
                );
            }
            return Ok(());
        }
        let row = MetricRow { stage: self.stage.clone(), step, metric: metric.to_string(), value };
        let line = serde_json::to_string(&row).map_err(|e| FileError::new(&self.path, e))?;
        writeln!(self.file, "{line}").and_then(|_| self.file.flush()).map_err(|e| FileError::new(&self.path, e))
    }
}

/// Every row of a metrics file (none if it does not exist). A torn last line, left by a crash in
/// the middle of a write, is skipped.
pub fn read_rows(path: &Path) -> Result<Vec<MetricRow>, FileError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FileError::new(path, e)),
    };
    let mut rows = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| FileError::new(path, e))?;
        if let Ok(row) = serde_json::from_str(&line) {
            rows.push(row);
        }
    }
    Ok(rows)
}
