//! Reward plugin: the VADER sentiment of the response (Hutto & Gilbert 2014, "VADER: A
//! Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM-14).
//!
//! The score is VADER's compound score in [-1, 1]: the sum of the response's word valences from
//! a human-rated lexicon of 7,500 tokens, adjusted by rules (negation, boosters and dampeners,
//! ALL-CAPS emphasis, "but", "least", idioms, "!" and "?"), then normalized by x / sqrt(x^2 + 15).
//! It is a port of vaderSentiment 3.3.2 with the lexicon compiled in (see README.md); the
//! scoring function is public ([`compound`]) so that the host can run it natively too.
//!
//! Config (all optional):
//! - `scale` (default 1.0): the reward is `scale * compound`; -1.0 rewards negative sentiment.
//!
//! The prompt is ignored: "write a positive review" rewards the text the policy wrote.

mod vader;

use triad_plugin_sdk::prelude::*;

pub use vader::{Vader, compound, vader};

/// The VADER reward; its fields are its config.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LexiconSentiment {
    /// Multiplies the compound score.
    pub scale: f64,
}

impl Default for LexiconSentiment {
    fn default() -> Self {
        LexiconSentiment { scale: 1.0 }
    }
}

impl Plugin for LexiconSentiment {
    fn init(&mut self) -> Result<(), String> {
        if !self.scale.is_finite() {
            return Err(format!("scale must be a finite number, got {}", self.scale));
        }
        // Parse the lexicon now, so the first scored batch is not the slow one.
        vader();
        Ok(())
    }
}

impl Reward for LexiconSentiment {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        Ok(self.scale * compound(&episode.response))
    }
}

export_reward!(LexiconSentiment);

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::review_snippets;

    /// One sentence per VADER rule with Python's compound; made by tests/make_fixture.py, which
    /// also wrote the review snippets' human ratings and Python compounds.
    const RULES: &str = include_str!("../tests/rules.tsv");

    fn unescape(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('t') => out.push('\t'),
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn episode(response: &str) -> Episode {
        Episode { prompt: "Write a movie review.".into(), response: response.into(), reference: None }
    }

    fn pearson(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
        let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
        cov / (vx * vy).sqrt()
    }

    #[test]
    fn lexicon_is_complete() {
        // 7,520 lines, 14 of them repeating a token (a later line wins, as in Python's dict).
        assert_eq!(vader().lexicon_len(), 7506);
        assert_eq!(vader().valence("good"), Some(1.9));
        assert_eq!(vader().valence(":)"), Some(2.0));
        assert_eq!(vader().valence("lol"), Some(1.8));
    }

    #[test]
    fn agrees_with_python_vader_on_movie_snippets() {
        let snippets = review_snippets();
        assert_eq!(snippets.len(), 303);
        let diffs: Vec<f64> = snippets.iter().map(|s| (compound(s.text) - s.vader_compound).abs()).collect();
        let close = diffs.iter().filter(|&&d| d < 0.01).count();
        let exact = diffs.iter().filter(|&&d| d < 1e-12).count();
        let worst = diffs.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "VADER port vs Python on {} snippets: {close} within 0.01, {exact} within 1e-12, max |diff| {worst:e}",
            snippets.len()
        );
        assert!(close as f64 >= 0.95 * snippets.len() as f64, "only {close} of {} within 0.01", snippets.len());
        // The port is exact: same rules, same f64 arithmetic in the same order.
        for (s, d) in snippets.iter().zip(&diffs) {
            assert!(*d < 1e-12, "{:?}: rust {} python {}", s.text, compound(s.text), s.vader_compound);
        }
    }

    #[test]
    fn agrees_with_python_vader_on_every_rule() {
        let mut n = 0;
        for line in RULES.lines().filter(|l| !l.starts_with('#')) {
            let (python, text) = line.split_once('\t').expect("rules line has a tab");
            let python: f64 = python.parse().expect("python compound");
            let text = unescape(text);
            let rust = compound(&text);
            assert!((rust - python).abs() < 1e-12, "{text:?}: rust {rust} python {python}");
            n += 1;
        }
        assert_eq!(n, 88);
    }

    #[test]
    fn compound_correlates_with_human_ratings() {
        let snippets = review_snippets();
        let ours: Vec<f64> = snippets.iter().map(|s| compound(s.text)).collect();
        let human: Vec<f64> = snippets.iter().map(|s| s.human_mean).collect();
        let r = pearson(&ours, &human);
        eprintln!("Pearson r(compound, human mean) over {} snippets: {r:.3}", snippets.len());
        assert!(r > 0.4, "r = {r}");
        // And by sign: clearly positive snippets mostly score positive and vice versa.
        let agree = snippets
            .iter()
            .zip(&ours)
            .filter(|(s, _)| s.human_mean.abs() >= 1.5)
            .map(|(s, c)| (s.human_mean > 0.0) == (*c > 0.0))
            .collect::<Vec<_>>();
        let rate = agree.iter().filter(|&&a| a).count() as f64 / agree.len() as f64;
        eprintln!("sign agreement on {} strongly rated snippets: {rate:.2}", agree.len());
        assert!(rate > 0.6);
    }

    #[test]
    fn reward_is_the_scaled_compound_of_the_response() {
        let mut plugin: LexiconSentiment = configure("{}").expect("default config");
        let text = "This delicately observed story, deeply felt and masterfully stylized, is a triumph for its maverick director.";
        let r = plugin.score(&episode(text)).expect("score");
        assert_eq!(r, compound(text));
        assert!(r > 0.5);
        // The prompt does not count.
        let e = Episode { prompt: "awful terrible horrible".into(), ..episode(text) };
        assert_eq!(plugin.score(&e).expect("score"), r);

        let mut negative: LexiconSentiment = configure(r#"{"scale": -1.0}"#).expect("scale -1");
        assert_eq!(negative.score(&episode(text)).expect("score"), -r);
        assert_eq!(plugin.score(&episode("")).expect("score"), 0.0);
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = configure::<LexiconSentiment>(r#"{"scael": 2}"#).err().expect("unknown field");
        assert!(err.message.contains("scael"), "{}", err.message);
        let err = configure::<LexiconSentiment>(r#"{"scale": "big"}"#).err().expect("bad type");
        assert!(err.message.contains("scale"), "{}", err.message);
        let err = configure::<LexiconSentiment>(r#"{"scale": 1e999}"#).err().expect("infinite");
        assert!(err.message.contains("scale"), "{}", err.message);
    }
}
