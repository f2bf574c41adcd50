//! Training machinery shared by every stage: the AdamW optimizer, the learning-rate schedule,
//! gradient clipping and accumulation, the step loop with periodic evaluation, and checkpoints
//! that let an interrupted run resume on the exact same loss curve.
//!
//! The RL stages compose the parts in [`rl`] (rollouts, scoring, advantages, the update) and run
//! on the same [`session`] bookkeeping (checkpoints, metrics, cadence).
//!
//! A stage supplies an [`Objective`] (how to compute the loss of step `s`, micro-batch `k`, and
//! how to evaluate); [`trainer::train`] does the rest. Because every batch and every dropout mask
//! is a pure function of (seed, step), a resumed run needs only the weights, the optimizer
//! moments and the step number to continue bit for bit.

pub mod checkpoint;
pub mod dpo;
pub mod error;
pub mod grpo;
pub mod loss;
pub mod optimizer;
pub mod plugin_loss;
pub mod ppo;
pub mod rl;
pub mod schedule;
pub mod session;
pub mod settings;
pub mod trainer;

pub use error::TrainError;
pub use loss::{lm_loss, lm_loss_rows, masked_lm_loss, masked_lm_loss_rows, masked_mean, token_logprobs};
pub use optimizer::{AdamW, AdamWConfig};
pub use schedule::Schedule;
pub use session::{Cadence, Session};
pub use settings::TrainSettings;
pub use trainer::{Objective, SplitLoss, TrainConfig, TrainSummary, data_parallel_grads, part_rows, train};
