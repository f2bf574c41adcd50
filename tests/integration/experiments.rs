//! Experiment files end to end: twenty kinds of malformed file fail before any training with a
//! message that says where and how to fix it; a whole pipeline (pretrain, SFT, reward model,
//! PPO, evaluation) runs through the `triad` binary, a second run trains nothing, and changing a
//! PPO setting reruns PPO and evaluation only; a PPO run rewarded by a plugin alone (Rust or
//! Python) raises it; Python and JavaScript plugins serve a pipeline as Rust ones do.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use triad::experiment::parse_experiment;

fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("experiments-{name}"))
}

/// A small but complete pipeline on the real review snippets, from `{PLUGINS}` paths.
fn pipeline(ppo_lr: &str, reward: &str) -> String {
    r#"
Experiment(
    name: "pipeline",
    seed: 3,
    data: {
        "reviews": Package(pip: "vadersentiment==3.3.2", sdist: true,
            file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner: "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            format: Tsv(columns: ["id", "rating", "text"], text_column: "text")),
    },
    plugins: {
        "length": (path: "{LENGTH}", config: (min_chars: 20, max_chars: 300)),
        "vader": (path: "{VADER}"),
        "rouge": (path: "{ROUGE}"),
    },
    tokenizer: TrainBpe(vocab_size: 512, on: "reviews"),
    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 48),
    stages: [
        Pretrain(name: "base", data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1),
                 train: (steps: 30, batch: 8, lr: 3e-3, eval_batches: 2)),
        Sft(name: "sft", from: "base",
            examples: (data: "reviews", filters: ["length"], format: Continuation(words: 4)),
            train: (steps: 20, batch: 8, lr: 1e-3, eval_batches: 2)),
        RewardModel(name: "rm", from: "base", data: "reviews", filters: ["length"],
            objective: Pairwise(rating: "rating", min_gap: 1.5), train: (steps: 20, batch: 8, lr: 1e-3)),
        Ppo(name: "ppo", policy: "sft",
            prompts: (data: "reviews", filters: ["length"], format: Continuation(words: 4)),
            reward: REWARD,
            generation: (max_new_tokens: 8),
            train: (steps: STEPS, rollouts: 8, minibatch: 4, epochs: 2, lr: PPO_LR, eval_prompts: 8)),
        Eval(name: "eval", models: ["sft", "ppo"], prompts_of: "ppo", max_prompts: 24, metrics: ["rouge"],
             generation: (max_new_tokens: 8), win_rate: (a: "ppo", b: "sft", judge: Plugin("vader"))),
    ],
)
"#
    .replace("{LENGTH}", &support::plugin_dir("length-filter"))
    .replace("{VADER}", &support::plugin_dir("lexicon-sentiment"))
    .replace("{ROUGE}", &support::plugin_dir("rouge"))
    .replace("PPO_LR", ppo_lr)
    .replace("REWARD", reward)
}

fn triad(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_triad"))
        .current_dir(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running triad");
    assert!(out.status.success(), "triad {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_whole_pipeline_runs_caches_and_reruns_only_what_a_change_touches() {
    let dir = scratch("pipeline");
    std::fs::write(dir.join("e.ron"), pipeline("1e-4", r#"[Model(stage: "rm")]"#).replace("STEPS", "3"))
        .expect("write");
    let out = triad(&dir, &["run", "e.ron"]);
    let first = stdout(&out);
    for stage in ["base", "sft", "rm", "ppo", "eval"] {
        assert!(first.contains(&format!("| seed3 | {stage} | trained |")), "{stage} trained:\n{first}");
    }
    // Quiet: a line per stage and the summary on stdout, nothing else on the terminal; the
    // detail goes to the log file, each thing once (the four stages filtering the same source
    // with the same filter run it once; each plugin is built once).
    assert_eq!(first.lines().filter(|l| l.contains(" | trained | ")).count(), 5, "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "nothing but progress bars and warnings on the terminal:\n{stderr}");
    let log = std::fs::read_to_string(dir.join("runs/pipeline/triad.log")).expect("triad.log");
    assert_eq!(log.matches("`length`: ").count(), 1, "the filter ran once:\n{log}");
    assert!(log.matches("building plugin crates").count() <= 3, "{log}");
    assert!(log.contains("eval: loss") && log.contains("win-rate of `ppo` over `sft`"), "{log}");
    let run = dir.join("runs/pipeline/seed3");
    // A training stage's report sets each held-out figure beside its value before training.
    let sft = std::fs::read_to_string(run.join("sft/report.md")).expect("sft report");
    let loss_row =
        sft.lines().find(|l| l.starts_with("| eval/loss |")).unwrap_or_else(|| panic!("eval/loss row:\n{sft}"));
    let cells: Vec<&str> = loss_row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    assert!(cells.len() == 3 && cells[1].parse::<f64>().is_ok() && cells[2].parse::<f64>().is_ok(), "{loss_row}");
    let eval = std::fs::read_to_string(run.join("eval/report.md")).expect("eval report");
    assert!(eval.contains("Win-rate of `ppo` over `sft`"), "{eval}");
    assert_eq!(std::fs::read_to_string(run.join("eval/samples.jsonl")).expect("samples").lines().count(), 24);
    assert_eq!(std::fs::read_to_string(run.join("eval/human-labels.jsonl")).expect("labels").lines().count(), 24);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).expect("manifest")).expect("JSON");
    assert_eq!(manifest["stages"], serde_json::json!(["base", "sft", "rm", "ppo", "eval"]));
    assert_eq!(manifest["plugins"].as_object().expect("plugins").len(), 3);
    // triad's own revision comes from the binary, though the experiment is outside any checkout.
    let revision = manifest["triad_revision"].as_str().expect("triad_revision");
    assert!(revision.len() >= 40 && revision[..40].chars().all(|c| c.is_ascii_hexdigit()), "{revision}");
    assert!(manifest["git_revision"].is_null(), "the scratch folder is no checkout");
    assert!(manifest["triad_build"].as_str().is_some_and(|b| b.contains("features")), "{manifest}");
    let ppo_metrics = std::fs::read_to_string(run.join("ppo/metrics.jsonl")).expect("ppo metrics");
    for metric in [
        "train/reward",
        "train/kl",
        "train/kl_coef",
        "train/clip_fraction",
        "train/approx_kl",
        "train/value_loss",
        "train/explained_variance",
        "train/entropy",
        "train/response_length",
        "train/reward/rm",
        "eval/reward",
    ] {
        assert!(ppo_metrics.contains(&format!("\"{metric}\"")), "PPO logs {metric}");
    }

    // Unchanged: nothing trains.
    let before = std::fs::read_to_string(run.join("ppo/metrics.jsonl")).expect("metrics");
    let second = stdout(&triad(&dir, &["run", "e.ron"]));
    for stage in ["base", "sft", "rm", "ppo", "eval"] {
        assert!(second.contains(&format!("| seed3 | {stage} | cached |")), "{stage} cached:\n{second}");
    }
    assert_eq!(std::fs::read_to_string(run.join("ppo/metrics.jsonl")).expect("metrics"), before);

    // A PPO setting changes: PPO and evaluation rerun, nothing before them.
    std::fs::write(dir.join("e.ron"), pipeline("2e-4", r#"[Model(stage: "rm")]"#).replace("STEPS", "3"))
        .expect("write");
    let plan = stdout(&triad(&dir, &["run", "e.ron", "--dry-run"]));
    assert!(plan.contains("base: cached") && plan.contains("sft: cached") && plan.contains("rm: cached"), "{plan}");
    assert!(plan.contains("ppo: train") && plan.contains("eval: train"), "{plan}");
    let third = stdout(&triad(&dir, &["run", "e.ron"]));
    for (stage, status) in
        [("base", "cached"), ("sft", "cached"), ("rm", "cached"), ("ppo", "trained"), ("eval", "trained")]
    {
        assert!(third.contains(&format!("| seed3 | {stage} | {status} |")), "{stage} {status}:\n{third}");
    }
    // --force reruns a stage and what reads it.
    let forced = stdout(&triad(&dir, &["run", "e.ron", "--dry-run", "--force", "sft"]));
    assert!(
        forced.contains("base: cached") && forced.contains("sft: train") && forced.contains("ppo: train"),
        "{forced}"
    );
    assert!(forced.contains("rm: cached"), "the reward model does not read the SFT model:\n{forced}");

    // The first run (PPO at 1e-4) was replaced by a changed experiment: it is kept, complete.
    let history = dir.join("runs/pipeline/history");
    let kept: Vec<PathBuf> = std::fs::read_dir(&history).expect("history").flatten().map(|e| e.path()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let old = triad::runs::manifest::Manifest::read(&kept[0]).expect("readable").expect("a manifest");
    assert!(old.complete && old.archived.is_some(), "{old:?}");
    assert!(kept[0].join("eval/stage.json").is_file(), "the kept run's links reach its outputs");

    // Rerun changed again, and its PPO stage fails: the run folder shows that attempt only.
    std::fs::write(dir.join("e.ron"), pipeline("2e-4", r#"[Model(stage: "base")]"#).replace("STEPS", "3"))
        .expect("write");
    let failed =
        Command::new(env!("CARGO_BIN_EXE_triad")).current_dir(&dir).args(["run", "e.ron"]).output().expect("triad");
    assert!(!failed.status.success(), "a Pretrain stage is no reward model");
    let manifest = triad::runs::manifest::Manifest::read(&run).expect("readable").expect("a manifest");
    assert!(!manifest.complete, "the failed attempt is marked incomplete");
    for stage in ["ppo", "eval"] {
        let link = std::fs::read_link(run.join(stage)).expect("a link");
        assert!(
            link.ends_with(format!("{stage}-{}", manifest.keys[stage])),
            "{stage} -> {link:?} matches the manifest"
        );
    }
    let current = stdout(&triad(&dir, &["compare", "runs/pipeline", "--by-run"]));
    assert!(current.contains("| complete |") && current.contains("| no |"), "incomplete runs are marked:\n{current}");
    assert!(!current.contains("eval/win_rate"), "no win-rate of an earlier attempt is shown as this run's:\n{current}");
    // Both earlier runs stay comparable.
    let before = stdout(&triad(&dir, &["compare", "runs/pipeline/history", "--by-run", "--metrics", "eval/win_rate"]));
    assert_eq!(before.lines().filter(|l| l.starts_with("| pipeline@")).count(), 2, "{before}");
}

/// PPO for 40 iterations rewarded by one plugin alone (`reward`, declared by `declaration`
/// beside the pipeline's plugins, or one of them): the mean reward of the first ten iterations
/// and of the last ten.
fn ppo_on_a_plugin_alone(name: &str, declaration: &str, reward: &str) -> (f64, f64) {
    let dir = scratch(name);
    let text = pipeline("2e-3", &format!(r#"[Plugin(name: "{reward}")], kl: Fixed(coef: 0.01)"#))
        .replace("STEPS", "40")
        .replace(r#""rouge": (path: "#, &format!("{declaration}\"rouge\": (path: "))
        .replace(
            "generation: (max_new_tokens: 8),\n            train",
            "generation: (max_new_tokens: 12),\n            train",
        )
        .replace("rollouts: 8, minibatch: 4, epochs: 2", "rollouts: 16, minibatch: 8, epochs: 4");
    std::fs::write(dir.join("e.ron"), text).expect("write");
    triad(&dir, &["run", "e.ron"]);
    let rows = triad::runs::metrics::read_rows(&dir.join("runs/pipeline/seed3/ppo/metrics.jsonl")).expect("metrics");
    let reward: Vec<f64> = rows.iter().filter(|r| r.metric == "train/reward").map(|r| r.value).collect();
    assert_eq!(reward.len(), 40);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    (mean(&reward[..10]), mean(&reward[30..]))
}

#[test]
fn ppo_rewarded_by_a_plugin_alone_raises_that_reward() {
    // Reward: the VADER sentiment of the continuation, no reward model at all.
    let (early, late) = ppo_on_a_plugin_alone("plugin-reward", "", "vader");
    assert!(late > early + 0.05, "the plugin's reward rises: first 10 iterations {early:.3}, last 10 {late:.3}");
}

#[test]
fn ppo_rewarded_by_a_python_plugin_alone_raises_that_reward() {
    // Reward: the 14-line Python length reward, toward 12 words (answers of 12 tokens hold about
    // 6: more, shorter words pay), no reward model.
    let declaration = format!(
        r#""py-length": (path: "{}", config: (target_words: 12, tolerance: 0)),
        "#,
        support::plugin_dir("py-length-reward")
    );
    let (early, late) = ppo_on_a_plugin_alone("python-reward", &declaration, "py-length");
    assert!(late > early + 0.05, "the Python reward rises: first 10 iterations {early:.3}, last 10 {late:.3}");
}

#[test]
fn python_and_javascript_plugins_serve_a_pipeline_like_rust_ones() {
    let dir = scratch("script-plugins");
    // PPO rewarded by the reward model and the Python length reward; the evaluation scored by
    // the JavaScript word-overlap metric beside ROUGE.
    let plugins = format!(
        r#""py-length": (path: "{}", config: (target_words: 10, tolerance: 2)),
        "overlap": (path: "{}"),
        "rouge": (path: "#,
        support::plugin_dir("py-length-reward"),
        support::plugin_dir("js-word-overlap")
    );
    let text = pipeline("1e-4", r#"[Model(stage: "rm"), Plugin(name: "py-length", weight: 0.5)]"#)
        .replace("STEPS", "3")
        .replace(r#""rouge": (path: "#, &plugins)
        .replace(r#"metrics: ["rouge"]"#, r#"metrics: ["rouge", "overlap"]"#);
    std::fs::write(dir.join("e.ron"), text).expect("write");
    triad(&dir, &["run", "e.ron"]);
    let run = dir.join("runs/pipeline/seed3");
    let rows = triad::runs::metrics::read_rows(&run.join("ppo/metrics.jsonl")).expect("metrics");
    let length: Vec<f64> = rows.iter().filter(|r| r.metric == "train/reward/py-length").map(|r| r.value).collect();
    assert_eq!(length.len(), 3, "PPO logs the Python reward each iteration");
    assert!(length.iter().all(|r| (-1.0..=0.0).contains(r)), "{length:?}");
    let eval = std::fs::read_to_string(run.join("eval/report.md")).expect("eval report");
    assert!(eval.contains("word_f1"), "the JavaScript metric is reported:\n{eval}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).expect("manifest")).expect("JSON");
    for name in ["py-length", "overlap"] {
        let sha = manifest["plugins"][name].as_str().unwrap_or_else(|| panic!("{name} in {manifest}"));
        assert_eq!(sha.len(), 64, "{name}: {sha}");
    }
}

/// The error for an experiment text, written next to the real plugins.
fn error_for(text: &str) -> String {
    let dir = scratch("malformed");
    let path = dir.join("bad.ron");
    std::fs::write(&path, text).expect("write");
    match parse_experiment::<triad::stages::Stage>(&path, text) {
        Err(e) => e.to_string(),
        Ok(experiment) => match triad::stages::pipeline::preflight(&experiment, &path) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("expected an error for:\n{text}"),
        },
    }
}

fn valid() -> String {
    pipeline("1e-4", r#"[Model(stage: "rm")]"#).replace("STEPS", "3")
}

#[test]
fn malformed_experiments_fail_before_training_with_where_and_how() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax error", valid().replace("seed: 3,", "seed: 3"), vec!["bad.ron:", "Expected"]),
        ("unknown field", valid().replace("min_gap: 1.5", "min_gapp: 1.5"), vec!["bad.ron:", "min_gapp", "did you mean `min_gap`"]),
        ("misspelt stage kind", valid().replace("RewardModel(", "RewardModle("), vec!["bad.ron:", "RewardModle", "did you mean `RewardModel`"]),
        ("missing plugin file", valid().replace("plugins/rouge", "plugins/no-such-plugin"), vec!["bad.ron:", "plugin `rouge`", "no-such-plugin", "does not exist"]),
        ("missing plugin file, relative path", valid().replace(&support::plugin_dir("rouge"), "no-such-plugin"), vec!["bad.ron:", "`no-such-plugin` does not exist", "no-such-plugin is relative to the experiment file's folder)"]),
        ("unknown stage", valid().replace(r#"policy: "sft""#, r#"policy: "sfy""#), vec!["bad.ron:", "`ppo` reads stage `sfy`", "does not exist", "did you mean `sft`?"]),
        ("a cycle", valid().replace(r#"Sft(name: "sft", from: "base""#, r#"Sft(name: "sft", from: "ppo""#), vec!["bad.ron:", "cycle", "`sft` -> `ppo` -> `sft`"]),
        ("wrong type", valid().replace("steps: 30,", r#"steps: "thirty","#), vec!["bad.ron:20:", "`steps`", "whole number"]),
        ("empty stage list", r#"Experiment(name: "x", tokenizer: Char(on: "d"), data: {"d": Text(path: "d.txt")}, model: Gpt(layers: 1, heads: 1, d_model: 8, context: 8), stages: [])"#.to_string(), vec!["`stages` is empty"]),
        ("negative step count", valid().replace("steps: 30,", "steps: -30,"), vec!["bad.ron:20:", "`steps`", "at least 0"]),
        ("plugin of the wrong kind in a reward slot", valid().replace(r#"reward: [Model(stage: "rm")]"#, r#"reward: [Plugin(name: "rouge")]"#), vec!["plugin `rouge` is a metric plugin", "where a reward plugin goes"]),
        ("zero KL target", valid().replace("generation: (max_new_tokens: 8),\n            train: (steps: 3", "kl: Adaptive(target: 0.0), generation: (max_new_tokens: 8),\n            train: (steps: 3"), vec!["target KL must be positive"]),
        ("reward model that does not exist", valid().replace(r#"Model(stage: "rm")"#, r#"Model(stage: "rmm")"#), vec!["reads stage `rmm`", "does not exist", "did you mean `rm`?"]),
        ("misspelt plugin name", valid().replace(r#"judge: Plugin("vader")"#, r#"judge: Plugin("vadr")"#), vec!["bad.ron:", "plugin `vadr`", "did you mean \"vader\"?"]),
        ("NaN gradient clip", valid().replace("lr: 3e-3, eval_batches: 2", "lr: 3e-3, eval_batches: 2, grad_clip: NaN"), vec!["grad_clip must be a positive number"]),
        ("negative gradient clip", valid().replace("lr: 3e-3, eval_batches: 2", "lr: 3e-3, eval_batches: 2, grad_clip: -1.0"), vec!["grad_clip must be a positive number, got -1"]),
        ("zero evaluation cadence", valid().replace("lr: 3e-3, eval_batches: 2", "lr: 3e-3, eval_batches: 2, eval_every: 0"), vec!["eval_every must be at least 1"]),
        ("zero checkpoint cadence", valid().replace("eval_prompts: 8)", "eval_prompts: 8, checkpoint_every: 0)"), vec!["checkpoint_every must be at least 1"]),
        ("more minimum than maximum new tokens", valid().replacen("generation: (max_new_tokens: 8),", "generation: (max_new_tokens: 8, min_new_tokens: 9),", 1), vec!["min_new_tokens (9) is more than max_new_tokens (8)"]),
        ("a context no machine here can hold", valid().replace("context: 48", "context: 100000000"), vec!["GiB for weights, gradients and AdamW moments", "more than this machine's"]),
        ("a name that leaves the runs folder", valid().replace(r#"name: "pipeline""#, r#"name: "../../x""#), vec!["bad.ron:", "cannot name the experiment's runs folder"]),
        ("a pretrained model that is no name, folder or GGUF file", valid().replace("tokenizer: TrainBpe(vocab_size: 512, on: \"reviews\"),\n    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 48),", "model: Pretrained(\"no-such-model\"),"), vec!["bad.ron:", "no pretrained model `no-such-model`", "nor a Hugging Face folder with config.json, nor a .gguf file"]),
        ("an evaluation's metrics without prompts", valid().replace("prompts_of: \"ppo\", ", ""), vec!["bad.ron:", "metrics scores answers to prompts: set prompts_of (a stage) or prompts (a data source)"]),
        ("an evaluation with two sources of prompts", valid().replace("prompts_of: \"ppo\", ", "prompts_of: \"ppo\", prompts: (data: \"reviews\", format: Continuation(words: 3)), "), vec!["prompts_of and prompts are both set"]),
        ("a bad config of a plugin only the evaluation uses", valid().replace(r#""rouge": (path: "#, r#""rouge": (config: (no_such_option: 1), path: "#), vec!["plugin `rouge`", "configure", "no_such_option"]),
    ];
    // An absolute path is not said to be relative to anything.
    let absolute = error_for(&valid().replace("plugins/rouge", "plugins/no-such-plugin"));
    assert!(!absolute.contains("relative"), "{absolute}");
    for (what, text, expected) in cases {
        let message = error_for(&text);
        for part in &expected {
            assert!(message.contains(part), "{what}: `{part}` missing from: {message}");
        }
        // Where the mistake has a place in the file, the message gives its line and column.
        if expected.iter().any(|part| part.starts_with("bad.ron:")) {
            let position = message.split("bad.ron:").nth(1).unwrap_or_default();
            let mut numbers = position.split(':').take(2).map(|n| n.trim().parse::<usize>());
            assert!(numbers.all(|n| n.is_ok_and(|n| n > 0)), "{what}: a line and column: {message}");
        }
    }
}

#[test]
fn every_experiment_file_in_the_repository_is_valid() {
    let dir = support::workspace().join("experiments");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("experiments/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "ron") {
            let experiment = triad::stages::load_experiment(&path).unwrap_or_else(|e| panic!("{e}"));
            triad::stages::pipeline::preflight(&experiment, &path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} experiment files");
}
