//! Supervised fine-tuning: next-token cross-entropy on the response tokens of prompt/response
//! examples, the prompt tokens masked out of the loss.
//!
//! Each example is laid out by the stage's template (plain text, or the model's chat template)
//! as `prompt tokens ++ response tokens ++ end token`; the model reads `tokens[..n-1]` and is
//! scored on predicting `tokens[1..]` wherever the predicted token belongs to the response.
//! Rows are right-padded to the longest row of the micro-batch (causal attention keeps padding
//! from reaching any real position, and padded positions are masked). With `packing`, examples
//! are concatenated into rows of `max_len` tokens instead.
//!
//! Example order is a fixed permutation per epoch, a pure function of (seed, epoch): a resumed
//! run sees exactly the examples the uninterrupted run would have. Evaluation is the response
//! loss (and perplexity) on held-out examples, read in order.

use std::path::Path;

use candle_core::{Device, Tensor};

use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::examples::{self, ExampleSet};
use super::layout::{Encoded, Layout, Template};
use crate::data::blocks::{draw_indices, permutation};
use crate::data::tokenizer::TokenizerSpec;
use crate::experiment::{StageSpec, TrainSettings};
use crate::model::{Model, ModelConfig};
use crate::plugins::{Feature, LossPlugin, PluginKind};
use crate::train::plugin_loss::{Features, PluginLossError, plugin_loss};
use crate::train::{
    Objective, SplitLoss, TrainError, masked_lm_loss, masked_lm_loss_rows, masked_mean, part_rows, token_logprobs,
    train,
};

/// Supervised fine-tuning: next-token loss on response tokens only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftStage {
    pub name: String,
    /// The stage whose model this one starts from; absent: the experiment's model (its
    /// pretrained weights, or a fresh initialisation).
    #[serde(default)]
    pub from: Option<String>,
    pub examples: ExampleSet,
    #[serde(default)]
    pub template: Template,
    /// Longest sequence in tokens (default: the model's context); longer examples are cut
    /// from the end of the response.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Pack several examples into each row of `max_len` tokens (fewer pad tokens, more
    /// examples per step; examples in one row can attend to each other, as in TRL's packing).
    #[serde(default)]
    pub packing: bool,
    /// A loss plugin that replaces the native cross-entropy (through the surrogate-gradient
    /// contract): it receives the response tokens' log-probs (and mean log-probs, entropies).
    /// Left out of the stage's key when unset, so older outputs stay valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    pub train: TrainSettings,
}

impl StageSpec for SftStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "Sft"
    }
    fn inputs(&self) -> Vec<&str> {
        self.from.iter().map(String::as_str).collect()
    }
    fn data(&self) -> Vec<&str> {
        vec![&self.examples.data]
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        self.examples.filter_slots().chain(self.loss.as_deref().map(|l| (l, PluginKind::Loss))).collect()
    }
    fn loss_features(&self) -> &'static [Feature] {
        &[Feature::Logprob, Feature::MeanLogprob, Feature::Entropy, Feature::Mask]
    }
    fn validate(&self) -> Result<(), String> {
        self.train.validate()?;
        self.examples.validate()?;
        match self.max_len {
            Some(m) if m < 2 => Err(format!("max_len {m} leaves no room for a response")),
            _ => Ok(()),
        }
    }
    fn check_model(&self, model: &ModelConfig, _tokenizer: &TokenizerSpec) -> Result<(), String> {
        if self.packing && model.is_encoder_decoder() {
            return Err(PACKING_SEQ2SEQ.into());
        }
        Ok(())
    }
    fn describe(&self) -> String {
        let from = self.from.as_deref().unwrap_or("the experiment's model");
        format!("from `{from}` on `{}`: {}", self.examples.data, self.train.describe())
    }
}

const PACKING_SEQ2SEQ: &str = "packing puts several examples in one decoder row; an encoder-decoder (T5) reads each \
                               prompt apart: remove `packing: true`";

/// One micro-batch: inputs, targets and the loss mask, each (B, T).
#[derive(Debug, Clone, PartialEq)]
pub struct SftBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1.0 where the target is a response token.
    pub mask: Vec<f32>,
    pub rows: usize,
    pub len: usize,
}

impl SftBatch {
    /// Rows of `tokens`, each scored from `prompt_len` on, right-padded with `pad`.
    pub fn from_rows(rows: &[&Encoded], pad: u32) -> SftBatch {
        let scored: Vec<Vec<bool>> =
            rows.iter().map(|r| (0..r.tokens.len()).map(|j| j >= r.prompt_len).collect()).collect();
        let sequences: Vec<(&[u32], &[bool])> =
            rows.iter().zip(&scored).map(|(r, s)| (r.tokens.as_slice(), s.as_slice())).collect();
        SftBatch::from_sequences(&sequences, pad)
    }

    /// Rows of (tokens, whether each token is scored), right-padded with `pad`: the model reads
    /// `tokens[..n-1]` and is scored on predicting `tokens[i + 1]` where that token is scored.
    pub fn from_sequences(rows: &[(&[u32], &[bool])], pad: u32) -> SftBatch {
        let len = rows.iter().map(|(t, _)| t.len().saturating_sub(1)).max().unwrap_or(0).max(1);
        let mut batch = SftBatch {
            inputs: vec![pad; rows.len() * len],
            targets: vec![pad; rows.len() * len],
            mask: vec![0.0; rows.len() * len],
            rows: rows.len(),
            len,
        };
        for (r, (tokens, scored)) in rows.iter().enumerate() {
            for i in 0..tokens.len().saturating_sub(1) {
                batch.inputs[r * len + i] = tokens[i];
                batch.targets[r * len + i] = tokens[i + 1];
                if scored[i + 1] {
                    batch.mask[r * len + i] = 1.0;
                }
            }
        }
        batch
    }

    /// The flat indices (row * len + position) of the scored positions, row after row, and
    /// where each row's start in them: `rows + 1` offsets, the last one their count (the
    /// layout loss plugins receive per-token features in).
    pub fn scored_positions(&self) -> (Vec<u32>, Vec<u32>) {
        let scored: Vec<u32> = (0..self.mask.len()).filter(|&i| self.mask[i] > 0.0).map(|i| i as u32).collect();
        let mut offsets = vec![0u32];
        for row in self.mask.chunks(self.len.max(1)) {
            offsets.push(offsets[offsets.len() - 1] + row.iter().filter(|&&m| m > 0.0).count() as u32);
        }
        (scored, offsets)
    }

    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let shape = (self.rows, self.len);
        Ok((
            Tensor::from_slice(&self.inputs, shape, device)?,
            Tensor::from_slice(&self.targets, shape, device)?,
            Tensor::from_slice(&self.mask, shape, device)?,
        ))
    }
}

/// Encoded examples, cut to `max_len + 1` tokens (the last one is only a target).
pub fn encode_all(layout: &Layout, examples: &[examples::Example], max_len: usize) -> Result<Vec<Encoded>, String> {
    let mut encoded = Vec::with_capacity(examples.len());
    for example in examples {
        let mut e = layout
            .encode(&example.prompt, &example.response)
            .map_err(|message| format!("{}:{}: {message}", example.origin.file.display(), example.origin.line))?;
        // A prompt that fills the whole window leaves nothing to learn from: skip it.
        if e.prompt_len >= max_len {
            continue;
        }
        e.tokens.truncate(max_len + 1);
        encoded.push(e);
    }
    Ok(encoded)
}

/// Examples packed into rows of `max_len + 1` tokens, in a seeded order; each token keeps its
/// own example's mask (prompt tokens of the second example in a row are not scored).
pub fn pack(encoded: &[Encoded], max_len: usize, seed: u64) -> Vec<(Vec<u32>, Vec<bool>)> {
    let mut rows = Vec::new();
    let (mut tokens, mut scored) = (Vec::new(), Vec::new());
    for i in permutation(encoded.len(), seed) {
        let e = &encoded[i];
        for (j, &t) in e.tokens.iter().enumerate() {
            tokens.push(t);
            scored.push(j >= e.prompt_len);
            if tokens.len() == max_len + 1 {
                rows.push((std::mem::take(&mut tokens), std::mem::take(&mut scored)));
            }
        }
    }
    if tokens.len() > 1 {
        rows.push((tokens, scored));
    }
    rows
}

/// The training rows: single examples, or packed rows.
enum Rows {
    Examples(Vec<Encoded>),
    Packed(Vec<(Vec<u32>, Vec<bool>)>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Examples(e) => e.len(),
            Rows::Packed(p) => p.len(),
        }
    }

    fn batch(&self, indices: &[usize], pad: u32) -> SftBatch {
        match self {
            Rows::Examples(encoded) => {
                let rows: Vec<&Encoded> = indices.iter().map(|&i| &encoded[i]).collect();
                SftBatch::from_rows(&rows, pad)
            }
            Rows::Packed(packed) => {
                let rows: Vec<(&[u32], &[bool])> =
                    indices.iter().map(|&i| (packed[i].0.as_slice(), packed[i].1.as_slice())).collect();
                SftBatch::from_sequences(&rows, pad)
            }
        }
    }
}

/// SFT's loss through a loss plugin: the features of the scored (response) tokens, flat and
/// row after row, and the surrogate whose gradients are the plugin loss's.
pub fn sft_plugin_loss(
    plugin: &LossPlugin,
    model: &Model,
    batch: &SftBatch,
    train: bool,
) -> Result<(Tensor, Vec<(String, f64)>), PluginLossError> {
    let text = |source| PluginLossError::Tensor { plugin: plugin.name().to_string(), source };
    let device = model.device();
    let (inputs, targets, _) = batch.to_tensors(device).map_err(text)?;
    let logits = model.forward(&inputs, train)?;
    let (b, t, v) = logits.dims3().map_err(text)?;
    let (scored, offsets) = batch.scored_positions();
    if scored.is_empty() {
        return Err(PluginLossError::NothingToScore { plugin: plugin.name().to_string() });
    }
    let index = Tensor::from_vec(scored.clone(), scored.len(), device).map_err(text)?;
    let flat = logits.reshape((b * t, v)).and_then(|l| l.index_select(&index, 0)).map_err(text)?;
    let chosen = targets.reshape(b * t).and_then(|x| x.index_select(&index, 0)).map_err(text)?;
    plugin_loss_of_logits(plugin, &flat, &chosen, offsets)
}

/// [`sft_plugin_loss`] for an encoder-decoder: prompts to the encoder, responses to the
/// decoder, the same features.
pub fn seq2seq_plugin_loss(
    plugin: &LossPlugin,
    model: &Model,
    rows: &[&Encoded],
    pad: u32,
    train: bool,
) -> Result<(Tensor, Vec<(String, f64)>), PluginLossError> {
    let (tokens, lens) = response_rows(rows);
    if lens.iter().all(|&l| l == 0) {
        return Err(PluginLossError::NothingToScore { plugin: plugin.name().to_string() });
    }
    let (states, targets) = model.response_states(&tokens, &lens, pad, train)?;
    let logits = model.lm_logits(&states)?;
    plugin_loss_of_logits(plugin, &logits, &targets, Features::offsets_of(&lens))
}

/// The plugin's loss from the logits (N, V) at the scored positions, the tokens (N) they
/// score, and where each row starts among them.
fn plugin_loss_of_logits(
    plugin: &LossPlugin,
    flat: &Tensor,
    targets: &Tensor,
    offsets: Vec<u32>,
) -> Result<(Tensor, Vec<(String, f64)>), PluginLossError> {
    let text = |source| PluginLossError::Tensor { plugin: plugin.name().to_string(), source };
    let logp = candle_nn::ops::log_softmax(flat, candle_core::D::Minus1).map_err(text)?;
    let chosen = targets.unsqueeze(1).map_err(text)?;
    let logprob = logp.gather(&chosen, 1).and_then(|l| l.squeeze(1)).map_err(text)?;
    let mean_logprob = logp.mean(candle_core::D::Minus1).map_err(text)?;
    let entropy = (logp.exp().map_err(text)? * &logp)
        .and_then(|x| x.sum(candle_core::D::Minus1))
        .and_then(|x| x.neg())
        .map_err(text)?;
    let mask = logprob.ones_like().map_err(text)?;
    let features = Features {
        offsets,
        values: vec![
            (Feature::Logprob, &logprob),
            (Feature::MeanLogprob, &mean_logprob),
            (Feature::Entropy, &entropy),
            (Feature::Mask, &mask),
        ],
    };
    let loss = plugin_loss(plugin, &features)?;
    let (surrogate, value, mut metrics) = (loss.surrogate, loss.value, loss.metrics);
    metrics.push(("plugin_loss".into(), value));
    Ok((surrogate, metrics))
}

/// Examples as the rows and response lengths [`Model::response_states`] reads.
fn response_rows(rows: &[&Encoded]) -> (Vec<Vec<u32>>, Vec<usize>) {
    (rows.iter().map(|e| e.tokens.clone()).collect(), rows.iter().map(|e| e.response_len()).collect())
}

/// -log p of every response token of `rows`, flat (N), for an encoder-decoder: its prompt
/// through the encoder, its response through the decoder.
pub fn seq2seq_nll(
    model: &Model,
    rows: &[&Encoded],
    pad: u32,
    train: bool,
) -> Result<Tensor, crate::model::ModelError> {
    let (tokens, lens) = response_rows(rows);
    let (states, targets) = model.response_states(&tokens, &lens, pad, train)?;
    model.token_nll(&states, &targets)
}

struct Sft<'a> {
    model: &'a Model,
    loss_plugin: Option<LossPlugin>,
    rows: Rows,
    valid: Vec<Encoded>,
    pad: u32,
    seed: u64,
    batch: usize,
    accumulation: usize,
    eval_batches: usize,
    device: &'a Device,
}

impl Sft<'_> {
    /// The draw number and the rows of micro-batch `micro` of step `step`.
    fn micro_batch(&self, step: u64, micro: usize) -> (u64, SftBatch) {
        let draw = step * self.accumulation as u64 + micro as u64;
        let indices = draw_indices(draw, self.batch, self.rows.len(), self.seed);
        (draw, self.rows.batch(&indices, self.pad))
    }

    /// The examples of micro-batch `micro` of step `step` (an encoder-decoder's rows are
    /// never packed).
    fn micro_examples(&self, step: u64, micro: usize) -> Vec<&Encoded> {
        let draw = step * self.accumulation as u64 + micro as u64;
        let Rows::Examples(encoded) = &self.rows else { return Vec::new() };
        draw_indices(draw, self.batch, encoded.len(), self.seed).into_iter().map(|i| &encoded[i]).collect()
    }

    /// An encoder-decoder's loss of micro-batch `micro`: the mean over its response tokens, or
    /// the plugin's.
    fn seq2seq_loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        let rows = self.micro_examples(step, micro);
        let tokens: usize = rows.iter().map(|e| e.response_len()).sum();
        let mut metrics = vec![("response_tokens".into(), tokens as f64)];
        let loss = match &self.loss_plugin {
            None => seq2seq_nll(self.model, &rows, self.pad, true)
                .map_err(|source| TrainError::Model { step, source })?
                .mean_all()
                .map_err(|source| TrainError::Tensor { step, source })?,
            Some(plugin) => {
                let (surrogate, extra) = seq2seq_plugin_loss(plugin, self.model, &rows, self.pad, true)
                    .map_err(|source| TrainError::PluginLoss { step, source })?;
                metrics.extend(extra);
                surrogate
            }
        };
        Ok((loss, metrics))
    }
}

impl Objective for Sft<'_> {
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        if self.model.config().is_encoder_decoder() {
            return self.seq2seq_loss(step, micro);
        }
        let tensor = |source| TrainError::Tensor { step, source };
        let (draw, batch) = self.micro_batch(step, micro);
        let (inputs, targets, mask) = batch.to_tensors(self.device).map_err(tensor)?;
        self.model.seed_dropout(self.seed, draw);
        let mut metrics = vec![("response_tokens".into(), batch.mask.iter().sum::<f32>() as f64)];
        let loss = match &self.loss_plugin {
            None => masked_lm_loss(self.model, &inputs, &targets, &mask, true).map_err(tensor)?,
            Some(plugin) => {
                let (surrogate, extra) = sft_plugin_loss(plugin, self.model, &batch, true)
                    .map_err(|source| TrainError::PluginLoss { step, source })?;
                metrics.extend(extra);
                surrogate
            }
        };
        Ok((loss, metrics))
    }

    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError> {
        let tensor = |source| TrainError::Tensor { step: 0, source };
        let (mut total, mut count) = (0.0f64, 0.0f64);
        for chunk in self.valid.chunks(self.batch).take(self.eval_batches) {
            let rows: Vec<&Encoded> = chunk.iter().collect();
            if self.model.config().is_encoder_decoder() {
                let nll = seq2seq_nll(self.model, &rows, self.pad, false)
                    .map_err(|source| TrainError::Model { step: 0, source })?;
                total += nll.sum_all().and_then(|s| s.to_scalar::<f32>()).map_err(tensor)? as f64;
                count += nll.elem_count() as f64;
                continue;
            }
            let batch = SftBatch::from_rows(&rows, self.pad);
            let (inputs, targets, mask) = batch.to_tensors(self.device).map_err(tensor)?;
            let logits = self.model.forward(&inputs, false).map_err(|e| TrainError::Objective(e.to_string()))?;
            let nll = token_logprobs(&logits, &targets).and_then(|l| l.neg()).map_err(tensor)?;
            let scored: f32 = batch.mask.iter().sum();
            let mean = masked_mean(&nll, &mask).and_then(|m| m.to_scalar::<f32>()).map_err(tensor)?;
            total += mean as f64 * scored as f64;
            count += scored as f64;
        }
        if count == 0.0 {
            return Ok(Vec::new());
        }
        let loss = total / count;
        Ok(vec![("loss".into(), loss), ("perplexity".into(), loss.exp())])
    }

    fn split(&self) -> Option<&dyn SplitLoss> {
        // A loss plugin reads the whole micro-batch's features at once; dropout draws its masks
        // from one generator per step, which parts running at once would take in a racing order.
        (self.loss_plugin.is_none() && !self.model.has_dropout()).then_some(self as &dyn SplitLoss)
    }
}

impl SplitLoss for Sft<'_> {
    fn rows(&self) -> usize {
        self.batch
    }

    fn part_loss(
        &self,
        step: u64,
        micro: usize,
        part: usize,
        parts: usize,
    ) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        let tensor = |source| TrainError::Tensor { step, source };
        if self.model.config().is_encoder_decoder() {
            // This part's share of the batch's mean: its sum over all the batch's tokens.
            let rows = self.micro_examples(step, micro);
            let total: usize = rows.iter().map(|e| e.response_len()).sum();
            let part = &rows[part_rows(rows.len(), part, parts)];
            let scored: usize = part.iter().map(|e| e.response_len()).sum();
            let nll =
                seq2seq_nll(self.model, part, self.pad, true).map_err(|source| TrainError::Model { step, source })?;
            let loss = nll.sum_all().and_then(|s| s.affine(1.0 / total.max(1) as f64, 0.0)).map_err(tensor)?;
            return Ok((loss, vec![("response_tokens".into(), scored as f64)]));
        }
        let (_, batch) = self.micro_batch(step, micro);
        let (inputs, targets, mask) = batch.to_tensors(self.device).map_err(tensor)?;
        let rows = part_rows(batch.rows, part, parts);
        let scored = batch.mask[rows.start * batch.len..rows.end * batch.len].iter().sum::<f32>();
        let loss = masked_lm_loss_rows(self.model, &inputs, &targets, &mask, rows).map_err(tensor)?;
        Ok((loss, vec![("response_tokens".into(), scored as f64)]))
    }
}

/// Run the stage into `dir`; returns the fine-tuned model and the stage's output.
pub fn run(ctx: &RunContext, stage: &SftStage, dir: &Path) -> Result<(Model, StageOutput), StageError> {
    let name = stage.name.as_str();
    let config_error = |message: String| StageError::Config { stage: name.to_string(), message };
    let examples = examples::load(ctx, &stage.examples, name, dir)?;
    let model = ctx.starting_model(stage.from.as_deref())?;
    let tokenizer = ctx.tokenizer()?;
    let chat = ctx.chat_template()?;
    let layout = Layout::new(&tokenizer, &stage.template, chat.as_deref())
        .map_err(|source| StageError::Layout { stage: name.to_string(), source })?;
    let context = model.config().context();
    let max_len = stage.max_len.unwrap_or(context).min(context);
    let train_rows = encode_all(&layout, &examples.train, max_len).map_err(config_error)?;
    let valid = encode_all(&layout, &examples.valid, max_len).map_err(config_error)?;
    if train_rows.is_empty() {
        return Err(config_error(format!("every training prompt fills the {max_len}-token window: raise max_len")));
    }
    if stage.packing && model.config().is_encoder_decoder() {
        return Err(config_error(PACKING_SEQ2SEQ.into()));
    }
    let pad = tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0);
    let seed = ctx.experiment.seed;
    let rows = if stage.packing { Rows::Packed(pack(&train_rows, max_len, seed)) } else { Rows::Examples(train_rows) };
    tracing::info!(stage = name, rows = rows.len(), held_out = valid.len(), max_len, "SFT data ready");

    let loss_plugin =
        stage.loss.as_deref().map(|l| ctx.plugin(l)?.into_loss().map_err(StageError::from)).transpose()?;
    let objective = Sft {
        model: &model,
        loss_plugin,
        rows,
        valid,
        pad,
        seed,
        batch: stage.train.batch,
        accumulation: stage.train.accumulation,
        eval_batches: stage.train.eval_batches,
        device: &ctx.device,
    };
    let vars = model.vars();
    let summary = train(name, dir, &vars, crate::model::decays, &objective, &stage.train.to_config(), &ctx.device)
        .map_err(|source| StageError::Train { stage: name.into(), source })?;
    model.save(&dir.join("model")).map_err(|source| StageError::Model { stage: name.into(), source })?;
    Ok((model, StageOutput::trained(dir, name, &summary)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_response_targets_are_scored_and_padding_is_masked() {
        let a = Encoded { tokens: vec![10, 11, 12, 20, 21, 99], prompt_len: 3 };
        let b = Encoded { tokens: vec![13, 22, 99], prompt_len: 1 };
        let batch = SftBatch::from_rows(&[&a, &b], 0);
        assert_eq!(batch.len, 5);
        assert_eq!(&batch.inputs[..5], &[10, 11, 12, 20, 21]);
        assert_eq!(&batch.targets[..5], &[11, 12, 20, 21, 99]);
        // Targets 20, 21 and the end token are the response.
        assert_eq!(&batch.mask[..5], &[0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(&batch.inputs[5..], &[13, 22, 0, 0, 0]);
        assert_eq!(&batch.mask[5..], &[1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    /// The loss and every gradient of a batch, for a small real model.
    fn loss_and_grads(model: &Model, batch: &SftBatch) -> (f32, Vec<Vec<f32>>) {
        let (inputs, targets, mask) = batch.to_tensors(&Device::Cpu).expect("tensors");
        let loss = masked_lm_loss(model, &inputs, &targets, &mask, false).expect("loss");
        let grads = loss.backward().expect("backward");
        let flat = model
            .vars()
            .iter()
            .map(|(_, v)| {
                grads.get(v.as_tensor()).expect("gradient").flatten_all().and_then(|g| g.to_vec1()).expect("values")
            })
            .collect();
        (loss.to_scalar().expect("scalar"), flat)
    }

    #[test]
    fn changing_a_prompt_tokens_target_changes_neither_loss_nor_gradients() {
        let config = crate::model::ModelConfig::tiny_gpt(50);
        let model = Model::new(&config, &Device::Cpu, 3).expect("model");
        let example = Encoded { tokens: vec![5, 6, 7, 8, 30, 31, 32, 1], prompt_len: 4 };
        let batch = SftBatch::from_rows(&[&example], 0);
        let (loss, grads) = loss_and_grads(&model, &batch);
        // Position 1 predicts prompt token 7: give it another target.
        let mut changed = batch.clone();
        assert_eq!(changed.mask[1], 0.0);
        changed.targets[1] = 42;
        let (loss2, grads2) = loss_and_grads(&model, &changed);
        assert_eq!(loss, loss2);
        assert_eq!(grads, grads2);
        // The same change at a response position does change the loss: the test can fail.
        let mut response = batch.clone();
        assert_eq!(response.mask[4], 1.0);
        response.targets[4] = 42;
        let (loss3, _) = loss_and_grads(&model, &response);
        assert_ne!(loss, loss3);
    }

    #[test]
    fn packing_keeps_every_token_and_its_mask() {
        let encoded: Vec<Encoded> =
            (0..5).map(|i| Encoded { tokens: vec![i * 10, i * 10 + 1, i * 10 + 2], prompt_len: 1 }).collect();
        let rows = pack(&encoded, 3, 1);
        let total: usize = rows.iter().map(|(t, _)| t.len()).sum();
        assert_eq!(total, 15);
        assert!(rows.iter().all(|(t, _)| t.len() <= 4));
        for (tokens, scored) in &rows {
            for (t, s) in tokens.iter().zip(scored) {
                assert_eq!(*s, t % 10 != 0, "token {t}");
            }
        }
    }

    #[test]
    fn draws_cover_every_example_once_per_epoch() {
        let seen: Vec<usize> = (0..5).flat_map(|d| draw_indices(d, 4, 20, 3)).collect();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(draw_indices(2, 4, 20, 3), draw_indices(2, 4, 20, 3));
    }
}
