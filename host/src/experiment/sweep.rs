//! Sweeps: a grid over any config path of an experiment, and over seeds.
//!
//! ```ron
//! sweep: { "ppo.kl.target": [3.0, 6.0], "seed": [1, 2] },
//! ```
//!
//! A path starts with a stage name (`ppo.kl.target`) or a top-level field (`seed`,
//! `model.d_model`) and descends through fields; enum variants are stepped through
//! (`kl: Adaptive(target: 6.0)` is reached as `ppo.kl.target`). Every combination of values is
//! one point, and every point one run, named after its settings (`ppo.kl.target=3-seed1`).
//! Points are made by editing the experiment as JSON and reading it back, so a value of the
//! wrong type is refused with the same checks as the file itself.

use std::collections::BTreeMap;

use serde_json::Value;

use super::schema::{Experiment, StageSpec, Sweep};

/// A sweep that cannot be expanded.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("sweep: `{path}` has no values")]
    NoValues { path: String },
    #[error("sweep: `{path}`: `{first}` is neither a stage name nor a top-level field of the experiment")]
    UnknownTop { path: String, first: String },
    #[error("sweep: `{path}`: `{walked}` has no field `{field}`")]
    UnknownField { path: String, walked: String, field: String },
    /// A point whose values do not fit the schema (a word where a number goes...).
    #[error("sweep point {point}: {source}")]
    Point { point: String, source: serde_json::Error },
    #[error("sweep: the experiment cannot be written as JSON: {0}")]
    Json(serde_json::Error),
}

impl Sweep {
    /// `ppo.kl.target in [3.0, 6.0] x seed in [1, 2]`.
    pub fn describe(&self) -> String {
        let axes: Vec<String> = self
            .0
            .iter()
            .map(|(path, values)| {
                let shown: Vec<String> = values.iter().map(|v| label(&to_json(v))).collect();
                format!("{path} in [{}]", shown.join(", "))
            })
            .collect();
        format!("{} ({} runs)", axes.join(" x "), self.0.values().map(Vec::len).product::<usize>())
    }
}

/// One run of a (swept) experiment.
#[derive(Debug, Clone)]
pub struct RunPoint<S> {
    /// The run folder's name.
    pub run: String,
    /// The point's settings, seed excluded.
    pub settings: BTreeMap<String, Value>,
    /// The experiment with the settings applied (and no sweep left).
    pub experiment: Experiment<S>,
}

fn to_json(value: &ron::Value) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A value as it appears in a run name: numbers and strings bare.
fn label(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every point of the experiment's sweep (one point, the experiment itself, without a sweep).
pub fn expand<S: StageSpec>(experiment: &Experiment<S>) -> Result<Vec<RunPoint<S>>, SweepError> {
    let mut base = experiment.clone();
    let sweep = base.sweep.take().unwrap_or_default();
    let axes: Vec<(&String, &Vec<ron::Value>)> = sweep.0.iter().collect();
    if let Some((path, _)) = axes.iter().find(|(_, values)| values.is_empty()) {
        return Err(SweepError::NoValues { path: path.to_string() });
    }
    let base_json = serde_json::to_value(&base).map_err(SweepError::Json)?;
    let mut points = Vec::new();
    let combinations: usize = axes.iter().map(|(_, v)| v.len()).product();
    for index in 0..combinations {
        let mut json = base_json.clone();
        let mut settings = BTreeMap::new();
        let mut rest = index;
        for (path, values) in &axes {
            let value = to_json(&values[rest % values.len()]);
            rest /= values.len();
            set_path(&mut json, path, value.clone())?;
            if path.as_str() != "seed" {
                settings.insert(path.to_string(), value);
            }
        }
        let experiment: Experiment<S> = serde_json::from_value(json)
            .map_err(|source| SweepError::Point { point: describe_settings(&settings), source })?;
        let mut run = describe_settings(&settings);
        if !run.is_empty() {
            run.push('-');
        }
        run.push_str(&format!("seed{}", experiment.seed));
        points.push(RunPoint { run, settings, experiment });
    }
    Ok(points)
}

fn describe_settings(settings: &BTreeMap<String, Value>) -> String {
    settings.iter().map(|(p, v)| format!("{p}={}", label(v))).collect::<Vec<_>>().join(",")
}

/// Set `path` in the experiment's JSON to `value`.
fn set_path(json: &mut Value, path: &str, value: Value) -> Result<(), SweepError> {
    let mut segments = path.split('.');
    let first = segments.next().unwrap_or_default();
    let mut node = find_top(json, first)
        .ok_or_else(|| SweepError::UnknownTop { path: path.to_string(), first: first.to_string() })?;
    let mut walked = first.to_string();
    for (depth, segment) in segments.enumerate() {
        // A plugin's config block is the plugin's to check (when it is configured, before
        // anything runs): a field it leaves at its default can be swept without writing it out.
        let in_plugin_config = first == "plugins" && depth >= 2 && walked.split('.').nth(2) == Some("config");
        if in_plugin_config && node.is_null() {
            *node = Value::Object(serde_json::Map::new());
        }
        node = if in_plugin_config && node.is_object() {
            let Value::Object(fields) = node else { unreachable!("checked to be an object") };
            fields.entry(segment.to_string()).or_insert(Value::Null)
        } else {
            step_into(node, segment).ok_or_else(|| SweepError::UnknownField {
                path: path.to_string(),
                walked: walked.clone(),
                field: segment.to_string(),
            })?
        };
        walked = format!("{walked}.{segment}");
    }
    *node = value;
    Ok(())
}

/// A stage by name (its fields, inside the variant), or a top-level field.
fn find_top<'a>(json: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    let object = json.as_object_mut()?;
    if object.contains_key(name) && name != "stages" {
        return object.get_mut(name);
    }
    let stages = object.get_mut("stages")?.as_array_mut()?;
    stages.iter_mut().find_map(|stage| {
        let fields = stage.as_object_mut()?.values_mut().next()?;
        (fields.get("name")?.as_str()? == name).then_some(fields)
    })
}

/// A field of an object, stepping through an enum variant (`{"Adaptive": {...}}`) if needed.
fn step_into<'a>(node: &'a mut Value, field: &str) -> Option<&'a mut Value> {
    let object = node.as_object_mut()?;
    if object.contains_key(field) {
        return object.get_mut(field);
    }
    if object.len() == 1 {
        let inner = object.values_mut().next()?;
        return inner.as_object_mut()?.get_mut(field);
    }
    None
}
