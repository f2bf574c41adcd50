//! The language-modelling losses shared by pretraining, fine-tuning and the benchmarks.

use candle_core::{DType, Tensor};

use crate::model::Model;
use crate::model::kernels::cross_entropy_rows;

/// Mean next-token cross-entropy of `model` on `inputs` (B, T) against `targets` (B, T).
pub fn lm_loss(model: &Model, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor, candle_core::Error> {
    let msg = |e: crate::model::ModelError| candle_core::Error::Msg(e.to_string());
    let hidden = model.hidden(inputs, train).map_err(msg)?;
    // -log softmax(logits)[target] per position; on the CPU the head and the loss are one op
    // and the logits never leave it (see `Model::token_nll`).
    model.token_nll(&hidden, targets).map_err(msg)?.mean_all()
}

/// log p(target) per position: (B, T) from logits (B, T, V) and u32 targets (B, T).
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor, candle_core::Error> {
    logits.dims3()?;
    // log_softmax(logits).gather(targets), as a fused cross-entropy per row, negated.
    cross_entropy_rows(logits, targets)?.neg()
}

/// Next-token cross-entropy averaged over the positions where `mask` (B, T, f32 0/1) is 1: SFT's
/// loss on response tokens only. Positions masked out contribute neither to the loss nor to its
/// gradient, whatever their targets are.
pub fn masked_lm_loss(
    model: &Model,
    inputs: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    train: bool,
) -> Result<Tensor, candle_core::Error> {
    let msg = |e: crate::model::ModelError| candle_core::Error::Msg(e.to_string());
    let hidden = model.hidden(inputs, train).map_err(msg)?;
    masked_mean(&model.token_nll(&hidden, targets).map_err(msg)?, mask)
}

/// sum(values * mask) / sum(mask), for (B, T) values and a 0/1 mask; 0 when the mask is empty.
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor, candle_core::Error> {
    let mask = mask.to_dtype(DType::F32)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (values * &mask)?.sum_all()?.affine(1.0 / count as f64, 0.0)
}
