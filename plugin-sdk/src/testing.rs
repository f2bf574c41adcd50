//! Helpers for native tests of plugins: a deterministic generator, realistic log-probabilities, a
//! finite-difference gradient check, and real text ([`review_snippets`]).
//!
//! A loss is best tested on inputs that look like what a language model produces (a few
//! confident tokens among many unlikely ones, a vocabulary mean far below the target), and its
//! gradients against central differences of its own value:
//!
//! ```
//! use triad_plugin_sdk::testing::{assert_gradient, lm_batch};
//!
//! let batch = lm_batch(7, &[40, 25], 5);
//! let nll = |lp: &[f32]| -lp.iter().map(|&l| f64::from(l)).sum::<f64>() / lp.len() as f64;
//! let gradient = vec![-1.0 / batch.logprob.len() as f64; batch.logprob.len()];
//! assert_gradient(&batch.logprob, &gradient, nll);
//! ```
//!
//! Everything here is plain Rust (no clock, no randomness from the OS), so it also compiles for
//! wasm32; it is meant for `#[cfg(test)]` code and costs a plugin nothing when unused.

use crate::{DataFilter, Decision, Feature, FeatureValues, LossBatch, Sample};

/// Vocabulary size of the simulated language model: large enough that the vocabulary mean of
/// log p and the tail of the distribution look like a real model's.
pub const VOCAB: usize = 4096;

/// xorshift64*: deterministic pseudo-random numbers without a dependency, identical on every
/// platform, so a seed names the same test inputs everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`. Seed 0, a fixed point of xorshift, is replaced by a fixed
    /// non-zero constant.
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// Uniform in the open interval (0, 1), so that `ln` of it is always finite.
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal, by the Box-Muller transform (two uniforms per call).
    pub fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The logits of one position of a plausible language model over [`VOCAB`] tokens: Gaussian with
/// a random scale, and at half the positions one token the model is confident about.
pub fn lm_logits(rng: &mut Rng) -> Vec<f64> {
    let scale = 1.0 + 2.0 * rng.uniform();
    let mut logits: Vec<f64> = (0..VOCAB).map(|_| scale * rng.gaussian()).collect();
    if rng.uniform() < 0.5 {
        let favourite = (rng.uniform() * VOCAB as f64) as usize % VOCAB;
        logits[favourite] += 4.0 + 8.0 * rng.uniform();
    }
    logits
}

/// Log-probabilities from logits, shifted by the maximum so that no `exp` overflows.
pub fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    logits.iter().map(|l| l - lse).collect()
}

/// Samples a token from a distribution given as log-probabilities, as generated text would.
pub fn sample(rng: &mut Rng, log_probs: &[f64]) -> usize {
    let u = rng.uniform();
    let mut cumulative = 0.0;
    for (v, lp) in log_probs.iter().enumerate() {
        cumulative += lp.exp();
        if u < cumulative {
            return v;
        }
    }
    log_probs.len() - 1
}

/// The per-token features of a batch of sequences scored by a language model.
#[derive(Debug, Clone, PartialEq)]
pub struct LmBatch {
    /// `sequence-offsets`: where each sequence starts, plus the total.
    pub offsets: Vec<u32>,
    /// log p(target) of each token, the target sampled from the model itself.
    pub logprob: Vec<f32>,
    /// The vocabulary mean of log p at each position.
    pub mean_logprob: Vec<f32>,
    /// 1 for counted tokens, 0 for the padding at the end of each sequence.
    pub mask: Vec<f32>,
}

/// A batch of sequences of the given lengths from the simulated model ([`lm_logits`]), each
/// ending in `padding` tokens with mask 0. The same seed gives the same batch.
pub fn lm_batch(seed: u64, lengths: &[usize], padding: usize) -> LmBatch {
    let mut rng = Rng::new(seed);
    let mut batch = LmBatch { offsets: vec![0], logprob: vec![], mean_logprob: vec![], mask: vec![] };
    for &len in lengths {
        for t in 0..len {
            let log_probs = log_softmax(&lm_logits(&mut rng));
            let target = sample(&mut rng, &log_probs);
            batch.logprob.push(log_probs[target] as f32);
            batch.mean_logprob.push((log_probs.iter().sum::<f64>() / VOCAB as f64) as f32);
            batch.mask.push(if t + padding < len { 1.0 } else { 0.0 });
        }
        batch.offsets.push(batch.logprob.len() as u32);
    }
    batch
}

/// A [`LossBatch`] as the host would pass it: the offsets and the given features, in order.
pub fn loss_batch(offsets: &[u32], features: &[(Feature, &[f32])]) -> LossBatch {
    LossBatch {
        sequence_offsets: offsets.to_vec(),
        features: features.iter().map(|(f, v)| FeatureValues { feature: *f, values: v.to_vec() }).collect(),
    }
}

/// Panics unless `analytic` matches central differences of `f` at every entry of `x`, to a
/// relative 1e-3 (absolute 1e-5 for gradients near 0).
///
/// The host passes features as f32, so the step is taken in f32 and the difference divided by the
/// step actually taken after rounding, not by the nominal one.
pub fn assert_gradient(x: &[f32], analytic: &[f64], f: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "one gradient entry per input");
    let h = 1e-3;
    for i in 0..x.len() {
        let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
        plus[i] = (f64::from(x[i]) + h) as f32;
        minus[i] = (f64::from(x[i]) - h) as f32;
        let fd = (f(&plus) - f(&minus)) / (f64::from(plus[i]) - f64::from(minus[i]));
        assert!(
            (analytic[i] - fd).abs() <= 1e-3 * fd.abs().max(1e-2),
            "entry {i}: analytic {} vs finite difference {fd}",
            analytic[i]
        );
    }
}

/// The value of the metric `name` in a `(name, value)` list (a loss's metrics, or what a
/// metric's `finish` returns); panics when it is missing.
pub fn metric<S: AsRef<str>>(metrics: &[(S, f64)], name: &str) -> f64 {
    metrics.iter().find(|(n, _)| n.as_ref() == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no metric {name}"))
}

/// One real movie-review snippet, with how people and the reference VADER rated it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewSnippet {
    /// Line number in `movieReviewSnippets_GroundTruth.txt`.
    pub id: u32,
    /// Mean of about 20 human ratings, on -4 (very negative) to +4 (very positive).
    pub human_mean: f64,
    /// The compound score of Python's vaderSentiment 3.3.2, unrounded, in [-1, 1].
    pub vader_compound: f64,
    /// The snippet: one or two sentences, 3 to 45 words.
    pub text: &'static str,
}

/// 303 real movie-review snippets, every 35th line of `movieReviewSnippets_GroundTruth.txt`
/// (Hutto & Gilbert 2014, from the vaderSentiment 3.3.2 source archive, MIT licence), with
/// their human rating and VADER score.
///
/// Real text for plugin tests: punctuation, quotes, ellipses, accents and lengths as they come,
/// not sentences written to pass. `plugin-sdk/testdata/review-snippets.tsv` was written by
/// `plugins/lexicon-sentiment/tests/make_fixture.py` (its docstring has the commands); it is
/// compiled into this crate, so tests read no files.
pub fn review_snippets() -> Vec<ReviewSnippet> {
    const SNIPPETS: &str = include_str!("../testdata/review-snippets.tsv");
    SNIPPETS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let cols: Vec<&str> = line.splitn(4, '\t').collect();
            let [id, human_mean, vader_compound, text] = cols[..] else {
                panic!("review-snippets.tsv: not 4 columns: {line:?}");
            };
            ReviewSnippet {
                id: id.parse().expect("review-snippets.tsv: id"),
                human_mean: human_mean.parse().expect("review-snippets.tsv: human mean"),
                vader_compound: vader_compound.parse().expect("review-snippets.tsv: compound"),
                text,
            }
        })
        .collect()
}

/// The texts of [`review_snippets`], in file order.
pub fn review_texts() -> Vec<&'static str> {
    review_snippets().into_iter().map(|s| s.text).collect()
}

/// What a data filter decides for one text (a [`Sample`] without fields), as a string that an
/// assertion can compare: `"keep"`, the drop reason, or `"rewrite: "` followed by the new text.
/// Panics when the filter returns an error.
pub fn decide<F: DataFilter>(filter: &mut F, text: &str) -> String {
    let sample = Sample { text: text.into(), fields: vec![] };
    match filter.filter(&sample) {
        Ok(Decision::Keep) => "keep".into(),
        Ok(Decision::Drop(reason)) => reason,
        Ok(Decision::Rewrite(sample)) => format!("rewrite: {}", sample.text),
        Err(e) => panic!("the filter failed on {text:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_well_spread() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<f64> = (0..10_000).map(|_| a.uniform()).collect();
        assert!(xs.iter().all(|&x| x == b.uniform() && x > 0.0 && x < 1.0));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
        let g: Vec<f64> = (0..10_000).map(|_| a.gaussian()).collect();
        let (m, var) = (g.iter().sum::<f64>() / 1e4, g.iter().map(|x| x * x).sum::<f64>() / 1e4);
        assert!(m.abs() < 0.05 && (var - 1.0).abs() < 0.05, "gaussian mean {m} variance {var}");
        // Seed 0 would leave xorshift stuck at 0.
        let mut zero = Rng::new(0);
        assert_ne!(zero.uniform(), zero.uniform());
    }

    #[test]
    fn lm_batch_looks_like_a_language_model() {
        let b = lm_batch(7, &[40, 25, 35], 5);
        assert_eq!(b.offsets, vec![0, 40, 65, 100]);
        assert_eq!(b.mask.iter().filter(|&&m| m == 0.0).count(), 15);
        // Confident tokens and unlikely ones, and a vocabulary mean below both.
        let (best, worst) = b.logprob.iter().fold((f32::MIN, f32::MAX), |(hi, lo), &l| (hi.max(l), lo.min(l)));
        assert!(best > -0.5 && worst < -8.0 && best <= 0.0, "logprob in [{worst}, {best}]");
        assert!(b.mean_logprob.iter().zip(&b.logprob).all(|(m, l)| m < l || *l < -8.0));
        assert_eq!(lm_batch(7, &[40, 25, 35], 5), b);
        let probabilities: f64 = log_softmax(&lm_logits(&mut Rng::new(1))).iter().map(|l| l.exp()).sum();
        assert!((probabilities - 1.0).abs() < 1e-12);
    }

    #[test]
    fn review_snippets_parse_completely() {
        let snippets = review_snippets();
        assert_eq!(snippets.len(), 303);
        // Every 35th line: ids 1, 36, 71, ...
        assert!(snippets.iter().enumerate().all(|(i, s)| s.id == 1 + 35 * i as u32));
        let third = &snippets[2];
        assert!(third.text.starts_with("This delicately observed story, deeply felt"));
        assert_eq!((third.human_mean, third.vader_compound), (3.0625, 0.6248933269389457));
        assert!(snippets.iter().all(|s| (-4.0..=4.0).contains(&s.human_mean)
            && (-1.0..=1.0).contains(&s.vader_compound)
            && !s.text.is_empty()));
        assert_eq!(review_texts()[2], third.text);
    }

    /// Keeps lowercase text, rewrites the rest to lowercase, drops empty text.
    #[derive(Default, serde::Deserialize)]
    struct Lowercase;

    impl crate::Plugin for Lowercase {}

    impl DataFilter for Lowercase {
        fn filter(&mut self, sample: &Sample) -> Result<Decision, String> {
            let lower = sample.text.to_lowercase();
            Ok(if lower.is_empty() {
                Decision::Drop("empty".into())
            } else if lower == sample.text {
                Decision::Keep
            } else {
                Decision::Rewrite(Sample { text: lower, fields: vec![] })
            })
        }
    }

    #[test]
    fn decide_names_every_decision() {
        let mut f = Lowercase;
        assert_eq!(decide(&mut f, "a small movie"), "keep");
        assert_eq!(decide(&mut f, "A Small Movie"), "rewrite: a small movie");
        assert_eq!(decide(&mut f, ""), "empty");
    }

    #[test]
    #[should_panic(expected = "entry 1: analytic")]
    fn gradient_check_catches_a_wrong_gradient() {
        let square = |x: &[f32]| x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        assert_gradient(&[1.0, 2.0], &[2.0, 4.0], square);
        assert_gradient(&[1.0, 2.0], &[2.0, 3.0], square);
    }
}
