//! `triad bench plugins`: the same lexicon reward written natively (a Rust function called in
//! the host), as a Rust plugin, a Python plugin and a JavaScript plugin
//! (`bench/plugins/lexicon-*`), scoring the same real review snippets side by side in one
//! invocation: records per second through the sandbox as stages call it (batched, one instance
//! per core), the first load (build, compile) and a cached one.

use std::path::Path;
use std::time::Instant;

use crate::plugins::{Episode, Plugin, PluginError, PluginSpec, Sandbox};

include!("../../../bench/plugins/lexicon-rust/src/lexicon.rs");

/// One implementation's figures.
#[derive(Debug, Clone)]
pub struct PluginBenchResult {
    /// "native", "rust", "python" or "javascript".
    pub implementation: &'static str,
    /// Records scored per second (median of the timed passes).
    pub records_per_s: f64,
    /// Seconds to load the plugin the first time in this process: building (unless the build
    /// is cached), compiling (unless the compiled form is cached), instantiating.
    pub first_load_s: f64,
    /// Seconds to load it again from the compiled-component cache in a fresh sandbox.
    pub cached_load_s: f64,
    /// The component's size in bytes.
    pub wasm_bytes: u64,
    /// Records whose score differs from the native function's.
    pub mismatches: usize,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum PluginBenchError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("cannot read the review snippets: {0}")]
    Data(String),
}

/// Score `episodes` `passes` times with each implementation; the plugins lie in
/// `workspace/bench/plugins`.
pub fn bench_plugins(
    workspace: &Path,
    episodes: &[Episode],
    passes: usize,
) -> Result<Vec<PluginBenchResult>, PluginBenchError> {
    let passes = passes.max(1);
    let native: Vec<f64> = episodes.iter().map(|e| lexicon_score(&e.response)).collect();
    let mut results = vec![PluginBenchResult {
        implementation: "native",
        records_per_s: median_rate(episodes.len(), passes, || {
            std::hint::black_box(episodes.iter().map(|e| lexicon_score(&e.response)).sum::<f64>());
        }),
        first_load_s: 0.0,
        cached_load_s: 0.0,
        wasm_bytes: 0,
        mismatches: 0,
    }];
    for (implementation, folder) in [("rust", "lexicon-rust"), ("python", "lexicon-py"), ("javascript", "lexicon-js")] {
        let dir = workspace.join("bench").join("plugins").join(folder);
        let started = Instant::now();
        let plugin = Plugin::load(&Sandbox::shared(), &PluginSpec::at(&dir))?.into_reward()?;
        let first_load_s = started.elapsed().as_secs_f64();
        // A fresh sandbox has an empty in-memory cache: this load reads triad's disk cache.
        let started = Instant::now();
        Plugin::load(&Sandbox::new().map_err(|e| PluginBenchError::Data(e.to_string()))?, &PluginSpec::at(&dir))?;
        let cached_load_s = started.elapsed().as_secs_f64();
        let scores = plugin.score(episodes)?;
        let mismatches = scores.iter().zip(&native).filter(|(a, b)| (*a - *b).abs() > 1e-12).count();
        let wasm = crate::plugins::build::build_plugins(std::slice::from_ref(&dir))
            .map_err(|e| PluginBenchError::Plugin(PluginError::new(folder, None, "build", e)))?;
        let wasm_bytes = wasm.first().and_then(|w| std::fs::metadata(w).ok()).map_or(0, |m| m.len());
        let mut failed = None;
        let records_per_s = median_rate(episodes.len(), passes, || {
            if let Err(e) = plugin.score(episodes) {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        results.push(PluginBenchResult {
            implementation,
            records_per_s,
            first_load_s,
            cached_load_s,
            wasm_bytes,
            mismatches,
        });
    }
    Ok(results)
}

/// Records per second of `run` over `records`, the median of `passes` timed passes after one
/// untimed pass.
fn median_rate(records: usize, passes: usize, mut run: impl FnMut()) -> f64 {
    run();
    let mut rates: Vec<f64> = (0..passes)
        .map(|_| {
            let started = Instant::now();
            run();
            records as f64 / started.elapsed().as_secs_f64().max(1e-9)
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}
