//! An encoder-decoder (T5) through every stage kind, end to end through the `triad` binary on the
//! real review snippets: span-corruption and prefix-LM pretraining, SFT (prompt to the encoder,
//! response to the decoder), reward models (from pairs and from ratings), PPO with a value head on the decoder's states, DPO
//! and GRPO from the SFT model, and an evaluation with every measure (perplexity of the span
//! targets, ROUGE, KL to SFT, the reward model's score, a win-rate). Settings the model family
//! cannot take are refused by `triad validate`, before anything trains.

use crate::support;

use std::path::PathBuf;

use triad::runs::metrics::{MetricRow, read_rows};

fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("t5-{name}"))
}

/// A small T5 experiment on the review snippets with `stages`.
fn experiment(tokenizer: &str, stages: &str) -> String {
    r#"
Experiment(
    name: "t5",
    seed: 3,
    data: { REVIEWS },
    plugins: {
        "length": (path: "{LENGTH}", config: (min_chars: 20, max_chars: 300)),
        "vader": (path: "{VADER}"),
        "rouge": (path: "{ROUGE}"),
    },
    tokenizer: TOKENIZER,
    model: T5(d_model: 32, d_kv: 8, num_heads: 4, d_ff: 64, num_layers: 1, num_decoder_layers: 1, context: 48,
              tie_word_embeddings: true),
    stages: [STAGES],
)
"#
    .replace("{LENGTH}", &support::plugin_dir("length-filter"))
    .replace("{VADER}", &support::plugin_dir("lexicon-sentiment"))
    .replace("{ROUGE}", &support::plugin_dir("rouge"))
    .replace("REVIEWS", support::REVIEWS)
    .replace("TOKENIZER", tokenizer)
    .replace("STAGES", stages)
}

const TOKENIZER: &str = r#"TrainBpe(vocab_size: 512, on: "reviews", sentinels: 20)"#;

const EVERY_STAGE: &str = r#"
        Pretrain(name: "base", data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1),
                 train: (steps: 60, batch: 8, lr: 3e-3, eval_every: 30, eval_batches: 2)),
        Pretrain(name: "prefix", data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1), objective: PrefixLm,
                 train: (steps: 60, batch: 8, lr: 3e-3, eval_every: 30, eval_batches: 2)),
        Sft(name: "sft", from: "base",
            examples: (data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1), format: Continuation(words: 4)),
            train: (steps: 60, batch: 8, lr: 3e-3, eval_every: 30, eval_batches: 2)),
        RewardModel(name: "rm", from: "base", data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1),
            objective: Pairwise(rating: "rating", min_gap: 1.5), train: (steps: 30, batch: 8, lr: 1e-3, eval_every: 30)),
        RewardModel(name: "rm-ratings", from: "base", data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1),
            objective: Ratings(field: "rating"), train: (steps: 30, batch: 8, lr: 1e-3, eval_every: 30)),
        Ppo(name: "ppo", policy: "sft",
            prompts: (data: "reviews", filters: ["length"], split: Hash(valid_fraction: 0.1), format: Continuation(words: 4)),
            reward: [Model(stage: "rm")], generation: (max_new_tokens: 8),
            train: (steps: 3, rollouts: 8, minibatch: 4, epochs: 2, lr: 1e-4, eval_prompts: 8)),
        Dpo(name: "dpo", policy: "sft",
            pairs: Judged(prompts: (data: "reviews", filters: ["length"], format: Continuation(words: 4), limit: 48),
                samples: 4, judge: [Plugin(name: "vader")], min_gap: 0.1, generation: (max_new_tokens: 8), held_out: 8),
            train: (steps: 4, batch: 4, lr: 1e-3, eval_every: 4, eval_batches: 2)),
        Grpo(name: "grpo", policy: "sft",
            prompts: (data: "reviews", filters: ["length"], format: Continuation(words: 4)),
            reward: [Plugin(name: "vader")], group: 4, generation: (max_new_tokens: 8),
            train: (steps: 2, prompts: 4, lr: 1e-3, eval_every: 2, eval_prompts: 8)),
        Eval(name: "eval", models: ["base", "sft", "ppo", "dpo", "grpo"], prompts_of: "ppo", max_prompts: 24, metrics: ["rouge"],
             generation: (max_new_tokens: 8), perplexity_of: "base", kl_to: "sft", score_with: [RewardModel("rm")],
             win_rate: [(a: "ppo", b: "sft", judge: Plugin("vader"))]),
"#;

/// The values of `metric` in a stage's metrics, in step order.
fn series(rows: &[MetricRow], metric: &str) -> Vec<f64> {
    rows.iter().filter(|r| r.metric == metric).map(|r| r.value).collect()
}

#[test]
fn t5_runs_every_stage_kind_on_real_reviews() {
    let dir = scratch("every-stage");
    std::fs::write(dir.join("e.ron"), experiment(TOKENIZER, EVERY_STAGE)).expect("write");
    let out = support::triad(&dir, &["run", "e.ron"]);
    assert!(out.status.success(), "triad run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.join("runs/t5/seed3");
    let rows = |stage: &str| read_rows(&run.join(stage).join("metrics.jsonl")).expect("metrics");

    // Both pretraining objectives learn: the held-out loss of their targets falls.
    for stage in ["base", "prefix"] {
        let loss = series(&rows(stage), "eval/loss");
        assert!(loss.len() >= 2 && loss[loss.len() - 1] < loss[0] - 0.3, "{stage}: held-out loss {loss:?}");
    }
    // SFT learns the responses from the encoded prompts.
    let sft = series(&rows("sft"), "eval/loss");
    assert!(sft[sft.len() - 1] < sft[0] - 0.5, "SFT held-out loss {sft:?}");
    // Reward models from pairs and from ratings, measured on held-out pairs.
    for stage in ["rm", "rm-ratings"] {
        let accuracy = series(&rows(stage), "eval/pair_accuracy");
        assert!(accuracy.iter().all(|a| (0.0..=1.0).contains(a)) && !accuracy.is_empty(), "{stage}: {accuracy:?}");
        assert!(series(&rows(stage), "eval/spearman").iter().all(|r| r.is_finite()), "{stage}");
    }
    // PPO: a value head on the decoder's states, a KL to the frozen SFT model.
    let ppo = rows("ppo");
    assert_eq!(series(&ppo, "train/reward").len(), 3);
    assert!(series(&ppo, "train/kl").iter().all(|k| k.is_finite()));
    assert!(series(&ppo, "train/explained_variance").iter().all(|v| v.is_finite()));
    // DPO starts at its reference: its first loss is ln 2.
    let dpo = series(&rows("dpo"), "train/loss");
    assert!((dpo[0] - std::f64::consts::LN_2).abs() < 1e-4, "DPO's first loss {}", dpo[0]);
    assert_eq!(series(&rows("grpo"), "train/reward").len(), 2);

    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval/stage.json")).expect("eval output")).expect("JSON");
    let metric = |name: &str| eval["metrics"][name].as_f64().unwrap_or_else(|| panic!("no `{name}` in {eval}"));
    for model in ["base", "sft", "ppo", "dpo", "grpo"] {
        assert!(metric(&format!("{model}/perplexity")) > 1.0);
        assert!(metric(&format!("{model}/rougeL")) >= 0.0);
        assert!(metric(&format!("{model}/score/rm")).is_finite());
    }
    // The perplexity of the span-corruption targets is the one pretraining measured, below the
    // uniform guess over the 532 tokens.
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("base/stage.json")).expect("base output")).expect("JSON");
    let pretrained = base["metrics"]["eval/perplexity"].as_f64().expect("base perplexity");
    assert!((metric("base/perplexity") - pretrained).abs() < 1e-6 * pretrained, "{pretrained} vs {eval}");
    assert!(pretrained < 532.0, "{pretrained}");
    assert_eq!(metric("sft/kl"), 0.0);
    assert!(metric("ppo/kl") >= 0.0);
    let win = metric("ppo/win_rate_over_sft");
    assert!((0.0..=1.0).contains(&win), "{win}");

    // The trained models are Hugging Face T5 folders.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("sft/model/config.json")).expect("config")).expect("JSON");
    assert_eq!(config["architectures"][0], "T5ForConditionalGeneration");
}

#[test]
fn settings_a_model_family_cannot_take_are_refused_before_training() {
    let dir = scratch("refused");
    let pretrain = |objective: &str| {
        format!(r#"Pretrain(name: "base", data: "reviews", {objective} train: (steps: 2, batch: 2, lr: 1e-3)),"#)
    };
    let cases = [
        (experiment(TOKENIZER, &pretrain("objective: CausalLm,")), "CausalLm trains a decoder"),
        (
            experiment(r#"TrainBpe(vocab_size: 512, on: "reviews")"#, &pretrain("")),
            "needs 3 sentinel tokens (one per span, one to end the targets), and the tokenizer has 0",
        ),
        (
            experiment(
                TOKENIZER,
                r#"Sft(name: "sft", examples: (data: "reviews", format: Continuation(words: 4)), packing: true,
                   train: (steps: 2, batch: 2, lr: 1e-3)),"#,
            ),
            "remove `packing: true`",
        ),
        (
            experiment(TOKENIZER, &pretrain("objective: SpanCorruption(noise_density: 0.15, mean_span_length: 3.0),"))
                .replace(
                "T5(d_model: 32, d_kv: 8, num_heads: 4, d_ff: 64, num_layers: 1, num_decoder_layers: 1, context: 48,
              tie_word_embeddings: true)",
                "Gpt(layers: 1, heads: 2, d_model: 32, context: 48)",
            ),
            "SpanCorruption needs an encoder-decoder (T5)",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(dir.join("e.ron"), &text).expect("write");
        let out = support::triad(&dir, &["validate", "e.ron"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "expected `{expected}`:\n{stderr}");
        assert!(!dir.join("runs").exists(), "nothing ran");
    }
}
