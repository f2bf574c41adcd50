//! Transformer language models: a GPT-2 style and a Llama style decoder, their heads, and their
//! checkpoints.
//!
//! [`Model`] is what the stages use: [`Model::new`] (deterministic from a seed),
//! [`Model::from_weights`] (Hugging Face tensor names, as a GGUF or safetensors loader produces
//! them), [`Model::forward`] for logits, [`Model::hidden`] + [`Model::lm_logits`] where a
//! [`ScalarHead`] shares the trunk, [`Model::vars`] for the optimizer, and
//! [`Model::save`]/[`Model::load`] for checkpoints, [`generate()`] for batched sampling with a KV
//! cache, and [`Model::hidden_left_padded`] for the same left-padded batches without a cache (PPO
//! scores its own samples with it).
//!
//! The model code follows the math (nanoGPT style): `gpt.rs` and `llama.rs` hold the two trunks,
//! `attention.rs` the causal attention they share (grouped-query heads, KV cache), `norm.rs`,
//! `mlp.rs`, `rope.rs` and `linear.rs` the pieces, `init.rs` the seeded GPT-2 initialisation.
//! `t5.rs` holds the encoder-decoder (T5), on its own so far: it loads, trains and saves
//! Hugging Face T5 folders, but is no [`Model`] family yet, so no stage takes it.
//!
//! Everything in a training path is built from differentiable tensor ops: candle's fused
//! LayerNorm, RmsNorm and `softmax_last_dim` kernels have no backward pass and would silently
//! stop the gradients (a test checks that every variable of every family gets one). Nothing
//! here is CPU-specific: the same code runs on a CUDA [`Device`]. Parameters are f32.

pub mod attention;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod dropout;
pub mod generate;
pub mod gguf;
pub mod gpt;
pub mod heads;
pub mod init;
pub mod kernels;
pub mod linear;
pub mod llama;
pub mod mlp;
pub mod norm;
pub mod pretrained;
pub mod reward;
pub mod rope;
pub mod t5;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};

pub use attention::KvCache;
pub use checkpoint::{load_tensors, save_tensors_atomically};
pub use config::{GptConfig, LlamaConfig, ModelConfig};
pub use generate::{Generated, SamplingConfig, generate};
pub use heads::{ScalarHead, last_token_values};
pub use reward::RewardModel;

use attention::{CausalMasks, KEY_PAD, Pass, pass_mask};
use dropout::DropoutRng;
use gpt::Gpt;
use llama::Llama;

/// A failure to build, run, save or load a model, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The config cannot describe a working model.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A tensor operation failed.
    #[error("{context}: {source}")]
    Tensor { context: String, source: candle_core::Error },
    /// `from_weights`: a parameter the config needs is absent.
    #[error("weights: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    /// `from_weights`: a tensor the config does not use.
    #[error("weights: unexpected tensor `{name}` with shape {shape:?}{hint}")]
    UnexpectedTensor { name: String, shape: Vec<usize>, hint: String },
    /// `from_weights`: a parameter of the wrong shape.
    #[error("weights: tensor `{name}` has shape {actual:?}, but the config needs {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but does not hold what it should.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The caller passed tensors of the wrong shape, type or length.
    #[error("bad model input: {0}")]
    Input(String),
    /// A [`SamplingConfig`] that cannot be sampled with.
    #[error("invalid sampling config: {0}")]
    Sampling(String),
}

impl ModelConfig {
    /// Every parameter of a model with this config, sorted by name.
    pub fn param_specs(&self) -> Vec<init::ParamSpec> {
        let mut specs = match self {
            ModelConfig::Gpt(c) => gpt::param_specs(c),
            ModelConfig::Llama(c) => llama::param_specs(c),
        };
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }
}

/// Attaches what was being done to a candle error.
pub(crate) trait WithContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ModelError>;
}

impl<T> WithContext<T> for candle_core::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ModelError> {
        self.map_err(|source| ModelError::Tensor { context: context(), source })
    }
}

/// The parameters by name, for the trunks to pick theirs from.
pub(crate) struct Params<'a>(&'a BTreeMap<String, Var>);

impl Params<'_> {
    pub(crate) fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        match self.0.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("internal: no parameter `{name}`"),
        }
    }
}

#[derive(Debug, Clone)]
enum Trunk {
    Gpt(Gpt),
    Llama(Llama),
}

/// A decoder-only language model of either family.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    params: BTreeMap<String, Var>,
    trunk: Trunk,
    masks: CausalMasks,
    dropout: DropoutRng,
    device: Device,
}

impl Model {
    /// A freshly initialised model (GPT-2 init), bit-identical for the same seed.
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Model, ModelError> {
        config.validate()?;
        let mut params = BTreeMap::new();
        for spec in config.param_specs() {
            let var = init::init_var(&spec, seed, device).ctx(|| format!("initialising `{}`", spec.name))?;
            params.insert(spec.name, var);
        }
        Model::assemble(config.clone(), params, device, seed)
    }

    /// A model from Hugging Face named tensors (copied onto `device` as f32). Every parameter
    /// the config needs must be present with its exact shape, and nothing else may be: errors
    /// name the tensor and both shapes. For GPT-2, Hugging Face's extras are accepted: a
    /// `transformer.` prefix, the `attn.bias`/`attn.masked_bias` mask buffers, and
    /// `lm_head.weight` (tied to `wte.weight`, so ignored).
    pub fn from_weights(
        config: &ModelConfig,
        weights: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Model, ModelError> {
        config.validate()?;
        let mut weights: HashMap<String, Tensor> = match config {
            ModelConfig::Gpt(_) => weights
                .into_iter()
                .filter_map(|(name, t)| {
                    let name = name.strip_prefix("transformer.").map(str::to_string).unwrap_or(name);
                    let buffer = name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");
                    (!buffer && name != "lm_head.weight").then_some((name, t))
                })
                .collect(),
            ModelConfig::Llama(_) => weights,
        };
        let mut params = BTreeMap::new();
        for spec in config.param_specs() {
            let t = weights
                .remove(&spec.name)
                .ok_or_else(|| ModelError::MissingTensor { name: spec.name.clone(), expected: spec.shape.clone() })?;
            if t.dims() != spec.shape.as_slice() {
                let actual = t.dims().to_vec();
                return Err(ModelError::ShapeMismatch { name: spec.name, expected: spec.shape, actual });
            }
            // `Var::from_tensor` copies a plain tensor but adopts a variable as is: detach
            // first, so that the new model never shares storage with the caller's tensors.
            let var = t
                .detach()
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .and_then(|t| Var::from_tensor(&t))
                .ctx(|| format!("loading `{}`", spec.name))?;
            params.insert(spec.name, var);
        }
        if let Some((name, t)) = weights.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
            let hint = match (config, name.as_str()) {
                (ModelConfig::Llama(c), "lm_head.weight") if c.tie_embeddings => {
                    " (the config ties the LM head to the embedding: set tie_embeddings: false to use it)".to_string()
                }
                _ => String::new(),
            };
            return Err(ModelError::UnexpectedTensor { name, shape: t.dims().to_vec(), hint });
        }
        Model::assemble(config.clone(), params, device, 0)
    }

    fn assemble(
        config: ModelConfig,
        params: BTreeMap<String, Var>,
        device: &Device,
        seed: u64,
    ) -> Result<Model, ModelError> {
        let p = Params(&params);
        let trunk = match &config {
            ModelConfig::Gpt(c) => Gpt::new(c, &p).map(Trunk::Gpt),
            ModelConfig::Llama(c) => Llama::new(c, &p, device).map(Trunk::Llama),
        }
        .ctx(|| format!("assembling the {} model", config.family()))?;
        Ok(Model {
            trunk,
            params,
            masks: CausalMasks::new(device),
            dropout: DropoutRng::new(seed),
            device: device.clone(),
            config,
        })
    }

    /// An independent copy: same config and values, its own variables (for example PPO's frozen
    /// reference policy).
    pub fn try_clone(&self) -> Result<Model, ModelError> {
        Model::from_weights(&self.config, self.weights(), &self.device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trainable variables, sorted by (Hugging Face) name; a tied embedding appears once.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.params.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// Current parameter values by name, detached from the graph (they share storage with the
    /// variables: copy them before the next optimizer step if they must not change).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_detached_tensor())).collect()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Restarts the dropout masks at the stream of (seed, step). Call it before each training
    /// step: the masks of a step then depend only on (seed, step), and a resumed run repeats
    /// them exactly. Without dropout this changes nothing.
    pub fn seed_dropout(&self, seed: u64, step: u64) {
        self.dropout.reseed(seed, step);
    }

    /// Whether training passes drop activations (GPT with `dropout > 0`).
    pub fn has_dropout(&self) -> bool {
        self.dropout_probability() > 0.0
    }

    fn dropout_probability(&self) -> f64 {
        match &self.config {
            ModelConfig::Gpt(c) => c.dropout,
            ModelConfig::Llama(_) => 0.0,
        }
    }

    fn check_tokens(&self, tokens: &Tensor, past: usize) -> Result<(usize, usize), ModelError> {
        if tokens.dtype() != DType::U32 {
            return Err(ModelError::Input(format!("tokens must be u32, got {:?}", tokens.dtype())));
        }
        let (b, t) = tokens
            .dims2()
            .map_err(|_| ModelError::Input(format!("tokens must be (batch, time), got shape {:?}", tokens.dims())))?;
        let context = self.config.context();
        if t == 0 || past + t > context {
            return Err(ModelError::Input(format!(
                "{t} tokens after {past} cached positions do not fit the context of {context}"
            )));
        }
        Ok((b, t))
    }

    fn run_trunk(
        &self,
        tokens: &Tensor,
        train: bool,
        cache: Option<&mut KvCache>,
        rows: Option<&Rows>,
    ) -> Result<Tensor, ModelError> {
        let past = cache.as_ref().map_or(0, |c| c.len);
        let (b, t) = self.check_tokens(tokens, past)?;
        if let Some(rows) = rows {
            rows.check(b, t, past + t)?;
        }
        let causal = self.masks.get(t, past + t).ctx(|| "building the causal mask".into())?;
        let mask = pass_mask(causal, rows.and_then(|r| r.key_mask.as_ref())).ctx(|| "building the key mask".into())?;
        let p = self.dropout_probability();
        let dropout = (train && p > 0.0).then_some((&self.dropout, p));
        let key_mask = rows.and_then(|r| r.key_mask.clone());
        let pass = Pass { pos: past, positions: rows.map(|r| r.positions.clone()), mask, key_mask, dropout };
        let hidden = match cache {
            Some(cache) => {
                let (kv_heads, head_dim) = match &self.config {
                    ModelConfig::Gpt(c) => (c.heads, c.head_dim()),
                    ModelConfig::Llama(c) => (c.kv_heads, c.head_dim()),
                };
                let (layers, context) = (self.config.layers(), self.config.context());
                cache
                    .reserve(layers, (b, kv_heads, head_dim), past + t, context, &self.device)
                    .ctx(|| "making room in the KV cache".into())?;
                let h = self.trunk_hidden(tokens, &pass, Some(&cache.layers));
                if h.is_ok() {
                    cache.len += t;
                }
                h
            }
            None => self.trunk_hidden(tokens, &pass, None),
        };
        hidden.ctx(|| format!("{} forward pass over {:?} tokens", self.config.family(), tokens.dims()))
    }

    fn trunk_hidden(
        &self,
        tokens: &Tensor,
        pass: &Pass,
        cache: Option<&[attention::LayerKv]>,
    ) -> candle_core::Result<Tensor> {
        match &self.trunk {
            Trunk::Gpt(m) => m.hidden(tokens, pass, cache),
            Trunk::Llama(m) => m.hidden(tokens, pass, cache),
        }
    }

    /// Hidden states after the final norm, (B, T, D), for u32 tokens (B, T). `train` turns
    /// dropout on (GPT with dropout > 0 only).
    pub fn hidden(&self, tokens: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.run_trunk(tokens, train, None, None)
    }

    /// Hidden states (B, T, D) of left-padded rows: row r of `tokens` (B, T) is `pads[r]` pad
    /// tokens (any id) followed by its real tokens, which get exactly the states they would get
    /// alone, at positions 0.. (the pads are masked out as keys; their own states are
    /// meaningless). Differentiable, with dropout when `train`: the batch layout of
    /// [`generate()`], for scoring its samples.
    pub fn hidden_left_padded(&self, tokens: &Tensor, pads: &[usize], train: bool) -> Result<Tensor, ModelError> {
        let (b, t) = self.check_tokens(tokens, 0)?;
        if pads.len() != b {
            return Err(ModelError::Input(format!("{} pad counts for a batch of {b}", pads.len())));
        }
        if let Some((row, &pad)) = pads.iter().enumerate().find(|&(_, &pad)| pad >= t) {
            return Err(ModelError::Input(format!("row {row} has {pad} pads out of {t} tokens: nothing real")));
        }
        let rows = Rows::left_padded(pads, 0, t, t, &self.device)?;
        self.run_trunk(tokens, train, None, Some(&rows))
    }

    /// Hidden states (B, T, D) for `tokens` (B, T) laid out as `rows` says, after the positions
    /// in `cache`, which then holds them too: [`generate()`]'s step.
    pub(crate) fn hidden_rows(&self, tokens: &Tensor, cache: &mut KvCache, rows: &Rows) -> Result<Tensor, ModelError> {
        self.run_trunk(tokens, false, Some(cache), Some(rows))
    }

    /// LM logits (B, T, V) from hidden states (B, T, D).
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let weight = match &self.trunk {
            Trunk::Gpt(m) => m.lm_head(),
            Trunk::Llama(m) => m.lm_head(),
        };
        let head = linear::Linear { weight: weight.clone(), bias: None, layout: linear::Layout::OutIn };
        head.forward(hidden).ctx(|| "LM head".into())
    }

    /// -log p(target) per position, (B, T), from hidden states (B, T, D) and u32 targets
    /// (B, T): the LM head and the cross-entropy, fused into one op on the CPU (see
    /// `kernels::lm_head_cross_entropy`), else the logits and `kernels::cross_entropy_rows`.
    pub fn token_nll(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor, ModelError> {
        let weight = match &self.trunk {
            Trunk::Gpt(m) => m.lm_head(),
            Trunk::Llama(m) => m.lm_head(),
        };
        if kernels::fused(&[hidden, weight]) {
            return kernels::lm_head_cross_entropy(hidden, weight, targets).ctx(|| "LM head and loss".into());
        }
        kernels::cross_entropy_rows(&self.lm_logits(hidden)?, targets).ctx(|| "cross-entropy".into())
    }

    /// Logits (B, T, V) for u32 tokens (B, T).
    pub fn forward(&self, tokens: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.lm_logits(&self.hidden(tokens, train)?)
    }

    /// Incremental decoding: logits (B, T, V) for `tokens` (B, T) placed after the `cache.len()`
    /// positions already in `cache`, which then holds them too. Dropout is off. Start with an
    /// empty cache (the prompt), then feed one token at a time.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        self.lm_logits(&self.run_trunk(tokens, false, Some(cache), None)?)
    }
}

/// The layout of a batch of left-padded rows for one pass: per-row positions (B, T) u32 and,
/// when some row is padded, the additive key mask (B, S) over all S keys (cached ones first):
/// 0 on real keys, [`KEY_PAD`] on pads.
#[derive(Debug)]
pub(crate) struct Rows {
    pub positions: Tensor,
    pub key_mask: Option<Tensor>,
}

impl Rows {
    /// Rows of `pads[r]` pads then real tokens, seen at padded offsets `from..from + t` over `s`
    /// keys: the token at padded offset j sits at position j - pads[r] (pads at 0).
    pub(crate) fn left_padded(
        pads: &[usize],
        from: usize,
        t: usize,
        s: usize,
        device: &Device,
    ) -> Result<Rows, ModelError> {
        let positions: Vec<u32> =
            pads.iter().flat_map(|&pad| (from..from + t).map(move |j| j.saturating_sub(pad) as u32)).collect();
        let positions = Tensor::from_vec(positions, (pads.len(), t), device).ctx(|| "per-row positions".into())?;
        let key_mask = if pads.iter().any(|&pad| pad > 0) {
            let mask: Vec<f32> =
                pads.iter().flat_map(|&pad| (0..s).map(move |j| if j < pad { KEY_PAD } else { 0.0 })).collect();
            Some(Tensor::from_vec(mask, (pads.len(), s), device).ctx(|| "key mask".into())?)
        } else {
            None
        };
        Ok(Rows { positions, key_mask })
    }

    fn check(&self, b: usize, t: usize, s: usize) -> Result<(), ModelError> {
        let key_ok = self.key_mask.as_ref().is_none_or(|m| m.dims() == [b, s]);
        if self.positions.dims() != [b, t] || self.positions.dtype() != DType::U32 || !key_ok {
            return Err(ModelError::Input(format!(
                "row layout: positions {:?} and key mask {:?} for {b} rows of {t} tokens over {s} keys",
                self.positions.dims(),
                self.key_mask.as_ref().map(|m| m.dims().to_vec())
            )));
        }
        Ok(())
    }
}

/// Whether weight decay applies to the parameter `name`: true for the matrices of matmuls
/// (projections, untied LM head, scalar head), false for norms, biases and embeddings (including
/// the tied `wte`/`embed_tokens` and `wpe`).
pub fn decays(name: &str) -> bool {
    let is_embedding = ["wte.weight", "wpe.weight", "embed_tokens.weight"].iter().any(|e| name.ends_with(e));
    let is_norm = name.contains("ln_") || name.contains("norm.") || name.contains("layernorm.");
    name.ends_with(".weight") && !is_embedding && !is_norm
}

#[cfg(test)]
mod tests;
