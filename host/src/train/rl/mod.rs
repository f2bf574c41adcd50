//! Reinforcement learning on the policy's own samples, in parts that PPO (and the group-relative
//! methods) compose:
//!
//! 1. [`rollout`]: sample a response to each prompt from the current policy;
//! 2. [`scoring`]: score each episode with a weighted sum of reward models and reward plugins;
//! 3. [`policy`]: the learner (policy, value head, optional separate critic) and the log-probs,
//!    values and entropies it predicts over response tokens, and the frozen reference's log-probs;
//! 4. [`advantages`]: per-token KL penalties, GAE advantages and returns;
//! 5. [`update`]: epochs of shuffled minibatches of the clipped loss (native, or a loss plugin),
//!    one optimizer step each; [`group`]: the same for the critic-free group-relative methods
//!    (GRPO, RLOO), whose advantages come from groups of responses to one prompt.
//!
//! Per-token quantities are flat arrays over the response tokens of a batch, sequence after
//! sequence, with offsets: the layout loss plugins receive.

pub mod advantages;
pub mod group;
pub mod policy;
pub mod rollout;
pub mod scoring;
pub mod settings;
pub mod update;

use crate::model::ModelError;
use crate::plugins::PluginError;
use crate::train::plugin_loss::PluginLossError;

/// A failure in one part of an RL iteration, saying which part.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error("{during}: {source}")]
    Tensor { during: &'static str, source: candle_core::Error },
    #[error("{during}: {source}")]
    Model { during: &'static str, source: ModelError },
    #[error("reward model `{name}`: {source}")]
    RewardModel { name: String, source: ModelError },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    PluginLoss(#[from] PluginLossError),
    /// A gradient that is not finite (from a reward so large its returns overflow, say): no
    /// weight was updated.
    #[error(
        "epoch {epoch}: the gradient norm is {norm}: the update diverged, no weight was changed (are the rewards bounded?)"
    )]
    Diverged { epoch: usize, norm: f64 },
    /// A score past the range rewards may take.
    #[error(
        "{scorer} scored record {record} {score}, outside [-{limit}, {limit}]: rescale it, or raise the stage's reward_limit"
    )]
    RewardOutOfRange { scorer: String, record: usize, score: f64, limit: f64 },
    /// Response tokens the stage's layout cannot turn into text.
    #[error("decoding a response: {0}")]
    Decode(Box<dyn std::error::Error + Send + Sync>),
}

/// Attaches what was being done to a candle error.
pub(crate) fn tensor(during: &'static str) -> impl Fn(candle_core::Error) -> RlError {
    move |source| RlError::Tensor { during, source }
}

/// Attaches what was being done to a model error.
pub(crate) fn model(during: &'static str) -> impl Fn(ModelError) -> RlError {
    move |source| RlError::Model { during, source }
}
