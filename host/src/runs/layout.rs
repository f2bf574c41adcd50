//! Where an experiment's runs live, and how a run folder points at the stage outputs it uses:
//!
//! ```text
//! runs/<experiment>/
//!   stages/<stage>-<key>/      a stage's output, shared by every run whose stage has that key
//!   <run>/                     one run: manifest.json, experiment.ron, a link per stage
//!   history/<run>@<time>/      an earlier run of the same name, kept when a changed experiment
//!                              ran under that name (its manifest and links, as they were)
//! ```
//!
//! A run's links and its manifest's keys always agree: the pipeline points every link at its new
//! key and writes the manifest (marked incomplete) before the first stage runs, and marks it
//! complete after the last. The run it replaces, if its keys differ, moves to `history/` first,
//! so its results stay listable and comparable (`triad compare runs/<experiment>/history`).

use std::path::{Path, PathBuf};

use super::StoreError;
use super::manifest::Manifest;

/// An experiment's folder of runs.
#[derive(Debug, Clone)]
pub struct ExperimentDir {
    root: PathBuf,
}

impl ExperimentDir {
    /// `runs_root/<name>`; the name must be one plain folder name, so that no experiment writes
    /// outside `runs_root`.
    pub fn new(runs_root: &Path, name: &str) -> Result<Self, StoreError> {
        check_folder_name(name).map_err(|reason| StoreError::Name { name: name.to_string(), reason })?;
        Ok(ExperimentDir { root: runs_root.join(name) })
    }

    /// `runs/<experiment>/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A run's folder.
    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.root.join(run)
    }

    /// The shared folder holding a stage's output for a key.
    pub fn stage_store(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(STAGES).join(format!("{stage}-{key}"))
    }

    /// Where replaced runs are kept.
    pub fn history(&self) -> PathBuf {
        self.root.join(HISTORY)
    }

    /// Hold the experiment's folder for this process until the lock is dropped: a second
    /// `triad run` on the same folder stops with a clear message instead of training the same
    /// stages again. The operating system releases the lock when a process dies, even by
    /// SIGKILL, so a killed run never leaves the folder locked.
    pub fn lock(&self) -> Result<RunsLock, StoreError> {
        let path = self.root.join(".lock");
        let io = |source| StoreError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(RunsLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { dir: self.root.clone() }),
            Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
        }
    }
}

/// An experiment folder held by this process (see [`ExperimentDir::lock`]).
#[derive(Debug)]
pub struct RunsLock {
    _file: std::fs::File,
}

/// The folder of shared stage outputs, beside the runs.
pub const STAGES: &str = "stages";
/// The folder of replaced runs, beside the runs.
pub const HISTORY: &str = "history";

/// Why `name` cannot be a folder name inside the runs folder, if it cannot.
pub fn check_folder_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err("it must be a plain folder name: no `/`, `\\`, `.` or `..`");
    }
    if name == STAGES || name == HISTORY {
        return Err("`stages` and `history` are the names of the store's own folders");
    }
    Ok(())
}

/// Point the run's view of `stage` (`run_dir/<stage>`) at the stage's shared output folder.
pub fn link_stage(run_dir: &Path, stage: &str, store: &Path) -> Result<(), StoreError> {
    let target = Path::new("..").join(STAGES).join(store.file_name().unwrap_or_default());
    replace_link(&run_dir.join(stage), &target)
}

fn replace_link(link: &Path, target: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: link.to_path_buf(), source };
    if let Ok(existing) = std::fs::read_link(link) {
        if existing == target {
            return Ok(());
        }
        std::fs::remove_file(link).map_err(io)?;
    } else if link.exists() {
        return Err(StoreError::NotALink { path: link.to_path_buf() });
    }
    symlink_dir(target, link).map_err(io)
}

#[cfg(unix)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

/// Move the run in `run_dir` (its manifest, experiment file and stage links; the tokenizer is
/// copied) to `history/<run>@<time>/`, its manifest marked archived. Returns where it went.
pub fn archive_run(experiment: &ExperimentDir, run_dir: &Path, manifest: &Manifest) -> Result<PathBuf, StoreError> {
    let stamp = utc_stamp(std::time::SystemTime::now());
    let run = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let history = experiment.history();
    let mut label = stamp.clone();
    let mut n = 1;
    while history.join(format!("{run}@{label}")).exists() {
        n += 1;
        label = format!("{stamp}-{n}");
    }
    let dir = history.join(format!("{run}@{label}"));
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
    for stage in &manifest.stages {
        let link = run_dir.join(stage);
        if let Ok(target) = std::fs::read_link(&link) {
            // From `history/<run>@<time>/`, the shared outputs are one folder further up.
            replace_link(&dir.join(stage), &Path::new("..").join(target))?;
            std::fs::remove_file(&link).map_err(|source| StoreError::Io { path: link.clone(), source })?;
        }
    }
    for (file, keep) in [("experiment.ron", false), ("tokenizer.json", true)] {
        let from = run_dir.join(file);
        if from.is_file() {
            let to = dir.join(file);
            let done = if keep { std::fs::copy(&from, &to).map(|_| ()) } else { std::fs::rename(&from, &to) };
            done.map_err(|source| StoreError::Io { path: to, source })?;
        }
    }
    Manifest { archived: Some(label), ..manifest.clone() }.write(&dir)?;
    let old = run_dir.join(Manifest::FILE);
    std::fs::remove_file(&old).map_err(|source| StoreError::Io { path: old, source })?;
    Ok(dir)
}

/// `2026-12-07T03-24-52Z`: a UTC time usable in a folder name on every platform.
fn utc_stamp(time: std::time::SystemTime) -> String {
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_dates() {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(utc_stamp(at(0)), "1970-01-01T00-00-00Z");
        assert_eq!(utc_stamp(at(951_782_400)), "2000-02-29T00-00-00Z");
        assert_eq!(utc_stamp(at(1_796_614_012)), "2026-12-07T03-26-52Z");
    }

    #[test]
    fn experiment_names_stay_inside_the_runs_folder() {
        for bad in ["", "..", "../../x", "/abs", "a/b", "stages", "history"] {
            assert!(ExperimentDir::new(Path::new("runs"), bad).is_err(), "{bad:?} accepted");
        }
        assert!(ExperimentDir::new(Path::new("runs"), "sentiment-rlhf").is_ok());
    }
}
