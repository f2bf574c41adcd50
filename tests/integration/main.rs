//! triad's integration tests, in one test binary: each module is one area, end to end through
//! the library or the `triad` binary on real data, real models and real plugins in the sandbox.
//! One binary links wasmtime, candle and polars once instead of once per area.

mod support;

mod cli;
mod compare;
mod data_prep;
mod dpo;
mod eval;
mod experiments;
mod fused_kernels;
mod grpo;
mod hf_compat;
mod hostile_plugins;
mod layering;
mod loss_plugins;
mod plugin_gradients;
mod plugins_on_real_data;
mod pretrain;
mod resume;
mod script_plugins;
mod smollm2;
mod sweep;
mod t5_compat;
mod t5_pipeline;
