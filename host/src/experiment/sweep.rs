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

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::Experiment;

/// The grid: config path -> the values it takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sweep(pub BTreeMap<String, Vec<ron::Value>>);

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
pub struct RunPoint {
    /// The run folder's name.
    pub run: String,
    /// The point's settings, seed excluded.
    pub settings: BTreeMap<String, Value>,
    /// The experiment with the settings applied (and no sweep left).
    pub experiment: Experiment,
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
pub fn expand(experiment: &Experiment) -> Result<Vec<RunPoint>, String> {
    let mut base = experiment.clone();
    let sweep = base.sweep.take().unwrap_or_default();
    let axes: Vec<(&String, &Vec<ron::Value>)> = sweep.0.iter().collect();
    if let Some((path, _)) = axes.iter().find(|(_, values)| values.is_empty()) {
        return Err(format!("sweep: `{path}` has no values"));
    }
    let base_json = serde_json::to_value(&base).map_err(|e| format!("sweep: {e}"))?;
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
        let experiment: Experiment = serde_json::from_value(json)
            .map_err(|e| format!("sweep point {}: {e}", describe_settings(&settings)))?;
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
fn set_path(json: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut segments = path.split('.');
    let first = segments.next().unwrap_or_default();
    let mut node = find_top(json, first).ok_or_else(|| {
        format!("sweep: `{path}`: `{first}` is neither a stage name nor a top-level field of the experiment")
    })?;
    let mut walked = first.to_string();
    for segment in segments {
        node = step_into(node, segment).ok_or_else(|| format!("sweep: `{path}`: `{walked}` has no field `{segment}`"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{KlControl, Stage, parse_experiment};

    fn experiment(sweep: &str) -> Result<Experiment, String> {
        let text = format!(
            r#"Experiment(
                name: "s", seed: 1,
                data: {{ "d": Text(path: "d.txt") }},
                tokenizer: Char(on: "d"),
                model: Gpt(layers: 1, heads: 1, d_model: 8, context: 8),
                stages: [
                    Pretrain(name: "base", data: "d", train: (steps: 10, batch: 2, lr: 1e-3)),
                    Ppo(name: "ppo", policy: "base", prompts: (data: "d", format: Continuation(words: 2)),
                        reward: [Model(stage: "base")], train: (steps: 2, rollouts: 4, minibatch: 2)),
                ],
                sweep: {sweep},
            )"#
        );
        parse_experiment(std::path::Path::new("s.ron"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_grid_of_two_values_and_two_seeds_makes_four_named_runs() {
        let points = expand(&experiment(r#"{ "ppo.kl.target": [3.0, 6.0], "seed": [1, 2] }"#).expect("valid")).expect("points");
        let names: Vec<&str> = points.iter().map(|p| p.run.as_str()).collect();
        assert_eq!(names, ["ppo.kl.target=3.0-seed1", "ppo.kl.target=6.0-seed1", "ppo.kl.target=3.0-seed2", "ppo.kl.target=6.0-seed2"]);
        let Stage::Ppo(ppo) = &points[1].experiment.stages[1] else { panic!("a PPO stage") };
        assert!(matches!(ppo.kl, KlControl::Adaptive { target, .. } if target == 6.0));
        assert_eq!(points[3].experiment.seed, 2);
        assert_eq!(points[3].settings.len(), 1, "the seed is not a setting of the point");
    }

    #[test]
    fn a_path_that_names_nothing_is_refused_with_where_it_stopped() {
        let error = experiment(r#"{ "ppo.kl.targt": [3.0] }"#).expect_err("invalid");
        assert!(error.contains("`ppo.kl` has no field `targt`"), "{error}");
        let error = experiment(r#"{ "pp.lr": [3.0] }"#).expect_err("invalid");
        assert!(error.contains("`pp` is neither a stage name nor a top-level field"), "{error}");
        let error = experiment(r#"{ "ppo.train.steps": ["many"] }"#).expect_err("invalid");
        assert!(error.contains("sweep point"), "{error}");
    }
}
