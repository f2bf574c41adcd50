//! The fused attention kernels as candle ops: on separate q, k and v, on GPT's fused `c_attn`
//! output read in place, and T5's (q, then k and v side by side, with a learned position bias).
//! The math they run is in `attention.rs`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};

use std::sync::Mutex;

use super::attention::{Dims, Grads, Heads, Inputs, Ptr, backward, run_forward};
use super::filled;
// ---------------------------------------------------------------------------------------------
// q, k, v as separate tensors.

/// softmax(q kᵀ / sqrt(d) + key_bias, causal) v for q (B, H, T, d) and k, v (B, KV, S, d),
/// H a multiple of KV, S >= T, query i at position S - T + i; `key_bias` additive (B, S).
/// Returns (B, H, T, d). CPU f32 only (the caller checks with `kernels::fused`).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, key_bias: Option<&Tensor>) -> Result<Tensor> {
    let unit_last =
        |t: &Tensor| -> Result<Tensor> { if Heads::of(t.layout()).is_some() { Ok(t.clone()) } else { t.contiguous() } };
    let op = Attention {
        key_bias: bias_values(key_bias)?,
        keep: q.track_op() || k.track_op() || v.track_op(),
        stats: Mutex::new(None),
    };
    unit_last(q)?.apply_op3(&unit_last(k)?, &unit_last(v)?, op)
}

/// The key bias as host values, (B * S).
fn bias_values(key_bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    key_bias.map(|m| m.flatten_all()?.to_vec1::<f32>()).transpose()
}

struct Attention {
    key_bias: Option<Vec<f32>>,
    /// Whether to keep the row stats for a backward pass.
    keep: bool,
    /// Each query row's (max, 1 / sum), (B, H, T, 2), from the forward pass.
    stats: Mutex<Option<Vec<f32>>>,
}

fn cpu<'a>(storage: &'a CpuStorage, name: &str) -> Result<&'a [f32]> {
    storage.as_slice::<f32>().map_err(|_| candle_core::Error::Msg(format!("{name}: f32 only")))
}

impl Attention {
    /// The forward pass into a fresh (len) buffer laid out as `out_at`, keeping the row stats
    /// for the backward when asked to.
    fn run(&self, inputs: &Inputs, len: usize, out_at: Heads) -> Vec<f32> {
        let (out, stats) = run_forward(inputs, len, out_at, self.keep);
        if let Some(stats) = stats {
            *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
        }
        out
    }

    fn inputs<'a>(
        &'a self,
        q: (&'a [f32], &Layout),
        k: (&'a [f32], &Layout),
        v: (&'a [f32], &Layout),
    ) -> Result<Inputs<'a>> {
        let heads = |l: &Layout| {
            Heads::of(l)
                .ok_or_else(|| candle_core::Error::Msg("fused attention: 4-D inputs with a unit last stride".into()))
        };
        let (b, h, t, d) = q.1.shape().dims4()?;
        let (kb, kv, s, kd) = k.1.shape().dims4()?;
        if (kb, kd) != (b, d) || v.1.shape() != k.1.shape() {
            bail!("fused attention: q {:?}, k {:?}, v {:?}", q.1.shape(), k.1.shape(), v.1.shape());
        }
        let inputs = Inputs {
            q: (q.0, heads(q.1)?),
            k: (k.0, heads(k.1)?),
            v: (v.0, heads(v.1)?),
            key_bias: self.key_bias.as_deref(),
            position_bias: None,
            dims: Dims { b, h, kv, t, s, d },
            causal: true,
            scale: 1.0 / (d as f32).sqrt(),
        };
        inputs.check()?;
        Ok(inputs)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
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
        let inputs =
            self.inputs((cpu(s1, self.name())?, l1), (cpu(s2, self.name())?, l2), (cpu(s3, self.name())?, l3))?;
        let Dims { b, h, t, d, .. } = inputs.dims;
        let out = self.run(&inputs, b * h * t * d, Heads::contiguous(h, t, d));
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stats) = stats.as_ref() else { bail!("fused attention: no row stats kept for the backward pass") };
        let grad = grad.contiguous()?;
        let (q_s, q_l) = q.storage_and_layout();
        let (k_s, k_l) = k.storage_and_layout();
        let (v_s, v_l) = v.storage_and_layout();
        let (o_s, _) = out.storage_and_layout();
        let (g_s, g_l) = grad.storage_and_layout();
        let (Storage::Cpu(q_c), Storage::Cpu(k_c), Storage::Cpu(v_c), Storage::Cpu(o_c), Storage::Cpu(g_c)) =
            (&*q_s, &*k_s, &*v_s, &*o_s, &*g_s)
        else {
            bail!("fused attention: CPU only")
        };
        let inputs =
            self.inputs((cpu(q_c, self.name())?, q_l), (cpu(k_c, self.name())?, k_l), (cpu(v_c, self.name())?, v_l))?;
        let Dims { b, h, kv, t, s, d } = inputs.dims;
        let o_at = Heads::contiguous(h, t, d);
        let (o, go) = (cpu(o_c, self.name())?, &cpu(g_c, self.name())?[g_l.start_offset()..]);
        o_at.check((b, h, t, d), o.len(), "the output")?;
        o_at.check((b, h, t, d), go.len(), "the output's gradient")?;
        // dk and dv accumulate over blocks and grouped heads, so start at zero; every row of dq
        // is overwritten once.
        let (mut dk, mut dv) = (vec![0f32; b * kv * s * d], vec![0f32; b * kv * s * d]);
        // SAFETY: `backward` writes every row of dq (see above).
        let dq = unsafe {
            filled(b * h * t * d, |dq| {
                let grads = Grads {
                    dq: (Ptr(dq), Heads::contiguous(h, t, d)),
                    dk: (Ptr(dk.as_mut_ptr()), Heads::contiguous(kv, s, d)),
                    dv: (Ptr(dv.as_mut_ptr()), Heads::contiguous(kv, s, d)),
                    dbias: None,
                };
                backward(&inputs, stats, o, go, o_at, &grads);
            })
        };
        let device = candle_core::Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), &device)?),
            Some(Tensor::from_vec(dk, (b, kv, s, d), &device)?),
            Some(Tensor::from_vec(dv, (b, kv, s, d), &device)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// GPT-2's fused q, k, v projection.

/// Causal attention over `qkv` (B, T, 3C), the output of GPT-2's `c_attn` (q, k and v its
/// thirds, each `heads` heads of width C / heads side by side), with an optional additive key
/// bias (B, T). Returns (B, T, C), heads side by side: `y.transpose(1, 2).reshape((B, T, C))` of
/// the plain path, without its copies.
pub fn causal_attention_qkv(qkv: &Tensor, heads: usize, key_bias: Option<&Tensor>) -> Result<Tensor> {
    let op = AttentionQkv {
        heads,
        inner: Attention { key_bias: bias_values(key_bias)?, keep: qkv.track_op(), stats: Mutex::new(None) },
    };
    qkv.contiguous()?.apply_op1(op)
}

struct AttentionQkv {
    heads: usize,
    inner: Attention,
}

impl AttentionQkv {
    /// The sizes and the layouts of q, k and v inside a contiguous (B, T, 3C) buffer starting at
    /// `offset`, and of the (B, T, C) output.
    fn layouts(&self, shape: &Shape, offset: usize) -> Result<(Dims, [Heads; 3], Heads)> {
        let (b, t, c3) = shape.dims3()?;
        let h = self.heads;
        if h == 0 || c3 % (3 * h) != 0 {
            bail!("fused attention: a (B, T, {c3}) projection does not split into q, k, v of {h} heads");
        }
        let (c, d) = (c3 / 3, c3 / 3 / h);
        let third = |i: usize| Heads { offset: offset + i * c, batch: t * c3, head: d, row: c3 };
        let out = Heads { offset: 0, batch: t * c, head: d, row: c };
        Ok((Dims { b, h, kv: h, t, s: t, d }, [third(0), third(1), third(2)], out))
    }

    fn inputs<'a>(&'a self, data: &'a [f32], dims: Dims, [q, k, v]: [Heads; 3]) -> Result<Inputs<'a>> {
        let inputs = Inputs {
            q: (data, q),
            k: (data, k),
            v: (data, v),
            key_bias: self.inner.key_bias.as_deref(),
            position_bias: None,
            dims,
            causal: true,
            scale: dims.scale(),
        };
        inputs.check()?;
        Ok(inputs)
    }
}

impl CustomOp1 for AttentionQkv {
    fn name(&self) -> &'static str {
        "fused-causal-attention-qkv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if !layout.is_contiguous() {
            bail!("{}: the projection must be contiguous", self.name());
        }
        let (dims, thirds, out_at) = self.layouts(layout.shape(), layout.start_offset())?;
        let inputs = self.inputs(cpu(storage, self.name())?, dims, thirds)?;
        let Dims { b, h, t, d, .. } = dims;
        let out = self.inner.run(&inputs, b * t * h * d, out_at);
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stats) = stats.as_ref() else { bail!("fused attention: no row stats kept for the backward pass") };
        let (qkv, grad) = (qkv.contiguous()?, grad.contiguous()?);
        let (x_s, x_l) = qkv.storage_and_layout();
        let (o_s, o_l) = out.storage_and_layout();
        let (g_s, g_l) = grad.storage_and_layout();
        let (Storage::Cpu(x_c), Storage::Cpu(o_c), Storage::Cpu(g_c)) = (&*x_s, &*o_s, &*g_s) else {
            bail!("fused attention: CPU only")
        };
        let (dims, thirds, out_at) = self.layouts(x_l.shape(), x_l.start_offset())?;
        let inputs = self.inputs(cpu(x_c, self.name())?, dims, thirds)?;
        let Dims { b, h, t, d, .. } = dims;
        let o = &cpu(o_c, self.name())?[o_l.start_offset()..];
        let go = &cpu(g_c, self.name())?[g_l.start_offset()..];
        if !o_l.is_contiguous() {
            bail!("{}: the output must be contiguous", self.name());
        }
        out_at.check((b, h, t, d), o.len(), "the output")?;
        out_at.check((b, h, t, d), go.len(), "the output's gradient")?;
        let mut dqkv = vec![0f32; x_l.shape().elem_count()];
        // The gradient has the projection's layout, from offset 0.
        let [q, k, v] = self.layouts(x_l.shape(), 0)?.1;
        let ptr = Ptr(dqkv.as_mut_ptr());
        backward(&inputs, stats, o, go, out_at, &Grads { dq: (ptr, q), dk: (ptr, k), dv: (ptr, v), dbias: None });
        Ok(Some(Tensor::from_vec(dqkv, x_l.shape().clone(), &candle_core::Device::Cpu)?))
    }
}

// ---------------------------------------------------------------------------------------------
// T5: unscaled scores, a learned position bias, causal or not.

/// T5's attention: `softmax(q kᵀ + position_bias + key_bias [causal]) v` for q (B, T, C) and
/// `kv` (B, S, 2C) (k then v, each `heads` heads of width C / heads side by side), with an
/// optional position bias (H, T, S) (differentiable) and key bias (B, S) (a padding mask).
/// Returns (B, T, C), heads side by side: what T5's output projection reads, without a head
/// transpose on either side. CPU f32 only (the caller checks with `kernels::fused`).
pub fn t5_attention(
    q: &Tensor,
    kv: &Tensor,
    heads: usize,
    position_bias: Option<&Tensor>,
    key_bias: Option<&Tensor>,
    causal: bool,
) -> Result<Tensor> {
    let keep = q.track_op() || kv.track_op() || position_bias.is_some_and(Tensor::track_op);
    let op = T5Attention {
        heads,
        causal,
        inner: Attention { key_bias: bias_values(key_bias)?, keep, stats: Mutex::new(None) },
    };
    let (q, kv) = (q.contiguous()?, kv.contiguous()?);
    match position_bias {
        Some(bias) => q.apply_op3(&kv, &bias.contiguous()?, op),
        None => q.apply_op2(&kv, op),
    }
}

struct T5Attention {
    heads: usize,
    causal: bool,
    inner: Attention,
}

impl T5Attention {
    /// The sizes and the layouts of q in (B, T, C) and of k and v in (B, S, 2C), each from the
    /// start of its buffer, and of the (B, T, C) output.
    fn layouts(&self, q: &Shape, kv: &Shape) -> Result<(Dims, [Heads; 3], Heads)> {
        let (b, t, c) = q.dims3()?;
        let (kb, s, c2) = kv.dims3()?;
        let h = self.heads;
        if h == 0 || c % h != 0 || kb != b || c2 != 2 * c {
            bail!("fused T5 attention: q {q:?} and kv {kv:?} do not split into {h} heads");
        }
        let d = c / h;
        let q_at = Heads { offset: 0, batch: t * c, head: d, row: c };
        let k_at = Heads { offset: 0, batch: s * c2, head: d, row: c2 };
        let v_at = Heads { offset: c, ..k_at };
        Ok((Dims { b, h, kv: h, t, s, d }, [q_at, k_at, v_at], q_at))
    }

    fn inputs<'a>(
        &'a self,
        (q, kv, bias): (&'a [f32], &'a [f32], Option<&'a [f32]>),
        dims: Dims,
        [q_at, k_at, v_at]: [Heads; 3],
    ) -> Result<Inputs<'a>> {
        let inputs = Inputs {
            q: (q, q_at),
            k: (kv, k_at),
            v: (kv, v_at),
            key_bias: self.inner.key_bias.as_deref(),
            position_bias: bias,
            dims,
            causal: self.causal,
            scale: 1.0,
        };
        if self.causal && dims.t != dims.s {
            bail!("fused T5 attention: causal over {} queries and {} keys", dims.t, dims.s);
        }
        inputs.check()?;
        Ok(inputs)
    }

    fn forward(
        &self,
        (q, ql): (&[f32], &Layout),
        (kv, kvl): (&[f32], &Layout),
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        if !ql.is_contiguous() || !kvl.is_contiguous() || ql.start_offset() != 0 || kvl.start_offset() != 0 {
            bail!("fused T5 attention: contiguous inputs only");
        }
        let (dims, at, out_at) = self.layouts(ql.shape(), kvl.shape())?;
        let inputs = self.inputs((q, kv, bias), dims, at)?;
        let Dims { b, h, t, d, .. } = dims;
        let out = self.inner.run(&inputs, b * t * h * d, out_at);
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }

    /// dq (B, T, C), dkv (B, S, 2C) and, with a position bias, its gradient (H, T, S).
    fn backward(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: Option<&Tensor>,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stats) = stats.as_ref() else { bail!("fused T5 attention: no row stats kept for the backward pass") };
        let (q, kv, grad, out) = (q.contiguous()?, kv.contiguous()?, grad.contiguous()?, out.contiguous()?);
        let bias = bias.map(Tensor::contiguous).transpose()?;
        let (dims, at, out_at) = self.layouts(q.shape(), kv.shape())?;
        let bias_values = bias.as_ref().map(|b| b.flatten_all()?.to_vec1::<f32>()).transpose()?;
        let (q_v, kv_v) = (q.flatten_all()?.to_vec1::<f32>()?, kv.flatten_all()?.to_vec1::<f32>()?);
        let (o, go) = (out.flatten_all()?.to_vec1::<f32>()?, grad.flatten_all()?.to_vec1::<f32>()?);
        let inputs = self.inputs((&q_v, &kv_v, bias_values.as_deref()), dims, at)?;
        let Dims { b, h, t, s, d, .. } = dims;
        out_at.check((b, h, t, d), o.len(), "the output")?;
        out_at.check((b, h, t, d), go.len(), "the output's gradient")?;
        let mut dq = vec![0f32; q_v.len()];
        let mut dkv = vec![0f32; kv_v.len()];
        let mut dbias = bias.as_ref().map(|_| vec![0f32; b * h * t * s]);
        let [q_at, k_at, v_at] = at;
        let (q_ptr, kv_ptr) = (Ptr(dq.as_mut_ptr()), Ptr(dkv.as_mut_ptr()));
        let grads = Grads {
            dq: (q_ptr, q_at),
            dk: (kv_ptr, k_at),
            dv: (kv_ptr, v_at),
            dbias: dbias.as_mut().map(|g| Ptr(g.as_mut_ptr())),
        };
        backward(&inputs, stats, &o, &go, out_at, &grads);
        let device = candle_core::Device::Cpu;
        let dbias = match dbias {
            // Σ over the batch rows: the bias is shared by all of them.
            Some(per_row) => {
                let mut sum = vec![0f32; h * t * s];
                for row in per_row.chunks(h * t * s) {
                    sum.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
                Some(Tensor::from_vec(sum, (h, t, s), &device)?)
            }
            None => None,
        };
        Ok((
            Tensor::from_vec(dq, q.shape().clone(), &device)?,
            Tensor::from_vec(dkv, kv.shape().clone(), &device)?,
            dbias,
        ))
    }
}

impl CustomOp2 for T5Attention {
    fn name(&self) -> &'static str {
        "fused-t5-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((cpu(s1, "fused-t5-attention")?, l1), (cpu(s2, "fused-t5-attention")?, l2), None)
    }

    fn bwd(&self, q: &Tensor, kv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dq, dkv, _) = self.backward(q, kv, None, out, grad)?;
        Ok((Some(dq), Some(dkv)))
    }
}

impl CustomOp3 for T5Attention {
    fn name(&self) -> &'static str {
        "fused-t5-attention"
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
        if !l3.is_contiguous() {
            bail!("fused T5 attention: a contiguous position bias only");
        }
        let bias = &cpu(s3, "fused-t5-attention")?[l3.start_offset()..l3.start_offset() + l3.shape().elem_count()];
        self.forward((cpu(s1, "fused-t5-attention")?, l1), (cpu(s2, "fused-t5-attention")?, l2), Some(bias))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dkv, dbias) = self.backward(q, kv, Some(bias), out, grad)?;
        Ok((Some(dq), Some(dkv), dbias))
    }
}
