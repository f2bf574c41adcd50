//! Reward plugin: scores a format or content check written as a regular expression.
//!
//! Config:
//! - `pattern` (required): the regular expression, in the syntax of Rust's `regex` crate
//!   (Perl-like, no look-around or backreferences; `(?i)` for case-insensitive matching, with
//!   Unicode-aware `\w`, `\d`, `\s` and `\b`);
//! - `reward_match` (1.0) and `reward_miss` (0.0): the score when the text matches or not;
//! - `mode`: "find" (default: the pattern matches somewhere in the text) or "full" (it matches
//!   the whole text, as if wrapped in `\A(?:...)\z`);
//! - `on`: "response" (default) or "prompt+response": the prompt immediately followed by the
//!   response, with nothing in between, i.e. the text the policy actually continued.
//!
//! An invalid pattern fails `configure` with the regex error.

use regex::Regex;
use triad_plugin_sdk::prelude::*;

/// The regex reward; the public fields are its config.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegexMatch {
    /// The regular expression.
    pub pattern: Option<String>,
    /// Score of a matching text.
    pub reward_match: f64,
    /// Score of a text that does not match.
    pub reward_miss: f64,
    /// "find" or "full".
    pub mode: String,
    /// "response" or "prompt+response".
    pub on: String,
    #[serde(skip)]
    regex: Option<Regex>,
}

impl Default for RegexMatch {
    fn default() -> Self {
        RegexMatch {
            pattern: None,
            reward_match: 1.0,
            reward_miss: 0.0,
            mode: "find".into(),
            on: "response".into(),
            regex: None,
        }
    }
}

impl RegexMatch {
    /// Whether `text` matches, under the configured mode.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(text))
    }
}

impl Plugin for RegexMatch {
    fn init(&mut self) -> Result<(), String> {
        let pattern = self.pattern.as_deref().ok_or("pattern is required (a regular expression)")?;
        // Compile the pattern alone first: a valid pattern has balanced groups, so wrapping it
        // for "full" cannot change what it means ("a)|(b" would otherwise escape the wrapper).
        let regex = Regex::new(pattern).map_err(|e| format!("pattern is not a valid regex: {e}"))?;
        self.regex = Some(match self.mode.as_str() {
            "find" => regex,
            "full" => Regex::new(&format!(r"\A(?:{pattern})\z")).map_err(|e| format!("pattern: {e}"))?,
            other => return Err(format!(r#"mode must be "find" or "full", got "{other}""#)),
        });
        if !matches!(self.on.as_str(), "response" | "prompt+response") {
            return Err(format!(r#"on must be "response" or "prompt+response", got "{}""#, self.on));
        }
        for (field, value) in [("reward_match", self.reward_match), ("reward_miss", self.reward_miss)] {
            if !value.is_finite() {
                return Err(format!("{field} must be a finite number, got {value}"));
            }
        }
        Ok(())
    }
}

impl Reward for RegexMatch {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        let matched = if self.on == "prompt+response" {
            self.matches(&format!("{}{}", episode.prompt, episode.response))
        } else {
            self.matches(&episode.response)
        };
        Ok(if matched { self.reward_match } else { self.reward_miss })
    }
}

export_reward!(RegexMatch);

#[cfg(test)]
mod tests {
    use super::*;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::review_texts;

    fn episode(prompt: &str, response: &str) -> Episode {
        Episode { prompt: prompt.into(), response: response.into(), reference: None }
    }

    fn total(plugin: &mut RegexMatch, prompt: &str) -> f64 {
        review_texts().iter().map(|t| plugin.score(&episode(prompt, t)).expect("score")).sum()
    }

    // The expected counts below were computed independently with Python's `re` over the same
    // 303 texts (re.search, re.fullmatch), whose semantics agree with Rust's for these patterns.

    #[test]
    fn find_counts_on_real_snippets() {
        let mut not: RegexMatch = configure(r#"{"pattern": "(?i)\\bnot\\b"}"#).expect("config");
        assert_eq!(total(&mut not, ""), 21.0);
        let mut negation: RegexMatch =
            configure(r#"{"pattern": "(?i)\\b(?:not|never|no)\\b|n't\\b"}"#).expect("config");
        assert_eq!(total(&mut negation, ""), 75.0);
    }

    #[test]
    fn full_mode_anchors_both_ends() {
        // A sentence: capital first, final punctuation last.
        let mut sentence: RegexMatch = configure(r#"{"pattern": "[A-Z].*[.!?]", "mode": "full"}"#).expect("config");
        assert_eq!(total(&mut sentence, ""), 274.0);
        let mut anywhere: RegexMatch = configure(r#"{"pattern": "[A-Z].*[.!?]"}"#).expect("config");
        assert!(total(&mut anywhere, "") > 274.0);
        // Alternation stays inside the anchors.
        let mut alt: RegexMatch = configure(r#"{"pattern": "good|bad", "mode": "full"}"#).expect("config");
        assert_eq!(alt.score(&episode("", "good")).expect("score"), 1.0);
        assert_eq!(alt.score(&episode("", "not bad")).expect("score"), 0.0);
    }

    #[test]
    fn prompt_and_response_are_joined_without_a_separator() {
        let config = r#"{"pattern": "(?i)\\Athe\\b", "on": "prompt+response", "reward_match": 2.5, "reward_miss": -1}"#;
        let mut plugin: RegexMatch = configure(config).expect("config");
        // With an empty prompt: 41 snippets start with "The" (Python: 41).
        assert_eq!(total(&mut plugin, ""), 41.0 * 2.5 - 262.0);
        // A prompt ending mid-word joins the first response word.
        assert_eq!(plugin.score(&episode("Th", "e film")).expect("score"), 2.5);
        assert_eq!(plugin.score(&episode("A", "The film")).expect("score"), -1.0);
        let mut response_only: RegexMatch = configure(r#"{"pattern": "(?i)\\Athe\\b"}"#).expect("config");
        assert_eq!(response_only.score(&episode("Th", "e film")).expect("score"), 0.0);
    }

    #[test]
    fn unicode_classes_and_case() {
        let mut plugin: RegexMatch = configure(r#"{"pattern": "(?i)^\\w+É$", "mode": "find"}"#).expect("config");
        assert_eq!(plugin.score(&episode("", "cliché")).expect("score"), 1.0);
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = configure::<RegexMatch>("{}").err().expect("missing pattern");
        assert!(err.message.contains("pattern is required"), "{}", err.message);
        let err = configure::<RegexMatch>(r#"{"pattern": "(unclosed"}"#).err().expect("bad regex");
        assert!(
            err.message.contains("pattern is not a valid regex") && err.message.contains("unclosed group"),
            "{}",
            err.message
        );
        let err = configure::<RegexMatch>(r#"{"pattern": "a)|(b", "mode": "full"}"#).err().expect("unbalanced");
        assert!(err.message.contains("pattern"), "{}", err.message);
        let err = configure::<RegexMatch>(r#"{"pattern": "a", "mode": "exact"}"#).err().expect("bad mode");
        assert!(err.message.contains("mode must be"), "{}", err.message);
        let err = configure::<RegexMatch>(r#"{"pattern": "a", "on": "prompt"}"#).err().expect("bad on");
        assert!(err.message.contains("on must be"), "{}", err.message);
        let err = configure::<RegexMatch>(r#"{"pattern": "a", "reward": 1}"#).err().expect("unknown field");
        assert!(err.message.contains("unknown field `reward`"), "{}", err.message);
        // Look-around is not supported by the regex crate: a clear error, not a panic.
        let err = configure::<RegexMatch>(r#"{"pattern": "(?=good)"}"#).err().expect("look-ahead");
        assert!(err.message.contains("look-around"), "{}", err.message);
    }
}
