//! The LM head and the next-token cross-entropy as one op: `-log softmax(x Wᵀ)[target]` per
//! row, for hidden states x (..., D), the head's weight W (V, D) and u32 targets (...).
//!
//! Apart, the head's (N, V) logits are one candle node and the cross-entropy another, so the
//! backward hands the (N, V) logits gradient to candle, which adds it onto a fresh zero tensor
//! of the same size before the head's backward reads it: at the reference workload's
//! N = 2048, V = 4096 that is 32 MiB allocated, zeroed and added twice per step. Here the op
//! keeps its logits for the backward, turns them into `(softmax - onehot) * g` in place, and
//! multiplies that straight into dx and dW.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::linear::product;
use super::{PARALLEL_MIN, filled, row_loss, scaled_softmax_in_place, slice, targets_of, wide};

/// Per-row next-token loss (...) of hidden states `x` (..., D) under the head `weight` (V, D)
/// for `targets` (...). CPU f32 only (the caller checks with `kernels::fused`).
pub fn lm_head_cross_entropy(x: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let keep = x.track_op() || weight.track_op();
    x.contiguous()?.apply_op3(weight, &targets.contiguous()?, LmHeadLoss { logits: Mutex::new(None), keep })
}

struct LmHeadLoss {
    /// The forward's logits (N, V), taken by the backward.
    logits: Mutex<Option<Vec<f32>>>,
    keep: bool,
}

/// The sizes of a call: rows, vocabulary, width, and W's (offset, row stride, column stride).
struct Sizes {
    n: usize,
    v: usize,
    d: usize,
    w_at: (usize, usize, usize),
}

fn sizes(x: &Layout, w: &Layout, w_len: usize) -> Result<Sizes> {
    let Some((&d, lead)) = x.dims().split_last() else { bail!("LM head loss: scalar hidden states") };
    let (v, wd) = w.shape().dims2()?;
    let [s0, s1] = w.stride() else { bail!("LM head loss: a 2-D weight") };
    if wd != d || v == 0 {
        bail!("LM head loss: hidden states {:?} against a head of {:?}", x.shape(), w.shape());
    }
    if d > 0 && w.start_offset() + (v - 1) * s0 + (d - 1) * s1 >= w_len {
        bail!("LM head loss: the weight's layout runs past its storage");
    }
    Ok(Sizes { n: lead.iter().product(), v, d, w_at: (w.start_offset(), *s0, *s1) })
}

/// logits = x Wᵀ, (n, v).
fn logits(x: &[f32], w: &[f32], s: &Sizes) -> Vec<f32> {
    let Sizes { n, v, d, w_at } = *s;
    if n == 0 || d == 0 {
        return vec![0f32; n * v];
    }
    // SAFETY: x is n × d contiguous (checked by the callers), W checked by `sizes`; the product
    // overwrites all of the fresh n × v buffer. Wᵀ's element (k, j) is W's (j, k).
    unsafe {
        filled(n * v, |out| {
            product(n, v, d, (out, v, 1), false, (x.as_ptr(), d, 1), (w[w_at.0..].as_ptr(), w_at.2, w_at.1))
        })
    }
}

impl CustomOp3 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "fused-lm-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = s2.as_slice::<f32>()?;
        let s = sizes(l1, l2, w.len())?;
        if l3.dims() != &l1.dims()[..l1.dims().len() - 1] || x.len() != s.n * s.d {
            bail!("LM head loss: hidden states {:?} for targets {:?}", l1.shape(), l3.shape());
        }
        let targets = targets_of(s3, l3, s.n, s.v)?;
        let logits = logits(x, w, &s);
        let v = s.v;
        let row = |i: usize| {
            wide(
                #[inline(always)]
                || row_loss(&logits[i * v..(i + 1) * v], targets[i]),
            )
        };
        let loss: Vec<f32> = if s.n * v < PARALLEL_MIN {
            (0..s.n).map(row).collect()
        } else {
            (0..s.n).into_par_iter().map(row).collect()
        };
        if self.keep {
            *self.logits.lock().unwrap_or_else(|e| e.into_inner()) = Some(logits);
        }
        Ok((CpuStorage::F32(loss), l3.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x_s, x_l) = x.storage_and_layout();
        let (w_s, w_l) = w.storage_and_layout();
        let (Storage::Cpu(x_c), Storage::Cpu(w_c)) = (&*x_s, &*w_s) else { bail!("LM head loss: CPU only") };
        let xs = slice(x_c, x_l, self.name())?;
        let ws = w_c.as_slice::<f32>()?;
        let s = sizes(x_l, w_l, ws.len())?;
        let Sizes { n, v, d, w_at } = s;
        let targets: Vec<usize> = targets.flatten_all()?.to_vec1::<u32>()?.into_iter().map(|t| t as usize).collect();
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        if targets.len() != n || g.len() != n || targets.iter().any(|&t| t >= v) {
            bail!("LM head loss: {} targets and {} gradients for {n} rows", targets.len(), g.len());
        }
        // The forward's logits when kept (a second backward recomputes them).
        let kept = self.logits.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut dlogits = match kept {
            Some(logits) if logits.len() == n * v => logits,
            _ => logits(xs, ws, &s),
        };
        // d loss / d logits = (softmax - onehot) * g, row by row, in place.
        let row = |(i, row): (usize, &mut [f32])| {
            wide(
                #[inline(always)]
                || scaled_softmax_in_place(row, g[i]),
            );
            row[targets[i]] -= g[i];
        };
        if n * v < PARALLEL_MIN {
            dlogits.chunks_mut(v).enumerate().for_each(row);
        } else {
            dlogits.par_chunks_mut(v).enumerate().for_each(row);
        }
        if n == 0 || d == 0 {
            return Ok((Some(x.zeros_like()?), Some(w.zeros_like()?), None));
        }
        let w_ptr = ws[w_at.0..].as_ptr();
        // SAFETY: dlogits is n × v, x n × d (contiguous), W checked by `sizes`; each product
        // overwrites all of its fresh buffer (n, v, d all non-zero).
        let (dx, dw) = unsafe {
            // dx = dlogits W (n × d)
            let dx = filled(n * d, |dx| {
                product(n, d, v, (dx, d, 1), false, (dlogits.as_ptr(), v, 1), (w_ptr, w_at.1, w_at.2))
            });
            // dW = dlogitsᵀ x (v × d)
            let dw =
                filled(v * d, |dw| product(v, d, n, (dw, d, 1), false, (dlogits.as_ptr(), 1, v), (xs.as_ptr(), d, 1)));
            (dx, dw)
        };
        let cpu = candle_core::Device::Cpu;
        Ok((Some(Tensor::from_vec(dx, x.shape().clone(), &cpu)?), Some(Tensor::from_vec(dw, (v, d), &cpu)?), None))
    }
}
