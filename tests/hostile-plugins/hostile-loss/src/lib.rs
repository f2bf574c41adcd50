//! A loss plugin that misbehaves on purpose, by its `misdeed` config: `undeclared` returns a
//! gradient for `entropy`, which it did not declare; `duplicate` returns two gradients for
//! `logprob`; `huge` returns gradients of 1e30; `names` returns 100,000 metrics; `bad-name` a
//! metric named with a newline; anything else, the mean negative log-prob and its gradient.

use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
struct HostileLoss {
    #[serde(default)]
    misdeed: String,
}

impl Plugin for HostileLoss {}

impl Loss for HostileLoss {
    fn features(&self) -> Vec<Feature> {
        vec![Feature::Logprob]
    }

    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {
        let logprob = batch.features.iter().find(|f| f.feature == Feature::Logprob).ok_or("no logprob")?;
        let n = logprob.values.len().max(1) as f32;
        let value = -logprob.values.iter().sum::<f32>() as f64 / n as f64;
        let gradient = |g: f32| FeatureValues { feature: Feature::Logprob, values: vec![g; logprob.values.len()] };
        let mut output = LossOutput { value, gradients: vec![gradient(-1.0 / n)], metrics: Vec::new() };
        match self.misdeed.as_str() {
            "undeclared" => output
                .gradients
                .push(FeatureValues { feature: Feature::Entropy, values: vec![0.0; logprob.values.len()] }),
            "duplicate" => output.gradients.push(gradient(-1.0 / n)),
            "huge" => output.gradients = vec![gradient(1e30)],
            "names" => {
                output.metrics = (0..100_000).map(|i| NamedValue { name: format!("m{i}"), value: 1.0 }).collect();
            }
            "bad-name" => output.metrics = vec![NamedValue { name: "two\nlines".into(), value: 1.0 }],
            _ => {}
        }
        Ok(output)
    }
}

export_loss!(HostileLoss);
