//! The optimisation block every supervised training stage shares:
//! `train: (steps: 400, batch: 16, lr: 3e-4)`, and how it becomes the trainer's config. Experiment
//! files embed it (the schema re-exports it); it lives here, beside the trainer that reads it.

use serde::{Deserialize, Serialize};

use super::{AdamWConfig, TrainConfig};

/// How a stage optimises: steps, batch, AdamW, schedule, clipping, evaluation, checkpoints.
/// The same block in every training stage: `train: (steps: 400, batch: 16, lr: 3e-4)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub steps: u64,
    /// Sequences (or pairs) per micro-batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine decay (default lr / 10).
    #[serde(default)]
    pub min_lr: Option<f64>,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup: u64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Global gradient-norm clip (default 1.0; `None` disables it).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub accumulation: usize,
    /// Evaluate every this many steps (default: 10 times per run).
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every this many steps (default: at every evaluation).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

impl TrainSettings {
    /// The trainer's config.
    pub fn to_config(&self) -> TrainConfig {
        let eval_every = self.eval_every.unwrap_or((self.steps / 10).max(1));
        TrainConfig {
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr / 10.0),
            warmup_steps: self.warmup,
            adamw: AdamWConfig { beta2: self.beta2, weight_decay: self.weight_decay, ..AdamWConfig::default() },
            grad_clip: self.grad_clip,
            accumulation: self.accumulation,
            eval_every,
            checkpoint_every: self.checkpoint_every.unwrap_or(eval_every),
            keep_checkpoints: 2,
        }
    }

    /// What is wrong with the settings, if anything, in words that say the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 {
            return Err("train.steps must be at least 1".into());
        }
        if self.batch == 0 || self.accumulation == 0 {
            return Err("train.batch and train.accumulation must be at least 1".into());
        }
        if !positive(self.lr) {
            return Err(format!("train.lr must be a positive number, got {}", self.lr));
        }
        if let Some(min_lr) = self.min_lr.filter(|m| !non_negative(*m)) {
            return Err(format!("train.min_lr must be a number >= 0, got {min_lr}"));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(format!("train.beta2 must be in [0, 1), got {}", self.beta2));
        }
        if !non_negative(self.weight_decay) {
            return Err(format!("train.weight_decay must be a number >= 0, got {}", self.weight_decay));
        }
        check_grad_clip(self.grad_clip)?;
        check_every("eval_every", self.eval_every)?;
        check_every("checkpoint_every", self.checkpoint_every)
    }

    /// `400 steps x batch 16 (lr 0.0003)`, for the plan `triad validate` prints.
    pub fn describe(&self) -> String {
        format!("{} steps x batch {} (lr {})", self.steps, self.batch, self.lr)
    }
}

/// Whether `x` is a finite number above 0 (NaN is not).
pub fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Whether `x` is a finite number at or above 0 (NaN is not).
pub fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// A gradient clip must be a positive number; leave it out (`None`) for no clipping.
pub fn check_grad_clip(clip: Option<f64>) -> Result<(), String> {
    match clip {
        Some(c) if !positive(c) => {
            Err(format!("train.grad_clip must be a positive number, got {c} (write None for no clipping)"))
        }
        _ => Ok(()),
    }
}

/// An `every` cadence counts steps: at least 1 when given.
pub fn check_every(field: &str, every: Option<u64>) -> Result<(), String> {
    match every {
        Some(0) => Err(format!("train.{field} must be at least 1 (leave it out for the default)")),
        _ => Ok(()),
    }
}

fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta2() -> f64 {
    0.99
}
/// The global gradient-norm clip every training stage starts from.
pub fn default_grad_clip() -> Option<f64> {
    Some(1.0)
}
fn one() -> usize {
    1
}
fn default_eval_batches() -> usize {
    20
}
