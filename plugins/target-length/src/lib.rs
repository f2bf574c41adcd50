//! Reward plugin: a length penalty, 0 for a response of the target length, falling to -1.
//!
//! Config:
//! - `target_words` or `target_chars` (exactly one, > 0): the target length, in
//!   whitespace-separated words or in characters (Unicode scalar values);
//! - `tolerance` (0): lengths within this distance of the target count as on target;
//! - `shape`: "linear" (default) or "gaussian";
//! - `sigma` (gaussian only; default target / 2): the gaussian's width.
//!
//! With d = max(0, |length - target| - tolerance), the reward is
//! - linear: -min(1, d / target), a penalty proportional to the relative error, reaching -1
//!   at a response twice the target or empty;
//! - gaussian: exp(-d^2 / (2 sigma^2)) - 1, flat near the target and saturating at -1 far
//!   from it, so small deviations cost little.
//!
//! Both lie in [-1, 0], so the penalty adds to another reward (sentiment, a reward model) with
//! a weight in the experiment file.

use triad_plugin_sdk::prelude::*;

/// The length reward; its fields are its config.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetLength {
    /// Target length in words.
    pub target_words: Option<f64>,
    /// Target length in characters.
    pub target_chars: Option<f64>,
    /// Distance from the target that is not penalized.
    pub tolerance: f64,
    /// "linear" or "gaussian".
    pub shape: String,
    /// Width of the gaussian, in the target's unit.
    pub sigma: Option<f64>,
}

impl Default for TargetLength {
    fn default() -> Self {
        TargetLength { target_words: None, target_chars: None, tolerance: 0.0, shape: "linear".into(), sigma: None }
    }
}

impl TargetLength {
    /// The length of `text` in the configured unit.
    pub fn length(&self, text: &str) -> f64 {
        if self.target_words.is_some() { text.split_whitespace().count() as f64 } else { text.chars().count() as f64 }
    }

    /// The reward of a text of `length` units, in [-1, 0].
    pub fn reward(&self, length: f64) -> f64 {
        let target = self.target_words.or(self.target_chars).unwrap_or(1.0);
        let excess = ((length - target).abs() - self.tolerance).max(0.0);
        if self.shape == "gaussian" {
            let sigma = self.sigma.unwrap_or(target / 2.0);
            (-0.5 * (excess / sigma).powi(2)).exp() - 1.0
        } else {
            -(excess / target).min(1.0)
        }
    }
}

fn positive(field: &str, value: Option<f64>) -> Result<(), String> {
    match value {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(format!("{field} must be a positive number, got {v}")),
        _ => Ok(()),
    }
}

impl Plugin for TargetLength {
    fn init(&mut self) -> Result<(), String> {
        match (self.target_words, self.target_chars) {
            (Some(_), Some(_)) => return Err("set target_words or target_chars, not both".into()),
            (None, None) => return Err("target_words or target_chars is required".into()),
            _ => {}
        }
        positive("target_words", self.target_words)?;
        positive("target_chars", self.target_chars)?;
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(format!("tolerance must be a non-negative number, got {}", self.tolerance));
        }
        match self.shape.as_str() {
            "linear" if self.sigma.is_some() => Err(r#"sigma applies only to shape "gaussian""#.into()),
            "linear" => Ok(()),
            "gaussian" => positive("sigma", self.sigma),
            other => Err(format!(r#"shape must be "linear" or "gaussian", got "{other}""#)),
        }
    }
}

impl Reward for TargetLength {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        Ok(self.reward(self.length(&episode.response)))
    }
}

export_reward!(TargetLength);

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::review_texts;

    // The 303 real review snippets have 3 to 45 words, median 19; 12 have 18 words.

    fn score(plugin: &mut TargetLength, response: &str) -> f64 {
        let episode = Episode { prompt: "Review the film.".into(), response: response.into(), reference: None };
        plugin.score(&episode).expect("score")
    }

    #[test]
    fn linear_penalty_on_real_snippets() {
        let mut plugin: TargetLength = configure(r#"{"target_words": 18}"#).expect("config");
        let texts = review_texts();
        let on_target = texts.iter().filter(|t| score(&mut plugin, t) == 0.0).count();
        assert_eq!(on_target, 12);
        for text in &texts {
            let words = text.split_whitespace().count() as f64;
            let expected = -((words - 18.0).abs() / 18.0).min(1.0);
            assert_eq!(score(&mut plugin, text), expected, "{text}");
        }
        // "Effective but too tepid biopic" (id 3): 5 words, 13 short of 18.
        assert_eq!(score(&mut plugin, "Effective but too tepid biopic"), -13.0 / 18.0);
        assert_eq!(score(&mut plugin, ""), -1.0);
        // The 45-word snippet is more than twice the target: clipped at -1.
        let longest = texts.iter().max_by_key(|t| t.split_whitespace().count()).expect("snippets");
        assert_eq!(score(&mut plugin, longest), -1.0);
    }

    #[test]
    fn rewards_order_snippets_by_distance_to_target() {
        for shape in ["linear", "gaussian"] {
            let mut plugin: TargetLength =
                configure(&format!(r#"{{"target_chars": 100, "shape": "{shape}"}}"#)).expect("config");
            let mut scored: Vec<(f64, f64)> = review_texts()
                .iter()
                .map(|t| ((t.chars().count() as f64 - 100.0).abs(), score(&mut plugin, t)))
                .collect();
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Farther from the target never scores higher, and every score lies in [-1, 0].
            assert!(scored.windows(2).all(|w| w[1].1 <= w[0].1), "{shape}");
            assert!(scored.iter().all(|&(_, r)| (-1.0..=0.0).contains(&r)), "{shape}");
        }
    }

    #[test]
    fn characters_not_bytes() {
        let mut plugin: TargetLength = configure(r#"{"target_chars": 4}"#).expect("config");
        assert_eq!(score(&mut plugin, "café"), 0.0);
        assert_eq!(score(&mut plugin, "😀😀"), -0.5);
    }

    #[test]
    fn tolerance_and_gaussian_shape() {
        let plugin: TargetLength = configure(r#"{"target_words": 20, "tolerance": 5}"#).expect("config");
        assert_eq!(plugin.reward(16.0), 0.0);
        assert_eq!(plugin.reward(25.0), 0.0);
        assert_eq!(plugin.reward(30.0), -0.25);
        let gaussian: TargetLength = configure(r#"{"target_words": 20, "shape": "gaussian"}"#).expect("config");
        // sigma defaults to 10: one sigma away gives exp(-1/2) - 1.
        assert!((gaussian.reward(30.0) - ((-0.5f64).exp() - 1.0)).abs() < 1e-15);
        assert!((gaussian.reward(10.0) - gaussian.reward(30.0)).abs() < 1e-15);
        // Flat near the target: 1 word off costs far less than with the linear shape.
        assert!(gaussian.reward(21.0) > -0.01 && plugin.reward(26.0) == -0.05);
        let narrow: TargetLength =
            configure(r#"{"target_words": 20, "shape": "gaussian", "sigma": 2}"#).expect("config");
        assert!(narrow.reward(30.0) < -0.99);
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, field) in [
            ("{}", "target_words or target_chars is required"),
            (r#"{"target_words": 10, "target_chars": 50}"#, "not both"),
            (r#"{"target_words": 0}"#, "target_words"),
            (r#"{"target_chars": -3}"#, "target_chars"),
            (r#"{"target_words": 10, "tolerance": -1}"#, "tolerance"),
            (r#"{"target_words": 10, "shape": "cubic"}"#, "shape"),
            (r#"{"target_words": 10, "sigma": 3}"#, "sigma"),
            (r#"{"target_words": 10, "shape": "gaussian", "sigma": 0}"#, "sigma"),
            (r#"{"target_word": 10}"#, "target_word"),
        ] {
            let err = configure::<TargetLength>(config).err().unwrap_or_else(|| panic!("{config} accepted"));
            assert!(err.message.contains(field), "{config}: {}", err.message);
        }
    }
}
