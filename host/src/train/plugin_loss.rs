//! Loss plugins inside training, through the surrogate-gradient contract.
//!
//! The host computes the features a loss plugin declared (log-probs, values, entropies inside
//! the autograd graph; advantages, returns, reference log-probs as constants), sends their values
//! to the sandbox, and receives the loss and d loss / d feature. It then backpropagates
//!
//! ```text
//! surrogate = Σ_f Σ_i stopgrad(∂L/∂f_i) · f_i
//! ```
//!
//! whose gradient with respect to every parameter is the plugin loss's, by the chain rule. The
//! plugin never sees a parameter, and the host never needs the plugin's math.

use candle_core::Tensor;

use crate::plugins::records::{feature_list, feature_name};
use crate::plugins::{Feature, FeatureValues, LossBatch, LossPlugin, PluginError};

/// Feature tensors of one batch: per-token features flat over the response tokens (N), per
/// sequence features (S); `offsets` has S + 1 entries, the start of each sequence in the flat
/// arrays and N.
pub struct Features<'a> {
    pub offsets: Vec<u32>,
    pub values: Vec<(Feature, &'a Tensor)>,
}

impl Features<'_> {
    /// The offsets of sequences of `lens` tokens each: 0, then each sequence's end.
    pub fn offsets_of(lens: &[usize]) -> Vec<u32> {
        std::iter::once(0)
            .chain(lens.iter().scan(0u32, |at, &len| {
                *at += len as u32;
                Some(*at)
            }))
            .collect()
    }
}

/// Why a plugin loss could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginLossError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(
        "loss plugin `{plugin}` reads the feature `{}`, which this stage does not provide (it provides: {provided})",
        feature_name(*feature)
    )]
    Missing { plugin: String, feature: Feature, provided: String },
    #[error("loss plugin `{plugin}`: {source}")]
    Tensor { plugin: String, source: candle_core::Error },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("loss plugin `{plugin}`: the batch has no response tokens to score")]
    NothingToScore { plugin: String },
}

/// What a loss plugin gives training.
pub struct PluginLoss {
    /// To backpropagate; its value is the plugin's loss.
    pub surrogate: Tensor,
    /// The plugin's loss value.
    pub value: f64,
    /// The plugin's diagnostics.
    pub metrics: Vec<(String, f64)>,
}

/// The surrogate loss of a loss plugin on `features`.
pub fn plugin_loss(plugin: &LossPlugin, features: &Features) -> Result<PluginLoss, PluginLossError> {
    let tensor = |source| PluginLossError::Tensor { plugin: plugin.name().to_string(), source };
    let find = |feature: Feature| -> Result<&Tensor, PluginLossError> {
        features.values.iter().find(|(f, _)| *f == feature).map(|(_, t)| *t).ok_or_else(|| PluginLossError::Missing {
            plugin: plugin.name().to_string(),
            feature,
            provided: feature_list(&features.values.iter().map(|(f, _)| *f).collect::<Vec<_>>()),
        })
    };
    let mut sent = Vec::with_capacity(plugin.features().len());
    for &feature in plugin.features() {
        let values = find(feature)?.detach().flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(tensor)?;
        sent.push(FeatureValues { feature, values });
    }
    let batch = LossBatch { sequence_offsets: features.offsets.clone(), features: sent };
    let output = plugin.compute(&batch)?;
    let mut surrogate: Option<Tensor> = None;
    for FeatureValues { feature, values } in &output.gradients {
        let feature_tensor = find(*feature)?;
        let gradient = Tensor::from_slice(values, feature_tensor.shape(), feature_tensor.device()).map_err(tensor)?;
        let term = (gradient * feature_tensor).and_then(|t| t.sum_all()).map_err(tensor)?;
        surrogate = Some(match surrogate {
            Some(total) => (total + term).map_err(tensor)?,
            None => term,
        });
    }
    let surrogate = match surrogate {
        Some(s) => s,
        // A loss with no differentiable feature gives no gradient: a zero that keeps the graph.
        None => (find(plugin.features()[0])?.sum_all().map_err(tensor)? * 0.0).map_err(tensor)?,
    };
    // Shift the surrogate's value to the plugin's loss (a constant changes no gradient), so
    // that what training logs and checks for divergence is the loss itself.
    let surrogate = (&surrogate - surrogate.detach()).and_then(|s| s.affine(1.0, output.value)).map_err(tensor)?;
    let metrics = output.metrics.into_iter().map(|m| (m.name, m.value)).collect();
    Ok(PluginLoss { surrogate, value: output.value, metrics })
}
