//! One typed handle per plugin kind. Each checks what the plugin returns before anyone uses it:
//! one output per input, finite numbers, sizes under the cap, gradients only for the features
//! that have them. Filters, rewards and metrics spread a batch over one instance per core.

use super::bindings::{
    self, Decision, Episode, Feature, FeatureValues, LossBatch, LossOutput, MetricRecord, NamedValue, PluginInfo,
};
use super::error::{PluginError, Problem};
use super::pool::Pool;
use super::records::feature_name;

/// Shared accessors of every typed handle.
macro_rules! common_accessors {
    () => {
        /// The name the experiment gave the plugin.
        pub fn name(&self) -> &str {
            &self.pool.name
        }
        /// What the plugin reported about itself.
        pub fn info(&self) -> &PluginInfo {
            &self.pool.info
        }
        /// sha256 of the plugin's wasm, hex.
        pub fn sha256(&self) -> &str {
            &self.pool.sha256
        }
    };
}

/// How much a filter's rewrite may grow its record: cleaning and normalising text keep it about
/// the same size, and a bound per record bounds the whole corpus a stage tokenizes.
pub const MAX_REWRITE_GROWTH: usize = 4;
/// A short record may always be rewritten to this many bytes.
pub const MIN_REWRITE_ALLOWANCE: usize = 4096;

fn max_rewrite_bytes(before: usize) -> usize {
    (before * MAX_REWRITE_GROWTH).max(MIN_REWRITE_ALLOWANCE)
}

/// The text and fields of a sample, in bytes.
fn sample_bytes(sample: &bindings::Sample) -> usize {
    sample.text.len() + sample.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// A data filter plugin.
pub struct FilterPlugin {
    pub(crate) pool: Pool<bindings::filter::DataFilter>,
}

impl FilterPlugin {
    common_accessors!();

    /// One decision per sample, in order.
    pub fn filter(&self, samples: &[bindings::Sample]) -> Result<Vec<Decision>, PluginError> {
        const CALL: &str = "filter";
        let chunks = self.pool.map_chunks(samples, |pool, worker, chunk, offset| {
            let decisions = pool
                .with_instance(worker, CALL, |world, store| world.call_filter(store, chunk))?
                .map_err(|e| pool.guest_error(CALL, e, offset, chunk.len()))?;
            check_count(pool, CALL, decisions.len(), chunk.len())?;
            let bytes: usize = decisions
                .iter()
                .map(|d| match d {
                    Decision::Keep => 0,
                    Decision::Drop(reason) => reason.len(),
                    Decision::Rewrite(sample) => sample_bytes(sample),
                })
                .sum();
            check_size(pool, CALL, bytes)?;
            for (i, (decision, sample)) in decisions.iter().zip(chunk).enumerate() {
                if let Decision::Rewrite(rewritten) = decision {
                    let (before, after) = (sample_bytes(sample), sample_bytes(rewritten));
                    if after > max_rewrite_bytes(before) {
                        let message = format!(
                            "a rewrite grew the record from {before} to {after} bytes; a rewrite may be at most \
                             {MAX_REWRITE_GROWTH}x its record (or {MIN_REWRITE_ALLOWANCE} bytes)"
                        );
                        return Err(pool.error(CALL, Problem::InvalidOutput(message)).at_record(offset + i));
                    }
                }
            }
            Ok(decisions)
        })?;
        Ok(chunks.into_iter().flatten().collect())
    }
}

/// A reward (or judge) plugin.
pub struct RewardPlugin {
    pub(crate) pool: Pool<bindings::reward::Reward>,
}

impl RewardPlugin {
    common_accessors!();

    /// One finite score per episode, in order.
    pub fn score(&self, episodes: &[Episode]) -> Result<Vec<f64>, PluginError> {
        const CALL: &str = "score";
        let chunks = self.pool.map_chunks(episodes, |pool, worker, chunk, offset| {
            let scores = pool
                .with_instance(worker, CALL, |world, store| world.call_score(store, chunk))?
                .map_err(|e| pool.guest_error(CALL, e, offset, chunk.len()))?;
            check_count(pool, CALL, scores.len(), chunk.len())?;
            if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
                return Err(pool
                    .error(CALL, Problem::InvalidOutput(format!("score {} is not a finite number", scores[i])))
                    .at_record(offset + i));
            }
            Ok(scores)
        })?;
        Ok(chunks.into_iter().flatten().collect())
    }
}

/// A loss plugin (the surrogate-gradient contract: see `plugin-sdk/wit/plugin.wit`).
pub struct LossPlugin {
    pub(crate) pool: Pool<bindings::loss::Loss>,
    features: Vec<Feature>,
    /// Every metric name it has returned: its metrics become a stage's columns, so their number
    /// is bounded over all calls, not only in one.
    names: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Whether the host can backpropagate through a feature.
pub fn is_differentiable(feature: Feature) -> bool {
    matches!(
        feature,
        Feature::Logprob | Feature::MeanLogprob | Feature::Entropy | Feature::Value | Feature::SequenceLogprob
    )
}

/// Whether a feature has one value per sequence rather than one per token.
pub fn is_per_sequence(feature: Feature) -> bool {
    matches!(feature, Feature::SequenceLogprob | Feature::SequenceRefLogprob)
}

impl LossPlugin {
    common_accessors!();

    pub(crate) fn new(pool: Pool<bindings::loss::Loss>) -> Result<Self, PluginError> {
        let features = pool.with_instance(0, "features", |world, store| world.call_features(store))?;
        if features.is_empty() {
            return Err(pool.error("features", Problem::InvalidOutput("the loss declares no features".into())));
        }
        Ok(LossPlugin { pool, features, names: Default::default() })
    }

    /// The features the loss reads, as it declared them.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The loss value and its gradient with respect to each differentiable feature it uses.
    pub fn compute(&self, batch: &LossBatch) -> Result<LossOutput, PluginError> {
        const CALL: &str = "compute";
        let pool = &self.pool;
        let output = pool
            .with_instance(0, CALL, |world, store| world.call_compute(store, batch))?
            .map_err(|e| pool.guest_error(CALL, e, 0, batch.sequence_offsets.len().saturating_sub(1)))?;
        let invalid = |message: String| pool.error(CALL, Problem::InvalidOutput(message));
        if !output.value.is_finite() {
            return Err(invalid(format!("loss value {} is not finite", output.value)));
        }
        let tokens = batch.sequence_offsets.last().copied().unwrap_or(0) as usize;
        let sequences = batch.sequence_offsets.len().saturating_sub(1);
        let mut seen = Vec::new();
        for FeatureValues { feature, values } in &output.gradients {
            let name = feature_name(*feature);
            if !is_differentiable(*feature) {
                return Err(invalid(format!("returned a gradient for `{name}`, which is not differentiable")));
            }
            if !self.features.contains(feature) {
                return Err(invalid(format!("returned a gradient for `{name}`, a feature it did not declare")));
            }
            if seen.contains(feature) {
                return Err(invalid(format!("returned two gradients for `{name}`")));
            }
            seen.push(*feature);
            let expected = if is_per_sequence(*feature) { sequences } else { tokens };
            if values.len() != expected {
                return Err(invalid(format!(
                    "gradient for `{name}` has {} values, the batch has {expected}",
                    values.len()
                )));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite() || v.abs() > MAX_GRADIENT) {
                return Err(invalid(format!(
                    "gradient for `{name}` is {} at index {i}, outside [-{MAX_GRADIENT:e}, {MAX_GRADIENT:e}]",
                    values[i]
                )));
            }
        }
        check_named_values(pool, CALL, &output.metrics)?;
        let mut names = self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        names.extend(output.metrics.iter().map(|m| m.name.clone()));
        if names.len() > MAX_NAMED_VALUES {
            return Err(invalid(format!(
                "returned {} distinct metric names over its calls, more than {MAX_NAMED_VALUES}",
                names.len()
            )));
        }
        Ok(output)
    }
}

/// A metric plugin.
pub struct MetricPlugin {
    pub(crate) pool: Pool<bindings::metric::Metric>,
}

impl MetricPlugin {
    common_accessors!();

    /// Score predictions against references: statistics per chunk (in parallel unless the
    /// metric is stateful), summed, then `finish` on the total.
    pub fn evaluate(&self, records: &[MetricRecord]) -> Result<Vec<NamedValue>, PluginError> {
        let chunks = self.pool.map_chunks(records, |pool, worker, chunk, offset| {
            let stats = pool
                .with_instance(worker, "statistics", |world, store| world.call_statistics(store, chunk))?
                .map_err(|e| pool.guest_error("statistics", e, offset, chunk.len()))?;
            if let Some(i) = stats.iter().position(|s| !s.is_finite()) {
                let problem = Problem::InvalidOutput(format!("statistic {i} is {}", stats[i]));
                return Err(pool.error("statistics", problem));
            }
            Ok(stats)
        })?;
        let mut totals: Vec<f64> = Vec::new();
        for (index, stats) in chunks.into_iter().enumerate() {
            if index == 0 {
                totals = stats;
            } else if stats.len() != totals.len() {
                let problem = Problem::InvalidOutput(format!(
                    "statistics vectors differ in length between chunks ({} and {})",
                    totals.len(),
                    stats.len()
                ));
                return Err(self.pool.error("statistics", problem));
            } else {
                totals.iter_mut().zip(&stats).for_each(|(t, s)| *t += s);
            }
        }
        let values = self
            .pool
            .with_instance(0, "finish", |world, store| world.call_finish(store, &totals))?
            .map_err(|e| self.pool.guest_error("finish", e, 0, 0))?;
        check_named_values(&self.pool, "finish", &values)?;
        Ok(values)
    }
}

/// The largest gradient magnitude a loss plugin may return for one feature value: far beyond
/// any real loss's, far below what overflows the surrogate's sum.
pub const MAX_GRADIENT: f32 = 1e6;

/// The most named values (metrics) one call may return.
pub const MAX_NAMED_VALUES: usize = 64;

/// Named values become table columns and metric names: each name non-empty, at most 64 of
/// `A-Z a-z 0-9 _ - . /`, not repeated; each value finite; at most [`MAX_NAMED_VALUES`].
fn check_named_values<W: super::pool::World>(
    pool: &Pool<W>,
    call: &'static str,
    values: &[NamedValue],
) -> Result<(), PluginError> {
    let invalid = |message: String| Err(pool.error(call, Problem::InvalidOutput(message)));
    if values.len() > MAX_NAMED_VALUES {
        return invalid(format!("returned {} named values, more than {MAX_NAMED_VALUES}", values.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for NamedValue { name, value } in values {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-./".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
            let shown: String = name.chars().take(64).flat_map(char::escape_default).collect();
            return invalid(format!("named a value \"{shown}\": names are 1-64 characters of A-Z a-z 0-9 _ - . /"));
        }
        if !seen.insert(name.as_str()) {
            return invalid(format!("named two values `{name}`"));
        }
        if !value.is_finite() {
            return invalid(format!("`{name}` is {value}"));
        }
    }
    Ok(())
}

fn check_count<W: super::pool::World>(
    pool: &Pool<W>,
    call: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), PluginError> {
    if got == expected {
        return Ok(());
    }
    Err(pool.error(call, Problem::InvalidOutput(format!("returned {got} outputs for {expected} inputs"))))
}

fn check_size<W: super::pool::World>(pool: &Pool<W>, call: &'static str, bytes: usize) -> Result<(), PluginError> {
    if bytes <= pool.limits.max_output_bytes {
        return Ok(());
    }
    let problem = Problem::InvalidOutput(format!(
        "returned {:.1} MiB of text, over the cap of {:.1} MiB",
        bytes as f64 / (1 << 20) as f64,
        pool.limits.max_output_bytes as f64 / (1 << 20) as f64
    ));
    Err(pool.error(call, problem))
}
