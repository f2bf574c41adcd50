//! JSON Lines ⇄ plugin records, for `triad plugin run` and for tests that feed plugins from
//! files. Each input line is one record; errors name the line.

use serde_json::{Map, Value, json};

use super::{Decision, Episode, Feature, FeatureValues, LossBatch, LossOutput, MetricRecord, NamedValue, Sample};

/// A malformed input line.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RecordError {
    /// 1-based line number in the input.
    pub line: usize,
    pub message: String,
}

fn parse_lines(text: &str) -> impl Iterator<Item = Result<(usize, Value), RecordError>> + '_ {
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| {
        serde_json::from_str(l)
            .map(|v| (i + 1, v))
            .map_err(|e| RecordError { line: i + 1, message: format!("not JSON: {e}") })
    })
}

fn string_field(object: &Map<String, Value>, key: &str, line: usize) -> Result<String, RecordError> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(RecordError { line, message: format!("`{key}` must be a string, found {other}") }),
        None => Err(RecordError { line, message: format!("missing field `{key}`") }),
    }
}

fn object(value: &Value, line: usize) -> Result<&Map<String, Value>, RecordError> {
    value.as_object().ok_or_else(|| RecordError { line, message: "expected a JSON object".into() })
}

/// Samples: `{"text": "...", "<other column>": "..."}` or a bare JSON string.
pub fn samples(text: &str) -> Result<Vec<Sample>, RecordError> {
    parse_lines(text)
        .map(|line| {
            let (line, value) = line?;
            if let Value::String(s) = value {
                return Ok(Sample { text: s, fields: Vec::new() });
            }
            let object = object(&value, line)?;
            let fields = object
                .iter()
                .filter(|(k, _)| k.as_str() != "text")
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect();
            Ok(Sample { text: string_field(object, "text", line)?, fields })
        })
        .collect()
}

/// Episodes: `{"prompt": "...", "response": "...", "reference": "..."?}`.
pub fn episodes(text: &str) -> Result<Vec<Episode>, RecordError> {
    parse_lines(text)
        .map(|line| {
            let (line, value) = line?;
            let object = object(&value, line)?;
            Ok(Episode {
                prompt: string_field(object, "prompt", line).unwrap_or_default(),
                response: string_field(object, "response", line)?,
                reference: object.get("reference").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// Metric records: `{"prediction": "...", "references": ["..."]}` (or `"reference": "..."`).
pub fn metric_records(text: &str) -> Result<Vec<MetricRecord>, RecordError> {
    parse_lines(text)
        .map(|line| {
            let (line, value) = line?;
            let object = object(&value, line)?;
            let references = match (object.get("references"), object.get("reference")) {
                (Some(Value::Array(refs)), _) => refs
                    .iter()
                    .map(|r| r.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| RecordError { line, message: "`references` must hold strings".into() })?,
                (_, Some(Value::String(r))) => vec![r.clone()],
                _ => return Err(RecordError { line, message: "missing `references` (or `reference`)".into() }),
            };
            Ok(MetricRecord { prediction: string_field(object, "prediction", line)?, references })
        })
        .collect()
}

/// Loss batches: `{"sequence_offsets": [0, 3, 5], "features": {"logprob": [...], ...}}`.
pub fn loss_batches(text: &str) -> Result<Vec<LossBatch>, RecordError> {
    parse_lines(text)
        .map(|line| {
            let (line, value) = line?;
            let batch: LossBatchJson = serde_json::from_value(value)
                .map_err(|e| RecordError { line, message: format!("not a loss batch: {e}") })?;
            let features = batch
                .features
                .into_iter()
                .map(|(name, values)| {
                    feature_from_name(&name)
                        .map(|feature| FeatureValues { feature, values })
                        .ok_or_else(|| RecordError { line, message: format!("unknown feature `{name}`") })
                })
                .collect::<Result<_, _>>()?;
            Ok(LossBatch { sequence_offsets: batch.sequence_offsets, features })
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LossBatchJson {
    sequence_offsets: Vec<u32>,
    features: std::collections::BTreeMap<String, Vec<f32>>,
}

/// Every feature with its WIT name.
pub const FEATURE_NAMES: [(Feature, &str); 12] = [
    (Feature::Logprob, "logprob"),
    (Feature::MeanLogprob, "mean-logprob"),
    (Feature::Entropy, "entropy"),
    (Feature::Value, "value"),
    (Feature::RefLogprob, "ref-logprob"),
    (Feature::OldLogprob, "old-logprob"),
    (Feature::OldValue, "old-value"),
    (Feature::Advantage, "advantage"),
    (Feature::Return, "return"),
    (Feature::Mask, "mask"),
    (Feature::SequenceLogprob, "sequence-logprob"),
    (Feature::SequenceRefLogprob, "sequence-ref-logprob"),
];

/// The WIT name of a feature.
pub fn feature_name(feature: Feature) -> &'static str {
    FEATURE_NAMES.iter().find(|(f, _)| *f == feature).map(|(_, n)| *n).unwrap_or("?")
}

/// Features by their WIT names, comma-separated: `logprob, ref-logprob, mask`.
pub fn feature_list(features: &[Feature]) -> String {
    features.iter().map(|f| feature_name(*f)).collect::<Vec<_>>().join(", ")
}

/// A feature from its WIT name (underscores accepted for dashes).
pub fn feature_from_name(name: &str) -> Option<Feature> {
    let name = name.replace('_', "-");
    FEATURE_NAMES.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
}

/// A decision as JSON.
pub fn decision_json(decision: &Decision) -> Value {
    match decision {
        Decision::Keep => json!({"decision": "keep"}),
        Decision::Drop(reason) => json!({"decision": "drop", "reason": reason}),
        Decision::Rewrite(sample) => json!({"decision": "rewrite", "text": sample.text}),
    }
}

/// A loss output as JSON.
pub fn loss_output_json(output: &LossOutput) -> Value {
    let gradients: Map<String, Value> =
        output.gradients.iter().map(|g| (feature_name(g.feature).to_string(), json!(g.values))).collect();
    json!({"value": output.value, "gradients": gradients, "metrics": named_values_json(&output.metrics)})
}

/// Named values as a JSON object.
pub fn named_values_json(values: &[NamedValue]) -> Value {
    Value::Object(values.iter().map(|v| (v.name.clone(), json!(v.value))).collect())
}
