//! Benchmark: the cost of the sandbox.
//!
//! Scores 10,000 real movie-review snippets with the lexicon-sentiment reward (VADER) two ways in
//! the same run: natively (the plugin crate's own scoring function compiled into this binary)
//! and as a WebAssembly plugin in the sandbox, on one instance and on one instance per core.
//! Prints records per second and the ratios. Run with `cargo bench -p triad --bench plugins`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use triad::plugins::{Episode, Plugin, PluginSpec, Sandbox, build};
use triad::util::packages::MOVIE_REVIEW_SNIPPETS;

const RECORDS: usize = 10_000;
const REPEATS: usize = 7;

/// Median wall time of `REPEATS` runs of `body`.
fn median_time(mut body: impl FnMut()) -> Duration {
    body(); // warm up caches and lazily built state
    let mut times: Vec<Duration> = (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            body();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[REPEATS / 2]
}

fn main() {
    let path = MOVIE_REVIEW_SNIPPETS.fetch().expect("fetching the movie review snippets");
    let bytes = std::fs::read(&path).expect("reading the snippets");
    let episodes: Vec<Episode> = String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| line.splitn(3, '\t').nth(2))
        .take(RECORDS)
        .map(|text| Episode { prompt: String::new(), response: text.trim().to_string(), reference: None })
        .collect();
    assert_eq!(episodes.len(), RECORDS, "the corpus has at least {RECORDS} snippets");

    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/lexicon-sentiment");
    build::build_crates(std::slice::from_ref(&crate_dir)).expect("building the plugin");
    let sandbox = Sandbox::shared();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = |workers: usize| {
        let spec = PluginSpec::at(&crate_dir).with_workers(workers);
        Plugin::load(&sandbox, &spec).and_then(Plugin::into_reward).expect("loading lexicon-sentiment")
    };
    let single = load(1);
    let pooled = load(cores);

    let mut native_scores = Vec::new();
    let native = median_time(|| {
        native_scores = episodes.iter().map(|e| lexicon_sentiment::compound(&e.response)).collect();
    });
    let mut plugin_scores = Vec::new();
    let one = median_time(|| plugin_scores = single.score(&episodes).expect("scoring"));
    let many = median_time(|| {
        pooled.score(&episodes).expect("scoring");
    });
    assert_eq!(native_scores, plugin_scores, "the plugin and the native function agree exactly");

    let rate = |t: Duration| RECORDS as f64 / t.as_secs_f64();
    println!("lexicon-sentiment (VADER) over {RECORDS} real movie-review snippets, median of {REPEATS}:");
    println!("  native Rust, 1 thread     {:>10.0} records/s", rate(native));
    println!(
        "  wasm plugin, 1 instance   {:>10.0} records/s   native/plugin = {:.2}x",
        rate(one),
        one.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  wasm plugin, {cores} instances  {:>10.0} records/s   native(1 thread)/plugin = {:.2}x",
        rate(many),
        many.as_secs_f64() / native.as_secs_f64()
    );
}
