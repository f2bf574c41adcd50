//! Checkpoints: safetensors files with Hugging Face tensor names, written atomically.
//!
//! A model directory holds `model.safetensors` and `config.json`. The config is a Hugging Face
//! config (GPT2LMHeadModel / LlamaForCausalLM keys) with our own [`ModelConfig`] under
//! `triad_config`, so `transformers` can open the directory and we read back exactly what we
//! wrote; a plain Hugging Face directory loads too.
//!
//! Every file is written to a temporary file in the same directory, synced, and renamed over
//! the destination: a crash leaves either the old file or the new one, never half of one. The
//! safetensors writer is our own (the format is an 8-byte header length, a JSON header, then the
//! raw little-endian data) because candle's `save` cannot set the `{"format": "pt"}` metadata
//! that `transformers` requires, and because it streams one tensor at a time instead of
//! building the whole file in memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::{Model, ModelError, WithContext};

/// The weights file in a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The index of a model whose weights are split into shards (`model-00001-of-00002.safetensors`, ...).
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The config file in a model directory.
pub const CONFIG_FILE: &str = "config.json";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}

/// Writes `path` atomically (see [`crate::util::atomic::write_with`]).
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    crate::util::atomic::write_with(path, write, |p, e| io_error(p)(e))
}

fn safetensors_dtype(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::U32 => "U32",
        DType::U8 => "U8",
        DType::I64 => "I64",
        _ => return None,
    })
}

/// The raw little-endian bytes of a tensor (copied to the host if it lives on a GPU).
fn tensor_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U32 => t.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::I64 => t.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => candle_core::bail!("dtype {other:?} cannot be saved"),
    })
}

/// Writes `tensors` as one safetensors file at `path`, atomically, with the
/// `{"format": "pt"}` metadata Hugging Face expects. Supports f32, f64, u32, u8 and i64.
pub fn save_tensors_atomically(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), ModelError> {
    let sorted: BTreeMap<&String, &Tensor> = tensors.iter().collect();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let dtype = safetensors_dtype(t.dtype()).ok_or_else(|| ModelError::Format {
            path: path.to_path_buf(),
            message: format!("tensor `{name}` has dtype {:?}, which is not saved (f32, f64, u32, u8, i64)", t.dtype()),
        })?;
        let len = t.elem_count() * t.dtype().size_in_bytes();
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dtype, "shape": t.dims(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&header).expect("a JSON map always serializes");
    // The format asks for the data to start 8-byte aligned; pad the header with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    write_atomically(path, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_error(path))?;
        out.write_all(&header).map_err(io_error(path))?;
        for (name, t) in &sorted {
            let bytes = tensor_bytes(t).ctx(|| format!("{}: reading tensor `{name}`", path.display()))?;
            out.write_all(&bytes).map_err(io_error(path))?;
        }
        Ok(())
    })
}

/// Reads every tensor of a safetensors file onto `device`.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    candle_core::safetensors::load(path, device).ctx(|| format!("{}: reading safetensors", path.display()))
}

impl Model {
    /// Writes `model.safetensors` (Hugging Face names) and `config.json` into `dir`, creating
    /// it if needed; each file is replaced atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        save_tensors_atomically(&dir.join(WEIGHTS_FILE), &self.weights())?;
        let config_path = dir.join(CONFIG_FILE);
        let json = serde_json::to_vec_pretty(&self.config().to_hf_json()).expect("JSON values always serialize");
        write_atomically(&config_path, |out| out.write_all(&json).map_err(io_error(&config_path)))
    }

    /// Reads a model directory written by [`Model::save`] (or a Hugging Face GPT-2 / Llama
    /// directory with `config.json` and `model.safetensors`, or its shards and their index).
    pub fn load(dir: &Path, device: &Device) -> Result<Model, ModelError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Format { path: config_path.clone(), message: e.to_string() })?;
        let config = ModelConfig::from_hf_json(&json)
            .map_err(|message| ModelError::Format { path: config_path.clone(), message })?;
        let weights = match shard_files(dir) {
            Some(shards) if !dir.join(WEIGHTS_FILE).is_file() => {
                let mut weights = HashMap::new();
                for shard in shards {
                    weights.extend(load_tensors(&shard, device)?);
                }
                weights
            }
            _ => load_tensors(&dir.join(WEIGHTS_FILE), device)?,
        };
        Model::from_weights(&config, weights, device)
    }
}

/// The shard files a `model.safetensors.index.json` in `dir` names, each once; `None` without
/// a readable index.
pub fn shard_files(dir: &Path) -> Option<Vec<std::path::PathBuf>> {
    let text = std::fs::read_to_string(dir.join(WEIGHTS_INDEX_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let files: std::collections::BTreeSet<&str> =
        json.get("weight_map")?.as_object()?.values().filter_map(|v| v.as_str()).collect();
    Some(files.into_iter().map(|f| dir.join(f)).collect())
}
