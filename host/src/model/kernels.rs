//! Fused CPU kernels for training, as candle custom ops with their backward passes.
//!
//! candle builds every piece of the model from small tensor ops, each of which allocates its
//! output and walks memory once, and records a backward node that does the same again. For the
//! row-wise pieces of a transformer (softmax, cross-entropy, LayerNorm, RMSNorm) that costs
//! several passes and allocations per element where one suffices; AdamW costs a dozen. The ops
//! here do each piece in one pass over a row (forward) and one or two (backward), split across
//! rows on candle's thread pool:
//!
//! - [`cross_entropy_rows`]: `logsumexp(x) - x[target]` per row, never materialising the (N, V)
//!   log-softmax; backward `(softmax(x) - onehot(target)) * g`.
//! - [`layer_norm`] and [`rms_norm`] (in `kernels/norm.rs`), backward recomputing the row
//!   statistics.
//! - [`add_bias`]: a linear layer's bias, whose gradient candle sums down strided columns.
//! - [`gelu`]: GPT-2's tanh GELU, whose backward candle composes from a dozen ops.
//! - [`softmax_last_dim`]: backward `y * (g - sum(g * y))`; rows that are entirely -inf (fully
//!   masked) give zeros rather than NaN.
//! - [`adamw_update`] (in `kernels/adamw.rs`): the AdamW moments and weights updated in place,
//!   three fused passes over each parameter with no temporaries.
//! - [`linear`] (in `kernels/linear.rs`): x W + b for any leading dimensions as one op, whose
//!   backward is one product for dx, one for dW and a row sum for db.
//! - [`lm_head_cross_entropy`] (in `kernels/lm_head.rs`): the LM head's product and the
//!   cross-entropy as one op, so that the (N, V) logits gradient never becomes a candle tensor.
//! - [`causal_attention`] and [`causal_attention_qkv`] (ops in `kernels/attention_op.rs`, the
//!   tiled online-softmax math in `kernels/attention.rs`): scaled
//!   scores, causal mask, softmax and the product with v in one op, masked keys never computed,
//!   backward straight to dq, dk, dv; [`t5_attention`] the same for T5 (unscaled, causal or not,
//!   a learned position bias with its gradient).
//!
//! Each op runs only on contiguous f32 CPU tensors; on any other device or dtype, or when
//! [`Kernels::Plain`] is in force, callers use the plain tensor-op composition instead (which is
//! why the CUDA build needs nothing from this file). `TRIAD_KERNELS=plain` selects the plain path
//! for a whole process; [`with_kernels`] for one closure on the current thread (the tests run both
//! paths side by side).

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout};
use candle_core::{Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

mod adamw;
mod attention;
mod attention_op;
mod linear;
mod lm_head;
mod norm;
pub use adamw::{AdamWStep, adamw_update, sum_of_squares};
pub use attention_op::{causal_attention, causal_attention_qkv, t5_attention};
pub use linear::{linear, linear_gelu};
pub use lm_head::lm_head_cross_entropy;
pub use norm::{layer_norm, rms_norm};

/// Which implementation the row-wise pieces and the optimizer use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused ops of this module, where the tensors allow (contiguous f32 on CPU).
    Fused,
    /// The plain composition of candle tensor ops everywhere.
    Plain,
}

thread_local! {
    static OVERRIDE: Cell<Option<Kernels>> = const { Cell::new(None) };
    static ONE_CORE: Cell<bool> = const { Cell::new(false) };
}

/// The kernels in force on this thread: [`with_kernels`]'s choice inside it, otherwise
/// `TRIAD_KERNELS` (`plain` or `fused`, default fused), read once per process.
pub fn active() -> Kernels {
    if let Some(kernels) = OVERRIDE.with(Cell::get) {
        return kernels;
    }
    static FROM_ENV: OnceLock<Kernels> = OnceLock::new();
    *FROM_ENV.get_or_init(|| match std::env::var("TRIAD_KERNELS").as_deref() {
        Ok("plain") => Kernels::Plain,
        _ => Kernels::Fused,
    })
}

/// Runs `f` with `kernels` in force on the current thread (candle runs forward and backward on
/// the calling thread, so the whole step follows the choice), restoring the previous choice after.
pub fn with_kernels<R>(kernels: Kernels, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(kernels))));
    f()
}

/// Runs `f` with this module's matrix products on the calling thread alone, restoring the
/// previous setting after. For work that already keeps every core busy on its own: the
/// trainer's data-parallel parts, one per thread. (Asked for two threads while the other part
/// holds the other core, gemm only adds synchronisation: 4,578-4,720 tokens/s against
/// 4,622-4,916 on one core each, reference workload, 2 threads.)
pub fn on_one_core<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ONE_CORE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(ONE_CORE.with(|o| o.replace(true)));
    f()
}

/// Threads a matrix product may use here: one inside [`on_one_core`], else rayon's pool.
fn product_threads() -> usize {
    if ONE_CORE.with(Cell::get) { 1 } else { rayon::current_num_threads() }
}

/// Whether the fused ops apply to these tensors: fused kernels in force, and every tensor f32 on
/// the CPU.
pub fn fused(tensors: &[&Tensor]) -> bool {
    active() == Kernels::Fused && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// Rows below this many elements in total run on the calling thread: splitting costs more.
const PARALLEL_MIN: usize = 1 << 15;

/// The contiguous f32 elements a layout addresses.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 CPU data of `t`.
fn with_data<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(slice(cpu, layout, op)?)),
        _ => bail!("{op}: CPU only"),
    }
}

/// `f(row index, row of out)` over the rows of `out`, in parallel when there is enough work.
fn for_rows(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() < PARALLEL_MIN || cols == 0 {
        out.chunks_mut(cols.max(1)).enumerate().for_each(|(i, row)| f(i, row));
    } else {
        out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// e^x for x <= 0 (and -inf), vectorisable: Cephes' `expf` (range reduction by ln 2 in two
/// parts, degree-6 polynomial), within 2 ulp of the exact value. Below -87 (where e^x is under
/// f32's smallest normal) it returns 0, an absolute error under 2e-38.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer.
    // A comparison rather than `max`, so that NaN propagates.
    let xc = if x < -87.0 { -87.0 } else { x };
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let z = r * r;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e = p * z + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.0 { 0.0 } else { e * scale }
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, else AVX2), which
/// are detected once per process. The binary targets baseline x86-64, whose SSE2 runs the row
/// loops here 4 lanes wide; the exp, tanh and division chains of GELU, the cross-entropy and the
/// softmax measured 2-4x faster on the wider units. Only the vector width changes: LLVM does not
/// fuse multiplies and adds on its own, and the reductions sum in fixed lanes, so every machine
/// computes the same bits. Mark the closure `#[inline(always)]` (and what it calls): a closure
/// left out of line is compiled for the baseline (measured: GELU's backward was).
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                2
            } else if std::is_x86_feature_detected!("avx2") {
                1
            } else {
                0
            }
        });
        // SAFETY: the features were detected on this CPU.
        match level {
            2 => return unsafe { wide_avx512(f) },
            1 => return unsafe { wide_avx2(f) },
            _ => {}
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,avx")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx")]
unsafe fn wide_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Sum of a slice, in 16 independent lanes so that it vectorises.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Maximum of a slice (-inf when empty or all -inf), in 16 lanes.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().fold(rest, |m, &x| m.max(x))
}

/// Sum of e^(x - m) over a row whose maximum is m (finite).
#[inline(always)]
fn sum_exp(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&x| exp_nonpositive(x - m)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += exp_nonpositive(c[i] - m);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// log sum_j e^(x_j) of a row, as the fused cross-entropy computes it (16 lanes, the
/// polynomial exp): NaN if some x is NaN or +inf, -inf for an empty or all -inf row.
pub(crate) fn log_sum_exp(xs: &[f32]) -> f32 {
    let m = max(xs);
    if m == f32::INFINITY || m.is_nan() || xs.iter().any(|x| x.is_nan()) {
        return f32::NAN;
    }
    if m == f32::NEG_INFINITY {
        return m;
    }
    m + sum_exp(xs, m).ln()
}

/// A buffer of `n` floats that `fill` writes in full through the pointer, without the memset of
/// `vec![0.0; n]` first (zeroing outputs that a product then overwrites measured about 8% of a
/// training step).
///
/// # Safety
/// `fill` must write every one of the `n` elements, and read none before writing it.
unsafe fn filled(n: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(v.as_mut_ptr());
    // SAFETY: the capacity is n and the caller guarantees that all n are written.
    unsafe { v.set_len(n) };
    v
}

fn cpu_tensor(data: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(data, shape.clone(), &Device::Cpu)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

/// -log softmax(logits)[target] per row: logits (..., V) f32, targets (...) u32, result (...)
/// (for instance (N, V), (N,) -> (N,), or (B, T, V), (B, T) -> (B, T)).
///
/// Fuses log-softmax, the gather of the targets and the negation: one pass for the row max and
/// one for the sum of exponentials, nothing of size (N, V) kept from the forward. Taking any
/// leading dimensions spares callers a reshape of the logits, whose backward node would cost
/// a zero tensor and an add of the whole (N, V) gradient. The plain path is
/// `-gather(log_softmax(logits), targets)` over the rows.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(&[logits]) {
        return logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy);
    }
    let v = logits.dims().last().copied().unwrap_or(1);
    let logp = candle_nn::ops::log_softmax(&logits.reshape(((), v))?, candle_core::D::Minus1)?;
    logp.gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?.reshape(targets.shape())
}

struct CrossEntropy;

/// Targets as indices, each checked against the vocabulary.
fn targets_of(storage: &CpuStorage, layout: &Layout, n: usize, v: usize) -> Result<Vec<usize>> {
    let data = storage.as_slice::<u32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("cross-entropy: targets must be contiguous") };
    if end - start != n {
        bail!("cross-entropy: {} targets for {n} rows", end - start);
    }
    data[start..end]
        .iter()
        .map(|&t| {
            if (t as usize) < v {
                Ok(t as usize)
            } else {
                bail!("cross-entropy: target {t} out of a vocabulary of {v}")
            }
        })
        .collect()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((&v, lead)) = l1.dims().split_last() else { bail!("cross-entropy: scalar logits") };
        let n: usize = lead.iter().product();
        if v == 0 || l2.dims() != lead {
            bail!("cross-entropy: logits {:?} for targets {:?}", l1.shape(), l2.shape());
        }
        let x = slice(s1, l1, self.name())?;
        let targets = targets_of(s2, l2, n, v)?;
        let loss: Vec<f32> = if n * v < PARALLEL_MIN {
            (0..n)
                .map(|i| {
                    wide(
                        #[inline(always)]
                        || row_loss(&x[i * v..(i + 1) * v], targets[i]),
                    )
                })
                .collect()
        } else {
            (0..n)
                .into_par_iter()
                .map(|i| {
                    wide(
                        #[inline(always)]
                        || row_loss(&x[i * v..(i + 1) * v], targets[i]),
                    )
                })
                .collect()
        };
        Ok((CpuStorage::F32(loss), Shape::from(lead)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = logits.dims().last().copied().unwrap_or(1);
        let n = logits.elem_count() / v.max(1);
        let targets: Vec<usize> = targets.flatten_all()?.to_vec1::<u32>()?.into_iter().map(|t| t as usize).collect();
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * v];
        with_data(logits, self.name(), |x| {
            for_rows(&mut out, v, |i, row| {
                wide(
                    #[inline(always)]
                    || cross_entropy_grad_row(&x[i * v..(i + 1) * v], row, g[i]),
                );
                row[targets[i]] -= g[i];
            })
        })?;
        Ok((Some(cpu_tensor(out, logits.shape())?), None))
    }
}

/// softmax(xs) * g into `row`.
#[inline(always)]
fn cross_entropy_grad_row(xs: &[f32], row: &mut [f32], g: f32) {
    let m = max(xs);
    for (o, &xv) in row.iter_mut().zip(xs) {
        *o = exp_nonpositive(xv - m);
    }
    let scale = g / sum(row);
    for o in row.iter_mut() {
        *o *= scale;
    }
}

/// softmax(row) * g in place.
#[inline(always)]
fn scaled_softmax_in_place(row: &mut [f32], g: f32) {
    let m = max(row);
    for x in row.iter_mut() {
        *x = exp_nonpositive(*x - m);
    }
    let scale = g / sum(row);
    for x in row.iter_mut() {
        *x *= scale;
    }
}

/// logsumexp(row) - row[target].
#[inline(always)]
fn row_loss(xs: &[f32], target: usize) -> f32 {
    let m = max(xs);
    if m == f32::INFINITY || m.is_nan() {
        return f32::NAN;
    }
    m + sum_exp(xs, m).ln() - xs[target]
}

// ---------------------------------------------------------------------------------------------
// Softmax.

/// Softmax over the last dimension, any rank. Fuses max, subtraction, exp, sum and division;
/// a row that is entirely -inf gives zeros (the plain composition gives NaN there).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let cols = layout.shape().dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, cols, |i, row| {
            let xs = &x[i * cols..(i + 1) * cols];
            let m = max(xs);
            if m == f32::NEG_INFINITY {
                return; // fully masked: zeros
            }
            for (o, &xv) in row.iter_mut().zip(xs) {
                *o = exp_nonpositive(xv - m);
            }
            let scale = 1.0 / sum(row);
            for o in row.iter_mut() {
                *o *= scale;
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let cols = y.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; y.elem_count()];
        with_data(y, self.name(), |y| {
            with_data(grad, self.name(), |g| {
                for_rows(&mut out, cols, |i, row| {
                    let (ys, gs) = (&y[i * cols..(i + 1) * cols], &g[i * cols..(i + 1) * cols]);
                    let mut acc = [0f32; 16];
                    let (yc, gc) = (ys.chunks_exact(16), gs.chunks_exact(16));
                    let rest: f32 = yc.remainder().iter().zip(gc.remainder()).map(|(a, b)| a * b).sum();
                    for (a, b) in yc.zip(gc) {
                        for k in 0..16 {
                            acc[k] += a[k] * b[k];
                        }
                    }
                    let dot = acc.iter().sum::<f32>() + rest;
                    for ((o, &yv), &gv) in row.iter_mut().zip(ys).zip(gs) {
                        *o = yv * (gv - dot);
                    }
                })
            })
        })??;
        Ok(Some(cpu_tensor(out, y.shape())?))
    }
}

// ---------------------------------------------------------------------------------------------
// Bias.

/// x + bias for x (N, D) and bias (D,), broadcast over the rows. The op itself is candle's
/// `broadcast_add`; what is fused is its backward, whose bias gradient candle reduces over the
/// rows with a strided walk down each column, here summed row by row (per thread, then added).
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let b = slice(s2, l2, self.name())?;
        let cols = b.len();
        if l1.shape().dims().last() != Some(&cols) {
            bail!("add bias: bias {:?} for input {:?}", l2.shape(), l1.shape());
        }
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, cols, |i, row| {
            for ((o, &xv), &bv) in row.iter_mut().zip(&x[i * cols..(i + 1) * cols]).zip(b) {
                *o = xv + bv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, bias: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let cols = bias.elem_count();
        let db = with_data(grad, self.name(), |g| column_sums(g, cols))?;
        Ok((Some(grad.clone()), Some(Tensor::from_vec(db, bias.shape().clone(), &Device::Cpu)?)))
    }
}

/// Sums of the columns of a row-major (rows, cols) matrix, row by row (one partial per thread,
/// then added): a bias's gradient, which candle reduces with a strided walk down each column.
fn column_sums(g: &[f32], cols: usize) -> Vec<f32> {
    let rows = g.len() / cols.max(1);
    let threads = if g.len() < PARALLEL_MIN { 1 } else { rayon::current_num_threads().max(1) };
    let per_chunk = rows.div_ceil(threads).max(1) * cols;
    g.par_chunks(per_chunk.max(1))
        .map(|chunk| {
            let mut partial = vec![0f32; cols];
            for row in chunk.chunks(cols.max(1)) {
                for (p, &v) in partial.iter_mut().zip(row) {
                    *p += v;
                }
            }
            partial
        })
        .reduce(
            || vec![0f32; cols],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

// ---------------------------------------------------------------------------------------------
// GELU.

/// √(2/π), and GPT-2's cubic coefficient.
const GELU_K: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// (1 + tanh(u), 1 - tanh(u)), vectorisable, each to a few ulp: with e = exp(-2|u|), they are
/// 2 / (1 + e) and 2e / (1 + e) (swapped for u < 0). Computing 1 ± tanh directly avoids the
/// cancellation of 1 + tanh(u) as tanh approaches -1, where GELU's derivative lives.
#[inline(always)]
fn one_plus_minus_tanh(u: f32) -> (f32, f32) {
    let e = exp_nonpositive(-2.0 * u.abs());
    let (big, small) = (2.0 / (1.0 + e), 2.0 * e / (1.0 + e));
    if u >= 0.0 { (big, small) } else { (small, big) }
}

/// GPT-2's tanh-approximated GELU, 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))). Fuses the
/// forward into one pass and the backward, which candle composes from a dozen ops (two of them
/// scalar `powf`), into one more.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

/// GPT-2's tanh GELU of one value.
#[inline(always)]
fn gelu_of(v: f32) -> f32 {
    0.5 * v * one_plus_minus_tanh(GELU_K * (v + GELU_C * v * v * v)).0
}

/// The gradient through GELU at `v` of an output gradient `gv`.
#[inline(always)]
fn gelu_grad_of(v: f32, gv: f32) -> f32 {
    // d/dx = (1 + t) / 2 + x (1 + t)(1 - t) u' / 2, u' = k (1 + 3 c x²).
    let (plus, minus) = one_plus_minus_tanh(GELU_K * (v + GELU_C * v * v * v));
    let du = GELU_K * (1.0 + 3.0 * GELU_C * v * v);
    gv * 0.5 * (plus + v * plus * minus * du)
}

#[inline(always)]
fn gelu_chunk(xs: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(xs).for_each(|(o, &v)| *o = gelu_of(v));
}

#[inline(always)]
fn gelu_grad_chunk(xs: &[f32], gs: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(xs).zip(gs).for_each(|((o, &v), &gv)| *o = gelu_grad_of(v, gv));
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, 4096.min(x.len().max(1)), |i, chunk| {
            let xs = &x[i * 4096..i * 4096 + chunk.len()];
            wide(
                #[inline(always)]
                || gelu_chunk(xs, chunk),
            );
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut out = vec![0f32; x.elem_count()];
        with_data(x, self.name(), |x| {
            with_data(grad, self.name(), |g| {
                for_rows(&mut out, 4096.min(x.len().max(1)), |i, chunk| {
                    let range = i * 4096..i * 4096 + chunk.len();
                    wide(
                        #[inline(always)]
                        || gelu_grad_chunk(&x[range.clone()], &g[range], chunk),
                    );
                })
            })
        })??;
        Ok(Some(cpu_tensor(out, x.shape())?))
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
