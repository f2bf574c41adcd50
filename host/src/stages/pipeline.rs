//! Runs an experiment's stages in order, each in its own folder under the run folder, skipping
//! a stage whose output already exists for the same key.
//!
//! A stage's key hashes everything its output depends on: its own config, the model and
//! tokenizer specs, the seed, the data it reads (by sha256), the plugins it uses, and the key of
//! the stage before it. Same key, completed: the stage is skipped. Same key, not completed: the
//! stage resumes from its last checkpoint. Another key: the folder is cleared and the stage
//! trains afresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::context::{RunContext, StageError};
use super::pretrain;
use crate::experiment::{Experiment, Stage};
use crate::runs::atomic::{FileError, write_atomically};

/// What `stage.json` records about a stage's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub complete: bool,
    /// Final metrics (`eval/loss`, ...).
    pub metrics: BTreeMap<String, f64>,
}

/// How one stage went in this invocation.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub stage: String,
    /// True when the output was already there and nothing was trained.
    pub cached: bool,
    /// Steps resumed from, when training continued an interrupted run.
    pub resumed_from: u64,
    pub metrics: BTreeMap<String, f64>,
    pub dir: PathBuf,
}

/// Run every stage of `experiment` (read from `experiment_path`) under `runs_root`.
pub fn run_experiment(experiment: &Experiment, experiment_path: &Path, runs_root: &Path) -> Result<Vec<StageOutcome>, StageError> {
    let base_dir = experiment_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let run_dir = runs_root.join(&experiment.name).join(format!("seed{}", experiment.seed));
    let ctx = RunContext::new(experiment, &base_dir, &run_dir)?;
    let pretty = ron::ser::PrettyConfig::default()
        .extensions(ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES | ron::extensions::Extensions::IMPLICIT_SOME);
    let resolved = crate::experiment::load::ron_options().to_string_pretty(experiment, pretty).unwrap_or_default();
    write_atomically(&run_dir.join("experiment.ron"), resolved.as_bytes())?;

    let mut outcomes = Vec::new();
    let mut previous_key = String::new();
    for stage in &experiment.stages {
        let name = stage.name().to_string();
        let dir = run_dir.join(&name);
        let key = stage_key(&ctx, stage, &previous_key)?;
        let record_path = dir.join("stage.json");
        let existing: Option<StageRecord> = std::fs::read(&record_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match &existing {
            Some(record) if record.key == key && record.complete => {
                tracing::info!(stage = name, "cached: output exists for this key, nothing to train");
                outcomes.push(StageOutcome { stage: name, cached: true, resumed_from: 0, metrics: record.metrics.clone(), dir });
                previous_key = key;
                continue;
            }
            Some(record) if record.key != key => {
                tracing::info!(stage = name, "config changed since the last run: training afresh");
                std::fs::remove_dir_all(&dir).map_err(|e| FileError::new(&dir, e))?;
            }
            _ => {}
        }
        write_record(&record_path, &StageRecord { key: key.clone(), complete: false, metrics: BTreeMap::new() })?;
        let (metrics, resumed_from) = match stage {
            Stage::Pretrain(config) => {
                let (_model, summary) = pretrain::run(&ctx, config, &dir)?;
                let mut metrics: BTreeMap<String, f64> =
                    summary.final_eval.iter().map(|(n, v)| (format!("eval/{n}"), *v)).collect();
                metrics.insert("train/loss".into(), summary.final_train_loss);
                write_report(&dir, &name, &metrics, summary.seconds)?;
                (metrics, summary.resumed_from)
            }
        };
        write_record(&record_path, &StageRecord { key: key.clone(), complete: true, metrics: metrics.clone() })?;
        outcomes.push(StageOutcome { stage: name, cached: false, resumed_from, metrics, dir });
        previous_key = key;
    }
    Ok(outcomes)
}

fn write_record(path: &Path, record: &StageRecord) -> Result<(), FileError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| FileError::new(path, e))?;
    write_atomically(path, &json)
}

fn write_report(dir: &Path, stage: &str, metrics: &BTreeMap<String, f64>, seconds: f64) -> Result<(), FileError> {
    let mut report = format!("# Stage `{stage}`\n\n| metric | value |\n|---|---|\n");
    for (name, value) in metrics {
        report.push_str(&format!("| {name} | {value:.4} |\n"));
    }
    report.push_str(&format!("\nTrained in {seconds:.1} s.\n"));
    write_atomically(&dir.join("report.md"), report.as_bytes())
}

/// The hash of everything a stage's output depends on.
fn stage_key(ctx: &RunContext, stage: &Stage, previous: &str) -> Result<String, StageError> {
    let experiment = ctx.experiment;
    let mut hasher = Sha256::new();
    let mut feed = |label: &str, value: String| {
        hasher.update(label.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    };
    feed("previous", previous.to_string());
    feed("stage", serde_json::to_string(stage).unwrap_or_default());
    feed("model", serde_json::to_string(&experiment.model).unwrap_or_default());
    feed("tokenizer", serde_json::to_string(&experiment.tokenizer).unwrap_or_default());
    feed("seed", experiment.seed.to_string());
    let Stage::Pretrain(config) = stage;
    feed("data", ctx.source(&config.data)?.sha256.clone());
    if let Some(corpus) = experiment.tokenizer.corpus() {
        feed("tokenizer-data", ctx.source(corpus)?.sha256.clone());
    }
    for filter in &config.filters {
        feed("plugin", serde_json::to_string(&experiment.plugins.get(filter)).unwrap_or_default());
    }
    Ok(hasher.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect())
}

/// The plan, one line per stage, as `triad validate` prints it.
pub fn describe(experiment: &Experiment) -> String {
    let mut lines = vec![format!("experiment `{}` (seed {})", experiment.name, experiment.seed)];
    for (i, stage) in experiment.stages.iter().enumerate() {
        match stage {
            Stage::Pretrain(p) => lines.push(format!(
                "  {}. pretrain `{}` on `{}`: {} steps x batch {} (lr {})",
                i + 1,
                p.name,
                p.data,
                p.steps,
                p.batch,
                p.lr
            )),
        }
    }
    lines.join("\n")
}
