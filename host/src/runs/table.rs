//! Runs as tables: finding run folders, reading what a run left behind (its manifest, each
//! stage's `stage.json` and metrics), and the Parquet/CSV files that carry tables out.
//!
//! A run folder is any folder with a `manifest.json`; its stages are `<run>/<stage>/` (a link to
//! a stage folder shared by several runs). The long metrics format
//! (`stage, step, metric, value`) is the same in `metrics.jsonl`, written as the stage runs, and
//! `metrics.parquet`, written once when it ends ([`write_metrics_parquet`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::StoreError;
use super::layout::{HISTORY, STAGES};
use super::manifest::Manifest;
use super::metrics::{MetricRow, read_rows};
use super::stage_record::StageRecord;
use crate::util::atomic::{FileError, write_with};

/// What can go wrong reading runs or writing tables.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Polars { path: PathBuf, source: PolarsError },
    #[error("{path}: unknown table format: name the file .csv, .parquet or .md")]
    UnknownFormat { path: PathBuf },
    #[error(
        "no runs found in {searched}: a run is a folder with a manifest.json, as `triad run` writes under runs/<experiment>/"
    )]
    NoRuns { searched: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn polars_error(path: &Path) -> impl Fn(PolarsError) -> TableError + '_ {
    move |source| TableError::Polars { path: path.to_path_buf(), source }
}

/// The long metrics table: columns `stage` (str), `step` (u64), `metric` (str), `value` (f64).
pub fn metrics_frame(rows: &[MetricRow]) -> PolarsResult<DataFrame> {
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("stage".into(), rows.iter().map(|r| r.stage.as_str()).collect::<Vec<_>>()),
            Column::new("step".into(), rows.iter().map(|r| r.step).collect::<Vec<u64>>()),
            Column::new("metric".into(), rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>()),
            Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<f64>>()),
        ],
    )
}

/// Rows back out of a long metrics table (the inverse of [`metrics_frame`]).
pub fn metric_rows(frame: &DataFrame) -> PolarsResult<Vec<MetricRow>> {
    let stage = frame.column("stage")?.str()?;
    let step = frame.column("step")?.u64()?;
    let metric = frame.column("metric")?.str()?;
    let value = frame.column("value")?.f64()?;
    let mut rows = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        if let (Some(stage), Some(step), Some(metric), Some(value)) =
            (stage.get(i), step.get(i), metric.get(i), value.get(i))
        {
            rows.push(MetricRow { stage: stage.to_string(), step, metric: metric.to_string(), value });
        }
    }
    Ok(rows)
}

/// Convert a stage's `metrics.jsonl` into `metrics.parquet` (written atomically), returning the
/// number of rows. A torn last line is skipped, as [`read_rows`] does.
pub fn write_metrics_parquet(jsonl: &Path, parquet: &Path) -> Result<usize, TableError> {
    let rows = read_rows(jsonl)?;
    let mut frame = metrics_frame(&rows).map_err(polars_error(parquet))?;
    write_frame(&mut frame, parquet)?;
    Ok(rows.len())
}

/// Every row of a `metrics.parquet`.
pub fn read_metrics_parquet(path: &Path) -> Result<Vec<MetricRow>, TableError> {
    let frame = read_frame(path)?;
    metric_rows(&frame).map_err(polars_error(path))
}

/// A stage folder's metric rows: from `metrics.parquet` when the stage wrote one, else from
/// `metrics.jsonl` (none when neither exists).
pub fn read_stage_metrics(stage_dir: &Path) -> Result<Vec<MetricRow>, TableError> {
    let parquet = stage_dir.join("metrics.parquet");
    if parquet.is_file() {
        return read_metrics_parquet(&parquet);
    }
    Ok(read_rows(&stage_dir.join("metrics.jsonl"))?)
}

/// Table file formats, told by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Csv,
    Parquet,
    Markdown,
}

impl TableFormat {
    /// The format a path's extension names (`.csv`, `.parquet`, `.md`), if any.
    pub fn of(path: &Path) -> Option<TableFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(TableFormat::Csv),
            "parquet" | "pq" => Some(TableFormat::Parquet),
            "md" | "markdown" => Some(TableFormat::Markdown),
            _ => None,
        }
    }
}

/// Write a DataFrame as CSV or Parquet (by `path`'s extension), atomically.
pub fn write_frame(frame: &mut DataFrame, path: &Path) -> Result<(), TableError> {
    let format = TableFormat::of(path).filter(|f| *f != TableFormat::Markdown);
    let Some(format) = format else {
        return Err(TableError::UnknownFormat { path: path.to_path_buf() });
    };
    let io = |p: &Path, e: std::io::Error| TableError::File(FileError::new(p, e));
    write_with(
        path,
        |out| {
            match format {
                TableFormat::Csv => {
                    CsvWriter::new(&mut *out).include_header(true).finish(frame).map_err(polars_error(path))?
                }
                _ => {
                    // Snappy: what pyarrow and most readers expect by default, and fast.
                    ParquetWriter::new(&mut *out)
                        .with_compression(ParquetCompression::Snappy)
                        .finish(frame)
                        .map_err(polars_error(path))?;
                }
            }
            out.flush().map_err(|e| io(path, e))
        },
        io,
    )
}

/// Read a CSV (with a header) or Parquet file (by extension) into a DataFrame.
pub fn read_frame(path: &Path) -> Result<DataFrame, TableError> {
    match TableFormat::of(path) {
        Some(TableFormat::Csv) => CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(|reader| reader.finish())
            .map_err(polars_error(path)),
        Some(TableFormat::Parquet) => {
            let file = File::open(path).map_err(|e| FileError::new(path, e))?;
            ParquetReader::new(file).finish().map_err(polars_error(path))
        }
        _ => Err(TableError::UnknownFormat { path: path.to_path_buf() }),
    }
}

/// One run folder, read.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Every stage that has a `stage.json`, in pipeline order.
    pub stages: Vec<(String, StageRecord)>,
}

impl Run {
    /// The run's name: the manifest's, else the folder's.
    pub fn name(&self) -> String {
        if !self.manifest.run.is_empty() {
            return self.manifest.run.clone();
        }
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The run's experiment: the manifest's, else the parent folder's name; an archived run's
    /// carries when it was replaced (`sentiment-rlhf@2026-12-07T03-24-52Z`), so that it never
    /// merges with the current runs in a table.
    pub fn experiment(&self) -> String {
        let name = if self.manifest.experiment.is_empty() {
            self.dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            self.manifest.experiment.clone()
        };
        match &self.manifest.archived {
            Some(stamp) => format!("{name}@{stamp}"),
            None => name,
        }
    }

    /// Whether every stage of the run finished.
    pub fn complete(&self) -> bool {
        self.manifest.complete
    }

    /// Final metrics of the stages that completed, as `<stage>/<metric>`. A stage that did not
    /// finish contributes nothing: its numbers are not final.
    pub fn final_metrics(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (stage, summary) in &self.stages {
            if summary.complete {
                for (metric, value) in &summary.metrics {
                    out.insert(format!("{stage}/{metric}"), *value);
                }
            }
        }
        out
    }

    /// The metric rows a stage recorded (none if the run never reached it).
    pub fn stage_metrics(&self, stage: &str) -> Result<Vec<MetricRow>, TableError> {
        read_stage_metrics(&self.dir.join(stage))
    }

    /// Stage names in pipeline order: the manifest's list, else the stage folders found.
    pub fn stage_names(&self) -> Vec<String> {
        if self.manifest.stages.is_empty() {
            self.stages.iter().map(|(name, _)| name.clone()).collect()
        } else {
            self.manifest.stages.clone()
        }
    }
}

/// Read a run folder: its manifest and each stage's `stage.json`.
pub fn load_run(dir: &Path) -> Result<Run, TableError> {
    let manifest = Manifest::read(dir)?.ok_or_else(|| TableError::NoRuns { searched: dir.display().to_string() })?;
    let mut names = manifest.stages.clone();
    if names.is_empty() {
        // No stage list (an older or hand-made run): every subfolder with a stage.json, by name.
        let entries = std::fs::read_dir(dir).map_err(|e| FileError::new(dir, e))?;
        for entry in entries.flatten() {
            if entry.path().join(StageRecord::FILE).is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
    }
    let mut stages = Vec::new();
    for name in names {
        if let Some(record) = StageRecord::read(&dir.join(&name))? {
            stages.push((name, record));
        }
    }
    Ok(Run { dir: dir.to_path_buf(), manifest, stages })
}

/// Run folders at or below `dir`, down to `depth` levels (a run's own subfolders are stages,
/// not runs, so the search stops at a run).
fn collect_run_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), TableError> {
    if dir.join(Manifest::FILE).is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if depth == 0 {
        return Ok(());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| FileError::new(dir, e))?
        .flatten()
        .map(|entry| entry.path())
        // Shared stage outputs are not runs, and replaced runs are compared only when asked
        // for by their folder (`runs/<experiment>/history`).
        .filter(|path| path.is_dir() && !path.file_name().is_some_and(|n| n == STAGES || n == HISTORY))
        .collect();
    children.sort();
    for child in children {
        collect_run_dirs(&child, depth - 1, out)?;
    }
    Ok(())
}

/// Find and read every run named by `paths`: a run folder, or a folder of runs
/// (`runs/<experiment>`, its `history`, or `runs/` itself). Each run is read once, in path order.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<Run>, TableError> {
    let mut dirs = Vec::new();
    for path in paths {
        if path.is_file() {
            return Err(TableError::Invalid {
                path: path.clone(),
                message: "not a run folder or a folder of runs".into(),
            });
        }
        if !path.is_dir() {
            return Err(TableError::File(FileError::new(path, "no such file or folder")));
        }
        collect_run_dirs(path, 2, &mut dirs)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut runs = Vec::new();
    for dir in dirs {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if seen.insert(canonical) {
            runs.push(load_run(&dir)?);
        }
    }
    if runs.is_empty() {
        let searched = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(TableError::NoRuns { searched });
    }
    Ok(runs)
}
