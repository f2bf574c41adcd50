//! T5, the encoder-decoder Transformer (Raffel et al. 2020): T5 v1.1 (gated-GELU feed-forward,
//! untied LM head) and the original T5 (ReLU feed-forward, LM head tied to the embedding with
//! the `d_model^-0.5` rescale), under Hugging Face `T5ForConditionalGeneration`'s parameter
//! names, so that its folders load as they are.
//!
//! Each stack is a pre-norm residual Transformer:
//!
//! ```text
//! h = embed(ids)                                            (B, T, D)
//! for each block:
//!     h = h + SelfAttention(norm(h), bias)                  encoder: every key; decoder: causal
//!     h = h + CrossAttention(norm(h), encoder output)       decoder only
//!     h = h + FeedForward(norm(h))
//! out = norm(h)
//! logits = out · lm_headᵀ          (tied: (out · D^-0.5) · embedᵀ)
//! ```
//!
//! with RMS norms (no mean subtraction, no bias), no biases anywhere, and unscaled attention
//! scores `q·kᵀ` (T5 folds `1/sqrt(d_kv)` into its initialisation) plus a learned bias per head
//! and relative-position bucket, made by the first block of a stack and shared by all its blocks
//! (cross-attention has none). On the CPU the fused kernels of `kernels` run the linear maps,
//! norms, GELU, the LM head with its cross-entropy, and attention (`kernels::t5_attention`: the
//! position bias inside the flash-style kernel, keys and values from one product, no head
//! transposes), each with its own backward pass; `TRIAD_KERNELS=plain` keeps the plain
//! differentiable tensor ops.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::attention::softmax_last_dim;
use super::generate::{Generated, SamplingConfig, draw_step};
use super::init::{self, Init, ParamSpec};
use super::kernels;
use super::linear::{Layout, Linear};
use super::norm::RmsNorm;
use super::{ModelError, WithContext};

/// The feed-forward half of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedForward {
    /// T5 v1.1: `wo(gelu_tanh(wi_0 x) * wi_1 x)`.
    GatedGelu,
    /// The original T5: `wo(relu(wi x))`.
    Relu,
}

/// The shape of a T5 model; the fields are Hugging Face's `T5Config` names. In an experiment
/// file:
///
/// ```ron
/// model: T5(d_model: 128, d_kv: 32, d_ff: 384, num_layers: 2, num_decoder_layers: 2, num_heads: 4, context: 64),
/// ```
///
/// with T5 v1.1's defaults for the rest (32 buckets up to distance 128, gated GELU, untied
/// head, epsilon 1e-6, the vocabulary size from the tokenizer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T5Config {
    /// Vocabulary size; 0 means "take it from the tokenizer".
    #[serde(default)]
    pub vocab_size: usize,
    /// The longest encoder input and the longest decoder input the stages lay out (T5 itself
    /// has no position table; Hugging Face's `n_positions`).
    #[serde(default = "default_context")]
    pub context: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head's queries, keys and values.
    pub d_kv: usize,
    /// Width of the feed-forward layer.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks.
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    /// Relative-position buckets (half of them per direction in the encoder).
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distances from here on share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_feed_forward")]
    pub feed_forward: FeedForward,
    /// The LM head is the embedding (the original T5) or a matrix of its own (v1.1).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The token the decoder starts from (the pad token, 0, in every released T5; the
    /// end-of-text token, 0, in a tokenizer trained here).
    #[serde(default)]
    pub decoder_start_token_id: u32,
}

fn default_context() -> usize {
    512
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_epsilon() -> f64 {
    1e-6
}
fn default_feed_forward() -> FeedForward {
    FeedForward::GatedGelu
}

impl T5Config {
    /// Read a Hugging Face `config.json` of `model_type` "t5", refusing what the blocks here do
    /// not implement.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<T5Config, String> {
        if json.get("model_type").and_then(serde_json::Value::as_str) != Some("t5") {
            return Err(format!(
                "`model_type` is {}, not \"t5\"",
                json.get("model_type").unwrap_or(&serde_json::Value::Null)
            ));
        }
        let int = |key: &str| -> Result<usize, String> {
            json.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("missing or non-integer `{key}`"))
        };
        let feed_forward = match json.get("feed_forward_proj").and_then(serde_json::Value::as_str).unwrap_or("relu") {
            "relu" => FeedForward::Relu,
            "gated-gelu" => FeedForward::GatedGelu,
            other => {
                return Err(format!(
                    "`feed_forward_proj` \"{other}\" is not supported (only \"relu\", \"gated-gelu\")"
                ));
            }
        };
        let tie_word_embeddings = json.get("tie_word_embeddings").and_then(serde_json::Value::as_bool).unwrap_or(true);
        // transformers 5 says apart whether the head is tied and whether the output is rescaled;
        // every released T5 does both (the original) or neither (v1.1, flan-t5).
        if let Some(scale) = json.get("scale_decoder_outputs").and_then(serde_json::Value::as_bool)
            && scale != tie_word_embeddings
        {
            return Err(format!(
                "`scale_decoder_outputs` {scale} with `tie_word_embeddings` {tie_word_embeddings} is not supported \
                 (a tied head is rescaled, an untied one is not)"
            ));
        }
        let num_layers = int("num_layers")?;
        Ok(T5Config {
            vocab_size: int("vocab_size")?,
            context: json
                .get("n_positions")
                .and_then(serde_json::Value::as_u64)
                .map_or(default_context(), |v| v as usize),
            d_model: int("d_model")?,
            d_kv: int("d_kv")?,
            d_ff: int("d_ff")?,
            num_layers,
            num_decoder_layers: json
                .get("num_decoder_layers")
                .and_then(serde_json::Value::as_u64)
                .map_or(num_layers, |v| v as usize),
            num_heads: int("num_heads")?,
            relative_attention_num_buckets: int("relative_attention_num_buckets")?,
            relative_attention_max_distance: json
                .get("relative_attention_max_distance")
                .and_then(serde_json::Value::as_u64)
                .map_or(128, |v| v as usize),
            layer_norm_epsilon: json.get("layer_norm_epsilon").and_then(serde_json::Value::as_f64).unwrap_or(1e-6),
            feed_forward,
            tie_word_embeddings,
            decoder_start_token_id: json.get("decoder_start_token_id").and_then(serde_json::Value::as_u64).unwrap_or(0)
                as u32,
        })
    }

    /// Refuses sizes the model cannot be built with, naming the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("context", self.context),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.num_decoder_layers),
            ("num_heads", self.num_heads),
            ("relative_attention_max_distance", self.relative_attention_max_distance),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::Config(format!("T5 `{name}` must be at least 1")));
        }
        // Each direction needs at least one exact bucket and one logarithmic one.
        if self.relative_attention_num_buckets < 4 || !self.relative_attention_num_buckets.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "T5 `relative_attention_num_buckets` must be even and at least 4, got {}",
                self.relative_attention_num_buckets
            )));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(ModelError::Config(format!(
                "T5 `layer_norm_epsilon` must be a positive number, got {}",
                self.layer_norm_epsilon
            )));
        }
        if self.decoder_start_token_id as usize >= self.vocab_size {
            return Err(ModelError::Config(format!(
                "T5 `decoder_start_token_id` {} lies outside the vocabulary of {}",
                self.decoder_start_token_id, self.vocab_size
            )));
        }
        Ok(())
    }

    /// Width of all heads together.
    pub fn inner(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Every parameter: its Hugging Face name, shape and T5's initialisation (transformers'
    /// `_init_weights` at `initializer_factor` 1: attention queries N(0, (d_model·d_kv)^-1/2),
    /// keys and values N(0, d_model^-1/2), outputs N(0, inner^-1/2), the feed-forward's input
    /// N(0, d_model^-1/2) and output N(0, d_ff^-1/2), embeddings N(0, 1), norm gains 1);
    /// sorted by name.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, inner, ff) = (self.d_model, self.inner(), self.d_ff);
        let std = |fan: usize| Init::Normal { std: (fan as f64).powf(-0.5) };
        let mut specs = vec![ParamSpec::new("shared.weight", &[self.vocab_size, d], Init::Normal { std: 1.0 })];
        if !self.tie_word_embeddings {
            specs.push(ParamSpec::new("lm_head.weight", &[self.vocab_size, d], Init::Normal { std: 1.0 }));
        }
        for (stack, layers) in [("encoder", self.num_layers), ("decoder", self.num_decoder_layers)] {
            specs.push(ParamSpec::new(format!("{stack}.final_layer_norm.weight"), &[d], Init::Ones));
            specs.push(ParamSpec::new(
                format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                &[self.relative_attention_num_buckets, self.num_heads],
                std(d),
            ));
            for block in 0..layers {
                let layer = |i: usize, rest: &str| format!("{stack}.block.{block}.layer.{i}.{rest}");
                let mut attention = |i: usize, name: &str| {
                    specs.push(ParamSpec::new(layer(i, &format!("{name}.q.weight")), &[inner, d], std(d * self.d_kv)));
                    specs.push(ParamSpec::new(layer(i, &format!("{name}.k.weight")), &[inner, d], std(d)));
                    specs.push(ParamSpec::new(layer(i, &format!("{name}.v.weight")), &[inner, d], std(d)));
                    specs.push(ParamSpec::new(layer(i, &format!("{name}.o.weight")), &[d, inner], std(inner)));
                    specs.push(ParamSpec::new(layer(i, "layer_norm.weight"), &[d], Init::Ones));
                };
                attention(0, "SelfAttention");
                let ff_layer = if stack == "decoder" {
                    attention(1, "EncDecAttention");
                    2
                } else {
                    1
                };
                let inputs: &[&str] = match self.feed_forward {
                    FeedForward::GatedGelu => &["wi_0", "wi_1"],
                    FeedForward::Relu => &["wi"],
                };
                for input in inputs {
                    specs.push(ParamSpec::new(
                        layer(ff_layer, &format!("DenseReluDense.{input}.weight")),
                        &[ff, d],
                        std(d),
                    ));
                }
                specs.push(ParamSpec::new(layer(ff_layer, "DenseReluDense.wo.weight"), &[d, ff], std(ff)));
                specs.push(ParamSpec::new(layer(ff_layer, "layer_norm.weight"), &[d], Init::Ones));
            }
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// The `config.json` `transformers` reads this model from (`T5ForConditionalGeneration`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let gated = self.feed_forward == FeedForward::GatedGelu;
        serde_json::json!({
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "is_encoder_decoder": true,
            "vocab_size": self.vocab_size,
            "n_positions": self.context,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "feed_forward_proj": if gated { "gated-gelu" } else { "relu" },
            "dense_act_fn": if gated { "gelu_new" } else { "relu" },
            "is_gated_act": gated,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_decoder_outputs": self.tie_word_embeddings,
            "dropout_rate": 0.0,
            "decoder_start_token_id": self.decoder_start_token_id,
            // transformers pads decoder inputs with the start token; the end token is the
            // tokenizer's, which the config does not know.
            "pad_token_id": self.decoder_start_token_id,
            "eos_token_id": null,
            "dtype": "float32",
        })
    }
}

/// T5's bucket for the key at `relative` = key position - query position: exact up to half
/// the buckets (of a direction), then logarithmic up to `max_distance`, then the last bucket.
/// The encoder tells the two directions apart; the decoder sees only the past.
pub fn relative_position_bucket(relative: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> usize {
    let (mut buckets, mut bucket) = (num_buckets, 0);
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            bucket += buckets;
        }
        relative.unsigned_abs() as usize
    } else {
        (-relative).max(0) as usize
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return bucket + distance;
    }
    // In f32, as transformers computes it, so that a distance on a bucket's edge falls the same way.
    let log_ratio = (distance as f32 / max_exact as f32).ln() / (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log_ratio * (buckets - max_exact) as f32) as usize;
    bucket + large.min(buckets - 1)
}

/// What an attention adds to its scores (B, H, Tq, Tk) before the softmax.
struct ScoreBias {
    /// (H, Tq, Tk): the learned position bias (self-attention only).
    position: Option<Tensor>,
    /// (B, Tk): 0 on real keys, `MASKED` on padding.
    keys: Option<Tensor>,
    /// Keys after a query's position are hidden (the decoder's self-attention).
    causal: bool,
    /// All of it as one tensor broadcasting to (B, H, Tq, Tk), for the plain path; `None`
    /// when the fused kernel runs.
    full: Option<Tensor>,
}

impl ScoreBias {
    /// The bias of `tq` queries over `tk` keys of `b` rows; `fused` skips the plain path's
    /// full tensor.
    fn new(
        position: Option<Tensor>,
        keys: Option<Tensor>,
        causal: bool,
        (b, tq, tk): (usize, usize, usize),
        (fused, device): (bool, &Device),
    ) -> candle_core::Result<ScoreBias> {
        let full = if fused {
            None
        } else {
            let mut full = Tensor::zeros((1, 1, tq, tk), DType::F32, device)?;
            if let Some(position) = &position {
                full = full.broadcast_add(&position.unsqueeze(0)?)?;
            }
            if causal {
                let mask: Vec<f32> =
                    (0..tq).flat_map(|q| (0..tk).map(move |k| if k > q { MASKED as f32 } else { 0.0 })).collect();
                full = full.broadcast_add(&Tensor::from_vec(mask, (1, 1, tq, tk), device)?)?;
            }
            if let Some(keys) = &keys {
                full = full.broadcast_add(&keys.reshape((b, 1, 1, tk))?)?;
            }
            Some(full)
        };
        Ok(ScoreBias { position, keys, causal, full })
    }
}

/// Multi-head attention without biases or score scaling.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl Attention {
    /// x (B, Tq, D) attends to kv (B, Tk, D) with `bias` added to the scores; (B, Tq, D).
    fn forward(&self, x: &Tensor, kv: &Tensor, bias: &ScoreBias) -> candle_core::Result<Tensor> {
        if let Some(full) = &bias.full {
            let (k, v) = self.keys_values(kv)?;
            return self.attend(x, &k, &v, full);
        }
        // Keys and values from one product over the stacked weights, (B, Tk, 2C), read in place
        // by the kernel, which writes (B, Tq, C) as `o` reads it.
        let weight = Tensor::cat(&[&self.k.weight, &self.v.weight], 0)?;
        let kv = Linear { weight, bias: None, layout: Layout::OutIn }.forward(kv)?;
        let y = kernels::t5_attention(
            &self.q.forward(x)?,
            &kv,
            self.heads,
            bias.position.as_ref(),
            bias.keys.as_ref(),
            bias.causal,
        )?;
        self.o.forward(&y)
    }

    /// (B, T, D) -> `linear(x)` split into heads, (B, H, T, d_kv).
    fn heads(&self, linear: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        linear.forward(x)?.reshape((b, t, self.heads, self.d_kv))?.transpose(1, 2)?.contiguous()
    }

    /// The keys and values of kv (B, Tk, D), each (B, H, Tk, d_kv).
    fn keys_values(&self, kv: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.heads(&self.k, kv)?, self.heads(&self.v, kv)?))
    }

    /// x (B, Tq, D) attends over keys and values (B, H, Tk, d_kv); (B, Tq, D).
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, tq, _) = x.dims3()?;
        let q = self.heads(&self.q, x)?; // (B, H, Tq, d_kv)
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?; // (B, H, Tq, Tk)
        let p = softmax_last_dim(&scores)?;
        let y = p.matmul(v)?.transpose(1, 2)?.reshape((b, tq, self.heads * self.d_kv))?;
        self.o.forward(&y)
    }
}

/// One block: self-attention, cross-attention (decoder), feed-forward, each pre-normed.
#[derive(Debug, Clone)]
struct Block {
    self_norm: RmsNorm,
    self_attention: Attention,
    cross: Option<(RmsNorm, Attention)>,
    ff_norm: RmsNorm,
    /// `wi` (ReLU) or `wi_0` (gated GELU).
    wi: Linear,
    /// `wi_1`, the gated GELU's linear half.
    wi_gate: Option<Linear>,
    wo: Linear,
}

impl Block {
    fn forward(
        &self,
        h: &Tensor,
        self_bias: &ScoreBias,
        cross: Option<(&Tensor, &ScoreBias)>,
    ) -> candle_core::Result<Tensor> {
        let x = self.self_norm.forward(h)?;
        let mut h = (h + self.self_attention.forward(&x, &x, self_bias)?)?;
        if let (Some((norm, attention)), Some((encoded, bias))) = (&self.cross, cross) {
            h = (&h + attention.forward(&norm.forward(&h)?, encoded, bias)?)?;
        }
        self.feed_forward(&h)
    }

    /// h + FeedForward(norm(h)).
    fn feed_forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.ff_norm.forward(h)?;
        let inner = match &self.wi_gate {
            Some(linear) => (self.wi.forward_gelu(&x)? * linear.forward(&x)?)?,
            None => self.wi.forward(&x)?.relu()?,
        };
        h + self.wo.forward(&inner)?
    }
}

/// The encoder or the decoder.
#[derive(Debug, Clone)]
struct Stack {
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    /// (buckets, heads): the score bias of each relative-position bucket.
    relative_bias: Tensor,
    /// The encoder's attention looks both ways; the decoder's self-attention only back.
    bidirectional: bool,
}

impl Stack {
    /// The position bias (H, Tq, Tk) of queries `first_query..first_query + tq` over keys
    /// 0..tk.
    fn position_bias(
        &self,
        first_query: usize,
        tq: usize,
        tk: usize,
        config: &T5Config,
    ) -> candle_core::Result<Tensor> {
        let buckets: Vec<u32> = (first_query..first_query + tq)
            .flat_map(|q| {
                (0..tk).map(move |k| {
                    relative_position_bucket(
                        k as i64 - q as i64,
                        self.bidirectional,
                        config.relative_attention_num_buckets,
                        config.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, tq * tk, self.relative_bias.device())?;
        let heads = self.relative_bias.dim(1)?;
        self.relative_bias.index_select(&buckets, 0)?.reshape((tq, tk, heads))?.permute((2, 0, 1))?.contiguous()
    }
}

/// A T5 model with its LM head, over the parameters of a [`Model`](super::Model)
/// (`Model::as_t5`).
#[derive(Debug, Clone)]
pub struct T5 {
    pub config: T5Config,
    /// (vocab, D): the embedding of both stacks (and the head, when tied).
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    /// (vocab, D) of its own, untied.
    lm_head: Option<Tensor>,
}

/// Scores added where attention must not look: large and finite, so that a row never becomes
/// NaN.
const MASKED: f64 = -1e9;

impl T5 {
    /// The modules over `vars` (every parameter of `config.param_specs()`, checked): `Model`
    /// makes, loads and saves the parameters, as for every family.
    pub(crate) fn build(config: T5Config, vars: &BTreeMap<String, Var>) -> Result<T5, ModelError> {
        let get = |name: &str| -> Result<Tensor, ModelError> {
            vars.get(name)
                .map(|var| var.as_tensor().clone())
                .ok_or_else(|| ModelError::MissingTensor { name: name.to_string(), expected: Vec::new() })
        };
        let linear = |name: &str| -> Result<Linear, ModelError> {
            Ok(Linear { weight: get(name)?, bias: None, layout: Layout::OutIn })
        };
        let norm = |name: &str| -> Result<RmsNorm, ModelError> {
            Ok(RmsNorm { weight: get(name)?, eps: config.layer_norm_epsilon })
        };
        let attention = |prefix: &str| -> Result<Attention, ModelError> {
            Ok(Attention {
                q: linear(&format!("{prefix}.q.weight"))?,
                k: linear(&format!("{prefix}.k.weight"))?,
                v: linear(&format!("{prefix}.v.weight"))?,
                o: linear(&format!("{prefix}.o.weight"))?,
                heads: config.num_heads,
                d_kv: config.d_kv,
            })
        };
        let stack = |stack: &str, layers: usize| -> Result<Stack, ModelError> {
            let decoder = stack == "decoder";
            let blocks = (0..layers)
                .map(|block| {
                    let layer = |i: usize| format!("{stack}.block.{block}.layer.{i}");
                    let ff = layer(if decoder { 2 } else { 1 });
                    let gated = config.feed_forward == FeedForward::GatedGelu;
                    Ok(Block {
                        self_norm: norm(&format!("{}.layer_norm.weight", layer(0)))?,
                        self_attention: attention(&format!("{}.SelfAttention", layer(0)))?,
                        cross: if decoder {
                            Some((
                                norm(&format!("{}.layer_norm.weight", layer(1)))?,
                                attention(&format!("{}.EncDecAttention", layer(1)))?,
                            ))
                        } else {
                            None
                        },
                        ff_norm: norm(&format!("{ff}.layer_norm.weight"))?,
                        wi: linear(&format!("{ff}.DenseReluDense.{}.weight", if gated { "wi_0" } else { "wi" }))?,
                        wi_gate: if gated { Some(linear(&format!("{ff}.DenseReluDense.wi_1.weight"))?) } else { None },
                        wo: linear(&format!("{ff}.DenseReluDense.wo.weight"))?,
                    })
                })
                .collect::<Result<Vec<Block>, ModelError>>()?;
            Ok(Stack {
                blocks,
                final_norm: norm(&format!("{stack}.final_layer_norm.weight"))?,
                relative_bias: get(&format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))?,
                bidirectional: !decoder,
            })
        };
        Ok(T5 {
            shared: get("shared.weight")?,
            encoder: stack("encoder", config.num_layers)?,
            decoder: stack("decoder", config.num_decoder_layers)?,
            lm_head: if config.tie_word_embeddings { None } else { Some(get("lm_head.weight")?) },
            config,
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.shared.device()
    }

    /// (B, S) encoder token ids and their (B, S) mask (1 real, 0 padding; `None`: all real) to
    /// the encoder's output (B, S, D).
    pub fn encode(&self, input_ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let (b, s) = input_ids.dims2().ctx(|| "encoder input ids must be (batch, length)".into())?;
        let run = || -> candle_core::Result<Tensor> {
            let mut h = self.shared.embedding(&input_ids.flatten_all()?)?.reshape((b, s, self.config.d_model))?;
            let bias = ScoreBias::new(
                Some(self.encoder.position_bias(0, s, s, &self.config)?),
                key_bias(mask)?,
                false,
                (b, s, s),
                (kernels::fused(&[&h]), self.device()),
            )?;
            for block in &self.encoder.blocks {
                h = block.forward(&h, &bias, None)?;
            }
            self.encoder.final_norm.forward(&h)
        };
        run().ctx(|| "T5 encoder".into())
    }

    /// (B, T) decoder token ids (starting with `decoder_start_token_id`), the encoder's output
    /// (B, S, D) and its mask to the logits (B, T, vocab) of each next token.
    pub fn decode(&self, decoder_ids: &Tensor, encoded: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let out = self.decoder_hidden(decoder_ids, encoded, mask)?;
        self.head(&out).ctx(|| "T5 LM head".into())
    }

    /// The decoder's normed output (B, T, D) for (B, T) decoder token ids over the encoder's
    /// output (B, S, D) and its mask: what the LM head (or a scalar head) reads.
    pub fn decoder_hidden(
        &self,
        decoder_ids: &Tensor,
        encoded: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = decoder_ids.dims2().ctx(|| "decoder input ids must be (batch, length)".into())?;
        let run = || -> candle_core::Result<Tensor> {
            let s = encoded.dim(1)?;
            let d = self.config.d_model;
            let mut h = self.shared.embedding(&decoder_ids.flatten_all()?)?.reshape((b, t, d))?;
            let fused = (kernels::fused(&[&h, encoded]), self.device());
            let position = self.decoder.position_bias(0, t, t, &self.config)?;
            let self_bias = ScoreBias::new(Some(position), None, true, (b, t, t), fused)?;
            let cross_bias = ScoreBias::new(None, key_bias(mask)?, false, (b, t, s), fused)?;
            for block in &self.decoder.blocks {
                h = block.forward(&h, &self_bias, Some((encoded, &cross_bias)))?;
            }
            self.decoder.final_norm.forward(&h)
        };
        run().ctx(|| "T5 decoder".into())
    }

    /// The LM head's weight (vocab, D) and the scale the decoder's output is multiplied by
    /// before it: the original T5 rescales by `d_model^-0.5` before its tied head.
    pub fn lm_head(&self) -> (&Tensor, Option<f64>) {
        match &self.lm_head {
            Some(head) => (head, None),
            None => (&self.shared, Some((self.config.d_model as f64).powf(-0.5))),
        }
    }

    /// -log p(label) per position, (B, T), from the decoder's output (B, T, D) and u32 labels
    /// (B, T): the head and the cross-entropy fused into one op on the CPU (the logits never
    /// made), else the logits and `kernels::cross_entropy_rows`.
    pub fn token_nll(&self, out: &Tensor, labels: &Tensor) -> Result<Tensor, ModelError> {
        let run = || -> candle_core::Result<Tensor> {
            let (weight, scale) = self.lm_head();
            let out = match scale {
                Some(scale) => (out * scale)?,
                None => out.clone(),
            };
            if kernels::fused(&[&out, weight]) {
                return kernels::lm_head_cross_entropy(&out, weight, labels);
            }
            let head = Linear { weight: weight.clone(), bias: None, layout: Layout::OutIn };
            kernels::cross_entropy_rows(&head.forward(&out)?, labels)
        };
        run().ctx(|| "T5 LM head and loss".into())
    }

    /// The decoder's normed output (B, T, D) to logits (B, T, vocab).
    pub(crate) fn head(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        let (weight, scale) = self.lm_head();
        let head = Linear { weight: weight.clone(), bias: None, layout: Layout::OutIn };
        match scale {
            Some(scale) => head.forward(&(out * scale)?),
            None => head.forward(out),
        }
    }

    /// Continue every prompt (all at once) as `config` says: the encoder runs once over the
    /// prompts (right-padded, the padding masked), each cross-attention's keys and values are
    /// computed once, and the decoder feeds one token per row a step from the start token,
    /// keeping its self-attention keys and values. Each row draws from its own generator, as
    /// the decoders' `generate` does, and stops on a stop token.
    pub fn generate(&self, prompts: &[Vec<u32>], config: &SamplingConfig) -> Result<Vec<Generated>, ModelError> {
        config.validate()?;
        let vocab = self.config.vocab_size;
        for (row, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(ModelError::Input(format!("prompt {row} is empty")));
            }
            if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
                return Err(ModelError::Input(format!(
                    "prompt {row} holds token {id}, outside the vocabulary of {vocab}"
                )));
            }
        }
        let Some(longest) = prompts.iter().map(Vec::len).max() else { return Ok(Vec::new()) };
        let (b, device) = (prompts.len(), self.device().clone());
        let ids: Vec<u32> =
            prompts.iter().flat_map(|p| p.iter().copied().chain(std::iter::repeat_n(0, longest - p.len()))).collect();
        let mask: Vec<u32> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(1, p.len()).chain(std::iter::repeat_n(0, longest - p.len())))
            .collect();
        let ids = Tensor::from_vec(ids, (b, longest), &device).ctx(|| "prompt batch".into())?;
        let mask = Tensor::from_vec(mask, (b, longest), &device).ctx(|| "prompt mask".into())?;
        let encoded = self.encode(&ids, Some(&mask))?;
        let mut rngs: Vec<rand::rngs::StdRng> =
            (0..b).map(|row| init::stream(config.seed, &format!("generate row {row}"))).collect();
        let mut out: Vec<Generated> = prompts
            .iter()
            .map(|p| Generated { prompt_len: p.len(), tokens: Vec::new(), logprobs: Vec::new(), stopped: false })
            .collect();
        let run = |out: &mut Vec<Generated>, rngs: &mut Vec<rand::rngs::StdRng>| -> candle_core::Result<()> {
            let cross_bias = masked_keys(&mask)?.reshape((b, 1, 1, longest))?;
            let cross: Vec<(Tensor, Tensor)> = self
                .decoder
                .blocks
                .iter()
                .map(|block| match &block.cross {
                    Some((_, attention)) => attention.keys_values(&encoded),
                    None => candle_core::bail!("a decoder block without cross-attention"),
                })
                .collect::<candle_core::Result<_>>()?;
            let mut cache: Vec<Option<(Tensor, Tensor)>> = vec![None; self.decoder.blocks.len()];
            let mut next = vec![self.config.decoder_start_token_id; b];
            for step in 0..config.max_new_tokens {
                let input = Tensor::from_vec(next.clone(), (b, 1), &device)?;
                let mut h = self.shared.embedding(&input.flatten_all()?)?.reshape((b, 1, self.config.d_model))?;
                let self_bias = self.decoder.position_bias(step, 1, step + 1, &self.config)?.unsqueeze(0)?;
                for (block, (cached, (cross_k, cross_v))) in
                    self.decoder.blocks.iter().zip(cache.iter_mut().zip(&cross))
                {
                    let x = block.self_norm.forward(&h)?;
                    let (k, v) = block.self_attention.keys_values(&x)?;
                    let (k, v) = match cached.take() {
                        Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
                        None => (k, v),
                    };
                    h = (&h + block.self_attention.attend(&x, &k, &v, &self_bias)?)?;
                    *cached = Some((k, v));
                    if let Some((norm, attention)) = &block.cross {
                        h = (&h + attention.attend(&norm.forward(&h)?, cross_k, cross_v, &cross_bias)?)?;
                    }
                    h = block.feed_forward(&h)?;
                }
                let logits = self.head(&self.decoder.final_norm.forward(&h)?)?.squeeze(1)?.to_vec2::<f32>()?;
                draw_step(out, &logits, step, config, rngs);
                if out.iter().all(|g| g.stopped) {
                    break;
                }
                // A row that stopped is fed the pad token; its outputs are ignored.
                next = out.iter().map(|g| if g.stopped { 0 } else { g.tokens[step] }).collect();
            }
            Ok(())
        };
        run(&mut out, &mut rngs).ctx(|| "T5 generation".into())?;
        Ok(out)
    }

    /// The mean cross-entropy of `labels` (B, T) under the logits of `decoder_ids` (B, T):
    /// teacher forcing, the decoder reading the labels shifted right behind its start token.
    pub fn loss(
        &self,
        input_ids: &Tensor,
        mask: Option<&Tensor>,
        decoder_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let encoded = self.encode(input_ids, mask)?;
        let out = self.decoder_hidden(decoder_ids, &encoded, mask)?;
        self.token_nll(&out, labels)?.mean_all().ctx(|| "T5 mean cross-entropy".into())
    }

    /// Encode, then decode: the logits (B, T, vocab) of `decoder_ids`' next tokens.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: Option<&Tensor>,
        decoder_ids: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let encoded = self.encode(input_ids, mask)?;
        self.decode(decoder_ids, &encoded, mask)
    }
}

/// The additive key bias (B, S) of a (B, S) mask (1 real, 0 padding): 0 on real keys, `MASKED`
/// on padding.
fn key_bias(mask: Option<&Tensor>) -> candle_core::Result<Option<Tensor>> {
    mask.map(masked_keys).transpose()
}

/// [`key_bias`] of a mask that is there.
fn masked_keys(mask: &Tensor) -> candle_core::Result<Tensor> {
    mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASKED
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `T5Attention._relative_position_bucket` on the same distances (32 buckets,
    /// max distance 128, its defaults), as printed by transformers 5.25.0.
    #[test]
    fn buckets_follow_transformers() {
        let distances = [-200i64, -128, -100, -64, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 64, 100, 128, 200];
        let both: Vec<usize> = distances.iter().map(|&d| relative_position_bucket(d, true, 32, 128)).collect();
        let back: Vec<usize> = distances.iter().map(|&d| relative_position_bucket(d, false, 32, 128)).collect();
        assert_eq!(both, [15, 15, 15, 14, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 30, 31, 31, 31]);
        assert_eq!(back, [31, 31, 30, 26, 17, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
