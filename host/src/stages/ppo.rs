//! The PPO stage: RLHF on the policy's own samples under a KL constraint to the SFT model.
//!
//! Each iteration:
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
//! inside plugins. Held-out prompts are scored every `eval_every` iterations. Checkpoints hold
//! the weights, the optimizer, β and the reward statistics, so an interrupted run resumes where
//! it stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{D, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::context::{RunContext, StageError};
use super::examples::{self, Layout};
use crate::data::blocks::{draw_indices, permutation};
use crate::experiment::{Critic, PpoStage, RewardTerm};
use crate::model::generate::{Generated, SamplingConfig, generate};
use crate::model::reward::pad_rows;
use crate::model::{Model, RewardModel, ScalarHead};
use crate::plugins::{Episode, Feature, LossPlugin, RewardPlugin};
use crate::runs::atomic::{FileError, write_atomically};
use crate::runs::metrics::MetricsWriter;
use crate::train::checkpoint::{self, TrainState};
use crate::train::plugin_loss::{Features, plugin_loss};
use crate::train::ppo::{KlController, PpoBatch, PpoLossConfig, RunningStats, gae, kl_estimate, ppo_loss, whiten};
use crate::train::{AdamW, AdamWConfig, token_logprobs};

/// The rest of the training state a checkpoint must carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PpoState {
    step: u64,
    kl_coef: f64,
    reward_stats: RunningStats,
}

/// A reward source, ready to score.
enum Scorer {
    Model { name: String, weight: f64, model: RewardModel },
    Plugin { name: String, weight: f64, plugin: RewardPlugin },
}

/// One sampled episode: the prompt, its tokens, the response.
struct Sampled {
    prompt: String,
    prompt_tokens: Vec<u32>,
    response: Generated,
    response_text: String,
}

/// Rollout quantities over the response tokens of a batch, flat, sequence after sequence.
struct Rollout {
    offsets: Vec<u32>,
    old_logprob: Vec<f32>,
    old_value: Vec<f32>,
    advantage: Vec<f32>,
    returns: Vec<f32>,
}

/// The policy (and critic) being trained.
struct Learner {
    policy: Model,
    value_head: ScalarHead,
    /// A separate critic trunk, when `critic: Separate`.
    critic: Option<Model>,
}

/// What one forward pass of the learner gives at the positions that predict response tokens.
struct Predicted {
    logprob: Tensor,
    value: Tensor,
    entropy: Tensor,
}

impl Learner {
    /// Variables with unique names: the critic's trunk under `critic/`.
    fn vars(&self) -> Vec<(String, Var)> {
        let mut vars = self.policy.vars();
        vars.extend(self.value_head.vars().into_iter().map(|(n, v)| (format!("value/{n}"), v)));
        if let Some(critic) = &self.critic {
            vars.extend(critic.vars().into_iter().map(|(n, v)| (format!("critic/{n}"), v)));
        }
        vars
    }

    /// Log-probs, values and entropies at the positions predicting each row's response.
    fn predict(&self, rows: &[Vec<u32>], response_lens: &[usize], pad: u32) -> Result<Predicted, String> {
        let device = self.policy.device();
        let (tokens, _) = pad_rows(rows, pad, device).map_err(|e| e.to_string())?;
        let (b, t) = tokens.dims2().map_err(|e| e.to_string())?;
        let positions = prediction_positions(rows, response_lens, t);
        let index = Tensor::from_vec(positions.clone(), positions.len(), device).map_err(|e| e.to_string())?;
        let hidden = self.policy.hidden(&tokens, false).map_err(|e| e.to_string())?;
        let logits = self.policy.lm_logits(&hidden).map_err(|e| e.to_string())?;
        let value_hidden = match &self.critic {
            Some(critic) => critic.hidden(&tokens, false).map_err(|e| e.to_string())?,
            None => hidden,
        };
        let values = self.value_head.forward(&value_hidden).map_err(|e| e.to_string())?;
        let tensor = |e: candle_core::Error| e.to_string();
        let v = logits.dim(2).map_err(tensor)?;
        let next = Tensor::from_vec(next_tokens(rows, t, pad), b * t, device).map_err(tensor)?;
        let flat_logits = logits.reshape((b * t, v)).map_err(tensor)?.index_select(&index, 0).map_err(tensor)?;
        let logp = candle_nn::ops::log_softmax(&flat_logits, D::Minus1).map_err(tensor)?;
        let targets = next.index_select(&index, 0).map_err(tensor)?;
        let logprob = logp.gather(&targets.unsqueeze(1).map_err(tensor)?, 1).and_then(|l| l.squeeze(1)).map_err(tensor)?;
        let entropy = (logp.exp().map_err(tensor)? * &logp).and_then(|x| x.sum(D::Minus1)).and_then(|x| x.neg()).map_err(tensor)?;
        let value = values.reshape(b * t).and_then(|v| v.index_select(&index, 0)).map_err(tensor)?;
        Ok(Predicted { logprob, value, entropy })
    }
}

/// Flat indices (row * T + position) of the positions whose next token is a response token,
/// row after row: response token j of a row with prompt length p is predicted at p + j - 1.
fn prediction_positions(rows: &[Vec<u32>], response_lens: &[usize], width: usize) -> Vec<u32> {
    let mut positions = Vec::new();
    for (r, (row, &len)) in rows.iter().zip(response_lens).enumerate() {
        let prompt = row.len() - len;
        for j in 0..len {
            positions.push((r * width + prompt + j - 1) as u32);
        }
    }
    positions
}

/// Each row's next token at every position of a (rows, width) grid, row after row; `pad` where
/// there is none (the last position, padding).
fn next_tokens(rows: &[Vec<u32>], width: usize, pad: u32) -> Vec<u32> {
    let mut next = vec![pad; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        if row.len() > 1 {
            next[r * width..r * width + row.len() - 1].copy_from_slice(&row[1..]);
        }
    }
    next
}

/// Log-probs of the response tokens under a frozen model (no value head), flat like
/// [`prediction_positions`]; only those values leave the device.
fn reference_logprobs(model: &Model, rows: &[Vec<u32>], response_lens: &[usize], pad: u32) -> Result<Vec<f32>, String> {
    let tensor = |e: candle_core::Error| e.to_string();
    let device = model.device();
    let (tokens, _) = pad_rows(rows, pad, device).map_err(|e| e.to_string())?;
    let (b, t) = tokens.dims2().map_err(tensor)?;
    let next = Tensor::from_vec(next_tokens(rows, t, pad), (b, t), device).map_err(tensor)?;
    let logits = model.forward(&tokens, false).map_err(|e| e.to_string())?;
    let logprobs = token_logprobs(&logits, &next).and_then(|l| l.flatten_all()).map_err(tensor)?;
    let positions = prediction_positions(rows, response_lens, t);
    let index = Tensor::from_vec(positions.clone(), positions.len(), device).map_err(tensor)?;
    logprobs.index_select(&index, 0).and_then(|l| l.to_vec1::<f32>()).map_err(tensor)
}

struct Scored {
    totals: Vec<f64>,
    /// Mean of each term over the batch, by name.
    terms: Vec<(String, f64)>,
    /// Time spent inside reward plugins.
    plugin_seconds: f64,
}

fn score(scorers: &[Scorer], episodes: &[Sampled], end: u32, pad: u32) -> Result<Scored, String> {
    let mut totals = vec![0.0; episodes.len()];
    let mut terms = Vec::new();
    let mut plugin_seconds = 0.0;
    for scorer in scorers {
        let (name, weight, scores): (&str, f64, Vec<f64>) = match scorer {
            Scorer::Model { name, weight, model } => {
                let context = model.trunk.config().context();
                let inputs: Vec<Vec<u32>> = episodes
                    .iter()
                    .map(|e| {
                        let mut tokens = e.prompt_tokens.clone();
                        tokens.extend(e.response.tokens.iter().copied().filter(|&t| t != end));
                        tokens.push(end);
                        if tokens.len() > context {
                            tokens.drain(..tokens.len() - context);
                        }
                        tokens
                    })
                    .collect();
                let scores = model.score(&inputs, 32, pad).map_err(|e| format!("reward model `{name}`: {e}"))?;
                (name, *weight, scores.into_iter().map(f64::from).collect())
            }
            Scorer::Plugin { name, weight, plugin } => {
                let batch: Vec<Episode> = episodes
                    .iter()
                    .map(|e| Episode { prompt: e.prompt.clone(), response: e.response_text.clone(), reference: None })
                    .collect();
                let started = Instant::now();
                let scores = plugin.score(&batch).map_err(|e| e.to_string())?;
                plugin_seconds += started.elapsed().as_secs_f64();
                (name, *weight, scores)
            }
        };
        for (total, s) in totals.iter_mut().zip(&scores) {
            *total += weight * s;
        }
        terms.push((name.to_string(), scores.iter().sum::<f64>() / scores.len() as f64));
    }
    Ok(Scored { totals, terms, plugin_seconds })
}

/// Run the stage into `dir`: final metrics, the iteration resumed from, seconds.
pub fn run(ctx: &RunContext, stage: &PpoStage, dir: &Path) -> Result<(BTreeMap<String, f64>, u64, f64), StageError> {
    let started = Instant::now();
    let name = stage.name.as_str();
    let config_error = |message: String| StageError::Config { stage: name.to_string(), message };
    let settings = &stage.train;
    let examples = examples::load(ctx, &stage.prompts, name, dir)?;
    let tokenizer = ctx.tokenizer()?;
    let chat = ctx.chat_template()?;
    let layout = Layout::new(&tokenizer, &stage.template, chat.as_deref()).map_err(config_error)?;
    let end = layout.end_token();
    let pad = tokenizer.pad_id().unwrap_or(end);

    let policy = ctx.starting_model(Some(&stage.policy))?;
    let vocab = policy.config().vocab_size();
    let context = policy.config().context();
    let mut scorers = Vec::new();
    for term in &stage.reward {
        scorers.push(match term {
            RewardTerm::Model { stage: rm, weight } => {
                let model = RewardModel::load(&ctx.stage_dir(rm), &ctx.device)
                    .map_err(|e| config_error(format!("loading reward model `{rm}`: {e}")))?;
                let rm_vocab = model.trunk.config().vocab_size();
                if rm_vocab != vocab {
                    return Err(config_error(format!(
                        "reward model `{rm}` reads a vocabulary of {rm_vocab} tokens, the policy `{}` {vocab}: they must share a tokenizer",
                        stage.policy
                    )));
                }
                Scorer::Model { name: rm.clone(), weight: *weight, model }
            }
            RewardTerm::Plugin { name: plugin, weight } => {
                Scorer::Plugin { name: plugin.clone(), weight: *weight, plugin: ctx.plugin(plugin)?.into_reward()? }
            }
        });
    }
    let loss_plugin: Option<LossPlugin> = stage.loss.as_deref().map(|l| ctx.plugin(l)?.into_loss().map_err(StageError::from)).transpose()?;
    let reference = policy.try_clone().map_err(|e| config_error(e.to_string()))?;
    let seed = ctx.experiment.seed;
    let d_model = policy.config().d_model();
    let critic = match stage.critic {
        Critic::Shared => None,
        Critic::Separate => Some(policy.try_clone().map_err(|e| config_error(e.to_string()))?),
    };
    let learner = Learner {
        value_head: ScalarHead::new(d_model, &ctx.device, seed ^ 0x7661_6c75).map_err(|e| config_error(e.to_string()))?,
        policy,
        critic,
    };
    let vars = learner.vars();
    let adamw = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
    let mut optimizer = AdamW::new(&vars, |_| false, adamw).map_err(|e| config_error(e.to_string()))?;
    let checkpoints = dir.join("checkpoints");
    let config_key = {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(stage).unwrap_or_default();
        Sha256::digest(&json).iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
    };
    let train_error = |source| StageError::Train { stage: name.to_string(), source };
    let start = checkpoint::restore(&checkpoints, &vars, &mut optimizer, &config_key, &ctx.device)
        .map_err(|e| train_error(e.into()))?
        .unwrap_or(0);
    let state_path = dir.join("ppo_state.json");
    let saved: Option<PpoState> = std::fs::read(&state_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let (mut kl, mut reward_stats) = match saved.filter(|s| s.step == start && start > 0) {
        Some(s) => (KlController::with_coef(stage.kl, s.kl_coef), s.reward_stats),
        None => (KlController::new(stage.kl), RunningStats::default()),
    };
    let mut metrics = MetricsWriter::open(&dir.join("metrics.jsonl"), name, (start > 0).then_some(start)).map_err(StageError::File)?;
    let eval_every = settings.eval_every.unwrap_or((settings.steps / 5).max(1));
    let checkpoint_every = settings.checkpoint_every.unwrap_or(eval_every);
    let loss_config = PpoLossConfig {
        clip: settings.clip,
        value_clip: settings.value_clip,
        value_coef: settings.value_coef,
        entropy_coef: settings.entropy_coef,
    };
    let prompt_tokens = |prompt: &str| layout.prompt_tokens_within(prompt, context).map_err(config_error);
    let held_out: Vec<String> = examples.valid.iter().take(settings.eval_prompts).map(|e| e.prompt.clone()).collect();
    let mut final_metrics = BTreeMap::new();
    let bar = crate::runs::progress::bar(name, settings.steps, start);
    let sample = |model: &Model, prompts: &[String], sampling: &SamplingConfig| -> Result<Vec<Sampled>, StageError> {
        let tokens = prompts.iter().map(|p| prompt_tokens(p)).collect::<Result<Vec<_>, _>>()?;
        let generated = generate(model, &tokens, sampling).map_err(|e| config_error(format!("sampling: {e}")))?;
        generated
            .into_iter()
            .zip(prompts.iter().zip(tokens))
            .map(|(response, (prompt, prompt_tokens))| {
                let response_text = layout.response_text(&response.tokens).map_err(config_error)?;
                Ok(Sampled { prompt: prompt.clone(), prompt_tokens, response, response_text })
            })
            .collect()
    };
    let mut sampling = stage.generation.clone();
    if !sampling.stop_tokens.contains(&end) {
        sampling.stop_tokens.push(end);
    }

    // Held-out prompts, sampled as in training with a fixed seed, scored by the same reward.
    let evaluate = |model: &Model, prompts: &[String]| -> Result<Vec<(String, f64)>, StageError> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let config = SamplingConfig { seed: sampling.seed ^ 0xe7a1, ..sampling.clone() };
        let scored = score(&scorers, &sample(model, prompts, &config)?, end, pad).map_err(config_error)?;
        let mut evals = vec![("eval/reward".to_string(), scored.totals.iter().sum::<f64>() / scored.totals.len() as f64)];
        evals.extend(scored.terms.iter().map(|(n, v)| (format!("eval/reward/{n}"), *v)));
        Ok(evals)
    };
    if start == 0 {
        // The starting policy's score: what PPO has to improve on.
        for (metric, value) in evaluate(&learner.policy, &held_out)? {
            metrics.write(0, &metric, value).map_err(StageError::File)?;
        }
    }
    for step in start..settings.steps {
        let iteration_started = Instant::now();
        // 1. Rollouts.
        let indices = draw_indices(step, settings.rollouts, examples.train.len(), seed);
        let prompts: Vec<String> = indices.iter().map(|&i| examples.train[i].prompt.clone()).collect();
        let config = SamplingConfig { seed: sampling.seed ^ seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15), ..sampling.clone() };
        let episodes = sample(&learner.policy, &prompts, &config)?;
        let rows: Vec<Vec<u32>> = episodes.iter().map(|e| [e.prompt_tokens.clone(), e.response.tokens.clone()].concat()).collect();
        let lens: Vec<usize> = episodes.iter().map(|e| e.response.tokens.len()).collect();

        // 2. Scores.
        let scored = score(&scorers, &episodes, end, pad).map_err(config_error)?;
        let mut totals = scored.totals.clone();
        if stage.normalize_reward {
            for &t in &scored.totals {
                reward_stats.push(t);
            }
            for t in &mut totals {
                *t = (*t - reward_stats.mean) / reward_stats.std();
            }
        }
        if let Some(clip) = stage.reward_clip {
            for t in &mut totals {
                *t = t.clamp(-clip, clip);
            }
        }

        // 3. Log-probs, values, KL, GAE.
        let (old_logprob, old_value) = {
            let mut lp = Vec::new();
            let mut v = Vec::new();
            for (chunk, chunk_lens) in rows.chunks(settings.minibatch).zip(lens.chunks(settings.minibatch)) {
                let p = learner.predict(chunk, chunk_lens, pad).map_err(config_error)?;
                lp.extend(p.logprob.to_vec1::<f32>().map_err(|e| config_error(e.to_string()))?);
                v.extend(p.value.to_vec1::<f32>().map_err(|e| config_error(e.to_string()))?);
            }
            (lp, v)
        };
        let mut ref_logprob = Vec::new();
        for (chunk, chunk_lens) in rows.chunks(settings.minibatch).zip(lens.chunks(settings.minibatch)) {
            ref_logprob.extend(reference_logprobs(&reference, chunk, chunk_lens, pad).map_err(config_error)?);
        }
        let mut offsets = vec![0u32];
        let (mut advantage, mut returns) = (Vec::new(), Vec::new());
        let mut sequence_kl = Vec::with_capacity(rows.len());
        for (s, &len) in lens.iter().enumerate() {
            let start_index = *offsets.last().unwrap_or(&0) as usize;
            let range = start_index..start_index + len;
            let kls: Vec<f32> = range.clone().map(|i| kl_estimate(old_logprob[i], ref_logprob[i], stage.kl_estimator)).collect();
            sequence_kl.push(kls.iter().map(|&k| k as f64).sum::<f64>());
            let mut rewards: Vec<f32> = kls.iter().map(|k| -(kl.coef as f32) * k).collect();
            if let Some(last) = rewards.last_mut() {
                *last += totals[s] as f32;
            }
            let (a, r) = gae(&rewards, &old_value[range], settings.gamma as f32, settings.lam as f32);
            advantage.extend(a);
            returns.extend(r);
            offsets.push((start_index + len) as u32);
        }
        let explained_variance = explained_variance(&old_value, &returns);
        if settings.whiten {
            whiten(&mut advantage);
        }
        let rollout = Rollout { offsets, old_logprob, old_value, advantage, returns };

        // 4. PPO epochs.
        let mut update_metrics: Vec<(String, f64)> = Vec::new();
        let mut updates = 0usize;
        let mut plugin_seconds = scored.plugin_seconds;
        for epoch in 0..settings.epochs {
            let order = permutation(rows.len(), seed ^ step.wrapping_mul(31) ^ (epoch as u64).wrapping_mul(0x632b_e59b_d9b4_e019));
            for minibatch in order.chunks(settings.minibatch) {
                let (loss, mut diagnostics, loss_plugin_seconds) =
                    minibatch_loss(&learner, &rows, &lens, &rollout, minibatch, pad, &loss_config, loss_plugin.as_ref())
                        .map_err(config_error)?;
                plugin_seconds += loss_plugin_seconds;
                let grads = loss.backward().map_err(|e| config_error(e.to_string()))?;
                let by_name: HashMap<String, Tensor> =
                    vars.iter().filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
                let norm = optimizer.step(&by_name, settings.lr, settings.grad_clip).map_err(|e| config_error(e.to_string()))?;
                diagnostics.push(("grad_norm".into(), norm));
                for (k, value) in diagnostics {
                    match update_metrics.iter_mut().find(|(n, _)| *n == k) {
                        Some((_, sum)) => *sum += value,
                        None => update_metrics.push((k, value)),
                    }
                }
                updates += 1;
            }
        }

        // 5. KL controller, metrics.
        let mean_kl = sequence_kl.iter().sum::<f64>() / sequence_kl.len() as f64;
        let coef_used = kl.coef;
        kl.update(mean_kl, rows.len());
        let done = step + 1;
        let mut row = vec![
            ("train/reward".to_string(), scored.totals.iter().sum::<f64>() / scored.totals.len() as f64),
            ("train/kl".to_string(), mean_kl),
            ("train/kl_coef".to_string(), coef_used),
            ("train/response_length".to_string(), lens.iter().sum::<usize>() as f64 / lens.len() as f64),
            ("train/explained_variance".to_string(), explained_variance),
        ];
        row.extend(scored.terms.iter().map(|(n, v)| (format!("train/reward/{n}"), *v)));
        let iteration_seconds = iteration_started.elapsed().as_secs_f64();
        row.push(("time/iteration_seconds".into(), iteration_seconds));
        row.push(("time/plugin_share".into(), plugin_seconds / iteration_seconds));
        row.extend(update_metrics.into_iter().map(|(n, v)| (format!("train/{n}"), v / updates.max(1) as f64)));
        for (metric, value) in &row {
            metrics.write(done, metric, *value).map_err(StageError::File)?;
        }
        bar.set_message(format!("reward {:.3}  kl {mean_kl:.2}  β {:.3}", row[0].1, kl.coef));
        bar.inc(1);
        for (metric, value) in row {
            final_metrics.insert(metric, value);
        }

        let last = done == settings.steps;
        if last || done % eval_every == 0 {
            let evals = evaluate(&learner.policy, &held_out)?;
            for (metric, value) in &evals {
                metrics.write(done, metric, *value).map_err(StageError::File)?;
                final_metrics.insert(metric.clone(), *value);
            }
            if let Some((_, reward)) = evals.first() {
                bar.suspend(|| tracing::info!(stage = name, step = done, "eval reward {reward:.4}, kl {mean_kl:.3}, β {:.4}", kl.coef));
            }
        }
        if last || done % checkpoint_every == 0 {
            let state = PpoState { step: done, kl_coef: kl.coef, reward_stats };
            let json = serde_json::to_vec(&state).map_err(|e| FileError::new(&state_path, e))?;
            checkpoint::save(&checkpoints, &vars, &optimizer, &TrainState { step: done, config_key: config_key.clone() }, 2)?;
            write_atomically(&state_path, &json)?;
        }
    }
    bar.finish_and_clear();
    for row in crate::runs::metrics::read_rows(&dir.join("metrics.jsonl")).map_err(StageError::File)? {
        // The starting policy's evaluation sits at step 0; the rest, after a resume past the
        // last iteration, comes back from the stream.
        if row.step == 0 {
            final_metrics.insert(format!("{}/start", row.metric), row.value);
        } else if start >= settings.steps {
            final_metrics.insert(row.metric, row.value);
        }
    }
    final_metrics.insert("train/final_kl_coef".into(), kl.coef);
    learner.policy.save(&dir.join("model")).map_err(|e| config_error(e.to_string()))?;
    learner.value_head.save(&dir.join("value_head.safetensors")).map_err(|e| config_error(e.to_string()))?;
    Ok((final_metrics, start, started.elapsed().as_secs_f64()))
}

/// 1 - Var(returns - values) / Var(returns): how much of the return the critic explains.
fn explained_variance(values: &[f32], returns: &[f32]) -> f64 {
    let n = returns.len() as f64;
    let mean = |x: &mut dyn Iterator<Item = f64>| x.sum::<f64>() / n;
    let r_mean = mean(&mut returns.iter().map(|&r| r as f64));
    let r_var = returns.iter().map(|&r| (r as f64 - r_mean).powi(2)).sum::<f64>() / n;
    let d: Vec<f64> = returns.iter().zip(values).map(|(&r, &v)| (r - v) as f64).collect();
    let d_mean = d.iter().sum::<f64>() / n;
    let d_var = d.iter().map(|x| (x - d_mean).powi(2)).sum::<f64>() / n;
    if r_var > 0.0 { 1.0 - d_var / r_var } else { f64::NAN }
}

/// The loss of one minibatch (the rollout rows at `members`), native or from the loss plugin,
/// with the seconds spent inside the plugin.
#[allow(clippy::too_many_arguments)]
fn minibatch_loss(
    learner: &Learner,
    rows: &[Vec<u32>],
    lens: &[usize],
    rollout: &Rollout,
    members: &[usize],
    pad: u32,
    config: &PpoLossConfig,
    plugin: Option<&LossPlugin>,
) -> Result<(Tensor, Vec<(String, f64)>, f64), String> {
    let device = learner.policy.device();
    let picked_rows: Vec<Vec<u32>> = members.iter().map(|&m| rows[m].clone()).collect();
    let picked_lens: Vec<usize> = members.iter().map(|&m| lens[m]).collect();
    let predicted = learner.predict(&picked_rows, &picked_lens, pad)?;
    let gather = |values: &[f32]| -> Vec<f32> {
        members
            .iter()
            .flat_map(|&m| values[rollout.offsets[m] as usize..rollout.offsets[m + 1] as usize].iter().copied())
            .collect()
    };
    let constant = |values: &[f32]| Tensor::from_vec(gather(values), (gather(values).len(),), device).map_err(|e| e.to_string());
    let batch = PpoBatch {
        logprob: predicted.logprob,
        value: Some(predicted.value),
        entropy: Some(predicted.entropy),
        old_logprob: constant(&rollout.old_logprob)?,
        old_value: constant(&rollout.old_value)?,
        advantage: constant(&rollout.advantage)?,
        returns: constant(&rollout.returns)?,
    };
    let entropy = batch.entropy.as_ref().and_then(|e| e.mean_all().ok()).and_then(|e| e.to_scalar::<f32>().ok()).unwrap_or(f32::NAN);
    let started = Instant::now();
    let (loss, mut diagnostics) = match plugin {
        None => ppo_loss(&batch, config).map_err(|e| e.to_string())?,
        Some(plugin) => ppo_plugin_loss(plugin, &batch, &picked_lens)?,
    };
    let plugin_seconds = if plugin.is_some() { started.elapsed().as_secs_f64() } else { 0.0 };
    diagnostics.push(("entropy".into(), entropy as f64));
    Ok((loss, diagnostics, plugin_seconds))
}

/// The minibatch's features as a loss plugin reads them, and its surrogate loss.
pub fn ppo_plugin_loss(plugin: &LossPlugin, batch: &PpoBatch, lens: &[usize]) -> Result<(Tensor, Vec<(String, f64)>), String> {
    let mut offsets = vec![0u32];
    for &len in lens {
        offsets.push(offsets.last().copied().unwrap_or(0) + len as u32);
    }
    let mask = batch.logprob.ones_like().map_err(|e| e.to_string())?;
    let mut values: Vec<(Feature, &Tensor)> = vec![
        (Feature::Logprob, &batch.logprob),
        (Feature::OldLogprob, &batch.old_logprob),
        (Feature::OldValue, &batch.old_value),
        (Feature::Advantage, &batch.advantage),
        (Feature::Return, &batch.returns),
        (Feature::Mask, &mask),
    ];
    if let Some(value) = &batch.value {
        values.push((Feature::Value, value));
    }
    if let Some(entropy) = &batch.entropy {
        values.push((Feature::Entropy, entropy));
    }
    let (surrogate, value, mut metrics) = plugin_loss(plugin, &Features { offsets, values }).map_err(|e| e.to_string())?;
    metrics.push(("plugin_loss".into(), value));
    Ok((surrogate, metrics))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_tokens_are_predicted_one_position_earlier() {
        let rows = vec![vec![1, 2, 3, 10, 11], vec![4, 12]];
        // Row 0: prompt of 3, response at 3 and 4, predicted at 2 and 3; row 1 (width 5): at 5.
        assert_eq!(prediction_positions(&rows, &[2, 1], 5), vec![2, 3, 5]);
    }
}
