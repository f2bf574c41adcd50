//! The bookkeeping every training loop shares, whatever a step does: resuming from the newest
//! checkpoint of the same config, the metrics stream (rows past the checkpoint dropped, so no
//! step is logged twice), the progress bar, and when to evaluate and to checkpoint.
//!
//! The supervised [`train`](super::train) loop and the RL stages both run on it, so a step of
//! either is checkpointed, logged and evaluated the same way.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Var};
use indicatif::ProgressBar;
use serde::Serialize;

use super::checkpoint::{self, TrainState};
use super::error::TrainError;
use super::optimizer::AdamW;
use crate::runs::metrics::MetricsWriter;
use crate::util::atomic::FileError;

/// When a loop of `steps` steps evaluates and checkpoints (0: never, except after the last
/// step, which always does both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    pub steps: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk, newest first.
    pub keep_checkpoints: usize,
}

impl Cadence {
    /// Whether to evaluate once `done` steps are complete.
    pub fn eval_due(&self, done: u64) -> bool {
        done == self.steps || (self.eval_every > 0 && done.is_multiple_of(self.eval_every))
    }

    /// Whether to checkpoint once `done` steps are complete.
    pub fn checkpoint_due(&self, done: u64) -> bool {
        done == self.steps || (self.checkpoint_every > 0 && done.is_multiple_of(self.checkpoint_every))
    }
}

/// One training loop's files and progress.
pub struct Session {
    checkpoints: PathBuf,
    config_key: String,
    /// The loop's cadence.
    pub cadence: Cadence,
    /// The step this invocation starts at (non-zero after a resume).
    pub start: u64,
    /// The stage's `metrics.jsonl`.
    pub metrics: MetricsWriter,
    /// The progress bar, at `start`.
    pub bar: ProgressBar,
    started: Instant,
}

impl Session {
    /// Open the loop of `stage` in `dir`: restore the newest checkpoint of this `config_key`
    /// into `vars` and `optimizer` (with the extra state the stage saved there), open the
    /// metrics stream and the bar.
    pub fn open(
        stage: &str,
        dir: &Path,
        vars: &[(String, Var)],
        optimizer: &mut AdamW,
        cadence: Cadence,
        config_key: String,
        device: &Device,
    ) -> Result<(Session, Option<serde_json::Value>), TrainError> {
        let checkpoints = dir.join("checkpoints");
        let restored = checkpoint::restore(&checkpoints, vars, optimizer, &config_key, device)?;
        let start = restored.as_ref().map_or(0, |state| state.step);
        if start > 0 {
            tracing::info!(stage, step = start, "resuming from checkpoint");
        }
        let metrics = MetricsWriter::open(&dir.join("metrics.jsonl"), stage, (start > 0).then_some(start))?;
        let bar = crate::util::progress::bar(stage, cadence.steps, start);
        let session = Session { checkpoints, config_key, cadence, start, metrics, bar, started: Instant::now() };
        Ok((session, restored.and_then(|state| state.extra)))
    }

    /// Record `metric = value` at `step`.
    pub fn write(&mut self, step: u64, metric: &str, value: f64) -> Result<(), FileError> {
        self.metrics.write(step, metric, value)
    }

    /// Checkpoint after `done` steps if the cadence says so, with the stage's extra state.
    pub fn checkpoint_if_due(
        &self,
        done: u64,
        vars: &[(String, Var)],
        optimizer: &AdamW,
        extra: Option<&impl Serialize>,
    ) -> Result<(), TrainError> {
        if !self.cadence.checkpoint_due(done) {
            return Ok(());
        }
        let extra = extra.map(serde_json::to_value).transpose().map_err(|e| FileError::new(&self.checkpoints, e))?;
        let state = TrainState { step: done, config_key: self.config_key.clone(), optimizer_steps: None, extra };
        checkpoint::save(&self.checkpoints, vars, optimizer, &state, self.cadence.keep_checkpoints)?;
        Ok(())
    }

    /// Seconds since the session opened.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// A short hash of a config, so that a checkpoint of another config is never resumed.
pub fn config_key(config: &impl Serialize) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(&json).iter().take(8).map(|b| format!("{b:02x}")).collect()
}
