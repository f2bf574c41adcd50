//! Stages: what an experiment does, in order. Each stage is a config plus a `run(ctx)`; the
//! [`pipeline`] runs them and caches their outputs by key.

pub mod context;
pub mod pipeline;
pub mod pretrain;

pub use context::{RunContext, StageError};
pub use pipeline::{StageOutcome, run_experiment};
