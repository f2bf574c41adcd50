//! The update of the group-relative methods (GRPO, RLOO): `epochs` passes of shuffled
//! minibatches over a batch of groups, each minibatch's loss (the native clipped loss with its KL
//! penalty, or a loss plugin plus the same penalty) backpropagated and followed by one optimizer
//! step. There is no critic: a sequence's advantage comes from its group, and every token of the
//! sequence carries it.

use std::time::Instant;

use candle_core::{Tensor, Var};

use super::advantages::{gather, offsets};
use super::policy::policy_pass;
use super::update::{Averages, UpdateStats, minibatches, optimizer_step};
use super::{RlError, tensor};
use crate::model::Model;
use crate::plugins::{Feature, LossPlugin};
use crate::train::AdamW;
use crate::train::grpo::{GrpoBatch, GrpoLossConfig, LossNorm, grpo_loss, token_weights, weighted_kl_penalty};
use crate::train::plugin_loss::{Features, plugin_loss};

/// A batch of sampled responses, ready to optimise on.
pub struct GroupBatch<'a> {
    /// Prompt then response tokens, one row per response.
    pub rows: &'a [Vec<u32>],
    /// Response lengths.
    pub lens: &'a [usize],
    /// The sampling policy's log-probs of the response tokens, flat; `None` when the batch is
    /// optimised in one step (the policy that sampled is then the one being trained).
    pub old_logprob: Option<&'a [f32]>,
    /// The reference's log-probs, flat; `None` without a KL penalty.
    pub ref_logprob: Option<&'a [f32]>,
    /// Each response's advantage.
    pub advantages: &'a [f64],
}

/// How a batch is optimised.
#[derive(Clone, Copy)]
pub struct GroupUpdateConfig<'a> {
    pub epochs: usize,
    /// Responses per optimizer step.
    pub minibatch: usize,
    pub lr: f64,
    pub grad_clip: Option<f64>,
    pub loss: GrpoLossConfig,
    pub norm: LossNorm,
    /// Replaces the clipped surrogate when set (the KL penalty stays the host's).
    pub loss_plugin: Option<&'a LossPlugin>,
    /// Seeds the minibatch order (with the iteration and the epoch).
    pub seed: u64,
}

/// What an update did, and, when the batch came without the sampling policy's log-probs (one
/// step: its first pass was that policy's), those log-probs, flat in batch order.
pub struct GroupUpdate {
    pub stats: UpdateStats,
    pub sampled_logprob: Option<Vec<f32>>,
}

/// Optimise `policy` on the batch of iteration `step`.
#[allow(clippy::too_many_arguments)]
pub fn update_group(
    policy: &Model,
    vars: &[(String, Var)],
    optimizer: &mut AdamW,
    batch: &GroupBatch,
    step: u64,
    pad: u32,
    config: &GroupUpdateConfig,
) -> Result<GroupUpdate, RlError> {
    let offsets = offsets(batch.lens);
    let mut averages = Averages::default();
    let mut plugin_seconds = 0.0;
    let mut sampled: Option<Vec<f32>> = None;
    for epoch in 0..config.epochs {
        for members in minibatches(batch.rows.len(), config.minibatch, config.seed, step, epoch) {
            let minibatch = minibatch_loss(policy, batch, &offsets, &members, pad, config)?;
            plugin_seconds += minibatch.plugin_seconds;
            if let (None, 0, Some(values)) = (batch.old_logprob, epoch, minibatch.detached_logprob) {
                let flat = sampled.get_or_insert_with(|| vec![0.0; offsets[offsets.len() - 1] as usize]);
                let mut read = values.into_iter();
                for &m in &members {
                    for slot in &mut flat[offsets[m] as usize..offsets[m + 1] as usize] {
                        *slot = read.next().unwrap_or(f32::NAN);
                    }
                }
            }
            let norm = optimizer_step(&minibatch.loss, vars, optimizer, config.lr, config.grad_clip, epoch)?;
            averages.add(minibatch.diagnostics);
            averages.add(vec![("grad_norm".into(), norm)]);
            averages.count_step();
        }
    }
    Ok(GroupUpdate { stats: UpdateStats { metrics: averages.means(), plugin_seconds }, sampled_logprob: sampled })
}

/// One minibatch's loss, its diagnostics, the seconds spent in the loss plugin, and (when the
/// batch has no old log-probs) the log-probs of this pass, detached.
struct MinibatchLoss {
    loss: Tensor,
    diagnostics: Vec<(String, f64)>,
    plugin_seconds: f64,
    detached_logprob: Option<Vec<f32>>,
}

/// The loss of the responses at `members`.
fn minibatch_loss(
    policy: &Model,
    batch: &GroupBatch,
    offsets: &[u32],
    members: &[usize],
    pad: u32,
    config: &GroupUpdateConfig,
) -> Result<MinibatchLoss, RlError> {
    let device = policy.device();
    let rows: Vec<Vec<u32>> = members.iter().map(|&m| batch.rows[m].clone()).collect();
    let lens: Vec<usize> = members.iter().map(|&m| batch.lens[m]).collect();
    let pass = policy_pass(policy, &rows, &lens, pad)?;
    let flat = |values: Vec<f32>| {
        let n = values.len();
        Tensor::from_vec(values, n, device).map_err(tensor("minibatch features"))
    };
    let (old_logprob, detached_logprob) = match batch.old_logprob {
        Some(values) => (flat(gather(values, offsets, members))?, None),
        None => {
            let detached = pass.logprob.detach();
            let values = detached.to_vec1::<f32>().map_err(tensor("reading log-probs"))?;
            (detached, Some(values))
        }
    };
    let ref_logprob = batch.ref_logprob.map(|values| flat(gather(values, offsets, members))).transpose()?;
    let advantage: Vec<f32> =
        members.iter().flat_map(|&m| std::iter::repeat_n(batch.advantages[m] as f32, batch.lens[m])).collect();
    let weights = token_weights(&lens, config.norm);
    let grpo = GrpoBatch {
        logprob: pass.logprob,
        old_logprob,
        ref_logprob,
        advantage: flat(advantage)?,
        weight: flat(weights)?,
    };
    let entropy = pass.entropy.mean_all().and_then(|e| e.to_scalar::<f32>()).map_err(tensor("entropy"))?;
    let started = Instant::now();
    let (loss, mut diagnostics) = match config.loss_plugin {
        None => grpo_loss(&grpo, &config.loss).map_err(tensor("GRPO loss"))?,
        Some(plugin) => {
            let (surrogate, mut diagnostics) = group_plugin_loss(plugin, &grpo, &pass.entropy, &lens)?;
            let penalty = weighted_kl_penalty(&grpo, &config.loss).map_err(tensor("KL penalty"))?;
            match penalty {
                Some((penalty, more)) => {
                    diagnostics.extend(more);
                    ((surrogate + penalty).map_err(tensor("KL penalty"))?, diagnostics)
                }
                None => (surrogate, diagnostics),
            }
        }
    };
    let plugin_seconds = if config.loss_plugin.is_some() { started.elapsed().as_secs_f64() } else { 0.0 };
    // The host's entropy is the one logged (a plugin may report its own under the same name).
    diagnostics.retain(|(name, _)| name != "entropy");
    diagnostics.push(("entropy".into(), entropy as f64));
    Ok(MinibatchLoss { loss, diagnostics, plugin_seconds, detached_logprob })
}

/// A loss plugin's surrogate over the minibatch's features: `logprob`, `old-logprob`,
/// `advantage`, `entropy`, `ref-logprob` (when there is a reference), and the loss weights as
/// `mask`, scaled so that a token mean over the mask is the weighted sum the native loss takes.
/// The plugin's own loss value is logged as `plugin_loss`.
pub fn group_plugin_loss(
    plugin: &LossPlugin,
    batch: &GrpoBatch,
    entropy: &Tensor,
    lens: &[usize],
) -> Result<(Tensor, Vec<(String, f64)>), RlError> {
    let tokens: usize = lens.iter().sum();
    let mask = (&batch.weight * tokens as f64).map_err(tensor("loss plugin mask"))?;
    let mut values: Vec<(Feature, &Tensor)> = vec![
        (Feature::Logprob, &batch.logprob),
        (Feature::OldLogprob, &batch.old_logprob),
        (Feature::Advantage, &batch.advantage),
        (Feature::Entropy, entropy),
        (Feature::Mask, &mask),
    ];
    if let Some(reference) = &batch.ref_logprob {
        values.push((Feature::RefLogprob, reference));
    }
    let loss = plugin_loss(plugin, &Features { offsets: offsets(lens), values })?;
    let mut metrics = loss.metrics;
    metrics.push(("plugin_loss".into(), loss.value));
    Ok((loss.surrogate, metrics))
}
