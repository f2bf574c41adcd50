//! From scores to per-token advantages: the KL penalty to the reference on every response
//! token, the score on the last one, and GAE over each sequence.
//!
//! ```text
//! r_t = -β kl_t  (+ score on the last response token)
//! A, R = GAE(r, V; γ, λ)            (whitened over the batch when asked)
//! ```

use crate::train::ppo::{KlEstimator, gae, kl_estimate, whiten};

/// Rollout quantities over the response tokens of a batch, flat, sequence after sequence;
/// sequence `s` spans `offsets[s]..offsets[s + 1]`.
pub struct Rollout {
    pub offsets: Vec<u32>,
    pub old_logprob: Vec<f32>,
    pub old_value: Vec<f32>,
    pub advantage: Vec<f32>,
    pub returns: Vec<f32>,
}

impl Rollout {
    /// The values of the sequences `members`, in that order, flat.
    pub fn gather(&self, values: &[f32], members: &[usize]) -> Vec<f32> {
        gather(values, &self.offsets, members)
    }
}

/// The values of the sequences `members` of a flat array with `offsets`, in that order, flat.
pub fn gather(values: &[f32], offsets: &[u32], members: &[usize]) -> Vec<f32> {
    members.iter().flat_map(|&m| values[offsets[m] as usize..offsets[m + 1] as usize].iter().copied()).collect()
}

/// The offsets of sequences of lengths `lens` laid end to end: `[0, l0, l0 + l1, ...]`.
pub fn offsets(lens: &[usize]) -> Vec<u32> {
    let mut offsets = Vec::with_capacity(lens.len() + 1);
    offsets.push(0u32);
    for &len in lens {
        offsets.push(offsets[offsets.len() - 1] + len as u32);
    }
    offsets
}

/// How advantages are made from scores.
#[derive(Debug, Clone, Copy)]
pub struct AdvantageConfig {
    /// β, the KL coefficient of this iteration.
    pub kl_coef: f64,
    pub estimator: KlEstimator,
    pub gamma: f64,
    pub lam: f64,
    /// Standardise advantages over the batch.
    pub whiten: bool,
}

/// A batch's rollout, with the KL of each sequence and how much of the return the critic
/// explained.
pub struct Advantages {
    pub rollout: Rollout,
    /// KL to the reference summed over each sequence's tokens.
    pub sequence_kl: Vec<f64>,
    pub explained_variance: f64,
}

/// KL-penalised per-token rewards and their GAE advantages and returns.
pub fn kl_penalised_gae(
    lens: &[usize],
    old_logprob: Vec<f32>,
    old_value: Vec<f32>,
    ref_logprob: &[f32],
    scores: &[f64],
    config: &AdvantageConfig,
) -> Advantages {
    let mut offsets = vec![0u32];
    let (mut advantage, mut returns) = (Vec::new(), Vec::new());
    let mut sequence_kl = Vec::with_capacity(lens.len());
    for (s, &len) in lens.iter().enumerate() {
        let start = offsets[s] as usize;
        let range = start..start + len;
        let kls: Vec<f32> =
            range.clone().map(|i| kl_estimate(old_logprob[i], ref_logprob[i], config.estimator)).collect();
        sequence_kl.push(kls.iter().map(|&k| k as f64).sum::<f64>());
        let mut rewards: Vec<f32> = kls.iter().map(|k| -(config.kl_coef as f32) * k).collect();
        if let Some(last) = rewards.last_mut() {
            *last += scores[s] as f32;
        }
        let (a, r) = gae(&rewards, &old_value[range], config.gamma as f32, config.lam as f32);
        advantage.extend(a);
        returns.extend(r);
        offsets.push((start + len) as u32);
    }
    let explained_variance = explained_variance(&old_value, &returns);
    if config.whiten {
        whiten(&mut advantage);
    }
    Advantages {
        rollout: Rollout { offsets, old_logprob, old_value, advantage, returns },
        sequence_kl,
        explained_variance,
    }
}

/// 1 - Var(returns - values) / Var(returns): how much of the return the critic explains.
pub fn explained_variance(values: &[f32], returns: &[f32]) -> f64 {
    let n = returns.len() as f64;
    let mean = |x: &mut dyn Iterator<Item = f64>| x.sum::<f64>() / n;
    let r_mean = mean(&mut returns.iter().map(|&r| r as f64));
    let r_var = returns.iter().map(|&r| (r as f64 - r_mean).powi(2)).sum::<f64>() / n;
    let d: Vec<f64> = returns.iter().zip(values).map(|(&r, &v)| (r - v) as f64).collect();
    let d_mean = d.iter().sum::<f64>() / n;
    let d_var = d.iter().map(|x| (x - d_mean).powi(2)).sum::<f64>() / n;
    if r_var > 0.0 { 1.0 - d_var / r_var } else { f64::NAN }
}
