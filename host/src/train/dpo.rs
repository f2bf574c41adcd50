//! Direct preference optimisation (Rafailov et al. 2023) and its variants: losses over the
//! summed response log-probabilities of (chosen, rejected) pairs under the policy being trained
//! and a frozen reference, with TRL's `DPOTrainer` conventions.
//!
//! Sequences come in pairs, chosen then rejected (sequence `2i` is pair `i`'s chosen response,
//! `2i + 1` its rejected one, as the loss plugins receive them). With `pi` the policy's and `ref`
//! the reference's summed log-probabilities:
//!
//! ```text
//! h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
//! sigmoid: l = (1 - ε) softplus(-β h) + ε softplus(β h)    (DPO; ε > 0: conservative DPO)
//! ipo:     l = (h - 1 / (2β))^2                              (Azar et al. 2023)
//! loss = mean of l over pairs
//! ```
//!
//! The implicit reward of a response is `β (pi - ref)`; what training logs is TRL's
//! `rewards/*`: the mean chosen and rejected rewards, their margin, and the share of pairs whose
//! chosen reward is the larger (preference accuracy).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::loss::softplus;
use crate::model::{Model, ModelError};

/// Which preference loss applies to the log-ratio difference `h`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DpoLossType {
    /// DPO's `-log sigmoid(β h)`, label-smoothed when `label_smoothing > 0`.
    #[default]
    Sigmoid,
    /// IPO's `(h - 1 / (2β))^2`, on summed log-probabilities as the IPO paper writes it.
    Ipo,
}

/// The native preference loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoConfig {
    /// Inverse temperature of the implicit reward: larger stays closer to the reference.
    pub beta: f64,
    /// Assumed rate of flipped preference labels (conservative DPO), in [0, 0.5).
    pub label_smoothing: f64,
    pub loss_type: DpoLossType,
}

impl DpoConfig {
    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(format!("beta must be a positive number, got {}", self.beta));
        }
        // At 0.5 the labels carry no information and the loss only pushes the margin to 0.
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!("label_smoothing must be in [0, 0.5), got {}", self.label_smoothing));
        }
        if self.loss_type == DpoLossType::Ipo && self.label_smoothing != 0.0 {
            return Err("label_smoothing applies to loss_type Sigmoid only, not to Ipo".into());
        }
        Ok(())
    }
}

/// log p of each row's response tokens, flat over them, (N), row after row: row r is a prompt
/// followed by a response of `response_lens[r]` tokens (see [`Model::response_states`]).
/// Differentiable; on the CPU the LM head and the log-softmax are one fused op.
pub fn response_logprobs(
    model: &Model,
    rows: &[Vec<u32>],
    response_lens: &[usize],
    pad: u32,
    train: bool,
) -> Result<Tensor, ModelError> {
    let (states, targets) = model.response_states(rows, response_lens, pad, train)?;
    model
        .token_nll(&states, &targets)?
        .neg()
        .map_err(|source| ModelError::Tensor { context: "response log-probabilities".into(), source })
}

/// The sums (B) of consecutive runs of `lens[r]` values of `flat` (N): each response's
/// log-probability from its tokens'. Differentiable.
pub fn sums_per_row(flat: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
    let n: usize = lens.iter().sum();
    let mut membership = vec![0f32; lens.len() * n];
    let mut at = 0;
    for (r, &len) in lens.iter().enumerate() {
        membership[r * n + at..r * n + at + len].fill(1.0);
        at += len;
    }
    let membership = Tensor::from_vec(membership, (lens.len(), n), flat.device())?;
    membership.matmul(&flat.reshape((n, 1))?)?.squeeze(1)
}

/// Mean implicit rewards of a batch of pairs, as TRL logs them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PreferenceStats {
    /// Mean `β (pi_chosen - ref_chosen)`.
    pub chosen_reward: f64,
    /// Mean `β (pi_rejected - ref_rejected)`.
    pub rejected_reward: f64,
    /// Share of pairs whose chosen reward is strictly the larger.
    pub accuracy: f64,
}

impl PreferenceStats {
    /// From per-sequence policy and reference log-probabilities (chosen, rejected, ...).
    pub fn of(beta: f64, policy: &[f32], reference: &[f32]) -> PreferenceStats {
        let pairs = policy.len() / 2;
        if pairs == 0 {
            return PreferenceStats::default();
        }
        let reward = |i: usize| beta * (f64::from(policy[i]) - f64::from(reference[i]));
        let (mut chosen, mut rejected, mut right) = (0.0, 0.0, 0.0);
        for i in 0..pairs {
            let (c, r) = (reward(2 * i), reward(2 * i + 1));
            chosen += c;
            rejected += r;
            right += f64::from(u8::from(c > r));
        }
        let n = pairs as f64;
        PreferenceStats { chosen_reward: chosen / n, rejected_reward: rejected / n, accuracy: right / n }
    }

    /// The logged metrics; every value scaled by `weight` (a part's share of a batch).
    pub fn metrics(&self, weight: f64) -> Vec<(String, f64)> {
        vec![
            ("chosen_reward".into(), self.chosen_reward * weight),
            ("rejected_reward".into(), self.rejected_reward * weight),
            ("reward_margin".into(), (self.chosen_reward - self.rejected_reward) * weight),
            ("reward_accuracy".into(), self.accuracy * weight),
        ]
    }
}

/// The mean preference loss over pairs, (), differentiable through `policy` (2P, interleaved
/// chosen/rejected); `reference` (2P) is a constant.
pub fn dpo_loss(policy: &Tensor, reference: &Tensor, config: &DpoConfig) -> candle_core::Result<Tensor> {
    let pairs = policy.dim(0)? / 2;
    // (2P) -> (P, 2): column 0 chosen, column 1 rejected.
    let log_ratio = (policy - reference.detach())?.reshape((pairs, 2))?;
    let h = (log_ratio.narrow(1, 0, 1)? - log_ratio.narrow(1, 1, 1)?)?.squeeze(1)?; // (P)
    let per_pair = match config.loss_type {
        DpoLossType::Sigmoid => {
            let (beta, ls) = (config.beta, config.label_smoothing);
            // -log sigmoid(z) = softplus(-z)
            let agree = softplus(&h.affine(-beta, 0.0)?)?.affine(1.0 - ls, 0.0)?;
            if ls == 0.0 { agree } else { (agree + softplus(&h.affine(beta, 0.0)?)?.affine(ls, 0.0)?)? }
        }
        DpoLossType::Ipo => h.affine(1.0, -1.0 / (2.0 * config.beta))?.sqr()?,
    };
    per_pair.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn loss_and_grad(policy: &[f32], reference: &[f32], config: &DpoConfig) -> (f64, Vec<f32>) {
        let var = Var::new(policy, &Device::Cpu).expect("var");
        let reference = Tensor::new(reference, &Device::Cpu).expect("reference");
        let loss = dpo_loss(var.as_tensor(), &reference, config).expect("loss");
        let grads = loss.backward().expect("backward");
        let grad = grads.get(var.as_tensor()).expect("gradient").to_vec1::<f32>().expect("values");
        (loss.to_scalar::<f32>().expect("scalar") as f64, grad)
    }

    #[test]
    fn hand_computed_values_and_gradients() {
        // h = (-95 - -105) - (-100 - -100) = 10; beta 0.1: z = 1.
        let (policy, reference) = ([-95.0f32, -105.0], [-100.0f32, -100.0]);
        let dpo = DpoConfig { beta: 0.1, label_smoothing: 0.0, loss_type: DpoLossType::Sigmoid };
        let (loss, grad) = loss_and_grad(&policy, &reference, &dpo);
        assert!((loss - (1.0 + (-1.0f64).exp()).ln()).abs() < 1e-6, "{loss}");
        let sig = 1.0 / (1.0 + 1.0f64.exp()); // sigmoid(-1)
        assert!((f64::from(grad[0]) + 0.1 * sig).abs() < 1e-7 && (f64::from(grad[1]) - 0.1 * sig).abs() < 1e-7);

        let conservative = DpoConfig { label_smoothing: 0.2, ..dpo };
        let (loss, _) = loss_and_grad(&policy, &reference, &conservative);
        let want = 0.8 * (1.0 + (-1.0f64).exp()).ln() + 0.2 * (1.0 + 1.0f64.exp()).ln();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");

        // IPO regresses h onto 1 / (2 beta) = 5: (10 - 5)^2 = 25, d/dh = 10.
        let ipo = DpoConfig { loss_type: DpoLossType::Ipo, ..dpo };
        let (loss, grad) = loss_and_grad(&policy, &reference, &ipo);
        assert_eq!((loss, grad), (25.0, vec![10.0, -10.0]));
    }

    #[test]
    fn two_pairs_share_the_mean_and_extremes_stay_finite() {
        // Pair 0 solved by z = 1000 (loss 0), pair 1 wrong by z = 1000 (loss 1000): mean 500.
        let (policy, reference) = ([-5000.0f32, -15000.0, -15000.0, -5000.0], [-10000.0f32; 4]);
        let dpo = DpoConfig { beta: 0.1, label_smoothing: 0.0, loss_type: DpoLossType::Sigmoid };
        let (loss, grad) = loss_and_grad(&policy, &reference, &dpo);
        assert!((loss - 500.0).abs() < 1e-3, "{loss}");
        assert_eq!(grad, vec![0.0, 0.0, -0.05, 0.05]);
    }

    #[test]
    fn implicit_rewards_and_accuracy() {
        let stats = PreferenceStats::of(0.5, &[-10.0, -12.0, -8.0, -7.0], &[-11.0, -11.0, -8.0, -8.0]);
        // Pair 0: chosen 0.5, rejected -0.5 (right); pair 1: chosen 0, rejected 0.5 (wrong).
        assert_eq!(stats, PreferenceStats { chosen_reward: 0.25, rejected_reward: 0.0, accuracy: 0.5 });
        let metrics = stats.metrics(2.0);
        assert_eq!(metrics[2], ("reward_margin".to_string(), 0.5));
    }

    #[test]
    fn settings_are_checked() {
        let ok = DpoConfig { beta: 0.1, label_smoothing: 0.0, loss_type: DpoLossType::Sigmoid };
        assert!(ok.validate().is_ok());
        for (bad, message) in [
            (DpoConfig { beta: 0.0, ..ok }, "beta must be a positive number"),
            (DpoConfig { label_smoothing: 0.5, ..ok }, "label_smoothing must be in [0, 0.5)"),
            (DpoConfig { label_smoothing: 0.1, loss_type: DpoLossType::Ipo, ..ok }, "Sigmoid only"),
        ] {
            let error = bad.validate().expect_err("refused");
            assert!(error.contains(message), "{error}");
        }
    }
}
