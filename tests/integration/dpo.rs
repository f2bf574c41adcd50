//! The DPO stage end to end through the `triad` binary on the real review snippets: pairs
//! labelled by a judge (responses sampled from the SFT model, ranked by the VADER reward plugin)
//! are saved and every one keeps the configured gap when the plugin scores it again; training
//! starts at the reference (loss ln 2, zero margin) and logs the implicit rewards; evaluation
//! reports each model's KL to the reference and the win-rate. The same pairs, written as a JSONL
//! file, come back unchanged through the `Fields` and `Ratings` sources. A loss plugin that reads
//! a feature its stage does not provide is refused by `triad validate` and `--dry-run`, once,
//! with the feature's WIT name.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use triad::plugins::Episode;
use triad::runs::metrics::read_rows;
use triad::stages::pairs::{Pair, read_pairs};

fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("dpo-{name}"))
}

/// The experiment's head: the review snippets, the plugins, a small model.
fn head(name: &str) -> String {
    r#"
Experiment(
    name: "NAME",
    seed: 5,
    data: {
        "reviews": Package(pip: "vadersentiment==3.3.2", sdist: true,
            file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner: "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            format: Tsv(columns: ["id", "rating", "text"], text_column: "text")),
        DATA
    },
    plugins: {
        "length": (path: "{LENGTH}", config: (min_chars: 20, max_chars: 300)),
        "vader": (path: "{VADER}"),
        "dpo-loss": (path: "{DPO}", config: (beta: 0.1)),
    },
    tokenizer: TrainBpe(vocab_size: 512, on: "reviews"),
    model: Gpt(layers: 1, heads: 2, d_model: 32, context: 48),
    stages: [
        Pretrain(name: "base", data: "reviews", filters: ["length"], train: (steps: 30, batch: 8, lr: 3e-3, eval_batches: 2)),
"#
    .replace("NAME", name)
    .replace("{LENGTH}", &support::plugin_dir("length-filter"))
    .replace("{VADER}", &support::plugin_dir("lexicon-sentiment"))
    .replace("{DPO}", &support::plugin_dir("dpo"))
}

const JUDGED: &str = r#"
        Sft(name: "sft", from: "base", examples: (data: "reviews", filters: ["length"], format: Continuation(words: 4)),
            train: (steps: 20, batch: 8, lr: 1e-3, eval_batches: 2)),
        Dpo(name: "dpo", policy: "sft",
            pairs: Judged(prompts: (data: "reviews", filters: ["length"], format: Continuation(words: 4), limit: 96),
                samples: 4, judge: [Plugin(name: "vader")], min_gap: 0.3, generation: (max_new_tokens: 10), held_out: 40),
            train: (steps: 6, batch: 4, lr: 1e-3, eval_every: 3, eval_batches: 2)),
        Eval(name: "eval", models: ["sft", "dpo"], prompts_of: "sft", max_prompts: 16, generation: (max_new_tokens: 8),
            kl_to: "sft", score_with: [Plugin("vader")], win_rate: [(a: "dpo", b: "sft", judge: Plugin("vader"))]),
    ],
)
"#;

fn succeed(dir: &Path, args: &[&str]) {
    let out = support::triad(dir, args);
    assert!(out.status.success(), "triad {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The set of (prompt, chosen, rejected) of pairs, both sides together.
fn triples(pairs: &[Pair]) -> BTreeSet<(String, String, String)> {
    pairs.iter().map(|p| (p.prompt.clone(), p.chosen.clone(), p.rejected.clone())).collect()
}

#[test]
fn judge_labelled_pairs_train_a_policy_and_come_back_through_fields_and_ratings() {
    let dir = scratch("judged");
    std::fs::write(dir.join("judged.ron"), head("judged").replace("DATA", "") + JUDGED).expect("write");
    succeed(&dir, &["run", "judged.ron"]);
    let run = dir.join("runs/judged/seed5");

    // Every saved pair keeps the gap when the judge scores it again, outside the stage.
    let saved = read_pairs(&run.join("dpo/pairs.jsonl")).expect("pairs.jsonl");
    assert!(saved.train.len() >= 5 && !saved.valid.is_empty(), "{} + {} pairs", saved.train.len(), saved.valid.len());
    let all: Vec<Pair> = saved.train.iter().chain(&saved.valid).cloned().collect();
    let vader = support::load("lexicon-sentiment", "{}").into_reward().expect("a reward plugin");
    let episodes = |pick: fn(&Pair) -> &String| -> Vec<Episode> {
        all.iter().map(|p| Episode { prompt: p.prompt.clone(), response: pick(p).clone(), reference: None }).collect()
    };
    let chosen = vader.score(&episodes(|p| &p.chosen)).expect("scores");
    let rejected = vader.score(&episodes(|p| &p.rejected)).expect("scores");
    for (i, pair) in all.iter().enumerate() {
        assert!(chosen[i] - rejected[i] >= 0.3, "pair {i}: {} vs {}: {pair:?}", chosen[i], rejected[i]);
        assert_eq!((pair.chosen_score, pair.rejected_score), (Some(chosen[i]), Some(rejected[i])), "pair {i}");
    }

    // Training starts at the reference: loss ln 2 and no margin on held-out pairs; then it logs
    // the implicit rewards every step.
    let rows = read_rows(&run.join("dpo/metrics.jsonl")).expect("metrics");
    let at = |step: u64, metric: &str| {
        rows.iter()
            .find(|r| r.step == step && r.metric == metric)
            .map(|r| r.value)
            .unwrap_or_else(|| panic!("{metric}"))
    };
    assert!((at(0, "eval/loss") - std::f64::consts::LN_2).abs() < 1e-5, "{}", at(0, "eval/loss"));
    assert_eq!(at(0, "eval/reward_margin"), 0.0);
    for metric in ["train/loss", "train/chosen_reward", "train/rejected_reward", "train/reward_margin"] {
        assert_eq!(rows.iter().filter(|r| r.metric == metric).count(), 6, "{metric} every step");
    }
    assert!(at(6, "train/reward_margin") != 0.0 && at(6, "eval/reward_accuracy") >= 0.0);

    // The evaluation: the reference is 0 nats from itself, the trained policy is not.
    let eval = triad::runs::stage_record::StageRecord::read(&run.join("eval")).expect("readable").expect("record");
    assert_eq!(eval.metrics["sft/kl"], 0.0);
    assert!(eval.metrics["dpo/kl"] > 0.0, "{:?}", eval.metrics);
    let rate = eval.metrics["dpo/win_rate_over_sft"];
    assert!((0.0..=1.0).contains(&rate) && eval.metrics["dpo/win_rate_over_sft_low"] <= rate);
    assert!(eval.metrics.contains_key("sft/score/vader") && eval.metrics.contains_key("dpo/score/vader"));
    let dpo = triad::runs::stage_record::StageRecord::read(&run.join("dpo")).expect("readable").expect("record");
    assert!(dpo.metrics["time/seconds"] > 0.0);

    // The same pairs as a preference file (Fields) and as rated responses (Ratings); two
    // snippets may open with the same words, and Ratings would rank their responses together.
    let once: Vec<Pair> =
        all.iter().filter(|p| all.iter().filter(|q| q.prompt == p.prompt).count() == 1).cloned().collect();
    let mut preferences = String::new();
    let mut rated = String::new();
    for pair in &once {
        let json = |response: &str, score: Option<f64>| {
            serde_json::json!({ "prompt": pair.prompt, "response": response, "rating": score }).to_string()
        };
        preferences.push_str(
            &serde_json::json!({ "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected }).to_string(),
        );
        preferences.push('\n');
        rated.push_str(&format!(
            "{}\n{}\n",
            json(&pair.chosen, pair.chosen_score),
            json(&pair.rejected, pair.rejected_score)
        ));
    }
    std::fs::write(dir.join("preferences.jsonl"), preferences).expect("write");
    std::fs::write(dir.join("rated.jsonl"), rated).expect("write");
    let data = r#""preferences": Jsonl(path: "preferences.jsonl", text_field: "prompt"),
        "rated": Jsonl(path: "rated.jsonl", text_field: "prompt"),"#;
    let stages = r#"
        Dpo(name: "fields", policy: "base", pairs: Fields(data: "preferences", prompt: "text", chosen: "chosen", rejected: "rejected",
                split: Hash(valid_fraction: 0.3)),
            train: (steps: 2, batch: 4, lr: 1e-3)),
        Dpo(name: "ratings", policy: "base", loss: "dpo-loss",
            pairs: Ratings(data: "rated", prompt: "text", response: "response", rating: "rating", min_gap: 0.3,
                split: Hash(valid_fraction: 0.3)),
            train: (steps: 2, batch: 4, lr: 1e-3)),
    ],
)
"#;
    std::fs::write(dir.join("files.ron"), head("files").replace("DATA", data) + stages).expect("write");
    succeed(&dir, &["run", "files.ron"]);
    let files = dir.join("runs/files/seed5");
    for stage in ["fields", "ratings"] {
        let back = read_pairs(&files.join(stage).join("pairs.jsonl")).expect("pairs.jsonl");
        let back: Vec<Pair> = back.train.into_iter().chain(back.valid).collect();
        assert_eq!(triples(&back), triples(&once), "{stage}: the judged pairs, unchanged");
    }
    let plugin_rows = read_rows(&files.join("ratings/metrics.jsonl")).expect("metrics");
    assert!(plugin_rows.iter().any(|r| r.metric == "train/plugin/reward_accuracy"), "the plugin's figures are logged");
}

#[test]
fn a_loss_plugin_reading_a_feature_its_stage_lacks_is_refused_before_anything_runs() {
    let dir = scratch("features");
    let stages = r#"
        Sft(name: "sft", from: "base", loss: "dpo-loss",
            examples: (data: "reviews", filters: ["length"], format: Continuation(words: 4)),
            train: (steps: 2, batch: 4, lr: 1e-3)),
    ],
)
"#;
    std::fs::write(dir.join("bad.ron"), head("bad").replace("DATA", "") + stages).expect("write");
    for args in [&["validate", "bad.ron"][..], &["run", "bad.ron", "--dry-run"]] {
        let out = support::triad(&dir, args);
        assert!(!out.status.success(), "{args:?} refuses it");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = "loss plugin `dpo-loss` reads the feature `sequence-logprob`, which a Sft stage does not provide \
                    (it provides: logprob, mean-logprob, entropy, mask)";
        assert_eq!(stderr.matches(want).count(), 1, "{args:?} says it once:\n{stderr}");
    }
    assert!(!dir.join("runs").exists(), "nothing ran");
}
