//! The Grpo stage end to end through the `triad` binary on generated arithmetic word problems:
//! a small GPT is pretrained and fine-tuned, then trained by GRPO (native loss, group mean/std,
//! k3 penalty, token normalisation) and by RLOO (leave-one-out baseline, uniform groups dropped,
//! the `ppo-clip` loss plugin, k2 penalty, sequence normalisation, two epochs of minibatches),
//! both rewarded by the sandboxed `math-answer` plugin. Every diagnostic is logged at every
//! iteration; a one-step update starts at ratio 1 (nothing clipped); the logged accuracy is the
//! reward when the reward is 0 or 1; the evaluation's accuracy equals the plugin's native
//! function applied to the answers it saved, inside its 95% interval. Bad settings are refused
//! before anything trains.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use triad::runs::metrics::read_rows;

fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("grpo-{name}"))
}

fn experiment() -> String {
    r#"
Experiment(
    name: "grpo-test",
    seed: 3,
    data: { "problems": Arithmetic(seed: 2, count: 800, max_operand: 20) },
    plugins: {
        "math": (path: "{MATH}"),
        "clip": (path: "{CLIP}", config: (clip: 0.2, vf_coef: 0.0)),
    },
    tokenizer: Char(on: "problems", eos: true),
    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 128),
    stages: [
        Pretrain(name: "base", data: "problems", split: Hash(valid_fraction: 0.1), train: (steps: 40, batch: 8, lr: 3e-3, eval_batches: 2)),
        Sft(name: "sft", from: "base", examples: (data: "problems", format: Fields(prompt: "prompt", response: "solution")),
            train: (steps: 30, batch: 8, lr: 2e-3, eval_batches: 2)),
        Grpo(name: "grpo", policy: "sft", prompts: (data: "problems", format: Fields(prompt: "prompt", response: "solution")),
            reward: [Plugin(name: "math")], accuracy: (reward: "math"), group: 4, kl_coef: 0.05,
            generation: (max_new_tokens: 12), train: (steps: 3, prompts: 4, lr: 1e-3, eval_every: 3, eval_prompts: 8)),
        Grpo(name: "rloo", policy: "sft", prompts: (data: "problems", format: Fields(prompt: "prompt", response: "solution")),
            reward: [Plugin(name: "math")], accuracy: (reward: "math"), group: 4, baseline: LeaveOneOut,
            drop_uniform_groups: true, loss: "clip", loss_norm: Sequence, kl_coef: 0.1, kl_estimator: K2, clip_high: 0.28,
            generation: (max_new_tokens: 12), train: (steps: 3, prompts: 4, epochs: 2, minibatch: 8, lr: 1e-3, eval_every: 3, eval_prompts: 8)),
        Eval(name: "eval", models: ["sft", "grpo", "rloo"], prompts_of: "grpo", max_prompts: 40,
            generation: (max_new_tokens: 12), score_with: [Plugin("math")]),
    ],
)
"#
    .replace("{MATH}", &support::plugin_dir("math-answer"))
    .replace("{CLIP}", &support::plugin_dir("ppo-clip"))
}

/// A stage's metrics by step, then name.
fn metrics(stage_dir: &Path) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let mut by_step: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
    for row in read_rows(&stage_dir.join("metrics.jsonl")).expect("metrics") {
        by_step.entry(row.step).or_default().insert(row.metric, row.value);
    }
    by_step
}

fn stage_json(stage_dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(stage_dir.join("stage.json")).expect("stage.json")).expect("JSON")
}

#[test]
fn grpo_and_rloo_train_on_a_verifiable_reward_and_log_every_diagnostic() {
    let dir = scratch("run");
    std::fs::write(dir.join("g.ron"), experiment()).expect("write");
    let out = support::triad(&dir, &["run", "g.ron"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.join("runs/grpo-test/seed3");

    let every_iteration = [
        "train/reward",
        "train/reward/math",
        "train/reward_std",
        "train/uniform_groups",
        "train/kl",
        "train/response_length",
        "train/accuracy",
        "time/iteration_seconds",
        "time/plugin_share",
        "time/generation_seconds",
        "time/update_seconds",
        "train/policy_loss",
        "train/clip_fraction",
        "train/clip_fraction/low",
        "train/clip_fraction/high",
        "train/approx_kl",
        "train/kl_penalty",
        "train/entropy",
        "train/grad_norm",
    ];
    let grpo = metrics(&run.join("grpo"));
    assert!(grpo[&0].contains_key("eval/accuracy"), "the starting policy is evaluated: {:?}", grpo[&0]);
    for step in 1..=3 {
        let row = &grpo[&step];
        for name in every_iteration {
            assert!(row.contains_key(name), "grpo step {step} lacks {name}: {row:?}");
        }
        // The reward is 0 or 1 (no format bonus): the accuracy is the mean reward.
        assert_eq!(row["train/accuracy"], row["train/reward"], "step {step}");
        assert!((0.0..=1.0).contains(&row["train/uniform_groups"]));
        assert!(row["train/kl"] >= 0.0, "k3 is never negative: {}", row["train/kl"]);
        // One optimizer step per iteration: the policy that sampled is the one trained, every
        // ratio is 1 and nothing is clipped.
        assert_eq!(row["train/clip_fraction"], 0.0, "step {step}");
        assert!(row["train/approx_kl"].abs() < 1e-6, "step {step}: {}", row["train/approx_kl"]);
        assert!(row["time/plugin_share"] > 0.0 && row["time/plugin_share"] < 1.0);
    }

    let rloo = metrics(&run.join("rloo"));
    let trained: Vec<&BTreeMap<String, f64>> = (1..=3).map(|s| &rloo[&s]).collect();
    for row in &trained {
        assert!(row.contains_key("train/uniform_groups") && row["train/kl"] >= 0.0, "{row:?}");
    }
    // Where a group had signal, the plugin's loss was optimised (two epochs of two minibatches).
    let updated: Vec<&&BTreeMap<String, f64>> =
        trained.iter().filter(|row| row["train/uniform_groups"] < 1.0).collect();
    for row in &updated {
        assert!(row.contains_key("train/plugin_loss") && row.contains_key("train/kl_penalty"), "{row:?}");
    }

    // The evaluation's accuracy is the plugin's native function over the answers it saved.
    let eval = stage_json(&run.join("eval"))["metrics"].clone();
    let samples = std::fs::read_to_string(run.join("eval/samples.jsonl")).expect("samples");
    let reward = math_answer::MathAnswer::default();
    let mut models = BTreeSet::new();
    for model in ["sft", "grpo", "rloo"] {
        let scores: Vec<f64> = samples
            .lines()
            .map(|line| {
                let sample: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                let answer = sample[model].as_str().expect("an answer");
                reward.score_texts(answer, sample["reference"].as_str()).expect("scores")
            })
            .collect();
        assert_eq!(scores.len(), 40);
        let accuracy = scores.iter().sum::<f64>() / scores.len() as f64;
        let got = eval[format!("{model}/score/math")].as_f64().expect("accuracy");
        assert!((got - accuracy).abs() < 1e-12, "{model}: {got} vs {accuracy}");
        let (low, high) =
            (eval[format!("{model}/score/math_low")].as_f64(), eval[format!("{model}/score/math_high")].as_f64());
        let (low, high) = (low.expect("low"), high.expect("high"));
        assert!(low <= accuracy && accuracy <= high && low >= 0.0 && high <= 1.0, "{model}: {low} {accuracy} {high}");
        models.insert(model);
    }
    assert_eq!(models.len(), 3);
}

#[test]
fn bad_group_settings_are_refused_before_anything_trains() {
    let dir = scratch("bad");
    for (from, to, expected) in [
        ("group: 4, kl_coef: 0.05", "group: 1, kl_coef: 0.05", "group must be at least 2"),
        ("kl_coef: 0.05", "kl_coef: 0.05, clip_low: 1.5", "clip_low must be in (0, 1)"),
        ("kl_coef: 0.05", "kl_coef: -0.1", "kl_coef must be a number >= 0"),
    ] {
        std::fs::write(dir.join("bad.ron"), experiment().replacen(from, to, 1)).expect("write");
        let out = support::triad(&dir, &["validate", "bad.ron"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{to}: {stderr}");
        assert_eq!(stderr.matches(expected).count(), 1, "said once: {stderr}");
    }
    let text = experiment().replace(
        r#"accuracy: (reward: "math"), group: 4, kl_coef"#,
        r#"accuracy: (reward: "maths"), group: 4, kl_coef"#,
    );
    std::fs::write(dir.join("bad.ron"), text).expect("write");
    let out = support::triad(&dir, &["validate", "bad.ron"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("accuracy reads reward `maths`, which is not a term of the reward (terms: math)"),
        "{stderr}"
    );
    assert!(!dir.join("runs").exists(), "nothing ran");
}
