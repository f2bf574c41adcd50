//! The pieces of group-relative policy optimisation (GRPO: Shao et al. 2024, DeepSeekMath) and its
//! relatives (Dr. GRPO, RLOO, DAPO), each a function that reads like its equation, with TRL's
//! `GRPOTrainer` conventions:
//!
//! ```text
//! a group: G responses o_1..o_G to one prompt, rewards r_1..r_G
//! A_i = (r_i - mean(r)) / (std(r) + 1e-4)          GRPO (std with ddof 1, as torch.std)
//! A_i =  r_i - mean(r)                             Dr. GRPO (no std scaling)
//! A_i =  r_i - (Σ_j r_j - r_i) / (G - 1)           RLOO (leave-one-out baseline)
//!
//! ρ_t = exp(log π(a_t) - log π_old(a_t))
//! ℓ_t = -min(ρ_t A, clip(ρ_t, 1 - ε_low, 1 + ε_high) A) + β k(log π(a_t), log π_ref(a_t))
//! k1  = log π - log π_ref      k2 = ½ (log π - log π_ref)²      k3 = e^(log π_ref - log π) - (log π_ref - log π) - 1
//! L   = Σ_t w_t ℓ_t,   w_t = 1 / N            (token: every token of the batch counts the same; DAPO)
//!                      w_t = 1 / (S |o_s|)     (sequence: each sequence's mean, then the mean; GRPO)
//! ```
//!
//! The advantage of a sequence is spread over its tokens; per-token quantities are flat over the
//! response tokens of a batch, sequence after sequence, as loss plugins receive them (a plugin
//! reads the weights `w_t N` as its `mask`, so a token mean over the mask is `L`).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::ppo::KlEstimator;

/// The baseline a response's reward is compared with inside its group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupBaseline {
    /// The group's mean, the difference divided by the group's standard deviation (GRPO).
    #[default]
    MeanStd,
    /// The group's mean, unscaled (Dr. GRPO: no bias towards easy or hard prompts).
    Mean,
    /// The mean of the other responses' rewards (RLOO).
    LeaveOneOut,
}

/// How the per-token losses of a batch are averaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossNorm {
    /// Every response token of the batch weighs the same (DAPO, TRL's default).
    #[default]
    Token,
    /// Each response's token mean, then the mean over responses (the GRPO paper).
    Sequence,
}

/// Added to the group's standard deviation, as TRL does, so a nearly uniform group's advantages
/// stay finite.
pub const STD_EPSILON: f64 = 1e-4;

/// Each response's advantage from the rewards of groups of `group` consecutive responses.
pub fn group_advantages(rewards: &[f64], group: usize, baseline: GroupBaseline) -> Vec<f64> {
    let mut advantages = Vec::with_capacity(rewards.len());
    for rewards in rewards.chunks(group) {
        let g = rewards.len() as f64;
        let sum: f64 = rewards.iter().sum();
        let mean = sum / g;
        match baseline {
            GroupBaseline::MeanStd => {
                let variance = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (g - 1.0).max(1.0);
                let scale = variance.sqrt() + STD_EPSILON;
                advantages.extend(rewards.iter().map(|r| (r - mean) / scale));
            }
            GroupBaseline::Mean => advantages.extend(rewards.iter().map(|r| r - mean)),
            GroupBaseline::LeaveOneOut => {
                let others = (g - 1.0).max(1.0);
                advantages.extend(rewards.iter().map(|r| r - (sum - r) / others));
            }
        }
    }
    advantages
}

/// For each group of `group` consecutive responses, whether all its rewards are equal (it then
/// has no signal: every advantage is zero).
pub fn uniform_groups(rewards: &[f64], group: usize) -> Vec<bool> {
    rewards.chunks(group).map(|g| g.iter().all(|&r| r == g[0])).collect()
}

/// The weight `w_t` of every response token of sequences of lengths `lens`, flat.
pub fn token_weights(lens: &[usize], norm: LossNorm) -> Vec<f32> {
    let tokens: usize = lens.iter().sum();
    let sequences = lens.iter().filter(|&&l| l > 0).count();
    let mut weights = Vec::with_capacity(tokens);
    for &len in lens {
        let w = match norm {
            LossNorm::Token => 1.0 / tokens.max(1) as f64,
            LossNorm::Sequence => 1.0 / (sequences.max(1) * len.max(1)) as f64,
        };
        weights.extend(std::iter::repeat_n(w as f32, len));
    }
    weights
}

/// The per-token KL estimate between the policy and the reference, differentiable in the
/// policy's log-probs.
pub fn kl_penalty(logprob: &Tensor, ref_logprob: &Tensor, estimator: KlEstimator) -> candle_core::Result<Tensor> {
    // log(π_ref / π)
    let log_ratio = (ref_logprob - logprob)?;
    match estimator {
        KlEstimator::K1 => log_ratio.neg(),
        KlEstimator::K2 => log_ratio.sqr()? * 0.5,
        KlEstimator::K3 => (log_ratio.exp()? - &log_ratio)? - 1.0,
    }
}

/// The features of one GRPO minibatch, flat over its response tokens.
#[derive(Debug, Clone)]
pub struct GrpoBatch {
    /// log π(a_t) under the policy being trained, (N), differentiable.
    pub logprob: Tensor,
    /// log π_old(a_t) under the policy that sampled, (N).
    pub old_logprob: Tensor,
    /// log π_ref(a_t) under the frozen reference, (N); `None` when β is 0.
    pub ref_logprob: Option<Tensor>,
    /// The sequence's advantage at each of its tokens, (N).
    pub advantage: Tensor,
    /// `w_t`, (N): the loss is `Σ_t w_t ℓ_t`.
    pub weight: Tensor,
}

/// The GRPO settings the loss reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoLossConfig {
    /// ε_low: the ratio is kept above 1 - clip_low where the advantage is negative.
    pub clip_low: f64,
    /// ε_high: the ratio is kept below 1 + clip_high where the advantage is positive.
    pub clip_high: f64,
    /// β, the weight of the KL penalty to the reference.
    pub kl_coef: f64,
    pub estimator: KlEstimator,
}

/// A loss term and its diagnostics.
pub type LossTerm = (Tensor, Vec<(String, f64)>);

/// The clipped surrogate `Σ_t w_t max(-ρ_t A_t, -clip(ρ_t) A_t)` and its diagnostics: the share
/// of tokens whose ratio was cut below (`clip_fraction/low`: ρ < 1 - ε_low, A < 0), above
/// (`clip_fraction/high`: ρ > 1 + ε_high, A > 0) and in all (`clip_fraction`), and the k3
/// approximate KL to the sampling policy (`approx_kl`).
pub fn clipped_surrogate(
    batch: &GrpoBatch,
    config: &GrpoLossConfig,
) -> candle_core::Result<(Tensor, Vec<(String, f64)>)> {
    let log_ratio = (&batch.logprob - &batch.old_logprob)?;
    let ratio = log_ratio.exp()?;
    let neg_advantage = batch.advantage.neg()?;
    let unclipped = (&neg_advantage * &ratio)?;
    let clipped = (&neg_advantage * ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high)?)?;
    let surrogate = (unclipped.maximum(&clipped)? * &batch.weight)?.sum_all()?;
    let share = |mask: Tensor| -> candle_core::Result<f64> {
        Ok(mask.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64)
    };
    let zero = batch.advantage.zeros_like()?;
    let low = ratio.lt(1.0 - config.clip_low)?.mul(&batch.advantage.lt(&zero)?)?;
    let high = ratio.gt(1.0 + config.clip_high)?.mul(&batch.advantage.gt(&zero)?)?;
    let approx_kl = ((&ratio - 1.0)? - &log_ratio)?.mean_all()?.to_scalar::<f32>()? as f64;
    let metrics = vec![
        ("policy_loss".to_string(), surrogate.to_scalar::<f32>()? as f64),
        ("clip_fraction/low".to_string(), share(low.clone())?),
        ("clip_fraction/high".to_string(), share(high.clone())?),
        ("clip_fraction".to_string(), share((low + high)?)?),
        ("approx_kl".to_string(), approx_kl),
    ];
    Ok((surrogate, metrics))
}

/// The weighted KL penalty `β Σ_t w_t k(t)` (nothing when β is 0 or there is no reference) and
/// its unweighted per-token mean, logged as `kl_penalty`.
pub fn weighted_kl_penalty(batch: &GrpoBatch, config: &GrpoLossConfig) -> candle_core::Result<Option<LossTerm>> {
    let Some(ref_logprob) = batch.ref_logprob.as_ref().filter(|_| config.kl_coef > 0.0) else {
        return Ok(None);
    };
    let kl = kl_penalty(&batch.logprob, ref_logprob, config.estimator)?;
    let mean = kl.mean_all()?.to_scalar::<f32>()? as f64;
    let penalty = ((kl * &batch.weight)?.sum_all()? * config.kl_coef)?;
    Ok(Some((penalty, vec![("kl_penalty".to_string(), mean)])))
}

/// The native GRPO loss: the clipped surrogate plus the KL penalty, and their diagnostics.
pub fn grpo_loss(batch: &GrpoBatch, config: &GrpoLossConfig) -> candle_core::Result<LossTerm> {
    let (mut loss, mut metrics) = clipped_surrogate(batch, config)?;
    if let Some((penalty, more)) = weighted_kl_penalty(batch, config)? {
        loss = (loss + penalty)?;
        metrics.extend(more);
    }
    Ok((loss, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(got: &[f64], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tolerance, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn group_advantages_by_hand() {
        // Group 1: rewards 1, 0, 0, 1: mean 0.5, std (ddof 1) sqrt(1/3) = 0.57735.
        // Group 2: 2, 4, 6, 8: mean 5, std sqrt(20/3) = 2.58199.
        let rewards = [1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0];
        let s1 = (1.0f64 / 3.0).sqrt() + STD_EPSILON;
        let s2 = (20.0f64 / 3.0).sqrt() + STD_EPSILON;
        close(
            &group_advantages(&rewards, 4, GroupBaseline::MeanStd),
            &[0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, -3.0 / s2, -1.0 / s2, 1.0 / s2, 3.0 / s2],
            1e-12,
        );
        close(
            &group_advantages(&rewards, 4, GroupBaseline::Mean),
            &[0.5, -0.5, -0.5, 0.5, -3.0, -1.0, 1.0, 3.0],
            1e-12,
        );
        // RLOO: 1 - (0 + 0 + 1) / 3 = 2/3; 0 - 2/3; 2 - (4 + 6 + 8) / 3 = -4; 4 - 16/3; ...
        close(
            &group_advantages(&rewards, 4, GroupBaseline::LeaveOneOut),
            &[2.0 / 3.0, -2.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0, -4.0, 4.0 - 16.0 / 3.0, 6.0 - 14.0 / 3.0, 4.0],
            1e-12,
        );
        // RLOO is the mean baseline scaled by G / (G - 1).
        let scaled: Vec<f64> =
            group_advantages(&rewards, 4, GroupBaseline::Mean).iter().map(|a| a * 4.0 / 3.0).collect();
        close(&group_advantages(&rewards, 4, GroupBaseline::LeaveOneOut), &scaled, 1e-12);
    }

    #[test]
    fn a_group_of_equal_rewards_has_no_signal() {
        let rewards = [0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 3.0, 3.0, 3.0];
        assert_eq!(uniform_groups(&rewards, 3), [true, false, true]);
        for baseline in [GroupBaseline::MeanStd, GroupBaseline::Mean, GroupBaseline::LeaveOneOut] {
            let advantages = group_advantages(&rewards, 3, baseline);
            assert!(advantages[..3].iter().chain(&advantages[6..]).all(|&a| a == 0.0), "{baseline:?}: {advantages:?}");
        }
    }

    #[test]
    fn token_and_sequence_weights_sum_to_one() {
        // Lengths 1 and 3: token weights 1/4 each; sequence weights 1/2 and 1/6 x 3.
        close(&token_weights(&[1, 3], LossNorm::Token).iter().map(|&w| w as f64).collect::<Vec<_>>(), &[0.25; 4], 1e-7);
        close(
            &token_weights(&[1, 3], LossNorm::Sequence).iter().map(|&w| w as f64).collect::<Vec<_>>(),
            &[0.5, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0],
            1e-7,
        );
    }

    /// The loss and its gradient with respect to the policy's log-probs.
    fn loss_and_grad(
        logprob: &[f32],
        old: &[f32],
        reference: &[f32],
        advantage: &[f32],
        weight: &[f32],
        config: &GrpoLossConfig,
    ) -> (f64, Vec<f64>, Vec<(String, f64)>) {
        let device = Device::Cpu;
        let n = logprob.len();
        let var = Var::from_vec(logprob.to_vec(), n, &device).expect("var");
        let tensor = |v: &[f32]| Tensor::from_vec(v.to_vec(), n, &device).expect("tensor");
        let batch = GrpoBatch {
            logprob: var.as_tensor().clone(),
            old_logprob: tensor(old),
            ref_logprob: Some(tensor(reference)),
            advantage: tensor(advantage),
            weight: tensor(weight),
        };
        let (loss, metrics) = grpo_loss(&batch, config).expect("loss");
        let grads = loss.backward().expect("backward");
        let grad = grads.get(var.as_tensor()).expect("a gradient").to_vec1::<f32>().expect("values");
        (loss.to_scalar::<f32>().expect("scalar") as f64, grad.into_iter().map(f64::from).collect(), metrics)
    }

    #[test]
    fn the_clipped_loss_and_its_gradient_by_hand() {
        let ln = |x: f32| x.ln();
        // Ratios 1.5 (A > 0, clipped at 1 + 0.28), 0.5 (A < 0, clipped at 1 - 0.2), 1.1 (A > 0,
        // inside), 0.9 (A < 0, inside), 1.5 (A < 0: the unclipped branch is the larger).
        let old = [-1.0f32, -1.0, -1.0, -1.0, -1.0];
        let ratios = [1.5f32, 0.5, 1.1, 0.9, 1.5];
        let logprob: Vec<f32> = old.iter().zip(ratios).map(|(o, r)| o + ln(r)).collect();
        let advantage = [2.0f32, -1.0, 0.5, -3.0, -1.0];
        let weight = [0.2f32; 5];
        let config = GrpoLossConfig { clip_low: 0.2, clip_high: 0.28, kl_coef: 0.0, estimator: KlEstimator::K3 };
        let (loss, grad, metrics) = loss_and_grad(&logprob, &old, &logprob, &advantage, &weight, &config);
        // ℓ = max(-ρA, -clip(ρ)A): -1.28·2, -(0.8·-1), -1.1·0.5, -(0.9·-3), -(1.5·-1).
        let terms = [-2.56, 0.8, -0.55, 2.7, 1.5];
        assert!((loss - 0.2 * terms.iter().sum::<f64>()).abs() < 1e-5, "{loss}");
        // dℓ/dlog π = -A ρ where the unclipped branch is taken, else 0; times w.
        close(&grad, &[0.0, 0.0, -0.2 * 0.5 * 1.1, 0.2 * 3.0 * 0.9, 0.2 * 1.5], 1e-5);
        let metric = |name: &str| metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v).expect(name);
        close(
            &[metric("clip_fraction/high"), metric("clip_fraction/low"), metric("clip_fraction")],
            &[0.2, 0.2, 0.4],
            1e-7,
        );
    }

    #[test]
    fn kl_estimators_and_their_gradients_by_hand() {
        // log π - log π_ref = d per token; ratio 1 and zero advantage leave the KL term alone.
        let logprob = [-1.0f32, -2.0, -0.5];
        let reference = [-1.5f32, -1.0, -0.5];
        let d: Vec<f64> = logprob.iter().zip(&reference).map(|(p, q)| (p - q) as f64).collect();
        let weight = [0.5f32, 0.25, 0.25];
        // Each estimator's value and derivative as functions of d.
        type Of = fn(f64) -> f64;
        let cases: [(KlEstimator, Of, Of); 3] = [
            (KlEstimator::K1, |d| d, |_| 1.0),
            (KlEstimator::K2, |d| 0.5 * d * d, |d| d),
            (KlEstimator::K3, |d| (-d).exp() + d - 1.0, |d| 1.0 - (-d).exp()),
        ];
        for (estimator, value, slope) in cases {
            let config = GrpoLossConfig { clip_low: 0.2, clip_high: 0.2, kl_coef: 0.1, estimator };
            let (loss, grad, _) = loss_and_grad(&logprob, &logprob, &reference, &[0.0; 3], &weight, &config);
            let want: f64 = d.iter().zip(weight).map(|(&d, w)| 0.1 * w as f64 * value(d)).sum();
            assert!((loss - want).abs() < 1e-6, "{estimator:?}: {loss} vs {want}");
            let want_grad: Vec<f64> = d.iter().zip(weight).map(|(&d, w)| 0.1 * w as f64 * slope(d)).collect();
            close(&grad, &want_grad, 1e-6);
            // The host's scalar estimate (logged by PPO and GRPO) agrees with the tensor one.
            for (i, &d) in d.iter().enumerate() {
                let scalar = crate::train::ppo::kl_estimate(logprob[i], reference[i], estimator) as f64;
                assert!((scalar - value(d)).abs() < 1e-6, "{estimator:?}");
            }
        }
    }
}
