//! The PPO stage: RLHF on the policy's own samples under a KL constraint to the SFT model
//! (Ziegler et al. 2019; InstructGPT).
//!
//! Each iteration composes the parts in [`crate::train::rl`]:
//! 1. draws `rollouts` training prompts (a pure function of seed and iteration) and samples a
//!    response to each from the current policy;
//! 2. scores each episode: the weighted sum of reward-model scores and reward-plugin scores,
//!    optionally standardised by running statistics and clipped;
//! 3. computes, without gradients, the log-probs of the sampled tokens under the policy and the
//!    frozen reference, and the values; per-token rewards are `-β kl_t`, plus the score on the
//!    last token; GAE gives advantages (whitened) and returns;
//! 4. runs `epochs` passes of shuffled minibatches of the clipped PPO loss (native, or a loss
//!    plugin through the surrogate-gradient contract), one AdamW step per minibatch;
//! 5. updates β with the adaptive controller from the batch's mean KL per sequence.
//!
//! Logged every iteration: mean score (and each term), KL, β, entropy, clip fraction, approx-KL,
//! value loss, explained variance, response length, and the share of the iteration's time spent
//! inside plugins. Held-out prompts are scored every `eval_every` iterations. The loop runs on
//! the trainer's [`Session`]: checkpoints hold the weights, the optimizer (with its own step
//! count), β and the reward statistics, so an interrupted run resumes where it stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::examples::{self, Example, ExampleSet};
use super::layout::{Layout, Template};
use super::rewards;
use crate::data::blocks::draw_indices;
use crate::experiment::{KlControl, KlEstimator, StageSpec};
use crate::model::generate::SamplingConfig;
use crate::model::{Model, ScalarHead};
use crate::plugins::{Feature, LossPlugin, PluginKind};
use crate::train::ppo::{KlController, PpoLossConfig, RunningStats};
use crate::train::rl::advantages::{AdvantageConfig, kl_penalised_gae};
use crate::train::rl::policy::{Critic, Learner, reference_logprobs};
use crate::train::rl::rollout;
use crate::train::rl::scoring::{DEFAULT_REWARD_LIMIT, RewardTerm, check_terms, score, shape};
use crate::train::rl::settings::PpoSettings;
use crate::train::rl::update::{UpdateConfig, update};
use crate::train::rl::{RlError, model as model_error};
use crate::train::session::{Cadence, Session, config_key};
use crate::train::settings::{non_negative, positive};
use crate::train::{AdamW, AdamWConfig};

/// PPO with a KL penalty to the starting policy (the SFT model), as in InstructGPT.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoStage {
    pub name: String,
    /// The stage whose model is both the initial policy and the frozen reference.
    pub policy: String,
    /// Where prompts come from (only the prompts of the examples are used; the held-out ones
    /// are what evaluation reads).
    pub prompts: ExampleSet,
    #[serde(default)]
    pub template: Template,
    /// The reward: a weighted sum of reward-model scores and reward-plugin scores.
    pub reward: Vec<RewardTerm>,
    /// Clip each sequence's total score to [-clip, clip] after normalisation.
    #[serde(default)]
    pub reward_clip: Option<f64>,
    /// The largest magnitude any score may have (default 1e6): a reward model or plugin
    /// scoring past it stops the stage, naming the record, before the score reaches training.
    #[serde(default = "default_reward_limit", skip_serializing_if = "is_default_reward_limit")]
    pub reward_limit: f64,
    /// Standardise scores by running mean and std over all rollouts so far.
    #[serde(default)]
    pub normalize_reward: bool,
    #[serde(default)]
    pub kl: KlControl,
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// How rollouts are sampled (default: temperature 1, 24 new tokens).
    #[serde(default = "default_ppo_generation")]
    pub generation: SamplingConfig,
    #[serde(default)]
    pub critic: Critic,
    /// A loss plugin that replaces the native clipped policy loss (through the surrogate
    /// gradient contract).
    #[serde(default)]
    pub loss: Option<String>,
    pub train: PpoSettings,
}

fn default_reward_limit() -> f64 {
    DEFAULT_REWARD_LIMIT
}
fn is_default_reward_limit(limit: &f64) -> bool {
    *limit == DEFAULT_REWARD_LIMIT
}
fn default_ppo_generation() -> SamplingConfig {
    SamplingConfig { max_new_tokens: 24, ..SamplingConfig::default() }
}

impl StageSpec for PpoStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "Ppo"
    }
    fn inputs(&self) -> Vec<&str> {
        let mut inputs = vec![self.policy.as_str()];
        inputs.extend(self.reward.iter().filter_map(RewardTerm::model_stage));
        let mut seen = std::collections::BTreeSet::new();
        inputs.retain(|name| seen.insert(*name));
        inputs
    }
    fn data(&self) -> Vec<&str> {
        vec![&self.prompts.data]
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        let mut slots: Vec<(&str, PluginKind)> = self.prompts.filter_slots().collect();
        slots.extend(self.reward.iter().filter_map(RewardTerm::plugin).map(|name| (name, PluginKind::Reward)));
        slots.extend(self.loss.as_deref().map(|l| (l, PluginKind::Loss)));
        slots
    }
    fn loss_features(&self) -> &'static [Feature] {
        &[
            Feature::Logprob,
            Feature::OldLogprob,
            Feature::OldValue,
            Feature::Advantage,
            Feature::Return,
            Feature::Mask,
            Feature::Value,
            Feature::Entropy,
        ]
    }
    fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        check_terms(&self.reward)?;
        self.prompts.validate().map_err(|e| format!("prompts: {e}"))?;
        t.validate()?;
        if !positive(self.reward_limit) {
            return Err(format!("reward_limit must be a positive number, got {}", self.reward_limit));
        }
        if let Some(clip) = self.reward_clip.filter(|c| !positive(*c)) {
            return Err(format!("reward_clip must be a positive number, got {clip}"));
        }
        match self.kl {
            KlControl::Adaptive { target, .. } if !positive(target) => {
                return Err(format!(
                    "kl: Adaptive(target: {target}) cannot be held: the target KL must be positive (use Fixed(coef: 0.0) for no KL penalty)"
                ));
            }
            KlControl::Adaptive { horizon, init, .. } if !positive(horizon) || !non_negative(init) => {
                return Err("kl: Adaptive needs init >= 0 and horizon > 0".into());
            }
            KlControl::Fixed { coef } if !non_negative(coef) => {
                return Err(format!("kl: Fixed(coef: {coef}) must be a number >= 0"));
            }
            _ => {}
        }
        self.generation.validate().map_err(|e| format!("generation: {e}"))
    }
    fn describe(&self) -> String {
        format!(
            "policy `{}` on prompts of `{}`: {} iterations x {} rollouts",
            self.policy, self.prompts.data, self.train.steps, self.train.rollouts
        )
    }
}

/// What a checkpoint carries besides the weights and the optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PpoState {
    kl_coef: f64,
    reward_stats: RunningStats,
}

/// Run the stage into `dir`.
pub fn run(ctx: &RunContext, stage: &PpoStage, dir: &Path) -> Result<StageOutput, StageError> {
    let name = stage.name.as_str();
    let rl_error = |step: u64| move |source: RlError| StageError::Rl { stage: name.to_string(), step, source };
    let settings = &stage.train;
    let examples = examples::load(ctx, &stage.prompts, name, dir)?;
    let tokenizer = ctx.tokenizer()?;
    let chat = ctx.chat_template()?;
    let layout_error = |source| StageError::Layout { stage: name.to_string(), source };
    let layout = Layout::new(&tokenizer, &stage.template, chat.as_deref()).map_err(layout_error)?;
    let end = layout.end_token();
    let pad = tokenizer.pad_id().unwrap_or(end);

    let policy = ctx.starting_model(Some(&stage.policy))?;
    let vocab = policy.config().vocab_size();
    let scorers = rewards::scorers(ctx, name, &stage.reward, (&stage.policy, vocab))?;
    let loss_plugin: Option<LossPlugin> =
        stage.loss.as_deref().map(|l| ctx.plugin(l)?.into_loss().map_err(StageError::from)).transpose()?;
    let setup =
        |e| StageError::Rl { stage: name.to_string(), step: 0, source: model_error("setting up the learner")(e) };
    let reference = policy.try_clone().map_err(setup)?;
    let seed = ctx.experiment.seed;
    let d_model = policy.config().d_model();
    let critic = match stage.critic {
        Critic::Shared => None,
        Critic::Separate => Some(policy.try_clone().map_err(setup)?),
    };
    let learner = Learner {
        value_head: ScalarHead::new(d_model, &ctx.device, seed ^ 0x7661_6c75).map_err(setup)?,
        policy,
        critic,
    };
    let vars = learner.vars();
    let adamw = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
    let mut optimizer = AdamW::new(&vars, |_| false, adamw).map_err(|source| StageError::Rl {
        stage: name.to_string(),
        step: 0,
        source: RlError::Tensor { during: "creating the optimizer", source },
    })?;
    let eval_every = settings.eval_every.unwrap_or((settings.steps / 5).max(1));
    let cadence = Cadence {
        steps: settings.steps,
        eval_every,
        checkpoint_every: settings.checkpoint_every.unwrap_or(eval_every),
        keep_checkpoints: 2,
    };
    let train_error = |source| StageError::Train { stage: name.to_string(), source };
    let (mut session, saved) = Session::open(name, dir, &vars, &mut optimizer, cadence, config_key(stage), &ctx.device)
        .map_err(train_error)?;
    let start = session.start;
    let saved: Option<PpoState> = saved.map(serde_json::from_value).transpose().map_err(|e| StageError::Config {
        stage: name.to_string(),
        message: format!("the checkpoint's PPO state (KL coefficient, reward statistics) is unreadable: {e}"),
    })?;
    let (mut kl, mut reward_stats) = match saved {
        Some(s) => (KlController::with_coef(stage.kl, s.kl_coef), s.reward_stats),
        None => (KlController::new(stage.kl), RunningStats::default()),
    };
    let update_config = UpdateConfig {
        epochs: settings.epochs,
        minibatch: settings.minibatch,
        lr: settings.lr,
        grad_clip: settings.grad_clip,
        loss: PpoLossConfig {
            clip: settings.clip,
            value_clip: settings.value_clip,
            value_coef: settings.value_coef,
            entropy_coef: settings.entropy_coef,
        },
        loss_plugin: loss_plugin.as_ref(),
        seed,
    };
    let held_out: Vec<&Example> = examples.valid.iter().take(settings.eval_prompts).collect();
    let mut sampling = stage.generation.clone();
    if !sampling.stop_tokens.contains(&end) {
        sampling.stop_tokens.push(end);
    }
    let sample = |model: &Model, picked: &[&Example], config: &SamplingConfig, step| {
        rewards::sample_episodes(model, &layout, picked, config, (name, step))
    };
    // Held-out prompts, sampled as in training with a fixed seed, scored by the same reward.
    let evaluate = |model: &Model, step: u64| -> Result<Vec<(String, f64)>, StageError> {
        if held_out.is_empty() {
            return Ok(Vec::new());
        }
        let config = SamplingConfig { seed: sampling.seed ^ 0xe7a1, ..sampling.clone() };
        let scored = score(&scorers, &sample(model, &held_out, &config, step)?, end, pad, stage.reward_limit)
            .map_err(rl_error(step))?;
        let mut evals = vec![("eval/reward".to_string(), scored.mean())];
        evals.extend(scored.term_means().into_iter().map(|(n, v)| (format!("eval/reward/{n}"), v)));
        Ok(evals)
    };
    let file_error = |e| train_error(crate::train::TrainError::File(e));
    if start == 0 {
        // The starting policy's score: what PPO has to improve on.
        for (metric, value) in evaluate(&learner.policy, 0)? {
            session.write(0, &metric, value).map_err(file_error)?;
        }
    }
    let mut final_metrics = BTreeMap::new();
    for step in start..settings.steps {
        let iteration_started = Instant::now();
        let rl = rl_error(step);
        // 1. Rollouts.
        let indices = draw_indices(step, settings.rollouts, examples.train.len(), seed);
        let picked: Vec<&Example> = indices.iter().map(|&i| &examples.train[i]).collect();
        let config = SamplingConfig {
            seed: sampling.seed ^ seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ..sampling.clone()
        };
        let episodes = sample(&learner.policy, &picked, &config, step)?;
        let (rows, lens) = rollout::rows(&episodes);

        // 2. Scores.
        let scored = score(&scorers, &episodes, end, pad, stage.reward_limit).map_err(rl)?;
        let totals = shape(&scored, stage.normalize_reward, stage.reward_clip, &mut reward_stats);

        // 3. Log-probs, values, KL, GAE.
        let (old_logprob, old_value) =
            learner.old_logprobs_and_values(&rows, &lens, settings.minibatch, pad).map_err(rl)?;
        let ref_logprob = reference_logprobs(&reference, &rows, &lens, settings.minibatch, pad).map_err(rl)?;
        let advantage_config = AdvantageConfig {
            kl_coef: kl.coef,
            estimator: stage.kl_estimator,
            gamma: settings.gamma,
            lam: settings.lam,
            whiten: settings.whiten,
        };
        let advantages = kl_penalised_gae(&lens, old_logprob, old_value, &ref_logprob, &totals, &advantage_config);

        // 4. PPO epochs.
        let stats =
            update(&learner, &vars, &mut optimizer, &rows, &lens, &advantages.rollout, step, pad, &update_config)
                .map_err(rl)?;

        // 5. KL controller, metrics.
        let sequence_kl = &advantages.sequence_kl;
        let mean_kl = sequence_kl.iter().sum::<f64>() / sequence_kl.len() as f64;
        let coef_used = kl.coef;
        kl.update(mean_kl, rows.len());
        let done = step + 1;
        let mut row = vec![
            ("train/reward".to_string(), scored.mean()),
            ("train/kl".to_string(), mean_kl),
            ("train/kl_coef".to_string(), coef_used),
            ("train/response_length".to_string(), lens.iter().sum::<usize>() as f64 / lens.len() as f64),
            ("train/explained_variance".to_string(), advantages.explained_variance),
        ];
        row.extend(scored.term_means().into_iter().map(|(n, v)| (format!("train/reward/{n}"), v)));
        let iteration_seconds = iteration_started.elapsed().as_secs_f64();
        row.push(("time/iteration_seconds".into(), iteration_seconds));
        row.push(("time/plugin_share".into(), (scored.plugin_seconds + stats.plugin_seconds) / iteration_seconds));
        row.extend(stats.metrics.into_iter().map(|(n, v)| (format!("train/{n}"), v)));
        for (metric, value) in &row {
            session.write(done, metric, *value).map_err(file_error)?;
        }
        session.bar.set_message(format!("reward {:.3}  kl {mean_kl:.2}  β {:.3}", row[0].1, kl.coef));
        session.bar.inc(1);
        final_metrics.extend(row);

        if session.cadence.eval_due(done) {
            let evals = evaluate(&learner.policy, done)?;
            for (metric, value) in &evals {
                session.write(done, metric, *value).map_err(file_error)?;
                final_metrics.insert(metric.clone(), *value);
            }
            if let Some((_, reward)) = evals.first() {
                let beta = kl.coef;
                session.bar.suspend(|| {
                    tracing::info!(stage = name, step = done, "eval reward {reward:.4}, kl {mean_kl:.3}, β {beta:.4}")
                });
            }
        }
        let state = PpoState { kl_coef: kl.coef, reward_stats };
        session.checkpoint_if_due(done, &vars, &optimizer, Some(&state)).map_err(train_error)?;
    }
    session.bar.finish_and_clear();
    for row in crate::runs::metrics::read_rows(&dir.join("metrics.jsonl")).map_err(file_error)? {
        // The starting policy's evaluation sits at step 0; the rest, after a resume past the
        // last iteration, comes back from the stream.
        if row.step == 0 {
            final_metrics.insert(format!("{}/start", row.metric), row.value);
        } else if start >= settings.steps {
            final_metrics.insert(row.metric, row.value);
        }
    }
    final_metrics.insert("train/final_kl_coef".into(), kl.coef);
    let save_error = |source| StageError::Model { stage: name.to_string(), source };
    learner.policy.save(&dir.join("model")).map_err(save_error)?;
    learner.value_head.save(&dir.join("value_head.safetensors")).map_err(save_error)?;
    crate::runs::report::write_training_report(dir, name, &final_metrics, session.seconds())?;
    Ok(StageOutput { metrics: final_metrics, resumed_from: start })
}
