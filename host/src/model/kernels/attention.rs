//! Fused causal attention for the CPU: `softmax(q kᵀ / sqrt(d) + key bias, causally masked) v`,
//! forward and backward, with grouped-query heads.
//!
//! The plain composition (see `model::attention::attend`) scales q in a pass of its own,
//! multiplies out every (T, S) score, adds a materialised -inf mask, runs the softmax and
//! multiplies by v, and its backward retraces each of those ops with a fresh tensor apiece. Here
//! each (batch, kv head) is one task on candle's thread pool, and within it each query head works
//! through blocks of [`BLOCK`] query rows:
//!
//! ```text
//! forward, per block:  P = q kᵀ · scale      over the keys the block's last row can see only
//!                      P = softmax(P + bias)  row by row, masked keys set to exact zeros
//!                      o = P v
//! backward, per block: dP = do vᵀ,  dS = P ⊙ (dP - rowsum(do ⊙ o))
//!                      dq = scale · dS k,  dk += scale · dSᵀ q,  dv += Pᵀ do
//! ```
//!
//! Keys after a block's last visible one are never multiplied (about half the work of a full
//! causal pass); the mask costs nothing but a row length. The forward keeps the probabilities
//! (B, H, T, S) for the backward when some input needs a gradient, and a block of scratch rows
//! otherwise. Query i of T sits at position `S - T + i` and sees keys `0..=S - T + i`, which is
//! both training (S = T) and decoding after a KV cache (T new queries after S - T cached keys).
//!
//! The optional key bias (B, S) is the per-row mask of left-padded batches: [`KEY_PAD`] on pad
//! keys, 0 elsewhere, added to the scaled scores before the softmax, as the plain path adds it.
//!
//! Two entry points share the kernel: [`causal_attention`] for q (B, H, T, d) and k, v
//! (B, KV, S, d) in any strides whose last one is 1 (views into a KV cache included), and
//! [`causal_attention_qkv`] for GPT-2's fused projection, which reads q, k and v straight out of
//! the (B, T, 3C) `c_attn` output and writes (B, T, C) as `c_proj` reads it: no head transposes,
//! no copies, and one gradient tensor for the three thirds instead of three narrowed ones.
//!
//! [`KEY_PAD`]: crate::model::attention::KEY_PAD

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::{PARALLEL_MIN, exp_nonpositive, filled, max, sum, wide};

/// Query rows per block: large enough for efficient matrix products, small enough that the
/// causal skipping saves most of the masked half.
const BLOCK: usize = 64;

/// Where each head's (rows, d) matrix sits in a flat buffer: element (row, col) of head `h` of
/// batch `b` at `offset + b * batch + h * head + row * row_stride + col`.
#[derive(Debug, Clone, Copy)]
struct Heads {
    offset: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl Heads {
    fn start(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.batch + h * self.head
    }

    /// A contiguous (B, H, rows, d) tensor.
    fn contiguous(heads: usize, rows: usize, d: usize) -> Heads {
        Heads { offset: 0, batch: heads * rows * d, head: rows * d, row: d }
    }

    /// A 4-D (B, H, rows, d) layout whose last dimension has unit stride.
    fn of(layout: &Layout) -> Option<Heads> {
        match (layout.stride(), layout.dims()) {
            ([b, h, r, 1], [_, _, _, _]) => Some(Heads { offset: layout.start_offset(), batch: *b, head: *h, row: *r }),
            _ => None,
        }
    }

    /// Fails unless every element of `b` batches of `heads` (rows, d) matrices lies inside `len`:
    /// the kernel's raw-pointer products rely on it.
    fn check(&self, (b, heads, rows, d): (usize, usize, usize, usize), len: usize, what: &str) -> Result<()> {
        if b == 0 || heads == 0 || rows == 0 || d == 0 {
            return Ok(());
        }
        let last = self.start(b - 1, heads - 1) + (rows - 1) * self.row + d - 1;
        if last >= len {
            bail!("fused attention: {what} addresses element {last} of {len}");
        }
        Ok(())
    }
}

/// The sizes of one attention call: batch, query heads, kv heads, queries, keys, head width.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    s: usize,
    d: usize,
}

impl Dims {
    fn groups(&self) -> usize {
        self.h / self.kv
    }

    /// Cached positions before the first query.
    fn past(&self) -> usize {
        self.s - self.t
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    fn check(&self) -> Result<()> {
        let Dims { h, kv, t, s, .. } = *self;
        if kv == 0 || h % kv != 0 {
            bail!("fused attention: {h} query heads do not split into groups over {kv} kv heads");
        }
        if t > s {
            bail!("fused attention: {t} queries over only {s} keys");
        }
        Ok(())
    }
}

/// A raw pointer that tasks on other threads may use: each task writes only the rows of its own
/// (batch, head) pairs, which never overlap (see the SAFETY notes at each use).
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: the pointer is only dereferenced at disjoint offsets from different tasks.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY (of callers): offsets come from `Heads` checked against the buffer's length.
        unsafe { self.0.add(offset) }
    }
}

/// A matrix operand: first element, row stride, column stride (in elements).
type Operand = (*const f32, usize, usize);

/// `dst (m × n) = beta · lhs (m × k) · rhs (k × n)`, or `dst += ...` when `accumulate`, on the
/// calling thread (the tasks are the parallelism).
///
/// # Safety
/// Every operand must address valid memory for its shape and strides, and `dst` no memory that
/// another thread touches meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(m: usize, n: usize, k: usize, dst: (*mut f32, usize, usize), accumulate: bool, lhs: Operand, rhs: Operand, beta: f32) {
    if m == 0 || n == 0 {
        return;
    }
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
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// One call's inputs: q, k and v with their layouts, the per-row key bias (B, S), and the sizes.
struct Inputs<'a> {
    q: (&'a [f32], Heads),
    k: (&'a [f32], Heads),
    v: (&'a [f32], Heads),
    key_bias: Option<&'a [f32]>,
    dims: Dims,
}

impl Inputs<'_> {
    fn check(&self) -> Result<()> {
        let Dims { b, h, kv, t, s, d } = self.dims;
        self.dims.check()?;
        self.q.1.check((b, h, t, d), self.q.0.len(), "q")?;
        self.k.1.check((b, kv, s, d), self.k.0.len(), "k")?;
        self.v.1.check((b, kv, s, d), self.v.0.len(), "v")?;
        if let Some(bias) = self.key_bias
            && bias.len() != b * s
        {
            bail!("fused attention: a key mask of {} values for {b} rows of {s} keys", bias.len());
        }
        Ok(())
    }

    fn ptr(&self, which: (&[f32], Heads), b: usize, h: usize, row: usize) -> *const f32 {
        which.0[which.1.start(b, h) + row * which.1.row..].as_ptr()
    }
}

/// Whether a call is big enough to split across threads.
fn parallel(dims: &Dims) -> bool {
    dims.b * dims.h * dims.t * dims.s.max(dims.d) >= PARALLEL_MIN
}

/// Runs `task(b, kv)` for every (batch, kv head), in parallel when there is enough work.
fn for_groups(dims: &Dims, task: impl Fn(usize, usize) + Sync + Send) {
    let n = dims.b * dims.kv;
    if parallel(dims) {
        (0..n).into_par_iter().for_each(|i| task(i / dims.kv, i % dims.kv));
    } else {
        (0..n).for_each(|i| task(i / dims.kv, i % dims.kv));
    }
}

/// The forward pass: writes `out` (laid out as `out_at`, checked by the caller) and, when
/// `probs` is given, the probabilities (B, H, T, S) into it (zero where masked).
fn forward(inputs: &Inputs, out: Ptr, out_at: Heads, probs: Option<Ptr>) {
    let dims = inputs.dims;
    let Dims { t, s, d, .. } = dims;
    let (groups, past, scale) = (dims.groups(), dims.past(), dims.scale());
    for_groups(&dims, |b, kv| {
        let mut scratch = if probs.is_none() { vec![0f32; BLOCK.min(t) * s] } else { Vec::new() };
        let bias = inputs.key_bias.map(|bias| &bias[b * s..(b + 1) * s]);
        for h in kv * groups..(kv + 1) * groups {
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let (rows, seen) = (r1 - r0, past + r1);
                let p: &mut [f32] = match probs {
                    // SAFETY: rows r0..r1 of (b, h)'s (T, S) probabilities belong to this task
                    // alone; the buffer holds B * H * T * S values.
                    Some(ptr) => unsafe { std::slice::from_raw_parts_mut(ptr.at(((b * dims.h + h) * t + r0) * s), rows * s) },
                    None => &mut scratch[..rows * s],
                };
                // SAFETY: q, k checked by `Inputs::check`; p is rows × s.
                unsafe {
                    product(
                        rows,
                        seen,
                        d,
                        (p.as_mut_ptr(), s, 1),
                        false,
                        (inputs.ptr(inputs.q, b, h, r0), inputs.q.1.row, 1),
                        // kᵀ: (d, seen), element (e, j) at row j of k.
                        (inputs.ptr(inputs.k, b, kv, 0), 1, inputs.k.1.row),
                        scale,
                    )
                };
                for (i, row) in p.chunks_mut(s).enumerate() {
                    let visible = past + r0 + i + 1;
                    wide(#[inline(always)] || softmax_row(&mut row[..visible], bias.map(|bias| &bias[..visible])));
                    row[visible..seen].fill(0.0);
                }
                // SAFETY: out rows r0..r1 of (b, h) are this task's alone and inside the buffer
                // (checked by the caller); v checked by `Inputs::check`.
                unsafe {
                    product(
                        rows,
                        d,
                        seen,
                        (out.at(out_at.start(b, h) + r0 * out_at.row), out_at.row, 1),
                        false,
                        (p.as_ptr(), s, 1),
                        (inputs.ptr(inputs.v, b, kv, 0), inputs.v.1.row, 1),
                        1.0,
                    )
                };
            }
        }
    });
}

/// [`forward`] into fresh buffers: the output (`len` values laid out as `out_at`, which must
/// cover them all, as both callers' layouts do) and, when `keep`, the probabilities (zeroed
/// first: the kernel leaves the keys after each block's last visible one alone).
fn run_forward(inputs: &Inputs, len: usize, out_at: Heads, keep: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let Dims { b, h, t, s, .. } = inputs.dims;
    let mut probs = keep.then(|| vec![0f32; b * h * t * s]);
    let probs_ptr = probs.as_mut().map(|p| Ptr(p.as_mut_ptr()));
    // SAFETY: `forward` writes every output row of every (batch, head) through the pointer (each
    // block's product with v has at least one key).
    let out = unsafe { filled(len, |out| forward(inputs, Ptr(out), out_at, probs_ptr)) };
    (out, probs)
}

/// softmax(row + bias) in place. The diagonal key is always visible and the bias finite, so
/// the row maximum is finite unless the scores are not (NaN and inf propagate).
#[inline(always)]
fn softmax_row(row: &mut [f32], bias: Option<&[f32]>) {
    if let Some(bias) = bias {
        row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
    }
    let m = max(row);
    if !m.is_finite() {
        // Only reachable with non-finite scores: give NaN as the plain composition does.
        row.fill(f32::NAN);
        return;
    }
    row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - m));
    let scale = 1.0 / sum(row);
    row.iter_mut().for_each(|x| *x *= scale);
}

/// Where the backward pass writes dq, dk and dv (zeroed beforehand: dk and dv accumulate over
/// blocks and grouped heads), each laid out like its input.
struct Grads {
    dq: (Ptr, Heads),
    dk: (Ptr, Heads),
    dv: (Ptr, Heads),
}

/// The backward pass from the forward's probabilities `probs` (B, H, T, S), its output `o` and
/// the output's gradient `go` (both laid out as `o_at`).
fn backward(inputs: &Inputs, probs: &[f32], o: &[f32], go: &[f32], o_at: Heads, grads: &Grads) {
    let dims = inputs.dims;
    let Dims { t, s, d, .. } = dims;
    let (groups, past, scale) = (dims.groups(), dims.past(), dims.scale());
    for_groups(&dims, |b, kv| {
        let mut ds = vec![0f32; BLOCK.min(t) * s];
        for h in kv * groups..(kv + 1) * groups {
            let p_head = &probs[(b * dims.h + h) * t * s..(b * dims.h + h + 1) * t * s];
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let (rows, seen) = (r1 - r0, past + r1);
                let go_rows = &go[o_at.start(b, h) + r0 * o_at.row..];
                let p = &p_head[r0 * s..r1 * s];
                let ds = &mut ds[..rows * s];
                // SAFETY: every operand is inside its buffer (checked by the callers); ds is
                // this task's own; dq rows r0..r1 of (b, h) and dk, dv of (b, kv) are written by
                // this task only.
                unsafe {
                    // dP = do vᵀ
                    product(rows, seen, d, (ds.as_mut_ptr(), s, 1), false, (go_rows.as_ptr(), o_at.row, 1), (inputs.ptr(inputs.v, b, kv, 0), 1, inputs.v.1.row), 1.0);
                }
                for i in 0..rows {
                    let visible = past + r0 + i + 1;
                    let at = o_at.start(b, h) + (r0 + i) * o_at.row;
                    let dot: f32 = o[at..at + d].iter().zip(&go[at..at + d]).map(|(a, b)| a * b).sum();
                    let (row, p_row) = (&mut ds[i * s..i * s + seen], &p[i * s..i * s + visible]);
                    wide(#[inline(always)] || row[..visible].iter_mut().zip(p_row).for_each(|(g, &p)| *g = p * (*g - dot)));
                    row[visible..].fill(0.0);
                }
                let (dq, dk, dv) = (&grads.dq, &grads.dk, &grads.dv);
                unsafe {
                    // dq = scale · dS k
                    product(rows, d, seen, (dq.0.at(dq.1.start(b, h) + r0 * dq.1.row), dq.1.row, 1), false, (ds.as_ptr(), s, 1), (inputs.ptr(inputs.k, b, kv, 0), inputs.k.1.row, 1), scale);
                    // dk += scale · dSᵀ q
                    product(seen, d, rows, (dk.0.at(dk.1.start(b, kv)), dk.1.row, 1), true, (ds.as_ptr(), 1, s), (inputs.ptr(inputs.q, b, h, r0), inputs.q.1.row, 1), scale);
                    // dv += Pᵀ do
                    product(seen, d, rows, (dv.0.at(dv.1.start(b, kv)), dv.1.row, 1), true, (p.as_ptr(), 1, s), (go_rows.as_ptr(), o_at.row, 1), 1.0);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// q, k, v as separate tensors.

/// softmax(q kᵀ / sqrt(d) + key_bias, causal) v for q (B, H, T, d) and k, v (B, KV, S, d),
/// H a multiple of KV, S >= T, query i at position S - T + i; `key_bias` additive (B, S).
/// Returns (B, H, T, d). CPU f32 only (the caller checks with `kernels::fused`).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, key_bias: Option<&Tensor>) -> Result<Tensor> {
    let unit_last = |t: &Tensor| -> Result<Tensor> {
        if Heads::of(t.layout()).is_some() { Ok(t.clone()) } else { t.contiguous() }
    };
    let op = Attention { key_bias: bias_values(key_bias)?, keep: q.track_op() || k.track_op() || v.track_op(), probs: Mutex::new(None) };
    unit_last(q)?.apply_op3(&unit_last(k)?, &unit_last(v)?, op)
}

/// The key bias as host values, (B * S).
fn bias_values(key_bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    key_bias.map(|m| m.flatten_all()?.to_vec1::<f32>()).transpose()
}

struct Attention {
    key_bias: Option<Vec<f32>>,
    /// Whether to keep the probabilities for a backward pass.
    keep: bool,
    probs: Mutex<Option<Vec<f32>>>,
}

fn cpu<'a>(storage: &'a CpuStorage, name: &str) -> Result<&'a [f32]> {
    storage.as_slice::<f32>().map_err(|_| candle_core::Error::Msg(format!("{name}: f32 only")))
}

impl Attention {
    fn inputs<'a>(&'a self, q: (&'a [f32], &Layout), k: (&'a [f32], &Layout), v: (&'a [f32], &Layout)) -> Result<Inputs<'a>> {
        let heads = |l: &Layout| Heads::of(l).ok_or_else(|| candle_core::Error::Msg("fused attention: 4-D inputs with a unit last stride".into()));
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
            dims: Dims { b, h, kv, t, s, d },
        };
        inputs.check()?;
        Ok(inputs)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let inputs = self.inputs((cpu(s1, self.name())?, l1), (cpu(s2, self.name())?, l2), (cpu(s3, self.name())?, l3))?;
        let Dims { b, h, t, d, .. } = inputs.dims;
        let (out, probs) = run_forward(&inputs, b * h * t * d, Heads::contiguous(h, t, d), self.keep);
        if let Some(probs) = probs {
            *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(probs) = probs.as_ref() else { bail!("fused attention: no probabilities kept for the backward pass") };
        let grad = grad.contiguous()?;
        let (q_s, q_l) = q.storage_and_layout();
        let (k_s, k_l) = k.storage_and_layout();
        let (v_s, v_l) = v.storage_and_layout();
        let (o_s, _) = out.storage_and_layout();
        let (g_s, g_l) = grad.storage_and_layout();
        let (Storage::Cpu(q_c), Storage::Cpu(k_c), Storage::Cpu(v_c), Storage::Cpu(o_c), Storage::Cpu(g_c)) = (&*q_s, &*k_s, &*v_s, &*o_s, &*g_s) else {
            bail!("fused attention: CPU only")
        };
        let inputs = self.inputs((cpu(q_c, self.name())?, q_l), (cpu(k_c, self.name())?, k_l), (cpu(v_c, self.name())?, v_l))?;
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
                };
                backward(&inputs, probs, o, go, o_at, &grads);
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
    let op = AttentionQkv { heads, inner: Attention { key_bias: bias_values(key_bias)?, keep: qkv.track_op(), probs: Mutex::new(None) } };
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
        let inputs = Inputs { q: (data, q), k: (data, k), v: (data, v), key_bias: self.inner.key_bias.as_deref(), dims };
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
        let (out, probs) = run_forward(&inputs, b * t * h * d, out_at, self.inner.keep);
        if let Some(probs) = probs {
            *self.inner.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let probs = self.inner.probs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(probs) = probs.as_ref() else { bail!("fused attention: no probabilities kept for the backward pass") };
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
        backward(&inputs, probs, o, go, out_at, &Grads { dq: (ptr, q), dk: (ptr, k), dv: (ptr, v) });
        Ok(Some(Tensor::from_vec(dqkv, x_l.shape().clone(), &candle_core::Device::Cpu)?))
    }
}
