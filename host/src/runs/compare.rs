//! `triad compare`: result tables over runs.
//!
//! The final table has a row per sweep point (runs grouped by experiment and by their manifest's
//! `sweep` object, seeds pooled) or per run, and a column per final metric `<stage>/<metric>`
//! (from each completed stage's `stage.json`): mean and sample standard deviation (ddof 1) over
//! seeds. The per-step table reads one metric's curve from each run's metrics files. Both are
//! polars DataFrames, so they go out as CSV or Parquet with exact numbers; Markdown is rendered
//! here, with "mean ± std" cells at four significant digits.
//!
//! Statistics are computed per group with polars' nullable column aggregations; the lazy engine
//! (group_by/pivot expressions) is not used on purpose: it would add polars-lazy, -plan, -expr
//! and -stream to every build for tables of a few dozen rows.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde_json::Value;

use super::plot::{Figure, PlotError, Series, plot};
use super::table::{Run, TableError, TableFormat, find_runs, write_frame};
use crate::util::atomic::{FileError, write_atomically};

/// What can go wrong comparing runs.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}", unknown_metric_message(.kind, .name, .suggestion.as_deref(), .available))]
    UnknownMetric { kind: &'static str, name: String, suggestion: Option<String>, available: Vec<String> },
    #[error("building the {what} table: {source}")]
    Polars { what: &'static str, source: PolarsError },
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("no stage to plot: the runs list no stages (name a metric with --step-metric)")]
    NoStages,
}

fn unknown_metric_message(kind: &str, name: &str, suggestion: Option<&str>, available: &[String]) -> String {
    let mut message = format!("no run has the {kind} metric `{name}`");
    if let Some(s) = suggestion {
        let _ = write!(message, "; did you mean `{s}`?");
    }
    if available.is_empty() {
        message.push_str(" (the runs have no such metrics at all)");
    } else {
        let _ = write!(message, "\navailable: {}", available.join(", "));
    }
    message
}

fn polars_err(what: &'static str) -> impl Fn(PolarsError) -> CompareError {
    move |source| CompareError::Polars { what, source }
}

/// The available name nearest to a misspelt one, if any is near: a name that ends with it (the
/// stage prefix left out), else the closest by edit distance.
fn suggest(name: &str, available: &[String]) -> Option<String> {
    let suffix = format!("/{name}");
    if let Some(hit) = available.iter().find(|a| a.ends_with(&suffix)) {
        return Some(hit.clone());
    }
    crate::util::names::nearest(name, available.iter().map(String::as_str)).map(str::to_string)
}

fn check_metric(kind: &'static str, name: &str, available: &[String]) -> Result<(), CompareError> {
    if available.iter().any(|a| a == name) {
        return Ok(());
    }
    Err(CompareError::UnknownMetric {
        kind,
        name: name.to_string(),
        suggestion: suggest(name, available),
        available: available.to_vec(),
    })
}

/// What `triad compare` was asked for.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Run folders, or folders of runs.
    pub paths: Vec<PathBuf>,
    /// Final-metric columns (`<stage>/<metric>`); all found when `None`.
    pub metrics: Option<Vec<String>>,
    /// Sort rows by this metric's mean (or value, by run).
    pub sort: Option<String>,
    /// Sort descending.
    pub descending: bool,
    /// A row (or, per step, a column) per run rather than per sweep point.
    pub by_run: bool,
    /// Write the table here: `.csv`, `.parquet` or `.md`.
    pub out: Option<PathBuf>,
    /// Show this metric per step instead of the final table.
    pub step_metric: Option<String>,
    /// Plot the step metric per sweep point to this `.png`/`.svg` (default metric: the loss,
    /// else the reward, of the first stage the sweep changes).
    pub plot: Option<PathBuf>,
    /// Plot each seed's curve as the mean of its last `smooth` steps (0 and 1 plot it as
    /// recorded).
    pub smooth: usize,
}

/// What `triad compare` produced.
#[derive(Debug, Clone)]
pub struct CompareOutput {
    /// The table as Markdown.
    pub markdown: String,
    /// Files written (`--out`, `--plot`).
    pub written: Vec<PathBuf>,
    /// What was left out, when the columns were chosen for the user.
    pub note: Option<String>,
}

/// Run `triad compare`: find the runs, build the table (final or per step), write what was asked.
pub fn compare(options: &CompareOptions) -> Result<CompareOutput, CompareError> {
    let runs = find_runs(&options.paths)?;
    let mut written = Vec::new();
    let mut note = None;
    let markdown = if let Some(metric) = &options.step_metric {
        let mut table = step_table(&runs, metric, options.by_run)?;
        let markdown = table.to_markdown();
        if let Some(out) = &options.out {
            write_table(&mut table.frame, &markdown, out)?;
            written.push(out.clone());
        }
        markdown
    } else {
        let metrics = match &options.metrics {
            Some(metrics) => metrics.clone(),
            None => {
                let shown = default_metrics(&runs);
                let all = available_final_metrics(&runs).len();
                note = Some(format!(
                    "{} of {all} metrics shown (the experiment's summary, or the last stage's); name others with --metrics",
                    shown.len()
                ));
                shown
            }
        };
        let table_options = TableOptions {
            metrics: Some(metrics),
            sort: options.sort.clone(),
            descending: options.descending,
            by_run: options.by_run,
        };
        let mut table = final_table(&runs, &table_options)?;
        let markdown = table.to_markdown();
        if let Some(out) = &options.out {
            write_table(&mut table.frame, &markdown, out)?;
            written.push(out.clone());
        }
        markdown
    };
    if let Some(path) = &options.plot {
        let metric = match &options.step_metric {
            Some(metric) => metric.clone(),
            None => default_plot_metric(&runs)?,
        };
        plot(&figure(&runs, &metric, options.smooth)?, path)?;
        written.push(path.clone());
    }
    Ok(CompareOutput { markdown, written, note })
}

/// The table `triad run` prints when it ends: over the runs in `run_dirs`, a row per sweep point
/// (mean ± std over seeds) of the `summary` metrics, or, when none are named, of every final
/// metric of `last_stage`.
pub fn run_summary(run_dirs: &[PathBuf], summary: &[String], last_stage: &str) -> Result<String, CompareError> {
    let runs = find_runs(run_dirs)?;
    let metrics = if summary.is_empty() { stage_metrics(&runs, last_stage) } else { summary.to_vec() };
    let options = TableOptions { metrics: Some(metrics), sort: None, descending: false, by_run: false };
    Ok(final_table(&runs, &options)?.to_markdown())
}

/// Every final metric of `stage` found in the runs.
fn stage_metrics(runs: &[Run], stage: &str) -> Vec<String> {
    let prefix = format!("{stage}/");
    available_final_metrics(runs).into_iter().filter(|m| m.starts_with(&prefix)).collect()
}

/// The columns of a table when none are named: the experiment's `summary` metrics as the runs'
/// manifests record them (those any run has), else the last stage's final metrics, as
/// `triad run` ends by showing.
pub fn default_metrics(runs: &[Run]) -> Vec<String> {
    let available: BTreeSet<String> = available_final_metrics(runs).into_iter().collect();
    let mut summary: Vec<String> = Vec::new();
    for run in runs {
        for metric in &run.manifest.summary {
            if available.contains(metric) && !summary.contains(metric) {
                summary.push(metric.clone());
            }
        }
    }
    if !summary.is_empty() {
        return summary;
    }
    let last_stage = runs.iter().filter_map(|r| r.stage_names().last().cloned()).next().unwrap_or_default();
    stage_metrics(runs, &last_stage)
}

fn experiments_label(runs: &[Run]) -> String {
    let names: BTreeSet<String> = runs.iter().map(Run::experiment).collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

fn write_table(frame: &mut DataFrame, markdown: &str, path: &Path) -> Result<(), CompareError> {
    match TableFormat::of(path) {
        Some(TableFormat::Markdown) => Ok(write_atomically(path, markdown.as_bytes())?),
        _ => Ok(write_frame(frame, path)?),
    }
}

/// Choices for the final table.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    pub metrics: Option<Vec<String>>,
    pub sort: Option<String>,
    pub descending: bool,
    pub by_run: bool,
}

/// A final-metrics table. Per sweep point its metric columns are `<metric> mean` and
/// `<metric> std`; per run, `<metric>`.
#[derive(Debug, Clone)]
pub struct ResultTable {
    pub frame: DataFrame,
    /// The metric names, in column order.
    pub metrics: Vec<String>,
    /// The identifying columns before the metrics (experiment, run, seed, parameters, seeds).
    pub key_columns: Vec<String>,
    pub by_run: bool,
}

/// Final metric names found in any run, in pipeline stage order (stages as the manifests list
/// them, first-seen across runs), metrics by name within a stage.
pub fn available_final_metrics(runs: &[Run]) -> Vec<String> {
    let mut stage_order: Vec<String> = Vec::new();
    let mut per_stage: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for run in runs {
        for stage in run.stage_names() {
            if !stage_order.contains(&stage) {
                stage_order.push(stage);
            }
        }
        for (stage, summary) in &run.stages {
            if summary.complete {
                per_stage.entry(stage.clone()).or_default().extend(summary.metrics.keys().cloned());
            }
        }
    }
    for stage in per_stage.keys() {
        if !stage_order.contains(stage) {
            stage_order.push(stage.clone());
        }
    }
    stage_order
        .iter()
        .filter_map(|stage| per_stage.get(stage).map(|metrics| (stage, metrics)))
        .flat_map(|(stage, metrics)| metrics.iter().map(move |m| format!("{stage}/{m}")))
        .collect()
}

/// Order two sweep values: numbers numerically, anything else by its text.
fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => value_text(a).cmp(&value_text(b)),
    }
}

fn compare_params(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>, names: &[String]) -> Ordering {
    for name in names {
        let order = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => compare_values(x, y),
            (x, y) => x.is_some().cmp(&y.is_some()),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

/// A sweep value as text: strings bare, numbers as Rust prints them (3.0 as `3`).
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map(|x| x.to_string()).unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

/// One group of runs sharing experiment and sweep point.
struct Point<'a> {
    experiment: String,
    params: &'a BTreeMap<String, Value>,
    runs: Vec<&'a Run>,
}

/// Runs grouped by (experiment, sweep point), sorted by experiment then parameter values; the
/// runs in a point by seed.
fn group_points<'a>(runs: &'a [Run], param_names: &[String]) -> Vec<Point<'a>> {
    let mut groups: BTreeMap<(String, String), Point<'a>> = BTreeMap::new();
    for run in runs {
        let key = (run.experiment(), serde_json::to_string(&run.manifest.sweep).unwrap_or_default());
        groups
            .entry(key)
            .or_insert_with(|| Point { experiment: run.experiment(), params: &run.manifest.sweep, runs: Vec::new() })
            .runs
            .push(run);
    }
    let mut points: Vec<Point<'a>> = groups.into_values().collect();
    for point in &mut points {
        point.runs.sort_by(|a, b| a.manifest.seed.cmp(&b.manifest.seed).then_with(|| a.name().cmp(&b.name())));
    }
    points
        .sort_by(|a, b| a.experiment.cmp(&b.experiment).then_with(|| compare_params(a.params, b.params, param_names)));
    points
}

/// Mean and sample standard deviation (ddof 1) of the values present; the std is absent below
/// two values, the mean below one.
pub fn mean_std(values: &[Option<f64>]) -> (Option<f64>, Option<f64>) {
    let column = Float64Chunked::from_iter_options("v".into(), values.iter().copied());
    let present = column.len() - column.null_count();
    let mean = if present > 0 { column.mean() } else { None };
    let std = if present > 1 { column.std(1) } else { None };
    (mean, std)
}

/// A column for a sweep parameter: numeric when every value given is a number, else text.
fn param_column(name: &str, values: Vec<Option<&Value>>) -> Column {
    if values.iter().flatten().all(|v| v.is_number()) {
        Column::new(name.into(), values.iter().map(|v| v.and_then(Value::as_f64)).collect::<Vec<_>>())
    } else {
        Column::new(name.into(), values.iter().map(|v| v.map(value_text)).collect::<Vec<_>>())
    }
}

/// The column that marks runs that did not finish (shown only when some did not).
pub const COMPLETE: &str = "complete";

/// The final-metrics table over `runs`.
pub fn final_table(runs: &[Run], options: &TableOptions) -> Result<ResultTable, CompareError> {
    let available = available_final_metrics(runs);
    let metrics = match &options.metrics {
        Some(chosen) => {
            for name in chosen {
                check_metric("final", name, &available)?;
            }
            chosen.clone()
        }
        None => available.clone(),
    };
    if let Some(sort) = &options.sort {
        check_metric("final", sort, &available)?;
    }
    // The sort metric is computed even when not shown, then dropped after sorting.
    let mut computed = metrics.clone();
    let sort_hidden = options.sort.as_ref().filter(|s| !metrics.contains(s)).cloned();
    if let Some(hidden) = &sort_hidden {
        computed.push(hidden.clone());
    }

    let param_names: Vec<String> =
        runs.iter().flat_map(|r| r.manifest.sweep.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let experiments: BTreeSet<String> = runs.iter().map(Run::experiment).collect();
    // Runs that did not finish are marked: their later stages' numbers are missing, not old.
    let any_incomplete = runs.iter().any(|r| !r.complete());
    // The experiment names the row when there are several, or when nothing else would.
    let show_experiment = experiments.len() > 1 || (param_names.is_empty() && !options.by_run);

    let mut columns: Vec<Column> = Vec::new();
    let mut key_columns: Vec<String> = Vec::new();
    let mut metric_columns = Vec::new();
    let height;
    if options.by_run {
        let mut sorted: Vec<&Run> = runs.iter().collect();
        sorted.sort_by(|a, b| {
            a.experiment()
                .cmp(&b.experiment())
                .then_with(|| compare_params(&a.manifest.sweep, &b.manifest.sweep, &param_names))
                .then_with(|| a.manifest.seed.cmp(&b.manifest.seed))
                .then_with(|| a.name().cmp(&b.name()))
        });
        height = sorted.len();
        if show_experiment {
            columns.push(Column::new("experiment".into(), sorted.iter().map(|r| r.experiment()).collect::<Vec<_>>()));
        }
        columns.push(Column::new("run".into(), sorted.iter().map(|r| r.name()).collect::<Vec<_>>()));
        columns.push(Column::new("seed".into(), sorted.iter().map(|r| r.manifest.seed).collect::<Vec<u64>>()));
        if any_incomplete {
            let complete: Vec<&str> = sorted.iter().map(|r| if r.complete() { "yes" } else { "no" }).collect();
            columns.push(Column::new(COMPLETE.into(), complete));
        }
        for name in &param_names {
            columns.push(param_column(name, sorted.iter().map(|r| r.manifest.sweep.get(name)).collect()));
        }
        let finals: Vec<BTreeMap<String, f64>> = sorted.iter().map(|r| r.final_metrics()).collect();
        for metric in &computed {
            let values: Vec<Option<f64>> = finals.iter().map(|f| f.get(metric).copied()).collect();
            metric_columns.push(Column::new(metric.as_str().into(), values));
        }
    } else {
        let points = group_points(runs, &param_names);
        height = points.len();
        if show_experiment {
            columns.push(Column::new(
                "experiment".into(),
                points.iter().map(|p| p.experiment.clone()).collect::<Vec<_>>(),
            ));
        }
        for name in &param_names {
            columns.push(param_column(name, points.iter().map(|p| p.params.get(name)).collect()));
        }
        columns.push(Column::new("seeds".into(), points.iter().map(|p| p.runs.len() as u64).collect::<Vec<u64>>()));
        if any_incomplete {
            let complete: Vec<String> = points
                .iter()
                .map(|p| {
                    let done = p.runs.iter().filter(|r| r.complete()).count();
                    if done == p.runs.len() { "yes".to_string() } else { format!("{done} of {}", p.runs.len()) }
                })
                .collect();
            columns.push(Column::new(COMPLETE.into(), complete));
        }
        let finals: Vec<Vec<BTreeMap<String, f64>>> =
            points.iter().map(|p| p.runs.iter().map(|r| r.final_metrics()).collect()).collect();
        for metric in &computed {
            let (mut means, mut stds) = (Vec::with_capacity(height), Vec::with_capacity(height));
            for point in &finals {
                let values: Vec<Option<f64>> = point.iter().map(|f| f.get(metric).copied()).collect();
                let (mean, std) = mean_std(&values);
                means.push(mean);
                stds.push(std);
            }
            metric_columns.push(Column::new(format!("{metric} mean").into(), means));
            metric_columns.push(Column::new(format!("{metric} std").into(), stds));
        }
    }
    key_columns.extend(columns.iter().map(|c| c.name().to_string()));
    columns.extend(metric_columns);
    let mut frame = DataFrame::new(height, columns).map_err(polars_err("final"))?;

    if let Some(sort) = &options.sort {
        let column = if options.by_run { sort.clone() } else { format!("{sort} mean") };
        let order = SortMultipleOptions::default()
            .with_order_descending(options.descending)
            .with_nulls_last(true)
            .with_maintain_order(true);
        frame = frame.sort([column.as_str()], order).map_err(polars_err("final"))?;
    }
    if let Some(hidden) = &sort_hidden {
        let drop: Vec<String> =
            if options.by_run { vec![hidden.clone()] } else { vec![format!("{hidden} mean"), format!("{hidden} std")] };
        frame = frame.drop_many(drop);
    }
    Ok(ResultTable { frame, metrics, key_columns, by_run: options.by_run })
}

/// Format a measured number at four significant digits (fixed point over a sensible range,
/// scientific outside it).
pub fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if (-3..6).contains(&magnitude) {
        let decimals = (3 - magnitude).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

/// A cell of a key column (names, seeds, parameter values) as text.
fn key_cell(column: &Column, row: usize) -> String {
    match column.get(row) {
        Ok(AnyValue::Null) | Err(_) => String::new(),
        Ok(AnyValue::String(s)) => s.to_string(),
        Ok(AnyValue::StringOwned(s)) => s.to_string(),
        Ok(AnyValue::Float64(x)) => x.to_string(),
        Ok(other) => other.to_string(),
    }
}

fn f64_cell(frame: &DataFrame, name: &str, row: usize) -> Option<f64> {
    frame.column(name).ok()?.f64().ok()?.get(row)
}

/// Escape a Markdown table cell.
fn md(text: &str) -> String {
    text.replace('|', "\\|")
}

fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | "));
    out.push_str(&line(header));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

impl ResultTable {
    /// The table as Markdown: "mean ± std" cells per sweep point (std left out for one seed),
    /// empty cells where no run reached a stage.
    pub fn to_markdown(&self) -> String {
        let mut header = self.key_columns.clone();
        header.extend(self.metrics.iter().cloned());
        let mut rows = Vec::with_capacity(self.frame.height());
        for row in 0..self.frame.height() {
            let mut cells: Vec<String> = Vec::with_capacity(header.len());
            for key in &self.key_columns {
                cells.push(self.frame.column(key).map(|c| key_cell(c, row)).unwrap_or_default());
            }
            for metric in &self.metrics {
                let cell = if self.by_run {
                    f64_cell(&self.frame, metric, row).map(format_number).unwrap_or_default()
                } else {
                    match (
                        f64_cell(&self.frame, &format!("{metric} mean"), row),
                        f64_cell(&self.frame, &format!("{metric} std"), row),
                    ) {
                        (Some(mean), Some(std)) => format!("{} ± {}", format_number(mean), format_number(std)),
                        (Some(mean), None) => format_number(mean),
                        _ => String::new(),
                    }
                };
                cells.push(cell);
            }
            rows.push(cells);
        }
        markdown_table(&header, &rows)
    }
}

/// One metric per step: a `step` column and a column per run (or sweep point, mean over seeds).
#[derive(Debug, Clone)]
pub struct StepTable {
    pub metric: String,
    pub frame: DataFrame,
}

impl StepTable {
    /// The table as Markdown, empty cells where a run has no value at a step.
    pub fn to_markdown(&self) -> String {
        let header: Vec<String> = self.frame.get_column_names().iter().map(|n| n.to_string()).collect();
        let mut rows = Vec::with_capacity(self.frame.height());
        for row in 0..self.frame.height() {
            let mut cells = Vec::with_capacity(header.len());
            for (i, name) in header.iter().enumerate() {
                if i == 0 {
                    cells.push(self.frame.column(name).map(|c| key_cell(c, row)).unwrap_or_default());
                } else {
                    cells.push(f64_cell(&self.frame, name, row).map(format_number).unwrap_or_default());
                }
            }
            rows.push(cells);
        }
        markdown_table(&header, &rows)
    }
}

/// Every per-step metric name (`<stage>/<metric>`) the runs recorded.
pub fn available_step_metrics(runs: &[Run]) -> Result<Vec<String>, CompareError> {
    let mut names = Vec::new();
    for run in runs {
        for stage in run.stage_names() {
            for row in run.stage_metrics(&stage)? {
                let name = format!("{stage}/{}", row.metric);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

/// A run's values of `metric` (`<stage>/<name>`) by step; the last row wins for a repeated step.
fn run_curve(run: &Run, stage: &str, name: &str) -> Result<BTreeMap<u64, f64>, CompareError> {
    Ok(run.stage_metrics(stage)?.into_iter().filter(|r| r.metric == name).map(|r| (r.step, r.value)).collect())
}

/// Column labels made unique: a repeated label gets " (2)", " (3)", ...
fn unique_labels(labels: Vec<String>) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    labels
        .into_iter()
        .map(|label| {
            let count = seen.entry(label.clone()).or_insert(0);
            *count += 1;
            if *count == 1 { label } else { format!("{label} ({count})") }
        })
        .collect()
}

/// The per-step table of `metric` (`<stage>/<metric>`, e.g. `pretrain/train/loss`).
pub fn step_table(runs: &[Run], metric: &str, by_run: bool) -> Result<StepTable, CompareError> {
    let unknown = || -> Result<CompareError, CompareError> {
        let available = available_step_metrics(runs)?;
        Ok(CompareError::UnknownMetric {
            kind: "per-step",
            name: metric.to_string(),
            suggestion: suggest(metric, &available),
            available,
        })
    };
    let Some((stage, name)) = metric.split_once('/') else {
        return Err(unknown()?);
    };
    let experiments: BTreeSet<String> = runs.iter().map(Run::experiment).collect();
    let several = experiments.len() > 1;
    let mut series: Vec<(String, BTreeMap<u64, f64>)> = Vec::new();
    if by_run {
        let mut sorted: Vec<&Run> = runs.iter().collect();
        sorted.sort_by(|a, b| a.experiment().cmp(&b.experiment()).then_with(|| a.name().cmp(&b.name())));
        for run in sorted {
            let label = if several { format!("{}/{}", run.experiment(), run.name()) } else { run.name() };
            series.push((label, run_curve(run, stage, name)?));
        }
    } else {
        let param_names: Vec<String> =
            runs.iter().flat_map(|r| r.manifest.sweep.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        for point in group_points(runs, &param_names) {
            let params: Vec<String> = point.params.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
            let label = match (params.is_empty(), several) {
                (true, _) => point.experiment.clone(),
                (false, false) => params.join(","),
                (false, true) => format!("{}/{}", point.experiment, params.join(",")),
            };
            let curves: Vec<BTreeMap<u64, f64>> =
                point.runs.iter().map(|run| run_curve(run, stage, name)).collect::<Result<_, _>>()?;
            let steps: BTreeSet<u64> = curves.iter().flat_map(|c| c.keys().copied()).collect();
            let mean = steps
                .into_iter()
                .filter_map(|step| {
                    let values: Vec<Option<f64>> = curves.iter().map(|c| c.get(&step).copied()).collect();
                    mean_std(&values).0.map(|m| (step, m))
                })
                .collect();
            series.push((label, mean));
        }
    }
    if series.iter().all(|(_, curve)| curve.is_empty()) {
        return Err(unknown()?);
    }
    let labels = unique_labels(series.iter().map(|(label, _)| label.clone()).collect());
    let steps: Vec<u64> =
        series.iter().flat_map(|(_, c)| c.keys().copied()).collect::<BTreeSet<_>>().into_iter().collect();
    let mut columns = vec![Column::new("step".into(), steps.clone())];
    for (label, (_, curve)) in labels.iter().zip(&series) {
        columns
            .push(Column::new(label.as_str().into(), steps.iter().map(|s| curve.get(s).copied()).collect::<Vec<_>>()));
    }
    let frame = DataFrame::new(steps.len(), columns).map_err(polars_err("per-step"))?;
    Ok(StepTable { metric: metric.to_string(), frame })
}

/// A run's stage key (stages with one key were computed once and shared); a run that never
/// recorded the stage is its own.
fn stage_key(run: &Run, stage: &str) -> String {
    match run.stages.iter().find(|(name, _)| name == stage) {
        Some((_, record)) => record.key.clone(),
        None => run.dir.display().to_string(),
    }
}

/// The metric `--plot` draws when none is named: of the first stage whose runs differ between
/// sweep points (the first stage the sweep changes; the first stage without a sweep), its
/// `train/loss`, else its `train/reward`, else its first metric.
pub fn default_plot_metric(runs: &[Run]) -> Result<String, CompareError> {
    let stages = runs.iter().map(Run::stage_names).find(|names| !names.is_empty()).ok_or(CompareError::NoStages)?;
    let param_names: Vec<String> =
        runs.iter().flat_map(|r| r.manifest.sweep.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let points = group_points(runs, &param_names);
    let changed = stages.iter().find(|stage| {
        let keys: BTreeSet<Vec<String>> =
            points.iter().map(|p| p.runs.iter().map(|run| stage_key(run, stage)).collect()).collect();
        keys.len() > 1
    });
    let stage = changed.unwrap_or(&stages[0]);
    let prefix = format!("{stage}/");
    let recorded: Vec<String> = available_step_metrics(runs)?.into_iter().filter(|m| m.starts_with(&prefix)).collect();
    let preferred = ["train/loss", "train/reward"].map(|m| format!("{prefix}{m}"));
    Ok(preferred
        .into_iter()
        .find(|m| recorded.contains(m))
        .or_else(|| recorded.first().cloned())
        .unwrap_or_else(|| format!("{prefix}train/loss")))
}

/// Names for sweep parameters in a legend: each path's last segment, or as many trailing
/// segments as it takes to tell the paths apart (`plugins.clip-higher.config.clip_high` is
/// `clip_high`; `ppo.kl.target` beside `rm.kl.target` is `ppo.kl.target`).
fn short_names(paths: &[String]) -> Vec<String> {
    let tail = |path: &str, n: usize| {
        let segments: Vec<&str> = path.split('.').collect();
        segments[segments.len().saturating_sub(n)..].join(".")
    };
    paths
        .iter()
        .map(|path| {
            let depth = path.split('.').count();
            (1..=depth)
                .map(|n| tail(path, n))
                .find(|short| paths.iter().filter(|other| other.ends_with(short.as_str())).count() == 1)
                .unwrap_or_else(|| path.clone())
        })
        .collect()
}

/// The plot of `metric` (`<stage>/<name>`) per step: a series per sweep point, the mean over its
/// seeds in a band from the lowest to the highest seed, labelled by the point's values. Points
/// whose runs share the stage (the same stage keys: a sweep over a later stage computes the
/// earlier ones once) drew the same curves, and are one series. With `smooth` above 1, each
/// seed's curve is first the mean of its last `smooth` recorded steps.
pub fn figure(runs: &[Run], metric: &str, smooth: usize) -> Result<Figure, CompareError> {
    // The per-step table checks the metric (and suggests a near name) the same way.
    step_table(runs, metric, false)?;
    let (stage, name) = metric.split_once('/').unwrap_or((metric, ""));
    let param_names: Vec<String> =
        runs.iter().flat_map(|r| r.manifest.sweep.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let short = short_names(&param_names);
    let several = runs.iter().map(Run::experiment).collect::<BTreeSet<_>>().len() > 1;
    let points = group_points(runs, &param_names);
    let label = |point: &Point| {
        let values: Vec<String> = param_names
            .iter()
            .zip(&short)
            .filter_map(|(path, short)| {
                let value = value_text(point.params.get(path)?);
                Some(if param_names.len() == 1 { value } else { format!("{short}={value}") })
            })
            .collect();
        match (values.is_empty(), several) {
            (true, _) => point.experiment.clone(),
            (false, false) => values.join(", "),
            (false, true) => format!("{}: {}", point.experiment, values.join(", ")),
        }
    };
    let mut groups: Vec<(Vec<String>, Vec<&Point>)> = Vec::new();
    for point in &points {
        let keys: Vec<String> = point.runs.iter().map(|run| stage_key(run, stage)).collect();
        match groups.iter_mut().find(|(k, _)| *k == keys) {
            Some((_, members)) => members.push(point),
            None => groups.push((keys, vec![point])),
        }
    }
    let mut series = Vec::with_capacity(groups.len());
    for (_, members) in &groups {
        let shared = members.len() > 1 && members.len() == points.len();
        let listed = members.iter().map(|p| label(p)).collect::<Vec<_>>().join("; ");
        let label = match members.len() {
            _ if shared => format!("every point (one {stage} stage)"),
            1 => listed,
            n if listed.chars().count() > 40 => format!("{n} points (one {stage} stage)"),
            _ => format!("{listed} (one {stage} stage)"),
        };
        let curves: Vec<BTreeMap<u64, f64>> = members[0]
            .runs
            .iter()
            .map(|run| Ok(trailing_mean(&run_curve(run, stage, name)?, smooth)))
            .collect::<Result<_, CompareError>>()?;
        series.push(seed_series(label, shared, &curves));
    }
    let seeds: BTreeSet<usize> = points.iter().map(|p| p.runs.len()).collect();
    let (fewest, most) = (seeds.first().copied().unwrap_or(1), seeds.last().copied().unwrap_or(1));
    let mut legend_notes = match (fewest, most) {
        (_, 1) => vec!["one seed per point".to_string()],
        (n, m) if n == m => vec![format!("line: mean of {m} seeds"), "band: lowest to highest seed".to_string()],
        (n, m) => vec![format!("line: mean of {n}-{m} seeds"), "band: lowest to highest seed".to_string()],
    };
    if smooth > 1 {
        legend_notes.push(format!("each seed: mean of its last {smooth} steps"));
    }
    let legend_title = match param_names.as_slice() {
        [] => "experiment".to_string(),
        [only] => only.clone(),
        _ => "sweep point".to_string(),
    };
    Ok(Figure {
        title: format!("{}: {metric}", experiments_label(runs)),
        x_label: "step".into(),
        y_label: metric.to_string(),
        legend_title,
        legend_notes,
        series,
    })
}

/// A curve whose value at each step is the mean of its values over the last `window` recorded
/// steps up to that one (fewer at the start).
fn trailing_mean(curve: &BTreeMap<u64, f64>, window: usize) -> BTreeMap<u64, f64> {
    let window = window.max(1);
    let values: Vec<f64> = curve.values().copied().collect();
    curve
        .keys()
        .enumerate()
        .map(|(i, step)| {
            let recent = &values[(i + 1).saturating_sub(window)..=i];
            (*step, recent.iter().sum::<f64>() / recent.len() as f64)
        })
        .collect()
}

/// One series from the seeds' curves: the mean at every step some seed has, and the band where
/// two or more do.
fn seed_series(label: String, shared: bool, curves: &[BTreeMap<u64, f64>]) -> Series {
    let steps: BTreeSet<u64> = curves.iter().flat_map(|c| c.keys().copied()).collect();
    let (mut mean, mut band) = (Vec::new(), Vec::new());
    for step in steps {
        let values: Vec<f64> = curves.iter().filter_map(|c| c.get(&step).copied()).collect();
        let x = step as f64;
        mean.push((x, values.iter().sum::<f64>() / values.len() as f64));
        if values.len() > 1 {
            let low = values.iter().copied().fold(f64::INFINITY, f64::min);
            let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            band.push((x, low, high));
        }
    }
    Series { label, mean, band, shared }
}

#[cfg(test)]
mod tests {
    use super::{short_names, trailing_mean};
    use std::collections::BTreeMap;

    #[test]
    fn the_trailing_mean_averages_the_last_recorded_steps() {
        let curve = BTreeMap::from([(1, 4.0), (2, 2.0), (5, 6.0), (9, 1.0)]);
        assert_eq!(trailing_mean(&curve, 1), curve);
        assert_eq!(trailing_mean(&curve, 3), BTreeMap::from([(1, 4.0), (2, 3.0), (5, 4.0), (9, 3.0)]));
    }

    #[test]
    fn legend_names_keep_the_segments_that_tell_paths_apart() {
        let paths = ["plugins.clip-higher.config.clip_high", "ppo.kl.target", "rm.kl.target", "dpo.train.lr"];
        let short = short_names(&paths.map(String::from));
        assert_eq!(short, ["clip_high", "ppo.kl.target", "rm.kl.target", "lr"]);
    }
}
