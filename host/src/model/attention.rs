//! Causal self-attention, shared by both families, with grouped-query heads and a KV cache.
//!
//! [`attend`] is the math both families share:
//!
//! ```text
//! att = softmax(q kᵀ / sqrt(d) + mask)      y = att v
//! ```
//!
//! with `H` query heads sharing `KV` key/value heads (`H = KV * groups`, query head `h` reading
//! kv head `h / groups`, as Hugging Face's `repeat_kv` does). Instead of repeating k and v, the
//! query heads of one group are stacked along the time axis, `(B, KV, groups * T, d)`, which is a
//! free reshape of contiguous q: each kv head then meets all of its query heads in one batched
//! matmul, and nothing is copied.
//!
//! The causal mask is an additive `(T, S)` tensor of 0 and -inf, built once per shape and kept
//! (see [`CausalMasks`]); -inf gives exact zeros after the softmax, whose max-subtraction keeps
//! every row finite because the diagonal is never masked. Batches of left-padded prompts add a
//! per-row key mask ([`KEY_PAD`] on pad keys, see [`pass_mask`]): finite, so that a pad query,
//! all of whose keys are pads, still gets a finite (uniform) row rather than NaN. Softmax is
//! composed from tensor ops: `candle_nn::ops::softmax_last_dim` is a fused kernel without a
//! backward pass.
//!
//! That composition is the plain path (`TRIAD_KERNELS=plain`, or tensors other than f32 on the
//! CPU). Otherwise [`attend_pass`] runs the fused kernel (`kernels::causal_attention`), which
//! applies the causal mask as a row length and the key mask as a per-row bias without building
//! either tensor, and GPT-2's attention hands it its `c_attn` output whole
//! (`kernels::causal_attention_qkv`, see `kernels/attention.rs`).
//!
//! The [`KvCache`] holds per layer one `(B, KV, capacity, d)` buffer for keys and one for values,
//! allocated once; each pass writes its new keys and values in place and attends over a view of
//! the filled prefix, so decoding a token copies nothing but that token's keys and values.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{D, DType, Device, Result, Tensor};

use super::dropout::DropoutRng;
use super::linear::{Layout, Linear};
use super::rope::Angles;

/// Numerically stable softmax over the last dimension, differentiable everywhere.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if super::kernels::fused(&[x]) {
        // Fuses the max, subtraction, exp, sum and division below (and their backward).
        return super::kernels::softmax_last_dim(x);
    }
    // Subtracting the row max only keeps exp in range; softmax is invariant to it, so the max
    // needs no gradient (detaching it saves its backward pass).
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Grouped-query causal attention. q: (B, H, T, d); k, v: (B, KV, S, d) with H a multiple of KV
/// and S >= T (the last T of the S keys are the queries' own positions); mask: additive, (T, S)
/// or per row (B, 1, T, S), or `None` where nothing needs masking (a single new query sees every
/// cached key). Returns (B, H, T, d).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let groups = h / kv;
    let q = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, kv, groups * t, d))?;
    let att = q.matmul(&k.t()?)?.reshape((b, h, t, s))?;
    let att = match mask {
        Some(mask) => att.broadcast_add(mask)?,
        None => att,
    };
    let att = softmax_last_dim(&att)?;
    let y = att.reshape((b, kv, groups * t, s))?.matmul(v)?;
    y.reshape((b, h, t, d))
}

/// [`attend`] for a model's pass: every pass is causal (its T queries are the last T of its S
/// positions), plus the pass's per-row key mask if any. On contiguous-enough f32 CPU tensors with
/// the fused kernels in force this is [`kernels::causal_attention`](super::kernels::causal_attention),
/// which never builds the mask; otherwise the plain composition with the pass's additive mask.
pub(crate) fn attend_pass(q: &Tensor, k: &Tensor, v: &Tensor, pass: &Pass) -> Result<Tensor> {
    if super::kernels::fused(&[q, k, v]) {
        return super::kernels::causal_attention(q, k, v, pass.key_mask.as_ref());
    }
    attend(q, k, v, pass.mask.as_ref())
}

/// Additive causal masks, one per (queries, keys) shape, built on first use and kept: training
/// uses one shape for the whole run.
#[derive(Debug)]
pub struct CausalMasks {
    device: Device,
    masks: Mutex<HashMap<(usize, usize), Tensor>>,
}

/// More shapes than this means something (prefill of varying lengths) keeps changing the shape:
/// start over rather than grow without bound.
const MAX_CACHED_MASKS: usize = 16;

impl CausalMasks {
    pub fn new(device: &Device) -> Self {
        CausalMasks { device: device.clone(), masks: Mutex::new(HashMap::new()) }
    }

    /// The mask for `t` queries at positions `s - t .. s` over `s` keys: query i may see key j
    /// iff j <= s - t + i. `None` when nothing is masked (t == 1).
    pub fn get(&self, t: usize, s: usize) -> Result<Option<Tensor>> {
        if t <= 1 {
            return Ok(None);
        }
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mask) = masks.get(&(t, s)) {
            return Ok(Some(mask.clone()));
        }
        let past = s - t;
        let values: Vec<f32> =
            (0..t).flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(values, (t, s), &self.device)?;
        if masks.len() >= MAX_CACHED_MASKS {
            masks.clear();
        }
        masks.insert((t, s), mask.clone());
        Ok(Some(mask))
    }
}

/// The additive mask on a padded key: large and finite (see the module notes).
pub const KEY_PAD: f32 = -1e9;

/// The mask of one pass: the causal (T, S) mask, with a per-row key mask (B, S) of 0 and
/// [`KEY_PAD`] added when some rows are padded, giving (B, 1, T, S).
pub fn pass_mask(causal: Option<Tensor>, key_mask: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Some(key_mask) = key_mask else { return Ok(causal) };
    let (b, s) = key_mask.dims2()?;
    let key_mask = key_mask.reshape((b, 1, 1, s))?;
    match causal {
        Some(causal) => Ok(Some(key_mask.broadcast_add(&causal)?)),
        None => Ok(Some(key_mask)),
    }
}

/// What one forward pass needs besides its input: where the new tokens sit, their mask, and
/// the dropout generator when training with dropout.
pub(crate) struct Pass<'a> {
    /// Position of the first new token (the number of cached positions).
    pub pos: usize,
    /// Per-row positions (B, T) u32 of left-padded rows, replacing `pos..pos + T` for each row.
    pub positions: Option<Tensor>,
    /// Additive, (T, S) or (B, 1, T, S): see [`pass_mask`]. Always causal: the plain
    /// composition's mask.
    pub mask: Option<Tensor>,
    /// The per-row key mask (B, S) alone, 0 or [`KEY_PAD`], when some row is padded: what the
    /// fused kernel adds to its causal scores instead of `mask`.
    pub key_mask: Option<Tensor>,
    /// The generator and probability, only when training with p > 0.
    pub dropout: Option<(&'a DropoutRng, f64)>,
}

impl Pass<'_> {
    /// Dropout when training, identity otherwise.
    pub fn drop(&self, x: &Tensor) -> Result<Tensor> {
        match self.dropout {
            Some((rng, p)) => rng.apply(x, p),
            None => Ok(x.clone()),
        }
    }
}

/// Keys and values of every position seen so far, per layer, for incremental decoding.
///
/// Buffers are allocated on the first pass, for [`KvCache::with_capacity`] positions or the
/// first pass's length if more, and written in place after that; a cache that fills up grows by
/// doubling (one copy), up to the model's context. The cache is for inference: nothing written
/// into it carries a gradient.
#[derive(Debug, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerKv>,
    pub(crate) len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache that allocates on first use (the length of the first pass).
    pub fn new() -> Self {
        KvCache::default()
    }

    /// An empty cache whose buffers will hold `positions` positions without growing.
    pub fn with_capacity(positions: usize) -> Self {
        KvCache { capacity: positions, ..KvCache::default() }
    }

    /// Number of positions cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (a new sequence starts at position 0); the buffers are dropped.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }

    /// Makes room for `needed` positions in `layers` layers of (b, kv, _, d) keys and values,
    /// never beyond `limit` (the context).
    pub(crate) fn reserve(
        &mut self,
        layers: usize,
        (b, kv, d): (usize, usize, usize),
        needed: usize,
        limit: usize,
        device: &Device,
    ) -> Result<()> {
        if self.layers.is_empty() {
            let capacity = self.capacity.max(needed).min(limit.max(needed));
            let zeros = || Tensor::zeros((b, kv, capacity, d), DType::F32, device);
            self.layers = (0..layers).map(|_| Ok(LayerKv { k: zeros()?, v: zeros()? })).collect::<Result<_>>()?;
            return Ok(());
        }
        let (cb, ckv, capacity, cd) = self.layers[0].k.dims4()?;
        if (cb, ckv, cd) != (b, kv, d) {
            candle_core::bail!(
                "the KV cache holds batch {cb} x {ckv} heads x {cd} dims, this pass has {b} x {kv} x {d}"
            );
        }
        if needed > capacity {
            let grown = (2 * capacity).max(needed).min(limit.max(needed));
            let extra = Tensor::zeros((b, kv, grown - capacity, d), DType::F32, device)?;
            for layer in &mut self.layers {
                layer.k = Tensor::cat(&[&layer.k, &extra], 2)?;
                layer.v = Tensor::cat(&[&layer.v, &extra], 2)?;
            }
        }
        Ok(())
    }
}

/// One layer's key and value buffers, (B, KV, capacity, d), filled up to the cache's length.
#[derive(Debug)]
pub(crate) struct LayerKv {
    k: Tensor,
    v: Tensor,
}

impl LayerKv {
    /// Writes this pass's k, v (B, KV, T, d) after the `past` cached positions and returns the
    /// keys and values of all `past + T` positions (views of the buffers: nothing is copied).
    fn append(&self, k: &Tensor, v: &Tensor, past: usize) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        self.k.slice_set(k, 2, past)?;
        self.v.slice_set(v, 2, past)?;
        Ok((self.k.narrow(2, 0, past + t)?, self.v.narrow(2, 0, past + t)?))
    }
}

/// This pass's keys and values, joined to the cached ones when there is a cache.
fn remember(cache: Option<&LayerKv>, k: Tensor, v: Tensor, past: usize) -> Result<(Tensor, Tensor)> {
    match cache {
        Some(layer) => layer.append(&k, &v, past),
        None => Ok((k, v)),
    }
}

/// GPT-2 attention: one fused q/k/v projection (`c_attn`), all heads full width.
#[derive(Debug, Clone)]
pub struct GptAttention {
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub heads: usize,
}

impl GptAttention {
    pub(crate) fn forward(&self, x: &Tensor, pass: &Pass, cache: Option<&LayerKv>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (h, d) = (self.heads, c / self.heads);
        if super::kernels::fused(&[x]) {
            // One product for q, k and v together, read in place by the fused kernel.
            let qkv = self.c_attn.forward(x)?;
            let y = match cache {
                // The kernel reads q, k, v straight out of the projection and writes the heads
                // side by side, as c_proj reads them: no narrowed weights, transposes or copies.
                None => super::kernels::causal_attention_qkv(&qkv, h, pass.key_mask.as_ref())?,
                Some(layer) => {
                    // (B, H, T, d) views of the thirds; only k and v are copied, into the cache.
                    let qkv = qkv.reshape((b, t, 3, h, d))?;
                    let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
                    let (k, v) = layer.append(&part(1)?.contiguous()?, &part(2)?.contiguous()?, pass.pos)?;
                    let y = super::kernels::causal_attention(&part(0)?, &k, &v, pass.key_mask.as_ref())?;
                    y.transpose(1, 2)?.reshape((b, t, c))?
                }
            };
            return self.c_proj.forward(&y);
        }
        // q, k and v each from its third of c_attn, (B, T, C) -> (B, H, T, d). The thirds are
        // views of the weight, so the backward pass pads a (C, C) weight gradient with zeros
        // (candle's backward of `narrow`) rather than (B, T, 3C) activations.
        let third = |i: usize| -> Result<Tensor> {
            let dim = match self.c_attn.layout {
                Layout::InOut => 1,
                Layout::OutIn => 0,
            };
            let projection = Linear {
                weight: self.c_attn.weight.narrow(dim, i * c, c)?,
                bias: self.c_attn.bias.as_ref().map(|bias| bias.narrow(0, i * c, c)).transpose()?,
                layout: self.c_attn.layout,
            };
            projection.forward(x)?.reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (third(0)?, third(1)?, third(2)?);
        let (k, v) = remember(cache, k, v, pass.pos)?;
        let y = attend_pass(&q, &k, &v, pass)?;
        let y = y.transpose(1, 2)?.reshape((b, t, c))?;
        self.c_proj.forward(&y)
    }
}

/// Llama attention: separate projections, RoPE on q and k, `kv_heads` key/value heads.
#[derive(Debug, Clone)]
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl LlamaAttention {
    pub(crate) fn forward(&self, x: &Tensor, rope: &Angles, pass: &Pass, cache: Option<&LayerKv>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let q = self.q_proj.forward(x)?.reshape((b, t, self.heads, d))?.transpose(1, 2)?;
        let k = self.k_proj.forward(x)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let v = self.v_proj.forward(x)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?.contiguous()?;
        // The rotation writes fresh contiguous tensors, so q and k need no copy of their own.
        let q = rope.rotate(&q)?;
        let k = rope.rotate(&k)?;
        let (k, v) = remember(cache, k, v, pass.pos)?;
        let y = attend_pass(&q, &k, &v, pass)?;
        let y = y.transpose(1, 2)?.reshape((b, t, self.heads * d))?;
        self.o_proj.forward(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{normal_values, stream};

    fn random(seed: u64, shape: (usize, usize, usize, usize)) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Tensor::from_vec(normal_values(&mut stream(seed, "attn"), n, 1.0), shape, &Device::Cpu)
    }

    /// Causal attention written out with loops over explicitly repeated kv heads (query head h
    /// reads kv head h / groups, as Hugging Face's `repeat_kv`), sharing no code with `attend`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Vec<f32>> {
        let (b, h, t, d) = q.dims4()?;
        let kv = k.dim(1)?;
        let groups = h / kv;
        let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
        let (q, k, v) = (flat(q)?, flat(k)?, flat(v)?);
        let qi = |bi: usize, hi: usize, ti: usize| ((bi * h + hi) * t + ti) * d;
        let ki = |bi: usize, hi: usize, ti: usize| ((bi * kv + hi) * t + ti) * d;
        let mut out = vec![0f32; b * h * t * d];
        for bi in 0..b {
            for hi in 0..h {
                let kh = hi / groups;
                for ti in 0..t {
                    let scores: Vec<f64> = (0..=ti)
                        .map(|j| {
                            (0..d).map(|e| q[qi(bi, hi, ti) + e] as f64 * k[ki(bi, kh, j) + e] as f64).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        let p = (s - max).exp() / z;
                        for e in 0..d {
                            out[qi(bi, hi, ti) + e] += (p * v[ki(bi, kh, j) + e] as f64) as f32;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn grouped_heads_match_repeated_kv_heads() -> Result<()> {
        let (b, h, kv, t, d) = (2, 6, 2, 5, 4);
        let q = random(1, (b, h, t, d))?;
        let k = random(2, (b, kv, t, d))?;
        let v = random(3, (b, kv, t, d))?;
        let masks = CausalMasks::new(&Device::Cpu);
        let ours = attend(&q, &k, &v, masks.get(t, t)?.as_ref())?.flatten_all()?.to_vec1::<f32>()?;
        let want = reference(&q, &k, &v)?;
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn masks_let_each_query_see_its_past_only() -> Result<()> {
        let masks = CausalMasks::new(&Device::Cpu);
        assert!(masks.get(1, 9)?.is_none());
        let m = masks.get(2, 4)?.expect("mask").to_vec2::<f32>()?;
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![0., 0., 0., inf], vec![0., 0., 0., 0.]]);
        Ok(())
    }

    #[test]
    fn softmax_matches_candle_and_has_a_gradient() -> Result<()> {
        let x = candle_core::Var::from_tensor(&random(4, (1, 2, 3, 5))?)?;
        let ours = softmax_last_dim(&x)?;
        let theirs = candle_nn::ops::softmax_last_dim(&x)?;
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        let w = random(5, (1, 2, 3, 5))?;
        let g = (ours * w)?.sum_all()?.backward()?;
        let g = g.get(&x).expect("gradient").abs()?.sum_all()?.to_scalar::<f32>()?;
        assert!(g > 0.0);
        Ok(())
    }
}
