//! AdamW's update in place: moments and weights in three fused passes over each parameter, no
//! temporaries.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, bail};

use super::*;

/// One AdamW step's constants, shared by every parameter.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// The factor applied to the weights before the update: 1 - lr * weight_decay, or 1.
    pub decay: f32,
    /// 1 - beta1^t and 1 - beta2^t.
    pub correction1: f32,
    pub correction2: f32,
    /// The gradient-clipping factor.
    pub grad_scale: f32,
}

/// Updates `m`, `v` and `param` in place from `grad` (all contiguous f32 on the CPU, same
/// shape):
/// ```text
/// m = b1 m + (1 - b1) s g      v = b2 v + (1 - b2) (s g)^2
/// p = decay p - lr (m / c1) / (sqrt(v / c2) + eps)
/// ```
/// Three in-place passes and no temporaries, where the plain update allocates a dozen tensors.
pub fn adamw_update(param: &Tensor, m: &Tensor, v: &Tensor, grad: &Tensor, step: AdamWStep) -> Result<()> {
    m.inplace_op2(grad, &Moment { beta: step.beta1, scale: step.grad_scale, square: false })?;
    v.inplace_op2(grad, &Moment { beta: step.beta2, scale: step.grad_scale, square: true })?;
    param.inplace_op3(m, v, &Apply(step))
}

/// Sum of squares of a tensor's elements (f64 accumulation across 16 f32 lanes), for the
/// gradient norm without a temporary.
pub fn sum_of_squares(t: &Tensor) -> Result<f64> {
    with_data(t, "sum of squares", |xs| {
        let mut total = 0f64;
        for block in xs.chunks(1 << 14) {
            let mut acc = [0f32; 16];
            let chunks = block.chunks_exact(16);
            let rest: f32 = chunks.remainder().iter().map(|x| x * x).sum();
            for c in chunks {
                for i in 0..16 {
                    acc[i] += c[i] * c[i];
                }
            }
            total += (acc.iter().sum::<f32>() + rest) as f64;
        }
        total
    })
}

fn slice_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: the tensor must be contiguous") };
    match storage {
        CpuStorage::F32(data) => Ok(&mut data[start..end]),
        _ => bail!("{op}: f32 only"),
    }
}

/// m = beta m + (1 - beta) s g, or with (s g)^2.
struct Moment {
    beta: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "fused-adamw-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let g = slice(s2, l2, self.name())?;
        let m = slice_mut(s1, l1, self.name())?;
        if m.len() != g.len() {
            bail!("{}: {} moments for {} gradients", self.name(), m.len(), g.len());
        }
        let (beta, one_minus, s) = (self.beta, 1.0 - self.beta, self.scale);
        if self.square {
            wide(
                #[inline(always)]
                || m.iter_mut().zip(g).for_each(|(m, &g)| *m = beta * *m + one_minus * (s * g) * (s * g)),
            );
        } else {
            wide(
                #[inline(always)]
                || m.iter_mut().zip(g).for_each(|(m, &g)| *m = beta * *m + one_minus * (s * g)),
            );
        }
        Ok(())
    }
}

/// p = decay p - lr (m / c1) / (sqrt(v / c2) + eps).
struct Apply(AdamWStep);

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "fused-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (m, v) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let p = slice_mut(s1, l1, self.name())?;
        if p.len() != m.len() || p.len() != v.len() {
            bail!("{}: shapes differ", self.name());
        }
        let AdamWStep { lr, eps, decay, correction1, correction2, .. } = self.0;
        let (inv1, inv2) = (1.0 / correction1, 1.0 / correction2);
        wide(
            #[inline(always)]
            || {
                p.iter_mut().zip(m).zip(v).for_each(|((p, &m), &v)| {
                    *p = decay * *p - lr * (m * inv1) / ((v * inv2).sqrt() + eps);
                })
            },
        );
        Ok(())
    }
}
