//! Rollouts: a response to each prompt, sampled from the current policy.

use super::{RlError, model};
use crate::model::Model;
use crate::model::generate::{Generated, SamplingConfig, generate};

/// One sampled episode: the prompt, its tokens, the response.
pub struct Sampled {
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub response: Generated,
    pub response_text: String,
    /// The prompt's reference answer, for rewards that check against one (a math answer).
    pub reference: Option<String>,
}

/// Sample one response per prompt (prompts already tokenized, in the same order) with
/// `sampling`; `decode` turns response tokens into the text rewards read.
pub fn sample<E: std::error::Error + Send + Sync + 'static>(
    policy: &Model,
    prompts: &[String],
    prompt_tokens: Vec<Vec<u32>>,
    sampling: &SamplingConfig,
    decode: impl Fn(&[u32]) -> Result<String, E>,
) -> Result<Vec<Sampled>, RlError> {
    let generated = generate(policy, &prompt_tokens, sampling).map_err(model("sampling"))?;
    generated
        .into_iter()
        .zip(prompts.iter().zip(prompt_tokens))
        .map(|(response, (prompt, prompt_tokens))| {
            let response_text = decode(&response.tokens).map_err(|e| RlError::Decode(Box::new(e)))?;
            Ok(Sampled { prompt: prompt.clone(), prompt_tokens, response, response_text, reference: None })
        })
        .collect()
}

/// Each episode as one token row (prompt then response) and its response length.
pub fn rows(episodes: &[Sampled]) -> (Vec<Vec<u32>>, Vec<usize>) {
    let rows = episodes.iter().map(|e| [e.prompt_tokens.clone(), e.response.tokens.clone()].concat()).collect();
    let lens = episodes.iter().map(|e| e.response.tokens.len()).collect();
    (rows, lens)
}
