//! The policy update: `epochs` passes of shuffled minibatches over a rollout batch, each
//! minibatch's loss (the native clipped PPO loss, or a loss plugin through the surrogate-gradient
//! contract) backpropagated and followed by one optimizer step.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Tensor, Var};

use super::advantages::Rollout;
use super::policy::Learner;
use super::{RlError, tensor};
use crate::data::blocks::permutation;
use crate::plugins::{Feature, LossPlugin};
use crate::train::AdamW;
use crate::train::plugin_loss::{Features, plugin_loss};
use crate::train::ppo::{PpoBatch, PpoLossConfig, ppo_loss};

/// How one batch is optimised.
pub struct UpdateConfig<'a> {
    pub epochs: usize,
    pub minibatch: usize,
    pub lr: f64,
    pub grad_clip: Option<f64>,
    pub loss: PpoLossConfig,
    /// Replaces the native loss when set.
    pub loss_plugin: Option<&'a LossPlugin>,
    /// Seeds the minibatch order (with the iteration and the epoch).
    pub seed: u64,
}

/// What the update did: diagnostics averaged over its optimizer steps, and the seconds spent
/// inside the loss plugin.
pub struct UpdateStats {
    pub metrics: Vec<(String, f64)>,
    pub plugin_seconds: f64,
}

/// Optimise `learner` on the rollout batch of iteration `step`.
#[allow(clippy::too_many_arguments)]
pub fn update(
    learner: &Learner,
    vars: &[(String, Var)],
    optimizer: &mut AdamW,
    rows: &[Vec<u32>],
    lens: &[usize],
    rollout: &Rollout,
    step: u64,
    pad: u32,
    config: &UpdateConfig,
) -> Result<UpdateStats, RlError> {
    let mut averages = Averages::default();
    let mut plugin_seconds = 0.0;
    for epoch in 0..config.epochs {
        for members in minibatches(rows.len(), config.minibatch, config.seed, step, epoch) {
            let MinibatchLoss { loss, diagnostics, plugin_seconds: seconds } =
                minibatch_loss(learner, rows, lens, rollout, &members, pad, config)?;
            plugin_seconds += seconds;
            let norm = optimizer_step(&loss, vars, optimizer, config.lr, config.grad_clip, epoch)?;
            averages.add(diagnostics);
            averages.add(vec![("grad_norm".into(), norm)]);
            averages.count_step();
        }
    }
    Ok(UpdateStats { metrics: averages.means(), plugin_seconds })
}

/// The minibatches of one epoch over `n` sequences: a shuffled order (a pure function of the
/// seed, the iteration and the epoch) cut into chunks of `size`.
pub fn minibatches(n: usize, size: usize, seed: u64, step: u64, epoch: usize) -> Vec<Vec<usize>> {
    let order = permutation(n, seed ^ step.wrapping_mul(31) ^ (epoch as u64).wrapping_mul(0x632b_e59b_d9b4_e019));
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Backpropagate `loss` and take one optimizer step; the gradient norm, which must be finite
/// (else no weight changes).
pub fn optimizer_step(
    loss: &Tensor,
    vars: &[(String, Var)],
    optimizer: &mut AdamW,
    lr: f64,
    grad_clip: Option<f64>,
    epoch: usize,
) -> Result<f64, RlError> {
    let grads = loss.backward().map_err(tensor("backward pass"))?;
    let by_name: HashMap<String, Tensor> =
        vars.iter().filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
    let norm = optimizer.step(&by_name, lr, grad_clip).map_err(tensor("optimizer step"))?;
    if !norm.is_finite() {
        return Err(RlError::Diverged { epoch, norm });
    }
    Ok(norm)
}

/// Diagnostics summed over an update's optimizer steps, then averaged.
#[derive(Debug, Default)]
pub struct Averages {
    sums: Vec<(String, f64)>,
    steps: usize,
}

impl Averages {
    /// Add one step's diagnostics (call [`Averages::count_step`] once per step).
    pub fn add(&mut self, diagnostics: Vec<(String, f64)>) {
        for (name, value) in diagnostics {
            match self.sums.iter_mut().find(|(n, _)| *n == name) {
                Some((_, sum)) => *sum += value,
                None => self.sums.push((name, value)),
            }
        }
    }

    /// One more optimizer step.
    pub fn count_step(&mut self) {
        self.steps += 1;
    }

    /// Each diagnostic's mean over the steps.
    pub fn means(self) -> Vec<(String, f64)> {
        let steps = self.steps.max(1) as f64;
        self.sums.into_iter().map(|(n, v)| (n, v / steps)).collect()
    }
}

/// One minibatch's loss, its diagnostics, and the seconds spent inside the loss plugin.
struct MinibatchLoss {
    loss: Tensor,
    diagnostics: Vec<(String, f64)>,
    plugin_seconds: f64,
}

/// The loss of one minibatch (the rollout rows at `members`).
fn minibatch_loss(
    learner: &Learner,
    rows: &[Vec<u32>],
    lens: &[usize],
    rollout: &Rollout,
    members: &[usize],
    pad: u32,
    config: &UpdateConfig,
) -> Result<MinibatchLoss, RlError> {
    let device = learner.policy.device();
    let picked_rows: Vec<Vec<u32>> = members.iter().map(|&m| rows[m].clone()).collect();
    let picked_lens: Vec<usize> = members.iter().map(|&m| lens[m]).collect();
    let predicted = learner.predict(&picked_rows, &picked_lens, pad)?;
    let constant = |values: &[f32]| {
        let picked = rollout.gather(values, members);
        let n = picked.len();
        Tensor::from_vec(picked, (n,), device).map_err(tensor("minibatch features"))
    };
    let batch = PpoBatch {
        logprob: predicted.logprob,
        value: Some(predicted.value),
        entropy: Some(predicted.entropy),
        old_logprob: constant(&rollout.old_logprob)?,
        old_value: constant(&rollout.old_value)?,
        advantage: constant(&rollout.advantage)?,
        returns: constant(&rollout.returns)?,
    };
    let entropy = batch
        .entropy
        .as_ref()
        .and_then(|e| e.mean_all().ok())
        .and_then(|e| e.to_scalar::<f32>().ok())
        .unwrap_or(f32::NAN);
    let started = Instant::now();
    let (loss, mut diagnostics) = match config.loss_plugin {
        None => ppo_loss(&batch, &config.loss).map_err(tensor("PPO loss"))?,
        Some(plugin) => ppo_plugin_loss(plugin, &batch, &picked_lens)?,
    };
    let plugin_seconds = if config.loss_plugin.is_some() { started.elapsed().as_secs_f64() } else { 0.0 };
    // The host's entropy is the one logged: a plugin reporting its own under the same name
    // would otherwise be summed with it.
    diagnostics.retain(|(name, _)| name != "entropy");
    diagnostics.push(("entropy".into(), entropy as f64));
    Ok(MinibatchLoss { loss, diagnostics, plugin_seconds })
}

/// The minibatch's features as a loss plugin reads them, and its surrogate loss (with the
/// plugin's loss value logged as `plugin_loss`).
pub fn ppo_plugin_loss(
    plugin: &LossPlugin,
    batch: &PpoBatch,
    lens: &[usize],
) -> Result<(Tensor, Vec<(String, f64)>), RlError> {
    let offsets = super::advantages::offsets(lens);
    let mask = batch.logprob.ones_like().map_err(tensor("loss plugin mask"))?;
    let mut values: Vec<(Feature, &Tensor)> = vec![
        (Feature::Logprob, &batch.logprob),
        (Feature::OldLogprob, &batch.old_logprob),
        (Feature::OldValue, &batch.old_value),
        (Feature::Advantage, &batch.advantage),
        (Feature::Return, &batch.returns),
        (Feature::Mask, &mask),
    ];
    if let Some(value) = &batch.value {
        values.push((Feature::Value, value));
    }
    if let Some(entropy) = &batch.entropy {
        values.push((Feature::Entropy, entropy));
    }
    let loss = plugin_loss(plugin, &Features { offsets, values })?;
    let (surrogate, value, mut metrics) = (loss.surrogate, loss.value, loss.metrics);
    metrics.push(("plugin_loss".into(), value));
    Ok((surrogate, metrics))
}
