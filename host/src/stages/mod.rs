//! Stages: what an experiment does, in order. Each stage kind is one module that owns its config
//! (with its defaults), its validation, what it reads (stages, data, plugin slots) and how it
//! runs; [`Stage`] holds one variant per kind and delegates to them. The [`pipeline`] runs the
//! stages of every run in dependency order and caches their outputs by key.
//!
//! Adding a stage kind: write its module (config + [`StageSpec`] + `run`), add its variant to
//! [`Stage`] and to the `delegate!` list below.

pub mod context;
pub mod dpo;
pub mod eval;
pub mod examples;
pub mod grpo;
pub mod layout;
pub mod pairs;
pub mod perplexity;
pub mod pipeline;
pub mod ppo;
pub mod pretrain;
pub mod reward_model;
pub mod rewards;
pub mod sft;
pub mod winrate;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use context::{RunContext, StageError};
pub use pipeline::{RunOptions, RunOutcome, StageOutcome, run_experiment};

use crate::data::tokenizer::TokenizerSpec;
use crate::experiment::{ExperimentError, StageSpec};
use crate::model::ModelConfig;
use crate::plugins::{Feature, PluginKind};
use crate::runs::report::write_training_report;
use crate::train::TrainSummary;

/// An experiment whose stages are triad's stage kinds.
pub type Experiment = crate::experiment::Experiment<Stage>;

/// Read, parse and check an experiment file (see [`crate::experiment::load`]).
pub fn load_experiment(path: &Path) -> Result<Experiment, ExperimentError> {
    crate::experiment::load_experiment(path)
}

/// One stage of the pipeline, as written in an experiment file: `Pretrain(name: ..., ...)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Stage {
    /// Self-supervised causal language modelling.
    Pretrain(pretrain::PretrainStage),
    /// Supervised fine-tuning on prompt/response pairs, loss on response tokens only.
    Sft(sft::SftStage),
    /// A scalar reward head on a backbone, trained on human ratings or preferences.
    RewardModel(reward_model::RewardModelStage),
    /// RLHF: PPO on the policy's own samples, rewarded by reward models and reward plugins,
    /// under a KL penalty to the frozen starting policy.
    Ppo(ppo::PpoStage),
    /// Direct preference optimisation (DPO, IPO, conservative DPO) on preference pairs, under
    /// an implicit KL constraint to a frozen reference.
    Dpo(dpo::DpoStage),
    /// Group-relative RL (GRPO, Dr. GRPO, RLOO): groups of responses to each prompt, rewarded
    /// by reward plugins and models, advantages relative to the group, no critic.
    Grpo(grpo::GrpoStage),
    /// Evaluation: perplexity, generation scored by metric plugins, win-rate under a judge.
    Eval(eval::EvalStage),
}

/// Calls `$call` on the config of whichever kind `$stage` is.
macro_rules! delegate {
    ($stage:expr, $config:ident => $call:expr) => {
        match $stage {
            Stage::Pretrain($config) => $call,
            Stage::Sft($config) => $call,
            Stage::RewardModel($config) => $call,
            Stage::Ppo($config) => $call,
            Stage::Dpo($config) => $call,
            Stage::Grpo($config) => $call,
            Stage::Eval($config) => $call,
        }
    };
}

impl StageSpec for Stage {
    fn name(&self) -> &str {
        delegate!(self, s => s.name())
    }
    fn kind(&self) -> &'static str {
        delegate!(self, s => s.kind())
    }
    fn inputs(&self) -> Vec<&str> {
        delegate!(self, s => s.inputs())
    }
    fn data(&self) -> Vec<&str> {
        delegate!(self, s => s.data())
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        delegate!(self, s => s.plugin_slots())
    }
    fn produces_model(&self) -> bool {
        delegate!(self, s => s.produces_model())
    }
    fn loss_features(&self) -> &'static [Feature] {
        delegate!(self, s => s.loss_features())
    }
    fn validate(&self) -> Result<(), String> {
        delegate!(self, s => s.validate())
    }
    fn check_model(&self, model: &ModelConfig, tokenizer: &TokenizerSpec) -> Result<(), String> {
        delegate!(self, s => s.check_model(model, tokenizer))
    }
    fn describe(&self) -> String {
        delegate!(self, s => s.describe())
    }
}

/// What a stage's run leaves for the pipeline: its final metrics (`stage.json`), and the step
/// it resumed from (0 when it started afresh).
#[derive(Debug, Clone, Default)]
pub struct StageOutput {
    pub metrics: BTreeMap<String, f64>,
    pub resumed_from: u64,
}

impl StageOutput {
    /// A training stage's output: its last evaluation (`eval/<metric>`) and training loss, with
    /// its report written into `dir`.
    pub fn trained(dir: &Path, stage: &str, summary: &TrainSummary) -> Result<StageOutput, StageError> {
        let mut metrics: BTreeMap<String, f64> =
            summary.final_eval.iter().map(|(name, value)| (format!("eval/{name}"), *value)).collect();
        metrics.insert("train/loss".into(), summary.final_train_loss);
        write_training_report(dir, stage, &metrics, summary.seconds)?;
        Ok(StageOutput { metrics, resumed_from: summary.resumed_from })
    }
}

impl Stage {
    /// Run the stage into `dir` (its output folder, reached through the run's link).
    pub fn run(&self, ctx: &RunContext, dir: &Path) -> Result<StageOutput, StageError> {
        match self {
            Stage::Pretrain(config) => pretrain::run(ctx, config, dir).map(|(_, output)| output),
            Stage::Sft(config) => sft::run(ctx, config, dir).map(|(_, output)| output),
            Stage::RewardModel(config) => reward_model::run(ctx, config, dir).map(|(_, output)| output),
            Stage::Ppo(config) => ppo::run(ctx, config, dir),
            Stage::Dpo(config) => dpo::run(ctx, config, dir).map(|(_, output)| output),
            Stage::Grpo(config) => grpo::run(ctx, config, dir),
            Stage::Eval(config) => eval::run(ctx, config, dir),
        }
    }
}

/// Sweeps over real stage configs (the expansion itself is `experiment::sweep`).
#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::experiment::sweep::expand;
    use crate::experiment::{KlControl, parse_experiment};

    fn experiment(sweep: &str) -> Result<Experiment, ExperimentError> {
        let text = format!(
            r#"Experiment(
                name: "s", seed: 1,
                data: {{ "d": Text(path: "d.txt") }},
                tokenizer: Char(on: "d"),
                model: Gpt(layers: 1, heads: 1, d_model: 8, context: 8),
                stages: [
                    Pretrain(name: "base", data: "d", train: (steps: 10, batch: 2, lr: 1e-3)),
                    Ppo(name: "ppo", policy: "base", prompts: (data: "d", format: Continuation(words: 2)),
                        reward: [Model(stage: "base")], train: (steps: 2, rollouts: 4, minibatch: 2)),
                ],
                sweep: {sweep},
            )"#
        );
        parse_experiment(std::path::Path::new("s.ron"), &text)
    }

    #[test]
    fn a_grid_of_two_values_and_two_seeds_makes_four_named_runs() {
        let points =
            expand(&experiment(r#"{ "ppo.kl.target": [3.0, 6.0], "seed": [1, 2] }"#).expect("valid")).expect("points");
        let names: Vec<&str> = points.iter().map(|p| p.run.as_str()).collect();
        assert_eq!(
            names,
            [
                "ppo.kl.target=3.0-seed1",
                "ppo.kl.target=6.0-seed1",
                "ppo.kl.target=3.0-seed2",
                "ppo.kl.target=6.0-seed2"
            ]
        );
        let Stage::Ppo(ppo) = &points[1].experiment.stages[1] else { panic!("a PPO stage") };
        assert!(matches!(ppo.kl, KlControl::Adaptive { target, .. } if target == 6.0));
        assert_eq!(points[3].experiment.seed, 2);
        assert_eq!(points[3].settings.len(), 1, "the seed is not a setting of the point");
    }

    #[test]
    fn a_plugin_config_field_left_at_its_default_can_be_swept() {
        let text = r#"Experiment(
            name: "s", seed: 1,
            data: { "d": Text(path: "d.txt") },
            plugins: { "a": (path: "plugins/length-filter", config: (min_chars: 5)), "b": (path: "plugins/quality-filter") },
            tokenizer: Char(on: "d"),
            model: Gpt(layers: 1, heads: 1, d_model: 8, context: 8),
            stages: [Pretrain(name: "base", data: "d", filters: ["a", "b"], train: (steps: 1, batch: 2, lr: 1e-3))],
            sweep: { "plugins.a.config.max_chars": [40, 80], "plugins.b.config.threshold": [0.5] },
        )"#;
        // The experiment file sits at the repository root, where the bundled plugins are.
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../s.ron");
        let experiment: Experiment = parse_experiment(&file, text).expect("valid");
        let points = expand(&experiment).expect("points");
        assert_eq!(points.len(), 2);
        let config = |point: usize, plugin: &str| {
            serde_json::to_value(&points[point].experiment.plugins[plugin].config).expect("JSON")
        };
        assert_eq!(config(1, "a"), serde_json::json!({ "min_chars": 5, "max_chars": 80 }));
        assert_eq!(config(0, "b"), serde_json::json!({ "threshold": 0.5 }));
        // Outside a plugin's config, a field that is not there is still refused.
        let refused = text.replace("plugins.b.config.threshold", "plugins.b.configs.threshold");
        let error = parse_experiment::<Stage>(&file, &refused).expect_err("invalid");
        assert!(error.to_string().contains("has no field `configs`"), "{error}");
    }

    #[test]
    fn a_path_that_names_nothing_is_refused_with_where_it_stopped() {
        let error = experiment(r#"{ "ppo.kl.targt": [3.0] }"#).expect_err("invalid").to_string();
        assert!(error.contains("`ppo.kl` has no field `targt`"), "{error}");
        let error = experiment(r#"{ "pp.lr": [3.0] }"#).expect_err("invalid").to_string();
        assert!(error.contains("`pp` is neither a stage name nor a top-level field"), "{error}");
        let error = experiment(r#"{ "ppo.train.steps": ["many"] }"#).expect_err("invalid").to_string();
        assert!(error.contains("sweep point"), "{error}");
    }
}
