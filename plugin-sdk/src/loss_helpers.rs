//! Conveniences for reading a [`LossBatch`] and building a [`LossOutput`].

use crate::{Feature, FeatureValues, LossBatch, LossOutput, NamedValue};

/// The feature's name as the WIT contract spells it (`mean-logprob`, `sequence-ref-logprob`), for
/// error messages that the user can match against the experiment file and the docs.
pub fn feature_name(feature: Feature) -> &'static str {
    match feature {
        Feature::Logprob => "logprob",
        Feature::MeanLogprob => "mean-logprob",
        Feature::Entropy => "entropy",
        Feature::Value => "value",
        Feature::RefLogprob => "ref-logprob",
        Feature::OldLogprob => "old-logprob",
        Feature::OldValue => "old-value",
        Feature::Advantage => "advantage",
        Feature::Return => "return",
        Feature::Mask => "mask",
        Feature::SequenceLogprob => "sequence-logprob",
        Feature::SequenceRefLogprob => "sequence-ref-logprob",
    }
}

/// Whether the host backpropagates through a feature: a loss may return gradients for these
/// only (`logprob`, `mean-logprob`, `entropy`, `value`, `sequence-logprob`).
pub fn is_differentiable(feature: Feature) -> bool {
    matches!(
        feature,
        Feature::Logprob | Feature::MeanLogprob | Feature::Entropy | Feature::Value | Feature::SequenceLogprob
    )
}

/// Read access to the features of a loss batch.
///
/// A loss usually calls only [`per_token`](Self::per_token) and
/// [`per_sequence`](Self::per_sequence): they check the batch layout and the values, so the loss
/// itself can index the returned slices without further checks.
pub trait LossBatchExt {
    /// The values of one feature as the host passed them, or an error naming the missing feature.
    fn feature(&self, feature: Feature) -> Result<&[f32], String>;

    /// The token range of each sequence in the per-token arrays.
    fn sequences(&self) -> Vec<std::ops::Range<usize>>;

    /// Checks `sequence-offsets` (non-empty, starting at 0, non-decreasing) and returns
    /// (number of sequences, number of tokens).
    fn shape(&self) -> Result<(usize, usize), String>;

    /// A per-token feature (`logprob`, `mask`, ...): checked to be present, to hold one value per
    /// token of the batch, and to be finite.
    fn per_token(&self, feature: Feature) -> Result<&[f32], String>;

    /// A per-sequence feature (`sequence-logprob`, ...): checked to be present, to hold one value
    /// per sequence of the batch, and to be finite.
    fn per_sequence(&self, feature: Feature) -> Result<&[f32], String>;
}

impl LossBatchExt for LossBatch {
    fn feature(&self, feature: Feature) -> Result<&[f32], String> {
        self.features
            .iter()
            .find(|f| f.feature == feature)
            .map(|f| f.values.as_slice())
            .ok_or_else(|| format!("the host did not pass feature `{}`", feature_name(feature)))
    }

    fn sequences(&self) -> Vec<std::ops::Range<usize>> {
        self.sequence_offsets.windows(2).map(|w| w[0] as usize..w[1] as usize).collect()
    }

    fn shape(&self) -> Result<(usize, usize), String> {
        let offsets = &self.sequence_offsets;
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return Err("sequence-offsets is empty: it needs one start per sequence plus the total".into());
        };
        if first != 0 {
            return Err(format!("sequence-offsets must start at 0, starts at {first}"));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(format!(
                "sequence-offsets must be non-decreasing: entry {} is {}, entry {} is {}",
                i,
                offsets[i],
                i + 1,
                offsets[i + 1]
            ));
        }
        Ok((offsets.len() - 1, last as usize))
    }

    fn per_token(&self, feature: Feature) -> Result<&[f32], String> {
        let (_, tokens) = self.shape()?;
        checked(self, feature, tokens, "token")
    }

    fn per_sequence(&self, feature: Feature) -> Result<&[f32], String> {
        let (sequences, _) = self.shape()?;
        checked(self, feature, sequences, "sequence")
    }
}

/// A feature's values, checked for presence, length (`len`, one per `per`) and finiteness.
fn checked<'a>(batch: &'a LossBatch, feature: Feature, len: usize, per: &str) -> Result<&'a [f32], String> {
    let values = batch.feature(feature)?;
    let name = feature_name(feature);
    if values.len() != len {
        return Err(format!("feature `{name}` has {} values, expected {len} (one per {per})", values.len()));
    }
    // A NaN or infinity here would silently poison the loss and every gradient downstream.
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("feature `{name}` has a non-finite value {} at index {i}", values[i]));
    }
    Ok(values)
}

impl FeatureValues {
    /// A gradient or feature array, converting from f64 where the loss computed in f64.
    pub fn new(feature: Feature, values: impl IntoIterator<Item = f64>) -> Self {
        FeatureValues { feature, values: values.into_iter().map(|v| v as f32).collect() }
    }
}

impl LossOutput {
    /// A loss's value, its gradients, and its diagnostics as `(name, value)` pairs.
    pub fn new(
        value: f64,
        gradients: Vec<FeatureValues>,
        metrics: impl IntoIterator<Item = (&'static str, f64)>,
    ) -> Self {
        LossOutput {
            value,
            gradients,
            metrics: metrics.into_iter().map(|(name, value)| NamedValue { name: name.to_string(), value }).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::loss_batch;

    #[test]
    fn shape_counts_sequences_and_tokens() {
        assert_eq!(loss_batch(&[0, 3, 3, 7], &[]).shape(), Ok((3, 7)));
        assert_eq!(loss_batch(&[0], &[]).shape(), Ok((0, 0)));
        let e = loss_batch(&[], &[]).shape().unwrap_err();
        assert!(e.contains("sequence-offsets is empty"), "{e}");
        let e = loss_batch(&[2, 5], &[]).shape().unwrap_err();
        assert!(e.contains("must start at 0, starts at 2"), "{e}");
        let e = loss_batch(&[0, 4, 3], &[]).shape().unwrap_err();
        assert!(e.contains("non-decreasing: entry 1 is 4, entry 2 is 3"), "{e}");
    }

    #[test]
    fn reads_check_presence_length_and_finiteness() {
        let lp = [-1.0f32, -2.0, -3.0];
        let seq = [-3.0f32, -3.0];
        let b = loss_batch(&[0, 1, 3], &[(Feature::Logprob, &lp), (Feature::SequenceLogprob, &seq)]);
        assert_eq!(b.per_token(Feature::Logprob), Ok(&lp[..]));
        assert_eq!(b.per_sequence(Feature::SequenceLogprob), Ok(&seq[..]));
        assert_eq!(b.per_token(Feature::Mask), Err("the host did not pass feature `mask`".into()));
        assert_eq!(
            b.per_sequence(Feature::Logprob),
            Err("feature `logprob` has 3 values, expected 2 (one per sequence)".into())
        );
        let nan = [-1.0f32, f32::NAN, -3.0];
        let b = loss_batch(&[0, 3], &[(Feature::Logprob, &nan)]);
        assert_eq!(
            b.per_token(Feature::Logprob),
            Err("feature `logprob` has a non-finite value NaN at index 1".into())
        );
        // The raw accessor passes the values through unchecked.
        assert_eq!(b.feature(Feature::Logprob).map(<[f32]>::len), Ok(3));
        // A malformed layout is reported before any feature.
        let e = loss_batch(&[], &[]).per_token(Feature::Logprob).unwrap_err();
        assert!(e.contains("sequence-offsets is empty"), "{e}");
    }

    #[test]
    fn output_names_its_metrics() {
        let out =
            LossOutput::new(0.5, vec![FeatureValues::new(Feature::Logprob, [-0.25])], [("nll", 1.5), ("tokens", 2.0)]);
        assert_eq!((out.value, out.gradients[0].values.clone()), (0.5, vec![-0.25f32]));
        let names: Vec<(&str, f64)> = out.metrics.iter().map(|m| (m.name.as_str(), m.value)).collect();
        assert_eq!(names, vec![("nll", 1.5), ("tokens", 2.0)]);
    }
}
