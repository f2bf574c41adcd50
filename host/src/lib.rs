//! triad: declared, reproducible LLM training pipelines.
//!
//! The native host owns everything heavy (models, optimizers, kernels, training loops, the run
//! store); sandboxed WebAssembly plugins supply what researchers swap most (data filters, reward
//! functions, losses, metrics). This crate is the host; `main.rs` is only its command line.

// Errors here carry what a user needs to find the fault (file, line, plugin, record, stage, the
// numbers), and they travel the rare path: their size is worth it, boxing each would only add
// noise to every `?`.
#![allow(clippy::result_large_err)]

pub mod bench;
pub mod data;
pub mod experiment;
pub mod model;
pub mod plugins;
pub mod runs;
pub mod stages;
pub mod train;
pub mod util;
