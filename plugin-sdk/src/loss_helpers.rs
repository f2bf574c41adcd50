//! Conveniences for reading a [`LossBatch`] and building a [`LossOutput`].

use crate::{Feature, FeatureValues, LossBatch};

/// Read access to the features of a loss batch.
pub trait LossBatchExt {
    /// The values of one feature, or an error naming the missing feature.
    fn feature(&self, feature: Feature) -> Result<&[f32], String>;
    /// The token range of each sequence in the per-token arrays.
    fn sequences(&self) -> Vec<std::ops::Range<usize>>;
}

impl LossBatchExt for LossBatch {
    fn feature(&self, feature: Feature) -> Result<&[f32], String> {
        self.features
            .iter()
            .find(|f| f.feature == feature)
            .map(|f| f.values.as_slice())
            .ok_or_else(|| format!("the host did not pass feature {feature:?}"))
    }

    fn sequences(&self) -> Vec<std::ops::Range<usize>> {
        self.sequence_offsets
            .windows(2)
            .map(|w| w[0] as usize..w[1] as usize)
            .collect()
    }
}

impl FeatureValues {
    /// A gradient or feature array, converting from f64 where the loss computed in f64.
    pub fn new(feature: Feature, values: impl IntoIterator<Item = f64>) -> Self {
        FeatureValues { feature, values: values.into_iter().map(|v| v as f32).collect() }
    }
}
