//! Runs an experiment: every sweep point and seed as one run, each run's stages in dependency
//! order, every stage's output cached under a key.
//!
//! A stage's key hashes everything its output depends on: its own config, the model and
//! tokenizer specs, the seed, the data it reads (by sha256), the plugins it runs (by sha256),
//! and the keys of the stages it reads. Outputs live in `runs/<experiment>/stages/<stage>-<key>/`
//! and each run folder links to the ones it uses (`runs/<experiment>/<run>/<stage>`), so sweep
//! points that share a stage (the same pretraining under two PPO settings) compute it once, and
//! going back to an earlier setting finds its outputs still there.
//!
//! Same key, completed: the stage is skipped. Same key, not completed: it resumes from its last
//! checkpoint. `--force <stage>` clears the stage's output and trains it again, and with it
//! everything downstream (their keys do not change, so they are forced too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::context::{RunContext, StageError};
use super::{eval, ppo, pretrain, reward_model, sft};
use crate::experiment::sweep::{RunPoint, expand};
use crate::experiment::{Experiment, Stage};
use crate::runs::atomic::{FileError, write_atomically};
use crate::runs::metrics::read_rows;
use crate::train::TrainSummary;

/// What `stage.json` records about a stage's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub complete: bool,
    /// Final metrics (`eval/loss`, ...).
    pub metrics: BTreeMap<String, f64>,
}

/// What a stage will do (or did) in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    /// Its output exists for its key: nothing to train.
    Cached,
    /// Interrupted earlier with the same key: it continues from its last checkpoint.
    Resume,
    /// Nothing usable exists (or `--force`): it trains from the start.
    Train,
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

/// One run of an experiment (a sweep point with one seed).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run's folder name: `seed7`, or `ppo.kl.target=3-seed7` in a sweep.
    pub run: String,
    pub dir: PathBuf,
    pub stages: Vec<StageOutcome>,
}

/// Options of `triad run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where run folders go (`runs/` by default).
    pub runs_root: PathBuf,
    /// Stages to train again even if their output exists.
    pub force: Vec<String>,
}

/// The stages in an order where every stage comes after the stages it reads. Fails on a
/// reference to a stage that does not exist, and on a cycle, naming the stages involved.
pub fn stage_order(experiment: &Experiment) -> Result<Vec<&Stage>, String> {
    let by_name: BTreeMap<&str, &Stage> = experiment.stages.iter().map(|s| (s.name(), s)).collect();
    for stage in &experiment.stages {
        for input in stage.inputs() {
            if !by_name.contains_key(input) {
                let known: Vec<&str> = by_name.keys().copied().collect();
                let hint = crate::experiment::load::nearest(input, known.iter().copied())
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                return Err(format!(
                    "stage `{}` reads stage `{input}`, which does not exist ({hint}stages: {})",
                    stage.name(),
                    known.join(", ")
                ));
            }
        }
    }
    // Depth-first, in file order, so that independent stages keep the order they are written in.
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    fn visit<'a>(
        stage: &'a Stage,
        by_name: &BTreeMap<&str, &'a Stage>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a Stage>,
    ) -> Result<(), String> {
        if done.contains(stage.name()) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|n| *n == stage.name()) {
            let mut cycle: Vec<String> = path[start..].iter().map(|n| format!("`{n}`")).collect();
            cycle.push(format!("`{}`", stage.name()));
            return Err(format!(
                "the stages form a cycle: {} (each reads the next's output): make one of them start from an earlier stage",
                cycle.join(" -> ")
            ));
        }
        path.push(stage.name());
        for input in stage.inputs() {
            visit(by_name[input], by_name, path, done, order)?;
        }
        path.pop();
        done.insert(stage.name());
        order.push(stage);
        Ok(())
    }
    for stage in &experiment.stages {
        visit(stage, &by_name, &mut Vec::new(), &mut done, &mut order)?;
    }
    Ok(order)
}

/// Checks that need the plugins themselves, made before anything trains: every plugin a stage
/// names builds, loads, and is of the kind its slot needs (a filter where filters go, a reward
/// plugin as a reward or a judge, ...).
pub fn preflight(experiment: &Experiment, experiment_path: &Path) -> Result<(), StageError> {
    let base_dir = experiment_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let sandbox = crate::plugins::Sandbox::shared();
    let mut kinds = BTreeMap::new();
    for stage in &experiment.stages {
        for (plugin, wanted) in stage.plugin_slots() {
            let decl = experiment.plugins.get(plugin).ok_or_else(|| {
                StageError::Undeclared(format!("stage `{}` uses plugin `{plugin}`, which is not declared in `plugins`", stage.name()))
            })?;
            if !kinds.contains_key(plugin) {
                let (info, _) = crate::plugins::Plugin::inspect(&sandbox, &base_dir.join(&decl.path))?;
                kinds.insert(plugin, info.kind);
            }
            let kind = kinds[plugin];
            if kind != wanted {
                return Err(StageError::Config {
                    stage: stage.name().to_string(),
                    message: format!(
                        "plugin `{plugin}` is a {} plugin, but it is used where a {} plugin goes",
                        kind_name(kind),
                        kind_name(wanted)
                    ),
                });
            }
        }
    }
    Ok(())
}

fn kind_name(kind: crate::plugins::PluginKind) -> &'static str {
    use crate::plugins::PluginKind;
    match kind {
        PluginKind::DataFilter => "data-filter",
        PluginKind::Reward => "reward",
        PluginKind::Loss => "loss",
        PluginKind::Metric => "metric",
    }
}

/// Run every point of `experiment` (read from `experiment_path`).
pub fn run_experiment(experiment: &Experiment, experiment_path: &Path, options: &RunOptions) -> Result<Vec<RunOutcome>, StageError> {
    preflight(experiment, experiment_path)?;
    let points = expand(experiment).map_err(StageError::Undeclared)?;
    let mut outcomes = Vec::new();
    for point in &points {
        if points.len() > 1 {
            tracing::info!(run = point.run, "run {} of {}", outcomes.len() + 1, points.len());
        }
        outcomes.push(run_point(point, experiment_path, options)?);
    }
    Ok(outcomes)
}

/// The plan of every run: each stage in order with what it would do now.
pub fn plan(experiment: &Experiment, experiment_path: &Path, options: &RunOptions) -> Result<Vec<(String, Vec<(String, StageStatus)>)>, StageError> {
    preflight(experiment, experiment_path)?;
    let mut plans = Vec::new();
    for point in expand(experiment).map_err(StageError::Undeclared)? {
        let paths = RunPaths::new(&point, experiment_path, options);
        let ctx = RunContext::new(&point.experiment, &paths.base_dir, &paths.run_dir)?;
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        let mut stages = Vec::new();
        let mut forced: BTreeSet<String> = options.force.iter().cloned().collect();
        for stage in stage_order(&point.experiment).map_err(StageError::Undeclared)? {
            let key = stage_key(&ctx, stage, &keys)?;
            if stage.inputs().iter().any(|i| forced.contains(*i)) {
                forced.insert(stage.name().to_string());
            }
            let status = if forced.contains(stage.name()) {
                StageStatus::Train
            } else {
                status_of(&paths.store(stage.name(), &key))
            };
            keys.insert(stage.name().to_string(), key);
            stages.push((stage.name().to_string(), status));
        }
        plans.push((point.run.clone(), stages));
    }
    Ok(plans)
}

/// Where one run's files go.
struct RunPaths {
    base_dir: PathBuf,
    experiment_dir: PathBuf,
    run_dir: PathBuf,
}

impl RunPaths {
    fn new(point: &RunPoint, experiment_path: &Path, options: &RunOptions) -> Self {
        let base_dir = experiment_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let experiment_dir = options.runs_root.join(&point.experiment.name);
        let run_dir = experiment_dir.join(&point.run);
        RunPaths { base_dir, experiment_dir, run_dir }
    }

    /// The shared folder holding a stage's output for a key.
    fn store(&self, stage: &str, key: &str) -> PathBuf {
        self.experiment_dir.join("stages").join(format!("{stage}-{key}"))
    }
}

fn read_record(dir: &Path) -> Option<StageRecord> {
    std::fs::read(dir.join("stage.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn status_of(store: &Path) -> StageStatus {
    match read_record(store) {
        Some(record) if record.complete => StageStatus::Cached,
        Some(_) => StageStatus::Resume,
        None => StageStatus::Train,
    }
}

fn run_point(point: &RunPoint, experiment_path: &Path, options: &RunOptions) -> Result<RunOutcome, StageError> {
    let experiment = &point.experiment;
    let paths = RunPaths::new(point, experiment_path, options);
    std::fs::create_dir_all(&paths.run_dir).map_err(|e| FileError::new(&paths.run_dir, e))?;
    let ctx = RunContext::new(experiment, &paths.base_dir, &paths.run_dir)?;
    let pretty = ron::ser::PrettyConfig::default();
    let resolved = crate::experiment::load::ron_options().to_string_pretty(experiment, pretty).unwrap_or_default();
    write_atomically(&paths.run_dir.join("experiment.ron"), resolved.as_bytes())?;

    let order = stage_order(experiment).map_err(StageError::Undeclared)?;
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut forced: BTreeSet<String> = options.force.iter().cloned().collect();
    let mut outcomes = Vec::new();
    for stage in order {
        let name = stage.name().to_string();
        let key = stage_key(&ctx, stage, &keys)?;
        keys.insert(name.clone(), key.clone());
        if stage.inputs().iter().any(|i| forced.contains(*i)) {
            forced.insert(name.clone());
        }
        let store = paths.store(&name, &key);
        link_stage(&paths.run_dir.join(&name), &store)?;
        let dir = paths.run_dir.join(&name);
        if forced.contains(&name) && store.exists() {
            tracing::info!(stage = name, "--force: clearing the stage's output");
            std::fs::remove_dir_all(&store).map_err(|e| FileError::new(&store, e))?;
        }
        std::fs::create_dir_all(&store).map_err(|e| FileError::new(&store, e))?;
        if let Some(record) = read_record(&store).filter(|r| r.complete) {
            tracing::info!(stage = name, "cached: output exists for this key, nothing to train");
            outcomes.push(StageOutcome { stage: name, cached: true, resumed_from: 0, metrics: record.metrics, dir });
            continue;
        }
        write_record(&store, &StageRecord { key: key.clone(), complete: false, metrics: BTreeMap::new() })?;
        let (metrics, resumed_from) = run_stage(&ctx, stage, &dir)?;
        let jsonl = store.join("metrics.jsonl");
        if jsonl.is_file() {
            crate::runs::table::write_metrics_parquet(&jsonl, &store.join("metrics.parquet"))
                .map_err(|e| StageError::Data { stage: name.clone(), message: format!("writing metrics.parquet: {e}") })?;
        }
        write_record(&store, &StageRecord { key: key.clone(), complete: true, metrics: metrics.clone() })?;
        outcomes.push(StageOutcome { stage: name, cached: false, resumed_from, metrics, dir });
    }
    write_manifest(&ctx, point, &paths.run_dir, &keys)?;
    Ok(RunOutcome { run: point.run.clone(), dir: paths.run_dir, stages: outcomes })
}

/// Run one stage into `dir`; its final metrics and the step it resumed from.
fn run_stage(ctx: &RunContext, stage: &Stage, dir: &Path) -> Result<(BTreeMap<String, f64>, u64), StageError> {
    let trained = |summary: TrainSummary| (training_metrics(&summary), summary.resumed_from, summary.seconds);
    let (metrics, resumed_from, seconds) = match stage {
        Stage::Pretrain(config) => trained(pretrain::run(ctx, config, dir)?.1),
        Stage::Sft(config) => trained(sft::run(ctx, config, dir)?.1),
        Stage::RewardModel(config) => trained(reward_model::run(ctx, config, dir)?.1),
        Stage::Ppo(config) => ppo::run(ctx, config, dir)?,
        Stage::Eval(config) => {
            // The evaluation writes its own, fuller report.
            let (metrics, _) = eval::run(ctx, config, dir)?;
            return Ok((metrics, 0));
        }
    };
    write_report(dir, stage.name(), &metrics, seconds)?;
    Ok((metrics, resumed_from))
}

fn training_metrics(summary: &TrainSummary) -> BTreeMap<String, f64> {
    let mut metrics: BTreeMap<String, f64> = summary.final_eval.iter().map(|(n, v)| (format!("eval/{n}"), *v)).collect();
    metrics.insert("train/loss".into(), summary.final_train_loss);
    metrics
}

/// Point `link` (the run's view of a stage) at the stage's shared output folder.
fn link_stage(link: &Path, store: &Path) -> Result<(), FileError> {
    let target = Path::new("..").join("stages").join(store.file_name().unwrap_or_default());
    if let Ok(existing) = std::fs::read_link(link) {
        if existing == target {
            return Ok(());
        }
        std::fs::remove_file(link).map_err(|e| FileError::new(link, e))?;
    } else if link.is_dir() {
        // A stage folder from before outputs were shared.
        std::fs::remove_dir_all(link).map_err(|e| FileError::new(link, e))?;
    }
    symlink_dir(&target, link).map_err(|e| FileError::new(link, e))
}

#[cfg(unix)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

fn write_record(dir: &Path, record: &StageRecord) -> Result<(), FileError> {
    let path = dir.join("stage.json");
    let json = serde_json::to_vec_pretty(record).map_err(|e| FileError::new(&path, e))?;
    write_atomically(&path, &json)
}

fn write_report(dir: &Path, stage: &str, metrics: &BTreeMap<String, f64>, seconds: f64) -> Result<(), FileError> {
    // Training evaluates before its first step: each held-out figure is shown beside where it
    // started, which is the improvement a reader looks for.
    let at_start: BTreeMap<String, f64> =
        read_rows(&dir.join("metrics.jsonl"))?.into_iter().filter(|row| row.step == 0).map(|row| (row.metric, row.value)).collect();
    let mut report = format!("# Stage `{stage}`\n\n| metric | at step 0 | at the end |\n|---|---|---|\n");
    for (name, value) in metrics {
        let start = at_start.get(name).map(|v| format!("{v:.4}")).unwrap_or_default();
        report.push_str(&format!("| {name} | {start} | {value:.4} |\n"));
    }
    report.push_str(&format!("\nTrained in {seconds:.1} s.\n"));
    write_atomically(&dir.join("report.md"), report.as_bytes())
}

/// What a run was made from: enough to reproduce it and to group it in comparisons.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub experiment: String,
    pub run: String,
    pub seed: u64,
    /// The sweep point's settings, seed excluded (empty without a sweep).
    pub sweep: BTreeMap<String, serde_json::Value>,
    pub triad_version: String,
    pub git_revision: Option<String>,
    pub device: String,
    /// Data sources read, by sha256.
    pub data: BTreeMap<String, String>,
    /// Plugins run, by the sha256 of their wasm.
    pub plugins: BTreeMap<String, String>,
    /// Stage names in the order they ran.
    pub stages: Vec<String>,
    /// Each stage's output key.
    pub keys: BTreeMap<String, String>,
}

fn write_manifest(ctx: &RunContext, point: &RunPoint, run_dir: &Path, keys: &BTreeMap<String, String>) -> Result<(), StageError> {
    let experiment = ctx.experiment;
    let order = stage_order(experiment).map_err(StageError::Undeclared)?;
    let mut data = BTreeMap::new();
    let mut plugins = BTreeMap::new();
    for stage in &order {
        for name in stage.data() {
            data.insert(name.to_string(), ctx.source(name)?.sha256.clone());
        }
        for name in stage.plugins() {
            plugins.insert(name.to_string(), ctx.plugin_sha256(name)?);
        }
    }
    if let Some(corpus) = experiment.tokenizer.as_ref().and_then(|t| t.corpus()) {
        data.insert(corpus.to_string(), ctx.source(corpus)?.sha256.clone());
    }
    let manifest = Manifest {
        experiment: experiment.name.clone(),
        run: point.run.clone(),
        seed: experiment.seed,
        sweep: point.settings.clone(),
        triad_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: git_revision(&ctx.base_dir),
        device: format!("{:?}", experiment.device),
        data,
        plugins,
        stages: order.iter().map(|s| s.name().to_string()).collect(),
        keys: keys.clone(),
    };
    let path = run_dir.join("manifest.json");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| FileError::new(&path, e))?;
    write_atomically(&path, &json)?;
    Ok(())
}

/// The git revision of the checkout holding the experiment, if it is one (`-dirty` when it
/// has uncommitted changes).
fn git_revision(dir: &Path) -> Option<String> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let run = |args: &[&str]| std::process::Command::new("git").args(args).current_dir(dir).output().ok().filter(|o| o.status.success());
    let head = String::from_utf8(run(&["rev-parse", "HEAD"])?.stdout).ok()?.trim().to_string();
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// The hash of everything a stage's output depends on.
fn stage_key(ctx: &RunContext, stage: &Stage, input_keys: &BTreeMap<String, String>) -> Result<String, StageError> {
    let experiment = ctx.experiment;
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
    feed("tokenizer", &serde_json::to_string(&experiment.tokenizer).unwrap_or_default());
    feed("seed", &experiment.seed.to_string());
    for data in stage.data() {
        feed("data", &ctx.source(data)?.sha256);
    }
    if let Some(corpus) = experiment.tokenizer.as_ref().and_then(|t| t.corpus()) {
        feed("tokenizer-data", &ctx.source(corpus)?.sha256);
    }
    for plugin in stage.plugins() {
        feed("plugin", &serde_json::to_string(&experiment.plugins.get(plugin)).unwrap_or_default());
        feed("plugin-sha256", &ctx.plugin_sha256(plugin)?);
    }
    Ok(hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The plan, one line per stage, as `triad validate` prints it.
pub fn describe(experiment: &Experiment) -> String {
    let mut lines = vec![format!("experiment `{}` (seed {})", experiment.name, experiment.seed)];
    let order = stage_order(experiment).unwrap_or_else(|_| experiment.stages.iter().collect());
    for (i, stage) in order.iter().enumerate() {
        let detail = match stage {
            Stage::Pretrain(p) => format!("on `{}`", p.data),
            Stage::Sft(s) => format!(
                "from `{}` on `{}`",
                s.from.as_deref().unwrap_or("the experiment's model"),
                s.examples.data
            ),
            Stage::RewardModel(r) => format!(
                "from `{}` on `{}`",
                r.from.as_deref().unwrap_or("the experiment's model"),
                r.data
            ),
            Stage::Ppo(p) => format!(
                "policy `{}` on prompts of `{}`: {} iterations x {} rollouts",
                p.policy, p.prompts.data, p.train.steps, p.train.rollouts
            ),
            Stage::Eval(e) => format!("of {} on held-out prompts of `{}`", e.models.join(", "), e.prompts_of),
        };
        let train = stage
            .train()
            .map(|t| format!(": {} steps x batch {} (lr {})", t.steps, t.batch, t.lr))
            .unwrap_or_default();
        lines.push(format!("  {}. {} `{}` {detail}{train}", i + 1, stage.kind(), stage.name()));
    }
    if let Some(sweep) = &experiment.sweep {
        lines.push(format!("  sweep: {}", sweep.describe()));
    }
    lines.join("\n")
}
