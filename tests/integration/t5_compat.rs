//! T5 folders written by `transformers` load in triad with the same logits.
//!
//! `tests/fixtures/hf/{t5,t5-tied}` are what `T5ForConditionalGeneration.save_pretrained` wrote
//! for two small random models (`make_t5_fixtures.py` beside them says how): T5 v1.1 (gated
//! GELU, untied head) and the original T5 (ReLU, tied head with its rescale, an encoder and a
//! decoder of different depths, heads narrower than the model), with `transformers`' logits on
//! a sequence long enough to reach the logarithmic position buckets and on a batch whose shorter
//! row is padded. `Model::load` reads the folder as a T5 and gives the same logits to 1e-4.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::Value;
use triad::model::t5::{FeedForward, T5, T5Config};
use triad::model::{Model, ModelConfig};

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

/// The fixture folder `name` as a triad model (a T5, checked), and its expected logits.
fn load(name: &str) -> (Model, Value) {
    let dir = support::workspace().join("tests/fixtures/hf").join(name);
    let model = Model::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(model.as_t5().is_some(), "{name} loads as a T5");
    (model, read_json(&dir.join("expected.json")))
}

/// The T5 inside a model known to be one.
fn t5(model: &Model) -> &T5 {
    model.as_t5().expect("a T5")
}

fn logits_match(name: &str) {
    let (loaded, expected) = load(name);
    let model = t5(&loaded);
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
    let (loaded, _) = load("t5");
    let model = t5(&loaded);
    assert_eq!(model.config.feed_forward, FeedForward::GatedGelu);
    assert!(!model.config.tie_word_embeddings);
    logits_match("t5");
}

#[test]
fn an_original_t5_folder_with_a_tied_head_gives_its_logits() {
    let (loaded, _) = load("t5-tied");
    let model = t5(&loaded);
    assert_eq!(model.config.feed_forward, FeedForward::Relu);
    assert!(model.config.tie_word_embeddings);
    assert_ne!(model.config.num_layers, model.config.num_decoder_layers);
    logits_match("t5-tied");
}

/// The fixtures' padded case: two encoder rows (30 and 17 real tokens), two decoder rows.
fn padded_case() -> (Tensor, Tensor, Tensor) {
    let expected = read_json(&support::workspace().join("tests/fixtures/hf/t5/expected.json"));
    let case = &expected["cases"][1];
    assert_eq!(case["name"], "padded");
    (ids(&case["input_ids"]), ids(&case["attention_mask"]), ids(&case["decoder_input_ids"]))
}

/// A fresh model of each style trains: every parameter gets a gradient, three AdamW steps lower
/// the loss, and the folder `save` writes loads back with the same logits. With
/// `TRIAD_HF_EXPORT=DIR` the folders and triad's logits go under `DIR/<name>/` for
/// `bench/t5_check.py`, which loads them with `transformers` and compares.
#[test]
fn a_fresh_t5_trains_every_parameter_and_saves_a_folder_it_loads_again() {
    use triad::train::{AdamW, AdamWConfig};
    let export = std::env::var_os("TRIAD_HF_EXPORT").map(std::path::PathBuf::from);
    let root = export.clone().unwrap_or_else(|| support::scratch("t5-save"));
    let (input_ids, mask, decoder_ids) = padded_case();
    // Teacher forcing: the labels are the decoder's inputs shifted left, then the end token.
    let labels = Tensor::cat(
        &[
            decoder_ids.narrow(1, 1, 11).expect("narrow"),
            Tensor::ones((2, 1), candle_core::DType::U32, &Device::Cpu).expect("eos"),
        ],
        1,
    )
    .expect("labels");
    for (name, feed_forward, tied) in
        [("t5-v1_1", FeedForward::GatedGelu, false), ("t5-original", FeedForward::Relu, true)]
    {
        let config = T5Config {
            vocab_size: 96,
            context: 64,
            d_model: 32,
            d_kv: 8,
            d_ff: 48,
            num_layers: 2,
            num_decoder_layers: 3,
            num_heads: 4,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 20,
            layer_norm_epsilon: 1e-6,
            feed_forward,
            tie_word_embeddings: tied,
            decoder_start_token_id: 0,
        };
        let model = Model::new(&ModelConfig::T5(config.clone()), &Device::Cpu, 5).expect("a model");
        let vars = model.vars();
        assert_eq!(vars.len(), config.param_specs().len());
        let mut optimizer = AdamW::new(&vars, |_| true, AdamWConfig::default()).expect("an optimizer");
        let mut losses = Vec::new();
        for step in 0..4 {
            let loss = t5(&model).loss(&input_ids, Some(&mask), &decoder_ids, &labels).expect("a loss");
            losses.push(loss.to_scalar::<f32>().expect("a scalar"));
            let store = loss.backward().expect("gradients");
            let grads: HashMap<String, Tensor> =
                vars.iter().filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
            if step == 0 {
                for (n, _) in &vars {
                    let g = grads.get(n).unwrap_or_else(|| panic!("{name}: no gradient reaches `{n}`"));
                    let size = g.abs().and_then(|a| a.sum_all()).and_then(|s| s.to_scalar::<f32>()).expect("a sum");
                    assert!(size > 0.0, "{name}: `{n}`'s gradient is zero");
                }
            }
            optimizer.step(&grads, 1e-2, Some(1.0)).expect("a step");
        }
        assert!(losses[3] < losses[0] - 0.1, "{name}: training did not move the loss: {losses:?}");

        let dir = root.join(name);
        model.save(&dir).expect("save");
        let loaded = Model::load(&dir, &Device::Cpu).expect("load what was saved");
        assert_eq!(loaded.config(), &ModelConfig::T5(config.clone()));
        let logits = |m: &Model| -> Vec<f32> {
            let logits = t5(m).forward(&input_ids, Some(&mask), &decoder_ids).expect("logits");
            logits.flatten_all().and_then(|t| t.to_vec1()).expect("values")
        };
        let ours = logits(&model);
        assert_eq!(logits(&loaded), ours, "{name}: logits after a save and load");
        if export.is_some() {
            let rows = |t: &Tensor| t.to_vec2::<u32>().expect("rows");
            let record = serde_json::json!({
                "input_ids": rows(&input_ids), "attention_mask": rows(&mask), "decoder_input_ids": rows(&decoder_ids),
                "shape": [2, 12, 96], "logits": ours,
            });
            std::fs::write(dir.join("triad_logits.json"), record.to_string()).expect("write logits");
        }
    }
}

/// Greedy generation with the encoder run once, cached cross-attention keys and values and a
/// growing self-attention cache picks, at every step, the argmax of the full decoder run over
/// the tokens so far (and reports its log-probability); a prompt gives the same tokens in a
/// batch of prompts of other lengths as alone.
#[test]
fn t5_generation_with_its_caches_follows_the_full_decoder() {
    use triad::model::SamplingConfig;
    let (loaded, expected) = load("t5");
    let model = t5(&loaded);
    let rows: Vec<Vec<u32>> = expected["cases"][1]["input_ids"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_array().expect("row").iter().map(|x| x.as_u64().expect("id") as u32).filter(|&id| id != 0).collect()
        })
        .collect();
    let prompts = vec![rows[0].clone(), rows[1].clone(), rows[1][..5].to_vec()];
    let greedy = SamplingConfig::greedy(12);
    let batch = model.generate(&prompts, &greedy).expect("generate");
    for (prompt, generated) in prompts.iter().zip(&batch) {
        assert_eq!(generated.tokens.len(), 12);
        let alone = model.generate(std::slice::from_ref(prompt), &greedy).expect("generate alone");
        assert_eq!(alone[0].tokens, generated.tokens, "a prompt's tokens do not depend on its batch");
        let decoder: Vec<u32> = std::iter::once(0).chain(generated.tokens[..11].iter().copied()).collect();
        let input = Tensor::from_vec(prompt.clone(), (1, prompt.len()), &Device::Cpu).expect("input");
        let decoder = Tensor::from_vec(decoder, (1, 12), &Device::Cpu).expect("decoder");
        let logits = model.forward(&input, None, &decoder).expect("logits");
        let logits = logits.squeeze(0).and_then(|l| l.to_vec2::<f32>()).expect("rows");
        for (step, row) in logits.iter().enumerate() {
            let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).expect("a vocabulary");
            assert_eq!(generated.tokens[step] as usize, best, "step {step}");
            let log_sum = row.iter().map(|&x| (x - row[best]).exp()).sum::<f32>().ln() + row[best];
            let logprob = row[best] - log_sum;
            assert!(
                (generated.logprobs[step] - logprob).abs() < 1e-4,
                "step {step}: {} vs {logprob}",
                generated.logprobs[step]
            );
        }
    }
    // Sampling: reproducible from its seed, and not the greedy answer.
    let sampled = SamplingConfig { temperature: 1.0, seed: 9, ..SamplingConfig::greedy(12) };
    let first = model.generate(&prompts, &sampled).expect("sample");
    assert_eq!(model.generate(&prompts, &sampled).expect("sample again"), first);
    assert_ne!(first, batch);
}
