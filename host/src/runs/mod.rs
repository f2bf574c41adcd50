//! The run store: where a run's files live, written so that a crash never leaves a half-written
//! file behind, the metrics stream that records a run as it happens, and the tables and plots
//! that compare finished runs (`triad compare`).

pub mod atomic;
pub mod compare;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod table;
