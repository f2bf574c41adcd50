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
//! `t5.rs` holds the encoder-decoder (T5), a [`Model`] family too: the decoders read a prompt
//! and its response as one sequence, T5 reads the prompt with its encoder and the response with
//! its decoder. What the stages ask of both is [`Model::response_states`] (the states that
//! predict each response token: the LM head, the fused cross-entropy or a value head reads
//! them; T5's pretraining objectives are prompts and responses too), [`Model::sequence_hidden`]
//! (a reward model's view of a whole text) and [`generate()`].
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
use t5::T5;

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
            ModelConfig::T5(c) => c.param_specs(),
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
    T5(Box<T5>),
}

/// A language model of any family: a decoder (GPT-2, Llama) or an encoder-decoder (T5).
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
            // `T5ForConditionalGeneration` files may hold each stack's copy of the shared
            // embedding (the same tensor); only `shared.weight` is a parameter.
            ModelConfig::T5(_) => weights
                .into_iter()
                .filter(|(name, _)| name != "encoder.embed_tokens.weight" && name != "decoder.embed_tokens.weight")
                .collect(),
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
                (ModelConfig::T5(c), "lm_head.weight") if c.tie_word_embeddings => {
                    " (the config ties the LM head to the embedding: tie_word_embeddings)".to_string()
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
            ModelConfig::T5(c) => Ok(Trunk::T5(Box::new(T5::build(c.clone(), &params)?))),
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
            ModelConfig::Llama(_) | ModelConfig::T5(_) => 0.0,
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
        if self.config.is_encoder_decoder() {
            return Err(ModelError::Input(
                "T5 reads a prompt and a response apart, not one sequence: use response_states or sequence_hidden"
                    .into(),
            ));
        }
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
                    ModelConfig::T5(c) => (c.num_heads, c.d_kv),
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
            Trunk::T5(_) => candle_core::bail!("internal: T5 has no single-sequence trunk"),
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

    /// The decoders' LM head weight (V, D); T5 has its own head (see [`T5::lm_head`]).
    fn decoder_lm_head(&self) -> &Tensor {
        match &self.trunk {
            Trunk::Gpt(m) => m.lm_head(),
            Trunk::Llama(m) => m.lm_head(),
            Trunk::T5(m) => m.lm_head().0,
        }
    }

    /// LM logits (B, T, V) from hidden states (B, T, D).
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        if let Trunk::T5(t5) = &self.trunk {
            return t5.head(hidden).ctx(|| "T5 LM head".into());
        }
        let head = linear::Linear { weight: self.decoder_lm_head().clone(), bias: None, layout: linear::Layout::OutIn };
        head.forward(hidden).ctx(|| "LM head".into())
    }

    /// -log p(target) per position, (B, T), from hidden states (B, T, D) and u32 targets
    /// (B, T): the LM head and the cross-entropy, fused into one op on the CPU (see
    /// `kernels::lm_head_cross_entropy`), else the logits and `kernels::cross_entropy_rows`.
    pub fn token_nll(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor, ModelError> {
        if let Trunk::T5(t5) = &self.trunk {
            return t5.token_nll(hidden, targets);
        }
        let weight = self.decoder_lm_head();
        if kernels::fused(&[hidden, weight]) {
            return kernels::lm_head_cross_entropy(hidden, weight, targets).ctx(|| "LM head and loss".into());
        }
        kernels::cross_entropy_rows(&self.lm_logits(hidden)?, targets).ctx(|| "cross-entropy".into())
    }

    /// The states that predict each row's response tokens, flat over them, (N, D), and those
    /// tokens, (N) u32, row after row. Row r of `rows` is a prompt followed by its response of
    /// `response_lens[r]` tokens. A decoder reads each whole row (right-padded with `pad`) and
    /// response token j is predicted at position `prompt + j - 1`; T5's encoder reads the
    /// prompts, its decoder the responses behind the start token, and token j is predicted at
    /// decoder position j. Differentiable; `train` turns dropout on.
    pub fn response_states(
        &self,
        rows: &[Vec<u32>],
        response_lens: &[usize],
        pad: u32,
        train: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        if rows.len() != response_lens.len() {
            return Err(ModelError::Input(format!(
                "{} rows with {} response lengths",
                rows.len(),
                response_lens.len()
            )));
        }
        for (r, (row, &len)) in rows.iter().zip(response_lens).enumerate() {
            let least = if self.config.is_encoder_decoder() { len } else { len + 1 };
            if row.len() < least {
                return Err(ModelError::Input(format!(
                    "row {r} has {} tokens, too few for a response of {len} after a prompt",
                    row.len()
                )));
            }
        }
        let targets: Vec<u32> =
            rows.iter().zip(response_lens).flat_map(|(row, &len)| row[row.len() - len..].iter().copied()).collect();
        let n = targets.len();
        let targets = Tensor::from_vec(targets, n, &self.device).ctx(|| "response tokens".into())?;
        let (hidden, index) = match &self.trunk {
            Trunk::T5(t5) => {
                let prompts: Vec<&[u32]> =
                    rows.iter().zip(response_lens).map(|(row, &len)| &row[..row.len() - len]).collect();
                let start = t5.config.decoder_start_token_id;
                let decoder: Vec<Vec<u32>> = rows
                    .iter()
                    .zip(response_lens)
                    .map(|(row, &len)| {
                        std::iter::once(start).chain(row[row.len() - len..].iter().copied()).take(len.max(1)).collect()
                    })
                    .collect();
                let width = decoder.iter().map(Vec::len).max().unwrap_or(1);
                let positions: Vec<u32> = response_lens
                    .iter()
                    .enumerate()
                    .flat_map(|(r, &len)| (0..len).map(move |j| (r * width + j) as u32))
                    .collect();
                // T5 has no dropout: `train` changes nothing.
                let hidden = self.seq2seq_rows(&prompts, &decoder, pad)?;
                (hidden, positions)
            }
            _ => {
                let (tokens, _) = reward::pad_rows(rows, pad, &self.device)?;
                let width = tokens.dim(1).ctx(|| "padded rows".into())?;
                (self.hidden(&tokens, train)?, prediction_positions(rows, response_lens, width))
            }
        };
        let index = Tensor::from_vec(index, n, &self.device).ctx(|| "response positions".into())?;
        let run = || -> candle_core::Result<Tensor> {
            let (b, t, d) = hidden.dims3()?;
            hidden.reshape((b * t, d))?.index_select(&index, 0)
        };
        Ok((run().ctx(|| "states at the response positions".into())?, targets))
    }

    /// T5 over prompts (right-padded with `pad`, masked) and decoder inputs (right-padded with
    /// `pad`; causal, so the padding never reaches a real position): the decoder's states (B,
    /// T, D).
    fn seq2seq_rows(&self, prompts: &[&[u32]], decoder: &[Vec<u32>], pad: u32) -> Result<Tensor, ModelError> {
        let (b, device) = (prompts.len(), &self.device);
        let s = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
        let t = decoder.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![pad; b * s];
        let mut mask = vec![0u32; b * s];
        let mut dec = vec![pad; b * t];
        for (r, (prompt, d)) in prompts.iter().zip(decoder).enumerate() {
            ids[r * s..r * s + prompt.len()].copy_from_slice(prompt);
            mask[r * s..r * s + prompt.len()].fill(1);
            dec[r * t..r * t + d.len()].copy_from_slice(d);
        }
        let ids = Tensor::from_vec(ids, (b, s), device).ctx(|| "encoder inputs".into())?;
        let mask = Tensor::from_vec(mask, (b, s), device).ctx(|| "encoder mask".into())?;
        let dec = Tensor::from_vec(dec, (b, t), device).ctx(|| "decoder inputs".into())?;
        self.seq2seq_hidden(&ids, Some(&mask), &dec)
    }

    /// T5: the encoder over `inputs` (B, S) (`mask` (B, S): 1 real, 0 padding), then the
    /// decoder over `decoder_inputs` (B, T): its normed states (B, T, D). A decoder-only
    /// model has no encoder and refuses.
    fn seq2seq_hidden(
        &self,
        inputs: &Tensor,
        mask: Option<&Tensor>,
        decoder_inputs: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let Trunk::T5(t5) = &self.trunk else {
            return Err(ModelError::Input(format!("a {} model has no encoder", self.config.family())));
        };
        let context = self.config.context();
        let (s, t) = (inputs.dim(1).unwrap_or(0), decoder_inputs.dim(1).unwrap_or(0));
        if s > context || t > context {
            return Err(ModelError::Input(format!(
                "{s} encoder and {t} decoder positions do not fit the context of {context}"
            )));
        }
        for (what, ids) in [("encoder", inputs), ("decoder", decoder_inputs)] {
            let max = ids.max_all().and_then(|m| m.to_scalar::<u32>()).ctx(|| format!("{what} token ids"))?;
            if max as usize >= self.config.vocab_size() {
                return Err(ModelError::Input(format!(
                    "{what} token {max} lies outside the vocabulary of {}",
                    self.config.vocab_size()
                )));
            }
        }
        let encoded = t5.encode(inputs, mask)?;
        t5.decoder_hidden(decoder_inputs, &encoded, mask)
    }

    /// States (B, T, D) of right-padded whole texts `tokens` (B, T) whose real lengths are
    /// `lengths`, where state i has read tokens ..=i: what a reward model's scalar head reads
    /// at a text's last token. A decoder reads the text causally; T5 reads it with its encoder
    /// and again, shifted right behind the start token, with its decoder
    /// (`T5ForSequenceClassification`'s view).
    pub fn sequence_hidden(&self, tokens: &Tensor, lengths: &[usize], train: bool) -> Result<Tensor, ModelError> {
        let Trunk::T5(t5) = &self.trunk else { return self.hidden(tokens, train) };
        let (b, t) = tokens.dims2().ctx(|| "texts must be (batch, length)".into())?;
        if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(ModelError::Input(format!("lengths {lengths:?} for {b} rows of {t} tokens")));
        }
        let mask: Vec<u32> = lengths.iter().flat_map(|&l| (0..t).map(move |j| u32::from(j < l))).collect();
        let mask = Tensor::from_vec(mask, (b, t), &self.device).ctx(|| "text mask".into())?;
        let start = Tensor::full(t5.config.decoder_start_token_id, (b, 1), &self.device).ctx(|| "start".into())?;
        let shifted =
            Tensor::cat(&[&start, &tokens.narrow(1, 0, t - 1).ctx(|| "shift".into())?], 1).ctx(|| "shift".into())?;
        self.seq2seq_hidden(tokens, Some(&mask), &shifted)
    }

    /// The T5 inside, when the model is one: its encoder, decoder and generation by
    /// themselves (`Model` owns its parameters, loads and saves it).
    pub fn as_t5(&self) -> Option<&T5> {
        match &self.trunk {
            Trunk::T5(t5) => Some(t5),
            _ => None,
        }
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

/// Flat indices (row * width + position) of the positions whose next token is a response
/// token in a decoder's (rows, width) grid, row after row: response token j of a row with
/// prompt length p is predicted at p + j - 1.
pub fn prediction_positions(rows: &[Vec<u32>], response_lens: &[usize], width: usize) -> Vec<u32> {
    let mut positions = Vec::new();
    for (r, (row, &len)) in rows.iter().zip(response_lens).enumerate() {
        let prompt = row.len() - len;
        for j in 0..len {
            positions.push((r * width + prompt + j - 1) as u32);
        }
    }
    positions
}

/// Whether weight decay applies to the parameter `name`: true for the matrices of matmuls
/// (projections, untied LM head, scalar head), false for norms, biases and embeddings (including
/// the tied `wte`/`embed_tokens` and `wpe`).
pub fn decays(name: &str) -> bool {
    let is_embedding =
        ["wte.weight", "wpe.weight", "embed_tokens.weight", "shared.weight", "relative_attention_bias.weight"]
            .iter()
            .any(|e| name.ends_with(e));
    let is_norm = name.contains("ln_") || name.contains("norm.") || name.contains("layernorm.");
    name.ends_with(".weight") && !is_embedding && !is_norm
}

#[cfg(test)]
mod tests;
