//! The step loop every stage shares.
//!
//! For each step: the loss of each micro-batch (scaled by 1/accumulation) is backpropagated and
//! the gradients summed; the optimizer clips them to a global norm and updates the weights with
//! the scheduled learning rate. Every `eval_every` steps (and at the end) the objective is
//! evaluated; every `checkpoint_every` steps a checkpoint is written. Metrics go to the stage's
//! metrics file as they happen; a progress bar shows the step, loss and learning rate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainState};
use super::optimizer::{AdamW, AdamWConfig};
use super::schedule::Schedule;
use crate::runs::atomic::FileError;
use crate::runs::metrics::{MetricsWriter, read_rows};

/// How to train: steps, schedule, optimizer, accumulation, clipping, evaluation, checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (none when absent).
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
}

/// A failure while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("at step {step}: {source}")]
    Tensor { step: u64, source: candle_core::Error },
    #[error("at step {step}: the loss is {value}: training diverged (lower the learning rate?)")]
    Diverged { step: u64, value: f64 },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}")]
    Objective(String),
}

/// What a stage trains: the loss of a micro-batch, and an evaluation.
pub trait Objective {
    /// The scalar loss of micro-batch `micro` of step `step`, plus metrics to log (averaged over
    /// the micro-batches of the step). Must be a pure function of the weights, `step` and
    /// `micro`, so that resumed runs continue exactly.
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError>;

    /// Held-out metrics (for example validation loss and perplexity).
    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError>;
}

/// What training produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The step training started from (non-zero after a resume).
    pub resumed_from: u64,
    /// The last evaluation.
    pub final_eval: Vec<(String, f64)>,
    /// The training loss of the last step.
    pub final_train_loss: f64,
    /// Training tokens or examples processed per second, as the objective counts them.
    pub seconds: f64,
}

/// Train `vars` on `objective`, with checkpoints and metrics under `dir`.
pub fn train(
    stage: &str,
    dir: &Path,
    vars: &[(String, Var)],
    decays: impl Fn(&str) -> bool,
    objective: &dyn Objective,
    config: &TrainConfig,
    device: &Device,
) -> Result<TrainSummary, TrainError> {
    let tensor = |step: u64| move |source: candle_core::Error| TrainError::Tensor { step, source };
    let mut optimizer = AdamW::new(vars, decays, config.adamw).map_err(tensor(0))?;
    let checkpoints: PathBuf = dir.join("checkpoints");
    let config_key = config_key(config);
    let start = checkpoint::restore(&checkpoints, vars, &mut optimizer, &config_key, device)?.unwrap_or(0);
    if start > 0 {
        tracing::info!(stage, step = start, "resuming from checkpoint");
    }
    let mut metrics = MetricsWriter::open(&dir.join("metrics.jsonl"), stage, (start > 0).then_some(start))?;
    let schedule = Schedule {
        lr: config.lr,
        min_lr: config.min_lr,
        warmup_steps: config.warmup_steps,
        decay_steps: config.steps,
    };
    let bar = crate::runs::progress::bar(stage, config.steps, start);
    let started = Instant::now();
    let mut final_train_loss = f64::NAN;
    let mut final_eval = Vec::new();
    let accumulation = config.accumulation.max(1);
    if start == 0 && config.eval_every > 0 {
        // Where training starts from: the reference every later evaluation is read against.
        for (name, value) in objective.evaluate()? {
            metrics.write(0, &format!("eval/{name}"), value)?;
        }
    }
    for step in start..config.steps {
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let mut step_loss = 0.0;
        let mut step_metrics: Vec<(String, f64)> = Vec::new();
        for micro in 0..accumulation {
            let (loss, extra) = objective.loss(step, micro)?;
            let value = loss.to_scalar::<f32>().map_err(tensor(step))? as f64;
            if !value.is_finite() {
                return Err(TrainError::Diverged { step, value });
            }
            step_loss += value / accumulation as f64;
            accumulate(&mut step_metrics, &extra, accumulation);
            let scaled = if accumulation > 1 { loss.affine(1.0 / accumulation as f64, 0.0).map_err(tensor(step))? } else { loss };
            let store = scaled.backward().map_err(tensor(step))?;
            for (name, var) in vars {
                if let Some(grad) = store.get(var.as_tensor()) {
                    let summed = match grads.remove(name) {
                        Some(previous) => (previous + grad).map_err(tensor(step))?,
                        None => grad.clone(),
                    };
                    grads.insert(name.clone(), summed);
                }
            }
        }
        let lr = schedule.at(step);
        let grad_norm = optimizer.step(&grads, lr, config.grad_clip).map_err(tensor(step))?;
        let done = step + 1;
        final_train_loss = step_loss;
        metrics.write(done, "train/loss", step_loss)?;
        metrics.write(done, "train/lr", lr)?;
        metrics.write(done, "train/grad_norm", grad_norm)?;
        for (name, value) in &step_metrics {
            metrics.write(done, &format!("train/{name}"), *value)?;
        }
        bar.set_message(format!("loss {step_loss:.4}  lr {lr:.2e}"));
        bar.inc(1);
        let last = done == config.steps;
        if last || (config.eval_every > 0 && done % config.eval_every == 0) {
            final_eval = objective.evaluate()?;
            for (name, value) in &final_eval {
                metrics.write(done, &format!("eval/{name}"), *value)?;
            }
            let shown: Vec<String> = final_eval.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
            bar.suspend(|| tracing::info!(stage, step = done, train_loss = step_loss, "eval: {}", shown.join(", ")));
        }
        if last || (config.checkpoint_every > 0 && done % config.checkpoint_every == 0) {
            let state = TrainState { step: done, config_key: config_key.clone() };
            checkpoint::save(&checkpoints, vars, &optimizer, &state, config.keep_checkpoints)?;
        }
    }
    if start >= config.steps {
        // Killed after the last checkpoint but before the stage was marked done: nothing to
        // train; the last training loss is in the metrics stream.
        final_eval = objective.evaluate()?;
        final_train_loss = read_rows(&dir.join("metrics.jsonl"))?
            .iter()
            .rev()
            .find(|row| row.metric == "train/loss")
            .map_or(f64::NAN, |row| row.value);
    }
    bar.finish_and_clear();
    Ok(TrainSummary { resumed_from: start, final_eval, final_train_loss, seconds: started.elapsed().as_secs_f64() })
}

fn accumulate(total: &mut Vec<(String, f64)>, extra: &[(String, f64)], parts: usize) {
    for (name, value) in extra {
        match total.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += value / parts as f64,
            None => total.push((name.clone(), value / parts as f64)),
        }
    }
}

fn config_key(config: &TrainConfig) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(&json).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

