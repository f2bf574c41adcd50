//! A fused affine map for the CPU: `y = x W + b` (weight stored `(in, out)`) or `y = x Wᵀ + b`
//! (stored `(out, in)`), for x of any leading dimensions, as a single candle op.
//!
//! The plain composition is reshape, matmul, bias add and reshape: four nodes in the backward
//! graph, and candle's backward gives every node's gradient a fresh zero tensor plus an add (a
//! full pass and an allocation each, per node, of activations as large as (B·T, 4C), or the
//! (B·T, V) logits of the LM head). Here the forward writes the bias into y and accumulates the
//! product onto it in one gemm call; the backward is one gemm for dx, one for dW (reading the
//! stored weight and x through strides, no transposed copies) and a row-wise sum for db.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use gemm::{Parallelism, gemm};

use std::sync::Mutex;

use super::{column_sums, filled, for_rows, gelu_chunk, product_threads, slice, wide, with_data};

/// x W + b (`out_in` false: W is (in, out)) or x Wᵀ + b (`out_in` true: W is (out, in)), with
/// `bias` (out,) if given. CPU f32 only (the caller checks with `kernels::fused`).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out_in: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let op = Affine { out_in, gelu: None };
    match bias {
        Some(bias) => x.apply_op3(weight, &bias.contiguous()?, op),
        None => x.apply_op2(weight, op),
    }
}

/// GELU(x W + b) (GPT-2's tanh approximation) as one op, weights as in [`linear`]: the MLP's
/// up-projection and activation. The pre-activation stays inside the op for the backward, which
/// turns it into its own gradient in place: one backward node and one (rows, out) buffer fewer
/// than [`linear`] then [`super::gelu`].
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out_in: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let keep = x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op);
    let op = Affine { out_in, gelu: Some(Activation { keep, pre: Mutex::new(None) }) };
    match bias {
        Some(bias) => x.apply_op3(weight, &bias.contiguous()?, op),
        None => x.apply_op2(weight, op),
    }
}

struct Affine {
    out_in: bool,
    /// GELU after the affine map.
    gelu: Option<Activation>,
}

struct Activation {
    /// Whether to keep the pre-activation for a backward pass.
    keep: bool,
    /// x W + b from the forward, taken by the backward.
    pre: Mutex<Option<Vec<f32>>>,
}

/// Elements per task of the GELU passes.
const GELU_CHUNK: usize = 4096;

/// A matrix operand or destination: first element, row stride, column stride.
pub(super) type Operand<P> = (P, usize, usize);

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, plus dst when `accumulate`, on rayon's threads
/// (one inside [`super::on_one_core`]).
///
/// # Safety
/// Every operand must address valid memory for its shape and strides.
pub(super) unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: Operand<*mut f32>,
    accumulate: bool,
    lhs: Operand<*const f32>,
    rhs: Operand<*const f32>,
) {
    let threads = product_threads();
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The sizes of one call: rows of x, and the weight's in and out widths, with its strides.
struct Sizes {
    rows: usize,
    d_in: usize,
    d_out: usize,
    /// Where W's element (i, o) of the (in, out) map sits: offset, stride along i, along o.
    w_at: (usize, usize, usize),
}

impl Affine {
    fn sizes(&self, x: &Layout, w: &Layout, w_len: usize) -> Result<Sizes> {
        let dims = x.dims();
        let Some((&d_in, lead)) = dims.split_last() else { bail!("fused linear: a scalar input") };
        let rows = lead.iter().product();
        let (w0, w1) = w.shape().dims2()?;
        let [s0, s1] = w.stride() else { bail!("fused linear: a 2-D weight") };
        let (wi, wo, d_out, i_stride, o_stride) =
            if self.out_in { (w1, w0, w0, *s1, *s0) } else { (w0, w1, w1, *s0, *s1) };
        if wi != d_in {
            bail!(
                "fused linear: input {:?} against weight {:?} ({})",
                x.shape(),
                w.shape(),
                if self.out_in { "out, in" } else { "in, out" }
            );
        }
        // Every element the products read lies inside the weight's storage.
        if wi > 0 && wo > 0 && w.start_offset() + (wi - 1) * i_stride + (wo - 1) * o_stride >= w_len {
            bail!("fused linear: the weight's layout runs past its storage");
        }
        Ok(Sizes { rows, d_in, d_out, w_at: (w.start_offset(), i_stride, o_stride) })
    }

    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.affine(x, w, bias)?;
        let Some(gelu) = &self.gelu else { return Ok((CpuStorage::F32(y), shape)) };
        if !gelu.keep {
            let mut y = y;
            for_rows(&mut y, GELU_CHUNK, |_, chunk| {
                wide(
                    #[inline(always)]
                    || chunk.iter_mut().for_each(|v| *v = super::gelu_of(*v)),
                )
            });
            return Ok((CpuStorage::F32(y), shape));
        }
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, GELU_CHUNK, |i, chunk| {
            let pre = &y[i * GELU_CHUNK..i * GELU_CHUNK + chunk.len()];
            wide(
                #[inline(always)]
                || gelu_chunk(pre, chunk),
            );
        });
        *gelu.pre.lock().unwrap_or_else(|e| e.into_inner()) = Some(y);
        Ok((CpuStorage::F32(out), shape))
    }

    /// x W + b, and its shape.
    fn affine(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let xs = slice(x.0, x.1, "fused linear")?;
        let w_data = w.0.as_slice::<f32>()?;
        let Sizes { rows, d_in, d_out, w_at } = self.sizes(x.1, w.1, w_data.len())?;
        if xs.len() != rows * d_in {
            bail!("fused linear: the input must be contiguous");
        }
        let w_ptr = w_data[w_at.0..].as_ptr();
        let y = match bias {
            Some((s, l)) => {
                let b = slice(s, l, "fused linear")?;
                if b.len() != d_out {
                    bail!("fused linear: a bias of {} for {d_out} outputs", b.len());
                }
                let mut y = vec![0f32; rows * d_out];
                y.chunks_mut(d_out.max(1)).for_each(|row| row.copy_from_slice(b));
                if rows > 0 && d_out > 0 {
                    // SAFETY: x is rows × d_in contiguous, W checked by `sizes`, y rows × d_out.
                    unsafe {
                        product(
                            rows,
                            d_out,
                            d_in,
                            (y.as_mut_ptr(), d_out, 1),
                            true,
                            (xs.as_ptr(), d_in, 1),
                            (w_ptr, w_at.1, w_at.2),
                        )
                    };
                }
                y
            }
            None if rows > 0 && d_out > 0 && d_in > 0 => {
                // SAFETY: as above; the product overwrites all of y (no bias to start from).
                unsafe {
                    filled(rows * d_out, |y| {
                        product(
                            rows,
                            d_out,
                            d_in,
                            (y, d_out, 1),
                            false,
                            (xs.as_ptr(), d_in, 1),
                            (w_ptr, w_at.1, w_at.2),
                        )
                    })
                }
            }
            None => vec![0f32; rows * d_out],
        };
        let mut shape = x.1.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = d_out;
        }
        Ok((y, Shape::from(shape)))
    }

    /// (dx, dW, db) from the output's gradient; dW in the weight's own (stored) orientation.
    /// With GELU, the gradient is first taken through it, in place over the kept
    /// pre-activation.
    fn backward(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let grad = match &self.gelu {
            None => grad.contiguous()?,
            Some(gelu) => {
                let Some(mut pre) = gelu.pre.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                    bail!("fused linear + GELU: no pre-activation kept for the backward pass")
                };
                if pre.len() != grad.elem_count() {
                    bail!("fused linear + GELU: a gradient of {:?} for {} outputs", grad.shape(), pre.len());
                }
                with_data(grad, "fused linear", |g| {
                    for_rows(&mut pre, GELU_CHUNK, |i, chunk| {
                        let g = &g[i * GELU_CHUNK..i * GELU_CHUNK + chunk.len()];
                        wide(
                            #[inline(always)]
                            || chunk.iter_mut().zip(g).for_each(|(v, &gv)| *v = super::gelu_grad_of(*v, gv)),
                        );
                    })
                })?;
                Tensor::from_vec(pre, grad.shape().clone(), &candle_core::Device::Cpu)?
            }
        };
        let (w_storage, w_layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(w_cpu) = &*w_storage else { bail!("fused linear: CPU only") };
        let w_data = w_cpu.as_slice::<f32>()?;
        let Sizes { rows, d_in, d_out, w_at } = self.sizes(x.layout(), w_layout, w_data.len())?;
        let (dx, dw) = with_data(x, "fused linear", |xs| {
            with_data(&grad, "fused linear", |g| {
                if rows == 0 || d_in == 0 || d_out == 0 || g.len() != rows * d_out || xs.len() != rows * d_in {
                    return (vec![0f32; rows * d_in], vec![0f32; d_in * d_out]);
                }
                let w_ptr = w_data[w_at.0..].as_ptr();
                // dW as stored: (in, out) with rows d_out apart, or (out, in) with rows d_in apart.
                let dw_at = if self.out_in { (1, d_in) } else { (d_out, 1) };
                // SAFETY: g is rows × d_out and x rows × d_in, contiguous; W checked by `sizes`;
                // each product overwrites all of its fresh buffer (every size is non-zero).
                unsafe {
                    // dx = g Wᵀ: Wᵀ's element (o, i) is W's (i, o).
                    let dx = filled(rows * d_in, |dx| {
                        product(
                            rows,
                            d_in,
                            d_out,
                            (dx, d_in, 1),
                            false,
                            (g.as_ptr(), d_out, 1),
                            (w_ptr, w_at.2, w_at.1),
                        )
                    });
                    // dW (in × out) = xᵀ g, written through the stored orientation's strides.
                    let dw = filled(d_in * d_out, |dw| {
                        product(
                            d_in,
                            d_out,
                            rows,
                            (dw, dw_at.0, dw_at.1),
                            false,
                            (xs.as_ptr(), 1, d_in),
                            (g.as_ptr(), d_out, 1),
                        )
                    });
                    (dx, dw)
                }
            })
        })??;
        let db = with_data(&grad, "fused linear", |g| column_sums(g, d_out))?;
        let cpu = candle_core::Device::Cpu;
        Ok((
            Tensor::from_vec(dx, x.shape().clone(), &cpu)?,
            Tensor::from_vec(dw, w.shape().clone(), &cpu)?,
            Tensor::from_vec(db, d_out, &cpu)?,
        ))
    }
}

impl CustomOp2 for Affine {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, grad)?;
        Ok((Some(dx), Some(dw), Some(db.reshape(b.shape())?)))
    }
}
