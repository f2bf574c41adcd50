//! Direct Preference Optimization (Rafailov et al. 2023), computed as TRL's `DPOTrainer` does, as a
//! triad loss plugin.
//!
//! Sequences come in pairs: sequence `2i` is the chosen response of pair `i`, sequence `2i + 1`
//! the rejected one. With `pi` the policy's and `ref` the frozen reference model's summed
//! response log-probabilities:
//!
//! ```text
//! h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
//! sigmoid: l = -(1 - label_smoothing) * log_sigmoid(beta * h) - label_smoothing * log_sigmoid(-beta * h)
//! ipo:     l = (h - 1 / (2 * beta))^2
//! loss = mean of l over pairs
//! ```
//!
//! Config (JSON, every field optional):
//! - `beta` (default 0.1): strength of the implicit KL penalty towards the reference, > 0.
//! - `label_smoothing` (default 0): conservative DPO (Mitchell 2023), the assumed probability that
//!   a preference label is flipped, in [0, 0.5). Only for `sigmoid`.
//! - `loss_type` (default `"sigmoid"`): `"sigmoid"` (DPO) or `"ipo"` (Azar et al. 2023).
//!
//! Conventions shared with the host's native loss (its gradients must agree to 1e-5):
//! - Features read: `sequence-logprob` and `sequence-ref-logprob`, one value per sequence; an odd
//!   number of sequences is an error. The mean is over pairs; a batch without pairs has loss 0.
//! - `log_sigmoid(z) = min(z, 0) - ln(1 + exp(-|z|))`, which neither overflows nor loses the tail.
//! - Gradients: only the forward computation above is written here; `d loss / d sequence-logprob`
//!   comes from the SDK's reverse-mode tape (`triad_plugin_sdk::autodiff`). It equals the
//!   hand-derived `dl/dh = beta * (-(1 - ls) * sigmoid(-beta h) + ls * sigmoid(beta h))` for
//!   `sigmoid`, `2 * (h - 1 / (2 beta))` for `ipo`, with `d loss / d sequence_logprob[2i] =
//!   dl_i/dh / P` and `d loss / d sequence_logprob[2i+1] = -dl_i/dh / P` for P pairs: the tests
//!   keep the earlier hand-written implementation and compare the two to 1e-6.
//! - IPO here uses the summed log-probabilities, as the IPO paper writes it. TRL's IPO averages
//!   them over each response's tokens instead; to get that, the host would pass per-token means.
//! - Everything is computed in f64; values cross the boundary as f32.
//! - Metrics (TRL's `rewards/*`, means over pairs): `chosen_reward` = `beta * (pi_chosen -
//!   ref_chosen)`, `rejected_reward` likewise, `reward_margin` = their difference,
//!   `reward_accuracy` = fraction of pairs whose chosen reward is strictly larger.

use triad_plugin_sdk::autodiff::{self, Inputs, Var};
use triad_plugin_sdk::prelude::*;

/// Which preference loss to apply to the log-ratio difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// The DPO loss: `-log sigmoid(beta * h)`, optionally label-smoothed.
    #[default]
    Sigmoid,
    /// The IPO loss: `(h - 1 / (2 beta))^2`.
    Ipo,
}

/// The plugin: its config, filled from the experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dpo {
    /// Inverse temperature of the implicit reward; larger stays closer to the reference.
    pub beta: f64,
    /// Assumed rate of flipped preference labels (conservative DPO).
    pub label_smoothing: f64,
    /// Sigmoid (DPO) or IPO.
    pub loss_type: LossType,
}

impl Default for Dpo {
    fn default() -> Self {
        Dpo { beta: 0.1, label_smoothing: 0.0, loss_type: LossType::Sigmoid }
    }
}

impl Plugin for Dpo {
    fn init(&mut self) -> Result<(), String> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(format!("beta must be finite and > 0, got {}", self.beta));
        }
        // At 0.5 the labels carry no information and the loss pushes the margin to 0.
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!("label_smoothing must be in [0, 0.5), got {}", self.label_smoothing));
        }
        if self.loss_type == LossType::Ipo && self.label_smoothing != 0.0 {
            return Err("label_smoothing applies to the sigmoid loss only, not to ipo".into());
        }
        Ok(())
    }
}

impl Loss for Dpo {
    fn features(&self) -> Vec<Feature> {
        vec![Feature::SequenceLogprob, Feature::SequenceRefLogprob]
    }

    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {
        autodiff::compute(batch, |x| self.forward(x))
    }
}

export_loss!(Dpo);

impl Dpo {
    /// The mean loss over pairs and TRL's reward metrics, as a computation on the autodiff tape:
    /// the gradient with respect to `sequence-logprob` is the tape's.
    pub fn forward<'t>(&self, x: &Inputs<'t>) -> autodiff::Forward<'t> {
        let policy = x.per_sequence(Feature::SequenceLogprob)?;
        // The reference model is frozen: plain values, constants on the tape.
        let reference = x.batch().per_sequence(Feature::SequenceRefLogprob)?;
        let n = policy.len();
        if !n.is_multiple_of(2) {
            return Err(format!(
                "DPO needs sequences in (chosen, rejected) pairs, got an odd number of sequences: {n}"
            ));
        }
        let pairs = n / 2;
        let denom = pairs.max(1) as f64;
        let mut losses = Vec::with_capacity(pairs);
        let (mut accuracy, mut chosen_sum, mut rejected_sum) = (0.0, 0.0, 0.0);
        for i in 0..pairs {
            let (c, r) = (2 * i, 2 * i + 1);
            let (ref_c, ref_r) = (f64::from(reference[c]), f64::from(reference[r]));
            let h = (policy[c] - policy[r]) - (ref_c - ref_r);
            losses.push(self.pair_loss(h));

            let chosen_reward = self.beta * (policy[c].value() - ref_c);
            let rejected_reward = self.beta * (policy[r].value() - ref_r);
            chosen_sum += chosen_reward;
            rejected_sum += rejected_reward;
            accuracy += f64::from(u8::from(chosen_reward > rejected_reward));
        }
        let metrics = vec![
            ("reward_accuracy", accuracy / denom),
            ("reward_margin", (chosen_sum - rejected_sum) / denom),
            ("chosen_reward", chosen_sum / denom),
            ("rejected_reward", rejected_sum / denom),
        ];
        Ok((x.tape().sum(losses) / denom, metrics))
    }

    /// One pair's loss as a function of the log-ratio difference `h`.
    fn pair_loss<'t>(&self, h: Var<'t>) -> Var<'t> {
        match self.loss_type {
            LossType::Sigmoid => {
                let (z, ls) = (self.beta * h, self.label_smoothing);
                -(1.0 - ls) * z.log_sigmoid() - ls * (-z).log_sigmoid()
            }
            LossType::Ipo => (h - 1.0 / (2.0 * self.beta)).powi(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::autodiff::{Evaluation, evaluate};
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::{Rng, assert_gradient, lm_logits, log_softmax, loss_batch, metric, sample};

    /// The plugin's loss as it was before `autodiff`, gradients derived by hand: the reference that
    /// the tape's gradients are compared with.
    mod hand_written {
        use super::*;

        /// What [`dpo_loss`] returns, all in f64.
        pub struct DpoOutput {
            pub value: f64,
            pub d_sequence_logprob: Vec<f64>,
            pub metrics: Vec<(&'static str, f64)>,
        }

        /// The earlier `Loss::compute`.
        pub fn compute(config: &Dpo, batch: &LossBatch) -> Result<LossOutput, String> {
            let logprob = batch.per_sequence(Feature::SequenceLogprob)?;
            let ref_logprob = batch.per_sequence(Feature::SequenceRefLogprob)?;
            let out = dpo_loss(config, logprob, ref_logprob)?;
            Ok(LossOutput::new(
                out.value,
                vec![FeatureValues::new(Feature::SequenceLogprob, out.d_sequence_logprob)],
                out.metrics,
            ))
        }

        fn log_sigmoid(z: f64) -> f64 {
            z.min(0.0) - (-z.abs()).exp().ln_1p()
        }

        fn sigmoid(z: f64) -> f64 {
            if z >= 0.0 {
                1.0 / (1.0 + (-z).exp())
            } else {
                let e = z.exp();
                e / (1.0 + e)
            }
        }

        /// One pair's loss and its derivative with respect to `h`.
        fn pair_loss(config: &Dpo, h: f64) -> (f64, f64) {
            match config.loss_type {
                LossType::Sigmoid => {
                    let (beta, ls) = (config.beta, config.label_smoothing);
                    let z = beta * h;
                    let loss = -(1.0 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z);
                    (loss, beta * (-(1.0 - ls) * sigmoid(-z) + ls * sigmoid(z)))
                }
                LossType::Ipo => {
                    let d = h - 1.0 / (2.0 * config.beta);
                    (d * d, 2.0 * d)
                }
            }
        }

        /// The DPO loss and its gradient from per-sequence arrays (chosen, rejected, ...).
        pub fn dpo_loss(
            config: &Dpo,
            sequence_logprob: &[f32],
            sequence_ref_logprob: &[f32],
        ) -> Result<DpoOutput, String> {
            let n = sequence_logprob.len();
            if !n.is_multiple_of(2) {
                return Err(format!(
                    "DPO needs sequences in (chosen, rejected) pairs, got an odd number of sequences: {n}"
                ));
            }
            let pairs = n / 2;
            let denom = pairs.max(1) as f64;
            let mut d_sequence_logprob = vec![0.0; n];
            let (mut loss, mut accuracy, mut chosen_sum, mut rejected_sum) = (0.0, 0.0, 0.0, 0.0);
            for i in 0..pairs {
                let (c, r) = (2 * i, 2 * i + 1);
                let (pi_c, pi_r) = (f64::from(sequence_logprob[c]), f64::from(sequence_logprob[r]));
                let (ref_c, ref_r) = (f64::from(sequence_ref_logprob[c]), f64::from(sequence_ref_logprob[r]));
                let h = (pi_c - pi_r) - (ref_c - ref_r);
                let (l, dl_dh) = pair_loss(config, h);
                loss += l;
                d_sequence_logprob[c] = dl_dh / denom;
                d_sequence_logprob[r] = -dl_dh / denom;

                let chosen_reward = config.beta * (pi_c - ref_c);
                let rejected_reward = config.beta * (pi_r - ref_r);
                chosen_sum += chosen_reward;
                rejected_sum += rejected_reward;
                accuracy += f64::from(u8::from(chosen_reward > rejected_reward));
            }
            Ok(DpoOutput {
                value: loss / denom,
                d_sequence_logprob,
                metrics: vec![
                    ("reward_accuracy", accuracy / denom),
                    ("reward_margin", (chosen_sum - rejected_sum) / denom),
                    ("chosen_reward", chosen_sum / denom),
                    ("rejected_reward", rejected_sum / denom),
                ],
            })
        }
    }

    /// The batch the host would pass for these per-sequence values (the token offsets do not
    /// matter to DPO).
    fn batch(policy: &[f32], reference: &[f32]) -> LossBatch {
        let offsets: Vec<u32> = (0..=policy.len() as u32).map(|i| 10 * i).collect();
        loss_batch(&offsets, &[(Feature::SequenceLogprob, policy), (Feature::SequenceRefLogprob, reference)])
    }

    /// The plugin's loss, gradient and metrics in f64.
    fn run(config: &Dpo, policy: &[f32], reference: &[f32]) -> Evaluation {
        evaluate(&batch(policy, reference), |x| config.forward(x)).unwrap()
    }

    /// Summed response log-probabilities of `pairs` preference pairs, (policy, reference), as the
    /// host would compute them: responses of 20 to 60 tokens sampled from the reference model over
    /// a 4096-token vocabulary, and a policy whose logits have drifted from the reference's.
    fn preference_pairs(seed: u64, pairs: usize) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let (mut offsets, mut policy, mut reference) = (vec![0u32], vec![], vec![]);
        for _ in 0..2 * pairs {
            let len = 20 + (rng.uniform() * 41.0) as usize;
            let (mut pi, mut re) = (0.0, 0.0);
            for _ in 0..len {
                let ref_logits = lm_logits(&mut rng);
                let policy_logits: Vec<f64> = ref_logits.iter().map(|l| l + 0.2 * rng.gaussian()).collect();
                let (ref_lps, policy_lps) = (log_softmax(&ref_logits), log_softmax(&policy_logits));
                let token = sample(&mut rng, &ref_lps);
                pi += policy_lps[token];
                re += ref_lps[token];
            }
            policy.push(pi as f32);
            reference.push(re as f32);
            offsets.push(offsets[offsets.len() - 1] + len as u32);
        }
        (offsets, policy, reference)
    }

    #[test]
    fn realistic_pairs_have_realistic_magnitudes() {
        let (offsets, policy, reference) = preference_pairs(31, 8);
        assert_eq!((offsets.len(), policy.len()), (17, 16));
        for (i, (p, r)) in policy.iter().zip(&reference).enumerate() {
            let tokens = (offsets[i + 1] - offsets[i]) as f32;
            // A few nats per token, and the drifted policy stays within a few nats of the reference.
            assert!((-10.0..-1.0).contains(&(r / tokens)), "sequence {i}: {r} over {tokens} tokens");
            assert!((p - r).abs() < 0.5 * tokens, "sequence {i}: policy {p} reference {r}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (_, policy, reference) = preference_pairs(32, 8);
        for config in [
            Dpo::default(),
            Dpo { beta: 0.5, label_smoothing: 0.1, ..Dpo::default() },
            Dpo { loss_type: LossType::Ipo, ..Dpo::default() },
        ] {
            let out = run(&config, &policy, &reference);
            assert_gradient(&policy, &out.gradients[0].1, |p| run(&config, p, &reference).value);
        }
    }

    #[test]
    fn equal_margins_give_ln_2() {
        // The policy moved both responses by the same 0.5 nats relative to the reference.
        let policy = [-120.5f32, -98.25, -64.0, -201.75];
        let reference = [-121.0f32, -98.75, -64.5, -202.25];
        let mut dpo: Dpo = configure("").unwrap();
        let out = dpo
            .compute(&loss_batch(
                &[0, 30, 55, 80, 130],
                &[(Feature::SequenceLogprob, &policy), (Feature::SequenceRefLogprob, &reference)],
            ))
            .unwrap();
        assert!((out.value - std::f64::consts::LN_2).abs() < 1e-15);
        // d/dh of -log sigmoid(beta h) at 0 is -beta/2, shared over 2 pairs.
        assert_eq!(out.gradients[0].values, vec![-0.025, 0.025, -0.025, 0.025]);
        let named = |name: &str| out.metrics.iter().find(|m| m.name == name).unwrap().value;
        assert_eq!((named("reward_accuracy"), named("reward_margin")), (0.0, 0.0));
        assert!((named("chosen_reward") - 0.05).abs() < 1e-15 && (named("rejected_reward") - 0.05).abs() < 1e-15);
    }

    #[test]
    fn hand_checked_values() {
        // h = 5 - (-5) = 10, beta = 0.1: z = 1.
        let (policy, reference) = ([-95.0f32, -105.0], [-100.0f32, -100.0]);
        let out = run(&Dpo::default(), &policy, &reference);
        let expected = (1.0 + (-1.0f64).exp()).ln();
        assert!((out.value - expected).abs() < 1e-15);
        let sig = 1.0 / (1.0 + 1.0f64.exp()); // sigmoid(-1)
        assert_eq!(out.gradients[0].0, Feature::SequenceLogprob);
        assert!((out.gradients[0].1[0] + 0.1 * sig).abs() < 1e-15);
        assert!((out.gradients[0].1[1] - 0.1 * sig).abs() < 1e-15);
        assert_eq!(metric(&out.metrics, "reward_accuracy"), 1.0);
        assert!((metric(&out.metrics, "reward_margin") - 1.0).abs() < 1e-15);
        assert!((metric(&out.metrics, "chosen_reward") - 0.5).abs() < 1e-15);
        assert!((metric(&out.metrics, "rejected_reward") + 0.5).abs() < 1e-15);

        // Conservative DPO mixes in the loss of the flipped label.
        let conservative = Dpo { label_smoothing: 0.2, ..Dpo::default() };
        let out = run(&conservative, &policy, &reference);
        let expected = 0.8 * (1.0 + (-1.0f64).exp()).ln() + 0.2 * (1.0 + 1.0f64.exp()).ln();
        assert!((out.value - expected).abs() < 1e-15);

        // IPO regresses h onto 1 / (2 beta) = 5: (10 - 5)^2 = 25, d/dh = 10.
        let ipo = Dpo { loss_type: LossType::Ipo, ..Dpo::default() };
        let out = run(&ipo, &policy, &reference);
        assert_eq!((out.value, out.gradients[0].1.clone()), (25.0, vec![10.0, -10.0]));
    }

    #[test]
    fn extreme_margins_stay_finite() {
        // h = +-10000, beta = 0.1: z = +-1000, where exp(1000) overflows a naive sigmoid.
        let (policy, reference) = ([-5000.0f32, -15000.0, -15000.0, -5000.0], [-10000.0f32; 4]);
        let out = run(&Dpo::default(), &policy, &reference);
        // Pair 0 is solved (loss 0); pair 1 is wrong by z = 1000 (loss 1000); mean 500.
        assert!((out.value - 500.0).abs() < 1e-9, "{}", out.value);
        assert_eq!(out.gradients[0].1, vec![-0.0, 0.0, -0.05, 0.05]);
    }

    #[test]
    fn config_is_validated() {
        let dpo: Dpo = configure("{}").unwrap();
        assert_eq!((dpo.beta, dpo.label_smoothing, dpo.loss_type), (0.1, 0.0, LossType::Sigmoid));
        assert_eq!(dpo.features(), vec![Feature::SequenceLogprob, Feature::SequenceRefLogprob]);
        let ipo: Dpo = configure(r#"{"loss_type": "ipo", "beta": 0.5}"#).unwrap();
        assert_eq!(ipo.loss_type, LossType::Ipo);
        for (config, message) in [
            (r#"{"beta": 0}"#, "beta must be finite and > 0"),
            (r#"{"label_smoothing": 0.5}"#, "label_smoothing must be in [0, 0.5)"),
            (r#"{"label_smoothing": -0.1}"#, "label_smoothing must be in [0, 0.5)"),
            (r#"{"loss_type": "ipo", "label_smoothing": 0.1}"#, "sigmoid loss only"),
            (r#"{"loss_type": "hinge"}"#, "unknown variant"),
            (r#"{"temperature": 0.1}"#, "unknown field"),
        ] {
            let err = configure::<Dpo>(config).unwrap_err();
            assert!(err.message.contains(message), "{config}: {}", err.message);
        }
    }

    #[test]
    fn malformed_batches_are_rejected_with_the_feature_named() {
        let mut dpo: Dpo = configure("").unwrap();
        let three = [-10.0f32, -12.0, -9.0];
        let e = dpo
            .compute(&loss_batch(
                &[0, 5, 9, 14],
                &[(Feature::SequenceLogprob, &three), (Feature::SequenceRefLogprob, &three)],
            ))
            .unwrap_err();
        assert!(e.contains("odd number of sequences: 3"), "{e}");
        let e = dpo
            .compute(&loss_batch(
                &[0, 5, 9],
                &[(Feature::SequenceLogprob, &three[..2]), (Feature::SequenceRefLogprob, &three)],
            ))
            .unwrap_err();
        assert!(e.contains("`sequence-ref-logprob` has 3 values, expected 2 (one per sequence)"), "{e}");
        let e = dpo.compute(&loss_batch(&[0, 5, 9], &[(Feature::SequenceLogprob, &three[..2])])).unwrap_err();
        assert!(e.contains("did not pass feature `sequence-ref-logprob`"), "{e}");
        let e = dpo
            .compute(&loss_batch(
                &[0, 5, 4],
                &[(Feature::SequenceLogprob, &three[..2]), (Feature::SequenceRefLogprob, &three[..2])],
            ))
            .unwrap_err();
        assert!(e.contains("non-decreasing"), "{e}");
        // No pairs at all: loss 0, nothing to learn.
        let out = dpo
            .compute(&loss_batch(&[0], &[(Feature::SequenceLogprob, &[]), (Feature::SequenceRefLogprob, &[])]))
            .unwrap();
        assert_eq!((out.value, out.gradients[0].values.len()), (0.0, 0));
    }

    /// The largest absolute difference between two outputs' values, gradients and metrics; panics
    /// unless both have the same gradients (features and lengths) and the same metric names.
    fn largest_difference(a: &LossOutput, b: &LossOutput) -> f64 {
        let features = |o: &LossOutput| o.gradients.iter().map(|g| (g.feature, g.values.len())).collect::<Vec<_>>();
        assert_eq!(features(a), features(b), "gradients for the same features");
        let names = |o: &LossOutput| o.metrics.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(a), names(b), "the same metrics");
        let gradients = a.gradients.iter().zip(&b.gradients).flat_map(|(x, y)| x.values.iter().zip(&y.values));
        let metrics = a.metrics.iter().zip(&b.metrics).map(|(x, y)| (x.value - y.value).abs());
        gradients.map(|(x, y)| f64::from((x - y).abs())).chain(metrics).fold((a.value - b.value).abs(), f64::max)
    }

    #[test]
    fn autodiff_gives_the_hand_written_loss_gradients_and_metrics() {
        // Two batches of 24 realistic pairs, and pairs far beyond where a naive sigmoid overflows.
        let (extreme, far) = (
            [-5000.0f32, -15000.0, -15000.0, -5000.0, -80.0, -60.0],
            [-10000.0f32, -10000.0, -10000.0, -10000.0, -70.0, -70.0],
        );
        let batches = [
            preference_pairs(41, 24),
            preference_pairs(42, 24),
            (vec![0, 9, 20, 31, 40, 52, 60], extreme.to_vec(), far.to_vec()),
        ];
        let sigmoid = |beta, label_smoothing| Dpo { beta, label_smoothing, loss_type: LossType::Sigmoid };
        let ipo = |beta| Dpo { beta, label_smoothing: 0.0, loss_type: LossType::Ipo };
        let configs = [
            sigmoid(0.1, 0.0),
            sigmoid(0.5, 0.1),
            sigmoid(0.05, 0.3),
            sigmoid(2.0, 0.0),
            sigmoid(2.0, 0.45),
            ipo(0.1),
            ipo(1.0),
            ipo(0.01),
        ];
        let (mut boundary, mut in_f64) = (0.0f64, 0.0f64);
        for (offsets, policy, reference) in &batches {
            let b =
                loss_batch(offsets, &[(Feature::SequenceLogprob, policy), (Feature::SequenceRefLogprob, reference)]);
            for config in &configs {
                // What crosses the boundary: f64 value and metrics, f32 gradients.
                let (autodiff, hand) =
                    (config.clone().compute(&b).unwrap(), hand_written::compute(config, &b).unwrap());
                let d = largest_difference(&autodiff, &hand);
                assert!(d <= 1e-6, "{config:?}: autodiff and hand-written differ by {d}");
                boundary = boundary.max(d);
                // The f64 gradients before rounding.
                let (autodiff, hand) =
                    (run(config, policy, reference), hand_written::dpo_loss(config, policy, reference).unwrap());
                let d = autodiff.gradients[0]
                    .1
                    .iter()
                    .zip(&hand.d_sequence_logprob)
                    .map(|(a, h)| (a - h).abs())
                    .fold(0.0, f64::max);
                assert!(d <= 1e-6, "{config:?}: f64 gradients differ by {d}");
                in_f64 = in_f64.max(d).max((autodiff.value - hand.value).abs());
            }
        }
        eprintln!(
            "largest difference, autodiff vs hand-written: {boundary:e} as returned to the host, {in_f64:e} in f64"
        );
    }

    #[test]
    fn autodiff_gives_the_hand_written_errors() {
        let (two, three) = ([-10.0f32, -12.0], [-10.0f32, -12.0, -9.0]);
        let cases = [
            loss_batch(&[0, 5, 9, 14], &[(Feature::SequenceLogprob, &three), (Feature::SequenceRefLogprob, &three)]),
            loss_batch(&[0, 5, 9], &[(Feature::SequenceLogprob, &two), (Feature::SequenceRefLogprob, &three)]),
            loss_batch(&[0, 5, 9], &[(Feature::SequenceRefLogprob, &two)]),
            loss_batch(&[0, 5, 9], &[(Feature::SequenceLogprob, &two)]),
            loss_batch(&[0, 5, 4], &[(Feature::SequenceLogprob, &two), (Feature::SequenceRefLogprob, &two)]),
            loss_batch(
                &[0, 5, 9],
                &[(Feature::SequenceLogprob, &[-1.0, f32::NAN]), (Feature::SequenceRefLogprob, &two)],
            ),
        ];
        for b in &cases {
            let (autodiff, hand) =
                (Dpo::default().compute(b).unwrap_err(), hand_written::compute(&Dpo::default(), b).unwrap_err());
            assert_eq!(autodiff, hand);
        }
    }
}
