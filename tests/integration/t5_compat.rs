//! T5 folders written by `transformers` load in triad with the same logits.
//!
//! `tests/fixtures/hf/{t5,t5-tied}` are what `T5ForConditionalGeneration.save_pretrained` wrote
//! for two small random models (`make_t5_fixtures.py` beside them says how): T5 v1.1 (gated
//! GELU, untied head) and the original T5 (ReLU, tied head with its rescale, an encoder and a
//! decoder of different depths, heads narrower than the model), with `transformers`' logits on
//! a sequence long enough to reach the logarithmic position buckets and on a batch whose shorter
//! row is padded. triad's `T5` reads the folder and gives the same logits to 1e-4.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::Value;
use triad::model::load_tensors;
use triad::model::t5::{FeedForward, T5, T5Config};

use crate::support;

/// How far triad's logits may be from `transformers`' (absolute).
const TOLERANCE: f32 = 1e-4;

fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Rows of integers as a (rows, length) u32 tensor.
fn ids(v: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = v
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row.as_array().expect("a row").iter().map(|x| x.as_u64().expect("an id") as u32).collect())
        .collect();
    let (n, len) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (n, len), &Device::Cpu).expect("ids")
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().expect("a number") as f32],
    }
}

fn load(name: &str) -> (T5, Value) {
    let dir = support::workspace().join("tests/fixtures/hf").join(name);
    let config = T5Config::from_hf_json(&read_json(&dir.join("config.json"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tensors: HashMap<String, Tensor> = load_tensors(&dir.join("model.safetensors"), &Device::Cpu).expect("weights");
    let model = T5::from_weights(config, &tensors).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, read_json(&dir.join("expected.json")))
}

fn logits_match(name: &str) {
    let (model, expected) = load(name);
    for case in expected["cases"].as_array().expect("cases") {
        let label = format!("{name} {}", case["name"]);
        let mask = ids(&case["attention_mask"]);
        let logits = model
            .forward(&ids(&case["input_ids"]), Some(&mask), &ids(&case["decoder_input_ids"]))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let ours: Vec<f32> = logits.flatten_all().and_then(|t| t.to_vec1()).expect("logits");
        let theirs = floats(&case["logits"]);
        assert_eq!(ours.len(), theirs.len(), "{label}: {:?}", logits.dims());
        let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let largest = theirs.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        assert!(diff < TOLERANCE, "{label}: max abs logit difference {diff} (logits up to {largest})");
        assert!(largest > 0.5, "{label}: logits up to {largest} would hide a wrong bias or rescale");
    }
}

#[test]
fn a_t5_v1_1_folder_from_transformers_gives_its_logits() {
    let (model, _) = load("t5");
    assert_eq!(model.config.feed_forward, FeedForward::GatedGelu);
    assert!(!model.config.tie_word_embeddings);
    logits_match("t5");
}

#[test]
fn an_original_t5_folder_with_a_tied_head_gives_its_logits() {
    let (model, _) = load("t5-tied");
    assert_eq!(model.config.feed_forward, FeedForward::Relu);
    assert!(model.config.tie_word_embeddings);
    assert_ne!(model.config.num_layers, model.config.num_decoder_layers);
    logits_match("t5-tied");
}
