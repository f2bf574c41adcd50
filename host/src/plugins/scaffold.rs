//! `triad plugin new`: a Rust plugin crate that builds anywhere on the machine.
//!
//! A crate outside this repository cannot inherit its workspace or name the SDK by a relative
//! path, so the SDK's sources travel inside the `triad` binary and are written once into
//! triad's cache (`plugin-sdk/<hash of the sources>/`, as a standalone crate); a new plugin
//! names that folder, pins its own dependencies and is a workspace of its own. Plugins outside
//! the repository then build in one shared folder in the cache (see `build`), so the SDK's
//! dependencies compile once for all of them.

use std::path::{Path, PathBuf};

use super::bindings::PluginKind;
use crate::util::atomic::{FileError, write_atomically};

/// The SDK's files, as the binary was built with them: (path in the crate, contents).
const SDK_FILES: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../plugin-sdk/src/lib.rs")),
    ("src/autodiff.rs", include_str!("../../../plugin-sdk/src/autodiff.rs")),
    ("src/glue.rs", include_str!("../../../plugin-sdk/src/glue.rs")),
    ("src/hash.rs", include_str!("../../../plugin-sdk/src/hash.rs")),
    ("src/log.rs", include_str!("../../../plugin-sdk/src/log.rs")),
    ("src/loss_helpers.rs", include_str!("../../../plugin-sdk/src/loss_helpers.rs")),
    ("src/testing.rs", include_str!("../../../plugin-sdk/src/testing.rs")),
    ("wit/plugin.wit", include_str!("../../../plugin-sdk/wit/plugin.wit")),
    ("testdata/review-snippets.tsv", include_str!("../../../plugin-sdk/testdata/review-snippets.tsv")),
];

/// The SDK's manifest outside the workspace: the workspace's settings written out.
const SDK_MANIFEST: &str = r#"[package]
name = "triad-plugin-sdk"
description = "Write triad plugins as WebAssembly components in a few lines (written by triad)."
version = "0.1.0"
edition = "2024"
license = "MIT OR Apache-2.0"
publish = false

[dependencies]
wit-bindgen = { version = "0.60", default-features = false, features = ["macros", "realloc"] }
serde = { version = "1", default-features = false, features = ["derive", "std"] }
serde_json = { version = "1", default-features = false, features = ["std", "float_roundtrip"] }
"#;

/// Why a plugin could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("{dir} already holds a Cargo.toml: choose a new folder")]
    Exists { dir: PathBuf },
    #[error("{dir}: `{name}` cannot name a crate: use letters, digits, `-` and `_`, starting with a letter")]
    Name { dir: PathBuf, name: String },
    #[error("--lang {lang}: only `rust` plugins exist so far")]
    Language { lang: String },
}

/// The SDK as a standalone crate in triad's cache, written on first use; its folder.
pub fn sdk_dir() -> Result<PathBuf, ScaffoldError> {
    let mut all = String::from(SDK_MANIFEST);
    for (path, text) in SDK_FILES {
        all.push_str(path);
        all.push_str(text);
    }
    let hash = crate::util::sha256_hex(all.as_bytes());
    let dir = crate::util::packages::cache_dir().join("plugin-sdk").join(&hash[..16]);
    if !dir.join("Cargo.toml").is_file() {
        for (path, text) in SDK_FILES {
            write_file(&dir.join(path), text)?;
        }
        // The manifest last: its presence says the copy is whole.
        write_file(&dir.join("Cargo.toml"), SDK_MANIFEST)?;
    }
    Ok(dir)
}

/// Write a new plugin crate of `kind` in `dir` (created), in `lang` (only `rust`).
pub fn new_plugin(kind: PluginKind, lang: &str, dir: &Path) -> Result<(), ScaffoldError> {
    if lang != "rust" {
        return Err(ScaffoldError::Language { lang: lang.to_string() });
    }
    if dir.join("Cargo.toml").exists() {
        return Err(ScaffoldError::Exists { dir: dir.to_path_buf() });
    }
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
    write_file(&dir.join("src/lib.rs"), &source(kind, &type_name(&name)))?;
    write_file(&dir.join(".gitignore"), "/target\n/Cargo.lock\n")?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), FileError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| FileError::new(parent, e))?;
    }
    write_atomically(path, text.as_bytes())
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

    /// Every file of the SDK's source folder travels in the binary (a new file must be added to
    /// `SDK_FILES`, or plugins outside the repository would not build).
    #[test]
    fn the_binary_carries_every_sdk_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
        let mut on_disk = Vec::new();
        for folder in ["src", "wit", "testdata"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap().flatten() {
                on_disk.push(format!("{folder}/{}", entry.file_name().to_string_lossy()));
            }
        }
        on_disk.sort();
        let mut carried: Vec<String> = SDK_FILES.iter().map(|(path, _)| path.to_string()).collect();
        carried.sort();
        assert_eq!(carried, on_disk);
    }

    #[test]
    fn crate_names_become_type_names() {
        assert_eq!(type_name("my-reward_plugin"), "MyRewardPlugin");
        assert_eq!(type_name("x"), "X");
    }
}
