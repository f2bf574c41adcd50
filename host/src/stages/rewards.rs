//! The reward of an RL stage, from its config to scorers: each `Model(stage: ...)` term loads
//! that RewardModel stage's output, each `Plugin(name: ...)` term the reward plugin; and the
//! episodes they score, sampled from a model for examples' prompts, each carrying its example's
//! reference answer. Every RL stage kind (PPO, GRPO) reads its rewards through here.

use super::context::{RunContext, StageError};
use super::examples::Example;
use super::layout::Layout;
use crate::model::generate::SamplingConfig;
use crate::model::{Model, RewardModel};
use crate::train::rl::rollout::{self, Sampled};
use crate::train::rl::scoring::{RewardTerm, Scorer};

/// A response from `model` to each example's prompt (cut from the left to leave the answer room),
/// sampled with `config`; each episode carries the example's response as its reference answer.
/// Errors name `stage` and its iteration `step`.
pub fn sample_episodes(
    model: &Model,
    layout: &Layout,
    picked: &[&Example],
    config: &SamplingConfig,
    (stage, step): (&str, u64),
) -> Result<Vec<Sampled>, StageError> {
    let layout_error = |source| StageError::Layout { stage: stage.to_string(), source };
    let context = model.config().context();
    let prompts: Vec<String> = picked.iter().map(|e| e.prompt.clone()).collect();
    let tokens = prompts
        .iter()
        .map(|p| layout.prompt_tokens_within(p, context, config.max_new_tokens))
        .collect::<Result<Vec<_>, _>>();
    let mut episodes =
        rollout::sample(model, &prompts, tokens.map_err(layout_error)?, config, |t| layout.response_text(t))
            .map_err(|source| StageError::Rl { stage: stage.to_string(), step, source })?;
    for (episode, example) in episodes.iter_mut().zip(picked) {
        episode.reference = Some(example.response.clone());
    }
    Ok(episodes)
}

/// The scorers of `terms` for stage `stage`, whose policy `(name, vocabulary size)` every
/// reward model must share a tokenizer with.
pub fn scorers(
    ctx: &RunContext,
    stage: &str,
    terms: &[RewardTerm],
    (policy, vocab): (&str, usize),
) -> Result<Vec<Scorer>, StageError> {
    let config_error = |message: String| StageError::Config { stage: stage.to_string(), message };
    let mut scorers = Vec::new();
    for term in terms {
        scorers.push(match term {
            RewardTerm::Model { stage: rm, weight } => {
                let model = RewardModel::load(&ctx.stage_dir(rm), &ctx.device)
                    .map_err(|source| StageError::Model { stage: rm.clone(), source })?;
                let rm_vocab = model.trunk.config().vocab_size();
                if rm_vocab != vocab {
                    return Err(config_error(format!(
                        "reward model `{rm}` reads a vocabulary of {rm_vocab} tokens, the policy `{policy}` {vocab}: \
                         they must share a tokenizer"
                    )));
                }
                Scorer::Model { name: rm.clone(), weight: *weight, model: Box::new(model) }
            }
            RewardTerm::Plugin { name, weight } => {
                let plugin = ctx.plugin(name)?.into_reward()?;
                Scorer::Plugin { name: name.clone(), weight: *weight, plugin: Box::new(plugin) }
            }
        });
    }
    Ok(scorers)
}
