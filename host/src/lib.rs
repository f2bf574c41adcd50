//! triad: declared, reproducible LLM training pipelines.
//!
//! The native host owns everything heavy (models, optimizers, kernels, training loops, the run
//! store); sandboxed WebAssembly plugins supply what researchers swap most (data filters, reward
//! functions, losses, metrics). This crate is the host; `main.rs` is only its command line.

pub mod bench;
pub mod data;
pub mod experiment;
pub mod model;
pub mod plugins;
pub mod runs;
pub mod stages;
pub mod train;
pub mod util;
