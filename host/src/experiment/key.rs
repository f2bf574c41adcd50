//! Cache keys: the hash of everything a stage's output depends on.
//!
//! A stage's key hashes its own config (as its kind serialises it: a stage module keeps a new
//! optional setting out of the key while it is unset, so older outputs stay valid), the model
//! and tokenizer specs (and the bytes of a pretrained model read from local files), the seed, the data it reads (by sha256), the plugins it runs (their
//! declarations and the sha256 of their wasm), and the keys of the stages it reads.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::schema::{Experiment, StageSpec};

/// What a key needs that only a run can find out: the sha256 of a data source's bytes and of a
/// plugin's wasm.
pub trait ContentHashes {
    type Error;
    fn data_sha256(&self, name: &str) -> Result<String, Self::Error>;
    fn plugin_sha256(&self, name: &str) -> Result<String, Self::Error>;
    /// The sha256 of the experiment's model files when they are local files (a Hugging Face
    /// folder or a GGUF path), whose content a name does not pin; `None` otherwise.
    fn model_sha256(&self) -> Result<Option<String>, Self::Error>;
}

/// The key of `stage` in `experiment`, given the keys of the stages it reads.
pub fn stage_key<S: StageSpec, H: ContentHashes>(
    experiment: &Experiment<S>,
    stage: &S,
    input_keys: &BTreeMap<String, String>,
    hashes: &H,
) -> Result<String, H::Error> {
    let mut hasher = Sha256::new();
    let mut feed = |label: &str, value: &str| {
        hasher.update(label.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    };
    for input in stage.inputs() {
        feed("input", input_keys.get(input).map(String::as_str).unwrap_or(""));
    }
    feed("stage", &serde_json::to_string(stage).unwrap_or_default());
    feed("model", &serde_json::to_string(&experiment.model).unwrap_or_default());
    if let Some(sha256) = hashes.model_sha256()? {
        feed("model-sha256", &sha256);
    }
    feed("tokenizer", &serde_json::to_string(&experiment.tokenizer).unwrap_or_default());
    feed("seed", &experiment.seed.to_string());
    for data in stage.data() {
        feed("data", &hashes.data_sha256(data)?);
    }
    if let Some(corpus) = experiment.tokenizer.as_ref().and_then(|t| t.corpus()) {
        feed("tokenizer-data", &hashes.data_sha256(corpus)?);
    }
    for plugin in stage.plugins() {
        feed("plugin", &serde_json::to_string(&experiment.plugins.get(plugin)).unwrap_or_default());
        feed("plugin-sha256", &hashes.plugin_sha256(plugin)?);
    }
    Ok(hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}
