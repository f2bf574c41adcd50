//! Model configurations as they appear in experiment files.
//!
//! ```ron
//! model: Gpt(layers: 4, heads: 4, d_model: 128, context: 64, vocab_size: 65, dropout: 0.0),
//! model: Llama(layers: 30, heads: 9, kv_heads: 3, d_model: 576, ffn_hidden: 1536, context: 2048,
//!              vocab_size: 49152, rope_theta: 100000.0),
//! model: T5(d_model: 128, d_kv: 32, d_ff: 384, num_layers: 2, num_decoder_layers: 2, num_heads: 4,
//!           context: 64),
//! ```
//!
//! `vocab_size` may be left out (it defaults to 0, "unset"): the tokenizer fills it in through
//! [`ModelConfig::with_vocab_size`] before the model is built, and [`ModelConfig::validate`]
//! refuses an unset one.
//!
//! Serde: the enum is written and read as a *struct variant* (`Gpt(layers: 4, ...)`), not as a
//! newtype variant around a struct (`Gpt((layers: 4, ...))`, which is what a derive would give
//! in RON unless the reader enables `unwrap_variant_newtypes`). The hand-written impls below
//! delegate the fields to the derived impls of [`GptConfig`] and [`LlamaConfig`], so defaults
//! and `deny_unknown_fields` hold in both RON and JSON.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, EnumAccess, MapAccess, VariantAccess, Visitor};
use serde::ser::{SerializeStructVariant, Serializer};
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::init::ParamSpec;
pub use super::t5::T5Config;

/// A GPT-2 style decoder: learned positions, pre-LayerNorm, GELU MLP, tied embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size; 0 means "take it from the tokenizer".
    #[serde(default)]
    pub vocab_size: usize,
    /// Maximum sequence length (number of learned positions).
    pub context: usize,
    pub layers: usize,
    pub heads: usize,
    pub d_model: usize,
    /// Dropout probability on the embeddings, the attention output and the MLP output.
    #[serde(default)]
    pub dropout: f64,
    /// Biases in the linear layers and LayerNorms (GPT-2 has them).
    #[serde(default = "yes")]
    pub bias: bool,
}

/// A Llama style decoder: RoPE, RMSNorm, SwiGLU, grouped-query attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// Vocabulary size; 0 means "take it from the tokenizer".
    #[serde(default)]
    pub vocab_size: usize,
    /// Maximum sequence length (size of the RoPE tables).
    pub context: usize,
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; `heads` must be a multiple (grouped-query attention).
    pub kv_heads: usize,
    pub d_model: usize,
    /// Width of the SwiGLU hidden layer.
    pub ffn_hidden: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_eps: f64,
    /// The LM head reuses the token embedding matrix.
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
}

fn yes() -> bool {
    true
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-5
}

/// Which model to build.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt(GptConfig),
    Llama(LlamaConfig),
    /// The encoder-decoder: the stages give it the prompt to encode and the response to decode.
    T5(T5Config),
}

impl GptConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Refuses sizes the model cannot be built with.
    pub fn validate(&self) -> Result<(), ModelError> {
        positive(
            "Gpt",
            &[
                ("vocab_size", self.vocab_size),
                ("context", self.context),
                ("layers", self.layers),
                ("heads", self.heads),
                ("d_model", self.d_model),
            ],
        )?;
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(config_error(format!(
                "Gpt: d_model ({}) must be divisible by heads ({})",
                self.d_model, self.heads
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(config_error(format!("Gpt: dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Refuses sizes the model cannot be built with.
    pub fn validate(&self) -> Result<(), ModelError> {
        positive(
            "Llama",
            &[
                ("vocab_size", self.vocab_size),
                ("context", self.context),
                ("layers", self.layers),
                ("heads", self.heads),
                ("kv_heads", self.kv_heads),
                ("d_model", self.d_model),
                ("ffn_hidden", self.ffn_hidden),
            ],
        )?;
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(config_error(format!(
                "Llama: d_model ({}) must be divisible by heads ({})",
                self.d_model, self.heads
            )));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(config_error(format!(
                "Llama: heads ({}) must be divisible by kv_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(config_error(format!(
                "Llama: RoPE rotates pairs of dimensions, so the head width d_model / heads = {} must be even",
                self.head_dim()
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(config_error(format!("Llama: rope_theta must be positive, got {}", self.rope_theta)));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(config_error(format!("Llama: rms_eps must be positive, got {}", self.rms_eps)));
        }
        Ok(())
    }
}

fn config_error(message: String) -> ModelError {
    ModelError::Config(message)
}

fn positive(family: &str, sizes: &[(&str, usize)]) -> Result<(), ModelError> {
    for &(name, value) in sizes {
        if value == 0 {
            let hint = if name == "vocab_size" {
                " (leave it out only where the tokenizer sets it: ModelConfig::with_vocab_size)"
            } else {
                ""
            };
            return Err(config_error(format!("{family}: {name} must be positive, got 0{hint}")));
        }
    }
    Ok(())
}

#[cfg(test)]
impl ModelConfig {
    /// A GPT small enough for unit tests: 2 layers, 2 heads, width 16, context 16, no dropout.
    pub(crate) fn tiny_gpt(vocab_size: usize) -> ModelConfig {
        ModelConfig::Gpt(GptConfig {
            vocab_size,
            context: 16,
            layers: 2,
            heads: 2,
            d_model: 16,
            dropout: 0.0,
            bias: true,
        })
    }
}

impl ModelConfig {
    /// Refuses sizes the model cannot be built with, naming the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ModelConfig::Gpt(c) => c.validate(),
            ModelConfig::Llama(c) => c.validate(),
            ModelConfig::T5(c) => c.validate(),
        }
    }

    /// The same config with the vocabulary size the tokenizer reports.
    pub fn with_vocab_size(mut self, n: usize) -> Self {
        match &mut self {
            ModelConfig::Gpt(c) => c.vocab_size = n,
            ModelConfig::Llama(c) => c.vocab_size = n,
            ModelConfig::T5(c) => c.vocab_size = n,
        }
        self
    }

    /// `"gpt"`, `"llama"` or `"t5"`.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Gpt(_) => "gpt",
            ModelConfig::Llama(_) => "llama",
            ModelConfig::T5(_) => "t5",
        }
    }

    /// Whether the model reads the prompt with an encoder and writes the response with a
    /// decoder (T5), rather than continuing one sequence.
    pub fn is_encoder_decoder(&self) -> bool {
        matches!(self, ModelConfig::T5(_))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::T5(c) => c.vocab_size,
        }
    }

    /// Maximum sequence length (T5: of the encoder's input, and of the decoder's).
    pub fn context(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.context,
            ModelConfig::Llama(c) => c.context,
            ModelConfig::T5(c) => c.context,
        }
    }

    /// Width of the residual stream (and of `Model::hidden`).
    pub fn d_model(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.d_model,
            ModelConfig::Llama(c) => c.d_model,
            ModelConfig::T5(c) => c.d_model,
        }
    }

    /// Transformer blocks (T5: the decoder's, which the KV cache of generation holds).
    pub fn layers(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.layers,
            ModelConfig::Llama(c) => c.layers,
            ModelConfig::T5(c) => c.num_decoder_layers,
        }
    }

    /// Number of trainable scalars (tied embeddings counted once), computed from the config
    /// alone.
    pub fn num_parameters(&self) -> usize {
        self.param_specs().iter().map(ParamSpec::numel).sum()
    }

    /// A `config.json` that Hugging Face `transformers` understands (GPT2LMHeadModel,
    /// LlamaForCausalLM or T5ForConditionalGeneration), with this config under the extra key `triad_config` so that
    /// [`ModelConfig::from_hf_json`] reads it back exactly.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut hf = match self {
            ModelConfig::Gpt(c) => serde_json::json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": c.vocab_size,
                "n_positions": c.context,
                "n_ctx": c.context,
                "n_embd": c.d_model,
                "n_layer": c.layers,
                "n_head": c.heads,
                "n_inner": null,
                "activation_function": "gelu_new",
                "resid_pdrop": c.dropout,
                "embd_pdrop": c.dropout,
                "attn_pdrop": 0.0,
                "layer_norm_epsilon": super::norm::LAYER_NORM_EPS,
                "initializer_range": super::init::INIT_STD,
                "tie_word_embeddings": true,
                "torch_dtype": "float32",
                // GPT2Config's defaults (50256) lie outside a vocabulary trained here.
                "bos_token_id": null,
                "eos_token_id": null,
            }),
            ModelConfig::Llama(c) => serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": c.vocab_size,
                "max_position_embeddings": c.context,
                "hidden_size": c.d_model,
                "intermediate_size": c.ffn_hidden,
                "num_hidden_layers": c.layers,
                "num_attention_heads": c.heads,
                "num_key_value_heads": c.kv_heads,
                "head_dim": c.head_dim(),
                "hidden_act": "silu",
                "rms_norm_eps": c.rms_eps,
                "rope_theta": c.rope_theta,
                "tie_word_embeddings": c.tie_embeddings,
                "attention_bias": false,
                "mlp_bias": false,
                "initializer_range": super::init::INIT_STD,
                "torch_dtype": "float32",
            }),
            ModelConfig::T5(c) => c.to_hf_json(),
        };
        hf["triad_config"] = serde_json::to_value(self).expect("a ModelConfig always serializes");
        hf
    }

    /// Reads a `config.json`: ours (with `triad_config`), or a plain Hugging Face GPT-2, Llama or
    /// T5 config.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<ModelConfig, String> {
        if let Some(ours) = json.get("triad_config") {
            return serde_json::from_value(ours.clone()).map_err(|e| format!("triad_config: {e}"));
        }
        let int = |key: &str| -> Result<usize, String> {
            json.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("missing or non-integer `{key}`"))
        };
        let float = |key: &str, default: f64| json.get(key).and_then(serde_json::Value::as_f64).unwrap_or(default);
        // A setting triad's blocks do not implement would load into a different model with no
        // error: refuse it by name instead.
        let only = |key: &str, allowed: &[serde_json::Value]| match json.get(key) {
            Some(v) if !v.is_null() && !allowed.contains(v) => {
                Err(format!("`{key}` {v} is not supported (only {})", serde_json::json!(allowed)))
            }
            _ => Ok(()),
        };
        match json.get("model_type").and_then(serde_json::Value::as_str) {
            Some("gpt2") => {
                let d_model = int("n_embd")?;
                only("activation_function", &[serde_json::json!("gelu_new"), serde_json::json!("gelu_pytorch_tanh")])?;
                only("layer_norm_epsilon", &[serde_json::json!(super::norm::LAYER_NORM_EPS)])?;
                if json.get("n_inner").is_some_and(|v| !v.is_null() && v.as_u64() != Some(4 * d_model as u64)) {
                    return Err("n_inner other than 4 * n_embd is not supported".into());
                }
                Ok(ModelConfig::Gpt(GptConfig {
                    vocab_size: int("vocab_size")?,
                    context: int("n_positions")?,
                    layers: int("n_layer")?,
                    heads: int("n_head")?,
                    d_model,
                    dropout: float("resid_pdrop", 0.0),
                    bias: true,
                }))
            }
            Some("llama") => {
                let heads = int("num_attention_heads")?;
                only("hidden_act", &[serde_json::json!("silu")])?;
                only("attention_bias", &[serde_json::json!(false)])?;
                only("mlp_bias", &[serde_json::json!(false)])?;
                let head_dim = int("hidden_size")? / heads.max(1);
                if json.get("head_dim").is_some_and(|v| !v.is_null() && v.as_u64() != Some(head_dim as u64)) {
                    return Err("head_dim other than hidden_size / num_attention_heads is not supported".into());
                }
                // transformers 5 writes RoPE settings under `rope_parameters`; older writers put
                // `rope_theta` (and any `rope_scaling`) at the top level. Scaled RoPE (llama3,
                // linear, yarn, ...) is other math: refuse it rather than load a different model.
                let rope =
                    ["rope_parameters", "rope_scaling"].iter().filter_map(|k| json.get(*k)).find(|v| !v.is_null());
                if let Some(kind) =
                    rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(serde_json::Value::as_str)
                    && kind != "default"
                {
                    return Err(format!("RoPE type `{kind}` is not supported (default only)"));
                }
                let rope_theta = json
                    .get("rope_theta")
                    .or_else(|| json.pointer("/rope_parameters/rope_theta"))
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(default_rope_theta());
                Ok(ModelConfig::Llama(LlamaConfig {
                    vocab_size: int("vocab_size")?,
                    context: int("max_position_embeddings")?,
                    layers: int("num_hidden_layers")?,
                    heads,
                    kv_heads: int("num_key_value_heads").unwrap_or(heads),
                    d_model: int("hidden_size")?,
                    ffn_hidden: int("intermediate_size")?,
                    rope_theta,
                    rms_eps: float("rms_norm_eps", default_rms_eps()),
                    tie_embeddings: json
                        .get("tie_word_embeddings")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(true),
                }))
            }
            Some("t5") => T5Config::from_hf_json(json).map(ModelConfig::T5),
            Some(other) => Err(format!("model_type `{other}` is not supported (gpt2, llama or t5)")),
            None => Err("neither `triad_config` nor `model_type` present".into()),
        }
    }
}

const VARIANTS: &[&str] = &["Gpt", "Llama", "T5"];
const GPT_FIELDS: &[&str] = &["vocab_size", "context", "layers", "heads", "d_model", "dropout", "bias"];
const LLAMA_FIELDS: &[&str] = &[
    "vocab_size",
    "context",
    "layers",
    "heads",
    "kv_heads",
    "d_model",
    "ffn_hidden",
    "rope_theta",
    "rms_eps",
    "tie_embeddings",
];
const T5_FIELDS: &[&str] = &[
    "vocab_size",
    "context",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
    "feed_forward",
    "tie_word_embeddings",
    "decoder_start_token_id",
];

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelConfig::Gpt(c) => {
                let mut v = s.serialize_struct_variant("ModelConfig", 0, "Gpt", GPT_FIELDS.len())?;
                v.serialize_field("vocab_size", &c.vocab_size)?;
                v.serialize_field("context", &c.context)?;
                v.serialize_field("layers", &c.layers)?;
                v.serialize_field("heads", &c.heads)?;
                v.serialize_field("d_model", &c.d_model)?;
                v.serialize_field("dropout", &c.dropout)?;
                v.serialize_field("bias", &c.bias)?;
                v.end()
            }
            ModelConfig::Llama(c) => {
                let mut v = s.serialize_struct_variant("ModelConfig", 1, "Llama", LLAMA_FIELDS.len())?;
                v.serialize_field("vocab_size", &c.vocab_size)?;
                v.serialize_field("context", &c.context)?;
                v.serialize_field("layers", &c.layers)?;
                v.serialize_field("heads", &c.heads)?;
                v.serialize_field("kv_heads", &c.kv_heads)?;
                v.serialize_field("d_model", &c.d_model)?;
                v.serialize_field("ffn_hidden", &c.ffn_hidden)?;
                v.serialize_field("rope_theta", &c.rope_theta)?;
                v.serialize_field("rms_eps", &c.rms_eps)?;
                v.serialize_field("tie_embeddings", &c.tie_embeddings)?;
                v.end()
            }
            ModelConfig::T5(c) => {
                let mut v = s.serialize_struct_variant("ModelConfig", 2, "T5", T5_FIELDS.len())?;
                v.serialize_field("vocab_size", &c.vocab_size)?;
                v.serialize_field("context", &c.context)?;
                v.serialize_field("d_model", &c.d_model)?;
                v.serialize_field("d_kv", &c.d_kv)?;
                v.serialize_field("d_ff", &c.d_ff)?;
                v.serialize_field("num_layers", &c.num_layers)?;
                v.serialize_field("num_decoder_layers", &c.num_decoder_layers)?;
                v.serialize_field("num_heads", &c.num_heads)?;
                v.serialize_field("relative_attention_num_buckets", &c.relative_attention_num_buckets)?;
                v.serialize_field("relative_attention_max_distance", &c.relative_attention_max_distance)?;
                v.serialize_field("layer_norm_epsilon", &c.layer_norm_epsilon)?;
                v.serialize_field("feed_forward", &c.feed_forward)?;
                v.serialize_field("tie_word_embeddings", &c.tie_word_embeddings)?;
                v.serialize_field("decoder_start_token_id", &c.decoder_start_token_id)?;
                v.end()
            }
        }
    }
}

enum Family {
    Gpt,
    Llama,
    T5,
}

impl<'de> Deserialize<'de> for Family {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Tag;
        impl Visitor<'_> for Tag {
            type Value = Family;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a model family (Gpt, Llama or T5)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Family, E> {
                match v {
                    "Gpt" => Ok(Family::Gpt),
                    "Llama" => Ok(Family::Llama),
                    "T5" => Ok(Family::T5),
                    other => Err(E::unknown_variant(other, VARIANTS)),
                }
            }
        }
        d.deserialize_identifier(Tag)
    }
}

/// Reads the fields of a struct variant with the derived impl of `T`.
struct Fields<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the model's fields")
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<T, M::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Config;
        impl<'de> Visitor<'de> for Config {
            type Value = ModelConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("Gpt(...), Llama(...) or T5(...)")
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<ModelConfig, A::Error> {
                let (family, fields) = data.variant::<Family>()?;
                match family {
                    Family::Gpt => fields.struct_variant(GPT_FIELDS, Fields(PhantomData)).map(ModelConfig::Gpt),
                    Family::Llama => fields.struct_variant(LLAMA_FIELDS, Fields(PhantomData)).map(ModelConfig::Llama),
                    Family::T5 => fields.struct_variant(T5_FIELDS, Fields(PhantomData)).map(ModelConfig::T5),
                }
            }
        }
        d.deserialize_enum("ModelConfig", VARIANTS, Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny Llama: 2 heads sharing 1 key/value head, RoPE base `rope_theta`.
    fn tiny_llama(rope_theta: f64, tie_embeddings: bool) -> ModelConfig {
        ModelConfig::Llama(LlamaConfig {
            vocab_size: 10,
            context: 8,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            d_model: 8,
            ffn_hidden: 12,
            rope_theta,
            rms_eps: 1e-6,
            tie_embeddings,
        })
    }

    fn gpt2_124m() -> ModelConfig {
        ModelConfig::Gpt(GptConfig {
            vocab_size: 50257,
            context: 1024,
            layers: 12,
            heads: 12,
            d_model: 768,
            dropout: 0.0,
            bias: true,
        })
    }

    #[test]
    fn gpt2_124m_has_124_439_808_parameters() {
        assert_eq!(gpt2_124m().num_parameters(), 124_439_808);
    }

    #[test]
    fn smollm2_135m_has_134_515_008_parameters() {
        let smol = ModelConfig::Llama(LlamaConfig {
            vocab_size: 49152,
            context: 8192,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            d_model: 576,
            ffn_hidden: 1536,
            rope_theta: 100_000.0,
            rms_eps: 1e-5,
            tie_embeddings: true,
        });
        assert_eq!(smol.num_parameters(), 134_515_008);
    }

    #[test]
    fn ron_reads_the_experiment_syntax_with_defaults() {
        let c: ModelConfig =
            ron::from_str("Gpt(layers: 4, heads: 4, d_model: 128, context: 64, vocab_size: 65, dropout: 0.0)").unwrap();
        let ModelConfig::Gpt(g) = &c else { panic!("not Gpt: {c:?}") };
        assert_eq!((g.layers, g.heads, g.d_model, g.context, g.vocab_size), (4, 4, 128, 64, 65));
        assert!(g.bias);
        c.validate().unwrap();

        let l: ModelConfig =
            ron::from_str("Llama(layers: 2, heads: 4, kv_heads: 2, d_model: 64, ffn_hidden: 96, context: 32)").unwrap();
        let ModelConfig::Llama(l) = l else { panic!() };
        assert_eq!((l.rope_theta, l.rms_eps, l.tie_embeddings, l.vocab_size), (10_000.0, 1e-5, true, 0));
    }

    #[test]
    fn ron_extensions_the_experiment_loader_enables_change_nothing() {
        use ron::extensions::Extensions;
        let options = ron::Options::default()
            .with_default_extension(Extensions::UNWRAP_VARIANT_NEWTYPES)
            .with_default_extension(Extensions::IMPLICIT_SOME);
        let text = "Llama(layers: 2, heads: 4, kv_heads: 2, d_model: 64, ffn_hidden: 96, context: 32, vocab_size: 9)";
        let with: ModelConfig = options.from_str(text).unwrap();
        let without: ModelConfig = ron::from_str(text).unwrap();
        assert_eq!(with, without);
        let e = options.from_str::<ModelConfig>("Gpt(layers: 1, head: 4)").unwrap_err().to_string();
        assert!(e.contains("head"), "{e}");
    }

    #[test]
    fn unknown_fields_and_families_are_refused() {
        let e = ron::from_str::<ModelConfig>("Gpt(layers: 4, heads: 4, d_model: 128, context: 64, n_embd: 3)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_embd"), "{e}");
        let e = ron::from_str::<ModelConfig>("T5(d_model: 8, layers: 4)").unwrap_err().to_string();
        assert!(e.contains("layers"), "{e}");
        let e = ron::from_str::<ModelConfig>("Bert(layers: 4)").unwrap_err().to_string();
        assert!(e.contains("Bert"), "{e}");
        let e = serde_json::from_str::<ModelConfig>(r#"{"Llama": {"layers": 1, "bogus": 2}}"#).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    /// A T5 written in RON with only its sizes: v1.1's defaults for the rest.
    fn small_t5() -> ModelConfig {
        ron::from_str(
            "T5(vocab_size: 50, d_model: 16, d_kv: 4, d_ff: 32, num_layers: 2, num_decoder_layers: 1, num_heads: 4, \
             context: 24)",
        )
        .unwrap()
    }

    #[test]
    fn t5_takes_v1_1_defaults_and_refuses_what_it_cannot_build() {
        let ModelConfig::T5(c) = small_t5() else { panic!("not a T5") };
        assert_eq!((c.relative_attention_num_buckets, c.relative_attention_max_distance), (32, 128));
        assert_eq!(c.feed_forward, super::super::t5::FeedForward::GatedGelu);
        assert!(!c.tie_word_embeddings);
        small_t5().validate().unwrap();
        let odd = ModelConfig::T5(super::super::t5::T5Config { relative_attention_num_buckets: 7, ..c.clone() });
        assert!(odd.validate().unwrap_err().to_string().contains("relative_attention_num_buckets"));
        let start = ModelConfig::T5(super::super::t5::T5Config { decoder_start_token_id: 50, ..c });
        assert!(start.validate().unwrap_err().to_string().contains("decoder_start_token_id"));
    }

    #[test]
    fn ron_and_json_round_trip() {
        for c in [gpt2_124m(), tiny_llama(500.0, false), small_t5()] {
            let ron_text = ron::to_string(&c).unwrap();
            let variant = match c.family() {
                "gpt" => "Gpt(",
                "llama" => "Llama(",
                _ => "T5(",
            };
            assert!(ron_text.starts_with(variant), "{ron_text}");
            assert_eq!(ron::from_str::<ModelConfig>(&ron_text).unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), c);
            assert_eq!(ModelConfig::from_hf_json(&c.to_hf_json()).unwrap(), c);
        }
    }

    #[test]
    fn plain_hf_configs_are_understood() {
        for c in [gpt2_124m(), small_t5()] {
            let mut hf = c.to_hf_json();
            hf.as_object_mut().unwrap().remove("triad_config");
            assert_eq!(ModelConfig::from_hf_json(&hf).unwrap(), c);
        }
    }

    #[test]
    fn transformers_5_rope_parameters_are_read_and_scaled_rope_refused() {
        let mut hf = tiny_llama(50_000.0, false).to_hf_json();
        let hf = hf.as_object_mut().unwrap();
        hf.remove("triad_config");
        hf.remove("rope_theta");
        hf.insert("rope_parameters".into(), serde_json::json!({"rope_theta": 50000.0, "rope_type": "default"}));
        let json = serde_json::Value::Object(hf.clone());
        let ModelConfig::Llama(l) = ModelConfig::from_hf_json(&json).unwrap() else { panic!() };
        assert_eq!(l.rope_theta, 50_000.0);
        hf.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}),
        );
        let e = ModelConfig::from_hf_json(&serde_json::Value::Object(hf.clone())).unwrap_err();
        assert!(e.contains("llama3"), "{e}");
    }

    #[test]
    fn settings_the_blocks_do_not_implement_are_refused_by_name() {
        let mut gpt = gpt2_124m().to_hf_json();
        gpt.as_object_mut().unwrap().remove("triad_config");
        for (key, value, says) in [
            ("activation_function", serde_json::json!("relu"), "`activation_function` \"relu\" is not supported"),
            ("layer_norm_epsilon", serde_json::json!(1e-6), "`layer_norm_epsilon` 1e-6 is not supported"),
        ] {
            let mut bad = gpt.clone();
            bad[key] = value;
            let e = ModelConfig::from_hf_json(&bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let mut llama = tiny_llama(1e4, true).to_hf_json();
        llama.as_object_mut().unwrap().remove("triad_config");
        assert!(ModelConfig::from_hf_json(&llama).is_ok());
        for (key, value) in [
            ("hidden_act", serde_json::json!("gelu")),
            ("mlp_bias", serde_json::json!(true)),
            ("head_dim", serde_json::json!(8)),
        ] {
            let mut bad = llama.clone();
            bad[key] = value;
            let e = ModelConfig::from_hf_json(&bad).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = |c: ModelConfig| c.validate().unwrap_err().to_string();
        let ModelConfig::Gpt(g) = gpt2_124m() else { unreachable!() };
        assert!(bad(ModelConfig::Gpt(GptConfig { heads: 5, ..g.clone() })).contains("divisible by heads"));
        assert!(bad(ModelConfig::Gpt(GptConfig { vocab_size: 0, ..g.clone() })).contains("with_vocab_size"));
        assert!(bad(ModelConfig::Gpt(GptConfig { dropout: 1.0, ..g.clone() })).contains("dropout"));
        assert!(ModelConfig::Gpt(GptConfig { vocab_size: 0, ..g }).with_vocab_size(7).validate().is_ok());
        let l = LlamaConfig {
            vocab_size: 10,
            context: 8,
            layers: 1,
            heads: 4,
            kv_heads: 3,
            d_model: 16,
            ffn_hidden: 12,
            rope_theta: 1e4,
            rms_eps: 1e-5,
            tie_embeddings: true,
        };
        assert!(bad(ModelConfig::Llama(l.clone())).contains("divisible by kv_heads"));
        assert!(bad(ModelConfig::Llama(LlamaConfig { kv_heads: 2, d_model: 12, ..l.clone() })).contains("even"));
        assert!(bad(ModelConfig::Llama(LlamaConfig { kv_heads: 0, ..l })).contains("kv_heads must be positive"));
    }
}
