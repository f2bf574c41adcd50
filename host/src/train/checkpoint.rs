//! Training checkpoints: weights, optimizer moments and the step, every N steps.
//!
//! Layout inside a stage's folder:
//! ```text
//! checkpoints/step-000500/{weights.safetensors, optimizer.safetensors, state.json}
//! checkpoints/latest.json      {"step": 500}
//! ```
//! A checkpoint folder is written under a temporary name and renamed when complete; `latest.json`
//! is replaced atomically afterwards. A crash at any point leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::optimizer::AdamW;
use crate::model::checkpoint::{load_tensors as load_model_tensors, save_tensors_atomically};
use crate::util::atomic::{FileError, write_atomically};

/// What `state.json` holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed; training resumes at this step.
    pub step: u64,
    /// A hash of the training config: a checkpoint of another config is not resumed.
    pub config_key: String,
    /// Optimizer steps taken (AdamW's bias-correction `t`): more than `step` when a step makes
    /// several updates (PPO's epochs of minibatches). Absent in older checkpoints: `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_steps: Option<u64>,
    /// The rest of a stage's state its next step depends on (PPO's KL coefficient and reward
    /// statistics), as the stage wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Latest {
    step: u64,
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), FileError> {
    save_tensors_atomically(path, tensors).map_err(|e| FileError::new(path, e))
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, FileError> {
    load_model_tensors(path, device).map_err(|e| FileError::new(path, e))
}

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:06}"))
}

/// Save a checkpoint after `state.step` steps, then drop all but the newest `keep`.
/// The optimizer's step count is recorded in `state.json` whatever `state` says.
pub fn save(
    root: &Path,
    vars: &[(String, Var)],
    optimizer: &AdamW,
    state: &TrainState,
    keep: usize,
) -> Result<(), FileError> {
    let state = &TrainState { optimizer_steps: Some(optimizer.steps), ..state.clone() };
    let final_dir = step_dir(root, state.step);
    let tmp_dir = root.join(format!("step-{:06}.tmp", state.step));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir).map_err(|e| FileError::new(&tmp_dir, e))?;
    }
    let weights: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    save_tensors(&tmp_dir.join("weights.safetensors"), &weights)?;
    save_tensors(&tmp_dir.join("optimizer.safetensors"), &optimizer.state())?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| FileError::new(&tmp_dir, e))?;
    write_atomically(&tmp_dir.join("state.json"), &json)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| FileError::new(&final_dir, e))?;
    }
    std::fs::rename(&tmp_dir, &final_dir).map_err(|e| FileError::new(&final_dir, e))?;
    let latest = serde_json::to_vec(&Latest { step: state.step }).map_err(|e| FileError::new(root, e))?;
    write_atomically(&root.join("latest.json"), &latest)?;
    prune(root, keep)
}

fn prune(root: &Path, keep: usize) -> Result<(), FileError> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| FileError::new(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    for old in &steps[..excess] {
        std::fs::remove_dir_all(old).map_err(|e| FileError::new(old, e))?;
    }
    Ok(())
}

/// Restore the newest checkpoint into `vars` and `optimizer`, if there is one for this config.
/// Returns its state (`step` is where to resume).
pub fn restore(
    root: &Path,
    vars: &[(String, Var)],
    optimizer: &mut AdamW,
    config_key: &str,
    device: &Device,
) -> Result<Option<TrainState>, FileError> {
    let latest_path = root.join("latest.json");
    let Ok(bytes) = std::fs::read(&latest_path) else { return Ok(None) };
    let latest: Latest = serde_json::from_slice(&bytes).map_err(|e| FileError::new(&latest_path, e))?;
    let dir = step_dir(root, latest.step);
    let state_path = dir.join("state.json");
    let state_bytes = std::fs::read(&state_path).map_err(|e| FileError::new(&state_path, e))?;
    let state: TrainState = serde_json::from_slice(&state_bytes).map_err(|e| FileError::new(&state_path, e))?;
    if state.config_key != config_key {
        tracing::warn!(checkpoint = %dir.display(), "checkpoint is of another training config: starting afresh");
        return Ok(None);
    }
    let weights_path = dir.join("weights.safetensors");
    let weights = load_tensors(&weights_path, device)?;
    for (name, var) in vars {
        let saved = weights.get(name).ok_or_else(|| FileError::new(&weights_path, format!("no tensor `{name}`")))?;
        var.set(saved).map_err(|e| FileError::new(&weights_path, format!("`{name}`: {e}")))?;
    }
    let optimizer_path = dir.join("optimizer.safetensors");
    let moments = load_tensors(&optimizer_path, device)?;
    let optimizer_steps = state.optimizer_steps.unwrap_or(state.step);
    optimizer.load_state(&moments, optimizer_steps).map_err(|e| FileError::new(&optimizer_path, e))?;
    Ok(Some(state))
}
