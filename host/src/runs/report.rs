//! A training stage's `report.md`: each final metric beside its value at step 0 (the
//! improvement a reader looks for), and the time it took. Evaluation writes its own, fuller
//! report.

use std::collections::BTreeMap;
use std::path::Path;

use super::metrics::read_rows;
use crate::util::atomic::{FileError, write_atomically};

/// Write `dir/report.md` for stage `stage` from its final `metrics` and its `metrics.jsonl`.
pub fn write_training_report(
    dir: &Path,
    stage: &str,
    metrics: &BTreeMap<String, f64>,
    seconds: f64,
) -> Result<(), FileError> {
    let at_start: BTreeMap<String, f64> = read_rows(&dir.join("metrics.jsonl"))?
        .into_iter()
        .filter(|row| row.step == 0)
        .map(|row| (row.metric, row.value))
        .collect();
    let mut report = format!("# Stage `{stage}`\n\n| metric | at step 0 | at the end |\n|---|---|---|\n");
    for (name, value) in metrics {
        let start = at_start.get(name).map(|v| format!("{v:.4}")).unwrap_or_default();
        report.push_str(&format!("| {name} | {start} | {value:.4} |\n"));
    }
    report.push_str(&format!("\nTrained in {seconds:.1} s.\n"));
    write_atomically(&dir.join("report.md"), report.as_bytes())
}
