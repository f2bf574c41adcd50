//! How training fails, for the step loop and the session around it.

use crate::util::atomic::FileError;

/// A failure while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("at step {step}: {source}")]
    Tensor { step: u64, source: candle_core::Error },
    #[error("at step {step}: {source}")]
    Model { step: u64, source: crate::model::ModelError },
    #[error("at step {step}: the loss is {value}: training diverged (lower the learning rate?)")]
    Diverged { step: u64, value: f64 },
    #[error(
        "at step {step}: the gradient norm is {norm}: training diverged, no weight was updated (lower the learning rate?)"
    )]
    DivergedGradient { step: u64, norm: f64 },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("at step {step}: {source}")]
    PluginLoss { step: u64, source: super::plugin_loss::PluginLossError },
    #[error("{0}")]
    Objective(String),
}
