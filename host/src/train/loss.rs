//! The causal language-modelling loss shared by pretraining, fine-tuning and the benchmarks.

use candle_core::Tensor;

use crate::model::Model;

/// Mean next-token cross-entropy of `model` on `inputs` (B, T) against `targets` (B, T).
pub fn lm_loss(model: &Model, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor, candle_core::Error> {
    let logits = model.forward(inputs, train).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let (b, t, v) = logits.dims3()?;
    candle_nn::loss::cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
}
