//! The language-modelling losses shared by pretraining, fine-tuning and the benchmarks.

use candle_core::{DType, Tensor};

use crate::model::Model;
use crate::model::kernels::cross_entropy_rows;

/// Mean next-token cross-entropy of `model` on `inputs` (B, T) against `targets` (B, T).
pub fn lm_loss(model: &Model, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor, candle_core::Error> {
    token_nll(model, inputs, targets, train)?.mean_all()
}

/// -log softmax(logits)[target] per position, (B, T); on the CPU the head and the loss are one
/// op and the logits never leave it (see `Model::token_nll`).
fn token_nll(model: &Model, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor, candle_core::Error> {
    let msg = |e: crate::model::ModelError| candle_core::Error::Msg(e.to_string());
    let hidden = model.hidden(inputs, train).map_err(msg)?;
    model.token_nll(&hidden, targets).map_err(msg)
}

/// The part of the batch's [`lm_loss`] that `rows` carry: their mean loss times their share of
/// the rows (every row holds the same number of targets), so the parts of a batch add up to the
/// whole. What each thread computes when a step is split across threads.
pub fn lm_loss_rows(
    model: &Model,
    inputs: &Tensor,
    targets: &Tensor,
    rows: std::ops::Range<usize>,
) -> Result<Tensor, candle_core::Error> {
    let share = rows.len() as f64 / inputs.dim(0)? as f64;
    let inputs = inputs.narrow(0, rows.start, rows.len())?;
    let targets = targets.narrow(0, rows.start, rows.len())?;
    lm_loss(model, &inputs, &targets, true)?.affine(share, 0.0)
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
    masked_mean(&token_nll(model, inputs, targets, train)?, mask)
}

/// The part of the batch's [`masked_lm_loss`] that `rows` carry: their masked loss summed over
/// the whole batch's scored count, so that the parts of a batch add up to the whole.
pub fn masked_lm_loss_rows(
    model: &Model,
    inputs: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    rows: std::ops::Range<usize>,
) -> Result<Tensor, candle_core::Error> {
    let scored = |mask: &Tensor| -> Result<f64, candle_core::Error> {
        Ok(mask.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    let total = scored(mask)?.max(1.0);
    let part = |t: &Tensor| t.narrow(0, rows.start, rows.len());
    let part_mask = part(mask)?;
    // masked_lm_loss is the part's mean over max(its count, 1).
    let share = scored(&part_mask)?.max(1.0) / total;
    masked_lm_loss(model, &part(inputs)?, &part(targets)?, &part_mask, true)?.affine(share, 0.0)
}

/// sum(values * mask) / sum(mask), for (B, T) values and a 0/1 mask; 0 when the mask is empty.
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor, candle_core::Error> {
    let mask = mask.to_dtype(DType::F32)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (values * &mask)?.sum_all()?.affine(1.0 / count as f64, 0.0)
}

/// log(1 + exp(x)), stable for large |x|: max(x, 0) + log(1 + exp(-|x|)).
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let positive = x.relu()?;
    let rest = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    positive + rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softplus_is_stable_and_exact() {
        let x = Tensor::new(&[-100f32, -1.0, 0.0, 1.0, 100.0], &Device::Cpu).expect("tensor");
        let y = softplus(&x).and_then(|y| y.to_vec1::<f32>()).expect("softplus");
        let want = [0.0f32, 0.313_261_7, std::f32::consts::LN_2, 1.313_261_7, 100.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
