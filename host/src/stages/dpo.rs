//! Direct preference optimisation: the policy learns from (prompt, chosen, rejected) pairs
//! against a frozen reference, in closed form instead of reward model + PPO (Rafailov et al.
//! 2023); IPO and conservative DPO are options of the same stage.
//!
//! Each pair is laid out by the stage's template twice, as `prompt ++ chosen ++ end` and
//! `prompt ++ rejected ++ end`; a micro-batch of P pairs is 2P rows, chosen and rejected
//! interleaved, right-padded, scored on the response tokens only (as SFT is). The loss reads the
//! summed response log-probabilities under the policy (with gradients) and the reference
//! (without): the native losses of [`crate::train::dpo`], or a loss plugin through the
//! surrogate-gradient contract, which receives `sequence-logprob` and `sequence-ref-logprob`
//! (and per token `logprob`, `ref-logprob`, `mask`).
//!
//! Logged every step and on held-out pairs: the loss, the implicit rewards of chosen and
//! rejected responses (`beta * (logp - ref_logp)`), their margin and the preference accuracy.
//! Batches are a pure function of (seed, step), so a resumed run continues exactly.

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::layout::{Encoded, Layout, Template};
use super::pairs::{self, PairSource};
use crate::data::blocks::draw_indices;
use crate::experiment::{StageSpec, TrainSettings};
use crate::model::Model;
use crate::plugins::{Feature, LossPlugin, PluginKind};
use crate::train::dpo::{DpoConfig, DpoLossType, PreferenceStats, dpo_loss, response_logprobs, sums_per_row};
use crate::train::plugin_loss::{Features, plugin_loss};
use crate::train::{Objective, SplitLoss, TrainError, part_rows, train};

/// Preference optimisation of a policy on pairs, against a frozen reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoStage {
    pub name: String,
    /// The stage whose model the policy starts from (usually the SFT model).
    pub policy: String,
    /// The stage whose model is the frozen reference (default: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub pairs: PairSource,
    #[serde(default)]
    pub template: Template,
    /// Longest sequence in tokens (default: the model's context); longer responses are cut.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Inverse temperature of the implicit reward (TRL's `beta`).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Conservative DPO: the assumed rate of flipped labels, in [0, 0.5) (Sigmoid only).
    #[serde(default)]
    pub label_smoothing: f64,
    /// `Sigmoid` (DPO) or `Ipo`.
    #[serde(default)]
    pub loss_type: DpoLossType,
    /// A loss plugin that replaces the native loss (it configures itself; `beta` still scales
    /// the logged implicit rewards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    pub train: TrainSettings,
}

fn default_beta() -> f64 {
    0.1
}

/// The features a loss plugin can read in a DPO stage.
const PROVIDED: &[Feature] =
    &[Feature::SequenceLogprob, Feature::SequenceRefLogprob, Feature::Logprob, Feature::RefLogprob, Feature::Mask];

impl DpoStage {
    fn loss_config(&self) -> DpoConfig {
        DpoConfig { beta: self.beta, label_smoothing: self.label_smoothing, loss_type: self.loss_type }
    }

    fn reference_stage(&self) -> &str {
        self.reference.as_deref().unwrap_or(&self.policy)
    }
}

impl StageSpec for DpoStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "Dpo"
    }
    fn inputs(&self) -> Vec<&str> {
        let mut inputs = vec![self.policy.as_str(), self.reference_stage()];
        inputs.extend(self.pairs.stages());
        let mut seen = std::collections::BTreeSet::new();
        inputs.retain(|name| seen.insert(*name));
        inputs
    }
    fn data(&self) -> Vec<&str> {
        vec![self.pairs.data()]
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        let mut slots = self.pairs.plugin_slots();
        slots.extend(self.loss.as_deref().map(|l| (l, PluginKind::Loss)));
        slots
    }
    fn loss_features(&self) -> &'static [Feature] {
        PROVIDED
    }
    fn validate(&self) -> Result<(), String> {
        self.train.validate()?;
        self.loss_config().validate()?;
        self.pairs.validate()?;
        if let Some(plugin) = &self.loss
            && (self.loss_type != DpoLossType::Sigmoid || self.label_smoothing != 0.0)
        {
            return Err(format!(
                "loss_type and label_smoothing configure the native loss; with loss: \"{plugin}\" set them in the plugin's config"
            ));
        }
        match self.max_len {
            Some(m) if m < 2 => Err(format!("max_len {m} leaves no room for a response")),
            _ => Ok(()),
        }
    }
    fn describe(&self) -> String {
        let loss = match &self.loss {
            Some(plugin) => format!("plugin `{plugin}`"),
            None => format!("{:?}", self.loss_type),
        };
        format!(
            "policy `{}` against `{}` on pairs from `{}` ({loss}, beta {}): {}",
            self.policy,
            self.reference_stage(),
            self.pairs.data(),
            self.beta,
            self.train.describe()
        )
    }
}

/// A pair as two encoded sequences.
pub type EncodedPair = (Encoded, Encoded);

/// The pairs a layout can hold: each response cut to `max_len + 1` tokens; a pair whose prompt
/// fills the window is skipped.
pub fn encode_pairs(
    layout: &Layout,
    pairs: &[pairs::Pair],
    max_len: usize,
    stage: &str,
) -> Result<Vec<EncodedPair>, StageError> {
    let layout_error = |source| StageError::Layout { stage: stage.to_string(), source };
    let mut encoded = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let encode = |response: &str| -> Result<Encoded, super::layout::LayoutError> {
            let mut e = layout.encode(&pair.prompt, response)?;
            e.tokens.truncate(max_len + 1);
            Ok(e)
        };
        let (chosen, rejected) =
            (encode(&pair.chosen).map_err(layout_error)?, encode(&pair.rejected).map_err(layout_error)?);
        if chosen.prompt_len >= max_len || rejected.prompt_len >= max_len {
            continue;
        }
        encoded.push((chosen, rejected));
    }
    Ok(encoded)
}

/// The preference loss of `pairs` under `(policy, reference)`: the native loss of `config`, or
/// `plugin`'s through the surrogate-gradient contract; with the implicit-reward metrics (and the
/// plugin's own, under `plugin/`). Pairs become 2P right-padded rows, chosen and rejected
/// interleaved, scored on response tokens only.
pub fn preference_loss(
    (policy, reference): (&Model, &Model),
    pairs: &[&EncodedPair],
    config: &DpoConfig,
    plugin: Option<&LossPlugin>,
    pad: u32,
    train: bool,
) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
    let tensor = |source| TrainError::Tensor { step: 0, source };
    let model = |e: crate::model::ModelError| TrainError::Objective(e.to_string());
    let encoded: Vec<&Encoded> = pairs.iter().flat_map(|(c, r)| [c, r]).collect();
    let rows: Vec<Vec<u32>> = encoded.iter().map(|e| e.tokens.clone()).collect();
    let lens: Vec<usize> = encoded.iter().map(|e| e.response_len()).collect();
    // (N): log p of each response token, chosen and rejected rows interleaved.
    let policy_tokens = response_logprobs(policy, &rows, &lens, pad, train).map_err(model)?;
    let reference_tokens = response_logprobs(reference, &rows, &lens, pad, false).map_err(model)?.detach();
    // (2P): summed over each response.
    let sequence = sums_per_row(&policy_tokens, &lens).map_err(tensor)?;
    let ref_sequence = sums_per_row(&reference_tokens, &lens).map_err(tensor)?;
    let stats = PreferenceStats::of(
        config.beta,
        &sequence.to_vec1::<f32>().map_err(tensor)?,
        &ref_sequence.to_vec1::<f32>().map_err(tensor)?,
    );
    let mut metrics = stats.metrics(1.0);
    let Some(plugin) = plugin else {
        return Ok((dpo_loss(&sequence, &ref_sequence, config).map_err(tensor)?, metrics));
    };
    let (logprob, ref_logprob) = (policy_tokens, reference_tokens);
    let ones = logprob.ones_like().map_err(tensor)?;
    let features = Features {
        offsets: Features::offsets_of(&lens),
        values: vec![
            (Feature::SequenceLogprob, &sequence),
            (Feature::SequenceRefLogprob, &ref_sequence),
            (Feature::Logprob, &logprob),
            (Feature::RefLogprob, &ref_logprob),
            (Feature::Mask, &ones),
        ],
    };
    let out = plugin_loss(plugin, &features).map_err(|source| TrainError::PluginLoss { step: 0, source })?;
    metrics.extend(out.metrics.into_iter().map(|(n, v)| (format!("plugin/{n}"), v)));
    Ok((out.surrogate, metrics))
}

struct Dpo<'a> {
    policy: &'a Model,
    reference: &'a Model,
    train: Vec<EncodedPair>,
    valid: Vec<EncodedPair>,
    config: DpoConfig,
    plugin: Option<LossPlugin>,
    pad: u32,
    seed: u64,
    batch: usize,
    accumulation: usize,
    eval_batches: usize,
}

impl Dpo<'_> {
    fn draw(&self, step: u64, micro: usize) -> Vec<&EncodedPair> {
        let draw = step * self.accumulation as u64 + micro as u64;
        draw_indices(draw, self.batch, self.train.len(), self.seed).into_iter().map(|i| &self.train[i]).collect()
    }

    /// The loss of `pairs` and the logged metrics, weighted by `share` (see [`preference_loss`]).
    fn loss_of(
        &self,
        pairs: &[&EncodedPair],
        train: bool,
        share: f64,
    ) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        let (loss, metrics) =
            preference_loss((self.policy, self.reference), pairs, &self.config, self.plugin.as_ref(), self.pad, train)?;
        let loss = loss.affine(share, 0.0).map_err(|source| TrainError::Tensor { step: 0, source })?;
        Ok((loss, metrics.into_iter().map(|(n, v)| (n, v * share)).collect()))
    }
}

impl Objective for Dpo<'_> {
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        self.policy.seed_dropout(self.seed, step * self.accumulation as u64 + micro as u64);
        self.loss_of(&self.draw(step, micro), true, 1.0).map_err(|e| at_step(e, step))
    }

    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError> {
        let mut totals: Vec<(String, f64)> = Vec::new();
        let held_out: Vec<&EncodedPair> = self.valid.iter().take(self.batch * self.eval_batches).collect();
        for chunk in held_out.chunks(self.batch) {
            let share = chunk.len() as f64 / held_out.len() as f64;
            let (loss, metrics) = self.loss_of(chunk, false, share)?;
            let loss = loss.to_scalar::<f32>().map_err(|source| TrainError::Tensor { step: 0, source })?;
            for (name, value) in std::iter::once(("loss".to_string(), f64::from(loss))).chain(metrics) {
                match totals.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => *total += value,
                    None => totals.push((name, value)),
                }
            }
        }
        Ok(totals)
    }

    fn split(&self) -> Option<&dyn SplitLoss> {
        // A plugin reads the whole micro-batch at once; dropout masks come from one generator.
        (self.plugin.is_none() && !self.policy.has_dropout()).then_some(self as &dyn SplitLoss)
    }
}

impl SplitLoss for Dpo<'_> {
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
        let pairs = self.draw(step, micro);
        let range = part_rows(pairs.len(), part, parts);
        let share = range.len() as f64 / pairs.len() as f64;
        self.loss_of(&pairs[range], true, share).map_err(|e| at_step(e, step))
    }
}

/// An error of step 0's bookkeeping, placed at `step`.
fn at_step(error: TrainError, step: u64) -> TrainError {
    match error {
        TrainError::Tensor { source, .. } => TrainError::Tensor { step, source },
        TrainError::PluginLoss { source, .. } => TrainError::PluginLoss { step, source },
        other => other,
    }
}

/// Run the stage into `dir`; returns the trained policy and the stage's output.
pub fn run(ctx: &RunContext, stage: &DpoStage, dir: &Path) -> Result<(Model, StageOutput), StageError> {
    let name = stage.name.as_str();
    let config_error = |message: String| StageError::Config { stage: name.to_string(), message };
    let tokenizer = ctx.tokenizer()?;
    let chat = ctx.chat_template()?;
    let layout = Layout::new(&tokenizer, &stage.template, chat.as_deref())
        .map_err(|source| StageError::Layout { stage: name.to_string(), source })?;
    let pairs = pairs::load(ctx, &stage.pairs, name, &stage.policy, &layout, dir)?;
    let policy = ctx.starting_model(Some(&stage.policy))?;
    let reference = ctx.starting_model(Some(stage.reference_stage()))?;
    let (vocab, reference_vocab) = (policy.config().vocab_size(), reference.config().vocab_size());
    if vocab != reference_vocab {
        return Err(config_error(format!(
            "the reference `{}` reads a vocabulary of {reference_vocab} tokens, the policy `{}` {vocab}: they must share a tokenizer",
            stage.reference_stage(),
            stage.policy
        )));
    }
    let context = policy.config().context();
    let max_len = stage.max_len.unwrap_or(context).min(context);
    let train_pairs = encode_pairs(&layout, &pairs.train, max_len, name)?;
    let valid = encode_pairs(&layout, &pairs.valid, max_len, name)?;
    if train_pairs.is_empty() {
        return Err(config_error(format!("every training prompt fills the {max_len}-token window: raise max_len")));
    }
    tracing::info!(stage = name, pairs = train_pairs.len(), held_out = valid.len(), max_len, "DPO pairs ready");
    let plugin = stage.loss.as_deref().map(|l| ctx.plugin(l)?.into_loss().map_err(StageError::from)).transpose()?;
    let pad = tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0);
    let objective = Dpo {
        policy: &policy,
        reference: &reference,
        train: train_pairs,
        valid,
        config: stage.loss_config(),
        plugin,
        pad,
        seed: ctx.experiment.seed,
        batch: stage.train.batch,
        accumulation: stage.train.accumulation,
        eval_batches: stage.train.eval_batches,
    };
    let vars = policy.vars();
    let summary = train(name, dir, &vars, crate::model::decays, &objective, &stage.train.to_config(), &ctx.device)
        .map_err(|source| StageError::Train { stage: name.into(), source })?;
    policy.save(&dir.join("model")).map_err(|source| StageError::Model { stage: name.into(), source })?;
    Ok((policy, StageOutput::trained(dir, name, &summary)?))
}
