//! Runs an experiment: every sweep point and seed as one run, each run's stages in dependency
//! order, every stage's output cached under its key ([`crate::experiment::key`]).
//!
//! Outputs live in `runs/<experiment>/stages/<stage>-<key>/` and each run folder links to the
//! ones it uses ([`crate::runs::layout`]), so sweep points that share a stage (the same
//! pretraining under two PPO settings) compute it once, and going back to an earlier setting
//! finds its outputs still there.
//!
//! Same key, completed: the stage is skipped. Same key, not completed: it resumes from its last
//! checkpoint. `--force <stage>` clears the stage's output and trains it again, and with it
//! everything downstream (their keys do not change, so they are forced too).
//!
//! A run folder never mixes two attempts: before its first stage runs, every link points at its
//! new key and the manifest (marked incomplete) lists those keys; a run it replaces whose keys
//! differ moves to `history/` first. The manifest is marked complete when the last stage ends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::context::{RunContext, StageError, check_pinned, plugin_spec};
use super::{Experiment, Stage};
use crate::experiment::sweep::{RunPoint, expand};
use crate::experiment::{StageSpec, stage_key, stage_order};
use crate::plugins::PluginKind;
use crate::plugins::records::{feature_list, feature_name};
use crate::runs::layout::{ExperimentDir, archive_run, link_stage};
use crate::runs::manifest::Manifest;
use crate::runs::stage_record::StageRecord;
use crate::util::atomic::{FileError, write_atomically};

/// What a stage will do (or did) in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    /// Its output exists for its key: nothing to train.
    Cached,
    /// Interrupted earlier with the same key: it continues from its last checkpoint.
    Resume,
    /// Nothing usable exists (or `--force`): it trains from the start.
    Train,
    /// An earlier run of this invocation computes the same output: computed once, then shared.
    Shared,
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

/// Checks that need the plugins themselves or the other stages, made before anything trains:
/// every plugin a stage names builds, loads, accepts its config block, and is of the kind its
/// slot needs (a filter where filters go, a reward plugin as a reward or a judge, ...); a loss
/// plugin reads only features its stage provides; an evaluation's `prompts_of` and
/// `perplexity_of` name stages of the right kinds.
pub fn preflight(experiment: &Experiment, experiment_path: &Path) -> Result<(), StageError> {
    let base_dir = experiment_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let sandbox = crate::plugins::Sandbox::shared();
    let mut kinds = BTreeMap::new();
    for stage in &experiment.stages {
        if let Stage::Eval(eval) = stage {
            eval.check_references(experiment)
                .map_err(|message| StageError::Config { stage: eval.name.clone(), message })?;
        }
        for (plugin, wanted) in stage.plugin_slots() {
            let decl = experiment.plugins.get(plugin).ok_or_else(|| StageError::Undeclared {
                what: "plugin",
                name: plugin.to_string(),
                section: "plugins",
            })?;
            if !kinds.contains_key(plugin) {
                let loaded = crate::plugins::Plugin::load(&sandbox, &plugin_spec(plugin, decl, &base_dir)?)?;
                check_pinned(plugin, decl, loaded.sha256())?;
                let features = match &loaded {
                    crate::plugins::Plugin::Loss(loss) => loss.features().to_vec(),
                    _ => Vec::new(),
                };
                kinds.insert(plugin, (loaded.info().kind, features));
            }
            let (kind, features) = &kinds[plugin];
            let kind = *kind;
            if kind != wanted {
                return Err(StageError::Config {
                    stage: stage.name().to_string(),
                    message: format!(
                        "plugin `{plugin}` is a {kind} plugin, but it is used where a {wanted} plugin goes"
                    ),
                });
            }
            let provided = stage.loss_features();
            if kind == PluginKind::Loss
                && let Some(missing) = features.iter().find(|f| !provided.contains(f))
            {
                return Err(StageError::Config {
                    stage: stage.name().to_string(),
                    message: format!(
                        "loss plugin `{plugin}` reads the feature `{}`, which a {} stage does not provide (it provides: {})",
                        feature_name(*missing),
                        stage.kind(),
                        feature_list(provided)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Run every point of `experiment` (read from `experiment_path`).
pub fn run_experiment(
    experiment: &Experiment,
    experiment_path: &Path,
    options: &RunOptions,
) -> Result<Vec<RunOutcome>, StageError> {
    preflight(experiment, experiment_path)?;
    let points = expand(experiment)?;
    // Held until every run is done; a sweep may name more than one experiment folder.
    let mut locks = BTreeMap::new();
    for point in &points {
        if !locks.contains_key(&point.experiment.name) {
            let lock = ExperimentDir::new(&options.runs_root, &point.experiment.name)?.lock()?;
            locks.insert(point.experiment.name.clone(), lock);
        }
    }
    let mut outcomes = Vec::new();
    for point in &points {
        if points.len() > 1 {
            tracing::info!(run = point.run, "run {} of {}", outcomes.len() + 1, points.len());
        }
        outcomes.push(run_point(point, experiment_path, options)?);
    }
    Ok(outcomes)
}

/// Each run's name with each of its stages, in order, and what the stage would do now.
pub type Plan = Vec<(String, Vec<(String, StageStatus)>)>;

/// The plan of every run: each stage in order with what it would do now.
pub fn plan(experiment: &Experiment, experiment_path: &Path, options: &RunOptions) -> Result<Plan, StageError> {
    preflight(experiment, experiment_path)?;
    let mut plans = Vec::new();
    let mut computed: BTreeSet<PathBuf> = BTreeSet::new();
    for point in expand(experiment)? {
        let run = RunPlace::new(&point, experiment_path, options)?;
        let ctx = RunContext::new(&point.experiment, &run.base_dir, &run.run_dir)?;
        let keys = stage_keys(&ctx)?;
        let forced = forced_stages(&point.experiment, &options.force)?;
        let mut stages = Vec::new();
        for stage in stage_order(&point.experiment.stages)? {
            let store = run.experiment.stage_store(stage.name(), &keys[stage.name()]);
            let status = if computed.contains(&store) {
                StageStatus::Shared
            } else if forced.contains(stage.name()) {
                StageStatus::Train
            } else {
                match StageRecord::read(&store)? {
                    Some(record) if record.complete => StageStatus::Cached,
                    Some(_) => StageStatus::Resume,
                    None => StageStatus::Train,
                }
            };
            if matches!(status, StageStatus::Train | StageStatus::Resume) {
                computed.insert(store);
            }
            stages.push((stage.name().to_string(), status));
        }
        plans.push((point.run.clone(), stages));
    }
    Ok(plans)
}

/// Where one run's files go.
struct RunPlace {
    /// The experiment file's folder.
    base_dir: PathBuf,
    experiment: ExperimentDir,
    run_dir: PathBuf,
}

impl RunPlace {
    fn new(point: &RunPoint<Stage>, experiment_path: &Path, options: &RunOptions) -> Result<Self, StageError> {
        let base_dir = experiment_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let experiment = ExperimentDir::new(&options.runs_root, &point.experiment.name)?;
        let run_dir = experiment.run_dir(&point.run);
        Ok(RunPlace { base_dir, experiment, run_dir })
    }
}

/// Every stage's key, in dependency order (a key hashes the keys of the stages it reads).
fn stage_keys(ctx: &RunContext) -> Result<BTreeMap<String, String>, StageError> {
    let mut keys = BTreeMap::new();
    for stage in stage_order(&ctx.experiment.stages)? {
        let key = stage_key(ctx.experiment, stage, &keys, ctx)?;
        keys.insert(stage.name().to_string(), key);
    }
    Ok(keys)
}

/// The stages `--force` names, and every stage downstream of them.
fn forced_stages(experiment: &Experiment, force: &[String]) -> Result<BTreeSet<String>, StageError> {
    let mut forced: BTreeSet<String> = force.iter().cloned().collect();
    for stage in stage_order(&experiment.stages)? {
        if stage.inputs().iter().any(|i| forced.contains(*i)) {
            forced.insert(stage.name().to_string());
        }
    }
    Ok(forced)
}

fn run_point(point: &RunPoint<Stage>, experiment_path: &Path, options: &RunOptions) -> Result<RunOutcome, StageError> {
    let experiment = &point.experiment;
    let place = RunPlace::new(point, experiment_path, options)?;
    let run_dir = &place.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|e| FileError::new(run_dir, e))?;
    let ctx = RunContext::new(experiment, &place.base_dir, run_dir)?;
    let keys = stage_keys(&ctx)?;
    let order = stage_order(&experiment.stages)?;

    // One attempt per run folder: a run of other keys moves to the history, then every link
    // and the manifest describe this attempt before anything trains.
    if let Some(previous) = Manifest::read(run_dir)?
        && previous.keys != keys
    {
        let kept = archive_run(&place.experiment, run_dir, &previous)?;
        tracing::info!(run = point.run, "the experiment changed: the earlier run is kept in {}", kept.display());
    }
    let pretty = ron::ser::PrettyConfig::default();
    let resolved = crate::experiment::ron_options().to_string_pretty(experiment, pretty).unwrap_or_default();
    write_atomically(&run_dir.join("experiment.ron"), resolved.as_bytes())?;
    for stage in &order {
        link_stage(run_dir, stage.name(), &place.experiment.stage_store(stage.name(), &keys[stage.name()]))?;
    }
    let mut manifest = manifest(&ctx, point, &order, &keys)?;
    manifest.write(run_dir)?;

    let forced = forced_stages(experiment, &options.force)?;
    let mut outcomes = Vec::new();
    for stage in order {
        let name = stage.name().to_string();
        let key = &keys[&name];
        let store = place.experiment.stage_store(&name, key);
        let dir = run_dir.join(&name);
        if forced.contains(&name) && store.exists() {
            tracing::info!(stage = name, "--force: clearing the stage's output");
            std::fs::remove_dir_all(&store).map_err(|e| FileError::new(&store, e))?;
        }
        std::fs::create_dir_all(&store).map_err(|e| FileError::new(&store, e))?;
        if let Some(record) = StageRecord::read(&store)?.filter(|r| r.complete) {
            tracing::info!(stage = name, "cached: output exists for this key, nothing to train");
            outcomes.push(StageOutcome { stage: name, cached: true, resumed_from: 0, metrics: record.metrics, dir });
            continue;
        }
        StageRecord { key: key.clone(), complete: false, metrics: BTreeMap::new() }.write(&store)?;
        let started = std::time::Instant::now();
        let mut output = stage.run(&ctx, &dir)?;
        // A stage's model folder is a whole Hugging Face model folder: `transformers` and
        // `Pretrained("<folder>")` read the tokenizer and the chat template beside the weights.
        let model_dir = dir.join("model");
        if stage.produces_model() && model_dir.join(crate::model::checkpoint::CONFIG_FILE).is_file() {
            ctx.tokenizer()?.save(&model_dir.join(crate::model::pretrained::TOKENIZER_FILE))?;
            if let Some(chat) = ctx.chat_template()? {
                write_atomically(
                    &model_dir.join(crate::model::pretrained::CHAT_TEMPLATE_FILE),
                    chat.to_jinja().as_bytes(),
                )?;
            }
        }
        // Wall time of this attempt (a resumed stage counts from its resume).
        output.metrics.insert("time/seconds".into(), started.elapsed().as_secs_f64());
        let jsonl = store.join("metrics.jsonl");
        if jsonl.is_file() {
            crate::runs::table::write_metrics_parquet(&jsonl, &store.join("metrics.parquet")).map_err(|e| {
                StageError::Data { stage: name.clone(), message: format!("writing metrics.parquet: {e}") }
            })?;
        }
        let record = StageRecord { key: key.clone(), complete: true, metrics: output.metrics };
        record.write(&store)?;
        outcomes.push(StageOutcome {
            stage: name,
            cached: false,
            resumed_from: output.resumed_from,
            metrics: record.metrics,
            dir,
        });
    }
    manifest.complete = true;
    manifest.write(run_dir)?;
    Ok(RunOutcome { run: point.run.clone(), dir: run_dir.clone(), stages: outcomes })
}

/// What the run is made from, before it runs (incomplete).
fn manifest(
    ctx: &RunContext,
    point: &RunPoint<Stage>,
    order: &[&Stage],
    keys: &BTreeMap<String, String>,
) -> Result<Manifest, StageError> {
    let experiment = ctx.experiment;
    let mut data = BTreeMap::new();
    let mut plugins = BTreeMap::new();
    for stage in order {
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
    Ok(Manifest {
        experiment: experiment.name.clone(),
        run: point.run.clone(),
        seed: experiment.seed,
        sweep: point.settings.clone(),
        triad_version: env!("CARGO_PKG_VERSION").to_string(),
        triad_revision: env!("TRIAD_GIT_REVISION").to_string(),
        triad_build: env!("TRIAD_BUILD").to_string(),
        git_revision: git_revision(&ctx.base_dir),
        device: format!("{:?}", experiment.device),
        data,
        plugins,
        stages: order.iter().map(|s| s.name().to_string()).collect(),
        summary: experiment.summary.clone(),
        keys: keys.clone(),
        complete: false,
        archived: None,
    })
}

/// The git revision of the checkout holding the experiment, if it is one (`-dirty` when it
/// has uncommitted changes).
fn git_revision(dir: &Path) -> Option<String> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let run = |args: &[&str]| {
        std::process::Command::new("git").args(args).current_dir(dir).output().ok().filter(|o| o.status.success())
    };
    let head = String::from_utf8(run(&["rev-parse", "HEAD"])?.stdout).ok()?.trim().to_string();
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// The plan, one line per stage, as `triad validate` prints it.
pub fn describe(experiment: &Experiment) -> String {
    let mut lines = vec![format!("experiment `{}` (seed {})", experiment.name, experiment.seed)];
    let order = stage_order(&experiment.stages).unwrap_or_else(|_| experiment.stages.iter().collect());
    for (i, stage) in order.iter().enumerate() {
        lines.push(format!("  {}. {} `{}` {}", i + 1, stage.kind(), stage.name(), stage.describe()));
    }
    if let Some(sweep) = &experiment.sweep {
        lines.push(format!("  sweep: {}", sweep.describe()));
    }
    lines.join("\n")
}
