//! Pretraining: self-supervised learning on one data source, evaluated by validation loss and
//! perplexity.
//!
//! Records are filtered by the stage's filter plugins (with a report), split into training and
//! validation text, tokenized into two token streams, and trained on random windows of the
//! training stream: the window offsets of step `s` are a pure function of (seed, s), as is the
//! dropout mask, which is what lets an interrupted run resume on the same loss curve.
//!
//! The objective is a decoder's causal language modelling (every next token of a window), or
//! for an encoder-decoder T5's span corruption (the encoder reads the window with spans cut out
//! and marked by sentinels, the decoder writes the spans; the perplexity is that of those
//! targets) or a prefix LM (the encoder reads the window up to a random point, the decoder
//! writes the rest). The corruption and the cut of step `s` are drawn from (seed, s) too.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::examples::filter_slots;
use rand::Rng;

use crate::data::blocks::{Batch, Blocks, Side};
use crate::data::span_corruption::SpanCorruption;
use crate::data::split::Split;
use crate::data::tokenizer::TokenizerSpec;
use crate::experiment::{StageSpec, TrainSettings};
use crate::model::{Model, ModelConfig};
use crate::plugins::PluginKind;
use crate::train::{Objective, SplitLoss, TrainError, lm_loss, lm_loss_rows, part_rows, train};

/// What a Pretrain stage teaches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum PretrainObjective {
    /// Every next token of a window: a decoder's objective (the default for GPT and Llama).
    CausalLm,
    /// T5's span corruption, `SpanCorruption(noise_density: 0.15, mean_span_length: 3.0)`: an
    /// encoder-decoder's objective (the default for T5). The tokenizer needs sentinel tokens
    /// (`TrainBpe(..., sentinels: 100)`).
    SpanCorruption(SpanCorruption),
    /// Each window cut at a uniformly drawn point: the encoder reads the prefix, the decoder
    /// writes the rest (encoder-decoders).
    PrefixLm,
}

/// Causal LM pretraining on one data source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainStage {
    pub name: String,
    /// The stage whose model this one continues (T5's LM adaptation: prefix LM after span
    /// corruption); absent: the experiment's model. Left out of the stage's key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The data source to train on.
    pub data: String,
    /// Filter plugins applied in order before tokenizing.
    #[serde(default)]
    pub filters: Vec<String>,
    /// How validation text is held out.
    #[serde(default = "default_tail_split")]
    pub split: Split,
    /// Tokens per sequence (default: the model's context).
    #[serde(default)]
    pub context: Option<usize>,
    /// The objective (default: `CausalLm` for a decoder, `SpanCorruption` with T5's settings
    /// for an encoder-decoder). Left out of the stage's key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<PretrainObjective>,
    pub train: TrainSettings,
}

impl PretrainStage {
    /// The objective for `model`: the one written, or the model family's own; refused when the
    /// model cannot learn it.
    pub fn objective_for(&self, model: &ModelConfig) -> Result<PretrainObjective, String> {
        let seq2seq = model.is_encoder_decoder();
        let objective = self.objective.unwrap_or(if seq2seq {
            PretrainObjective::SpanCorruption(SpanCorruption::default())
        } else {
            PretrainObjective::CausalLm
        });
        match (objective, seq2seq) {
            (PretrainObjective::CausalLm, true) => {
                Err("CausalLm trains a decoder; an encoder-decoder (T5) pretrains with SpanCorruption(...) or PrefixLm"
                    .into())
            }
            (PretrainObjective::SpanCorruption(_) | PretrainObjective::PrefixLm, false) => Err(format!(
                "{} needs an encoder-decoder (T5); a {} decoder pretrains with CausalLm",
                objective.name(),
                model.family()
            )),
            _ => Ok(objective),
        }
    }
}

fn default_tail_split() -> Split {
    Split::Tail { valid_fraction: 0.1 }
}

impl StageSpec for PretrainStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "Pretrain"
    }
    fn inputs(&self) -> Vec<&str> {
        self.from.iter().map(String::as_str).collect()
    }
    fn data(&self) -> Vec<&str> {
        vec![&self.data]
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        filter_slots(&self.filters).collect()
    }
    fn validate(&self) -> Result<(), String> {
        self.train.validate()?;
        if let Some(PretrainObjective::SpanCorruption(corruption)) = &self.objective {
            corruption.validate()?;
        }
        match self.context {
            Some(0) => Err("context must be at least 1".into()),
            Some(1) if self.objective.is_some_and(|o| o != PretrainObjective::CausalLm) => {
                Err("context must be at least 2 tokens to leave something to predict".into())
            }
            _ => Ok(()),
        }
    }
    fn check_model(&self, model: &ModelConfig, tokenizer: &TokenizerSpec) -> Result<(), String> {
        let objective = self.objective_for(model)?;
        if let (PretrainObjective::SpanCorruption(corruption), TokenizerSpec::TrainBpe { sentinels, .. }) =
            (objective, tokenizer)
        {
            check_sentinels(&corruption, self.context.unwrap_or(model.context()), *sentinels)?;
        }
        Ok(())
    }
    fn describe(&self) -> String {
        let objective = self.objective.map(|o| format!(" ({})", o.name())).unwrap_or_default();
        let from = self.from.as_deref().map(|f| format!("from `{f}` ")).unwrap_or_default();
        format!("{from}on `{}`{objective}: {}", self.data, self.train.describe())
    }
}

impl PretrainObjective {
    /// The objective's name as experiment files write it.
    pub fn name(&self) -> &'static str {
        match self {
            PretrainObjective::CausalLm => "CausalLm",
            PretrainObjective::SpanCorruption(_) => "SpanCorruption",
            PretrainObjective::PrefixLm => "PrefixLm",
        }
    }
}

/// Refuses a tokenizer with fewer sentinel tokens than span corruption of `context`-token
/// windows marks spans with.
fn check_sentinels(corruption: &SpanCorruption, context: usize, sentinels: usize) -> Result<(), String> {
    let needed = corruption.sentinels_needed(context);
    if sentinels < needed {
        return Err(format!(
            "span corruption of {context}-token windows needs {needed} sentinel tokens (one per span, one to end the \
             targets), and the tokenizer has {sentinels}: add `sentinels: {needed}` (or more) to TrainBpe"
        ));
    }
    Ok(())
}

/// A pretraining objective over a token stream.
struct Pretraining<'m> {
    model: &'m Model,
    train: &'m Blocks,
    valid: &'m Blocks,
    windows: Windows<'m>,
    seed: u64,
    batch: usize,
    context: usize,
    accumulation: usize,
    eval_batches: usize,
    device: &'m Device,
}

/// How windows of the stream become what the model learns from.
#[derive(Clone, Copy)]
pub struct Windows<'a> {
    pub objective: PretrainObjective,
    /// The sentinel ids span corruption marks spans with.
    pub sentinels: &'a [u32],
    /// Pads an encoder-decoder's uneven rows (prefix LM).
    pub pad: u32,
}

impl Windows<'_> {
    /// An encoder-decoder's rows for the windows of `batch`: each row is the encoder's input
    /// then the decoder's targets, and the targets' length (see `Model::response_states`). The
    /// corruption (or the cut) of a batch is drawn from `stream`.
    fn seq2seq_rows(&self, batch: &Batch, seed: u64, stream: &str) -> (Vec<Vec<u32>>, Vec<usize>) {
        let mut rng = crate::model::init::stream(seed, stream);
        let (mut rows, mut lens) = (Vec::with_capacity(batch.batch), Vec::with_capacity(batch.batch));
        for b in 0..batch.batch {
            let (window, _) = batch.row(b);
            match self.objective {
                PretrainObjective::SpanCorruption(corruption) => {
                    let (mut inputs, targets) = corruption.corrupt(window, self.sentinels, &mut rng);
                    lens.push(targets.len());
                    inputs.extend(targets);
                    rows.push(inputs);
                }
                PretrainObjective::PrefixLm | PretrainObjective::CausalLm => {
                    let cut = rng.random_range(1..window.len().max(2));
                    lens.push(window.len() - cut.min(window.len()));
                    rows.push(window.to_vec());
                }
            }
        }
        (rows, lens)
    }

    /// -log p of every target of `rows` under an encoder-decoder, flat (N).
    fn seq2seq_nll(
        &self,
        model: &Model,
        rows: &[Vec<u32>],
        lens: &[usize],
        train: bool,
    ) -> Result<Tensor, crate::model::ModelError> {
        let (states, targets) = model.response_states(rows, lens, self.pad, train)?;
        model.token_nll(&states, &targets)
    }

    /// The summed loss of `batch` and the number of tokens it predicts, as evaluation sees it
    /// (dropout off).
    fn batch_loss(
        &self,
        model: &Model,
        batch: &Batch,
        seed: u64,
        stream: &str,
        device: &Device,
    ) -> Result<(f64, usize), TrainError> {
        let tensor = |source| TrainError::Tensor { step: 0, source };
        if self.objective == PretrainObjective::CausalLm {
            let (inputs, targets) = batch.to_tensors(device).map_err(tensor)?;
            let n = inputs.elem_count();
            let loss = lm_loss(model, &inputs, &targets, false).map_err(tensor)?;
            return Ok((loss.to_scalar::<f32>().map_err(tensor)? as f64 * n as f64, n));
        }
        let (rows, lens) = self.seq2seq_rows(batch, seed, stream);
        let nll =
            self.seq2seq_nll(model, &rows, &lens, false).map_err(|source| TrainError::Model { step: 0, source })?;
        let sum = nll.sum_all().and_then(|s| s.to_scalar::<f32>()).map_err(tensor)?;
        Ok((sum as f64, nll.elem_count()))
    }
}

impl Pretraining<'_> {
    fn draw_batch(&self, step: u64, micro: usize) -> Result<(u64, Batch), TrainError> {
        let draw = step * self.accumulation as u64 + micro as u64;
        let batch = self
            .train
            .batch(draw, self.seed, self.batch, self.context)
            .map_err(|e| TrainError::Objective(e.to_string()))?;
        Ok((draw, batch))
    }

    /// An encoder-decoder's per-target losses (N) of `rows`, and the whole batch's target count.
    fn seq2seq_part(
        &self,
        step: u64,
        micro: usize,
        rows: Option<std::ops::Range<usize>>,
    ) -> Result<(Tensor, usize), TrainError> {
        let (draw, batch) = self.draw_batch(step, micro)?;
        let (all_rows, all_lens) = self.windows.seq2seq_rows(&batch, self.seed, &format!("pretrain draw {draw}"));
        let total = all_lens.iter().sum();
        let range = rows.unwrap_or(0..all_rows.len());
        let nll = self
            .windows
            .seq2seq_nll(self.model, &all_rows[range.clone()], &all_lens[range], true)
            .map_err(|source| TrainError::Model { step, source })?;
        Ok((nll, total))
    }
}

impl Objective for Pretraining<'_> {
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        let tensor = |source| TrainError::Tensor { step, source };
        if self.windows.objective != PretrainObjective::CausalLm {
            let (nll, total) = self.seq2seq_part(step, micro, None)?;
            let loss = nll.sum_all().and_then(|s| s.affine(1.0 / total.max(1) as f64, 0.0)).map_err(tensor)?;
            return Ok((loss, vec![("target_tokens".into(), total as f64)]));
        }
        let (draw, batch) = self.draw_batch(step, micro)?;
        let (inputs, targets) = batch.to_tensors(self.device).map_err(tensor)?;
        self.model.seed_dropout(self.seed, draw);
        Ok((lm_loss(self.model, &inputs, &targets, true).map_err(tensor)?, Vec::new()))
    }

    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError> {
        let loss = validation_loss(
            self.model,
            self.valid,
            &self.windows,
            (self.batch, self.context, self.eval_batches, self.seed),
            self.device,
        )?;
        Ok(vec![("loss".into(), loss), ("perplexity".into(), loss.exp())])
    }

    fn split(&self) -> Option<&dyn SplitLoss> {
        // Dropout draws its masks from one generator per step: parts running at once would take
        // them in a racing order.
        (!self.model.has_dropout()).then_some(self as &dyn SplitLoss)
    }
}

impl SplitLoss for Pretraining<'_> {
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
        let rows = part_rows(self.batch, part, parts);
        if self.windows.objective != PretrainObjective::CausalLm {
            // This part's share of the batch's mean: its sum over all the batch's targets.
            let (nll, total) = self.seq2seq_part(step, micro, Some(rows))?;
            let loss = nll.sum_all().and_then(|s| s.affine(1.0 / total.max(1) as f64, 0.0)).map_err(tensor)?;
            return Ok((loss, Vec::new()));
        }
        let (_, batch) = self.draw_batch(step, micro)?;
        let (inputs, targets) = batch.to_tensors(self.device).map_err(tensor)?;
        Ok((lm_loss_rows(self.model, &inputs, &targets, rows).map_err(tensor)?, Vec::new()))
    }
}

/// Mean loss per predicted token over the first `max_batches` batches of the validation
/// stream, read in order (every window once, the same every time; an encoder-decoder's
/// corruption of batch i drawn from (seed, i)). `sizes` is (batch, context, max_batches, seed).
pub fn validation_loss(
    model: &Model,
    valid: &Blocks,
    windows: &Windows,
    (batch, context, max_batches, seed): (usize, usize, usize, u64),
    device: &Device,
) -> Result<f64, TrainError> {
    let (mut total, mut tokens) = (0.0f64, 0usize);
    let batches =
        valid.eval_batches(batch, context, Some(max_batches)).map_err(|e| TrainError::Objective(e.to_string()))?;
    for (i, batch) in batches.enumerate() {
        let (sum, n) = windows.batch_loss(model, &batch, seed, &format!("pretrain validation {i}"), device)?;
        total += sum;
        tokens += n;
    }
    if tokens == 0 {
        return Err(TrainError::Objective("the validation stream is shorter than one context window".into()));
    }
    Ok(total / tokens as f64)
}

/// The validation stream of a pretraining stage: its data, filtered and split as it was.
pub fn validation_blocks(ctx: &RunContext, stage: &PretrainStage, dir: &Path) -> Result<Blocks, StageError> {
    let (_, valid) = streams(ctx, stage, dir)?;
    Ok(valid)
}

/// Training and validation token streams of a pretraining stage.
fn streams(ctx: &RunContext, stage: &PretrainStage, dir: &Path) -> Result<(Blocks, Blocks), StageError> {
    let name = stage.name.as_str();
    let data_error = |message: String| StageError::Data { stage: name.to_string(), message };
    let records = ctx.filtered_records(name, &stage.data, &stage.filters, dir)?;
    let parts = stage.split.apply(records).map_err(|e| data_error(e.to_string()))?;
    let tokenizer = ctx.tokenizer()?;
    let train_blocks =
        Blocks::from_records(&tokenizer, &parts.train, Side::Train).map_err(|e| data_error(e.to_string()))?;
    let valid_blocks =
        Blocks::from_records(&tokenizer, &parts.valid, Side::Valid).map_err(|e| data_error(e.to_string()))?;
    tracing::info!(stage = name, train_tokens = train_blocks.len(), valid_tokens = valid_blocks.len(), "tokenized");
    Ok((train_blocks, valid_blocks))
}

/// How `stage` turns windows of `context` tokens into what `model` learns from, refused when
/// the model cannot learn its objective or the tokenizer lacks the sentinels it needs.
pub fn windows_for<'a>(
    stage: &PretrainStage,
    model: &Model,
    context: usize,
    sentinels: &'a [u32],
    pad: Option<u32>,
) -> Result<Windows<'a>, String> {
    let objective = stage.objective_for(model.config())?;
    if let PretrainObjective::SpanCorruption(corruption) = objective {
        check_sentinels(&corruption, context, sentinels.len())?;
    }
    Ok(Windows { objective, sentinels, pad: pad.unwrap_or(0) })
}

/// Run the stage into `dir`; returns the trained model and the stage's output.
pub fn run(ctx: &RunContext, stage: &PretrainStage, dir: &Path) -> Result<(Model, StageOutput), StageError> {
    let name = stage.name.as_str();
    let (train_blocks, valid_blocks) = streams(ctx, stage, dir)?;
    let model = ctx.starting_model(stage.from.as_deref())?;
    let context = stage.context.unwrap_or_else(|| model.config().context());
    if context > model.config().context() {
        return Err(StageError::Config {
            stage: name.into(),
            message: format!("context {context} is longer than the model's context {}", model.config().context()),
        });
    }
    let tokenizer = ctx.tokenizer()?;
    let sentinels = tokenizer.sentinel_ids();
    let windows = windows_for(stage, &model, context, &sentinels, tokenizer.pad_id().or(tokenizer.eos_id()))
        .map_err(|message| StageError::Config { stage: name.into(), message })?;
    tracing::info!(stage = name, parameters = model.num_parameters(), objective = ?windows.objective, "model initialised");
    let train_config = stage.train.to_config();
    let objective = Pretraining {
        model: &model,
        train: &train_blocks,
        valid: &valid_blocks,
        windows,
        seed: ctx.experiment.seed,
        batch: stage.train.batch,
        context,
        accumulation: stage.train.accumulation,
        eval_batches: stage.train.eval_batches,
        device: &ctx.device,
    };
    let vars = model.vars();
    let summary = train(name, dir, &vars, crate::model::decays, &objective, &train_config, &ctx.device)
        .map_err(|source| StageError::Train { stage: name.into(), source })?;
    model.save(&dir.join("model")).map_err(|source| StageError::Model { stage: name.into(), source })?;
    Ok((model, StageOutput::trained(dir, name, &summary)?))
}
