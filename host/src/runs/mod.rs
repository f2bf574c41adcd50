//! The run store: one type per file a run leaves behind, each writing and reading its own format
//! ([`manifest`]: `manifest.json`; [`stage_record`]: `stage.json`; [`metrics`]: `metrics.jsonl`;
//! [`report`]: a training stage's `report.md`), where runs and shared stage outputs live and how
//! they are linked ([`layout`]), and the tables and plots that compare runs ([`table`],
//! [`compare`], [`plot`]).
//!
//! Nothing here knows experiment files: the command line resolves an experiment to its runs
//! folder and hands folders to the tables.

pub mod compare;
pub mod layout;
pub mod manifest;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod stage_record;
pub mod table;

use std::path::{Path, PathBuf};

use crate::util::atomic::FileError;

/// A failure reading or writing the run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path} exists and is not a link to a stage output: move it away")]
    NotALink { path: PathBuf },
    #[error("another `triad run` is running in {dir}: wait for it to finish (or run into another --runs folder)")]
    Locked { dir: PathBuf },
    #[error("experiment name `{name}` cannot name its runs folder: {reason}")]
    Name { name: String, reason: &'static str },
}

/// A JSON file read and parsed; `None` when it does not exist.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| StoreError::Json { path: path.to_path_buf(), source })
}
