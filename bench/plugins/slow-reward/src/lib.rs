//! Benchmark plugin: a reward that costs a fixed amount of work per record and scores 0.
//!
//! It stands in for an expensive reward (running a response's unit tests, parsing a proof) in
//! `bench/grpo-slow-reward.ron`, which measures what such a reward adds to a GRPO step. A plugin
//! cannot see the clock, so the cost is given as work: `spins_per_record` turns of a loop the
//! compiler cannot remove; `triad plugin run` on this plugin shows what that takes on a machine.

use std::hint::black_box;

use triad_plugin_sdk::prelude::*;

/// The slow reward; its field is its config.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowReward {
    /// Loop turns per record.
    pub spins_per_record: u64,
}

impl Plugin for SlowReward {}

impl Reward for SlowReward {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        let mut state = episode.response.len() as u64;
        for _ in 0..self.spins_per_record {
            state = black_box(state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        }
        black_box(state);
        // Always 0: the work is the point, and it must not change the experiment's reward.
        Ok(0.0)
    }
}

export_reward!(SlowReward);
