//! Reward: the plugin benchmark's lexicon reward, as a Rust plugin.
use triad_plugin_sdk::prelude::*;

include!("lexicon.rs");

/// No config.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LexiconRust {}

impl Plugin for LexiconRust {}

impl Reward for LexiconRust {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        Ok(lexicon_score(&episode.response))
    }
}

export_reward!(LexiconRust);
