//! Stages: what an experiment does, in order. Each stage is a config plus a `run(ctx)`; the
//! [`pipeline`] runs them and caches their outputs by key.

pub mod context;
pub mod eval;
pub mod examples;
pub mod pipeline;
pub mod ppo;
pub mod pretrain;
pub mod reward_model;
pub mod sft;
pub mod winrate;

pub use context::{RunContext, StageError};
pub use pipeline::{RunOptions, RunOutcome, StageOutcome, run_experiment};
