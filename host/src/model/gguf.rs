//! Loading a pretrained Llama-family model from a GGUF file: weights, config, tokenizer, chat
//! template.
//!
//! GGUF is llama.cpp's single-file format: metadata (hyperparameters, the tokenizer's tokens and
//! merges, the chat template) followed by tensors, here quantized (SmolLM2-135M-Instruct: Q8_0
//! embeddings, Q4_1 matrices, f32 norms). [`load_gguf`] reads it with candle's `gguf_file`,
//! dequantizes every tensor to f32 on the requested device (so the model can be fine-tuned),
//! renames the tensors to Hugging Face's Llama names, builds the [`LlamaConfig`] from the
//! metadata and a `tokenizers::Tokenizer` from the vocabulary. [`super::pretrained`] names the
//! packaged GGUF models and loads them through it.
//!
//! **The Q/K row permutation.** llama.cpp applies RoPE to *adjacent* pairs `(x[2i], x[2i+1])`,
//! Hugging Face's Llama to *halves* `(x[i], x[i + d/2])` (`rotate_half`). So that the same
//! weights give the same model, `convert_hf_to_gguf.py` permutes the rows of every head of
//! `q_proj` and `k_proj`:
//! `w.reshape(heads, 2, head_dim/2, d).swapaxes(1, 2).reshape(w.shape)`, which moves HF row
//! `half*head_dim/2 + i` to GGUF row `2i + half`. Our Llama is HF-layout, so we undo it:
//! `w.reshape(heads, head_dim/2, 2, d).transpose(1, 2).reshape(w.shape)` (with `kv_heads` for
//! K). The unit test `undoing_the_permutation_turns_interleaved_rope_into_rotate_half` checks
//! the direction on numbers; `tests/smollm2.rs` checks the whole model against an independent
//! numpy forward pass that keeps llama.cpp's layout and interleaved RoPE.
//!
//! **The tokenizer.** `tokenizer.ggml.model = "gpt2"` is byte-level BPE. Its pre-tokenizer is
//! named by `tokenizer.ggml.pre`; for `smollm` (and the StarCoder family it comes from) every
//! digit is split off on its own, then GPT-2's pattern applies (Hugging Face's
//! `Sequence[Digits(individual_digits), ByteLevel]`, llama.cpp's `\p{N}` then the GPT-2 regex).
//! Tokens of type CONTROL (3) become special added tokens (`<|im_start|>`, `<|im_end|>`, …),
//! matched verbatim before pre-tokenization; USER_DEFINED (4) become ordinary added tokens.
//! When `tokenizer.ggml.add_bos_token` is true a post-processor prepends BOS when special
//! tokens are asked for (SmolLM2: false, as in its Hugging Face tokenizer).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::chat::ChatError;
use crate::model::{LlamaConfig, ModelConfig, ModelError};
use crate::util::packages::RegistryError;

/// A failure to load a GGUF model. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a readable GGUF file: {source}")]
    Format { path: PathBuf, source: Box<candle_core::Error> },
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata { path: PathBuf, key: String, message: String },
    #[error("{path}: tensor `{name}`: {source}")]
    Tensor { path: PathBuf, name: String, source: Box<candle_core::Error> },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("{path}: tensor `{name}` is not part of a Llama model triad knows how to map")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: building the tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    ChatTemplate { path: PathBuf, source: Box<ChatError> },
    #[error("{path}: building the model: {source}")]
    Model { path: PathBuf, source: Box<ModelError> },
    #[error(transparent)]
    Registry(#[from] Box<RegistryError>),
}

/// Ids of the tokens with a role, from the metadata (`tokenizer.ggml.*_token_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unknown: Option<u32>,
    pub padding: Option<u32>,
    /// Whether the model expects BOS in front of every input (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
}

/// Everything a GGUF file holds, ready for [`Model::from_weights`].
pub struct GgufModel {
    pub config: ModelConfig,
    /// f32 tensors under Hugging Face Llama names (`model.embed_tokens.weight`, …; `lm_head.weight`
    /// only when the file has an untied `output.weight`).
    pub weights: HashMap<String, Tensor>,
    /// Encodes exactly as the model's own tokenizer (special tokens included).
    pub tokenizer: Tokenizer,
    pub special_tokens: SpecialTokens,
    /// `tokenizer.chat_template`, verbatim, if the file has one.
    pub chat_template: Option<String>,
    /// `general.name`, for logs and manifests.
    pub name: Option<String>,
}

/// Read a Llama-architecture GGUF: config, dequantized f32 weights (on `device`) under Hugging
/// Face names, and its tokenizer.
pub fn load_gguf(path: &Path, device: &Device) -> Result<GgufModel, GgufError> {
    let started = Instant::now();
    let file = File::open(path).map_err(|source| GgufError::Io { path: path.into(), source })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader)
        .map_err(|source| GgufError::Format { path: path.into(), source: Box::new(source) })?;
    let meta = Meta { path, content: &content };

    let arch = meta.string("general.architecture")?;
    if arch != "llama" {
        return Err(GgufError::Unsupported {
            path: path.into(),
            what: format!("architecture `{arch}` (only `llama`)"),
        });
    }
    let tokenizer_build = build_tokenizer(&meta)?;
    let d_model = meta.usize("llama.embedding_length")?;
    let heads = meta.usize("llama.attention.head_count")?;
    let kv_heads = meta.usize("llama.attention.head_count_kv")?;
    if heads == 0 || kv_heads == 0 || d_model % heads != 0 || heads % kv_heads != 0 {
        return Err(meta.bad(
            "llama.attention.head_count",
            format!("{heads} heads and {kv_heads} key/value heads do not divide d_model {d_model}"),
        ));
    }
    let head_dim = d_model / heads;
    if head_dim % 2 != 0 {
        return Err(meta.bad("llama.embedding_length", format!("head size {head_dim} is odd: RoPE needs pairs")));
    }
    if let Some(rope_dims) = meta.optional("llama.rope.dimension_count") {
        let rope_dims = meta.as_usize("llama.rope.dimension_count", rope_dims)?;
        if rope_dims != head_dim {
            return Err(GgufError::Unsupported {
                path: path.into(),
                what: format!("partial RoPE ({rope_dims} of {head_dim} dimensions per head)"),
            });
        }
    }
    let vocab_size = tokenizer_build.vocab_size;
    if let Some(v) = meta.optional("llama.vocab_size") {
        let declared = meta.as_usize("llama.vocab_size", v)?;
        if declared != vocab_size {
            return Err(meta.bad("llama.vocab_size", format!("{declared}, but the token list has {vocab_size}")));
        }
    }
    let layers = meta.usize("llama.block_count")?;
    let ffn_hidden = meta.usize("llama.feed_forward_length")?;
    let tie_embeddings = !content.tensor_infos.contains_key("output.weight");
    let config = LlamaConfig {
        vocab_size,
        context: meta.usize("llama.context_length")?,
        layers,
        heads,
        kv_heads,
        d_model,
        ffn_hidden,
        rope_theta: meta.float_or("llama.rope.freq_base", 10_000.0)?,
        rms_eps: meta.float_or("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        tie_embeddings,
    };

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut weights = HashMap::with_capacity(names.len());
    for gguf_name in names {
        let mapped = hf_name(gguf_name, layers)
            .ok_or_else(|| GgufError::UnexpectedTensor { path: path.into(), name: gguf_name.clone() })?;
        let tensor_err =
            |source| GgufError::Tensor { path: path.into(), name: gguf_name.clone(), source: Box::new(source) };
        // Read on the CPU (the bytes are there already); dequantize moves the result to `device`.
        let q = content.tensor(&mut reader, gguf_name, &Device::Cpu).map_err(tensor_err)?;
        let w = q.dequantize(device).map_err(tensor_err)?;
        let expected = expected_shape(&mapped.kind, &config);
        if w.dims() != expected.as_slice() {
            return Err(GgufError::Shape {
                path: path.into(),
                name: gguf_name.clone(),
                expected,
                actual: w.dims().to_vec(),
            });
        }
        let w = match mapped.kind {
            Kind::Query => unpermute_rows(&w, heads).map_err(tensor_err)?,
            Kind::Key => unpermute_rows(&w, kv_heads).map_err(tensor_err)?,
            _ => w,
        };
        weights.insert(mapped.name, w);
    }
    for name in required_names(&config) {
        if !weights.contains_key(&name) {
            return Err(GgufError::MissingTensor { path: path.into(), name });
        }
    }
    let chat_template =
        meta.optional("tokenizer.chat_template").map(|v| meta.as_string("tokenizer.chat_template", v)).transpose()?;
    let name = meta.optional("general.name").and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    });
    tracing::info!(
        file = %path.display(),
        name = name.as_deref().unwrap_or("?"),
        tensors = weights.len(),
        parameters = weights.values().map(|t| t.elem_count()).sum::<usize>(),
        seconds = started.elapsed().as_secs_f64(),
        "loaded GGUF"
    );
    Ok(GgufModel {
        config: ModelConfig::Llama(config),
        weights,
        tokenizer: tokenizer_build.tokenizer,
        special_tokens: tokenizer_build.special,
        chat_template,
        name,
    })
}

/// Undo llama.cpp's per-head row permutation of a Q or K projection `(heads*head_dim, d)`:
/// GGUF row `h*head_dim + 2i + half` goes back to HF row `h*head_dim + half*head_dim/2 + i`.
pub fn unpermute_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    w.reshape((heads, half, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

/// What a tensor is, for its shape and for the Q/K fix-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embedding,
    Head,
    Norm,
    Query,
    Key,
    Value,
    Output,
    Gate,
    Up,
    Down,
}

struct Mapped {
    name: String,
    kind: Kind,
}

/// The Hugging Face name of a GGUF tensor, or None for one a Llama does not have.
fn hf_name(gguf: &str, layers: usize) -> Option<Mapped> {
    let (name, kind) = match gguf {
        "token_embd.weight" => ("model.embed_tokens.weight".to_string(), Kind::Embedding),
        "output_norm.weight" => ("model.norm.weight".to_string(), Kind::Norm),
        "output.weight" => ("lm_head.weight".to_string(), Kind::Head),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            if layer >= layers {
                return None;
            }
            let (hf, kind) = match part {
                "attn_norm.weight" => ("input_layernorm.weight", Kind::Norm),
                "ffn_norm.weight" => ("post_attention_layernorm.weight", Kind::Norm),
                "attn_q.weight" => ("self_attn.q_proj.weight", Kind::Query),
                "attn_k.weight" => ("self_attn.k_proj.weight", Kind::Key),
                "attn_v.weight" => ("self_attn.v_proj.weight", Kind::Value),
                "attn_output.weight" => ("self_attn.o_proj.weight", Kind::Output),
                "ffn_gate.weight" => ("mlp.gate_proj.weight", Kind::Gate),
                "ffn_up.weight" => ("mlp.up_proj.weight", Kind::Up),
                "ffn_down.weight" => ("mlp.down_proj.weight", Kind::Down),
                _ => return None,
            };
            (format!("model.layers.{layer}.{hf}"), kind)
        }
    };
    Some(Mapped { name, kind })
}

/// The (out, in) shape a tensor must have; candle lists GGUF dimensions outermost first.
fn expected_shape(kind: &Kind, c: &LlamaConfig) -> Vec<usize> {
    let head_dim = c.d_model / c.heads;
    match kind {
        Kind::Embedding | Kind::Head => vec![c.vocab_size, c.d_model],
        Kind::Norm => vec![c.d_model],
        Kind::Query => vec![c.heads * head_dim, c.d_model],
        Kind::Key | Kind::Value => vec![c.kv_heads * head_dim, c.d_model],
        Kind::Output => vec![c.d_model, c.heads * head_dim],
        Kind::Gate | Kind::Up => vec![c.ffn_hidden, c.d_model],
        Kind::Down => vec![c.d_model, c.ffn_hidden],
    }
}

fn required_names(c: &LlamaConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if !c.tie_embeddings {
        names.push("lm_head.weight".into());
    }
    for i in 0..c.layers {
        for part in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("model.layers.{i}.{part}"));
        }
    }
    names
}

/// Typed access to the metadata, with errors that name the file and key.
struct Meta<'a> {
    path: &'a Path,
    content: &'a Content,
}

impl Meta<'_> {
    fn bad(&self, key: &str, message: String) -> GgufError {
        GgufError::Metadata { path: self.path.into(), key: key.into(), message }
    }

    fn optional(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.optional(key).ok_or_else(|| self.bad(key, "missing".into()))
    }

    fn as_usize(&self, key: &str, v: &Value) -> Result<usize, GgufError> {
        let n: Option<i128> = match v {
            Value::U8(x) => Some((*x).into()),
            Value::I8(x) => Some((*x).into()),
            Value::U16(x) => Some((*x).into()),
            Value::I16(x) => Some((*x).into()),
            Value::U32(x) => Some((*x).into()),
            Value::I32(x) => Some((*x).into()),
            Value::U64(x) => Some((*x).into()),
            Value::I64(x) => Some((*x).into()),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.bad(key, format!("expected a non-negative integer, found {}", describe(v))))
    }

    fn usize(&self, key: &str) -> Result<usize, GgufError> {
        self.as_usize(key, self.get(key)?)
    }

    fn float_or(&self, key: &str, default: f64) -> Result<f64, GgufError> {
        match self.optional(key) {
            None => Ok(default),
            Some(Value::F32(x)) => Ok(f64::from(*x)),
            Some(Value::F64(x)) => Ok(*x),
            Some(other) => Err(self.bad(key, format!("expected a float, found {}", describe(other)))),
        }
    }

    fn as_string(&self, key: &str, v: &Value) -> Result<String, GgufError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.bad(key, format!("expected a string, found {}", describe(other)))),
        }
    }

    fn string(&self, key: &str) -> Result<String, GgufError> {
        self.as_string(key, self.get(key)?)
    }

    fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.get(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.bad(key, format!("expected an array, found {}", describe(other)))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, GgufError> {
        match self.optional(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.bad(key, format!("expected a bool, found {}", describe(other)))),
        }
    }

    fn token_id(&self, key: &str, vocab_size: usize) -> Result<Option<u32>, GgufError> {
        let Some(v) = self.optional(key) else { return Ok(None) };
        let id = self.as_usize(key, v)?;
        if id >= vocab_size {
            return Err(self.bad(key, format!("id {id} is outside the vocabulary of {vocab_size}")));
        }
        Ok(Some(id as u32))
    }
}

/// A short description of a metadata value (never the whole of a 49,152-entry array).
fn describe(v: &Value) -> String {
    match v {
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::String(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        other => format!("{other:?}"),
    }
}

struct TokenizerBuild {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    vocab_size: usize,
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

fn build_tokenizer(meta: &Meta) -> Result<TokenizerBuild, GgufError> {
    let path = meta.path;
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Unsupported {
            path: path.into(),
            what: format!("tokenizer model `{model}` (only byte-level BPE, `gpt2`)"),
        });
    }
    let pre = meta.optional("tokenizer.ggml.pre").map(|v| meta.as_string("tokenizer.ggml.pre", v)).transpose()?;
    // llama.cpp gives these the same pre-tokenizer: digits one by one, then the GPT-2 pattern.
    let split_digits = match pre.as_deref() {
        Some("smollm" | "starcoder" | "refact" | "codeshell") => true,
        Some("gpt-2") => false,
        other => {
            return Err(GgufError::Unsupported { path: path.into(), what: format!("pre-tokenizer {other:?}") });
        }
    };

    let tokens = meta.array("tokenizer.ggml.tokens")?;
    let mut vocab = Vocab::default();
    let mut token_strings = Vec::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        let key = "tokenizer.ggml.tokens";
        let s = meta.as_string(key, t)?;
        if vocab.insert(s.clone(), id as u32).is_some() {
            return Err(meta.bad(key, format!("token {s:?} appears twice (again at id {id})")));
        }
        token_strings.push(s);
    }
    let vocab_size = token_strings.len();
    let types: Vec<i32> = match meta.optional("tokenizer.ggml.token_type") {
        None => vec![1; vocab_size],
        Some(Value::Array(items)) if items.len() == vocab_size => items
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x),
                other => Err(meta.bad("tokenizer.ggml.token_type", format!("expected i32, found {}", describe(other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(
                meta.bad("tokenizer.ggml.token_type", format!("expected {vocab_size} i32s, found {}", describe(other)))
            );
        }
    };
    let mut merges = Vec::new();
    for (i, m) in meta.array("tokenizer.ggml.merges")?.iter().enumerate() {
        let key = "tokenizer.ggml.merges";
        let m = meta.as_string(key, m)?;
        let (a, b) = m.split_once(' ').ok_or_else(|| meta.bad(key, format!("merge {i} ({m:?}) is not two tokens")))?;
        merges.push((a.to_string(), b.to_string()));
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GgufError::Tokenizer { path: path.into(), message: e.to_string() })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = if split_digits {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    let added: Vec<AddedToken> = token_strings
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
        .map(|(s, t)| AddedToken::from(s.clone(), *t == TOKEN_TYPE_CONTROL).normalized(false))
        .collect();
    tokenizer
        .add_tokens(added)
        .map_err(|e| GgufError::Tokenizer { path: path.into(), message: format!("adding special tokens: {e}") })?;

    let special = SpecialTokens {
        bos: meta.token_id("tokenizer.ggml.bos_token_id", vocab_size)?,
        eos: meta.token_id("tokenizer.ggml.eos_token_id", vocab_size)?,
        unknown: meta.token_id("tokenizer.ggml.unknown_token_id", vocab_size)?,
        padding: meta.token_id("tokenizer.ggml.padding_token_id", vocab_size)?,
        add_bos: meta.bool_or("tokenizer.ggml.add_bos_token", false)?,
    };
    if special.add_bos {
        let bos = special
            .bos
            .ok_or_else(|| meta.bad("tokenizer.ggml.bos_token_id", "missing, but add_bos_token is true".into()))?;
        let text = token_strings[bos as usize].clone();
        let processor = TemplateProcessing::builder()
            .try_single(format!("{text} $A"))
            .and_then(|b| b.try_pair(format!("{text} $A $B:1")))
            .map_err(|e| GgufError::Tokenizer { path: path.into(), message: e.to_string() })?
            .special_tokens(vec![(text.clone(), bos)])
            .build()
            .map_err(|e| GgufError::Tokenizer { path: path.into(), message: e.to_string() })?;
        tokenizer.with_post_processor(Some(processor));
    }
    // Added tokens already in the vocabulary keep their ids; check, since a renumbered special
    // token would silently shift every chat prompt.
    for (id, (s, t)) in token_strings.iter().zip(&types).enumerate() {
        if (*t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED) && tokenizer.token_to_id(s) != Some(id as u32) {
            return Err(GgufError::Tokenizer {
                path: path.into(),
                message: format!("added token {s:?} lost its id {id}"),
            });
        }
    }
    Ok(TokenizerBuild { tokenizer, special, vocab_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RoPE as llama.cpp applies it: adjacent pairs (x[2i], x[2i+1]).
    fn rope_interleaved(x: &[f64], pos: f64, base: f64) -> Vec<f64> {
        let d = x.len();
        let mut out = vec![0.0; d];
        for i in 0..d / 2 {
            let a = pos * base.powf(-((2 * i) as f64) / d as f64);
            let (s, c) = a.sin_cos();
            out[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
            out[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c;
        }
        out
    }

    /// RoPE as Hugging Face's Llama applies it: halves (x[i], x[i + d/2]), `rotate_half`.
    fn rope_halves(x: &[f64], pos: f64, base: f64) -> Vec<f64> {
        let d = x.len();
        let mut out = vec![0.0; d];
        for i in 0..d / 2 {
            let a = pos * base.powf(-((2 * i) as f64) / d as f64);
            let (s, c) = a.sin_cos();
            out[i] = x[i] * c - x[i + d / 2] * s;
            out[i + d / 2] = x[i + d / 2] * c + x[i] * s;
        }
        out
    }

    fn matvec(w: &[f32], rows: usize, x: &[f64]) -> Vec<f64> {
        let cols = x.len();
        (0..rows).map(|r| (0..cols).map(|c| f64::from(w[r * cols + c]) * x[c]).sum()).collect()
    }

    /// The property the loader relies on: attention scores q·k from the GGUF's rows under
    /// interleaved RoPE equal those from the un-permuted rows under rotate_half RoPE.
    #[test]
    fn undoing_the_permutation_turns_interleaved_rope_into_rotate_half() {
        let (heads, head_dim, d) = (3usize, 8usize, 5usize);
        let rows = heads * head_dim;
        // Arbitrary but fixed GGUF-layout weights.
        let gguf: Vec<f32> = (0..rows * d).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let w = Tensor::from_vec(gguf.clone(), (rows, d), &Device::Cpu).unwrap();
        let hf: Vec<f32> = unpermute_rows(&w, heads).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let xq = [0.3, -1.2, 0.7, 2.0, -0.4];
        let xk = [-0.9, 0.1, 1.5, -0.2, 0.8];
        let (pq, pk) = (7.0, 3.0);
        let (q_g, k_g) = (matvec(&gguf, rows, &xq), matvec(&gguf, rows, &xk));
        let (q_h, k_h) = (matvec(&hf, rows, &xq), matvec(&hf, rows, &xk));
        for h in 0..heads {
            let span = h * head_dim..(h + 1) * head_dim;
            let a = rope_interleaved(&q_g[span.clone()], pq, 10_000.0);
            let b = rope_interleaved(&k_g[span.clone()], pk, 10_000.0);
            let c = rope_halves(&q_h[span.clone()], pq, 10_000.0);
            let e = rope_halves(&k_h[span.clone()], pk, 10_000.0);
            let dot_gguf: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let dot_hf: f64 = c.iter().zip(&e).map(|(x, y)| x * y).sum();
            assert!((dot_gguf - dot_hf).abs() < 1e-9, "head {h}: {dot_gguf} vs {dot_hf}");
            // And the rotated vectors themselves are the same up to the same row reordering.
            let mut reordered = vec![0.0; head_dim];
            for i in 0..head_dim / 2 {
                reordered[2 * i] = c[i];
                reordered[2 * i + 1] = c[i + head_dim / 2];
            }
            for (x, y) in a.iter().zip(&reordered) {
                assert!((x - y).abs() < 1e-9);
            }
        }
        // The wrong direction (re-applying the forward permutation) breaks it: the test can fail.
        let wrong: Vec<f32> = w
            .reshape((heads, 2, head_dim / 2, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (q_w, k_w) = (matvec(&wrong, rows, &xq), matvec(&wrong, rows, &xk));
        let a = rope_interleaved(&q_g[..head_dim], pq, 10_000.0);
        let b = rope_interleaved(&k_g[..head_dim], pk, 10_000.0);
        let c = rope_halves(&q_w[..head_dim], pq, 10_000.0);
        let e = rope_halves(&k_w[..head_dim], pk, 10_000.0);
        let dot_gguf: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let dot_wrong: f64 = c.iter().zip(&e).map(|(x, y)| x * y).sum();
        assert!((dot_gguf - dot_wrong).abs() > 1e-3);
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        let m = hf_name("blk.12.attn_q.weight", 30).unwrap();
        assert_eq!((m.name.as_str(), m.kind), ("model.layers.12.self_attn.q_proj.weight", Kind::Query));
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", 30).unwrap().name,
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("blk.29.ffn_down.weight", 30).unwrap().name, "model.layers.29.mlp.down_proj.weight");
        assert_eq!(hf_name("token_embd.weight", 30).unwrap().name, "model.embed_tokens.weight");
        assert_eq!(hf_name("output_norm.weight", 30).unwrap().name, "model.norm.weight");
        assert_eq!(hf_name("output.weight", 30).unwrap().name, "lm_head.weight");
        assert!(hf_name("blk.30.attn_q.weight", 30).is_none());
        assert!(hf_name("blk.0.attn_q.bias", 30).is_none());
        assert!(hf_name("rope_freqs.weight", 30).is_none());
    }
}
