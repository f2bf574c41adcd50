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
//! every row finite because the diagonal is never masked. Softmax is composed from tensor ops:
//! `candle_nn::ops::softmax_last_dim` is a fused kernel without a backward pass.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{D, Device, Result, Tensor};

use super::dropout::DropoutRng;
use super::linear::Linear;
use super::rope::Rope;

/// Numerically stable softmax over the last dimension, differentiable everywhere.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    // Subtracting the row max only keeps exp in range; softmax is invariant to it, so the max
    // needs no gradient (detaching it saves its backward pass).
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Grouped-query causal attention. q: (B, H, T, d); k, v: (B, KV, S, d) with H a multiple of KV
/// and S >= T (the last T of the S keys are the queries' own positions); mask: (T, S) additive,
/// or `None` where nothing needs masking (a single new query sees every cached key).
/// Returns (B, H, T, d).
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
        let values: Vec<f32> = (0..t)
            .flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(values, (t, s), &self.device)?;
        if masks.len() >= MAX_CACHED_MASKS {
            masks.clear();
        }
        masks.insert((t, s), mask.clone());
        Ok(Some(mask))
    }
}

/// What one forward pass needs besides its input: where the new tokens sit, their mask, and
/// the dropout generator when training with dropout.
pub(crate) struct Pass<'a> {
    /// Position of the first new token (the number of cached positions).
    pub pos: usize,
    pub mask: Option<Tensor>,
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
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Number of positions cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (a new sequence starts at position 0).
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }
}

/// Appends this step's k, v (B, KV, T, d) to a layer's cache and returns all of them.
fn remember(slot: Option<&mut Option<(Tensor, Tensor)>>, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
    let Some(slot) = slot else { return Ok((k, v)) };
    let (k, v) = match slot.take() {
        Some((past_k, past_v)) => (Tensor::cat(&[&past_k, &k], 2)?, Tensor::cat(&[&past_v, &v], 2)?),
        None => (k, v),
    };
    *slot = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// GPT-2 attention: one fused q/k/v projection (`c_attn`), all heads full width.
#[derive(Debug, Clone)]
pub struct GptAttention {
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub heads: usize,
}

impl GptAttention {
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (h, d) = (self.heads, c / self.heads);
        // (B, T, 3C) -> (3, B, H, T, d): one copy makes q, k and v each contiguous.
        let qkv = self.c_attn.forward(x)?.reshape((b, t, 3, h, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let (k, v) = remember(cache, k, v)?;
        let y = attend(&q, &k, &v, pass.mask.as_ref())?;
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
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        pass: &Pass,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let q = self.q_proj.forward(x)?.reshape((b, t, self.heads, d))?.transpose(1, 2)?;
        let k = self.k_proj.forward(x)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let v = self.v_proj.forward(x)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?.contiguous()?;
        // The rotation writes fresh contiguous tensors, so q and k need no copy of their own.
        let q = rope.apply(&q, pass.pos)?;
        let k = rope.apply(&k, pass.pos)?;
        let (k, v) = remember(cache, k, v)?;
        let y = attend(&q, &k, &v, pass.mask.as_ref())?;
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
