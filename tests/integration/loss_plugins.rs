//! Loss plugins in the sandbox keep the surrogate-gradient contract: the gradient each returns
//! for a feature equals the finite difference of the value it returns, computed through the host.
//!
//! The features are what a model would hand over: log-probabilities from a softmax over a
//! 512-token vocabulary (deterministic logits), a rollout policy a little away from the current
//! one, advantages, values and returns of realistic size, padding masked out.

use crate::support;

use triad::plugins::records::feature_name;
use triad::plugins::{Feature, FeatureValues, LossBatch, LossPlugin};

/// A small deterministic generator (xorshift64*), so the batch is the same on every machine.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Four sequences of 5, 9, 3 and 7 response tokens; the last token of the third is padding.
fn batch(features: &[Feature]) -> LossBatch {
    const VOCAB: usize = 512;
    let offsets = vec![0u32, 5, 14, 17, 24];
    let tokens = 24;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut logprob, mut mean_logprob, mut entropy) = (vec![], vec![], vec![]);
    for _ in 0..tokens {
        let logits: Vec<f64> = (0..VOCAB).map(|_| 2.0 * rng.normal()).collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = logits.iter().map(|l| l - log_z).collect();
        let target = (rng.uniform() * VOCAB as f64) as usize % VOCAB;
        logprob.push(logp[target]);
        mean_logprob.push(logp.iter().sum::<f64>() / VOCAB as f64);
        entropy.push(-logp.iter().map(|lp| lp.exp() * lp).sum::<f64>());
    }
    let noisy = |rng: &mut Rng, base: &[f64], scale: f64| -> Vec<f64> {
        base.iter().map(|b| b + scale * rng.normal()).collect()
    };
    let old_logprob = noisy(&mut rng, &logprob, 0.15);
    let ref_logprob = noisy(&mut rng, &logprob, 0.3);
    let value: Vec<f64> = (0..tokens).map(|_| rng.normal()).collect();
    let old_value = noisy(&mut rng, &value, 0.15);
    let returns = noisy(&mut rng, &value, 0.5);
    let advantage: Vec<f64> = (0..tokens).map(|_| rng.normal()).collect();
    let mask: Vec<f64> = (0..tokens).map(|i| if i == 16 { 0.0 } else { 1.0 }).collect();
    let per_sequence = |per_token: &[f64]| -> Vec<f64> {
        offsets.windows(2).map(|w| per_token[w[0] as usize..w[1] as usize].iter().sum()).collect()
    };
    let values_of = |feature: Feature| -> Vec<f64> {
        match feature {
            Feature::Logprob => logprob.clone(),
            Feature::MeanLogprob => mean_logprob.clone(),
            Feature::Entropy => entropy.clone(),
            Feature::Value => value.clone(),
            Feature::RefLogprob => ref_logprob.clone(),
            Feature::OldLogprob => old_logprob.clone(),
            Feature::OldValue => old_value.clone(),
            Feature::Advantage => advantage.clone(),
            Feature::Return => returns.clone(),
            Feature::Mask => mask.clone(),
            Feature::SequenceLogprob => per_sequence(&logprob),
            Feature::SequenceRefLogprob => per_sequence(&ref_logprob),
        }
    };
    LossBatch {
        sequence_offsets: offsets.clone(),
        features: features
            .iter()
            .map(|&feature| FeatureValues { feature, values: values_of(feature).iter().map(|&v| v as f32).collect() })
            .collect(),
    }
}

fn value_at(plugin: &LossPlugin, batch: &LossBatch, feature: Feature, index: usize, x: f32) -> f64 {
    let mut probe = batch.clone();
    let slot = probe.features.iter_mut().find(|f| f.feature == feature).expect("feature in batch");
    slot.values[index] = x;
    plugin.compute(&probe).expect("compute").value
}

fn check_against_finite_differences(name: &str, config: &str) {
    let plugin = support::load(name, config).into_loss().expect("a loss plugin");
    let batch = batch(plugin.features());
    let output = plugin.compute(&batch).expect("compute");
    assert!(output.value.is_finite() && output.value != 0.0, "{name}: value {}", output.value);
    assert!(!output.gradients.is_empty(), "{name} returned no gradient");
    let mut checked = 0;
    for gradient in &output.gradients {
        let inputs = &batch.features.iter().find(|f| f.feature == gradient.feature).expect("input").values;
        for (i, &g) in gradient.values.iter().enumerate() {
            let x = inputs[i];
            let h = 1e-3_f32 * x.abs().max(1.0);
            let (up, down) = (x + h, x - h);
            let fd = (value_at(&plugin, &batch, gradient.feature, i, up)
                - value_at(&plugin, &batch, gradient.feature, i, down))
                / (up as f64 - down as f64);
            let tolerance = 1e-3 * fd.abs().max(1e-2);
            assert!(
                (g as f64 - fd).abs() <= tolerance,
                "{name}: d value / d {}[{i}] = {g}, finite difference {fd}",
                feature_name(gradient.feature)
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "{name}: only {checked} gradient entries");
}

#[test]
fn label_smoothed_cross_entropy_gradients_match_finite_differences() {
    check_against_finite_differences("label-smoothed-ce", r#"{"epsilon": 0.1}"#);
}

#[test]
fn focal_loss_gradients_match_finite_differences() {
    check_against_finite_differences("focal-loss", r#"{"gamma": 2.0}"#);
}

#[test]
fn ppo_clip_gradients_match_finite_differences() {
    check_against_finite_differences(
        "ppo-clip",
        r#"{"clip": 0.2, "value_clip": 0.2, "vf_coef": 0.1, "ent_coef": 0.01}"#,
    );
}

#[test]
fn dpo_gradients_match_finite_differences() {
    check_against_finite_differences("dpo", r#"{"beta": 0.1}"#);
}

#[test]
fn a_batch_missing_a_declared_feature_is_refused_with_its_name() {
    let plugin = support::load("ppo-clip", "{}").into_loss().expect("a loss plugin");
    let mut incomplete = batch(plugin.features());
    incomplete.features.retain(|f| f.feature != Feature::Advantage);
    let err = plugin.compute(&incomplete).expect_err("advantage is missing");
    assert!(err.to_string().contains("advantage"), "{err}");
}
