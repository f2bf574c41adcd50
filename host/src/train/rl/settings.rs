//! The optimisation settings of the RL stages (defaults from TRL and OpenRLHF): for PPO,
//! iterations, rollouts per iteration, minibatches and epochs, the clipped loss, GAE; for the
//! group-relative stages, iterations, prompts per iteration, epochs and minibatches; for both, the
//! cadence of evaluation and checkpoints. Experiment files embed them (`train: (steps: 100,
//! rollouts: 32)`).

use serde::{Deserialize, Serialize};

use crate::train::settings::{check_every, check_grad_clip, default_grad_clip, non_negative, positive};

/// PPO's optimisation settings (defaults from TRL and OpenRLHF).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoSettings {
    /// PPO iterations: each samples `rollouts` prompts, then optimises on them.
    pub steps: u64,
    #[serde(default = "default_rollouts")]
    pub rollouts: usize,
    #[serde(default = "default_minibatch")]
    pub minibatch: usize,
    /// Passes over each rollout batch.
    #[serde(default = "default_ppo_epochs")]
    pub epochs: usize,
    #[serde(default = "default_ppo_lr")]
    pub lr: f64,
    #[serde(default = "default_clip")]
    pub clip: f64,
    #[serde(default = "default_clip")]
    pub value_clip: f64,
    #[serde(default = "default_value_coef")]
    pub value_coef: f64,
    #[serde(default = "one_f64")]
    pub gamma: f64,
    #[serde(default = "default_lam")]
    pub lam: f64,
    #[serde(default)]
    pub entropy_coef: f64,
    /// Standardise advantages per rollout batch.
    #[serde(default = "yes")]
    pub whiten: bool,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f64>,
    /// Evaluate on held-out prompts every this many iterations (default: 5 times per run).
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Held-out prompts per evaluation.
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Checkpoint every this many iterations (default: at every evaluation).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

impl PpoSettings {
    /// What is wrong with the settings, if anything, in words that say the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 || self.rollouts == 0 || self.minibatch == 0 || self.epochs == 0 {
            return Err("train.steps, rollouts, minibatch and epochs must be at least 1".into());
        }
        if self.minibatch > self.rollouts {
            return Err(format!("train.minibatch {} is larger than train.rollouts {}", self.minibatch, self.rollouts));
        }
        if !positive(self.lr) {
            return Err(format!("train.lr must be a positive number, got {}", self.lr));
        }
        if !positive(self.clip) || !positive(self.value_clip) {
            return Err("train.clip and train.value_clip must be positive numbers".into());
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            return Err("train.gamma and train.lam must be in [0, 1]".into());
        }
        if !non_negative(self.value_coef) || !non_negative(self.entropy_coef) {
            return Err("train.value_coef and train.entropy_coef must be numbers >= 0".into());
        }
        check_grad_clip(self.grad_clip)?;
        check_every("eval_every", self.eval_every)?;
        check_every("checkpoint_every", self.checkpoint_every)?;
        Ok(())
    }
}

fn one_f64() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_rollouts() -> usize {
    32
}
fn default_minibatch() -> usize {
    8
}
fn default_ppo_epochs() -> usize {
    4
}
fn default_ppo_lr() -> f64 {
    1e-5
}
fn default_clip() -> f64 {
    0.2
}
fn default_value_coef() -> f64 {
    0.1
}
fn default_lam() -> f64 {
    0.95
}
fn default_eval_prompts() -> usize {
    64
}

/// The optimisation settings of a group-relative stage (GRPO, RLOO): iterations, prompts per
/// iteration, epochs and minibatches over the sampled responses, and the cadence of evaluation
/// and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// Iterations: each samples a group of responses to each of `prompts` prompts, then
    /// optimises on them.
    pub steps: u64,
    /// Prompts per iteration (TRL's batch is `prompts x group` responses).
    #[serde(default = "default_group_prompts")]
    pub prompts: usize,
    /// Passes over each iteration's responses (TRL's `num_iterations`, μ).
    #[serde(default = "one_usize")]
    pub epochs: usize,
    /// Responses per optimizer step (default: all of the iteration's, one step per epoch).
    #[serde(default)]
    pub minibatch: Option<usize>,
    #[serde(default = "default_ppo_lr")]
    pub lr: f64,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f64>,
    /// Evaluate on held-out prompts every this many iterations (default: 5 times per run).
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Held-out prompts per evaluation.
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Checkpoint every this many iterations (default: at every evaluation).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

impl GroupSettings {
    /// What is wrong with the settings for groups of `group` responses, in words that say the
    /// fix.
    pub fn validate(&self, group: usize) -> Result<(), String> {
        if self.steps == 0 || self.prompts == 0 || self.epochs == 0 || self.minibatch == Some(0) {
            return Err("train.steps, prompts, epochs and minibatch must be at least 1".into());
        }
        let responses = self.prompts * group;
        if let Some(minibatch) = self.minibatch.filter(|&m| m > responses) {
            return Err(format!(
                "train.minibatch {minibatch} is more than the {responses} responses of an iteration ({} prompts x group {group})",
                self.prompts
            ));
        }
        if !positive(self.lr) {
            return Err(format!("train.lr must be a positive number, got {}", self.lr));
        }
        check_grad_clip(self.grad_clip)?;
        check_every("eval_every", self.eval_every)?;
        check_every("checkpoint_every", self.checkpoint_every)?;
        Ok(())
    }
}

fn one_usize() -> usize {
    1
}
fn default_group_prompts() -> usize {
    8
}
