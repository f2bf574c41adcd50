//! Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") applied to next-token
//! prediction, as a triad loss plugin.
//!
//! Per token, with `x = logprob` = log p(target) and `p = exp(x)`:
//!
//! ```text
//! l = -(1 - p)^gamma * x
//! ```
//!
//! The factor `(1 - p)^gamma` shrinks the loss of tokens the model already predicts well, so the
//! gradient concentrates on the hard ones. `gamma = 0` is plain cross-entropy.
//!
//! Config (JSON, every field optional):
//! - `gamma` (default 2.0): focusing strength, finite and >= 0.
//!
//! Conventions shared with the host's native loss (its gradients must agree to 1e-5):
//! - Features read: `logprob` and `mask`. `logprob` must be <= 0 (it is a log-probability; a
//!   log-softmax never rounds above 0), anything else is an error.
//! - Token mean over the whole batch: `loss = sum_i mask_i * l_i / max(sum_i mask_i, 1)`. The mask
//!   acts as a per-token weight (normally 0 or 1) and must be non-negative; a batch without
//!   counted tokens has loss 0.
//! - Gradient, with `q = 1 - p` computed as `-expm1(x)` so it stays accurate as p -> 1:
//!   `dl/dx = gamma * q^(gamma-1) * p * x - q^gamma = q^gamma * (gamma * p * x / q - 1)`.
//!   The second form never multiplies 0 by infinity when gamma < 1; at `x = 0` exactly, where
//!   `x / q` is 0/0, its limit -1 is used, so the gradient there is 0 for gamma > 0 and -1 for
//!   gamma = 0 (and `0^0 = 1`). Then `d loss / d logprob_i = mask_i * dl/dx_i / D`.
//! - Everything is computed in f64; values cross the boundary as f32.
//! - Metrics: `nll` (token mean of -logprob), `focal_weight` (token mean of `(1 - p)^gamma`) and
//!   `tokens` (sum of the mask).

use triad_plugin_sdk::prelude::*;

/// The plugin: its config, filled from the experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FocalLoss {
    /// Focusing strength: 0 is cross-entropy, larger values ignore easy tokens more.
    pub gamma: f64,
}

impl Default for FocalLoss {
    fn default() -> Self {
        FocalLoss { gamma: 2.0 }
    }
}

impl Plugin for FocalLoss {
    fn init(&mut self) -> Result<(), String> {
        // A negative gamma would up-weight the tokens the model already gets right.
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(format!("gamma must be finite and >= 0, got {}", self.gamma));
        }
        Ok(())
    }
}

impl Loss for FocalLoss {
    fn features(&self) -> Vec<Feature> {
        vec![Feature::Logprob, Feature::Mask]
    }

    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {
        let logprob = batch.per_token(Feature::Logprob)?;
        let mask = batch.per_token(Feature::Mask)?;
        let out = focal_loss(logprob, Some(mask), self.gamma)?;
        Ok(LossOutput::new(out.value, vec![FeatureValues::new(Feature::Logprob, out.d_logprob)], out.metrics))
    }
}

export_loss!(FocalLoss);

/// What [`focal_loss`] returns, all in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct FocalOutput {
    /// The token-mean loss.
    pub value: f64,
    /// d value / d logprob, one entry per token.
    pub d_logprob: Vec<f64>,
    /// `nll`, `focal_weight` and `tokens`, as described in the crate docs.
    pub metrics: Vec<(&'static str, f64)>,
}

/// The focal loss of one token and its derivative with respect to `x = log p`.
///
/// Returns (loss, d loss / d x, focal weight `(1 - p)^gamma`). Requires `x <= 0`.
pub fn focal_token(x: f64, gamma: f64) -> (f64, f64, f64) {
    let p = x.exp();
    let q = -x.exp_m1();
    let weight = q.powf(gamma);
    // x / q -> -1 as x -> 0; at x = 0 exactly it is 0/0, so use the limit.
    let x_over_q = if q > 0.0 { x / q } else { -1.0 };
    (-weight * x, weight * (gamma * p * x_over_q - 1.0), weight)
}

/// Token-mean focal loss and its gradient from plain arrays, one entry per token.
///
/// `mask = None` counts every token. This is the function the plugin runs, exposed so the host
/// can call it natively in tests and benchmarks.
pub fn focal_loss(logprob: &[f32], mask: Option<&[f32]>, gamma: f64) -> Result<FocalOutput, String> {
    let n = logprob.len();
    if let Some(m) = mask.filter(|m| m.len() != n) {
        return Err(format!("mask has {} values, logprob has {n}", m.len()));
    }
    let weight = |i: usize| mask.map_or(1.0, |m| f64::from(m[i]));
    if let Some(i) = (0..n).find(|&i| weight(i).is_nan() || weight(i) < 0.0) {
        return Err(format!("mask must be non-negative, got {} at token {i}", weight(i)));
    }
    if let Some(i) = (0..n).find(|&i| logprob[i].is_nan() || logprob[i] > 0.0) {
        return Err(format!("logprob must be <= 0 (a log-probability), got {} at token {i}", logprob[i]));
    }

    let total_weight: f64 = (0..n).map(weight).sum();
    let denom = total_weight.max(1.0);
    let (mut loss, mut nll, mut focal_weight) = (0.0, 0.0, 0.0);
    let mut d_logprob = Vec::with_capacity(n);
    for (i, &x) in logprob.iter().enumerate() {
        let x = f64::from(x);
        let (l, dl_dx, w) = focal_token(x, gamma);
        loss += weight(i) * l;
        nll -= weight(i) * x;
        focal_weight += weight(i) * w;
        d_logprob.push(weight(i) * dl_dx / denom);
    }
    Ok(FocalOutput {
        value: loss / denom,
        d_logprob,
        metrics: vec![("nll", nll / denom), ("focal_weight", focal_weight / denom), ("tokens", total_weight)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::{LmBatch, assert_gradient, lm_batch, loss_batch};

    #[test]
    fn gradients_match_finite_differences() {
        let LmBatch { logprob, mask, .. } = lm_batch(11, &[40, 25, 35], 5);
        // The realistic batch spans confident and unlikely tokens, where the focal weight differs most.
        assert!(logprob.iter().any(|&l| l > -0.3) && logprob.iter().any(|&l| l < -8.0));
        for gamma in [0.0, 0.5, 1.0, 2.0, 5.0] {
            let out = focal_loss(&logprob, Some(&mask), gamma).unwrap();
            assert_gradient(&logprob, &out.d_logprob, |lp| focal_loss(lp, Some(&mask), gamma).unwrap().value);
        }
    }

    #[test]
    fn gradient_is_safe_as_p_approaches_one() {
        for gamma in [0.0, 0.25, 0.5, 1.0, 2.0] {
            for x in [0.0f64, -1e-30, -1e-12, -1e-6] {
                let (l, g, _) = focal_token(x, gamma);
                assert!(l.is_finite() && g.is_finite(), "gamma {gamma} x {x}: {l} {g}");
                // Near x = 0, q ~ -x, so l ~ (-x)^(gamma+1) and dl/dx ~ -(gamma+1) * (-x)^gamma.
                let expected = if gamma == 0.0 { -1.0 } else { -(gamma + 1.0) * (-x).powf(gamma) };
                assert!(
                    (g - expected).abs() <= 1e-5 * expected.abs() + 1e-300,
                    "gamma {gamma} x {x}: {g} vs {expected}"
                );
            }
            // Finite differences close to p = 1, where (1 - p)^(gamma - 1) alone would blow up.
            let x = -1e-6f32;
            let h = 1e-8;
            let value = |x: f32| focal_loss(&[x], None, gamma).unwrap().value;
            let (plus, minus) = ((f64::from(x) + h) as f32, (f64::from(x) - h) as f32);
            let fd = (value(plus) - value(minus)) / (f64::from(plus) - f64::from(minus));
            let g = focal_loss(&[x], None, gamma).unwrap().d_logprob[0];
            assert!((g - fd).abs() <= 1e-3 * fd.abs(), "gamma {gamma}: {g} vs {fd}");
        }
    }

    #[test]
    fn hand_checked_values() {
        // p = 1/2, gamma = 2: l = (1/2)^2 * ln 2, dl/dx = 2 * (1/2) * (1/2) * ln(1/2) - 1/4.
        let x = 0.5f64.ln();
        let (l, g, w) = focal_token(x, 2.0);
        assert!((l - 0.25 * 2f64.ln()).abs() < 1e-15 && (w - 0.25).abs() < 1e-15);
        assert!((g - (0.5 * x - 0.25)).abs() < 1e-15);
        // gamma = 1: dl/dx = p x - (1 - p).
        let x = -2.5f64;
        let (_, g, _) = focal_token(x, 1.0);
        assert!((g - (x.exp() * x - (1.0 - x.exp()))).abs() < 1e-15);
        // Padding counts neither in the sum nor in the denominator.
        let out = focal_loss(&[x as f32, -40.0], Some(&[1.0, 0.0]), 1.0).unwrap();
        assert!((out.value - focal_token(x, 1.0).0).abs() < 1e-12 && out.d_logprob[1] == 0.0);
    }

    #[test]
    fn gamma_zero_is_cross_entropy_and_focusing_favours_hard_tokens() {
        let LmBatch { offsets, logprob, mask, .. } = lm_batch(12, &[30, 20], 4);
        let counted: Vec<f64> =
            logprob.iter().zip(&mask).filter(|(_, m)| **m == 1.0).map(|(l, _)| f64::from(*l)).collect();
        let nll = -counted.iter().sum::<f64>() / counted.len() as f64;

        let mut ce: FocalLoss = configure(r#"{"gamma": 0}"#).unwrap();
        let b = loss_batch(&offsets, &[(Feature::Logprob, &logprob), (Feature::Mask, &mask)]);
        let out = ce.compute(&b).unwrap();
        assert!((out.value - nll).abs() < 1e-12, "{} vs {nll}", out.value);
        for (g, m) in out.gradients[0].values.iter().zip(&mask) {
            assert_eq!(*g, if *m == 1.0 { -1.0 / counted.len() as f32 } else { 0.0 });
        }

        // With gamma = 2 the easiest token gets a far smaller gradient than the hardest.
        let mut focal: FocalLoss = configure("").unwrap();
        let out = focal.compute(&b).unwrap();
        assert!(out.value < nll);
        let counted_grads: Vec<(f32, f32)> = logprob
            .iter()
            .zip(&out.gradients[0].values)
            .zip(&mask)
            .filter(|(_, m)| **m == 1.0)
            .map(|((l, g), _)| (*l, *g))
            .collect();
        let easiest =
            counted_grads.iter().cloned().fold((f32::NEG_INFINITY, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        let hardest = counted_grads.iter().cloned().fold((f32::INFINITY, 0.0), |a, b| if b.0 < a.0 { b } else { a });
        assert!(easiest.1.abs() * 5.0 < hardest.1.abs(), "easiest {easiest:?} hardest {hardest:?}");
        let metric = |name: &str| out.metrics.iter().find(|m| m.name == name).unwrap().value;
        assert!((metric("nll") - nll).abs() < 1e-12);
        assert!(metric("focal_weight") > 0.0 && metric("focal_weight") < 1.0);
    }

    #[test]
    fn config_is_validated() {
        let focal: FocalLoss = configure("{}").unwrap();
        assert_eq!(focal.gamma, 2.0);
        assert_eq!(focal.features(), vec![Feature::Logprob, Feature::Mask]);
        let err = configure::<FocalLoss>(r#"{"gamma": -1}"#).unwrap_err();
        assert!(err.message.contains("gamma must be finite and >= 0"), "{}", err.message);
        let err = configure::<FocalLoss>(r#"{"alpha": 0.25}"#).unwrap_err();
        assert!(err.message.contains("unknown field"), "{}", err.message);
    }

    #[test]
    fn malformed_batches_are_rejected_with_the_feature_named() {
        let mut focal: FocalLoss = configure("").unwrap();
        let lp = [-1.0f32, -2.0, -3.0];
        let m = [1.0f32; 3];
        let e = focal.compute(&loss_batch(&[0, 3], &[(Feature::Logprob, &lp)])).unwrap_err();
        assert!(e.contains("did not pass feature `mask`"), "{e}");
        let e = focal.compute(&loss_batch(&[0, 1, 4], &[(Feature::Logprob, &lp), (Feature::Mask, &m)])).unwrap_err();
        assert!(e.contains("`logprob` has 3 values, expected 4"), "{e}");
        let e = focal.compute(&loss_batch(&[1, 3], &[(Feature::Logprob, &lp), (Feature::Mask, &m)])).unwrap_err();
        assert!(e.contains("must start at 0"), "{e}");
        let pos = [-1.0f32, 0.5, -3.0];
        let e = focal.compute(&loss_batch(&[0, 3], &[(Feature::Logprob, &pos), (Feature::Mask, &m)])).unwrap_err();
        assert!(e.contains("logprob must be <= 0"), "{e}");
        let inf = [-1.0f32, f32::NEG_INFINITY, -3.0];
        let e = focal.compute(&loss_batch(&[0, 3], &[(Feature::Logprob, &inf), (Feature::Mask, &m)])).unwrap_err();
        assert!(e.contains("`logprob` has a non-finite value"), "{e}");
    }
}
