//! `triad plugin new`: a plugin that builds anywhere on the machine, in Rust, Python or
//! JavaScript. A Python or JavaScript plugin is one file (`plugin.py`, `plugin.js`) in a folder;
//! the rest of this concerns Rust.
//!
//! A crate outside this repository cannot inherit its workspace or name the SDK by a relative
//! path, so the SDK's sources travel inside the `triad` binary and are written once into
//! triad's cache (`plugin-sdk/<hash of the sources>/`, as a standalone crate); a new plugin
//! names that folder, pins its own dependencies and is a workspace of its own. Plugins outside
//! the repository then build in one shared folder in the cache (see `build`), so the SDK's
//! dependencies compile once for all of them.

use std::path::{Path, PathBuf};

use super::bindings::PluginKind;
use super::componentize::Script;
use super::sdk::{sdk_dir, write_file};
use crate::util::atomic::FileError;

/// Why a plugin could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("{dir} already holds a plugin ({file}): choose a new folder")]
    Exists { dir: PathBuf, file: &'static str },
    #[error("{dir}: `{name}` cannot name a crate: use letters, digits, `-` and `_`, starting with a letter")]
    Name { dir: PathBuf, name: String },
    #[error("--lang {lang}: plugins are written in `rust`, `python` or `js`")]
    Language { lang: String },
    #[error("loss plugins are written in Rust (its SDK derives their gradients): use --lang rust")]
    ScriptLoss,
}

/// Write a new plugin of `kind` in `dir` (created), in `lang` (`rust`, `python` or `js`), and
/// return the file to edit.
pub fn new_plugin(kind: PluginKind, lang: &str, dir: &Path) -> Result<PathBuf, ScaffoldError> {
    for file in ["Cargo.toml", "plugin.py", "plugin.js"] {
        if dir.join(file).exists() {
            return Err(ScaffoldError::Exists { dir: dir.to_path_buf(), file });
        }
    }
    let script = match lang {
        "rust" => return new_crate(kind, dir),
        "python" | "py" => Script::Python,
        "js" | "javascript" => Script::JavaScript,
        _ => return Err(ScaffoldError::Language { lang: lang.to_string() }),
    };
    let source = match (script, kind) {
        (_, PluginKind::Loss) => return Err(ScaffoldError::ScriptLoss),
        (Script::Python, PluginKind::Reward) => PYTHON_REWARD,
        (Script::Python, PluginKind::DataFilter) => PYTHON_FILTER,
        (Script::Python, PluginKind::Metric) => PYTHON_METRIC,
        (Script::JavaScript, PluginKind::Reward) => JS_REWARD,
        (Script::JavaScript, PluginKind::DataFilter) => JS_FILTER,
        (Script::JavaScript, PluginKind::Metric) => JS_METRIC,
    };
    let file = dir.join(script.entry());
    write_file(&file, source)?;
    Ok(file)
}

/// Write a new plugin crate of `kind` in `dir` and return its `src/lib.rs`.
fn new_crate(kind: PluginKind, dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::Name { dir: dir.to_path_buf(), name });
    }
    let sdk = sdk_dir()?;
    let manifest = format!(
        r#"[package]
name = "{name}"
description = "A triad {kind} plugin."
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]   # cdylib for wasm, rlib for native tests

[dependencies]
triad-plugin-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", default-features = false, features = ["derive", "std"] }}

# A workspace of its own: it builds wherever it is, inside another workspace or not.
[workspace]
"#,
        sdk = sdk.display().to_string(),
    );
    write_file(&dir.join("Cargo.toml"), &manifest)?;
    write_file(&dir.join(".gitignore"), "/target\n/Cargo.lock\n")?;
    let lib = dir.join("src/lib.rs");
    write_file(&lib, &source(kind, &type_name(&name)))?;
    Ok(lib)
}

/// `my-reward` as `MyReward`.
fn type_name(crate_name: &str) -> String {
    crate_name
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The shortest honest Python reward.
const PYTHON_REWARD: &str = r#""""Reward: minus the share of letters written in capitals."""
import triad


@triad.reward
def score(episode: triad.Episode, config: dict) -> float:
    letters = [c for c in episode.response if c.isalpha()]
    capitals = sum(c.isupper() for c in letters)
    return -config.get("weight", 1.0) * capitals / max(len(letters), 1)
"#;

/// The shortest honest Python data filter.
const PYTHON_FILTER: &str = r#""""Data filter: drops texts shorter than `min_chars` characters."""
import triad


@triad.data_filter
def filter(sample: triad.Sample, config: dict):
    if len(sample.text) < config.get("min_chars", 0):
        return triad.drop("too short")
    return triad.KEEP
"#;

/// The shortest honest Python metric.
const PYTHON_METRIC: &str = r#""""Metric: the share of predictions that contain their first reference."""
import triad


@triad.metric
class Contains:
    def statistics(self, record: triad.MetricRecord) -> list[float]:
        return [float(record.references[0] in record.prediction), 1.0]

    def finish(self, totals: list[float]) -> dict[str, float]:
        hits, count = totals
        return {"contains": hits / max(count, 1.0)}
"#;

/// The shortest honest JavaScript reward.
const JS_REWARD: &str = r#"// Reward: minus the share of letters written in capitals.
import { reward } from "triad";

export default reward({
  score(episode, config) {
    const letters = [...episode.response].filter((c) => /\p{L}/u.test(c));
    const capitals = letters.filter((c) => c !== c.toLowerCase()).length;
    return -(config.weight ?? 1) * capitals / Math.max(letters.length, 1);
  },
});
"#;

/// The shortest honest JavaScript data filter.
const JS_FILTER: &str = r#"// Data filter: drops texts shorter than `min_chars` characters.
import { dataFilter } from "triad";

export default dataFilter({
  filter(sample, config) {
    return [...sample.text].length >= (config.min_chars ?? 0) ? true : { drop: "too short" };
  },
});
"#;

/// The shortest honest JavaScript metric.
const JS_METRIC: &str = r#"// Metric: the share of predictions that contain their first reference.
import { metric } from "triad";

export default metric({
  statistics(record) {
    return [record.prediction.includes(record.references[0]) ? 1 : 0, 1];
  },
  finish([hits, count]) {
    return { contains: hits / Math.max(count, 1) };
  },
});
"#;

/// A working plugin of `kind`, the shortest honest one, with a native test.
fn source(kind: PluginKind, ty: &str) -> String {
    match kind {
        PluginKind::Reward => format!(
            r#"//! Reward: minus the share of letters written in capitals.
use triad_plugin_sdk::prelude::*;

/// The experiment's config block for this plugin is read into these fields.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct {ty} {{
    /// Multiplies the penalty.
    pub weight: Option<f64>,
}}

impl Plugin for {ty} {{}}

impl Reward for {ty} {{
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {{
        let letters = episode.response.chars().filter(|c| c.is_alphabetic()).count().max(1);
        let capitals = episode.response.chars().filter(|c| c.is_uppercase()).count();
        Ok(-self.weight.unwrap_or(1.0) * capitals as f64 / letters as f64)
    }}
}}

export_reward!({ty});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn capitals_cost() {{
        let episode = |response: &str| Episode {{ prompt: String::new(), response: response.into(), reference: None }};
        let mut plugin = {ty}::default();
        assert_eq!(plugin.score(&episode("quiet words")).unwrap(), 0.0);
        assert_eq!(plugin.score(&episode("LOUD")).unwrap(), -1.0);
    }}
}}
"#
        ),
        PluginKind::DataFilter => format!(
            r#"//! Data filter: drops texts shorter than `min_chars` characters.
use triad_plugin_sdk::prelude::*;

/// The experiment's config block for this plugin is read into these fields.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct {ty} {{
    /// Shorter texts are dropped.
    pub min_chars: usize,
}}

impl Plugin for {ty} {{}}

impl DataFilter for {ty} {{
    fn filter(&mut self, sample: &Sample) -> Result<Decision, String> {{
        if sample.text.chars().count() < self.min_chars {{
            return Ok(Decision::Drop("too short".into()));
        }}
        Ok(Decision::Keep)
    }}
}}

export_data_filter!({ty});
"#
        ),
        PluginKind::Metric => format!(
            r#"//! Metric: the share of predictions that contain their first reference.
use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct {ty} {{}}

impl Plugin for {ty} {{}}

impl Metric for {ty} {{
    /// Per record: (contained, 1); the host adds them up over the corpus.
    fn statistics(&mut self, record: &MetricRecord) -> Result<Vec<f64>, String> {{
        let reference = record.references.first().ok_or("a record needs a reference")?;
        Ok(vec![f64::from(u8::from(record.prediction.contains(reference.as_str()))), 1.0])
    }}

    fn finish(&mut self, totals: &[f64]) -> Result<Vec<(String, f64)>, String> {{
        match totals {{
            [hits, count] if *count > 0.0 => Ok(vec![("contains".to_string(), hits / count)]),
            _ => Err("no records".into()),
        }}
    }}
}}

export_metric!({ty});
"#
        ),
        PluginKind::Loss => format!(
            r#"//! Loss: the mean negative log-likelihood of the response tokens; only the forward
//! computation is written, the gradient comes from the SDK's autodiff.
use triad_plugin_sdk::autodiff;
use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct {ty} {{}}

impl Plugin for {ty} {{}}

impl Loss for {ty} {{
    fn features(&self) -> Vec<Feature> {{
        vec![Feature::Logprob, Feature::Mask]
    }}

    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {{
        autodiff::compute(batch, |x| {{
            let logprob = x.per_token(Feature::Logprob)?;
            let mask = x.batch().per_token(Feature::Mask)?;
            let tokens = mask.iter().map(|&m| f64::from(m)).sum::<f64>().max(1.0);
            let nll = x.tape().sum(logprob.iter().zip(mask).map(|(&l, &m)| -l * f64::from(m)));
            Ok((nll / tokens, vec![]))
        }})
    }}
}}

export_loss!({ty});
"#
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_become_type_names() {
        assert_eq!(type_name("my-reward_plugin"), "MyRewardPlugin");
        assert_eq!(type_name("x"), "X");
    }
}
