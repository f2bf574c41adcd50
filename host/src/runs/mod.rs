//! The run store: where a run's files live, written so that a crash never leaves a half-written
//! file behind, and the metrics stream that records a run as it happens.

pub mod atomic;
pub mod metrics;
pub mod progress;
