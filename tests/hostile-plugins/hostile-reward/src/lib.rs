//! A reward plugin that misbehaves on purpose, to prove the sandbox contains it.
//!
//! It scores a response by its length in bytes, except when the response is the name of a
//! misdeed: `loop` spins forever, `grow-memory` allocates until 1 GiB, `recurse` recurses
//! without bound, `panic` panics, `nan` / `infinity` return non-finite scores, `huge` returns a
//! finite but enormous one (1e300), `wrong-count` returns one score too few for the batch,
//! `blame-far` blames record 4,000,000,000, `escape` returns an error of terminal escape codes
//! and a forged host line, and `log-flood` logs 100,000 lines.

use std::hint::black_box;

use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
struct Hostile {}

impl Plugin for Hostile {}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    // black_box keeps the compiler from turning this into a loop.
    black_box(recurse(black_box(depth + 1))) + 1
}

impl Reward for Hostile {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        Ok(match episode.response.as_str() {
            "loop" => {
                let mut spins: u64 = 0;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            "grow-memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                for _ in 0..1024 {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
                hoard.len() as f64
            }
            "recurse" => recurse(0) as f64,
            "panic" => panic!("hostile plugin panics on purpose (record says {:?})", episode.response),
            "nan" => f64::NAN,
            "infinity" => f64::INFINITY,
            "huge" => 1e300,
            other => other.len() as f64,
        })
    }
}

/// `wrong-count` must change the batch, which the per-record trait cannot do: wrap the export.
mod export {
    use super::Hostile;
    use triad_plugin_sdk::bindings::reward::Guest;
    use triad_plugin_sdk::{Episode, PluginError, PluginInfo, PluginKind, Reward};

    struct Export;

    impl Guest for Export {
        fn info() -> PluginInfo {
            PluginInfo {
                name: env!("CARGO_PKG_NAME").into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Reward,
                description: env!("CARGO_PKG_DESCRIPTION").into(),
                stateful: false,
            }
        }
        fn configure(_config: String) -> Result<(), PluginError> {
            std::panic::set_hook(Box::new(|info| triad_plugin_sdk::log::error(&format!("plugin panicked: {info}"))));
            Ok(())
        }
        fn score(episodes: Vec<Episode>) -> Result<Vec<f64>, PluginError> {
            let mut plugin = Hostile {};
            let mut scores = Vec::new();
            for (i, episode) in episodes.iter().enumerate() {
                match episode.response.as_str() {
                    "wrong-count" => continue,
                    "blame-far" => {
                        return Err(PluginError { message: "not my fault".into(), record: Some(4_000_000_000) });
                    }
                    "escape" => {
                        let message = "\u{1b}[2J\u{1b}[31mred\nERROR triad: plugin panicked: forged".to_string();
                        return Err(PluginError { message, record: None });
                    }
                    "log-flood" => {
                        for n in 0..100_000 {
                            triad_plugin_sdk::log::info(&format!("line {n}"));
                        }
                    }
                    _ => {}
                }
                scores.push(plugin.score(episode).map_err(|message| PluginError { message, record: Some(i as u32) })?);
            }
            Ok(scores)
        }
    }

    triad_plugin_sdk::bindings::reward::__export_reward_world!(Export with_types_in triad_plugin_sdk::bindings::reward);
}
