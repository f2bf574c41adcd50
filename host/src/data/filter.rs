//! Filtering: the experiment's filter plugins, in order, over a data set's records.
//!
//! Each filter sees the records the previous one kept, in batches (so a stateful filter such as
//! dedup sees every record once, in order) and decides per record: keep, drop with a reason, or
//! rewrite. A [`FilterReport`] counts what each filter did (records in, kept, rewritten,
//! dropped by reason), as a Markdown table for `report.md` and as JSON for the run store.
//!
//! A filter chain that leaves nothing is an error naming the filters and what they dropped, not
//! a training run of zero steps.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::source::{Origin, Record};
use crate::plugins::{Decision, FilterPlugin, PluginError, Sample};

/// Records per plugin call from [`apply_filters`] when the caller has no better size: large
/// enough that call overhead vanishes, small enough for a smooth progress bar.
pub const DEFAULT_BATCH: usize = 4096;

/// What one filter did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilterStep {
    /// The filter's name in the experiment.
    pub filter: String,
    /// sha256 of its wasm.
    pub sha256: String,
    /// Records it was given.
    pub records_in: usize,
    /// Records it let through, rewritten or not.
    pub kept: usize,
    /// Of those, the records it rewrote.
    pub rewritten: usize,
    /// Records it dropped: `records_in - kept`.
    pub dropped: usize,
    /// Dropped records by the reason the filter gave.
    pub reasons: BTreeMap<String, usize>,
}

/// What a chain of filters did to a data set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilterReport {
    /// Records before the first filter.
    pub records_in: usize,
    /// Records after the last.
    pub records_out: usize,
    /// One entry per filter, in the order they ran.
    pub steps: Vec<FilterStep>,
}

/// A failure while filtering.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A plugin failed; where one record was to blame, its origin is named.
    #[error("filter `{filter}`{at}: {source}", at = origin.as_ref().map(|o| format!(" on the record from {}:{}", o.file.display(), o.line)).unwrap_or_default())]
    Plugin { filter: String, origin: Option<Origin>, source: Box<PluginError> },
    /// The filters dropped every record.
    #[error("no records left after filtering with {}: {summary}", names(filters))]
    Empty { filters: Vec<String>, summary: String, report: Box<FilterReport> },
}

fn names(filters: &[String]) -> String {
    filters.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
}

/// Run `filters` in order over `records`, `batch` records per plugin call, with a progress bar
/// on a terminal. Returns the records kept (rewritten where a filter rewrote them; origins are
/// kept) and the report.
pub fn apply_filters(
    records: Vec<Record>,
    filters: &[&FilterPlugin],
    batch: usize,
) -> Result<(Vec<Record>, FilterReport), FilterError> {
    let batch = batch.max(1);
    let mut report = FilterReport { records_in: records.len(), records_out: records.len(), steps: Vec::new() };
    let mut current = records;
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} batches ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for filter in filters {
        progress.set_length(current.len().div_ceil(batch) as u64);
        progress.set_position(0);
        progress.set_message(filter.name().to_string());
        let mut step = FilterStep {
            filter: filter.name().to_string(),
            sha256: filter.sha256().to_string(),
            records_in: current.len(),
            ..FilterStep::default()
        };
        let mut kept = Vec::with_capacity(current.len());
        let mut remaining = current.into_iter().peekable();
        while remaining.peek().is_some() {
            let chunk: Vec<Record> = remaining.by_ref().take(batch).collect();
            let samples: Vec<Sample> = chunk
                .iter()
                .map(|r| Sample {
                    text: r.text.clone(),
                    fields: r.fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                })
                .collect();
            let decisions = filter.filter(&samples).map_err(|source| FilterError::Plugin {
                filter: filter.name().to_string(),
                origin: source.record.and_then(|i| chunk.get(i)).map(|r| r.origin.clone()),
                source: Box::new(source),
            })?;
            for (record, decision) in chunk.into_iter().zip(decisions) {
                apply_decision(record, decision, &mut step, &mut kept);
            }
            progress.inc(1);
        }
        tracing::info!(
            filter = step.filter,
            records_in = step.records_in,
            kept = step.kept,
            rewritten = step.rewritten,
            dropped = step.dropped,
            "filtered"
        );
        report.steps.push(step);
        report.records_out = kept.len();
        if kept.is_empty() {
            progress.finish_and_clear();
            let filters: Vec<String> = report.steps.iter().map(|s| s.filter.clone()).collect();
            let summary = report.summary();
            return Err(FilterError::Empty { filters, summary, report: Box::new(report) });
        }
        current = kept;
    }
    progress.finish_and_clear();
    Ok((current, report))
}

/// Apply one decision to one record, counting it in `step`.
fn apply_decision(mut record: Record, decision: Decision, step: &mut FilterStep, kept: &mut Vec<Record>) {
    match decision {
        Decision::Keep => {
            step.kept += 1;
            kept.push(record);
        }
        Decision::Drop(reason) => {
            step.dropped += 1;
            *step.reasons.entry(reason).or_default() += 1;
        }
        Decision::Rewrite(sample) => {
            step.kept += 1;
            step.rewritten += 1;
            record.text = sample.text;
            record.fields = sample.fields.into_iter().collect();
            kept.push(record);
        }
    }
}

/// `|` inside a Markdown table cell would end the cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl FilterReport {
    /// One line per filter: "`clean`: 10605 in, 9876 kept (too short (min_chars 20): 700, ...)".
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                let reasons: Vec<String> = sorted_reasons(s).iter().map(|(r, n)| format!("{r}: {n}")).collect();
                format!("`{}`: {} in, {} kept ({})", s.filter, s.records_in, s.kept, reasons.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Two Markdown tables: counts per filter (with a total row), then drops per reason.
    pub fn to_markdown(&self) -> String {
        let mut out =
            String::from("| filter | in | kept | rewritten | dropped |\n| --- | ---: | ---: | ---: | ---: |\n");
        for s in &self.steps {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                cell(&s.filter),
                s.records_in,
                s.kept,
                s.rewritten,
                s.dropped
            );
        }
        let rewritten: usize = self.steps.iter().map(|s| s.rewritten).sum();
        let _ = writeln!(
            out,
            "| **total** | {} | {} | {} | {} |",
            self.records_in,
            self.records_out,
            rewritten,
            self.records_in - self.records_out
        );
        if self.steps.iter().any(|s| !s.reasons.is_empty()) {
            out.push_str("\n| filter | drop reason | records |\n| --- | --- | ---: |\n");
            for s in &self.steps {
                for (reason, count) in sorted_reasons(s) {
                    let _ = writeln!(out, "| `{}` | {} | {} |", cell(&s.filter), cell(reason), count);
                }
            }
        }
        out
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// A step's reasons, most frequent first (ties by name).
fn sorted_reasons(step: &FilterStep) -> Vec<(&str, usize)> {
    let mut reasons: Vec<(&str, usize)> = step.reasons.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn record(text: &str, line: usize) -> Record {
        Record {
            text: text.into(),
            fields: BTreeMap::from([("id".to_string(), line.to_string())]),
            origin: Origin { file: PathBuf::from("r.tsv"), line },
        }
    }

    #[test]
    fn decisions_are_applied_and_counted() {
        let mut step = FilterStep { filter: "f".into(), records_in: 4, ..FilterStep::default() };
        let mut kept = Vec::new();
        let decisions = [
            Decision::Keep,
            Decision::Drop("too short".into()),
            Decision::Rewrite(Sample { text: "NEW".into(), fields: vec![("lang".into(), "en".into())] }),
            Decision::Drop("too short".into()),
        ];
        for (i, d) in decisions.into_iter().enumerate() {
            apply_decision(record(&format!("r{i}"), i + 1), d, &mut step, &mut kept);
        }
        assert_eq!((step.kept, step.rewritten, step.dropped), (2, 1, 2));
        assert_eq!(step.reasons, BTreeMap::from([("too short".to_string(), 2)]));
        assert_eq!(kept[0], record("r0", 1));
        // A rewrite replaces text and fields and keeps the origin.
        assert_eq!(kept[1].text, "NEW");
        assert_eq!(kept[1].fields, BTreeMap::from([("lang".to_string(), "en".to_string())]));
        assert_eq!(kept[1].origin.line, 3);

        let report = FilterReport { records_in: 4, records_out: 2, steps: vec![step] };
        let md = report.to_markdown();
        assert!(md.contains("| `f` | 4 | 2 | 1 | 2 |"), "{md}");
        assert!(md.contains("| **total** | 4 | 2 | 1 | 2 |"), "{md}");
        assert!(md.contains("| `f` | too short | 2 |"), "{md}");
        let back: FilterReport = serde_json::from_str(&report.to_json()).expect("JSON round trip");
        assert_eq!(back, report);
    }
}
