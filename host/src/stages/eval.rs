//! The evaluation stage: each paradigm judged on held-out data, of any model on any data. It
//! trains nothing and writes no model.
//!
//! The models are stages' outputs, or `"model"`: the experiment's own model as declared (a
//! pretrained model, a Hugging Face folder or GGUF file, or a fresh initialisation).
//!
//! - Self-supervised: perplexity of each model on a pretraining stage's validation text
//!   (`perplexity_of`), or on the texts of any data source (`perplexity_on`, see
//!   [`super::perplexity`]).
//! - Supervised: each model answers prompts, the held-out prompts of an SFT (PPO, GRPO, DPO)
//!   stage (`prompts_of`) or every prompt/reference pair of a data source (`prompts`); metric
//!   plugins (BLEU, ROUGE, exact match, ...) score the answers against the references.
//! - Preferences: two models' answers to the same prompts, both scored by a judge (a reward
//!   plugin or a reward model): the win-rate with its 95% interval, and a blinded file a person
//!   can label for the same comparison by hand (`triad labels`).
//!
//! Everything lands in the stage folder: `samples.jsonl` (prompt, reference, each model's
//! answer and judge score), `passages.jsonl` (each passage measured: origin, sha256, tokens,
//! NLL), `report.md`, and `human-labels.jsonl` + `human-key.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::context::{RunContext, StageError};
use super::examples::{self, Example, ExampleFormat, ExampleSet, filter_slots};
use super::layout::{Layout, LayoutError, Template};
use super::perplexity::{self, PerplexityData};
use super::winrate::{WinRate, write_label_files};
use super::{Experiment, Stage, StageOutput};
use crate::experiment::StageSpec;
use crate::model::generate::{SamplingConfig, generate};
use crate::model::{Model, RewardModel};
use crate::plugins::{Episode, MetricRecord, PluginKind};
use crate::train::rl::policy::sequence_kl;
use crate::util::atomic::write_atomically;

/// Evaluation of one or more models on held-out data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub name: String,
    /// The models to evaluate, by the stage that made them, or [`EXPERIMENT_MODEL`] for the
    /// experiment's own model.
    pub models: Vec<String>,
    /// The Sft, Ppo or Grpo stage (or Dpo stage with Judged pairs) whose held-out prompts (and
    /// template) are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_of: Option<String>,
    /// Prompt/reference pairs read directly from a data source, every record (up to
    /// `max_prompts`), laid out with `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<PromptSet>,
    /// How `prompts` are laid out (default: Plain); `prompts_of` uses its stage's template.
    #[serde(default, skip_serializing_if = "is_plain")]
    pub template: Template,
    /// Held-out prompts evaluated at most.
    #[serde(default = "default_max_prompts")]
    pub max_prompts: usize,
    /// How answers are generated (default: greedy, 32 new tokens); the template's end token
    /// always stops a row.
    #[serde(default = "default_eval_generation")]
    pub generation: SamplingConfig,
    /// Metric plugins that score each model's answers against the references.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// A Pretrain stage whose validation text each model's perplexity is measured on.
    #[serde(default)]
    pub perplexity_of: Option<String>,
    /// The texts of a data source each model's perplexity is measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity_on: Option<PerplexityData>,
    /// Compare two of the models under a judge: one comparison, whose metrics are `win_rate`,
    /// `win_rate_low`, `win_rate_high` and `ties`; or a list of them, whose metrics are
    /// `<a>/win_rate_over_<b>` (and `_low`, `_high`, `_ties`).
    #[serde(default, skip_serializing_if = "WinRates::is_none")]
    pub win_rate: WinRates,
    /// A stage whose model is the reference each model's KL is measured against, along its
    /// own answers (`<model>/kl`): see [`sequence_kl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_to: Option<String>,
    /// Further judges that score every model's answers (`<model>/score/<judge>`), for
    /// example the reward model an RL stage optimised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub score_with: Vec<Judge>,
}

/// One win-rate comparison, or several: `win_rate: (a: ..)` or `win_rate: [(a: ..), (a: ..)]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WinRates {
    #[default]
    None,
    One(WinRateSpec),
    Many(Vec<WinRateSpec>),
}

impl<'de> Deserialize<'de> for WinRates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde's untagged enums buffer their input, which loses RON's struct syntax: read the
        // two shapes directly instead.
        struct Shapes;
        impl<'de> serde::de::Visitor<'de> for Shapes {
            type Value = WinRates;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a comparison `(a: .., b: .., judge: ..)` or a list of them")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<WinRates, A::Error> {
                let mut specs = Vec::new();
                while let Some(spec) = seq.next_element()? {
                    specs.push(spec);
                }
                Ok(WinRates::Many(specs))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<WinRates, A::Error> {
                WinRateSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(WinRates::One)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<WinRates, D::Error> {
                d.deserialize_any(Shapes)
            }
        }
        deserializer.deserialize_any(Shapes)
    }
}

impl WinRates {
    fn is_none(&self) -> bool {
        matches!(self, WinRates::None)
    }

    /// Every comparison, each with the prefix of its metric names.
    pub fn comparisons(&self) -> Vec<(&WinRateSpec, String)> {
        match self {
            WinRates::None => Vec::new(),
            WinRates::One(spec) => vec![(spec, "win_rate".to_string())],
            WinRates::Many(specs) => specs.iter().map(|s| (s, format!("{}/win_rate_over_{}", s.a, s.b))).collect(),
        }
    }
}

impl StageSpec for EvalStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "Eval"
    }
    fn inputs(&self) -> Vec<&str> {
        let mut inputs: Vec<&str> = self.models.iter().map(String::as_str).filter(|m| *m != EXPERIMENT_MODEL).collect();
        inputs.extend(self.prompts_of.as_deref());
        inputs.extend(self.perplexity_of.as_deref());
        inputs.extend(self.kl_to.as_deref());
        for judge in self.judges() {
            if let Judge::RewardModel(rm) = judge {
                inputs.push(rm);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        inputs.retain(|name| seen.insert(*name));
        inputs
    }
    fn data(&self) -> Vec<&str> {
        // What it reads through the stages it names is covered by their keys.
        let prompts = self.prompts.as_ref().map(|p| p.data.as_str());
        let texts = self.perplexity_on.as_ref().map(|p| p.data.as_str());
        let mut data: Vec<&str> = prompts.into_iter().chain(texts).collect();
        data.dedup();
        data
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        let mut slots: Vec<_> = self.prompts.iter().flat_map(|p| filter_slots(&p.filters)).collect();
        slots.extend(self.perplexity_on.iter().flat_map(|p| filter_slots(&p.filters)));
        slots.extend(self.metrics.iter().map(|m| (m.as_str(), PluginKind::Metric)));
        for judge in self.judges() {
            if let Judge::Plugin(plugin) = judge {
                slots.push((plugin.as_str(), PluginKind::Reward));
            }
        }
        slots
    }
    fn produces_model(&self) -> bool {
        false
    }
    fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("models is empty: name the stages whose models to evaluate".into());
        }
        if self.max_prompts == 0 {
            return Err("max_prompts must be at least 1".into());
        }
        self.generation.validate().map_err(|e| format!("generation: {e}"))?;
        if self.prompts_of.is_some() && self.prompts.is_some() {
            return Err("prompts_of and prompts are both set: name one source of prompts".into());
        }
        if self.perplexity_of.is_some() && self.perplexity_on.is_some() {
            return Err("perplexity_of and perplexity_on are both set: measure perplexity on one text".into());
        }
        if let Some(texts) = &self.perplexity_on {
            texts.validate()?;
        }
        let has_prompts = self.prompts_of.is_some() || self.prompts.is_some();
        let needs_prompts = [
            (!self.metrics.is_empty(), "metrics"),
            (!self.win_rate.is_none(), "win_rate"),
            (self.kl_to.is_some(), "kl_to"),
            (!self.score_with.is_empty(), "score_with"),
        ];
        if let Some((_, what)) = needs_prompts.iter().find(|(set, _)| *set && !has_prompts) {
            return Err(format!(
                "{what} scores answers to prompts: set prompts_of (a stage) or prompts (a data source)"
            ));
        }
        if !has_prompts && self.perplexity_of.is_none() && self.perplexity_on.is_none() {
            return Err(
                "nothing to evaluate: set perplexity_on or perplexity_of (perplexity), or prompts_of or prompts (answers)"
                    .into(),
            );
        }
        let mut prefixes = std::collections::BTreeSet::new();
        for (win, prefix) in self.win_rate.comparisons() {
            if !prefixes.insert(prefix.clone()) {
                return Err(format!("win_rate compares `{}` with `{}` twice", win.a, win.b));
            }
            for side in [&win.a, &win.b] {
                if !self.models.contains(side) {
                    return Err(format!(
                        "win_rate compares `{side}`, which is not in models ({})",
                        self.models.join(", ")
                    ));
                }
            }
            if win.a == win.b {
                return Err("win_rate compares a model with itself: name two different models".into());
            }
            if !crate::train::settings::non_negative(win.tie_tolerance) {
                return Err(format!("win_rate.tie_tolerance must be a number >= 0, got {}", win.tie_tolerance));
            }
        }
        Ok(())
    }
    fn describe(&self) -> String {
        let mut on = Vec::new();
        if let Some(stage) = &self.prompts_of {
            on.push(format!("held-out prompts of `{stage}`"));
        }
        if let Some(set) = &self.prompts {
            on.push(format!("prompts of data `{}`", set.data));
        }
        if let Some(stage) = &self.perplexity_of {
            on.push(format!("validation text of `{stage}`"));
        }
        if let Some(texts) = &self.perplexity_on {
            on.push(format!("texts of data `{}`", texts.data));
        }
        format!("of {} on {}", self.models.join(", "), on.join(" and "))
    }
}

/// The name an Eval stage's `models` gives the experiment's own model.
pub const EXPERIMENT_MODEL: &str = "model";

/// Prompt/reference pairs read from a data source: every record that makes a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSet {
    pub data: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    pub format: ExampleFormat,
}

fn is_plain(template: &Template) -> bool {
    *template == Template::Plain
}

impl EvalStage {
    /// What is wrong with the stages it names, if anything: `prompts_of` must name a stage with
    /// prompts, `perplexity_of` a Pretrain stage.
    pub fn check_references(&self, experiment: &Experiment) -> Result<(), String> {
        if let Some(stage) = &self.prompts_of
            && prompts_of(experiment, stage).is_none()
        {
            return Err(no_prompts(stage));
        }
        if self.models.iter().any(|m| m == EXPERIMENT_MODEL)
            && experiment.stages.iter().any(|s| s.name() == EXPERIMENT_MODEL)
        {
            return Err(format!(
                "models names `{EXPERIMENT_MODEL}`, the experiment's own model, but a stage has that name too: rename the stage"
            ));
        }
        if let Some(pretrain) = &self.perplexity_of
            && !experiment.stages.iter().any(|s| matches!(s, Stage::Pretrain(p) if p.name == *pretrain))
        {
            return Err(format!("perplexity_of `{pretrain}` must name a Pretrain stage"));
        }
        Ok(())
    }

    /// Every judge the stage uses: those of its win-rates, then `score_with`.
    fn judges(&self) -> Vec<&Judge> {
        self.win_rate.comparisons().into_iter().map(|(w, _)| &w.judge).chain(&self.score_with).collect()
    }
}

/// The examples an Eval stage answers, with their template: the held-out examples of its
/// `prompts_of` stage, or every pair of its `prompts` source; `max_prompts` at most. `None`
/// for the template when the stage only measures perplexity.
fn eval_examples<'e>(
    ctx: &RunContext<'e>,
    stage: &'e EvalStage,
    dir: &Path,
) -> Result<(Vec<Example>, Option<&'e Template>), StageError> {
    let name = stage.name.as_str();
    let config_error = |message: String| StageError::Config { stage: name.to_string(), message };
    if let Some(of) = &stage.prompts_of {
        let (set, template) = prompts_of(ctx.experiment, of).ok_or_else(|| config_error(no_prompts(of)))?;
        let examples = examples::load(ctx, set, name, dir)?;
        let held_out: Vec<Example> = examples.valid.into_iter().take(stage.max_prompts).collect();
        if held_out.is_empty() {
            return Err(config_error(format!("stage `{of}` holds out no examples: give its split a valid_fraction")));
        }
        return Ok((held_out, Some(template)));
    }
    if let Some(set) = &stage.prompts {
        let mut pairs = examples::every(ctx, &set.data, &set.filters, &set.format, name, dir)?;
        pairs.truncate(stage.max_prompts);
        return Ok((pairs, Some(&stage.template)));
    }
    Ok((Vec::new(), None))
}

/// A model an Eval stage names: a stage's output, or the experiment's own model.
fn eval_model(ctx: &RunContext, name: &str) -> Result<Model, StageError> {
    let is_stage = ctx.experiment.stages.iter().any(|s| s.name() == name);
    ctx.starting_model((is_stage || name != EXPERIMENT_MODEL).then_some(name))
}

/// KL to `reference` of `model` along its answers (mean over prompts of the summed per-token
/// KL; see [`sequence_kl`]).
fn answer_kl(
    (model, reference): (&Model, &Model),
    layout: &Layout,
    prompts: &[String],
    answers: &[(String, Vec<u32>)],
    (max_new_tokens, pad): (usize, u32),
) -> Result<f64, crate::train::rl::RlError> {
    let context = model.config().context();
    let mut rows = Vec::with_capacity(prompts.len());
    let mut lens = Vec::with_capacity(prompts.len());
    for (prompt, (_, tokens)) in prompts.iter().zip(answers) {
        if tokens.is_empty() {
            continue;
        }
        let prompt = layout
            .prompt_tokens_within(prompt, context, max_new_tokens)
            .map_err(|e| crate::train::rl::RlError::Decode(Box::new(e)))?;
        rows.push([prompt, tokens.clone()].concat());
        lens.push(tokens.len());
    }
    let kl = sequence_kl(model, reference, &rows, &lens, GENERATION_BATCH, pad)?;
    Ok(kl.iter().sum::<f64>() / kl.len().max(1) as f64)
}

/// Model `a` against model `b` on the same prompts, both answers scored by `judge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WinRateSpec {
    pub a: String,
    pub b: String,
    pub judge: Judge,
    /// Scores this close count as a tie.
    #[serde(default)]
    pub tie_tolerance: f64,
}

/// What scores answers in a win-rate comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Judge {
    /// A reward plugin, by its name in `plugins`.
    Plugin(String),
    /// A RewardModel stage, by name.
    RewardModel(String),
}

impl Judge {
    /// The plugin's or the stage's name.
    pub fn name(&self) -> &str {
        match self {
            Judge::Plugin(name) | Judge::RewardModel(name) => name,
        }
    }
}

fn default_max_prompts() -> usize {
    200
}
fn default_eval_generation() -> SamplingConfig {
    SamplingConfig::greedy(32)
}

/// Prompts generated for at once: bounds the KV cache's memory.
const GENERATION_BATCH: usize = 32;

/// Why `prompts_of: name` names no prompts.
fn no_prompts(name: &str) -> String {
    format!("prompts_of `{name}` must name an Sft, Ppo or Grpo stage, or a Dpo stage with Judged pairs")
}

/// The example set and template of the stage named `name` (an Sft, Ppo or Grpo stage, or a Dpo stage
/// whose pairs are judged responses to prompts).
pub fn prompts_of<'a>(experiment: &'a Experiment, name: &str) -> Option<(&'a ExampleSet, &'a Template)> {
    experiment.stages.iter().find(|s| s.name() == name).and_then(|stage| match stage {
        Stage::Sft(sft) => Some((&sft.examples, &sft.template)),
        Stage::Ppo(ppo) => Some((&ppo.prompts, &ppo.template)),
        Stage::Grpo(grpo) => Some((&grpo.prompts, &grpo.template)),
        Stage::Dpo(dpo) => match &dpo.pairs {
            super::pairs::PairSource::Judged { prompts, .. } => Some((prompts, &dpo.template)),
            _ => None,
        },
        _ => None,
    })
}

/// Answers of `model` (stage `label`'s) to `prompts`: the response text and its tokens per
/// prompt.
pub fn answer(
    model: &Model,
    layout: &Layout,
    prompts: &[String],
    config: &SamplingConfig,
    label: &str,
) -> Result<Vec<(String, Vec<u32>)>, StageError> {
    let layout_error = |source| StageError::Layout { stage: label.to_string(), source };
    let mut config = config.clone();
    if !config.stop_tokens.contains(&layout.end_token()) {
        config.stop_tokens.push(layout.end_token());
    }
    let context = model.config().context();
    let bar = crate::util::progress::bar(label, prompts.len() as u64, 0);
    let mut answers = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(GENERATION_BATCH) {
        let tokens = chunk
            .iter()
            .map(|p| layout.prompt_tokens_within(p, context, config.max_new_tokens))
            .collect::<Result<Vec<_>, _>>();
        let generated = generate(model, &tokens.map_err(layout_error)?, &config)
            .map_err(|source| StageError::Model { stage: label.to_string(), source })?;
        for g in generated {
            answers.push((layout.response_text(&g.tokens).map_err(layout_error)?, g.tokens));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(answers)
}

/// Judge scores of answers to prompts (a plugin judge also reads each prompt's reference
/// answer, as a math reward does).
pub fn judge_scores(
    ctx: &RunContext,
    judge: &Judge,
    layout: &Layout,
    (prompts, references): (&[String], &[String]),
    answers: &[String],
) -> Result<Vec<f64>, StageError> {
    match judge {
        Judge::Plugin(name) => {
            let plugin = ctx.plugin(name)?.into_reward()?;
            let episodes: Vec<Episode> = prompts
                .iter()
                .zip(references)
                .zip(answers)
                .map(|((p, r), a)| Episode { prompt: p.clone(), response: a.clone(), reference: Some(r.clone()) })
                .collect();
            Ok(plugin.score(&episodes)?)
        }
        Judge::RewardModel(stage) => {
            let model_error = |source| StageError::Model { stage: stage.clone(), source };
            let rm = RewardModel::load(&ctx.stage_dir(stage), &ctx.device).map_err(model_error)?;
            let sequences = reward_inputs(layout, &rm, prompts, answers)
                .map_err(|source| StageError::Layout { stage: stage.clone(), source })?;
            let tokenizer = ctx.tokenizer()?;
            let pad = tokenizer.pad_id().unwrap_or(layout.end_token());
            let scores = rm.score(&sequences, GENERATION_BATCH, pad).map_err(model_error)?;
            Ok(scores.into_iter().map(f64::from).collect())
        }
    }
}

/// The mean of scores and its 95% interval: Wilson's for scores that are all 0 or 1 (an
/// accuracy), else the normal approximation `mean ± 1.96 s / √n`.
pub fn mean_interval(scores: &[f64]) -> (f64, f64, f64) {
    let n = scores.len() as f64;
    if n == 0.0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = scores.iter().sum::<f64>() / n;
    if scores.iter().all(|&s| s == 0.0 || s == 1.0) {
        let (low, high) = super::winrate::wilson_interval(mean, n);
        return (mean, low, high);
    }
    let variance = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = 1.96 * (variance / n).sqrt();
    (mean, mean - half, mean + half)
}

/// What a reward model reads for a prompt and an answer: the prompt's text and the answer,
/// ended by the end token, cut from the left to the model's context.
pub fn reward_inputs(
    layout: &Layout,
    rm: &RewardModel,
    prompts: &[String],
    answers: &[String],
) -> Result<Vec<Vec<u32>>, LayoutError> {
    let context = rm.trunk.config().context();
    prompts
        .iter()
        .zip(answers)
        .map(|(p, a)| {
            let mut tokens = layout.encode(p, a)?.tokens;
            if tokens.len() > context {
                tokens.drain(..tokens.len() - context);
            }
            Ok(tokens)
        })
        .collect()
}

/// Run the stage into `dir`; returns its metrics.
pub fn run(ctx: &RunContext, stage: &EvalStage, dir: &Path) -> Result<StageOutput, StageError> {
    let started = Instant::now();
    let name = stage.name.as_str();
    let config_error = |message: String| StageError::Config { stage: name.to_string(), message };
    let tokenizer = ctx.tokenizer()?;
    let chat = ctx.chat_template()?;
    let (held_out, template) = eval_examples(ctx, stage, dir)?;
    // Only answers need a layout (a tokenizer without an end token can still measure perplexity).
    let layout = match template {
        Some(template) => Some(
            Layout::new(&tokenizer, template, chat.as_deref())
                .map_err(|source| StageError::Layout { stage: name.to_string(), source })?,
        ),
        None => None,
    };
    let prompts: Vec<String> = held_out.iter().map(|e| e.prompt.clone()).collect();
    let references: Vec<String> = held_out.iter().map(|e| e.response.clone()).collect();
    let metric_plugins = stage
        .metrics
        .iter()
        .map(|m| ctx.plugin(m)?.into_metric().map_err(StageError::from))
        .collect::<Result<Vec<_>, _>>()?;

    let reference = stage.kl_to.as_deref().map(|r| ctx.starting_model(Some(r))).transpose()?;
    let mut metrics = BTreeMap::new();
    let mut answers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // The validation text every model's perplexity is measured on, read once.
    let perplexity_text = match &stage.perplexity_of {
        Some(pretrain) => {
            let Some(Stage::Pretrain(p)) = ctx.experiment.stages.iter().find(|s| s.name() == pretrain) else {
                return Err(config_error(format!("perplexity_of `{pretrain}` must name a Pretrain stage")));
            };
            Some((p, super::pretrain::validation_blocks(ctx, p, dir)?))
        }
        None => None,
    };
    let passages = match &stage.perplexity_on {
        Some(spec) => Some((spec, perplexity::prepare(ctx, spec, name, dir)?)),
        None => None,
    };
    let mut passage_nll: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut perplexity_notes = Vec::new();
    for model_name in &stage.models {
        let model = eval_model(ctx, model_name)?;
        if let Some((p, blocks)) = &perplexity_text {
            // Each model on its own objective (T5: the span-corruption targets), as its
            // pretraining measured it.
            let context = p.context.unwrap_or(model.config().context()).min(model.config().context());
            let sentinels = tokenizer.sentinel_ids();
            let windows = super::pretrain::windows_for(p, &model, context, &sentinels, tokenizer.pad_id())
                .map_err(|message| config_error(format!("perplexity_of `{}`: {message}", p.name)))?;
            let sizes = (p.train.batch, context, p.train.eval_batches, ctx.experiment.seed);
            let loss = super::pretrain::validation_loss(&model, blocks, &windows, sizes, &ctx.device)
                .map_err(|source| StageError::Train { stage: name.into(), source })?;
            metrics.insert(format!("{model_name}/perplexity"), loss.exp());
        }
        if let Some((spec, prepared)) = &passages {
            let window = spec.window.unwrap_or(model.config().context());
            if window > model.config().context() {
                return Err(config_error(format!(
                    "perplexity_on.window is {window} tokens, longer than `{model_name}`'s context of {}",
                    model.config().context()
                )));
            }
            let (nll, predicted) = perplexity::measure(&model, &prepared.passages, window, model_name)
                .map_err(|source| StageError::Rl { stage: name.to_string(), step: 0, source })?;
            let total: f64 = nll.iter().sum();
            let mean = total / predicted as f64;
            metrics.insert(format!("{model_name}/perplexity"), mean.exp());
            metrics.insert(format!("{model_name}/nll"), mean);
            metrics.insert(format!("{model_name}/perplexity_tokens"), predicted as f64);
            perplexity_notes.push(perplexity::describe(model_name, prepared, window, predicted, mean));
            tracing::info!(stage = name, "{}", perplexity_notes.last().map(String::as_str).unwrap_or_default());
            passage_nll.insert(model_name, nll);
        }
        let Some(layout) = &layout else { continue };
        let generated = answer(&model, layout, &prompts, &stage.generation, model_name)?;
        if let Some(reference) = &reference {
            let pad = tokenizer.pad_id().unwrap_or(layout.end_token());
            let kl =
                answer_kl((&model, reference), layout, &prompts, &generated, (stage.generation.max_new_tokens, pad))
                    .map_err(|source| StageError::Rl { stage: name.to_string(), step: 0, source })?;
            metrics.insert(format!("{model_name}/kl"), kl);
        }
        let texts: Vec<String> = generated.into_iter().map(|(text, _)| text).collect();
        let lengths: Vec<f64> = texts.iter().map(|t| t.split_whitespace().count() as f64).collect();
        metrics.insert(format!("{model_name}/answer_words"), lengths.iter().sum::<f64>() / lengths.len() as f64);
        let records: Vec<MetricRecord> = texts
            .iter()
            .zip(&references)
            .map(|(p, r)| MetricRecord { prediction: p.clone(), references: vec![r.clone()] })
            .collect();
        for plugin in &metric_plugins {
            for value in plugin.evaluate(&records)? {
                metrics.insert(format!("{model_name}/{}", value.name), value.value);
            }
        }
        answers.insert(model_name, texts);
    }
    if let Some((_, prepared)) = &passages {
        perplexity::write_passages(&dir.join("passages.jsonl"), &prepared.passages, &passage_nll)?;
    }
    let mut judged: BTreeMap<(&str, &Judge), Vec<f64>> = BTreeMap::new();
    let mut comparisons = Vec::new();
    if let Some(layout) = &layout {
        for judge in &stage.score_with {
            for model_name in &stage.models {
                let scores = judge_scores(ctx, judge, layout, (&prompts, &references), &answers[model_name.as_str()])?;
                let (mean, low, high) = mean_interval(&scores);
                let metric = format!("{model_name}/score/{}", judge.name());
                metrics.insert(format!("{metric}_low"), low);
                metrics.insert(format!("{metric}_high"), high);
                metrics.insert(metric, mean);
            }
        }

        let single = matches!(stage.win_rate, WinRates::One(_));
        for (win, prefix) in stage.win_rate.comparisons() {
            for side in [&win.a, &win.b] {
                if let std::collections::btree_map::Entry::Vacant(entry) = judged.entry((side.as_str(), &win.judge)) {
                    entry.insert(judge_scores(
                        ctx,
                        &win.judge,
                        layout,
                        (&prompts, &references),
                        &answers[side.as_str()],
                    )?);
                }
            }
            let (a, b) = (&judged[&(win.a.as_str(), &win.judge)], &judged[&(win.b.as_str(), &win.judge)]);
            if single {
                for (side, scores) in [(&win.a, a), (&win.b, b)] {
                    metrics.insert(format!("{side}/judge"), scores.iter().sum::<f64>() / scores.len() as f64);
                }
            }
            let rate = WinRate::from_scores(a, b, win.tie_tolerance);
            let (low, high) = rate.interval();
            let ties = if single { "ties".to_string() } else { format!("{prefix}_ties") };
            metrics.insert(prefix.clone(), rate.rate());
            metrics.insert(format!("{prefix}_low"), low);
            metrics.insert(format!("{prefix}_high"), high);
            metrics.insert(ties, rate.ties as f64);
            let labels = if single { String::new() } else { format!("-{}-vs-{}", win.a, win.b) };
            write_label_files(
                &dir.join(format!("human-labels{labels}.jsonl")),
                &dir.join(format!("human-key{labels}.json")),
                &prompts,
                (&win.a, &answers[win.a.as_str()]),
                (&win.b, &answers[win.b.as_str()]),
                ctx.experiment.seed,
            )?;
            tracing::info!(stage = name, "win-rate of `{}` over `{}`: {}", win.a, win.b, rate.describe());
            comparisons.push((win, rate));
        }

        let mut samples = String::new();
        for (i, example) in held_out.iter().enumerate() {
            let mut line = serde_json::json!({ "prompt": example.prompt, "reference": example.response });
            for (model_name, texts) in &answers {
                line[*model_name] = serde_json::json!(texts[i]);
                for ((judged_model, judge), scores) in &judged {
                    if judged_model == model_name {
                        line[format!("{model_name}/judge/{}", judge.name())] = serde_json::json!(scores[i]);
                    }
                }
            }
            samples.push_str(&line.to_string());
            samples.push('\n');
        }
        write_atomically(&dir.join("samples.jsonl"), samples.as_bytes())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    write_atomically(
        &dir.join("report.md"),
        report(stage, &metrics, &perplexity_notes, &comparisons, &held_out, &answers, seconds).as_bytes(),
    )?;
    Ok(StageOutput { metrics, resumed_from: 0 })
}

fn report(
    stage: &EvalStage,
    metrics: &BTreeMap<String, f64>,
    perplexity_notes: &[String],
    comparisons: &[(&WinRateSpec, WinRate)],
    held_out: &[Example],
    answers: &BTreeMap<&str, Vec<String>>,
    seconds: f64,
) -> String {
    let mut out = format!("# Evaluation `{}`\n\n", stage.name);
    if let Some(of) = &stage.prompts_of {
        out.push_str(&format!("{} held-out prompts of stage `{of}`.\n", held_out.len()));
    }
    if let Some(set) = &stage.prompts {
        out.push_str(&format!("{} prompts of data `{}`.\n", held_out.len(), set.data));
    }
    for note in perplexity_notes {
        out.push_str(&format!("{note}\n"));
    }
    out.push_str("\n| model | metric | value |\n|---|---|---|\n");
    for (name, value) in metrics {
        let (model, metric) = name.split_once('/').unwrap_or(("", name));
        out.push_str(&format!("| {model} | {metric} | {value:.4} |\n"));
    }
    for (win, rate) in comparisons {
        let judge = match &win.judge {
            Judge::Plugin(p) => format!("reward plugin `{p}`"),
            Judge::RewardModel(r) => format!("reward model `{r}`"),
        };
        out.push_str(&format!("\nWin-rate of `{}` over `{}` judged by {judge}: {}.\n", win.a, win.b, rate.describe()));
    }
    if !comparisons.is_empty() {
        out.push_str("A person can judge the same pairs blind: label a `human-labels*.jsonl` file (\"preferred\": 1, 2 or \"tie\"), then run `triad labels <this folder>`.\n");
    }
    if !held_out.is_empty() {
        out.push_str("\n## Samples\n");
    }
    for (i, example) in held_out.iter().take(5).enumerate() {
        out.push_str(&format!(
            "\n**Prompt:** {}\n\n**Reference:** {}\n\n",
            example.prompt.trim(),
            example.response.trim()
        ));
        for (model, texts) in answers {
            out.push_str(&format!("- `{model}`: {}\n", texts[i].trim()));
        }
    }
    out.push_str(&format!("\nEvaluated in {seconds:.1} s.\n"));
    out
}

/// A one-off evaluation (`triad eval`): one model, a text file's perplexity and/or a JSONL
/// file's prompts scored by metric plugins, written as an experiment with a single Eval stage,
/// so that it runs, is recorded and can be rerun like any other.
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// What `Pretrained(...)` accepts: a name, a Hugging Face folder, a `.gguf` file.
    pub model: String,
    /// A text file whose perplexity to measure.
    pub text: Option<std::path::PathBuf>,
    /// How the text file becomes passages.
    pub split: crate::data::source::TextSplit,
    pub window: Option<usize>,
    pub bos: perplexity::Bos,
    pub max_tokens: Option<usize>,
    /// A JSONL file of prompts with references, its two field names, and metric plugin folders.
    pub prompts: Option<(std::path::PathBuf, String, String)>,
    pub metrics: Vec<std::path::PathBuf>,
    /// Lay the prompts out in the model's chat template (else as plain text).
    pub chat: bool,
    pub max_prompts: usize,
    pub max_new_tokens: usize,
}

impl Question {
    /// The experiment, as RON text (every path absolute, so that the text means the same
    /// wherever it is read from).
    pub fn experiment_text(&self) -> String {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let model_path = Path::new(&self.model);
        let model = if crate::model::pretrained::PRETRAINED_MODELS.contains(&self.model.as_str()) {
            self.model.clone()
        } else {
            absolute(model_path).display().to_string()
        };
        let mut data = Vec::new();
        let mut plugins = Vec::new();
        let mut stage = vec![format!("name: \"eval\""), "models: [\"model\"]".to_string()];
        if let Some(text) = &self.text {
            data.push(format!(
                "\"text\": Text(path: {:?}, split: {:?})",
                absolute(text).display().to_string(),
                self.split
            ));
            let mut on = vec!["data: \"text\"".to_string(), format!("bos: {:?}", self.bos)];
            on.extend(self.window.map(|w| format!("window: {w}")));
            on.extend(self.max_tokens.map(|m| format!("max_tokens: {m}")));
            stage.push(format!("perplexity_on: ({})", on.join(", ")));
        }
        if let Some((path, prompt, reference)) = &self.prompts {
            let path = absolute(path).display().to_string();
            data.push(format!("\"prompts\": Jsonl(path: {path:?}, text_field: {prompt:?})"));
            // The prompt field is the records' text now.
            stage.push(format!(
                "prompts: (data: \"prompts\", format: Fields(prompt: \"text\", response: {reference:?}))"
            ));
            if self.chat {
                stage.push("template: Chat()".to_string());
            }
            stage.push(format!("max_prompts: {}", self.max_prompts));
            stage.push(format!("generation: (max_new_tokens: {}, temperature: 0.0)", self.max_new_tokens));
            let mut names = Vec::new();
            for path in &self.metrics {
                let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                plugins.push(format!("{name:?}: (path: {:?})", absolute(path).display().to_string()));
                names.push(format!("{name:?}"));
            }
            stage.push(format!("metrics: [{}]", names.join(", ")));
        }
        format!(
            "Experiment(\n    name: \"eval\",\n    data: {{ {} }},\n    plugins: {{ {} }},\n    model: Pretrained({model:?}),\n    stages: [Eval({})],\n)\n",
            data.join(", "),
            plugins.join(", "),
            stage.join(", ")
        )
    }
}
