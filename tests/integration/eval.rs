//! Evaluation of any model on any data: an Eval stage measures the experiment's own model
//! (`"model"`) beside a trained stage's on a data source's texts and prompts, trains nothing and
//! writes no model; a stage's model folder, named as `Pretrained("<folder>")` in another
//! experiment, loads with its tokenizer and gives the same perplexity on the same texts, and
//! `triad eval` answers a JSONL file's prompts under their own field names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support;
use triad::experiment::parse_experiment;
use triad::stages::{RunOptions, run_experiment};

use support::REVIEWS;

/// Run the experiment `text` (written to `dir/name.ron`); each stage's final metrics and folder.
fn run(dir: &Path, name: &str, text: &str) -> BTreeMap<String, (BTreeMap<String, f64>, PathBuf)> {
    let path = dir.join(format!("{name}.ron"));
    std::fs::write(&path, text).expect("write the experiment");
    let experiment = parse_experiment(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let options = RunOptions { runs_root: dir.join("runs"), force: Vec::new() };
    let runs = run_experiment(&experiment, &path, &options).unwrap_or_else(|e| panic!("{e}"));
    runs[0].stages.iter().map(|s| (s.stage.clone(), (s.metrics.clone(), s.dir.clone()))).collect()
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_ending(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

#[test]
fn eval_measures_any_model_on_any_source_and_a_saved_stage_loads_as_a_pretrained_folder() {
    let dir = support::scratch("eval-any");
    let trained = format!(
        r#"Experiment(
    name: "trained",
    seed: 5,
    data: {{ {REVIEWS} }},
    plugins: {{ "rouge": (path: "{rouge}"), "vader": (path: "{vader}") }},
    tokenizer: TrainBpe(vocab_size: 384, on: "reviews"),
    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 64),
    stages: [
        Pretrain(name: "base", data: "reviews", train: (steps: 60, batch: 8, lr: 3e-3, eval_batches: 2)),
        Eval(name: "eval", models: ["model", "base"],
             perplexity_on: (data: "reviews", window: 48, max_tokens: 3000),
             prompts: (data: "reviews", format: Continuation(words: 4)), max_prompts: 12,
             generation: (max_new_tokens: 6), metrics: ["rouge"],
             win_rate: (a: "base", b: "model", judge: Plugin("vader"))),
    ],
)"#,
        rouge = support::plugin_dir("rouge"),
        vader = support::plugin_dir("lexicon-sentiment"),
    );
    let metrics = run(&dir, "trained", &trained);
    let (eval, stage_dir) = &metrics["eval"];
    let (fresh, base) = (eval["model/perplexity"], eval["base/perplexity"]);
    // A fresh initialisation is close to uniform over the 384 tokens; 60 steps learn a lot.
    assert!((200.0..800.0).contains(&fresh), "fresh model's perplexity {fresh}");
    assert!(base < fresh / 2.0, "trained {base} vs fresh {fresh}");
    assert!((eval["base/nll"].exp() - base).abs() < 1e-9 * base);
    let predicted = eval["base/perplexity_tokens"];
    assert!((2000.0..3000.0).contains(&predicted), "{predicted} tokens predicted");
    for metric in ["model/rougeL", "base/rougeL", "win_rate", "win_rate_low", "win_rate_high"] {
        assert!(eval.contains_key(metric), "{metric} missing from {eval:?}");
    }

    // One line per passage, each with its text's sha256 and both models' summed NLL, adding up
    // to the reported perplexity.
    let passages = std::fs::read_to_string(stage_dir.join("passages.jsonl")).expect("passages.jsonl");
    let lines: Vec<serde_json::Value> = passages.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert!(lines.len() > 20, "{} passages", lines.len());
    let nll: f64 = lines.iter().map(|l| l["base/nll"].as_f64().expect("base/nll")).sum();
    let count: f64 = lines.iter().map(|l| l["predicted"].as_f64().expect("predicted")).sum();
    assert_eq!(count, predicted);
    assert!(((nll / count).exp() - base).abs() < 1e-6 * base);
    assert!(lines.iter().all(|l| l["sha256"].as_str().is_some_and(|s| s.len() == 64)));
    let report = std::fs::read_to_string(stage_dir.join("report.md")).expect("report.md");
    assert!(report.contains("no start token") && report.contains("windows of at most 48 tokens"), "{report}");
    // The evaluation wrote no model.
    assert!(files_ending(stage_dir, ".safetensors").is_empty());

    // The trained stage's folder is a whole model folder: named directly, it loads with its
    // tokenizer and measures the same texts to the same perplexity.
    let model_dir = metrics["base"].1.join("model");
    assert!(model_dir.join("tokenizer.json").is_file(), "the base stage's model folder holds its tokenizer");
    let direct = format!(
        r#"Experiment(
    name: "direct",
    data: {{ {REVIEWS} }},
    model: Pretrained("{model}"),
    stages: [ Eval(name: "eval", models: ["model"], perplexity_on: (data: "reviews", window: 48, max_tokens: 3000)) ],
)"#,
        model = model_dir.display()
    );
    let before = files_ending(&dir, ".safetensors").len();
    let direct = run(&dir, "direct", &direct);
    let again = direct["eval"].0["model/perplexity"];
    assert!((again - base).abs() < 1e-6 * base, "loaded folder {again} vs trained stage {base}");
    assert_eq!(files_ending(&dir, ".safetensors").len(), before, "an Eval-only experiment wrote weights");

    // `triad eval` on a JSONL file whose prompts and references have their own field names.
    let qa = dir.join("qa.jsonl");
    let lines =
        [r#"{"question": "The movie is a", "answer": "mess."}"#, r#"{"question": "A thoughtful,", "answer": "film."}"#];
    std::fs::write(&qa, lines.join("\n")).expect("write qa.jsonl");
    let model = model_dir.display().to_string();
    let (qa, rouge) = (qa.display().to_string(), support::plugin_dir("rouge"));
    let args = ["eval", "--model", &model, "--prompts", &qa, "--fields", "question", "answer", "--metric", &rouge];
    let out = support::triad(&dir, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "triad eval failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2 prompts of data `prompts`") && stdout.contains("| model | rougeL |"), "{stdout}");
}
