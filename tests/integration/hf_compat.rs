//! Hugging Face `transformers` compatibility of model folders, both ways, for GPT-2 and Llama.
//!
//! Into triad: `tests/fixtures/hf/{gpt2,llama,llama-tied}` are folders that `transformers`'
//! `save_pretrained` wrote (`make_fixtures.py` beside them says how), with the logits
//! `transformers` computed on real text. `Model::load` reads each folder and its logits equal
//! those to 1e-4, for a single row and for a batch whose shorter row is left-padded; the
//! folder's `tokenizer.json` gives `transformers`' ids, and its chat template (in
//! `chat_template.jinja` or in `tokenizer_config.json`) renders `transformers`' prompt.
//!
//! Out of triad: models of each family, trained a few AdamW steps, are saved with `Model::save`;
//! their `config.json` has what `transformers` reads (and describes the same model without
//! triad's own key), and `Model::load` gives back the same logits. With `TRIAD_HF_EXPORT=DIR`
//! the folders and triad's logits go under `DIR/<name>/` for `bench/hf_check.py`, which loads
//! them with `transformers` and compares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{Value, json};
use tokenizers::Tokenizer;
use triad::model::chat::ChatMessage;
use triad::model::{GptConfig, LlamaConfig, Model, ModelConfig, decays};
use triad::train::{AdamW, AdamWConfig, lm_loss};

use crate::support;

/// How far triad's logits may be from `transformers`' (absolute).
const TOLERANCE: f64 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    support::workspace().join("tests/fixtures/hf").join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// One batch as both sides lay it out: rows of equal width, row r starting with `pads[r]`
/// padding ids.
struct Batch {
    ids: Vec<Vec<u32>>,
    pads: Vec<usize>,
}

impl Batch {
    /// Rows of different lengths, left-padded with `pad_id` to the longest.
    fn left_padded(rows: &[Vec<u32>], pad_id: u32) -> Batch {
        let width = rows.iter().map(Vec::len).max().expect("at least one row");
        let pads: Vec<usize> = rows.iter().map(|r| width - r.len()).collect();
        let ids = rows.iter().zip(&pads).map(|(r, &p)| [vec![pad_id; p], r.clone()].concat()).collect();
        Batch { ids, pads }
    }

    /// The rows of a case of `expected.json`.
    fn of_case(case: &Value) -> Batch {
        let rows = case.as_array().expect("a case is an array of rows");
        Batch {
            ids: rows.iter().map(|r| u32s(&r["ids"])).collect(),
            pads: rows.iter().map(|r| r["pad"].as_u64().expect("a pad count") as usize).collect(),
        }
    }

    /// The model's logits at each real position of each row: `[row][position][vocab]`.
    fn logits(&self, model: &Model) -> Vec<Vec<Vec<f32>>> {
        let width = self.ids[0].len();
        let flat: Vec<u32> = self.ids.concat();
        let tokens = Tensor::from_vec(flat, (self.ids.len(), width), &Device::Cpu).expect("a token tensor");
        let logits = if self.pads.iter().all(|&p| p == 0) {
            model.forward(&tokens, false).expect("a forward pass")
        } else {
            let hidden = model.hidden_left_padded(&tokens, &self.pads, false).expect("a padded forward pass");
            model.lm_logits(&hidden).expect("the LM head")
        };
        let all: Vec<Vec<Vec<f32>>> = logits.to_vec3().expect("logits on the host");
        all.into_iter().zip(&self.pads).map(|(row, &pad)| row[pad..].to_vec()).collect()
    }
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln()
}

/// The largest |triad - transformers| over the recorded columns and the log-sum-exp of every
/// real position of every case in a fixture folder; checks the argmax on the way.
fn worst_difference_from_transformers(name: &str) -> f64 {
    let dir = fixture_dir(name);
    let expected = read_json(&dir.join("expected.json"));
    let model = load(&dir).model;
    let columns: Vec<usize> = u32s(&expected["columns"]).into_iter().map(|c| c as usize).collect();
    let mut worst = 0.0f64;
    let cases = expected["cases"].as_object().expect("cases by name");
    for (case_name, case) in cases {
        let batch = Batch::of_case(case);
        let ours = batch.logits(&model);
        for (r, (row, want)) in ours.iter().zip(case.as_array().expect("rows")).enumerate() {
            let want_logits = want["logits"].as_array().expect("logits per position");
            let want_lse = f64s(&want["logsumexp"]);
            let want_argmax = u32s(&want["argmax"]);
            assert_eq!(row.len(), want_logits.len(), "{name}/{case_name} row {r}: real positions");
            for (t, logits) in row.iter().enumerate() {
                let at = format!("{name}/{case_name} row {r} position {t}");
                for (&c, want) in columns.iter().zip(f64s(&want_logits[t])) {
                    let d = (logits[c] as f64 - want).abs();
                    assert!(d <= TOLERANCE, "{at}, column {c}: {} vs transformers' {want}", logits[c]);
                    worst = worst.max(d);
                }
                let d = (log_sum_exp(logits) - want_lse[t]).abs();
                assert!(d <= TOLERANCE, "{at}: log-sum-exp {} vs {}", log_sum_exp(logits), want_lse[t]);
                worst = worst.max(d);
                // A near-tie may swap the argmax; transformers' best must then be ours within
                // the tolerance.
                let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let theirs = logits[want_argmax[t] as usize];
                assert!((best - theirs) as f64 <= 2.0 * TOLERANCE, "{at}: argmax differs ({theirs} vs {best})");
            }
        }
    }
    eprintln!("{name}: max |triad - transformers| = {worst:.2e}");
    worst
}

#[test]
fn gpt2_written_by_transformers_gives_its_logits() {
    assert!(worst_difference_from_transformers("gpt2") <= TOLERANCE);
}

#[test]
fn llama_written_by_transformers_gives_its_logits() {
    assert!(worst_difference_from_transformers("llama") <= TOLERANCE);
}

#[test]
fn tied_llama_written_by_transformers_gives_its_logits() {
    assert!(worst_difference_from_transformers("llama-tied") <= TOLERANCE);
}

/// A folder as `Pretrained("<folder>")` loads it: the model, its tokenizer, its chat template.
fn load(dir: &Path) -> triad::model::pretrained::Loaded {
    let spec = dir.to_str().expect("a UTF-8 path");
    triad::model::pretrained::load(spec, Path::new(""), &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

#[test]
fn tokenizers_and_chat_templates_of_transformers_folders_agree_with_transformers() {
    for name in ["gpt2", "llama", "llama-tied"] {
        let dir = fixture_dir(name);
        let expected = read_json(&dir.join("expected.json"));
        // The chat template is in `chat_template.jinja` (what transformers 5 writes) in one
        // folder and in `tokenizer_config.json` (older writers, most Hub models) in another.
        let loaded = load(&dir);
        let tokenizer = loaded.tokenizer;
        for case in expected["cases"].as_object().expect("cases").values() {
            for row in case.as_array().expect("rows") {
                let text = row["text"].as_str().expect("a text");
                let pad = row["pad"].as_u64().expect("a pad") as usize;
                let ids = tokenizer.encode(text, false).expect("encode").get_ids().to_vec();
                assert_eq!(ids, u32s(&row["ids"])[pad..], "{name}: {text:?}");
            }
        }
        match (loaded.chat, expected.get("chat")) {
            (Some(template), Some(chat)) => {
                let messages: Vec<ChatMessage> = chat["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                    .collect();
                let prompt = template.render(&messages, true);
                assert_eq!(prompt, chat["rendered"].as_str().unwrap(), "{name}");
                let ids = tokenizer.encode(prompt, false).expect("encode").get_ids().to_vec();
                assert_eq!(ids, u32s(&chat["ids"]), "{name}: the prompt's ids");
            }
            (None, None) => {}
            (template, chat) => panic!("{name}: template {template:?} but recorded chat {chat:?}"),
        }
    }
}

/// The configs saved for `transformers`: the sizes of the fixtures, so the same tokenizer fits.
fn configs_to_export() -> Vec<(&'static str, ModelConfig)> {
    let llama = LlamaConfig {
        vocab_size: 384,
        context: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        d_model: 64,
        ffn_hidden: 128,
        rope_theta: 50_000.0,
        rms_eps: 1e-6,
        tie_embeddings: false,
    };
    vec![
        (
            "gpt2",
            ModelConfig::Gpt(GptConfig {
                vocab_size: 384,
                context: 64,
                layers: 2,
                heads: 4,
                d_model: 64,
                dropout: 0.0,
                bias: true,
            }),
        ),
        ("llama", ModelConfig::Llama(llama.clone())),
        ("llama-tied", ModelConfig::Llama(LlamaConfig { tie_embeddings: true, ..llama })),
    ]
}

/// Windows of 32 tokens of the fixtures' Shakespeare lines, every one of them.
fn training_rows(tokenizer: &Tokenizer) -> (Tensor, Tensor) {
    let expected = read_json(&fixture_dir("gpt2").join("expected.json"));
    let mut text = String::new();
    for case in expected["cases"].as_object().expect("cases").values() {
        for row in case.as_array().expect("rows") {
            text.push_str(row["text"].as_str().expect("a text"));
            text.push('\n');
        }
    }
    let ids = tokenizer.encode(text, false).expect("encode").get_ids().to_vec();
    let width = 32;
    let rows: Vec<&[u32]> = ids.windows(width + 1).step_by(width / 2).collect();
    let inputs: Vec<u32> = rows.iter().flat_map(|w| w[..width].to_vec()).collect();
    let targets: Vec<u32> = rows.iter().flat_map(|w| w[1..].to_vec()).collect();
    let shape = (rows.len(), width);
    (
        Tensor::from_vec(inputs, shape, &Device::Cpu).expect("inputs"),
        Tensor::from_vec(targets, shape, &Device::Cpu).expect("targets"),
    )
}

/// A model of `config` after a few AdamW steps on the rows (so that biases and norm gains have
/// left their init); its loss must have fallen.
fn trained(config: &ModelConfig, rows: &(Tensor, Tensor)) -> Model {
    let model = Model::new(config, &Device::Cpu, 11).expect("a model");
    let vars = model.vars();
    let mut optimizer = AdamW::new(&vars, decays, AdamWConfig::default()).expect("an optimizer");
    let mut losses = Vec::new();
    for _ in 0..6 {
        let loss = lm_loss(&model, &rows.0, &rows.1, true).expect("a loss");
        losses.push(loss.to_scalar::<f32>().expect("a scalar"));
        let store = loss.backward().expect("gradients");
        let grads: HashMap<String, Tensor> =
            vars.iter().filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
        optimizer.step(&grads, 1e-2, Some(1.0)).expect("a step");
    }
    assert!(losses[5] < losses[0] - 0.5, "{}: training did not move the loss: {losses:?}", config.family());
    model
}

/// What `transformers` needs from `config.json` to build the same model, checked key by key.
fn assert_transformers_keys(name: &str, hf: &Value, config: &ModelConfig) {
    let (model_type, architecture, sizes): (&str, &str, Vec<(&str, Value)>) = match config {
        ModelConfig::Gpt(c) => (
            "gpt2",
            "GPT2LMHeadModel",
            vec![
                ("n_embd", json!(c.d_model)),
                ("n_layer", json!(c.layers)),
                ("n_head", json!(c.heads)),
                ("n_positions", json!(c.context)),
                ("activation_function", json!("gelu_new")),
                ("tie_word_embeddings", json!(true)),
            ],
        ),
        ModelConfig::Llama(c) => (
            "llama",
            "LlamaForCausalLM",
            vec![
                ("hidden_size", json!(c.d_model)),
                ("intermediate_size", json!(c.ffn_hidden)),
                ("num_hidden_layers", json!(c.layers)),
                ("num_attention_heads", json!(c.heads)),
                ("num_key_value_heads", json!(c.kv_heads)),
                ("max_position_embeddings", json!(c.context)),
                ("rope_theta", json!(c.rope_theta)),
                ("rms_norm_eps", json!(c.rms_eps)),
                ("hidden_act", json!("silu")),
                ("tie_word_embeddings", json!(c.tie_embeddings)),
            ],
        ),
        ModelConfig::T5(c) => (
            "t5",
            "T5ForConditionalGeneration",
            vec![
                ("d_model", json!(c.d_model)),
                ("d_kv", json!(c.d_kv)),
                ("d_ff", json!(c.d_ff)),
                ("num_layers", json!(c.num_layers)),
                ("num_decoder_layers", json!(c.num_decoder_layers)),
                ("num_heads", json!(c.num_heads)),
                ("tie_word_embeddings", json!(c.tie_word_embeddings)),
            ],
        ),
    };
    assert_eq!(hf["model_type"], json!(model_type), "{name}");
    assert_eq!(hf["architectures"], json!([architecture]), "{name}");
    assert_eq!(hf["vocab_size"], json!(config.vocab_size()), "{name}");
    for (key, want) in sizes {
        assert_eq!(hf[key], want, "{name}: config.json `{key}`");
    }
    // The Hugging Face keys alone describe the model: a reader that ignores `triad_config`
    // (transformers, or triad on a folder someone rewrote) builds the same one.
    let mut plain = hf.clone();
    plain.as_object_mut().expect("a JSON object").remove("triad_config");
    assert_eq!(ModelConfig::from_hf_json(&plain).as_ref(), Ok(config), "{name}");
}

#[test]
fn trained_triad_models_save_folders_transformers_reads() {
    let export = std::env::var_os("TRIAD_HF_EXPORT").map(PathBuf::from);
    let root = export.clone().unwrap_or_else(|| support::scratch("hf-compat-export"));
    let tokenizer = Tokenizer::from_file(fixture_dir("gpt2").join("tokenizer.json")).expect("a tokenizer");
    let rows = training_rows(&tokenizer);
    let single = Batch::of_case(&read_json(&fixture_dir("gpt2").join("expected.json"))["cases"]["single"]);
    let texts = ["First Citizen:\nYou are all resolved rather to die than to famish?", "All:\nResolved. resolved."];
    let encoded: Vec<Vec<u32>> =
        texts.iter().map(|t| tokenizer.encode(*t, false).expect("encode").get_ids().to_vec()).collect();
    let batch = Batch::left_padded(&encoded, 0);
    for (name, config) in configs_to_export() {
        let model = trained(&config, &rows);
        let dir = root.join(name);
        model.save(&dir).expect("save");
        assert_transformers_keys(name, &read_json(&dir.join("config.json")), &config);

        let loaded = Model::load(&dir, &Device::Cpu).expect("load what was saved");
        assert_eq!(loaded.config(), &config);
        let mut cases = serde_json::Map::new();
        for (case_name, case) in [("single", &single), ("batch", &batch)] {
            let ours = case.logits(&model);
            assert_eq!(case.logits(&loaded), ours, "{name}/{case_name}: logits after a save and load");
            let rows: Vec<Value> = ours
                .iter()
                .enumerate()
                .map(|(r, logits)| json!({ "pad": case.pads[r], "ids": case.ids[r], "logits": logits }))
                .collect();
            cases.insert(case_name.into(), Value::Array(rows));
        }
        if export.is_some() {
            let out = dir.join("triad_logits.json");
            std::fs::write(&out, serde_json::to_vec(&json!({ "cases": cases })).expect("JSON"))
                .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
            eprintln!("exported {}", dir.display());
        }
    }
}
