//! The reward of an RL stage, from its config to scorers: each `Model(stage: ...)` term loads
//! that RewardModel stage's output, each `Plugin(name: ...)` term the reward plugin. Every RL
//! stage kind (PPO now; the group-relative ones after it) reads its rewards through here.

use super::context::{RunContext, StageError};
use crate::model::RewardModel;
use crate::train::rl::scoring::{RewardTerm, Scorer};

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
