//! `triad bench grpo`: triad's GRPO stage against TRL's `GRPOTrainer` (`bench/grpo_reference.py`)
//! on the same CPU, in one invocation.
//!
//! Both sides start from the same SmolLM2-135M-Instruct weights (triad writes the model it loads
//! in Hugging Face format, with its tokenizer, for `transformers` to read), see the same prompts
//! in the same order (arithmetic word problems in the model's chat template; the reference checks
//! its tokenization of each prompt against triad's token ids), sample the same number of
//! responses per prompt with the same length limit and temperature, score them with the same rule
//! (the `math-answer` plugin in the sandbox; its Python twin `bench/math_answer.py` in TRL), keep
//! the same KL penalty and make one optimizer step per batch. triad's side is the real stage,
//! run as an experiment in a scratch folder; its iterations are timed by the stage itself.
//!
//! Each side reports the mean seconds per step over the timed steps (after warm-up steps) and
//! generated tokens per second (response tokens sampled in those steps over their time): the
//! responses differ in length between the sides, as samples do, so tokens per second is the rate
//! to compare and seconds per step the cost a user sees.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{BenchError, peak_rss_mib, run_reference};
use crate::data::arithmetic::{self, ArithOp};
use crate::data::blocks::draw_indices;
use crate::data::tokenizer::Tokenizer;
use crate::model::pretrained;
use crate::runs::metrics::read_rows;
use crate::stages::layout::{Layout, Template};
use crate::stages::{RunOptions, load_experiment, run_experiment};

/// The system prompt both sides put before each problem.
const SYSTEM: &str = "Solve the math problem. End your reply with the final answer as a number.";

/// The GRPO workload: `prompts` problems a step, `group` responses to each.
#[derive(Debug, Clone)]
pub struct GrpoBenchConfig {
    pub prompts: usize,
    pub group: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub kl_coef: f64,
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
    /// Threads on each side (PyTorch's intra-op threads; candle's pool is sized by the binary).
    pub threads: usize,
    pub seed: u64,
}

impl GrpoBenchConfig {
    /// SmolLM2-135M-Instruct's GRPO on arithmetic in the shape of
    /// `experiments/arithmetic-grpo-smollm2.ron`: 4 problems x 8 responses of at most 64 tokens a
    /// step, temperature 0.7, KL 0.04 (the learning rate does not change a step's work).
    pub fn smollm2(steps: usize, threads: usize) -> Self {
        GrpoBenchConfig {
            prompts: 4,
            group: 8,
            max_new_tokens: 64,
            temperature: 0.7,
            kl_coef: 0.04,
            lr: 5e-6,
            warmup: 1,
            steps,
            threads,
            seed: 1,
        }
    }

    fn iterations(&self) -> usize {
        self.warmup + self.steps
    }

    /// The problems both sides draw from: twice those a run uses, as `Tail(valid_fraction: 0.5)`
    /// leaves the first half to train.
    fn problems(&self) -> arithmetic::Options {
        arithmetic::Options {
            seed: self.seed,
            count: 2 * self.prompts * self.iterations(),
            max_operand: 20,
            operations: vec![ArithOp::Add, ArithOp::Subtract],
            steps: 1,
        }
    }
}

/// One side's figures over the timed steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoBenchResult {
    pub implementation: String,
    pub seconds_per_step: f64,
    /// Response tokens sampled per second of step time.
    pub tokens_per_s: f64,
    /// Mean tokens per response.
    pub response_length: f64,
    pub peak_rss_mib: f64,
    /// The share of step time spent in reward functions.
    pub reward_share: f64,
}

/// A prompt as both sides see it, in the order triad's stage draws them.
#[derive(Serialize)]
struct PromptRow<'a> {
    prompt: String,
    prompt_ids: Vec<u32>,
    answer: &'a str,
}

/// Runs TRL's side, then triad's, on `workspace`'s `math-answer` plugin. Returns (triad, TRL).
pub fn bench_grpo(
    config: &GrpoBenchConfig,
    python: &Path,
    script: &Path,
    workspace: &Path,
) -> Result<(GrpoBenchResult, GrpoBenchResult), BenchError> {
    let scratch = std::env::temp_dir().join(format!("triad-bench-grpo-{}", std::process::id()));
    let result = bench_in(config, python, script, workspace, &scratch);
    // Model copies and a run folder: only this benchmark's inputs, gone whatever happened.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn bench_in(
    config: &GrpoBenchConfig,
    python: &Path,
    script: &Path,
    workspace: &Path,
    scratch: &Path,
) -> Result<(GrpoBenchResult, GrpoBenchResult), BenchError> {
    let model_dir = scratch.join("model");
    let loaded = pretrained::load("smollm2-135m-instruct", Path::new(""), &candle_core::Device::Cpu)?;
    loaded.model.save(&model_dir)?;
    let tokenizer = Tokenizer::from_inner(loaded.tokenizer);
    let tokenizer_path = model_dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path).map_err(|e| format!("writing {}: {e}", tokenizer_path.display()))?;

    let options = config.problems();
    let train_count = options.count / 2;
    let problems = arithmetic::generate(&options).map_err(|e| format!("generating problems: {e}"))?;
    let layout = Layout::new(&tokenizer, &Template::Chat { system: Some(SYSTEM.into()) }, loaded.chat.as_ref())
        .map_err(|e| format!("the chat template: {e}"))?;
    let mut rows = Vec::new();
    for step in 0..config.iterations() as u64 {
        for i in draw_indices(step, config.prompts, train_count, config.seed) {
            let problem = &problems[i];
            let prompt_ids = layout.prompt_tokens(&problem.question).map_err(|e| format!("problem {i}: {e}"))?;
            rows.push(PromptRow {
                prompt: layout.prompt_text(&problem.question),
                prompt_ids,
                answer: &problem.solution,
            });
        }
    }
    let prompts_path = scratch.join("prompts.jsonl");
    let lines: Vec<String> = rows.iter().map(|row| serde_json::to_string(row).expect("strings and numbers")).collect();
    std::fs::write(&prompts_path, lines.join("\n") + "\n")
        .map_err(|e| format!("writing {}: {e}", prompts_path.display()))?;

    // TRL first: its process then starts from a small parent, not from ours at its peak.
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg("--model")
        .arg(&model_dir)
        .arg("--prompts")
        .arg(&prompts_path)
        .args(["--group", &config.group.to_string(), "--prompts-per-step", &config.prompts.to_string()])
        .args(["--max-new-tokens", &config.max_new_tokens.to_string()])
        .args(["--temperature", &config.temperature.to_string(), "--beta", &config.kl_coef.to_string()])
        .args(["--lr", &config.lr.to_string(), "--warmup", &config.warmup.to_string()])
        .args(["--steps", &config.steps.to_string(), "--threads", &config.threads.to_string()])
        .args(["--seed", &config.seed.to_string(), "--output-dir"])
        .arg(scratch.join("trl"));
    // The reference prints nothing until it ends: say what is running.
    tracing::info!(steps = config.iterations(), "TRL's side: GRPOTrainer on the same prompts");
    let reference: GrpoBenchResult = run_reference(&mut command, script)?;

    let ours = run_triad(config, workspace, scratch)?;
    Ok((ours, reference))
}

/// triad's side: the GRPO stage of an experiment written to match the reference.
fn run_triad(config: &GrpoBenchConfig, workspace: &Path, scratch: &Path) -> Result<GrpoBenchResult, BenchError> {
    let text = experiment_text(config, &workspace.join("plugins").join("math-answer"));
    let path = scratch.join("bench-grpo.ron");
    std::fs::write(&path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let experiment = load_experiment(&path).map_err(|e| format!("the benchmark's experiment: {e}"))?;
    let options = RunOptions { runs_root: scratch.join("runs"), force: Vec::new() };
    let outcomes = run_experiment(&experiment, &path, &options).map_err(|e| format!("triad's GRPO stage: {e}"))?;
    let stage_dir = outcomes
        .first()
        .and_then(|run| run.stages.first())
        .map(|stage| stage.dir.clone())
        .ok_or_else(|| "triad's run produced no stage".to_string())?;
    summarise(config, &stage_dir)
}

/// The experiment triad's side runs: one Grpo stage matching the reference, rewarded by the
/// `math-answer` plugin at `plugin`, never evaluating or checkpointing inside the timed steps.
fn experiment_text(config: &GrpoBenchConfig, plugin: &Path) -> String {
    let problems = config.problems();
    format!(
        r#"Experiment(
    name: "bench-grpo",
    seed: {seed},
    data: {{
        "problems": Arithmetic(seed: {seed}, count: {count}, max_operand: {max_operand}, operations: {operations:?}),
    }},
    plugins: {{ "math": (path: {plugin:?}) }},
    model: Pretrained("smollm2-135m-instruct"),
    stages: [
        Grpo(
            name: "grpo",
            prompts: (data: "problems", split: Tail(valid_fraction: 0.5), format: Fields(prompt: "question", response: "solution")),
            template: Chat(system: {SYSTEM:?}),
            reward: [Plugin(name: "math")],
            group: {group},
            kl_coef: {kl_coef:?},
            generation: (max_new_tokens: {max_new_tokens}, temperature: {temperature:?}),
            train: (steps: {steps}, prompts: {prompts}, lr: {lr:?}, eval_prompts: 0, checkpoint_every: {never}),
        ),
    ],
)"#,
        seed = config.seed,
        count = problems.count,
        max_operand = problems.max_operand,
        operations = problems.operations,
        plugin = plugin.display().to_string(),
        group = config.group,
        kl_coef = config.kl_coef,
        max_new_tokens = config.max_new_tokens,
        temperature = config.temperature,
        steps = config.iterations(),
        prompts = config.prompts,
        lr = config.lr,
        never = config.iterations() + 1,
    )
}

/// The timed steps' figures from the stage's metrics stream.
fn summarise(config: &GrpoBenchConfig, stage_dir: &Path) -> Result<GrpoBenchResult, BenchError> {
    let metrics_path = stage_dir.join("metrics.jsonl");
    let rows = read_rows(&metrics_path).map_err(|e| format!("reading the stage's metrics: {e}"))?;
    let timed = |metric: &str| -> Vec<f64> {
        let first = config.warmup as u64 + 1;
        rows.iter().filter(|r| r.metric == metric && r.step >= first).map(|r| r.value).collect()
    };
    let (seconds, lengths, shares) =
        (timed("time/iteration_seconds"), timed("train/response_length"), timed("time/plugin_share"));
    if seconds.len() != config.steps || lengths.len() != config.steps {
        return Err(
            format!("{} holds {} timed steps, not {}", metrics_path.display(), seconds.len(), config.steps).into()
        );
    }
    let total: f64 = seconds.iter().sum();
    let responses = (config.prompts * config.group) as f64;
    let tokens: f64 = lengths.iter().map(|l| l * responses).sum();
    let plugin_seconds: f64 = shares.iter().zip(&seconds).map(|(share, s)| share * s).sum();
    Ok(GrpoBenchResult {
        implementation: format!("triad Grpo stage (candle 0.11, {})", super::kernels_label()),
        seconds_per_step: total / config.steps as f64,
        tokens_per_s: tokens / total,
        response_length: lengths.iter().sum::<f64>() / lengths.len() as f64,
        peak_rss_mib: peak_rss_mib(),
        reward_share: plugin_seconds / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::Stage;

    #[test]
    fn the_benchmark_experiment_is_a_valid_grpo_stage_of_the_configured_shape() {
        let config = GrpoBenchConfig::smollm2(3, 2);
        let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/math-answer");
        let text = experiment_text(&config, &plugin);
        let experiment: crate::stages::Experiment =
            crate::experiment::load::parse_experiment(Path::new("bench-grpo.ron"), &text).expect("valid experiment");
        let [Stage::Grpo(grpo)] = experiment.stages.as_slice() else { panic!("one Grpo stage: {text}") };
        assert_eq!((grpo.group, grpo.train.prompts, grpo.train.steps), (8, 4, 4));
        assert_eq!(grpo.train.eval_prompts, 0);
        assert_eq!(grpo.generation.max_new_tokens, 64);
    }
}
