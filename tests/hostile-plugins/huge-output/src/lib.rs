//! A data filter that rewrites every sample into a huge text (100 MB, or `bytes` from its
//! config), to prove the host caps outputs: per call, and per record.

use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
struct HugeOutput {
    #[serde(default)]
    bytes: Option<usize>,
}

impl Plugin for HugeOutput {}

impl DataFilter for HugeOutput {
    fn filter(&mut self, _sample: &Sample) -> Result<Decision, String> {
        Ok(Decision::Rewrite(Sample { text: "x".repeat(self.bytes.unwrap_or(100_000_000)), fields: Vec::new() }))
    }
}

export_data_filter!(HugeOutput);
