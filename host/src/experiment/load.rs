//! Reading an experiment file: RON parsing with positions, suggestions for misspelt names, and
//! the checks that must pass before any training starts.

use std::fmt;
use std::path::{Path, PathBuf};

use super::graph::stage_order;
use super::schema::{Experiment, ModelSpec, StageSpec};
use super::sweep::expand;
use crate::data::tokenizer::TokenizerSpec;
use crate::model::pretrained::PretrainedSource;

/// Why an experiment cannot run. Every variant says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}{hint}", hint = Hint(.suggestion))]
    Syntax { path: PathBuf, line: usize, column: usize, message: String, suggestion: Option<String> },
    /// A check across the experiment failed; `at` is the (line, column) of the name the
    /// message is about, when it can be found in the file.
    #[error("{path}{}: {message}", Position(.at))]
    Invalid { path: PathBuf, at: Option<(usize, usize)>, message: String },
    /// Stages that read a stage that does not exist, or each other in a cycle.
    #[error("{path}{}: {source}", Position(.at))]
    Graph { path: PathBuf, at: Option<(usize, usize)>, source: super::graph::GraphError },
    #[error("{path}: {source}")]
    Sweep { path: PathBuf, source: super::sweep::SweepError },
}

struct Position<'a>(&'a Option<(usize, usize)>);
impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// Where in `text` the message is about: the last `name` in backticks that appears in the file
/// as a quoted string (a stage, plugin or data name, a path).
fn locate(text: &str, message: &str) -> Option<(usize, usize)> {
    let names: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    names.iter().rev().find_map(|name| {
        let offset = text.find(&format!("\"{name}\""))? + 1;
        let line = text[..offset].matches('\n').count() + 1;
        let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        Some((line, column))
    })
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
pub fn load_experiment<S: StageSpec>(path: &Path) -> Result<Experiment<S>, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read { path: path.into(), source })?;
    parse_experiment(path, &text)
}

/// Parse and check experiment text; `path` is used in messages.
pub fn parse_experiment<S: StageSpec>(path: &Path, text: &str) -> Result<Experiment<S>, ExperimentError> {
    let experiment: Experiment<S> = ron_options().from_str(text).map_err(|e| {
        let suggestion = suggest(&e.code);
        let (line, column) = (e.span.start.line, e.span.start.col);
        let mut message = e.code.to_string();
        if let Some(field) = field_before(text, line, column) {
            message = format!("`{field}`: {message}");
        }
        let hint = match &e.code {
            ron::Error::IntegerOutOfBounds => " (counts and sizes are whole numbers, at least 0)",
            ron::Error::ExpectedInteger => " (a whole number, such as 200)",
            ron::Error::ExpectedFloat => " (a number, such as 3e-4)",
            ron::Error::ExpectedString | ron::Error::ExpectedStringEnd => " (text in double quotes)",
            _ => "",
        };
        message.push_str(hint);
        ExperimentError::Syntax { path: path.into(), line, column, message, suggestion }
    })?;
    let invalid = |message: String| ExperimentError::Invalid { path: path.into(), at: locate(text, &message), message };
    check(&experiment).map_err(invalid)?;
    if let Err(source) = stage_order(&experiment.stages) {
        let at = locate(text, &source.to_string());
        return Err(ExperimentError::Graph { path: path.into(), at, source });
    }
    if experiment.sweep.is_some() {
        expand(&experiment).map_err(|source| ExperimentError::Sweep { path: path.into(), source })?;
    }
    let base = path.parent().unwrap_or(Path::new(""));
    if let ModelSpec::Pretrained(spec) = &experiment.model {
        PretrainedSource::resolve(spec, base).map_err(|e| invalid(format!("model: {e}")))?;
    }
    for (name, plugin) in &experiment.plugins {
        let resolved = base.join(&plugin.path);
        if !resolved.exists() {
            let place = if plugin.path.is_absolute() {
                String::new()
            } else {
                format!(" ({} is relative to the experiment file's folder)", resolved.display())
            };
            return Err(invalid(format!("plugin `{name}`: `{}` does not exist{place}", plugin.path.display())));
        }
    }
    Ok(experiment)
}

/// The field whose value starts at (line, column), 1-based: `steps` in `steps: -30`.
fn field_before(text: &str, line: usize, column: usize) -> Option<&str> {
    let row = text.lines().nth(line.checked_sub(1)?)?;
    let before =
        row.get(..column.saturating_sub(1))?.trim_end_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
    let before = before.strip_suffix(':')?.trim_end();
    let start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
    let field = &before[start..];
    (!field.is_empty()).then_some(field)
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
    crate::util::names::nearest(found, expected.iter().copied()).map(str::to_string)
}

/// Checks that need the whole experiment: names that refer to each other, sizes that must be
/// positive, a model that can exist.
fn check<S: StageSpec>(experiment: &Experiment<S>) -> Result<(), String> {
    if experiment.stages.is_empty() {
        return Err("`stages` is empty: add at least one stage, e.g. Pretrain(...)".into());
    }
    if let Err(reason) = crate::runs::layout::check_folder_name(&experiment.name) {
        return Err(format!("name `{}` cannot name the experiment's runs folder: {reason}", experiment.name));
    }
    match (&experiment.model, &experiment.tokenizer) {
        (ModelSpec::Pretrained(name), Some(_)) => {
            return Err(format!(
                "`tokenizer` is set, but the pretrained model `{name}` brings its own: remove the `tokenizer` line"
            ));
        }
        (ModelSpec::Pretrained(_), None) => {}
        (_, None) => {
            return Err(
                "`tokenizer` is missing: a model trained here needs one, e.g. TrainBpe(vocab_size: 4096, on: \"data\")"
                    .into(),
            );
        }
        (spec, Some(tokenizer)) => {
            if let Some(mut model) = spec.architecture() {
                // The vocabulary size comes from the tokenizer when the file leaves it out.
                if model.vocab_size() == 0 {
                    model = model.with_vocab_size(1);
                }
                model.validate().map_err(|e| format!("model: {e}"))?;
                if let TokenizerSpec::TrainBpe { vocab_size, .. } = tokenizer {
                    let vocab = model.vocab_size().max(*vocab_size);
                    model = model.with_vocab_size(vocab);
                }
                check_fits_in_memory(&model)?;
                for stage in &experiment.stages {
                    stage.check_model(&model, tokenizer).map_err(|e| format!("stage `{}`: {e}", stage.name()))?;
                }
            }
        }
    }
    if let Some(corpus) = experiment.tokenizer.as_ref().and_then(|t| t.corpus())
        && !experiment.data.contains_key(corpus)
    {
        return Err(format!(
            "the tokenizer is trained on data `{corpus}`, which is not declared in `data`{}",
            declared(corpus, experiment.data.keys())
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for stage in &experiment.stages {
        let name = stage.name();
        if !seen.insert(name) {
            return Err(format!("two stages are named `{name}`: stage names must be unique"));
        }
        for data in stage.data() {
            if !experiment.data.contains_key(data) {
                return Err(format!(
                    "stage `{name}` reads data `{data}`, which is not declared in `data`{}",
                    declared(data, experiment.data.keys())
                ));
            }
        }
        for plugin in stage.plugins() {
            if !experiment.plugins.contains_key(plugin) {
                return Err(format!(
                    "stage `{name}` uses plugin `{plugin}`, which is not declared in `plugins`{}",
                    declared(plugin, experiment.plugins.keys())
                ));
            }
        }
        stage.validate().map_err(|problem| format!("stage `{name}`: {problem}"))?;
    }
    for input in experiment.stages.iter().flat_map(|s| s.inputs().into_iter().map(move |i| (s, i))) {
        let (stage, from) = input;
        if let Some(other) = experiment.stages.iter().find(|s| s.name() == from)
            && !other.produces_model()
        {
            return Err(format!(
                "stage `{}` starts from stage `{from}`, a {} stage, which produces no model",
                stage.name(),
                other.kind()
            ));
        }
    }
    Ok(())
}

/// Weights, gradients and AdamW's two moments are four f32 copies of every parameter: a model
/// whose copies alone exceed the machine's memory is refused here, not by an abort mid-run.
fn check_fits_in_memory(model: &crate::model::ModelConfig) -> Result<(), String> {
    let Some(memory) = crate::util::machine::memory_bytes() else { return Ok(()) };
    let bytes = model.num_parameters() as f64 * 16.0;
    if bytes > memory as f64 {
        let gib = |b: f64| b / f64::from(1u32 << 30);
        return Err(format!(
            "model: {} parameters (vocabulary {}, context {}) need {:.1} GiB for weights, gradients and AdamW moments \
             alone, more than this machine's {:.1} GiB: make the vocabulary, context or width smaller",
            model.num_parameters(),
            model.vocab_size(),
            model.context(),
            gib(bytes),
            gib(memory as f64)
        ));
    }
    Ok(())
}

/// ` (did you mean "b"? declared: a, b)`, ` (declared: a, b)`, or ` (none are declared)`. The
/// suggestion is quoted, not in backticks, so that the error's position stays on `found`.
fn declared<'a>(found: &str, names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        return " (none are declared)".into();
    }
    let suggestion = crate::util::names::nearest(found, names.iter().copied())
        .map(|name| format!("did you mean \"{name}\"? "))
        .unwrap_or_default();
    format!(" ({suggestion}declared: {})", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_name() {
        let error =
            ron::Error::NoSuchStructField { expected: &["steps", "batch", "lr"], found: "step".into(), outer: None };
        assert_eq!(suggest(&error).as_deref(), Some("steps"));
        let far = ron::Error::NoSuchStructField { expected: &["steps"], found: "learning_rate".into(), outer: None };
        assert_eq!(suggest(&far), None);
    }
}
