//! One typed handle per plugin kind. Each checks what the plugin returns before anyone uses it:
//! one output per input, finite numbers, sizes under the cap, gradients only for the features
//! that have them. Filters, rewards and metrics spread a batch over one instance per core.

use super::bindings::{
    self, Decision, Episode, Feature, FeatureValues, LossBatch, LossOutput, MetricRecord, NamedValue,
    PluginInfo,
};
use super::error::{PluginError, Problem};
use super::pool::Pool;

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
                .map_err(|e| pool.guest_error(CALL, e, offset))?;
            check_count(pool, CALL, decisions.len(), chunk.len())?;
            let bytes: usize = decisions
                .iter()
                .map(|d| match d {
                    Decision::Keep => 0,
                    Decision::Drop(reason) => reason.len(),
                    Decision::Rewrite(sample) => {
                        sample.text.len() + sample.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                    }
                })
                .sum();
            check_size(pool, CALL, bytes)?;
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
                .map_err(|e| pool.guest_error(CALL, e, offset))?;
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
        Ok(LossPlugin { pool, features })
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
            .map_err(|e| pool.guest_error(CALL, e, 0))?;
        let invalid = |message: String| pool.error(CALL, Problem::InvalidOutput(message));
        if !output.value.is_finite() {
            return Err(invalid(format!("loss value {} is not finite", output.value)));
        }
        let tokens = batch.sequence_offsets.last().copied().unwrap_or(0) as usize;
        let sequences = batch.sequence_offsets.len().saturating_sub(1);
        for FeatureValues { feature, values } in &output.gradients {
            if !is_differentiable(*feature) {
                return Err(invalid(format!("returned a gradient for {feature:?}, which is not differentiable")));
            }
            let expected = if is_per_sequence(*feature) { sequences } else { tokens };
            if values.len() != expected {
                return Err(invalid(format!(
                    "gradient for {feature:?} has {} values, the batch has {expected}",
                    values.len()
                )));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!("gradient for {feature:?} is {} at index {i}", values[i])));
            }
        }
        if let Some(bad) = output.metrics.iter().find(|m| !m.value.is_finite()) {
            return Err(invalid(format!("metric `{}` is {}", bad.name, bad.value)));
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
                .map_err(|e| pool.guest_error("statistics", e, offset))?;
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
            .map_err(|e| self.pool.guest_error("finish", e, 0))?;
        if let Some(bad) = values.iter().find(|v| !v.value.is_finite()) {
            return Err(self.pool.error("finish", Problem::InvalidOutput(format!("`{}` is {}", bad.name, bad.value))));
        }
        Ok(values)
    }
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
