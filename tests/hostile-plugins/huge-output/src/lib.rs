//! A data filter that rewrites every sample into a 100 MB text, to prove the host caps outputs.

use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
struct HugeOutput {}

impl Plugin for HugeOutput {}

impl DataFilter for HugeOutput {
    fn filter(&mut self, _sample: &Sample) -> Result<Decision, String> {
        Ok(Decision::Rewrite(Sample { text: "x".repeat(100_000_000), fields: Vec::new() }))
    }
}

export_data_filter!(HugeOutput);
