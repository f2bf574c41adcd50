//! The pieces of PPO for language models (Ziegler et al. 2019; InstructGPT), each a function
//! that reads like its equation:
//!
//! ```text
//! kl_t      = log π(a_t) - log π_ref(a_t)          (k1; k2 = ½ kl_t²; k3 = (q/p - 1) - log(q/p))
//! r_t       = -β kl_t  (+ score on the last response token)
//! δ_t       = r_t + γ V_{t+1} - V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t     (GAE)
//! L_policy  = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε, 1+ε)),   ρ_t = exp(log π - log π_old)
//! L_value   = mean_t ½ max((V - R)², (clip(V, V_old ± ε_v) - R)²)
//! L         = L_policy + c_v L_value - c_e mean_t H_t
//! β        ← β (1 + clip(KL / target - 1, -0.2, 0.2) · n / horizon)      (adaptive controller)
//! ```
//!
//! Per-token quantities are flat arrays over the response tokens of a batch (the layout loss
//! plugins receive), so the native loss and a loss plugin read exactly the same features.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The KL coefficient: fixed, or adapted so the KL to the reference tracks a target
/// (Ziegler et al. 2019).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum KlControl {
    Fixed {
        coef: f64,
    },
    Adaptive {
        #[serde(default = "default_kl_init")]
        init: f64,
        /// The KL per sequence (nats) to hold.
        target: f64,
        #[serde(default = "default_kl_horizon")]
        horizon: f64,
    },
}

impl Default for KlControl {
    fn default() -> Self {
        KlControl::Adaptive { init: default_kl_init(), target: 6.0, horizon: default_kl_horizon() }
    }
}

/// How the per-token KL to the reference is estimated from samples (Schulman's k1, k2, k3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KlEstimator {
    /// log p - log q: unbiased, can be negative per token.
    #[default]
    K1,
    /// ½ (log p - log q)²: biased, never negative, low variance; its gradient is that of the
    /// reverse KL.
    K2,
    /// (r - 1) - log r with r = q / p: unbiased, never negative, lower variance.
    K3,
}

fn default_kl_init() -> f64 {
    0.2
}
fn default_kl_horizon() -> f64 {
    10_000.0
}

/// Per-token KL estimate between the sampling policy (`logp`) and the reference (`ref_logp`).
pub fn kl_estimate(logp: f32, ref_logp: f32, estimator: KlEstimator) -> f32 {
    let log_ratio = ref_logp - logp;
    match estimator {
        KlEstimator::K1 => -log_ratio,
        KlEstimator::K2 => 0.5 * log_ratio * log_ratio,
        KlEstimator::K3 => log_ratio.exp() - 1.0 - log_ratio,
    }
}

/// GAE over one sequence: advantages and returns from per-token rewards and values (the value
/// after the last token is 0: the episode ends there).
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lam: f32) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_value = 0.0;
    let mut running = 0.0;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        running = delta + gamma * lam * running;
        advantages[t] = running;
        next_value = values[t];
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Standardise to mean 0, std 1 (unchanged when the spread is 0).
pub fn whiten(values: &mut [f32]) {
    let n = values.len() as f64;
    if n < 2.0 {
        return;
    }
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt();
    for v in values.iter_mut() {
        *v = ((*v as f64 - mean) / (std + 1e-8)) as f32;
    }
}

/// The KL coefficient β, fixed or adapted towards a target KL per sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlController {
    pub coef: f64,
    control: KlControl,
}

impl KlController {
    pub fn new(control: KlControl) -> Self {
        let coef = match control {
            KlControl::Fixed { coef } => coef,
            KlControl::Adaptive { init, .. } => init,
        };
        KlController { coef, control }
    }

    /// Resume with a coefficient saved earlier.
    pub fn with_coef(control: KlControl, coef: f64) -> Self {
        KlController { coef, control }
    }

    /// After a batch of `n` sequences whose mean KL per sequence was `kl`.
    pub fn update(&mut self, kl: f64, n: usize) {
        if let KlControl::Adaptive { target, horizon, .. } = self.control {
            let error = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.coef *= 1.0 + error * n as f64 / horizon;
        }
    }
}

/// Running mean and variance (Welford), for reward normalisation across rollouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningStats {
    pub count: f64,
    pub mean: f64,
    pub m2: f64,
}

impl RunningStats {
    pub fn push(&mut self, x: f64) {
        self.count += 1.0;
        let delta = x - self.mean;
        self.mean += delta / self.count;
        self.m2 += delta * (x - self.mean);
    }

    pub fn std(&self) -> f64 {
        if self.count < 2.0 { 1.0 } else { (self.m2 / (self.count - 1.0)).sqrt().max(1e-8) }
    }
}

/// The features of one PPO minibatch, flat over its response tokens.
#[derive(Debug, Clone)]
pub struct PpoBatch {
    /// log π(a_t) under the policy being trained, (N), differentiable.
    pub logprob: Tensor,
    /// Value estimates, (N), differentiable; `None` when the loss ignores values.
    pub value: Option<Tensor>,
    /// Entropy of π at each token, (N), differentiable; `None` when not needed.
    pub entropy: Option<Tensor>,
    pub old_logprob: Tensor,
    pub old_value: Tensor,
    pub advantage: Tensor,
    pub returns: Tensor,
}

/// The PPO settings the loss reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpoLossConfig {
    pub clip: f64,
    pub value_clip: f64,
    pub value_coef: f64,
    pub entropy_coef: f64,
}

/// The clipped PPO loss (policy + value - entropy bonus) and its diagnostics: clip fraction,
/// approximate KL to the sampling policy, value loss, value clip fraction.
pub fn ppo_loss(batch: &PpoBatch, config: &PpoLossConfig) -> candle_core::Result<(Tensor, Vec<(String, f64)>)> {
    let log_ratio = (&batch.logprob - &batch.old_logprob)?;
    let ratio = log_ratio.exp()?;
    let unclipped = (batch.advantage.neg()? * &ratio)?;
    let clipped = (batch.advantage.neg()? * ratio.clamp(1.0 - config.clip, 1.0 + config.clip)?)?;
    let policy = unclipped.maximum(&clipped)?.mean_all()?;
    let clip_fraction = clipped.gt(&unclipped)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64;
    // approx-KL to the sampling policy, k3 form: mean((ρ - 1) - log ρ).
    let approx_kl = ((&ratio - 1.0)? - &log_ratio)?.mean_all()?.to_scalar::<f32>()? as f64;
    let mut loss = policy.clone();
    let mut metrics = vec![
        ("policy_loss".to_string(), policy.to_scalar::<f32>()? as f64),
        ("clip_fraction".to_string(), clip_fraction),
        ("approx_kl".to_string(), approx_kl),
    ];
    if let (Some(value), true) = (&batch.value, config.value_coef > 0.0) {
        let low = (&batch.old_value - config.value_clip)?;
        let high = (&batch.old_value + config.value_clip)?;
        let value_clipped = value.maximum(&low)?.minimum(&high)?;
        let unclipped = (value - &batch.returns)?.sqr()?;
        let clipped = (value_clipped - &batch.returns)?.sqr()?;
        let value_loss = (unclipped.maximum(&clipped)?.mean_all()? * 0.5)?;
        let value_clip_fraction = clipped.gt(&unclipped)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64;
        metrics.push(("value_loss".into(), value_loss.to_scalar::<f32>()? as f64));
        metrics.push(("value_clip_fraction".into(), value_clip_fraction));
        loss = (loss + (value_loss * config.value_coef)?)?;
    }
    if let (Some(entropy), true) = (&batch.entropy, config.entropy_coef > 0.0) {
        loss = (loss - (entropy.mean_all()? * config.entropy_coef)?)?;
    }
    Ok((loss, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_with_lambda_one_sums_future_rewards() {
        let rewards = [0.0, 0.0, 1.0];
        let values = [0.5, 0.2, 0.1];
        let (adv, ret) = gae(&rewards, &values, 1.0, 1.0);
        // λ = γ = 1: the return is the sum of future rewards, the advantage return - value.
        for (got, want) in ret.iter().chain(&adv).zip([1.0, 1.0, 1.0, 0.5, 0.8, 0.9]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // λ = 0: one-step TD errors.
        let (adv, _) = gae(&rewards, &values, 1.0, 0.0);
        let want = [0.0 + 0.2 - 0.5, 0.0 + 0.1 - 0.2, 1.0 - 0.1];
        for (a, w) in adv.iter().zip(want) {
            assert!((a - w).abs() < 1e-6);
        }
    }

    #[test]
    fn the_adaptive_controller_moves_towards_its_target() {
        let control = KlControl::Adaptive { init: 0.2, target: 6.0, horizon: 100.0 };
        let mut high = KlController::new(control);
        high.update(12.0, 10);
        assert!((high.coef - 0.2 * 1.02).abs() < 1e-12, "KL above target raises beta (clipped error 0.2)");
        let mut low = KlController::new(control);
        low.update(5.4, 10);
        assert!((low.coef - 0.2 * (1.0 - 0.01)).abs() < 1e-12, "KL 10% under target lowers beta by 0.1 x 10/100");
        let mut fixed = KlController::new(KlControl::Fixed { coef: 0.05 });
        fixed.update(100.0, 10);
        assert_eq!(fixed.coef, 0.05);
    }

    #[test]
    fn k3_is_never_negative_and_k1_is_the_log_ratio() {
        for (p, q) in [(-1.0f32, -2.0f32), (-2.0, -1.0), (-0.5, -0.5)] {
            assert!(kl_estimate(p, q, KlEstimator::K3) >= 0.0);
            assert!((kl_estimate(p, q, KlEstimator::K1) - (p - q)).abs() < 1e-7);
        }
    }
}
