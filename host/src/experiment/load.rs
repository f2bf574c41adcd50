//! Reading an experiment file: RON parsing with positions, suggestions for misspelt names, and
//! the checks that must pass before any training starts.

use std::fmt;
use std::path::{Path, PathBuf};

use super::schema::{Experiment, Stage};

/// Why an experiment cannot run. Every variant says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}{hint}", hint = Hint(.suggestion))]
    Syntax { path: PathBuf, line: usize, column: usize, message: String, suggestion: Option<String> },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

struct Hint<'a>(&'a Option<String>);
impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean `{s}`?)"),
            None => Ok(()),
        }
    }
}

/// Read, parse and check an experiment file.
pub fn load_experiment(path: &Path) -> Result<Experiment, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read { path: path.into(), source })?;
    parse_experiment(path, &text)
}

/// Parse and check experiment text; `path` is used in messages.
pub fn parse_experiment(path: &Path, text: &str) -> Result<Experiment, ExperimentError> {
    let experiment: Experiment = ron_options().from_str(text).map_err(|e| {
        let suggestion = suggest(&e.code);
        ExperimentError::Syntax {
            path: path.into(),
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
            suggestion,
        }
    })?;
    check(&experiment).map_err(|message| ExperimentError::Invalid { path: path.into(), message })?;
    Ok(experiment)
}

/// RON as experiments are written: `Pretrain(name: ...)` rather than `Pretrain((name: ...))`.
pub fn ron_options() -> ron::Options {
    ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES)
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
}

/// The closest valid name to a misspelt one.
fn suggest(error: &ron::Error) -> Option<String> {
    let (found, expected): (&str, &[&str]) = match error {
        ron::Error::NoSuchStructField { found, expected, .. } => (found, expected),
        ron::Error::NoSuchEnumVariant { found, expected, .. } => (found, expected),
        _ => return None,
    };
    expected
        .iter()
        .map(|candidate| (edit_distance(found, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min()
        .map(|(_, candidate)| candidate.to_string())
}

/// Levenshtein distance between two names, in characters (for did-you-mean suggestions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Checks that need the whole experiment: names that refer to each other, sizes that must be
/// positive, a model that can exist.
fn check(experiment: &Experiment) -> Result<(), String> {
    if experiment.stages.is_empty() {
        return Err("`stages` is empty: add at least one stage, e.g. Pretrain(...)".into());
    }
    // The vocabulary size comes from the tokenizer when the file leaves it out.
    let mut model = experiment.model.clone();
    if model.vocab_size() == 0 {
        model = model.with_vocab_size(1);
    }
    model.validate().map_err(|e| format!("model: {e}"))?;
    let mut seen = std::collections::BTreeSet::new();
    for stage in &experiment.stages {
        let name = stage.name();
        if !seen.insert(name) {
            return Err(format!("two stages are named `{name}`: stage names must be unique"));
        }
        match stage {
            Stage::Pretrain(p) => {
                let known = |map_keys: Vec<&String>| map_keys.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ");
                if !experiment.data.contains_key(&p.data) {
                    return Err(format!(
                        "stage `{name}` reads data `{}`, which is not declared in `data` (declared: {})",
                        p.data,
                        known(experiment.data.keys().collect())
                    ));
                }
                for filter in &p.filters {
                    if !experiment.plugins.contains_key(filter) {
                        return Err(format!(
                            "stage `{name}` uses filter `{filter}`, which is not declared in `plugins` (declared: {})",
                            known(experiment.plugins.keys().collect())
                        ));
                    }
                }
                if p.steps == 0 || p.batch == 0 || p.accumulation == 0 {
                    return Err(format!("stage `{name}`: steps, batch and accumulation must be positive"));
                }
                if !(p.lr > 0.0 && p.lr.is_finite()) {
                    return Err(format!("stage `{name}`: lr must be a positive number, got {}", p.lr));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_name() {
        assert_eq!(edit_distance("stpes", "steps"), 2);
        let error = ron::Error::NoSuchStructField { expected: &["steps", "batch", "lr"], found: "step".into(), outer: None };
        assert_eq!(suggest(&error).as_deref(), Some("steps"));
        let far = ron::Error::NoSuchStructField { expected: &["steps"], found: "learning_rate".into(), outer: None };
        assert_eq!(suggest(&far), None);
    }
}
