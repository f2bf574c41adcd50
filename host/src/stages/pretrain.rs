//! Pretraining: self-supervised causal language modelling on one data source, evaluated by
//! validation loss and perplexity.
//!
//! Records are filtered by the stage's filter plugins (with a report), split into training and
//! validation text, tokenized into two token streams, and trained on random windows of the
//! training stream: the window offsets of step `s` are a pure function of (seed, s), as is the
//! dropout mask, which is what lets an interrupted run resume on the same loss curve.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::examples::filter_slots;
use crate::data::blocks::{Blocks, Side};
use crate::data::split::Split;
use crate::experiment::{StageSpec, TrainSettings};
use crate::model::Model;
use crate::plugins::PluginKind;
use crate::train::{Objective, SplitLoss, TrainError, lm_loss, lm_loss_rows, part_rows, train};

/// Causal LM pretraining on one data source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainStage {
    pub name: String,
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
    pub train: TrainSettings,
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
        Vec::new()
    }
    fn data(&self) -> Vec<&str> {
        vec![&self.data]
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        filter_slots(&self.filters).collect()
    }
    fn validate(&self) -> Result<(), String> {
        self.train.validate()?;
        match self.context {
            Some(0) => Err("context must be at least 1".into()),
            _ => Ok(()),
        }
    }
    fn describe(&self) -> String {
        format!("on `{}`: {}", self.data, self.train.describe())
    }
}

/// The causal LM objective over a token stream.
struct CausalLm<'m> {
    model: &'m Model,
    train: &'m Blocks,
    valid: &'m Blocks,
    seed: u64,
    batch: usize,
    context: usize,
    accumulation: usize,
    eval_batches: usize,
    device: &'m Device,
}

impl Objective for CausalLm<'_> {
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        let draw = step * self.accumulation as u64 + micro as u64;
        let tensor = |source| TrainError::Tensor { step, source };
        let batch = self
            .train
            .batch(draw, self.seed, self.batch, self.context)
            .map_err(|e| TrainError::Objective(e.to_string()))?;
        let (inputs, targets) = batch.to_tensors(self.device).map_err(tensor)?;
        self.model.seed_dropout(self.seed, draw);
        Ok((lm_loss(self.model, &inputs, &targets, true).map_err(tensor)?, Vec::new()))
    }

    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError> {
        let loss = validation_loss(self.model, self.valid, self.batch, self.context, self.eval_batches, self.device)?;
        Ok(vec![("loss".into(), loss), ("perplexity".into(), loss.exp())])
    }

    fn split(&self) -> Option<&dyn SplitLoss> {
        // Dropout draws its masks from one generator per step: parts running at once would take
        // them in a racing order.
        (!self.model.has_dropout()).then_some(self as &dyn SplitLoss)
    }
}

impl SplitLoss for CausalLm<'_> {
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
        let draw = step * self.accumulation as u64 + micro as u64;
        let tensor = |source| TrainError::Tensor { step, source };
        let batch = self
            .train
            .batch(draw, self.seed, self.batch, self.context)
            .map_err(|e| TrainError::Objective(e.to_string()))?;
        let (inputs, targets) = batch.to_tensors(self.device).map_err(tensor)?;
        Ok((
            lm_loss_rows(self.model, &inputs, &targets, part_rows(self.batch, part, parts)).map_err(tensor)?,
            Vec::new(),
        ))
    }
}

/// Mean next-token loss over the first `max_batches` batches of the validation stream, read in
/// order (every token predicted once, the same every time).
pub fn validation_loss(
    model: &Model,
    valid: &Blocks,
    batch: usize,
    context: usize,
    max_batches: usize,
    device: &Device,
) -> Result<f64, TrainError> {
    let tensor = |source| TrainError::Tensor { step: 0, source };
    let (mut total, mut rows) = (0.0f64, 0usize);
    let batches =
        valid.eval_batches(batch, context, Some(max_batches)).map_err(|e| TrainError::Objective(e.to_string()))?;
    for batch in batches {
        let (inputs, targets) = batch.to_tensors(device).map_err(tensor)?;
        let n = inputs.dim(0).map_err(tensor)?;
        let loss = lm_loss(model, &inputs, &targets, false).map_err(tensor)?;
        total += loss.to_scalar::<f32>().map_err(tensor)? as f64 * n as f64;
        rows += n;
    }
    if rows == 0 {
        return Err(TrainError::Objective("the validation stream is shorter than one context window".into()));
    }
    Ok(total / rows as f64)
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

/// Run the stage into `dir`; returns the trained model and the stage's output.
pub fn run(ctx: &RunContext, stage: &PretrainStage, dir: &Path) -> Result<(Model, StageOutput), StageError> {
    let name = stage.name.as_str();
    let (train_blocks, valid_blocks) = streams(ctx, stage, dir)?;
    let model = ctx.starting_model(None)?;
    let context = stage.context.unwrap_or_else(|| model.config().context());
    if context > model.config().context() {
        return Err(StageError::Config {
            stage: name.into(),
            message: format!("context {context} is longer than the model's context {}", model.config().context()),
        });
    }
    tracing::info!(stage = name, parameters = model.num_parameters(), "model initialised");
    let train_config = stage.train.to_config();
    let objective = CausalLm {
        model: &model,
        train: &train_blocks,
        valid: &valid_blocks,
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
