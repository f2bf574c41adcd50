//! LayerNorm and RMSNorm as fused ops: the row statistics in one pass forward, recomputed in the
//! backward instead of kept.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::*;

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias. Fuses the
/// row statistics, normalisation and affine map; backward recomputes the statistics.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => weight.zeros_like()?,
    };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias, LayerNormOp { eps: eps as f32 })
}

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) * weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNormOp { eps: eps as f32 })
}

struct LayerNormOp {
    eps: f32,
}

/// (mean, 1 / sqrt(var + eps)) of a row, two-pass for accuracy.
#[inline(always)]
fn moments(xs: &[f32], eps: f32) -> (f32, f32) {
    let d = xs.len() as f32;
    let mean = sum(xs) / d;
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&x| (x - mean) * (x - mean)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + rest) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// 1 / sqrt(mean(x²) + eps) of a row.
#[inline(always)]
fn rms_scale(xs: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&x| x * x).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i] * c[i];
        }
    }
    1.0 / ((acc.iter().sum::<f32>() + rest) / xs.len() as f32 + eps).sqrt()
}

/// Per-chunk partial sums of the weight (and bias) gradients: rows are split into one chunk per
/// thread, each returns its partials, and they are added.
fn norm_backward(
    x: &[f32],
    dy: &[f32],
    cols: usize,
    partial_len: usize,
    row: impl Fn(&[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let rows = x.len() / cols.max(1);
    let threads = if x.len() < PARALLEL_MIN { 1 } else { rayon::current_num_threads().max(1) };
    let per_chunk = rows.div_ceil(threads).max(1) * cols;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(per_chunk.max(1))
        .enumerate()
        .map(|(c, dx_chunk)| {
            let mut partial = vec![0f32; partial_len];
            let base = c * per_chunk;
            for (r, dx_row) in dx_chunk.chunks_mut(cols).enumerate() {
                let start = base + r * cols;
                row(&x[start..start + cols], &dy[start..start + cols], dx_row, &mut partial);
            }
            partial
        })
        .collect();
    let mut total = vec![0f32; partial_len];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    (dx, total)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
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
        let (w, b) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let cols = w.len();
        if b.len() != cols || l1.shape().dims().last() != Some(&cols) {
            bail!("layer norm: weight {:?} and bias {:?} for input {:?}", l2.shape(), l3.shape(), l1.shape());
        }
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, cols, |i, row| {
            let xs = &x[i * cols..(i + 1) * cols];
            wide(
                #[inline(always)]
                || {
                    let (mean, rstd) = moments(xs, self.eps);
                    for (((o, &xv), &wv), &bv) in row.iter_mut().zip(xs).zip(w).zip(b) {
                        *o = (xv - mean) * rstd * wv + bv;
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = weight.to_vec1::<f32>()?;
        let cols = w.len();
        let eps = self.eps;
        let (dx, partial) = with_data(x, self.name(), |x| {
            with_data(grad, self.name(), |dy| {
                // partial = [dw (cols), db (cols)]
                norm_backward(x, dy, cols, 2 * cols, |xs, dys, dx, partial| {
                    wide(
                        #[inline(always)]
                        || {
                            let (mean, rstd) = moments(xs, eps);
                            let d = cols as f32;
                            let (mut a, mut c) = (0f32, 0f32);
                            for ((&xv, &g), &wv) in xs.iter().zip(dys).zip(&w) {
                                let xhat = (xv - mean) * rstd;
                                a += g * wv;
                                c += g * wv * xhat;
                            }
                            let (a, c) = (a / d, c / d);
                            let (dw, db) = partial.split_at_mut(cols);
                            for (k, ((&xv, &g), &wv)) in xs.iter().zip(dys).zip(&w).enumerate() {
                                let xhat = (xv - mean) * rstd;
                                dx[k] = rstd * (g * wv - a - xhat * c);
                                dw[k] += g * xhat;
                                db[k] += g;
                            }
                        },
                    )
                })
            })
        })??;
        let (dw, db) = partial.split_at(cols);
        let dw = Tensor::from_slice(dw, cols, &Device::Cpu)?;
        let db = Tensor::from_slice(db, cols, &Device::Cpu)?;
        Ok((Some(cpu_tensor(dx, x.shape())?), Some(dw), Some(db)))
    }
}

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let cols = w.len();
        if l1.shape().dims().last() != Some(&cols) {
            bail!("rms norm: weight {:?} for input {:?}", l2.shape(), l1.shape());
        }
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, cols, |i, row| {
            let xs = &x[i * cols..(i + 1) * cols];
            let r = rms_scale(xs, self.eps);
            for ((o, &xv), &wv) in row.iter_mut().zip(xs).zip(w) {
                *o = xv * r * wv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let w = weight.to_vec1::<f32>()?;
        let cols = w.len();
        let eps = self.eps;
        let (dx, dw) = with_data(x, self.name(), |x| {
            with_data(grad, self.name(), |dy| {
                norm_backward(x, dy, cols, cols, |xs, dys, dx, dw| {
                    let r = rms_scale(xs, eps);
                    let mut c = 0f32;
                    for ((&xv, &g), &wv) in xs.iter().zip(dys).zip(&w) {
                        c += g * wv * xv;
                    }
                    let c = c / cols as f32 * r * r;
                    for (k, ((&xv, &g), &wv)) in xs.iter().zip(dys).zip(&w).enumerate() {
                        dx[k] = r * (g * wv - xv * c);
                        dw[k] += g * xv * r;
                    }
                })
            })
        })??;
        Ok((Some(cpu_tensor(dx, x.shape())?), Some(Tensor::from_vec(dw, cols, &Device::Cpu)?)))
    }
}
