//! The PPO clipped surrogate loss (Schulman et al. 2017), computed as TRL's `PPOTrainer` does, as
//! a triad loss plugin.
//!
//! Per token, with `r = exp(logprob - old_logprob)` and advantage `A`:
//!
//! ```text
//! policy  = max(-A * r, -A * clip(r, 1 - clip, 1 + clip))
//! value   = 0.5 * max((V - R)^2, (clip(V, V_old - value_clip, V_old + value_clip) - R)^2)
//! loss    = mean(policy) + vf_coef * mean(value) - ent_coef * mean(entropy)
//! ```
//!
//! Config (JSON, every field optional):
//! - `clip` (default 0.2): ratio clip range, in (0, 1).
//! - `value_clip` (default 0.2): how far the value prediction may move from `old-value` before its
//!   loss stops pulling it further, > 0.
//! - `vf_coef` (default 0.1): weight of the value loss, >= 0. At 0 the value terms are skipped and
//!   `value`, `old-value` and `return` are not requested.
//! - `ent_coef` (default 0.0): weight of the entropy bonus, >= 0. `entropy` is requested only when
//!   it is positive.
//!
//! Conventions shared with the host's native loss (its gradients must agree to 1e-5):
//! - Features read: `logprob`, `old-logprob`, `advantage`, `mask`; plus `value`, `old-value`,
//!   `return` when `vf_coef > 0`; plus `entropy` when `ent_coef > 0`.
//! - `mean` is the token mean over the whole batch: `sum_i mask_i * x_i / D` with
//!   `D = max(sum_i mask_i, 1)`. The mask acts as a per-token weight (normally 0 or 1) and must be
//!   non-negative. Tokens with mask 0 are skipped entirely: they get gradient 0 and contribute
//!   exactly 0, even where their ratio would overflow.
//! - Subgradients, as PyTorch autograd gives them for `torch.max(a, b)` and `torch.clamp`: the
//!   selected branch's gradient flows; a clamped value has gradient 0 outside its bounds. On an
//!   exact tie of the two branches the unclipped branch's gradient is used. For the policy term
//!   this equals PyTorch everywhere (a tie means `r` is inside or on the clip bounds, where both
//!   branches have the same gradient `-A * r`; `torch.max` splits it evenly and `clamp` passes it
//!   on its bounds). For the value term it also equals PyTorch except on the measure-zero tie where
//!   `V` is outside its bounds and `R` lies exactly halfway between `V` and the clipped value:
//!   there PyTorch gives half of `V - R`, this loss gives `V - R`.
//!   So `d policy_i / d logprob_i = -A_i * r_i` unless the clipped branch is strictly larger (then
//!   0), and `d value_i / d V_i = V_i - R_i` unless the clipped branch is strictly larger (then 0).
//!   Gradients are returned for `logprob`, and for `value` and `entropy` when they are used.
//! - Everything is computed in f64; values cross the boundary as f32.
//! - Metrics (TRL's definitions): `policy_loss`, `clip_frac` (fraction of tokens whose clipped
//!   policy branch is strictly larger, i.e. whose ratio gradient is cut), `approx_kl`
//!   (`0.5 * mean((logprob - old_logprob)^2)`), `ratio` (mean ratio); with the value loss
//!   `value_loss` and `value_clip_frac`; with the entropy bonus `entropy` (mean entropy).

use triad_plugin_sdk::prelude::*;

/// The plugin: its config, filled from the experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoClip {
    /// Ratio clip range: the ratio is kept within [1 - clip, 1 + clip].
    pub clip: f64,
    /// Value clip range around the rollout's value estimate.
    pub value_clip: f64,
    /// Weight of the value loss; 0 disables it.
    pub vf_coef: f64,
    /// Weight of the entropy bonus; 0 disables it.
    pub ent_coef: f64,
}

impl Default for PpoClip {
    fn default() -> Self {
        PpoClip { clip: 0.2, value_clip: 0.2, vf_coef: 0.1, ent_coef: 0.0 }
    }
}

impl Plugin for PpoClip {
    fn init(&mut self) -> Result<(), String> {
        // clip = 0 cuts every gradient; clip >= 1 lets the lower bound reach a ratio of 0.
        if !(self.clip > 0.0 && self.clip < 1.0) {
            return Err(format!("clip must be in (0, 1), got {}", self.clip));
        }
        if !(self.value_clip > 0.0 && self.value_clip.is_finite()) {
            return Err(format!("value_clip must be finite and > 0, got {}", self.value_clip));
        }
        if !(self.vf_coef >= 0.0 && self.vf_coef.is_finite()) {
            return Err(format!("vf_coef must be finite and >= 0, got {}", self.vf_coef));
        }
        // A negative coefficient would turn the entropy bonus into a penalty: almost always a sign slip.
        if !(self.ent_coef >= 0.0 && self.ent_coef.is_finite()) {
            return Err(format!("ent_coef must be finite and >= 0, got {}", self.ent_coef));
        }
        Ok(())
    }
}

impl Loss for PpoClip {
    fn features(&self) -> Vec<Feature> {
        let mut features = vec![Feature::Logprob, Feature::OldLogprob, Feature::Advantage, Feature::Mask];
        if self.vf_coef > 0.0 {
            features.extend([Feature::Value, Feature::OldValue, Feature::Return]);
        }
        if self.ent_coef > 0.0 {
            features.push(Feature::Entropy);
        }
        features
    }

    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {
        let token = |feature| batch.per_token(feature);
        let optional = |used: bool, feature| if used { token(feature).map(Some) } else { Ok(None) };
        let uses_value = self.vf_coef > 0.0;
        let inputs = PpoInputs {
            logprob: token(Feature::Logprob)?,
            old_logprob: token(Feature::OldLogprob)?,
            advantage: token(Feature::Advantage)?,
            mask: Some(token(Feature::Mask)?),
            value: optional(uses_value, Feature::Value)?,
            old_value: optional(uses_value, Feature::OldValue)?,
            returns: optional(uses_value, Feature::Return)?,
            entropy: optional(self.ent_coef > 0.0, Feature::Entropy)?,
        };
        let out = ppo_clip_loss(self, &inputs)?;

        let mut gradients = vec![FeatureValues::new(Feature::Logprob, out.d_logprob)];
        if uses_value {
            gradients.push(FeatureValues::new(Feature::Value, out.d_value));
        }
        if self.ent_coef > 0.0 {
            gradients.push(FeatureValues::new(Feature::Entropy, out.d_entropy));
        }
        Ok(LossOutput::new(out.value, gradients, out.metrics))
    }
}

export_loss!(PpoClip);

/// The per-token arrays [`ppo_clip_loss`] reads. `value`, `old_value` and `returns` are needed
/// when `vf_coef > 0`, `entropy` when `ent_coef > 0`; `mask = None` counts every token.
#[derive(Debug, Clone, Copy, Default)]
pub struct PpoInputs<'a> {
    /// log p(token) under the policy being trained.
    pub logprob: &'a [f32],
    /// log p(token) under the policy that sampled the rollout.
    pub old_logprob: &'a [f32],
    /// Advantage estimates.
    pub advantage: &'a [f32],
    /// Token weights, normally 1 for response tokens and 0 for padding.
    pub mask: Option<&'a [f32]>,
    /// Value-head predictions.
    pub value: Option<&'a [f32]>,
    /// Value predictions recorded at rollout time.
    pub old_value: Option<&'a [f32]>,
    /// Return targets for the value head.
    pub returns: Option<&'a [f32]>,
    /// Entropy of the policy's next-token distribution.
    pub entropy: Option<&'a [f32]>,
}

/// What [`ppo_clip_loss`] returns, all in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoOutput {
    /// The total loss.
    pub value: f64,
    /// d value / d logprob, one entry per token.
    pub d_logprob: Vec<f64>,
    /// d value / d value-prediction, one entry per token (empty without the value loss).
    pub d_value: Vec<f64>,
    /// d value / d entropy, one entry per token (empty without the entropy bonus).
    pub d_entropy: Vec<f64>,
    /// The diagnostics described in the crate docs.
    pub metrics: Vec<(&'static str, f64)>,
}

/// One token's clipped policy term: (loss, d loss / d logprob, clipped branch strictly larger).
pub fn policy_term(ratio: f64, advantage: f64, clip: f64) -> (f64, f64, bool) {
    let unclipped = -advantage * ratio;
    let clipped = -advantage * ratio.clamp(1.0 - clip, 1.0 + clip);
    if clipped > unclipped {
        // Only possible with the ratio strictly outside the bounds, where clamp passes no gradient.
        (clipped, 0.0, true)
    } else {
        // d ratio / d logprob = ratio.
        (unclipped, -advantage * ratio, false)
    }
}

/// One token's clipped value term: (loss, d loss / d value, clipped branch strictly larger).
pub fn value_term(value: f64, old_value: f64, ret: f64, value_clip: f64) -> (f64, f64, bool) {
    let unclipped = (value - ret).powi(2);
    let clipped = (value.clamp(old_value - value_clip, old_value + value_clip) - ret).powi(2);
    if clipped > unclipped { (0.5 * clipped, 0.0, true) } else { (0.5 * unclipped, value - ret, false) }
}

/// The PPO loss and its gradients from plain arrays, with the plugin's config.
///
/// This is the function the plugin runs, exposed so the host can call it natively in tests and
/// benchmarks.
pub fn ppo_clip_loss(config: &PpoClip, inputs: &PpoInputs) -> Result<PpoOutput, String> {
    let n = inputs.logprob.len();
    let needed = |name: &str, values: Option<&[f32]>, used: bool| -> Result<(), String> {
        match values {
            None if used => Err(format!("{name} is required by this config")),
            Some(v) if v.len() != n => Err(format!("{name} has {} values, logprob has {n}", v.len())),
            _ => Ok(()),
        }
    };
    let uses_value = config.vf_coef > 0.0;
    let uses_entropy = config.ent_coef > 0.0;
    needed("old-logprob", Some(inputs.old_logprob), true)?;
    needed("advantage", Some(inputs.advantage), true)?;
    needed("mask", inputs.mask, false)?;
    needed("value", inputs.value, uses_value)?;
    needed("old-value", inputs.old_value, uses_value)?;
    needed("return", inputs.returns, uses_value)?;
    needed("entropy", inputs.entropy, uses_entropy)?;
    let weight = |i: usize| inputs.mask.map_or(1.0, |m| f64::from(m[i]));
    if let Some(i) = (0..n).find(|&i| weight(i).is_nan() || weight(i) < 0.0) {
        return Err(format!("mask must be non-negative, got {} at token {i}", weight(i)));
    }
    let at = |values: Option<&[f32]>, i: usize| values.map_or(0.0, |v| f64::from(v[i]));

    let total_weight: f64 = (0..n).map(weight).sum();
    let denom = total_weight.max(1.0);
    let mut d_logprob = vec![0.0; n];
    let mut d_value = vec![0.0; if uses_value { n } else { 0 }];
    let mut d_entropy = vec![0.0; if uses_entropy { n } else { 0 }];
    let (mut policy, mut value_loss, mut entropy) = (0.0, 0.0, 0.0);
    let (mut clipped, mut value_clipped, mut kl, mut ratio_sum) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        let w = weight(i);
        if w == 0.0 {
            continue;
        }
        let log_ratio = f64::from(inputs.logprob[i]) - f64::from(inputs.old_logprob[i]);
        let ratio = log_ratio.exp();
        let (pg, d_pg, is_clipped) = policy_term(ratio, f64::from(inputs.advantage[i]), config.clip);
        if !(pg.is_finite() && d_pg.is_finite()) {
            return Err(format!(
                "token {i}: the ratio exp(logprob - old-logprob) = exp({log_ratio}) makes the policy loss overflow"
            ));
        }
        policy += w * pg;
        d_logprob[i] = w * d_pg / denom;
        clipped += w * f64::from(u8::from(is_clipped));
        kl += w * 0.5 * log_ratio * log_ratio;
        ratio_sum += w * ratio;
        if uses_value {
            let (vf, d_vf, is_clipped) =
                value_term(at(inputs.value, i), at(inputs.old_value, i), at(inputs.returns, i), config.value_clip);
            value_loss += w * vf;
            d_value[i] = config.vf_coef * w * d_vf / denom;
            value_clipped += w * f64::from(u8::from(is_clipped));
        }
        if uses_entropy {
            entropy += w * at(inputs.entropy, i);
            d_entropy[i] = -config.ent_coef * w / denom;
        }
    }
    let (policy, value_loss, entropy) = (policy / denom, value_loss / denom, entropy / denom);
    let total = policy + config.vf_coef * value_loss - config.ent_coef * entropy;
    if !total.is_finite() {
        return Err(format!("the PPO loss is not finite (policy {policy}, value {value_loss})"));
    }

    let mut metrics = vec![
        ("policy_loss", policy),
        ("clip_frac", clipped / denom),
        ("approx_kl", kl / denom),
        ("ratio", ratio_sum / denom),
    ];
    if uses_value {
        metrics.extend([("value_loss", value_loss), ("value_clip_frac", value_clipped / denom)]);
    }
    if uses_entropy {
        metrics.push(("entropy", entropy));
    }
    Ok(PpoOutput { value: total, d_logprob, d_value, d_entropy, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::{Rng, assert_gradient, lm_logits, log_softmax, loss_batch, metric, sample};

    /// The per-token arrays of a PPO minibatch.
    #[derive(Default)]
    struct Rollout {
        offsets: Vec<u32>,
        logprob: Vec<f32>,
        old_logprob: Vec<f32>,
        advantage: Vec<f32>,
        mask: Vec<f32>,
        value: Vec<f32>,
        old_value: Vec<f32>,
        returns: Vec<f32>,
        entropy: Vec<f32>,
    }

    impl Rollout {
        fn inputs(&self) -> PpoInputs<'_> {
            PpoInputs {
                logprob: &self.logprob,
                old_logprob: &self.old_logprob,
                advantage: &self.advantage,
                mask: Some(&self.mask),
                value: Some(&self.value),
                old_value: Some(&self.old_value),
                returns: Some(&self.returns),
                entropy: Some(&self.entropy),
            }
        }

        fn batch(&self, features: &[Feature]) -> LossBatch {
            let values = |f: &Feature| match f {
                Feature::Logprob => &self.logprob,
                Feature::OldLogprob => &self.old_logprob,
                Feature::Advantage => &self.advantage,
                Feature::Mask => &self.mask,
                Feature::Value => &self.value,
                Feature::OldValue => &self.old_value,
                Feature::Return => &self.returns,
                Feature::Entropy => &self.entropy,
                _ => unreachable!("PPO reads no {f:?}"),
            };
            let features: Vec<(Feature, &[f32])> = features.iter().map(|f| (*f, values(f).as_slice())).collect();
            loss_batch(&self.offsets, &features)
        }
    }

    /// A rollout sampled from an "old" policy over a 4096-token vocabulary, and a "new" policy a
    /// few optimizer steps later (logits moved by small noise). Tokens whose ratio or value lands
    /// within `margin` of a kink of the clipped objectives are nudged away from it, so that finite
    /// differences see a smooth function.
    fn rollout(seed: u64, lengths: &[usize], padding: usize, clip: f64, value_clip: f64, margin: f64) -> Rollout {
        let mut rng = Rng::new(seed);
        let mut r = Rollout { offsets: vec![0], ..Default::default() };
        for &len in lengths {
            for t in 0..len {
                let old_logits = lm_logits(&mut rng);
                let new_logits: Vec<f64> = old_logits.iter().map(|l| l + 0.15 * rng.gaussian()).collect();
                let (old, new) = (log_softmax(&old_logits), log_softmax(&new_logits));
                let token = sample(&mut rng, &old);
                let mut old_lp = old[token] as f32;
                let new_lp = new[token] as f32;
                loop {
                    let ratio = (f64::from(new_lp) - f64::from(old_lp)).exp();
                    if (ratio - (1.0 - clip)).abs() > margin && (ratio - (1.0 + clip)).abs() > margin {
                        break;
                    }
                    old_lp += 0.02;
                }
                r.logprob.push(new_lp);
                r.old_logprob.push(old_lp);
                r.entropy.push(-new.iter().map(|lp| lp.exp() * lp).sum::<f64>() as f32);
                r.advantage.push(rng.gaussian() as f32);
                r.mask.push(if t + padding < len { 1.0 } else { 0.0 });
                let (value, old_value, ret) = loop {
                    let old_value = 0.5 * rng.gaussian();
                    let (value, ret) =
                        ((old_value + 0.15 * rng.gaussian()) as f32, (old_value + 0.5 * rng.gaussian()) as f32);
                    let old_value = old_value as f32;
                    let (v, vo, ret64) = (f64::from(value), f64::from(old_value), f64::from(ret));
                    let (lo, hi) = (vo - value_clip, vo + value_clip);
                    let midpoint = (v + v.clamp(lo, hi)) / 2.0;
                    let outside = v < lo || v > hi;
                    if (v - lo).abs() > margin
                        && (v - hi).abs() > margin
                        && !(outside && (ret64 - midpoint).abs() <= margin)
                    {
                        break (value, old_value, ret);
                    }
                };
                r.value.push(value);
                r.old_value.push(old_value);
                r.returns.push(ret);
            }
            r.offsets.push(r.logprob.len() as u32);
        }
        r
    }

    #[test]
    fn gradients_match_finite_differences() {
        let config = PpoClip { vf_coef: 0.5, ent_coef: 0.01, ..PpoClip::default() };
        let r = rollout(21, &[40, 25, 35], 5, config.clip, config.value_clip, 0.01);
        let out = ppo_clip_loss(&config, &r.inputs()).unwrap();
        // The batch exercises both branches of both max terms.
        let clip_frac = metric(&out.metrics, "clip_frac");
        let value_clip_frac = metric(&out.metrics, "value_clip_frac");
        assert!((0.02..0.6).contains(&clip_frac), "clip_frac {clip_frac}");
        assert!((0.02..0.6).contains(&value_clip_frac), "value_clip_frac {value_clip_frac}");
        assert!(out.d_logprob.iter().filter(|g| **g == 0.0).count() > r.mask.iter().filter(|m| **m == 0.0).count());

        assert_gradient(&r.logprob, &out.d_logprob, |lp| {
            ppo_clip_loss(&config, &PpoInputs { logprob: lp, ..r.inputs() }).unwrap().value
        });
        assert_gradient(&r.value, &out.d_value, |v| {
            ppo_clip_loss(&config, &PpoInputs { value: Some(v), ..r.inputs() }).unwrap().value
        });
        assert_gradient(&r.entropy, &out.d_entropy, |e| {
            ppo_clip_loss(&config, &PpoInputs { entropy: Some(e), ..r.inputs() }).unwrap().value
        });
    }

    #[test]
    fn ratio_one_gives_minus_mean_advantage() {
        let mut r = rollout(22, &[30, 20], 4, 0.2, 0.2, 0.0);
        r.old_logprob = r.logprob.clone();
        let counted: Vec<f64> =
            r.advantage.iter().zip(&r.mask).filter(|(_, m)| **m == 1.0).map(|(a, _)| f64::from(*a)).collect();
        let mean_advantage = counted.iter().sum::<f64>() / counted.len() as f64;

        let mut ppo: PpoClip = configure(r#"{"vf_coef": 0}"#).unwrap();
        let features = ppo.features();
        assert_eq!(features, vec![Feature::Logprob, Feature::OldLogprob, Feature::Advantage, Feature::Mask]);
        let out = ppo.compute(&r.batch(&features)).unwrap();
        assert!((out.value + mean_advantage).abs() < 1e-12, "{} vs {}", out.value, -mean_advantage);
        assert_eq!(out.gradients.len(), 1);
        for ((g, a), m) in out.gradients[0].values.iter().zip(&r.advantage).zip(&r.mask) {
            assert_eq!(*g, (-f64::from(*a) * f64::from(*m) / counted.len() as f64) as f32);
        }
        let named = |name: &str| out.metrics.iter().find(|m| m.name == name).unwrap().value;
        assert_eq!((named("clip_frac"), named("approx_kl"), named("ratio")), (0.0, 0.0, 1.0));
        assert!(out.metrics.iter().all(|m| m.name != "value_loss" && m.name != "entropy"));
    }

    #[test]
    fn kinks_follow_pytorch_subgradients() {
        let clip = 0.2;
        // (ratio, advantage) -> (loss, gradient, clipped)
        let cases = [
            (1.5, 1.0, (-1.2, 0.0, true)), // A > 0, ratio above 1 + clip: no incentive to push further
            (0.5, 1.0, (-0.5, -0.5, false)), // A > 0, ratio below 1 - clip: unclipped branch is larger
            (1.5, -1.0, (1.5, 1.5, false)), // A < 0, ratio above 1 + clip: still pulled back
            (0.5, -1.0, (0.8, 0.0, true)), // A < 0, ratio below 1 - clip: clipped
            (1.0, 2.0, (-2.0, -2.0, false)), // inside the bounds both branches agree
            (1.5, 0.0, (0.0, 0.0, false)), // zero advantage: nothing to learn
        ];
        for (ratio, advantage, (loss, grad, clipped)) in cases {
            let (l, g, c) = policy_term(ratio, advantage, clip);
            assert!(
                (l - loss).abs() < 1e-12 && (g - grad).abs() < 1e-12 && c == clipped,
                "r {ratio} A {advantage}: {l} {g} {c}"
            );
        }
        // Exactly on a bound the branches tie; PyTorch's gradient there is the unclipped -A * r.
        let (l, g, c) = policy_term(1.0 + clip, 1.0, clip);
        assert_eq!((l, g, c), (-(1.0 + clip), -(1.0 + clip), false));

        // Value term with old value 0.5 and value_clip 0.25 (exact in binary): bounds [0.25, 0.75].
        let (l, g, c) = value_term(1.0, 0.5, 0.0, 0.25);
        assert_eq!((l, g, c), (0.5, 1.0, false)); // unclipped (1.0) beats clipped (0.5625)
        let (l, g, c) = value_term(1.0, 0.5, 2.0, 0.25);
        assert_eq!((l, g, c), (0.5 * 1.5625, 0.0, true)); // clipped (1.5625) beats unclipped (1.0)
        let (l, g, c) = value_term(0.75, 0.5, 2.0, 0.25);
        assert_eq!((l, g, c), (0.5 * 1.5625, -1.25, false)); // on the bound: full gradient
        let (l, g, c) = value_term(1.0, 0.5, 0.875, 0.25);
        assert_eq!((l, g, c), (0.5 * 0.015625, 0.125, false)); // the documented mirror tie
    }

    #[test]
    fn total_combines_the_terms_with_trl_metrics() {
        let r = rollout(23, &[20, 20], 3, 0.2, 0.2, 0.0);
        let config = PpoClip { vf_coef: 0.1, ent_coef: 0.01, ..PpoClip::default() };
        let out = ppo_clip_loss(&config, &r.inputs()).unwrap();
        let (p, v, e) =
            (metric(&out.metrics, "policy_loss"), metric(&out.metrics, "value_loss"), metric(&out.metrics, "entropy"));
        assert!((out.value - (p + 0.1 * v - 0.01 * e)).abs() < 1e-12);

        // Recompute the TRL quantities directly over the counted tokens.
        let counted: Vec<usize> = (0..r.mask.len()).filter(|&i| r.mask[i] == 1.0).collect();
        let mean = |f: &dyn Fn(usize) -> f64| counted.iter().map(|&i| f(i)).sum::<f64>() / counted.len() as f64;
        let log_ratio = |i: usize| f64::from(r.logprob[i]) - f64::from(r.old_logprob[i]);
        let kl = mean(&|i| 0.5 * log_ratio(i).powi(2));
        let entropy = mean(&|i| f64::from(r.entropy[i]));
        let clipped = mean(&|i| {
            let (ratio, a) = (log_ratio(i).exp(), f64::from(r.advantage[i]));
            f64::from(u8::from(-a * ratio.clamp(0.8, 1.2) > -a * ratio))
        });
        assert!((metric(&out.metrics, "approx_kl") - kl).abs() < 1e-12);
        assert!((e - entropy).abs() < 1e-9 && (2.0..9.0).contains(&e), "entropy {e}");
        assert!((metric(&out.metrics, "clip_frac") - clipped).abs() < 1e-12);
        // Entropy bonus gradient: -ent_coef / N on counted tokens only.
        for (g, m) in out.d_entropy.iter().zip(&r.mask) {
            assert_eq!(*g, -0.01 * f64::from(*m) / counted.len() as f64);
        }
    }

    #[test]
    fn features_follow_the_config() {
        let ppo: PpoClip = configure("").unwrap();
        assert_eq!(
            ppo.features(),
            vec![
                Feature::Logprob,
                Feature::OldLogprob,
                Feature::Advantage,
                Feature::Mask,
                Feature::Value,
                Feature::OldValue,
                Feature::Return,
            ]
        );
        let ppo: PpoClip = configure(r#"{"vf_coef": 0, "ent_coef": 0.01}"#).unwrap();
        assert_eq!(
            ppo.features(),
            vec![Feature::Logprob, Feature::OldLogprob, Feature::Advantage, Feature::Mask, Feature::Entropy]
        );
        // The gradients returned match the differentiable features requested.
        let mut ppo: PpoClip = configure(r#"{"ent_coef": 0.01}"#).unwrap();
        let r = rollout(24, &[10], 0, 0.2, 0.2, 0.0);
        let out = ppo.compute(&r.batch(&ppo.features())).unwrap();
        let returned: Vec<Feature> = out.gradients.iter().map(|g| g.feature).collect();
        assert_eq!(returned, vec![Feature::Logprob, Feature::Value, Feature::Entropy]);
        assert!(out.gradients.iter().all(|g| g.values.len() == 10));
    }

    #[test]
    fn config_is_validated() {
        for (config, message) in [
            (r#"{"clip": 0}"#, "clip must be in (0, 1)"),
            (r#"{"clip": 1.0}"#, "clip must be in (0, 1)"),
            (r#"{"value_clip": 0}"#, "value_clip must be finite and > 0"),
            (r#"{"vf_coef": -0.1}"#, "vf_coef must be finite and >= 0"),
            (r#"{"ent_coef": -0.01}"#, "ent_coef must be finite and >= 0"),
            (r#"{"cliprange": 0.2}"#, "unknown field"),
        ] {
            let err = configure::<PpoClip>(config).unwrap_err();
            assert!(err.message.contains(message), "{config}: {}", err.message);
        }
    }

    #[test]
    fn malformed_batches_are_rejected_with_the_feature_named() {
        let mut ppo: PpoClip = configure("").unwrap();
        let r = rollout(25, &[6, 4], 1, 0.2, 0.2, 0.0);
        let without_value = [
            Feature::Logprob,
            Feature::OldLogprob,
            Feature::Advantage,
            Feature::Mask,
            Feature::OldValue,
            Feature::Return,
        ];
        let e = ppo.compute(&r.batch(&without_value)).unwrap_err();
        assert!(e.contains("did not pass feature `value`"), "{e}");

        let mut b = r.batch(&ppo.features());
        b.features[2].values.pop();
        let e = ppo.compute(&b).unwrap_err();
        assert!(e.contains("`advantage` has 9 values, expected 10"), "{e}");

        // A ratio that overflows f64 is an error on a counted token and ignored on padding.
        let mut r = rollout(26, &[3], 1, 0.2, 0.2, 0.0);
        r.logprob = vec![-1.0, -1.0, 0.0];
        r.old_logprob = vec![-1.0, -1.0, -800.0];
        r.advantage = vec![1.0, -1.0, -1.0];
        let features = ppo.features();
        assert!(ppo.compute(&r.batch(&features)).is_ok());
        r.mask[2] = 1.0;
        let e = ppo.compute(&r.batch(&features)).unwrap_err();
        assert!(e.contains("token 2") && e.contains("overflow"), "{e}");
    }
}
