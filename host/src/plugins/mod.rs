//! Sandboxed WebAssembly plugins: data filters, rewards, losses and metrics.
//!
//! The layers, from the bottom:
//! - [`sandbox`]: the wasmtime engine, its limits and the compiled-component cache;
//! - [`build`] and [`load`]: plugin crate → `.wasm` → component (imports checked) → compiled;
//! - `pool`: instances (one per core), the deadline, trap handling, batch splitting;
//! - [`kinds`]: one typed, output-validating handle per plugin kind.
//!
//! [`Plugin::load`] puts them together for a plugin named in an experiment.

pub mod bindings;
pub mod build;
pub mod compiled_cache;
pub mod componentize;
mod error;
pub mod isolate;
pub mod kinds;
pub mod load;
mod pool;
pub mod records;
pub mod sandbox;
pub mod scaffold;
pub mod sdk;

use std::path::{Path, PathBuf};

pub use bindings::{
    Decision, Episode, Feature, FeatureValues, LossBatch, LossOutput, MetricRecord, NamedValue, PluginInfo, PluginKind,
    Sample,
};
pub use error::{PluginError, Problem};
pub use kinds::{FilterPlugin, LossPlugin, MetricPlugin, RewardPlugin};
pub use sandbox::{Limits, Sandbox};

use pool::Pool;

/// A plugin as an experiment names it: where it is, its config block and its limits.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The name the experiment uses for it.
    pub name: String,
    /// A plugin crate directory, a core wasm module or a component.
    pub path: PathBuf,
    /// The config block as JSON text (`{}` when absent).
    pub config: String,
    /// Limits for its instances and calls.
    pub limits: Limits,
    /// Instances to spread batches over; `None` means one per core. Stateful plugins use one.
    pub workers: Option<usize>,
}

impl PluginSpec {
    /// A plugin at `path` with no config and default limits, named after its crate or file
    /// (`lexicon_sentiment.wasm` is `lexicon-sentiment`, as cargo names the crate).
    pub fn at(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let name = path.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default();
        PluginSpec { name, path, config: "{}".into(), limits: Limits::default(), workers: None }
    }

    /// The same plugin with this config (JSON text).
    pub fn with_config(mut self, config: impl Into<String>) -> Self {
        self.config = config.into();
        self
    }

    /// The same plugin spread over `workers` instances.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers.max(1));
        self
    }

    /// The same plugin with these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Compile a plugin and tell its kind from its exports.
fn compile_and_classify(
    sandbox: &Sandbox,
    name: &str,
    path: &Path,
) -> Result<(load::CompiledPlugin, PluginKind), PluginError> {
    let compiled = load::compile(sandbox, path).map_err(|mut e| {
        e.plugin = name.to_string();
        e
    })?;
    let kind = sandbox::kind_of(&compiled.component, sandbox.engine()).ok_or_else(|| {
        let problem = Problem::Invalid(
            "it exports none of `filter`, `score`, `compute` or `statistics`: \
             build it with triad-plugin-sdk's export macros"
                .into(),
        );
        PluginError::new(name, None, "load", problem)
    })?;
    Ok((compiled, kind))
}

/// A loaded, configured plugin of any kind.
pub enum Plugin {
    Filter(FilterPlugin),
    Reward(RewardPlugin),
    Loss(LossPlugin),
    Metric(MetricPlugin),
}

impl Plugin {
    /// Build (for a crate), compile, instantiate and configure a plugin.
    pub fn load(sandbox: &Sandbox, spec: &PluginSpec) -> Result<Plugin, PluginError> {
        let (compiled, kind) = compile_and_classify(sandbox, &spec.name, &spec.path)?;
        let (name, sha, component) = (&spec.name, compiled.sha256, &compiled.component);
        let settings = pool::Settings { config: &spec.config, limits: spec.limits, workers: spec.workers };
        Ok(match kind {
            PluginKind::DataFilter => {
                Plugin::Filter(FilterPlugin { pool: Pool::new(sandbox, name, sha, component, &settings)? })
            }
            PluginKind::Reward => {
                Plugin::Reward(RewardPlugin { pool: Pool::new(sandbox, name, sha, component, &settings)? })
            }
            PluginKind::Loss => Plugin::Loss(LossPlugin::new(Pool::new(sandbox, name, sha, component, &settings)?)?),
            PluginKind::Metric => {
                Plugin::Metric(MetricPlugin { pool: Pool::new(sandbox, name, sha, component, &settings)? })
            }
        })
    }

    /// What a plugin is (its `info` and sha256) without configuring it: plugins that require
    /// config fields can still be listed.
    pub fn inspect(sandbox: &Sandbox, path: &Path) -> Result<(PluginInfo, String), PluginError> {
        let name = PluginSpec::at(path).name;
        let (compiled, kind) = compile_and_classify(sandbox, &name, path)?;
        let limits = Limits::default();
        let component = &compiled.component;
        let info = match kind {
            PluginKind::DataFilter => {
                let pre = pool::link::<bindings::filter::DataFilter>(sandbox, &name, component)?;
                pool::read_info::<bindings::filter::DataFilter>(sandbox, &name, &pre, &limits)?
            }
            PluginKind::Reward => {
                let pre = pool::link::<bindings::reward::Reward>(sandbox, &name, component)?;
                pool::read_info::<bindings::reward::Reward>(sandbox, &name, &pre, &limits)?
            }
            PluginKind::Loss => {
                let pre = pool::link::<bindings::loss::Loss>(sandbox, &name, component)?;
                pool::read_info::<bindings::loss::Loss>(sandbox, &name, &pre, &limits)?
            }
            PluginKind::Metric => {
                let pre = pool::link::<bindings::metric::Metric>(sandbox, &name, component)?;
                pool::read_info::<bindings::metric::Metric>(sandbox, &name, &pre, &limits)?
            }
        };
        Ok((info, compiled.sha256))
    }

    /// What the plugin reported about itself.
    pub fn info(&self) -> &PluginInfo {
        match self {
            Plugin::Filter(p) => p.info(),
            Plugin::Reward(p) => p.info(),
            Plugin::Loss(p) => p.info(),
            Plugin::Metric(p) => p.info(),
        }
    }

    /// sha256 of the plugin's wasm, hex.
    pub fn sha256(&self) -> &str {
        match self {
            Plugin::Filter(p) => p.sha256(),
            Plugin::Reward(p) => p.sha256(),
            Plugin::Loss(p) => p.sha256(),
            Plugin::Metric(p) => p.sha256(),
        }
    }

    fn wrong_kind(&self, expected: PluginKind) -> PluginError {
        let info = self.info();
        PluginError::new(&info.name, Some(info.kind), "load", Problem::WrongKind { expected, actual: info.kind })
    }

    /// This plugin as a data filter, or an error saying what it is instead.
    pub fn into_filter(self) -> Result<FilterPlugin, PluginError> {
        match self {
            Plugin::Filter(p) => Ok(p),
            other => Err(other.wrong_kind(PluginKind::DataFilter)),
        }
    }

    /// This plugin as a reward, or an error saying what it is instead.
    pub fn into_reward(self) -> Result<RewardPlugin, PluginError> {
        match self {
            Plugin::Reward(p) => Ok(p),
            other => Err(other.wrong_kind(PluginKind::Reward)),
        }
    }

    /// This plugin as a loss, or an error saying what it is instead.
    pub fn into_loss(self) -> Result<LossPlugin, PluginError> {
        match self {
            Plugin::Loss(p) => Ok(p),
            other => Err(other.wrong_kind(PluginKind::Loss)),
        }
    }

    /// This plugin as a metric, or an error saying what it is instead.
    pub fn into_metric(self) -> Result<MetricPlugin, PluginError> {
        match self {
            Plugin::Metric(p) => Ok(p),
            other => Err(other.wrong_kind(PluginKind::Metric)),
        }
    }
}
