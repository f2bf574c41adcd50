//! The GRPO stage: critic-free RL on groups of responses to one prompt (Shao et al. 2024,
//! DeepSeekMath), with the options its successors added: Dr. GRPO's unscaled advantages, RLOO's
//! leave-one-out baseline, DAPO's separate clip ranges, token-level loss and dropping of groups
//! without signal; KL to a frozen reference with the k1, k2 or k3 estimator (β = 0 allowed).
//!
//! Each iteration composes the parts in [`crate::train::rl`]:
//! 1. draws `prompts` training prompts (a pure function of seed and iteration) and samples a
//!    group of `group` responses to each from the current policy;
//! 2. scores every response with the weighted sum of reward plugins and reward models (a reward
//!    plugin checks a response against the prompt's reference answer, as a math reward does) on
//!    the plugin pool, and computes the log-probs of the sampled tokens under the sampling policy
//!    and the reference (on a GPU, while the pool scores);
//! 3. turns each group's rewards into advantages ([`crate::train::grpo`]), optionally leaving
//!    out the groups whose rewards are all equal;
//! 4. runs `epochs` passes of minibatches of the clipped loss plus the KL penalty (native, or a
//!    loss plugin plus the penalty), one AdamW step each.
//!
//! Logged every iteration: reward (and each term), the within-group spread, the share of groups
//! without signal, accuracy (when a reward term says what is correct), KL to the reference
//! (summed over each response), clip fractions, entropy, response length, the seconds spent
//! sampling and updating, and the share of the iteration spent inside plugins. Held-out prompts
//! are scored every `eval_every` iterations. Checkpoints hold the weights and the optimizer, so
//! an interrupted run resumes where it stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::examples::{self, Example, ExampleSet};
use super::layout::{Layout, Template};
use super::rewards;
use super::winrate::wilson_interval;
use crate::data::blocks::draw_indices;
use crate::experiment::{KlEstimator, StageSpec};
use crate::model::Model;
use crate::model::generate::SamplingConfig;
use crate::plugins::{Feature, LossPlugin, PluginKind};
use crate::train::grpo::{GroupBaseline, GrpoLossConfig, LossNorm, group_advantages, uniform_groups};
use crate::train::ppo::kl_estimate;
use crate::train::rl::RlError;
use crate::train::rl::advantages::{gather, offsets};
use crate::train::rl::group::{GroupBatch, GroupUpdateConfig, update_group};
use crate::train::rl::policy::reference_logprobs;
use crate::train::rl::rollout;
use crate::train::rl::scoring::{DEFAULT_REWARD_LIMIT, RewardTerm, Scored, check_terms, score};
use crate::train::rl::settings::GroupSettings;
use crate::train::session::{Cadence, Session, config_key};
use crate::train::settings::{non_negative, positive};
use crate::train::{AdamW, AdamWConfig};

/// Group-relative policy optimisation (GRPO, Dr. GRPO, RLOO) of a policy under rewards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoStage {
    pub name: String,
    /// The stage whose model is the initial policy (default: the experiment's model, a
    /// pretrained one for example).
    #[serde(default)]
    pub policy: Option<String>,
    /// The stage whose model is the frozen reference of the KL penalty (default: the policy's
    /// starting model).
    #[serde(default)]
    pub reference: Option<String>,
    /// Where prompts (and, for rewards that check answers, their reference answers) come from;
    /// the held-out ones are what evaluation reads.
    pub prompts: ExampleSet,
    #[serde(default)]
    pub template: Template,
    /// The reward: a weighted sum of reward-plugin and reward-model scores.
    pub reward: Vec<RewardTerm>,
    /// The largest magnitude any score may have (default 1e6).
    #[serde(default = "default_reward_limit", skip_serializing_if = "is_default_reward_limit")]
    pub reward_limit: f64,
    /// Responses sampled per prompt (G).
    #[serde(default = "default_group")]
    pub group: usize,
    /// What each response's reward is compared with in its group.
    #[serde(default)]
    pub baseline: GroupBaseline,
    /// Leave the groups whose rewards are all equal out of the update (they carry no signal, but
    /// would count in the loss's normalisation and KL penalty).
    #[serde(default)]
    pub drop_uniform_groups: bool,
    /// The ratio is kept above 1 - clip_low where the advantage is negative.
    #[serde(default = "default_clip")]
    pub clip_low: f64,
    /// The ratio is kept below 1 + clip_high where the advantage is positive (DAPO: 0.28).
    #[serde(default = "default_clip")]
    pub clip_high: f64,
    /// β, the weight of the KL penalty to the reference (0: none, as TRL's default).
    #[serde(default)]
    pub kl_coef: f64,
    #[serde(default = "default_kl_estimator")]
    pub kl_estimator: KlEstimator,
    #[serde(default)]
    pub loss_norm: LossNorm,
    /// A reward term whose score says a response is correct: `accuracy` is logged.
    #[serde(default)]
    pub accuracy: Option<Accuracy>,
    /// How responses are sampled (default: temperature 1, 48 new tokens).
    #[serde(default = "default_grpo_generation")]
    pub generation: SamplingConfig,
    /// A loss plugin that replaces the clipped surrogate (the KL penalty stays the host's).
    #[serde(default)]
    pub loss: Option<String>,
    pub train: GroupSettings,
}

/// Which responses count as correct: those that the reward term `reward` (a plugin's name or a
/// reward model's stage) scores at least `at_least`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accuracy {
    pub reward: String,
    #[serde(default = "one")]
    pub at_least: f64,
}

fn one() -> f64 {
    1.0
}
fn default_reward_limit() -> f64 {
    DEFAULT_REWARD_LIMIT
}
fn is_default_reward_limit(limit: &f64) -> bool {
    *limit == DEFAULT_REWARD_LIMIT
}
fn default_group() -> usize {
    8
}
fn default_clip() -> f64 {
    0.2
}
fn default_kl_estimator() -> KlEstimator {
    KlEstimator::K3
}
fn default_grpo_generation() -> SamplingConfig {
    SamplingConfig { max_new_tokens: 48, ..SamplingConfig::default() }
}

impl GrpoStage {
    /// The stage the frozen reference comes from (none: the experiment's model).
    fn reference_stage(&self) -> Option<&str> {
        self.reference.as_deref().or(self.policy.as_deref())
    }
}

impl StageSpec for GrpoStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "Grpo"
    }
    fn inputs(&self) -> Vec<&str> {
        let mut inputs: Vec<&str> = self.policy.iter().map(String::as_str).chain(self.reference_stage()).collect();
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
            Feature::Advantage,
            Feature::Entropy,
            Feature::Mask,
            Feature::RefLogprob,
        ]
    }
    fn validate(&self) -> Result<(), String> {
        check_terms(&self.reward)?;
        if self.group < 2 {
            return Err(format!("group must be at least 2 (responses compared per prompt), got {}", self.group));
        }
        let clip_low_in_range = positive(self.clip_low) && self.clip_low < 1.0;
        if !clip_low_in_range || !positive(self.clip_high) {
            return Err(format!(
                "clip_low must be in (0, 1) and clip_high positive, got {} and {}",
                self.clip_low, self.clip_high
            ));
        }
        if !non_negative(self.kl_coef) {
            return Err(format!("kl_coef must be a number >= 0, got {}", self.kl_coef));
        }
        if !positive(self.reward_limit) {
            return Err(format!("reward_limit must be a positive number, got {}", self.reward_limit));
        }
        if let Some(accuracy) = &self.accuracy {
            let names: Vec<&str> = self.reward.iter().map(RewardTerm::name).collect();
            if !names.contains(&accuracy.reward.as_str()) {
                return Err(format!(
                    "accuracy reads reward `{}`, which is not a term of the reward (terms: {})",
                    accuracy.reward,
                    names.join(", ")
                ));
            }
            if !accuracy.at_least.is_finite() {
                return Err(format!("accuracy.at_least must be a finite number, got {}", accuracy.at_least));
            }
        }
        self.prompts.validate().map_err(|e| format!("prompts: {e}"))?;
        self.train.validate(self.group)?;
        self.generation.validate().map_err(|e| format!("generation: {e}"))
    }
    fn describe(&self) -> String {
        format!(
            "policy `{}` on prompts of `{}`: {} iterations x {} prompts x {} responses",
            self.policy.as_deref().unwrap_or("model"),
            self.prompts.data,
            self.train.steps,
            self.train.prompts,
            self.group
        )
    }
}

/// The share of responses a term scored at least `at_least`.
fn accuracy_of(scored: &Scored, accuracy: &Accuracy) -> Option<f64> {
    let (_, scores) = scored.terms.iter().find(|(name, _)| *name == accuracy.reward)?;
    Some(scores.iter().filter(|&&s| s >= accuracy.at_least).count() as f64 / scores.len().max(1) as f64)
}

/// Run the stage into `dir`.
pub fn run(ctx: &RunContext, stage: &GrpoStage, dir: &Path) -> Result<StageOutput, StageError> {
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

    let policy = ctx.starting_model(stage.policy.as_deref())?;
    let reference = ctx.starting_model(stage.reference_stage())?;
    let vocab = policy.config().vocab_size();
    let scorers = rewards::scorers(ctx, name, &stage.reward, (stage.policy.as_deref().unwrap_or("model"), vocab))?;
    let loss_plugin: Option<LossPlugin> =
        stage.loss.as_deref().map(|l| ctx.plugin(l)?.into_loss().map_err(StageError::from)).transpose()?;
    let seed = ctx.experiment.seed;
    let vars = policy.vars();
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
    let (mut session, _) = Session::open(name, dir, &vars, &mut optimizer, cadence, config_key(stage), &ctx.device)
        .map_err(train_error)?;
    let start = session.start;
    let responses = settings.prompts * stage.group;
    let minibatch = settings.minibatch.unwrap_or(responses);
    // One optimizer step per iteration: the policy that sampled is the one being trained, and
    // its log-probs need no pass of their own (as TRL does).
    let one_step = settings.epochs == 1 && minibatch >= responses;
    let update_config = GroupUpdateConfig {
        epochs: settings.epochs,
        minibatch,
        lr: settings.lr,
        grad_clip: settings.grad_clip,
        loss: GrpoLossConfig {
            clip_low: stage.clip_low,
            clip_high: stage.clip_high,
            kl_coef: stage.kl_coef,
            estimator: stage.kl_estimator,
        },
        norm: stage.loss_norm,
        loss_plugin: loss_plugin.as_ref(),
        seed,
    };
    let mut sampling = stage.generation.clone();
    if !sampling.stop_tokens.contains(&end) {
        sampling.stop_tokens.push(end);
    }
    // Rows per forward pass when computing log-probs without gradients.
    let logprob_rows = 32;
    // At most an iteration's responses at once (what training samples together), each chunk
    // with its own seed: a held-out set of any size fits in memory.
    let sample = |model: &Model, picked: &[&Example], config: &SamplingConfig, step| {
        let mut episodes = Vec::with_capacity(picked.len());
        for (k, chunk) in picked.chunks(responses).enumerate() {
            let config =
                SamplingConfig { seed: config.seed ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03), ..config.clone() };
            episodes.extend(rewards::sample_episodes(model, &layout, chunk, &config, (name, step))?);
        }
        Ok::<_, StageError>(episodes)
    };
    let held_out: Vec<&Example> = examples.valid.iter().take(settings.eval_prompts).collect();
    // Held-out prompts, one response each, sampled as in training with a fixed seed.
    let evaluate = |model: &Model, step: u64| -> Result<Vec<(String, f64)>, StageError> {
        if held_out.is_empty() {
            return Ok(Vec::new());
        }
        let config = SamplingConfig { seed: sampling.seed ^ 0xe7a1, ..sampling.clone() };
        let scored = score(&scorers, &sample(model, &held_out, &config, step)?, end, pad, stage.reward_limit)
            .map_err(rl_error(step))?;
        let mut evals = vec![("eval/reward".to_string(), scored.mean())];
        evals.extend(scored.term_means().into_iter().map(|(n, v)| (format!("eval/reward/{n}"), v)));
        if let Some(accuracy) = stage.accuracy.as_ref().and_then(|a| accuracy_of(&scored, a)) {
            let (low, high) = wilson_interval(accuracy, held_out.len() as f64);
            evals.push(("eval/accuracy".to_string(), accuracy));
            evals.push(("eval/accuracy_low".to_string(), low));
            evals.push(("eval/accuracy_high".to_string(), high));
        }
        Ok(evals)
    };
    let file_error = |e| train_error(crate::train::TrainError::File(e));
    if start == 0 {
        for (metric, value) in evaluate(&policy, 0)? {
            session.write(0, &metric, value).map_err(file_error)?;
        }
    }
    let mut final_metrics = BTreeMap::new();
    for step in start..settings.steps {
        let iteration_started = Instant::now();
        let rl = rl_error(step);
        // 1. A group of responses to each prompt.
        let indices = draw_indices(step, settings.prompts, examples.train.len(), seed);
        let picked: Vec<&Example> =
            indices.iter().flat_map(|&i| std::iter::repeat_n(&examples.train[i], stage.group)).collect();
        let config = SamplingConfig {
            seed: sampling.seed ^ seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ..sampling.clone()
        };
        let episodes = sample(&policy, &picked, &config, step)?;
        let generation_seconds = iteration_started.elapsed().as_secs_f64();
        let (rows, lens) = rollout::rows(&episodes);

        // 2. Rewards, scored by the plugins' pool on every core, and the log-probs of the
        // sampling policy and the reference. On a GPU the host's passes run while the pool
        // scores; on the CPU both want every core, and taking turns beats sharing them.
        let logprobs = || -> Result<(Option<Vec<f32>>, Vec<f32>), RlError> {
            let old = if one_step { None } else { Some(reference_logprobs(&policy, &rows, &lens, logprob_rows, pad)?) };
            Ok((old, reference_logprobs(&reference, &rows, &lens, logprob_rows, pad)?))
        };
        let scoring = || score(&scorers, &episodes, end, pad, stage.reward_limit);
        let (scored, logprobs) = if ctx.device.is_cpu() {
            (scoring(), logprobs())
        } else {
            std::thread::scope(|scope| {
                let scored = scope.spawn(scoring);
                let logprobs = logprobs();
                (scored.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), logprobs)
            })
        };
        let scored = scored.map_err(&rl)?;
        let (old_logprob, ref_logprob) = logprobs.map_err(&rl)?;

        // 3. Advantages within each group; the groups the update uses.
        let advantages = group_advantages(&scored.totals, stage.group, stage.baseline);
        let uniform = uniform_groups(&scored.totals, stage.group);
        let keep: Vec<usize> =
            (0..rows.len()).filter(|i| !(stage.drop_uniform_groups && uniform[i / stage.group])).collect();
        let all_offsets = offsets(&lens);
        let kept = |values: &[f32]| gather(values, &all_offsets, &keep);
        let kept_rows: Vec<Vec<u32>> = keep.iter().map(|&i| rows[i].clone()).collect();
        let kept_lens: Vec<usize> = keep.iter().map(|&i| lens[i]).collect();
        let kept_old = old_logprob.as_deref().map(kept);
        let kept_ref = kept(&ref_logprob);
        let kept_advantages: Vec<f64> = keep.iter().map(|&i| advantages[i]).collect();

        // 4. The update (none when every group was left out).
        let batch = GroupBatch {
            rows: &kept_rows,
            lens: &kept_lens,
            old_logprob: kept_old.as_deref(),
            ref_logprob: Some(&kept_ref),
            advantages: &kept_advantages,
        };
        let config = GroupUpdateConfig { minibatch: minibatch.min(keep.len().max(1)), ..update_config };
        let update_started = Instant::now();
        let update = if keep.is_empty() {
            None
        } else {
            Some(update_group(&policy, &vars, &mut optimizer, &batch, step, pad, &config).map_err(&rl)?)
        };
        let update_seconds = update_started.elapsed().as_secs_f64();
        // The KL of each response the update used to the reference, under the policy that
        // sampled it (in one step, the update's own pass was that policy's).
        let sampler_logprob = kept_old.or_else(|| update.as_ref().and_then(|u| u.sampled_logprob.clone()));
        let sequence_kl: Vec<f64> = match &sampler_logprob {
            Some(logprob) => {
                let kept_offsets = offsets(&kept_lens);
                kept_offsets
                    .windows(2)
                    .map(|w| {
                        (w[0] as usize..w[1] as usize)
                            .map(|t| kl_estimate(logprob[t], kept_ref[t], stage.kl_estimator) as f64)
                            .sum()
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let stats = update.map(|u| u.stats);

        // 5. Metrics.
        let done = step + 1;
        let groups = uniform.len().max(1) as f64;
        let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
        let spread: Vec<f64> = scored
            .totals
            .chunks(stage.group)
            .map(|g| {
                let m = mean(g);
                (g.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (g.len() as f64 - 1.0).max(1.0)).sqrt()
            })
            .collect();
        let mut row = vec![
            ("train/reward".to_string(), scored.mean()),
            ("train/reward_std".to_string(), mean(&spread)),
            ("train/uniform_groups".to_string(), uniform.iter().filter(|&&u| u).count() as f64 / groups),
            ("train/kl".to_string(), mean(&sequence_kl)),
            ("train/response_length".to_string(), lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64),
        ];
        row.extend(scored.term_means().into_iter().map(|(n, v)| (format!("train/reward/{n}"), v)));
        if let Some(accuracy) = stage.accuracy.as_ref().and_then(|a| accuracy_of(&scored, a)) {
            row.push(("train/accuracy".to_string(), accuracy));
        }
        let iteration_seconds = iteration_started.elapsed().as_secs_f64();
        let update_plugin_seconds = stats.as_ref().map_or(0.0, |s| s.plugin_seconds);
        row.push(("time/iteration_seconds".into(), iteration_seconds));
        row.push(("time/generation_seconds".into(), generation_seconds));
        row.push(("time/update_seconds".into(), update_seconds));
        row.push(("time/plugin_share".into(), (scored.plugin_seconds + update_plugin_seconds) / iteration_seconds));
        if let Some(stats) = stats {
            row.extend(stats.metrics.into_iter().map(|(n, v)| (format!("train/{n}"), v)));
        }
        for (metric, value) in &row {
            session.write(done, metric, *value).map_err(file_error)?;
        }
        let accuracy = row.iter().find(|(n, _)| n == "train/accuracy").map(|(_, v)| format!("  acc {v:.2}"));
        session.bar.set_message(format!("reward {:.3}{}  kl {:.2}", row[0].1, accuracy.unwrap_or_default(), row[3].1));
        session.bar.inc(1);
        final_metrics.extend(row);

        if session.cadence.eval_due(done) {
            let evals = evaluate(&policy, done)?;
            for (metric, value) in &evals {
                session.write(done, metric, *value).map_err(file_error)?;
                final_metrics.insert(metric.clone(), *value);
            }
            if let Some((_, reward)) = evals.first() {
                session.bar.suspend(|| tracing::info!(stage = name, step = done, "eval reward {reward:.4}"));
            }
        }
        session.checkpoint_if_due(done, &vars, &optimizer, None::<&()>).map_err(train_error)?;
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
    policy.save(&dir.join("model")).map_err(|source| StageError::Model { stage: name.to_string(), source })?;
    crate::runs::report::write_training_report(dir, name, &final_metrics, session.seconds())?;
    Ok(StageOutput { metrics: final_metrics, resumed_from: start })
}
