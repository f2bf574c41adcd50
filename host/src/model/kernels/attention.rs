//! Fused causal attention for the CPU: `softmax(q kᵀ / sqrt(d) + key bias, causally masked) v`,
//! forward and backward, with grouped-query heads.
//!
//! The plain composition (see `model::attention::attend`) scales q in a pass of its own,
//! multiplies out every (T, S) score, adds a materialised -inf mask, runs the softmax and
//! multiplies by v, and its backward retraces each of those ops with a fresh tensor apiece. Here
//! each (batch, kv head) is one task on candle's thread pool, and within it each query head works
//! through blocks of [`BLOCK`] query rows, and each block through tiles of [`KEY_BLOCK`] keys
//! with an online softmax (FlashAttention-2, Dao 2023):
//!
//! ```text
//! forward, per block, per key tile:
//!     S = q kᵀ · scale + bias                      over the keys the block's last row can see
//!     m' = max(m, rowmax S),  a = e^(m - m'),  P = e^(S - m')
//!     l = a l + rowsum P,  o = a o + P v,  m = m'
//! then o = o / l, and (m, 1 / l) of every row are kept for the backward
//! backward, per block, per key tile (P recomputed from q, k and (m, l)):
//!     P = e^(S - m) / l,  dP = do vᵀ,  dS = P ⊙ (dP - rowsum(do ⊙ o))
//!     dq += scale · dS k,  dk += scale · dSᵀ q,  dv += Pᵀ do
//! ```
//!
//! Keys after a block's last visible one are never multiplied (about half the work of a full
//! causal pass); the mask costs nothing but a row length. Memory is linear in the context: two
//! numbers per query row are kept, never the (T, S) probabilities (which at SmolLM2's 2,048
//! positions would be 150 MiB per layer and row of the batch). The price is one more product
//! per tile in the backward (about 2% of the reference workload's step). Query i of T sits at
//! position `S - T + i` and sees keys `0..=S - T + i`, which is both training (S = T) and
//! decoding after a KV cache (T new queries after S - T cached keys).
//!
//! The optional key bias (B, S) is the per-row mask of left-padded batches: [`KEY_PAD`] on pad
//! keys, 0 elsewhere, added to the scaled scores before the softmax, as the plain path adds it.
//!
//! T5's attention runs on the same kernel: unscaled scores, every key visible (the encoder and
//! cross-attention) or causal (the decoder), and a learned position bias (H, T, S) added to the
//! scores, whose gradient is the scores' gradient `dS` summed over the batch.
//!
//! Two entry points share the kernel: [`causal_attention`] for q (B, H, T, d) and k, v
//! (B, KV, S, d) in any strides whose last one is 1 (views into a KV cache included), and
//! [`causal_attention_qkv`] for GPT-2's fused projection, which reads q, k and v straight out of
//! the (B, T, 3C) `c_attn` output and writes (B, T, C) as `c_proj` reads it: no head transposes,
//! no copies, and one gradient tensor for the three thirds instead of three narrowed ones.
//!
//! [`KEY_PAD`]: crate::model::attention::KEY_PAD

use candle_core::{Layout, Result, bail};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::{PARALLEL_MIN, exp_nonpositive, filled, max, sum, wide};

/// Query rows per block: large enough for efficient matrix products, small enough that the
/// causal skipping saves most of the masked half.
const BLOCK: usize = 64;

/// Keys per tile of the online softmax: a block's scores, rows × tile, stay in the core's cache
/// (32 KiB) whatever the context.
const KEY_BLOCK: usize = 128;

/// Where each head's (rows, d) matrix sits in a flat buffer: element (row, col) of head `h` of
/// batch `b` at `offset + b * batch + h * head + row * row_stride + col`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    pub(super) offset: usize,
    pub(super) batch: usize,
    pub(super) head: usize,
    pub(super) row: usize,
}

impl Heads {
    pub(super) fn start(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.batch + h * self.head
    }

    /// A contiguous (B, H, rows, d) tensor.
    pub(super) fn contiguous(heads: usize, rows: usize, d: usize) -> Heads {
        Heads { offset: 0, batch: heads * rows * d, head: rows * d, row: d }
    }

    /// A 4-D (B, H, rows, d) layout whose last dimension has unit stride.
    pub(super) fn of(layout: &Layout) -> Option<Heads> {
        match (layout.stride(), layout.dims()) {
            ([b, h, r, 1], [_, _, _, _]) => Some(Heads { offset: layout.start_offset(), batch: *b, head: *h, row: *r }),
            _ => None,
        }
    }

    /// Fails unless every element of `b` batches of `heads` (rows, d) matrices lies inside `len`:
    /// the kernel's raw-pointer products rely on it.
    pub(super) fn check(
        &self,
        (b, heads, rows, d): (usize, usize, usize, usize),
        len: usize,
        what: &str,
    ) -> Result<()> {
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
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) h: usize,
    pub(super) kv: usize,
    pub(super) t: usize,
    pub(super) s: usize,
    pub(super) d: usize,
}

impl Dims {
    pub(super) fn groups(&self) -> usize {
        self.h / self.kv
    }

    /// Cached positions before the first query.
    pub(super) fn past(&self) -> usize {
        self.s - self.t
    }

    pub(super) fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    pub(super) fn check(&self) -> Result<()> {
        let Dims { h, kv, .. } = *self;
        if kv == 0 || h % kv != 0 {
            bail!("fused attention: {h} query heads do not split into groups over {kv} kv heads");
        }
        Ok(())
    }
}

/// A raw pointer that tasks on other threads may use: each task writes only the rows of its own
/// (batch, head) pairs, which never overlap (see the SAFETY notes at each use).
#[derive(Clone, Copy)]
pub(super) struct Ptr(pub(super) *mut f32);
// SAFETY: the pointer is only dereferenced at disjoint offsets from different tasks.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    pub(super) fn at(self, offset: usize) -> *mut f32 {
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
pub(super) unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    beta: f32,
) {
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

/// One call's inputs: q, k and v with their layouts, the per-row key bias (B, S), the position
/// bias (H, T, S), the sizes, whether keys after a query's position are hidden, and the scores'
/// scale.
pub(super) struct Inputs<'a> {
    pub(super) q: (&'a [f32], Heads),
    pub(super) k: (&'a [f32], Heads),
    pub(super) v: (&'a [f32], Heads),
    pub(super) key_bias: Option<&'a [f32]>,
    pub(super) position_bias: Option<&'a [f32]>,
    pub(super) dims: Dims,
    pub(super) causal: bool,
    pub(super) scale: f32,
}

impl Inputs<'_> {
    pub(super) fn check(&self) -> Result<()> {
        let Dims { b, h, kv, t, s, d } = self.dims;
        self.dims.check()?;
        // Causal query i sits at position S - T + i: there must be that many keys.
        if self.causal && t > s {
            bail!("fused attention: {t} causal queries over only {s} keys");
        }
        self.q.1.check((b, h, t, d), self.q.0.len(), "q")?;
        self.k.1.check((b, kv, s, d), self.k.0.len(), "k")?;
        self.v.1.check((b, kv, s, d), self.v.0.len(), "v")?;
        if let Some(bias) = self.key_bias
            && bias.len() != b * s
        {
            bail!("fused attention: a key mask of {} values for {b} rows of {s} keys", bias.len());
        }
        if let Some(bias) = self.position_bias
            && bias.len() != h * t * s
        {
            bail!("fused attention: a position bias of {} values for {h} heads of {t} x {s} scores", bias.len());
        }
        Ok(())
    }

    /// How many keys query row `row` sees: all of them, or up to its position when causal.
    fn seen(&self, row: usize) -> usize {
        if self.causal { self.dims.past() + row + 1 } else { self.dims.s }
    }

    /// Adds the position bias of query `row` of head `h` over keys `j0..j0 + x.len()` to `x`.
    #[inline(always)]
    fn add_position_bias(&self, x: &mut [f32], h: usize, row: usize, j0: usize) {
        if let Some(bias) = self.position_bias {
            let Dims { t, s, .. } = self.dims;
            let (at, n) = ((h * t + row) * s + j0, x.len());
            x.iter_mut().zip(&bias[at..at + n]).for_each(|(x, b)| *x += b);
        }
    }

    pub(super) fn ptr(&self, which: (&[f32], Heads), b: usize, h: usize, row: usize) -> *const f32 {
        which.0[which.1.start(b, h) + row * which.1.row..].as_ptr()
    }
}

/// Whether a call is big enough to split across threads.
pub(super) fn parallel(dims: &Dims) -> bool {
    dims.b * dims.h * dims.t * dims.s.max(dims.d) >= PARALLEL_MIN
}

/// Runs `task(b, kv)` for every (batch, kv head), in parallel when there is enough work.
pub(super) fn for_groups(dims: &Dims, task: impl Fn(usize, usize) + Sync + Send) {
    let n = dims.b * dims.kv;
    if parallel(dims) {
        (0..n).into_par_iter().for_each(|i| task(i / dims.kv, i % dims.kv));
    } else {
        (0..n).for_each(|i| task(i / dims.kv, i % dims.kv));
    }
}

/// The forward pass: writes `out` (laid out as `out_at`, checked by the caller) and, when
/// `stats` is given, each query row's [`RowStats`] (B, H, T) into it.
pub(super) fn forward(inputs: &Inputs, out: Ptr, out_at: Heads, stats: Option<Ptr>) {
    let dims = inputs.dims;
    let Dims { t, s, d, .. } = dims;
    let groups = dims.groups();
    let width = KEY_BLOCK.min(s);
    for_groups(&dims, |b, kv| {
        let mut p = vec![0f32; BLOCK.min(t) * width];
        let mut row_stats = vec![RowStats::EMPTY; BLOCK.min(t)];
        let bias = inputs.key_bias.map(|bias| &bias[b * s..(b + 1) * s]);
        for h in kv * groups..(kv + 1) * groups {
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let (rows, seen) = (r1 - r0, inputs.seen(r1 - 1));
                let row_stats = &mut row_stats[..rows];
                row_stats.fill(RowStats::EMPTY);
                let o_row = |i: usize| out.at(out_at.start(b, h) + (r0 + i) * out_at.row);
                for j0 in (0..seen).step_by(KEY_BLOCK) {
                    let cols = KEY_BLOCK.min(seen - j0);
                    // SAFETY: q, k checked by `Inputs::check`; p is rows × width.
                    unsafe { scores(inputs, (b, h, kv), (r0, rows), (j0, cols), &mut p) };
                    for (i, stats) in row_stats.iter_mut().enumerate() {
                        let visible = inputs.seen(r0 + i).saturating_sub(j0).min(cols);
                        let row = &mut p[i * width..i * width + cols];
                        row[visible..].fill(0.0);
                        if visible == 0 {
                            continue;
                        }
                        inputs.add_position_bias(&mut row[..visible], h, r0 + i, j0);
                        let alpha = wide(
                            #[inline(always)]
                            || stats.absorb(&mut row[..visible], bias.map(|bias| &bias[j0..j0 + visible])),
                        );
                        if j0 > 0 && alpha != 1.0 {
                            // SAFETY: output row r0 + i of (b, h) is this task's alone and
                            // inside the buffer (checked by the caller); it holds d values.
                            let o = unsafe { std::slice::from_raw_parts_mut(o_row(i), d) };
                            o.iter_mut().for_each(|x| *x *= alpha);
                        }
                    }
                    // SAFETY: out rows r0..r1 of (b, h) are this task's alone and inside the
                    // buffer (checked by the caller); v checked by `Inputs::check`. The first
                    // tile overwrites them: every row sees key 0.
                    unsafe {
                        product(
                            rows,
                            d,
                            cols,
                            (o_row(0), out_at.row, 1),
                            j0 > 0,
                            (p.as_ptr(), width, 1),
                            (inputs.ptr(inputs.v, b, kv, j0), inputs.v.1.row, 1),
                            1.0,
                        )
                    };
                }
                for (i, row) in row_stats.iter().enumerate() {
                    // SAFETY: as above.
                    let o = unsafe { std::slice::from_raw_parts_mut(o_row(i), d) };
                    o.iter_mut().for_each(|x| *x *= row.inv_sum());
                    if let Some(ptr) = stats {
                        let at = ((b * dims.h + h) * t + r0 + i) * 2;
                        // SAFETY: row r0 + i of (b, h) is this task's alone; the buffer holds
                        // B * H * T * 2 values.
                        unsafe {
                            std::slice::from_raw_parts_mut(ptr.at(at), 2).copy_from_slice(&[row.max, row.inv_sum()])
                        };
                    }
                }
            }
        }
    });
}

/// `scale · q kᵀ` for query rows `r0..r0 + rows` of head `h` and keys `j0..j0 + cols` of kv
/// head `kv` of batch `b`, into `p` (rows of stride [`KEY_BLOCK`].min(S)).
///
/// # Safety
/// q and k must have been checked by [`Inputs::check`], and `p` hold rows × that stride values.
unsafe fn scores(
    inputs: &Inputs,
    (b, h, kv): (usize, usize, usize),
    (r0, rows): (usize, usize),
    (j0, cols): (usize, usize),
    p: &mut [f32],
) {
    let width = KEY_BLOCK.min(inputs.dims.s);
    debug_assert!(p.len() >= rows * width && cols <= width);
    // SAFETY: forwarded from the caller.
    unsafe {
        product(
            rows,
            cols,
            inputs.dims.d,
            (p.as_mut_ptr(), width, 1),
            false,
            (inputs.ptr(inputs.q, b, h, r0), inputs.q.1.row, 1),
            // kᵀ: (d, cols), element (e, j) at row j0 + j of k.
            (inputs.ptr(inputs.k, b, kv, j0), 1, inputs.k.1.row),
            inputs.scale,
        )
    }
}

/// A query row's softmax so far, over the key tiles it has absorbed: the largest biased score
/// `max` and the sum of e^(score - max). Kept per row for the backward pass, which rebuilds each
/// probability as e^(score + bias - max) / sum from the recomputed score. Two numbers rather than
/// their log-sum-exp: a row of pad keys has scores near [`KEY_PAD`](crate::model::attention::KEY_PAD)
/// = -1e9, where f32 steps by 64 and `max + ln(sum)` would round the sum away.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowStats {
    pub(super) max: f32,
    pub(super) sum: f32,
}

impl RowStats {
    const EMPTY: RowStats = RowStats { max: f32::NEG_INFINITY, sum: 0.0 };

    fn inv_sum(&self) -> f32 {
        1.0 / self.sum
    }

    /// Takes in one tile's scores of this row (all visible): adds the bias, turns the scores into
    /// e^(score - new max) in place and returns the factor alpha = e^(old max - new max) by which
    /// the sum (updated here) and the caller's output row so far must be rescaled (0 for the
    /// first tile). The diagonal key is always visible and the bias finite, so the maximum is
    /// finite unless the scores are not: then the row, its output and its stats become NaN, as
    /// the plain composition gives.
    #[inline(always)]
    fn absorb(&mut self, row: &mut [f32], bias: Option<&[f32]>) -> f32 {
        if let Some(bias) = bias {
            row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
        }
        let new_max = max(row).max(self.max);
        if !new_max.is_finite() || self.max.is_nan() {
            row.fill(f32::NAN);
            *self = RowStats { max: f32::NAN, sum: f32::NAN };
            return f32::NAN;
        }
        let alpha = (self.max - new_max).exp();
        row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - new_max));
        *self = RowStats { max: new_max, sum: self.sum * alpha + sum(row) };
        alpha
    }
}

/// [`forward`] into fresh buffers: the output (`len` values laid out as `out_at`, which must
/// cover them all, as both callers' layouts do) and, when `keep`, the [`RowStats`] of every
/// query row as (max, 1 / sum) pairs, (B, H, T, 2).
pub(super) fn run_forward(inputs: &Inputs, len: usize, out_at: Heads, keep: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let Dims { b, h, t, .. } = inputs.dims;
    let mut stats = keep.then(|| vec![0f32; b * h * t * 2]);
    let stats_ptr = stats.as_mut().map(|p| Ptr(p.as_mut_ptr()));
    // SAFETY: `forward` writes every output row of every (batch, head) through the pointer (the
    // first key tile's product overwrites each).
    let out = unsafe { filled(len, |out| forward(inputs, Ptr(out), out_at, stats_ptr)) };
    (out, stats)
}

/// Where the backward pass writes dq, dk and dv (zeroed beforehand: dk and dv accumulate over
/// blocks and grouped heads), each laid out like its input, and the position bias's gradient
/// per batch row, (B, H, T, S), zeroed beforehand (the caller sums it over B).
pub(super) struct Grads {
    pub(super) dq: (Ptr, Heads),
    pub(super) dk: (Ptr, Heads),
    pub(super) dv: (Ptr, Heads),
    pub(super) dbias: Option<Ptr>,
}

/// The backward pass from the forward's row stats `stats` (B, H, T, 2), its output `o` and the
/// output's gradient `go` (both laid out as `o_at`). Each tile's probabilities are recomputed
/// from q, k and the stats.
pub(super) fn backward(inputs: &Inputs, stats: &[f32], o: &[f32], go: &[f32], o_at: Heads, grads: &Grads) {
    let dims = inputs.dims;
    let Dims { t, s, d, .. } = dims;
    let (groups, scale) = (dims.groups(), inputs.scale);
    let width = KEY_BLOCK.min(s);
    for_groups(&dims, |b, kv| {
        let (mut p, mut ds) = (vec![0f32; BLOCK.min(t) * width], vec![0f32; BLOCK.min(t) * width]);
        let mut dots = vec![0f32; BLOCK.min(t)];
        let bias = inputs.key_bias.map(|bias| &bias[b * s..(b + 1) * s]);
        for h in kv * groups..(kv + 1) * groups {
            let head_stats = &stats[(b * dims.h + h) * t * 2..(b * dims.h + h + 1) * t * 2];
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let (rows, seen) = (r1 - r0, inputs.seen(r1 - 1));
                let go_rows = &go[o_at.start(b, h) + r0 * o_at.row..];
                for (i, dot) in dots[..rows].iter_mut().enumerate() {
                    let at = o_at.start(b, h) + (r0 + i) * o_at.row;
                    *dot = o[at..at + d].iter().zip(&go[at..at + d]).map(|(a, b)| a * b).sum();
                }
                let (dq, dk, dv) = (&grads.dq, &grads.dk, &grads.dv);
                for j0 in (0..seen).step_by(KEY_BLOCK) {
                    let cols = KEY_BLOCK.min(seen - j0);
                    // SAFETY: every operand is inside its buffer (checked by the callers); p and
                    // ds are this task's own.
                    unsafe {
                        scores(inputs, (b, h, kv), (r0, rows), (j0, cols), &mut p);
                        // dP = do vᵀ
                        product(
                            rows,
                            cols,
                            d,
                            (ds.as_mut_ptr(), width, 1),
                            false,
                            (go_rows.as_ptr(), o_at.row, 1),
                            (inputs.ptr(inputs.v, b, kv, j0), 1, inputs.v.1.row),
                            1.0,
                        );
                    }
                    for i in 0..rows {
                        let visible = inputs.seen(r0 + i).saturating_sub(j0).min(cols);
                        let (max, inv_sum) = (head_stats[(r0 + i) * 2], head_stats[(r0 + i) * 2 + 1]);
                        let (p_row, ds_row) =
                            (&mut p[i * width..i * width + cols], &mut ds[i * width..i * width + cols]);
                        let (bias, dot) = (bias.map(|bias| &bias[j0..j0 + visible]), dots[i]);
                        inputs.add_position_bias(&mut p_row[..visible], h, r0 + i, j0);
                        wide(
                            #[inline(always)]
                            || {
                                // P = e^(score + bias - max) / sum, dS = P ⊙ (dP - rowsum(do ⊙ o))
                                if let Some(bias) = bias {
                                    p_row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
                                }
                                p_row[..visible].iter_mut().for_each(|x| *x = exp_nonpositive(*x - max) * inv_sum);
                                ds_row[..visible]
                                    .iter_mut()
                                    .zip(&p_row[..visible])
                                    .for_each(|(g, &p)| *g = p * (*g - dot));
                            },
                        );
                        p_row[visible..].fill(0.0);
                        ds_row[visible..].fill(0.0);
                        if let Some(dbias) = grads.dbias {
                            let at = ((b * dims.h + h) * t + r0 + i) * s + j0;
                            // SAFETY: row r0 + i of (b, h) is this task's alone; the buffer holds
                            // B * H * T * S values (the caller's).
                            let out = unsafe { std::slice::from_raw_parts_mut(dbias.at(at), visible) };
                            out.copy_from_slice(&ds_row[..visible]);
                        }
                    }
                    // SAFETY: as above; dq rows r0..r1 of (b, h) and dk, dv of (b, kv) are
                    // written by this task only. The first tile overwrites dq's rows.
                    unsafe {
                        // dq (+)= scale · dS k
                        product(
                            rows,
                            d,
                            cols,
                            (dq.0.at(dq.1.start(b, h) + r0 * dq.1.row), dq.1.row, 1),
                            j0 > 0,
                            (ds.as_ptr(), width, 1),
                            (inputs.ptr(inputs.k, b, kv, j0), inputs.k.1.row, 1),
                            scale,
                        );
                        // dk += scale · dSᵀ q
                        product(
                            cols,
                            d,
                            rows,
                            (dk.0.at(dk.1.start(b, kv) + j0 * dk.1.row), dk.1.row, 1),
                            true,
                            (ds.as_ptr(), 1, width),
                            (inputs.ptr(inputs.q, b, h, r0), inputs.q.1.row, 1),
                            scale,
                        );
                        // dv += Pᵀ do
                        product(
                            cols,
                            d,
                            rows,
                            (dv.0.at(dv.1.start(b, kv) + j0 * dv.1.row), dv.1.row, 1),
                            true,
                            (p.as_ptr(), 1, width),
                            (go_rows.as_ptr(), o_at.row, 1),
                            1.0,
                        );
                    }
                }
            }
        }
    });
}
