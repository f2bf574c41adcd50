//! Cross-entropy with label smoothing, as a triad loss plugin.
//!
//! Per token, with `logprob` = log p(target) and `mean-logprob` = (1/V) sum_v log p(v) over the
//! whole vocabulary of V entries:
//!
//! ```text
//! l = -(1 - epsilon) * logprob - epsilon * mean_logprob
//! ```
//!
//! This is cross-entropy against the target distribution that puts `1 - epsilon` on the target
//! and spreads `epsilon` uniformly over all V classes (the target included), exactly what
//! `torch.nn.CrossEntropyLoss(label_smoothing=epsilon)` computes. With `epsilon = 0` it is plain
//! cross-entropy, and the plugin then does not ask the host for `mean-logprob` at all.
//!
//! Config (JSON, every field optional):
//! - `epsilon` (default 0.1): smoothing mass, in [0, 1).
//!
//! Conventions shared with the host's native loss (its gradients must agree to 1e-5):
//! - Features read: `logprob`, `mask`, and `mean-logprob` when `epsilon > 0`.
//! - Token mean over the whole batch: `loss = sum_i mask_i * l_i / max(sum_i mask_i, 1)`. The mask
//!   acts as a per-token weight (normally 0 or 1) and must be non-negative; a batch without
//!   counted tokens has loss 0.
//! - Gradients: `d loss / d logprob_i = -(1 - epsilon) * mask_i / D` and
//!   `d loss / d mean_logprob_i = -epsilon * mask_i / D`, with D the denominator above. Padding
//!   tokens get gradient 0.
//! - Everything is computed in f64; values cross the boundary as f32.
//! - Metrics: `nll` (token mean of -logprob, the unsmoothed cross-entropy), `ppl` (exp of `nll`)
//!   and `tokens` (sum of the mask).

use triad_plugin_sdk::prelude::*;

/// The plugin: its config, filled from the experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelSmoothedCe {
    /// Probability mass spread uniformly over the vocabulary, in [0, 1).
    pub epsilon: f64,
}

impl Default for LabelSmoothedCe {
    fn default() -> Self {
        LabelSmoothedCe { epsilon: 0.1 }
    }
}

impl Plugin for LabelSmoothedCe {
    fn init(&mut self) -> Result<(), String> {
        // epsilon = 1 would ignore the targets entirely: the loss would no longer train the model
        // to predict anything.
        if !(self.epsilon.is_finite() && (0.0..1.0).contains(&self.epsilon)) {
            return Err(format!("epsilon must be in [0, 1), got {}", self.epsilon));
        }
        Ok(())
    }
}

impl Loss for LabelSmoothedCe {
    fn features(&self) -> Vec<Feature> {
        if self.epsilon > 0.0 {
            vec![Feature::Logprob, Feature::MeanLogprob, Feature::Mask]
        } else {
            vec![Feature::Logprob, Feature::Mask]
        }
    }

    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {
        let logprob = batch.per_token(Feature::Logprob)?;
        let mean_logprob = if self.epsilon > 0.0 { Some(batch.per_token(Feature::MeanLogprob)?) } else { None };
        let mask = batch.per_token(Feature::Mask)?;
        let out = label_smoothed_ce(logprob, mean_logprob, Some(mask), self.epsilon)?;

        let mut gradients = vec![FeatureValues::new(Feature::Logprob, out.d_logprob)];
        if mean_logprob.is_some() {
            gradients.push(FeatureValues::new(Feature::MeanLogprob, out.d_mean_logprob));
        }
        Ok(LossOutput::new(out.value, gradients, out.metrics))
    }
}

export_loss!(LabelSmoothedCe);

/// What [`label_smoothed_ce`] returns, all in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct CeOutput {
    /// The token-mean loss.
    pub value: f64,
    /// d value / d logprob, one entry per token.
    pub d_logprob: Vec<f64>,
    /// d value / d mean_logprob, one entry per token (all 0 when epsilon is 0).
    pub d_mean_logprob: Vec<f64>,
    /// `nll`, `ppl` and `tokens`, as described in the crate docs.
    pub metrics: Vec<(&'static str, f64)>,
}

/// Label-smoothed cross-entropy and its gradients from plain arrays, one entry per token.
///
/// `mean_logprob` may be `None` only when `epsilon` is 0; `mask = None` counts every token. This
/// is the function the plugin runs, exposed so the host can call it natively in tests and
/// benchmarks.
pub fn label_smoothed_ce(
    logprob: &[f32],
    mean_logprob: Option<&[f32]>,
    mask: Option<&[f32]>,
    epsilon: f64,
) -> Result<CeOutput, String> {
    let n = logprob.len();
    if mean_logprob.is_none() && epsilon != 0.0 {
        return Err("mean-logprob is required when epsilon > 0".into());
    }
    check_len("mean-logprob", mean_logprob, n)?;
    check_len("mask", mask, n)?;
    let weight = |i: usize| mask.map_or(1.0, |m| f64::from(m[i]));
    let mean_lp = |i: usize| mean_logprob.map_or(0.0, |m| f64::from(m[i]));
    if let Some(i) = (0..n).find(|&i| weight(i).is_nan() || weight(i) < 0.0) {
        return Err(format!("mask must be non-negative, got {} at token {i}", weight(i)));
    }

    let total_weight: f64 = (0..n).map(weight).sum();
    let denom = total_weight.max(1.0);
    let (mut loss, mut nll) = (0.0, 0.0);
    for (i, &lp) in logprob.iter().enumerate() {
        let lp = f64::from(lp);
        loss += weight(i) * (-(1.0 - epsilon) * lp - epsilon * mean_lp(i));
        nll -= weight(i) * lp;
    }
    let (value, nll) = (loss / denom, nll / denom);
    let d_logprob = (0..n).map(|i| -(1.0 - epsilon) * weight(i) / denom).collect();
    let d_mean_logprob = (0..n).map(|i| -epsilon * weight(i) / denom).collect();
    Ok(CeOutput {
        value,
        d_logprob,
        d_mean_logprob,
        metrics: vec![("nll", nll), ("ppl", nll.exp()), ("tokens", total_weight)],
    })
}

fn check_len(name: &str, values: Option<&[f32]>, n: usize) -> Result<(), String> {
    match values {
        Some(v) if v.len() != n => Err(format!("{name} has {} values, logprob has {n}", v.len())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::{
        LmBatch, Rng, VOCAB, assert_gradient, lm_batch, lm_logits, log_softmax, loss_batch, sample,
    };

    #[test]
    fn realistic_inputs_look_like_a_language_model() {
        let LmBatch { logprob, mean_logprob, .. } = lm_batch(7, &[40, 25, 35], 5);
        let mean = logprob.iter().map(|&l| f64::from(l)).sum::<f64>() / logprob.len() as f64;
        assert!((-10.0..-2.0).contains(&mean), "mean logprob {mean}");
        assert!(logprob.iter().any(|&l| l > -0.5) && logprob.iter().any(|&l| l < -8.0));
        // The vocabulary mean of log p is far below the target's log p: smoothing pulls hard.
        assert!(mean_logprob.iter().all(|&m| m < -8.0));
    }

    #[test]
    fn gradients_match_finite_differences() {
        let LmBatch { logprob, mean_logprob, mask, .. } = lm_batch(1, &[40, 25, 35], 5);
        for epsilon in [0.0, 0.1, 0.3] {
            let out = label_smoothed_ce(&logprob, Some(&mean_logprob), Some(&mask), epsilon).unwrap();
            assert_gradient(&logprob, &out.d_logprob, |lp| {
                label_smoothed_ce(lp, Some(&mean_logprob), Some(&mask), epsilon).unwrap().value
            });
            assert_gradient(&mean_logprob, &out.d_mean_logprob, |m| {
                label_smoothed_ce(&logprob, Some(m), Some(&mask), epsilon).unwrap().value
            });
        }
    }

    #[test]
    fn epsilon_zero_is_token_mean_nll() {
        let LmBatch { offsets, logprob, mask, .. } = lm_batch(2, &[30, 20], 4);
        let counted: Vec<f64> =
            logprob.iter().zip(&mask).filter(|(_, m)| **m == 1.0).map(|(l, _)| f64::from(*l)).collect();
        let nll = -counted.iter().sum::<f64>() / counted.len() as f64;

        let mut ce: LabelSmoothedCe = configure(r#"{"epsilon": 0.0}"#).unwrap();
        assert_eq!(ce.features(), vec![Feature::Logprob, Feature::Mask]);
        let out = ce.compute(&loss_batch(&offsets, &[(Feature::Logprob, &logprob), (Feature::Mask, &mask)])).unwrap();
        assert!((out.value - nll).abs() < 1e-12, "{} vs {nll}", out.value);
        assert_eq!(out.gradients.len(), 1);
        let metric = |name: &str| out.metrics.iter().find(|m| m.name == name).unwrap().value;
        assert!((metric("nll") - nll).abs() < 1e-12);
        assert!((metric("ppl") - nll.exp()).abs() < 1e-9 * nll.exp());
        assert_eq!(metric("tokens"), counted.len() as f64);
        // Padding tokens receive no gradient; counted ones get -1/N.
        for (g, m) in out.gradients[0].values.iter().zip(&mask) {
            let expected = if *m == 1.0 { -1.0 / counted.len() as f32 } else { 0.0 };
            assert!((g - expected).abs() < 1e-9);
        }
    }

    #[test]
    fn matches_cross_entropy_against_the_smoothed_distribution() {
        // Direct definition: target q = (1 - eps) one_hot + eps / V, loss = -sum_v q_v log p_v.
        let mut rng = Rng::new(3);
        let epsilon = 0.1;
        let (mut logprob, mut mean_logprob, mut expected) = (vec![], vec![], 0.0);
        for _ in 0..8 {
            let lps = log_softmax(&lm_logits(&mut rng));
            let target = sample(&mut rng, &lps);
            let q = |v: usize| epsilon / VOCAB as f64 + if v == target { 1.0 - epsilon } else { 0.0 };
            expected -= lps.iter().enumerate().map(|(v, lp)| q(v) * lp).sum::<f64>() / 8.0;
            logprob.push(lps[target] as f32);
            mean_logprob.push((lps.iter().sum::<f64>() / VOCAB as f64) as f32);
        }
        let out = label_smoothed_ce(&logprob, Some(&mean_logprob), None, epsilon).unwrap();
        // Only the f32 rounding of the features separates the two.
        assert!((out.value - expected).abs() < 1e-5 * expected, "{} vs {expected}", out.value);
    }

    #[test]
    fn hand_checked_value() {
        // Two counted tokens and one padding token: ((0.9*2 + 0.1*8) + (0.9*1 + 0.1*9)) / 2 = 2.2.
        let out =
            label_smoothed_ce(&[-2.0, -1.0, -50.0], Some(&[-8.0, -9.0, -9.0]), Some(&[1.0, 1.0, 0.0]), 0.1).unwrap();
        assert!((out.value - 2.2).abs() < 1e-12);
        assert_eq!(out.d_logprob, vec![-0.45, -0.45, 0.0]);
        assert!((out.d_mean_logprob[0] + 0.05).abs() < 1e-15 && out.d_mean_logprob[2] == 0.0);
        // An all-padding batch has loss 0 rather than 0/0.
        let empty = label_smoothed_ce(&[-2.0], Some(&[-8.0]), Some(&[0.0]), 0.1).unwrap();
        assert_eq!((empty.value, empty.d_logprob[0]), (0.0, 0.0));
    }

    #[test]
    fn config_is_validated() {
        let ce: LabelSmoothedCe = configure("").unwrap();
        assert_eq!(ce.epsilon, 0.1);
        assert_eq!(ce.features(), vec![Feature::Logprob, Feature::MeanLogprob, Feature::Mask]);
        for bad in [r#"{"epsilon": 1.0}"#, r#"{"epsilon": -0.1}"#, r#"{"epsilon": 1.5}"#] {
            let err = configure::<LabelSmoothedCe>(bad).unwrap_err();
            assert!(err.message.contains("epsilon must be in [0, 1)"), "{}", err.message);
        }
        let err = configure::<LabelSmoothedCe>(r#"{"eps": 0.1}"#).unwrap_err();
        assert!(err.message.contains("unknown field"), "{}", err.message);
    }

    #[test]
    fn malformed_batches_are_rejected_with_the_feature_named() {
        let mut ce: LabelSmoothedCe = configure("").unwrap();
        let lp = [-1.0f32, -2.0, -3.0];
        let m = [1.0f32; 3];
        let err = |b: LossBatch, ce: &mut LabelSmoothedCe| ce.compute(&b).unwrap_err();

        let e = err(loss_batch(&[0, 3], &[(Feature::Logprob, &lp), (Feature::Mask, &m)]), &mut ce);
        assert!(e.contains("`mean-logprob`"), "{e}");
        let e = err(
            loss_batch(&[0, 3], &[(Feature::Logprob, &lp), (Feature::MeanLogprob, &lp[..2]), (Feature::Mask, &m)]),
            &mut ce,
        );
        assert!(e.contains("`mean-logprob` has 2 values, expected 3"), "{e}");
        let e = err(
            loss_batch(&[0, 2, 1], &[(Feature::Logprob, &lp), (Feature::MeanLogprob, &lp), (Feature::Mask, &m)]),
            &mut ce,
        );
        assert!(e.contains("non-decreasing"), "{e}");
        let e = err(loss_batch(&[], &[]), &mut ce);
        assert!(e.contains("sequence-offsets is empty"), "{e}");
        let nan = [-1.0f32, f32::NAN, -3.0];
        let e = err(
            loss_batch(&[0, 3], &[(Feature::Logprob, &nan), (Feature::MeanLogprob, &lp), (Feature::Mask, &m)]),
            &mut ce,
        );
        assert!(e.contains("`logprob` has a non-finite value NaN at index 1"), "{e}");
        let neg = [1.0f32, -1.0, 1.0];
        let e = err(
            loss_batch(&[0, 3], &[(Feature::Logprob, &lp), (Feature::MeanLogprob, &lp), (Feature::Mask, &neg)]),
            &mut ce,
        );
        assert!(e.contains("mask must be non-negative"), "{e}");
    }
}
