//! Perplexity of a model on the texts of any data source: what an Eval stage's `perplexity_on`
//! measures, and what `triad eval --text` asks for.
//!
//! Each record is one passage. A passage becomes tokens on its own (with the BOS policy below),
//! is cut into windows of at most `window` tokens, and every token but a passage's first is
//! predicted exactly once: window `k` starts at the last token of window `k - 1`, so a token
//! at the start of a window sees less context than it would in one long pass. The perplexity is
//! `exp(Σ NLL / predicted tokens)` over all passages, in nats.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::context::{RunContext, StageError};
use crate::data::tokenizer::Tokenizer;
use crate::model::Model;
use crate::train::rl::policy::reference_logprobs;
use crate::util::atomic::write_atomically;

/// Texts whose perplexity an Eval stage measures: `perplexity_on: (data: "moby-dick")`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerplexityData {
    /// The data source; each record is one passage.
    pub data: String,
    /// Filter plugins applied to the records first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Tokens per window (default: the model's context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// What goes in front of each passage (default: what the model's own tokenizer does).
    #[serde(default)]
    pub bos: Bos,
    /// Stop after this many tokens in all (default: every token of every passage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
}

/// The token in front of each passage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bos {
    /// What the model's tokenizer does (`transformers`' `tokenizer(text)`): a pretrained
    /// model's BOS when its tokenizer adds one (Llama's `<s>`; SmolLM2 adds none); nothing
    /// for a model trained here.
    #[default]
    Model,
    /// Always a start token: the model's BOS, else the end-of-text token (GPT-2's convention:
    /// a document starts after `<|endoftext|>`), so the first token is predicted too.
    Always,
    /// Never: the passage's own tokens only.
    Never,
}

impl PerplexityData {
    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.window.is_some_and(|w| w < 2) {
            return Err("perplexity_on.window must be at least 2 tokens".into());
        }
        if self.max_tokens == Some(0) {
            return Err("perplexity_on.max_tokens must be at least 1 (leave it out for every token)".into());
        }
        Ok(())
    }
}

/// One passage as measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    /// Where the record came from: `file:line`.
    pub origin: String,
    pub characters: usize,
    /// sha256 of the passage's text: which text exactly was measured.
    pub sha256: String,
    /// Tokens, the start token included.
    pub tokens: usize,
    /// Tokens predicted (every token but the first).
    pub predicted: usize,
}

/// Passages ready to measure: their tokens and what the report says about each.
pub struct Prepared {
    pub passages: Vec<(Passage, Vec<u32>)>,
    /// The start token, with its text, when one was put in front.
    pub bos: Option<(u32, String)>,
}

/// The passages of `spec` as tokens, under its BOS policy and token budget.
pub fn prepare(ctx: &RunContext, spec: &PerplexityData, stage: &str, dir: &Path) -> Result<Prepared, StageError> {
    let tokenizer = ctx.tokenizer()?;
    let bos = match spec.bos {
        Bos::Never => None,
        Bos::Model => ctx.bos_token()?,
        Bos::Always => match ctx.bos_token()?.or(tokenizer.eos_id()) {
            Some(id) => Some(id),
            None => {
                return Err(StageError::Config {
                    stage: stage.to_string(),
                    message:
                        "perplexity_on.bos is Always, but the tokenizer has neither a BOS nor an end-of-text token"
                            .into(),
                });
            }
        },
    };
    let bos = match bos {
        Some(id) => Some((id, tokenizer.decode(&[id])?)),
        None => None,
    };
    let records = ctx.filtered_records(stage, &spec.data, &spec.filters, dir)?;
    let mut budget = spec.max_tokens.unwrap_or(usize::MAX);
    let mut passages = Vec::new();
    for record in &records {
        if budget < 2 {
            break;
        }
        let tokens = passage_tokens(&tokenizer, &record.text, bos.as_ref().map(|(id, _)| *id), budget)?;
        if tokens.len() < 2 {
            continue;
        }
        budget -= tokens.len();
        let passage = Passage {
            origin: format!("{}:{}", record.origin.file.display(), record.origin.line),
            characters: record.text.chars().count(),
            sha256: crate::util::sha256_hex(record.text.as_bytes()),
            tokens: tokens.len(),
            predicted: tokens.len() - 1,
        };
        passages.push((passage, tokens));
    }
    if passages.is_empty() {
        return Err(StageError::Data {
            stage: stage.to_string(),
            message: format!("data `{}` has no passage of at least two tokens to measure", spec.data),
        });
    }
    Ok(Prepared { passages, bos })
}

/// A passage's tokens: the start token (if any), then the text's, at most `budget` in all.
fn passage_tokens(tokenizer: &Tokenizer, text: &str, bos: Option<u32>, budget: usize) -> Result<Vec<u32>, StageError> {
    let mut tokens: Vec<u32> = bos.into_iter().collect();
    tokens.extend(tokenizer.encode(text)?);
    tokens.truncate(budget);
    Ok(tokens)
}

/// The windows of a passage: at most `window` tokens each, each starting at the previous
/// one's last token, so that every token but the first is predicted exactly once.
pub fn windows(tokens: &[u32], window: usize) -> Vec<&[u32]> {
    let step = window.saturating_sub(1).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < tokens.len() {
        out.push(&tokens[start..(start + window).min(tokens.len())]);
        start += step;
    }
    out
}

/// Measure `model` on the prepared passages, `window` tokens at most per row: each passage's
/// Σ NLL (nats), and the number of tokens predicted.
pub fn measure(
    model: &Model,
    passages: &[(Passage, Vec<u32>)],
    window: usize,
    label: &str,
) -> Result<(Vec<f64>, usize), crate::train::rl::RlError> {
    // Rows per forward pass: about 4k tokens, so that a long window does not hold many rows'
    // activations at once.
    let chunk = (4096 / window).max(1);
    let total_windows: usize = passages.iter().map(|(_, t)| windows(t, window).len()).sum();
    let bar = crate::util::progress::bar(label, total_windows as u64, 0);
    let (mut nll, mut count) = (Vec::with_capacity(passages.len()), 0);
    for (_, tokens) in passages {
        let rows: Vec<Vec<u32>> = windows(tokens, window).into_iter().map(<[u32]>::to_vec).collect();
        let lens: Vec<usize> = rows.iter().map(|r| r.len() - 1).collect();
        // Padding sits after each row's last token, so causal attention never lets it count.
        let pad = 0;
        let logprobs = reference_logprobs(model, &rows, &lens, chunk, pad)?;
        nll.push(-logprobs.iter().map(|&l| f64::from(l)).sum::<f64>());
        count += logprobs.len();
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();
    Ok((nll, count))
}

/// One line saying what was measured and how: passages, tokens, window, start token, result.
pub fn describe(model: &str, prepared: &Prepared, window: usize, predicted: usize, mean_nll: f64) -> String {
    let tokens: usize = prepared.passages.iter().map(|(p, _)| p.tokens).sum();
    let bos = match &prepared.bos {
        Some((id, text)) => format!("{text:?} (id {id}) in front of each passage"),
        None => "no start token".to_string(),
    };
    format!(
        "`{model}`: perplexity {:.4} (mean NLL {mean_nll:.6} nats) over {predicted} predicted tokens of {} passage(s), \
         {tokens} tokens with {bos}, windows of at most {window} tokens",
        mean_nll.exp(),
        prepared.passages.len(),
    )
}

/// Write each passage as measured, one JSON line, with each model's Σ NLL as `<model>/nll`.
pub fn write_passages(
    path: &Path,
    passages: &[(Passage, Vec<u32>)],
    nll: &BTreeMap<&str, Vec<f64>>,
) -> Result<(), StageError> {
    let mut out = String::new();
    for (i, (passage, _)) in passages.iter().enumerate() {
        let mut line = serde_json::to_value(passage).unwrap_or_default();
        for (model, sums) in nll {
            line[format!("{model}/nll")] = serde_json::json!(sums[i]);
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(write_atomically(path, out.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_predict_every_token_but_the_first_once() {
        let tokens: Vec<u32> = (0..10).collect();
        for window in 2..12 {
            let cut = windows(&tokens, window);
            let predicted: Vec<u32> = cut.iter().flat_map(|w| w[1..].to_vec()).collect();
            assert_eq!(predicted, (1..10).collect::<Vec<u32>>(), "window {window}");
            assert!(cut.iter().all(|w| w.len() <= window && w.len() >= 2));
        }
        assert_eq!(windows(&tokens, 4), vec![&tokens[0..4], &tokens[3..7], &tokens[6..10]]);
        assert!(windows(&tokens[..1], 4).is_empty());
    }
}
