//! What every stage of one run shares: the experiment, its folders, the device, the plugin
//! sandbox, the data sources (read once) and the tokenizer (built once).

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::Device;

use super::Experiment;
use crate::data::filter::{DEFAULT_BATCH, apply_filters};
use crate::data::source::{LoadedSource, Record, SourceError};
use crate::data::tokenizer::{Tokenizer, TokenizerError};
use crate::experiment::{ContentHashes, DeviceSpec, GraphError, ModelSpec, PluginDecl, SweepError};
use crate::model::chat::ChatTemplate;
use crate::model::pretrained::{PretrainedError, PretrainedSource};
use crate::model::{Model, ModelError};
use crate::plugins::{Limits, Plugin, PluginError, PluginSpec, Sandbox};
use crate::runs::StoreError;
use crate::train::TrainError;
use crate::train::rl::RlError;
use crate::util::atomic::{FileError, write_atomically};

/// Why a stage (or the pipeline around it) could not run.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage `{stage}`: {message}")]
    Config { stage: String, message: String },
    #[error("data source `{name}`: {source}")]
    Source { name: String, source: SourceError },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("stage `{stage}`: {source}")]
    Train { stage: String, source: TrainError },
    #[error("stage `{stage}` at iteration {step}: {source}")]
    Rl { stage: String, step: u64, source: RlError },
    #[error("stage `{stage}`: {source}")]
    Model { stage: String, source: ModelError },
    /// Prompts or responses that cannot be laid out as tokens for the stage's model.
    #[error("stage `{stage}`: {source}")]
    Layout { stage: String, source: super::layout::LayoutError },
    #[error(transparent)]
    Pretrained(#[from] PretrainedError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stage `{stage}`: {message}")]
    Data { stage: String, message: String },
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Sweep(#[from] SweepError),
    /// A name the experiment uses but does not declare (loading checks this first; a
    /// hand-built experiment can still get here).
    #[error("{what} `{name}` is not declared in `{section}`")]
    Undeclared { what: &'static str, name: String, section: &'static str },
    /// The experiment has no tokenizer and its model brings none.
    #[error("the experiment declares no `tokenizer`; only a Pretrained model brings its own")]
    NoTokenizer,
}

/// One run of an experiment.
pub struct RunContext<'a> {
    pub experiment: &'a Experiment,
    /// The experiment file's folder: relative paths in the experiment resolve against it.
    pub base_dir: PathBuf,
    /// `runs/<experiment>/<run>/`.
    pub run_dir: PathBuf,
    pub device: Device,
    pub sandbox: Sandbox,
    sources: RefCell<HashMap<String, Rc<LoadedSource>>>,
    tokenizer: OnceCell<Rc<Tokenizer>>,
    pretrained: OnceCell<Pretrained>,
    /// See [`ContentHashes::model_sha256`].
    model_sha256: OnceCell<Option<String>>,
    plugin_hashes: RefCell<HashMap<String, String>>,
    /// Records kept by (source, filters), with the filter report in Markdown.
    filtered: RefCell<HashMap<(String, Vec<String>), FilteredRecords>>,
}

/// What a source's filters kept, and their report.
type FilteredRecords = (Rc<Vec<Record>>, Rc<String>);

/// A pretrained model as loaded, kept for the stages that start from it.
struct Pretrained {
    model: Model,
    tokenizer: Rc<Tokenizer>,
    chat: Option<Rc<ChatTemplate>>,
    bos: Option<u32>,
}

impl<'a> RunContext<'a> {
    pub fn new(experiment: &'a Experiment, base_dir: &Path, run_dir: &Path) -> Result<Self, StageError> {
        let device = match experiment.device {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
                StageError::Device(format!(
                    "CUDA device {ordinal}: {e} (build with `--features cuda` on a machine with CUDA)"
                ))
            })?,
        };
        Ok(RunContext {
            experiment,
            base_dir: base_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            device,
            sandbox: Sandbox::shared(),
            sources: RefCell::new(HashMap::new()),
            tokenizer: OnceCell::new(),
            pretrained: OnceCell::new(),
            model_sha256: OnceCell::new(),
            plugin_hashes: RefCell::new(HashMap::new()),
            filtered: RefCell::new(HashMap::new()),
        })
    }

    /// A data source, read on first use.
    pub fn source(&self, name: &str) -> Result<Rc<LoadedSource>, StageError> {
        if let Some(found) = self.sources.borrow().get(name) {
            return Ok(found.clone());
        }
        let spec = self.experiment.data.get(name).ok_or_else(|| StageError::Undeclared {
            what: "data source",
            name: name.into(),
            section: "data",
        })?;
        let loaded =
            Rc::new(spec.load(&self.base_dir).map_err(|source| StageError::Source { name: name.into(), source })?);
        tracing::info!(source = name, records = loaded.records.len(), sha256 = &loaded.sha256[..12], "data loaded");
        self.sources.borrow_mut().insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// The run's tokenizer: a pretrained model's own; or loaded from the run folder when an
    /// earlier invocation built it; otherwise built (trained on its corpus) and saved there.
    pub fn tokenizer(&self) -> Result<Rc<Tokenizer>, StageError> {
        if let Some(tokenizer) = self.tokenizer.get() {
            return Ok(tokenizer.clone());
        }
        let Some(spec) = &self.experiment.tokenizer else {
            let tokenizer = self.pretrained()?.tokenizer.clone();
            let _ = self.tokenizer.set(tokenizer.clone());
            return Ok(tokenizer);
        };
        let path = self.run_dir.join("tokenizer.json");
        let key_path = self.run_dir.join("tokenizer.key");
        let corpus = spec.corpus().map(|name| self.source(name)).transpose()?;
        // The saved tokenizer is reused only if it was built from the same spec and corpus.
        let key = format!(
            "{}\n{}",
            serde_json::to_string(spec).unwrap_or_default(),
            corpus.as_ref().map(|c| c.sha256.as_str()).unwrap_or("")
        );
        let saved_key = std::fs::read_to_string(&key_path).unwrap_or_default();
        let tokenizer = if path.is_file() && saved_key == key {
            Tokenizer::load(&path)?
        } else {
            let texts: Vec<&str> = corpus.as_ref().map(|c| c.texts()).unwrap_or_default();
            let tokenizer = spec.build(&texts, &self.base_dir)?;
            tokenizer.save(&path)?;
            write_atomically(&key_path, key.as_bytes())?;
            tokenizer
        };
        tracing::info!(vocab = tokenizer.vocab_size(), "tokenizer ready");
        let tokenizer = Rc::new(tokenizer);
        let _ = self.tokenizer.set(tokenizer.clone());
        Ok(tokenizer)
    }

    /// The experiment's pretrained model, loaded once.
    fn pretrained(&self) -> Result<&Pretrained, StageError> {
        if let Some(loaded) = self.pretrained.get() {
            return Ok(loaded);
        }
        let ModelSpec::Pretrained(name) = &self.experiment.model else {
            return Err(StageError::NoTokenizer);
        };
        let crate::model::pretrained::Loaded { model, tokenizer, chat, bos } =
            crate::model::pretrained::load(name, &self.base_dir, &self.device)?;
        tracing::info!(model = name, parameters = model.num_parameters(), "pretrained model loaded");
        let tokenizer = Rc::new(Tokenizer::from_inner(tokenizer));
        let loaded = Pretrained { model, tokenizer, chat: chat.map(Rc::new), bos };
        Ok(self.pretrained.get_or_init(|| loaded))
    }

    /// The chat template of a pretrained model, if it has one triad can follow; `None` for
    /// models trained from scratch.
    pub fn chat_template(&self) -> Result<Option<Rc<ChatTemplate>>, StageError> {
        match self.experiment.model {
            ModelSpec::Pretrained(_) => Ok(self.pretrained()?.chat.clone()),
            _ => Ok(None),
        }
    }

    /// The token the experiment's model expects in front of every text: a pretrained model's
    /// own (its tokenizer's post-processor, or the GGUF's `add_bos_token`); none for models
    /// trained here, which see documents separated by the end-of-text token.
    pub fn bos_token(&self) -> Result<Option<u32>, StageError> {
        match self.experiment.model {
            ModelSpec::Pretrained(_) => Ok(self.pretrained()?.bos),
            _ => Ok(None),
        }
    }

    /// The folder of stage `name`'s output in this run.
    pub fn stage_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    /// The model a stage starts from: the output of stage `from`, or (without one) the
    /// experiment's model: a copy of the pretrained weights, or a fresh initialisation from the
    /// experiment's seed sized to the tokenizer.
    pub fn starting_model(&self, from: Option<&str>) -> Result<Model, StageError> {
        if let Some(stage) = from {
            let dir = self.stage_dir(stage).join("model");
            return Model::load(&dir, &self.device)
                .map_err(|source| StageError::Model { stage: stage.to_string(), source });
        }
        let model_error = |source| StageError::Model { stage: "model".into(), source };
        match self.experiment.model.architecture() {
            Some(config) => {
                let config = config.with_vocab_size(self.tokenizer()?.vocab_size());
                Model::new(&config, &self.device, self.experiment.seed).map_err(model_error)
            }
            None => self.pretrained()?.model.try_clone().map_err(model_error),
        }
    }

    /// The records of data source `data` that pass the `filters` (filter plugins, in order);
    /// with filters, their report is written to `dir/filter-report.md`.
    pub fn filtered_records(
        &self,
        stage: &str,
        data: &str,
        filters: &[String],
        dir: &Path,
    ) -> Result<Vec<Record>, StageError> {
        let records = self.source(data)?.records.clone();
        if filters.is_empty() {
            return Ok(records);
        }
        // Several stages filter the same source with the same filters: run them once per run,
        // and give each stage its copy of the report.
        let memo_key = (data.to_string(), filters.to_vec());
        let memo = self.filtered.borrow().get(&memo_key).cloned();
        let (kept, report) = match memo {
            Some(memo) => memo,
            None => {
                let plugins = filters
                    .iter()
                    .map(|f| self.plugin(f)?.into_filter().map_err(StageError::from))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<_> = plugins.iter().collect();
                let (kept, report) = apply_filters(records, &refs, DEFAULT_BATCH)
                    .map_err(|e| StageError::Data { stage: stage.to_string(), message: e.to_string() })?;
                tracing::info!(stage, "{}", report.summary());
                let memo = (Rc::new(kept), Rc::new(report.to_markdown()));
                self.filtered.borrow_mut().insert(memo_key, memo.clone());
                memo
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
        write_atomically(&dir.join("filter-report.md"), report.as_bytes())?;
        Ok(kept.as_ref().clone())
    }

    /// The sha256 of a declared plugin's wasm (building a plugin crate first if need be), for
    /// cache keys and manifests.
    pub fn plugin_sha256(&self, name: &str) -> Result<String, StageError> {
        if let Some(found) = self.plugin_hashes.borrow().get(name) {
            return Ok(found.clone());
        }
        let decl = self.experiment.plugins.get(name).ok_or_else(|| StageError::Undeclared {
            what: "plugin",
            name: name.into(),
            section: "plugins",
        })?;
        let (_, sha256) = Plugin::inspect(&self.sandbox, &self.base_dir.join(&decl.path))?;
        check_pinned(name, decl, &sha256)?;
        self.plugin_hashes.borrow_mut().insert(name.to_string(), sha256.clone());
        Ok(sha256)
    }

    /// A plugin declared in the experiment, loaded and configured.
    pub fn plugin(&self, name: &str) -> Result<Plugin, StageError> {
        let decl = self.experiment.plugins.get(name).ok_or_else(|| StageError::Undeclared {
            what: "plugin",
            name: name.into(),
            section: "plugins",
        })?;
        let plugin = Plugin::load(&self.sandbox, &plugin_spec(name, decl, &self.base_dir)?)?;
        check_pinned(name, decl, plugin.sha256())?;
        Ok(plugin)
    }
}

/// A plugin whose declaration pins a sha256 must have exactly that wasm.
pub fn check_pinned(name: &str, decl: &PluginDecl, actual: &str) -> Result<(), StageError> {
    match &decl.sha256 {
        Some(pinned) if !pinned.eq_ignore_ascii_case(actual) => Err(StageError::Config {
            stage: name.to_string(),
            message: format!("plugin `{name}` has sha256 {actual}, but the experiment pins {pinned}"),
        }),
        _ => Ok(()),
    }
}

/// How to load the plugin declared as `name`: its path (relative to the experiment file's
/// folder `base_dir`), its config block as JSON, its sandbox limits.
pub fn plugin_spec(name: &str, decl: &PluginDecl, base_dir: &Path) -> Result<PluginSpec, StageError> {
    let config = match &decl.config {
        Some(value) => serde_json::to_string(value).map_err(|e| StageError::Config {
            stage: name.to_string(),
            message: format!("plugin `{name}`: its config cannot be passed as JSON: {e}"),
        })?,
        None => "{}".to_string(),
    };
    let mut limits = Limits::default();
    if let Some(ms) = decl.deadline_ms {
        limits.deadline = std::time::Duration::from_millis(ms);
    }
    if let Some(mib) = decl.memory_mib {
        limits.memory_bytes = mib << 20;
    }
    Ok(PluginSpec { name: name.to_string(), path: base_dir.join(&decl.path), config, limits, workers: None })
}

impl ContentHashes for RunContext<'_> {
    type Error = StageError;

    fn data_sha256(&self, name: &str) -> Result<String, StageError> {
        Ok(self.source(name)?.sha256.clone())
    }

    fn plugin_sha256(&self, name: &str) -> Result<String, StageError> {
        RunContext::plugin_sha256(self, name)
    }

    fn model_sha256(&self) -> Result<Option<String>, StageError> {
        if let Some(found) = self.model_sha256.get() {
            return Ok(found.clone());
        }
        let ModelSpec::Pretrained(spec) = &self.experiment.model else {
            return Ok(None);
        };
        let files = PretrainedSource::resolve(spec, &self.base_dir)?.content_files();
        let sha256 = if files.is_empty() {
            None
        } else {
            let mut each = String::new();
            for file in &files {
                each.push_str(&crate::util::sha256_file(file).map_err(|e| FileError::new(file, e))?);
            }
            Some(crate::util::sha256_hex(each.as_bytes()))
        };
        Ok(self.model_sha256.get_or_init(|| sha256).clone())
    }
}
