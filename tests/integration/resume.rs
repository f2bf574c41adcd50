//! Killed with SIGKILL early or late in a stage, a run resumes from that stage's last checkpoint
//! and ends bit for bit where an uninterrupted run ends: the same final metrics and the same
//! saved weights. Pretraining has its own such test (`pretrain.rs`); here every other kind: SFT
//! (the example order), the reward model, PPO (the optimizer's own step count, the KL
//! coefficient, the reward statistics, the sampling and shuffling seeds), DPO (its judged pairs
//! read back from the stage folder), GRPO (groups of samples, several epochs of minibatches) and
//! evaluation (which keeps no checkpoint: killed, it runs
//! again and writes the same answers and figures).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every stage kind on the rated review snippets, character-level; every training stage
/// checkpoints at every other step.
fn experiment() -> String {
    r#"
Experiment(
    name: "resume",
    seed: 11,
    data: {
        "reviews": Package(pip: "vadersentiment==3.3.2", sdist: true,
            file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner: "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            format: Tsv(columns: ["id", "rating", "text"], text_column: "text")),
    },
    plugins: { "length": (path: "{LENGTH}", config: (target_words: 6, tolerance: 1)) },
    tokenizer: Char(on: "reviews", eos: true),
    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 48),
    stages: [
        Pretrain(name: "base", data: "reviews", train: (steps: 20, batch: 8, lr: 3e-3, eval_batches: 2)),
        Sft(name: "sft", from: "base", examples: (data: "reviews", format: Continuation(words: 3)),
            train: (steps: 12, batch: 8, lr: 1e-3, eval_batches: 2, checkpoint_every: 2)),
        RewardModel(name: "rm", from: "base", data: "reviews", objective: Ratings(field: "rating"),
            train: (steps: 12, batch: 8, lr: 1e-3, checkpoint_every: 2)),
        Ppo(name: "ppo", policy: "sft", prompts: (data: "reviews", format: Continuation(words: 3)),
            reward: [Model(stage: "rm"), Plugin(name: "length", weight: 0.5)], normalize_reward: true,
            kl: Adaptive(init: 0.1, target: 2.0, horizon: 50), generation: (max_new_tokens: 10),
            train: (steps: 10, rollouts: 8, minibatch: 4, epochs: 2, lr: 1e-3, eval_prompts: 8, checkpoint_every: 2)),
        Dpo(name: "dpo", policy: "sft",
            pairs: Judged(prompts: (data: "reviews", format: Continuation(words: 3), limit: 32), samples: 3,
                judge: [Model(stage: "rm"), Plugin(name: "length", weight: 0.5)], generation: (max_new_tokens: 10), held_out: 16),
            train: (steps: 10, batch: 4, lr: 1e-3, eval_batches: 2, checkpoint_every: 2)),
        Grpo(name: "grpo", policy: "sft", prompts: (data: "reviews", format: Continuation(words: 3)),
            reward: [Model(stage: "rm"), Plugin(name: "length", weight: 0.5)], group: 4, kl_coef: 0.05,
            generation: (max_new_tokens: 10),
            train: (steps: 10, prompts: 2, epochs: 2, minibatch: 4, lr: 1e-3, eval_prompts: 8, checkpoint_every: 2)),
        Eval(name: "eval", models: ["sft", "ppo"], prompts_of: "ppo", max_prompts: 64,
            generation: (max_new_tokens: 10), win_rate: (a: "ppo", b: "sft", judge: RewardModel("rm"))),
    ],
)
"#
    .replace("{LENGTH}", &support::workspace().join("plugins/target-length").display().to_string())
}

fn scratch(name: &str) -> PathBuf {
    let dir = support::scratch(&format!("resume-{name}"));
    std::fs::write(dir.join("e.ron"), experiment()).expect("write experiment");
    dir
}

fn triad(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_triad"));
    command.current_dir(dir).args(["run", "e.ron"]).env("RUST_BACKTRACE", "0");
    command
}

fn run_to_end(dir: &Path) -> String {
    let out = triad(dir).output().expect("running triad");
    assert!(out.status.success(), "triad run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stage(dir: &Path, name: &str) -> PathBuf {
    dir.join("runs/resume/seed11").join(name)
}

fn latest_checkpoint(dir: &Path, name: &str) -> u64 {
    std::fs::read(stage(dir, name).join("checkpoints/latest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// A stage's final metrics without the timings, and what it saved (its weights; an evaluation's
/// answers).
fn outcome(dir: &Path, name: &str) -> (serde_json::Value, Vec<u8>) {
    let record =
        triad::runs::stage_record::StageRecord::read(&stage(dir, name)).expect("readable").expect("stage.json");
    let metrics: serde_json::Map<String, serde_json::Value> = record
        .metrics
        .into_iter()
        .filter(|(metric, _)| !metric.starts_with("time/"))
        .map(|(metric, value)| (metric, serde_json::json!(value)))
        .collect();
    let saved: &[&str] = match name {
        "eval" => &["samples.jsonl"],
        "rm" => &["model/model.safetensors", "reward_head.safetensors"],
        "dpo" => &["model/model.safetensors", "pairs.jsonl"],
        _ => &["model/model.safetensors"],
    };
    let mut bytes = Vec::new();
    for file in saved {
        bytes.extend(std::fs::read(stage(dir, name).join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}")));
    }
    (serde_json::Value::Object(metrics), bytes)
}

/// Whether the run is inside stage `name`: past checkpoint `at` (a training stage), or started
/// (evaluation, which keeps no checkpoint).
fn reached(dir: &Path, name: &str, at: u64) -> bool {
    if name == "eval" {
        return stage(dir, name).join("stage.json").is_file();
    }
    latest_checkpoint(dir, name) >= at
}

#[test]
fn every_stage_kind_killed_mid_stage_resumes_bit_for_bit() {
    const STAGES: [&str; 6] = ["sft", "rm", "ppo", "dpo", "grpo", "eval"];
    // Early and late in each training stage; evaluation as soon as it starts.
    const KILLS: [(&str, u64); 11] = [
        ("sft", 2),
        ("sft", 6),
        ("rm", 2),
        ("rm", 8),
        ("ppo", 2),
        ("ppo", 6),
        ("dpo", 2),
        ("dpo", 6),
        ("grpo", 2),
        ("grpo", 6),
        ("eval", 0),
    ];
    let whole = scratch("whole");
    run_to_end(&whole);
    for (name, at) in KILLS {
        let killed = scratch(&format!("killed-{name}-{at}"));
        let mut child = triad(&killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn triad");
        let started = Instant::now();
        while !reached(&killed, name, at) {
            assert!(started.elapsed() < Duration::from_secs(900), "{name} not reached after 15 minutes");
            assert!(child.try_wait().expect("child state").is_none(), "the run ended before {name} could be killed");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let stdout = run_to_end(&killed);
        if name != "eval" {
            assert!(stdout.contains(&format!("| seed11 | {name} | resumed at step")), "{name} resumed:\n{stdout}");
        }
        for later in STAGES {
            let (metrics, saved) = outcome(&killed, later);
            let (expected_metrics, expected_saved) = outcome(&whole, later);
            assert_eq!(metrics, expected_metrics, "{later}'s final metrics after killing {name}");
            assert!(saved == expected_saved, "{later}'s saved output after killing {name} differs");
        }
    }
}
