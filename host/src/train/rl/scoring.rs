//! Scoring episodes: a weighted sum of reward-model scores and reward-plugin scores.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::RlError;
use super::rollout::Sampled;
use crate::model::RewardModel;
use crate::plugins::{Episode, RewardPlugin};
use crate::train::ppo::RunningStats;

/// One part of a reward, as experiment files write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RewardTerm {
    /// A RewardModel stage's score of prompt + response.
    Model {
        stage: String,
        #[serde(default = "one")]
        weight: f64,
    },
    /// A reward plugin's score of the episode.
    Plugin {
        name: String,
        #[serde(default = "one")]
        weight: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl RewardTerm {
    /// The term's name, as scores are reported under it: the stage's or the plugin's.
    pub fn name(&self) -> &str {
        match self {
            RewardTerm::Model { stage, .. } => stage,
            RewardTerm::Plugin { name, .. } => name,
        }
    }

    /// The RewardModel stage the term reads, if it reads one.
    pub fn model_stage(&self) -> Option<&str> {
        match self {
            RewardTerm::Model { stage, .. } => Some(stage),
            RewardTerm::Plugin { .. } => None,
        }
    }

    /// The reward plugin the term runs, if it runs one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            RewardTerm::Plugin { name, .. } => Some(name),
            RewardTerm::Model { .. } => None,
        }
    }
}

/// What is wrong with a stage's reward terms, if anything: none, or a weight that is not finite.
pub fn check_terms(terms: &[RewardTerm]) -> Result<(), String> {
    if terms.is_empty() {
        return Err("reward is empty: add Model(stage: ...) or Plugin(name: ...)".into());
    }
    for term in terms {
        let (RewardTerm::Model { weight, .. } | RewardTerm::Plugin { weight, .. }) = term;
        if !weight.is_finite() {
            return Err(format!("reward weights must be finite numbers, got {weight}"));
        }
    }
    Ok(())
}

/// A reward source, ready to score.
pub enum Scorer {
    Model { name: String, weight: f64, model: Box<RewardModel> },
    Plugin { name: String, weight: f64, plugin: Box<RewardPlugin> },
}

/// The scores of a batch of episodes.
pub struct Scored {
    /// Each episode's weighted total.
    pub totals: Vec<f64>,
    /// Each term's (unweighted) score of every episode, by name.
    pub terms: Vec<(String, Vec<f64>)>,
    /// Time spent inside reward plugins.
    pub plugin_seconds: f64,
}

impl Scored {
    /// The mean total over the batch.
    pub fn mean(&self) -> f64 {
        self.totals.iter().sum::<f64>() / self.totals.len() as f64
    }

    /// Each term's mean score over the batch, by name.
    pub fn term_means(&self) -> Vec<(String, f64)> {
        self.terms
            .iter()
            .map(|(name, scores)| (name.clone(), scores.iter().sum::<f64>() / scores.len() as f64))
            .collect()
    }
}

/// The largest magnitude a score may have unless a stage says otherwise: far beyond any real
/// reward, far below what makes returns and value losses overflow.
pub const DEFAULT_REWARD_LIMIT: f64 = 1e6;

/// Score every episode with every scorer. A reward model reads the prompt and response tokens
/// ended by `end` (cut from the left to its context), batched and padded with `pad`. A score
/// whose magnitude passes `limit` is refused, naming the scorer and the record.
pub fn score(scorers: &[Scorer], episodes: &[Sampled], end: u32, pad: u32, limit: f64) -> Result<Scored, RlError> {
    let mut totals = vec![0.0; episodes.len()];
    let mut terms = Vec::new();
    let mut plugin_seconds = 0.0;
    for scorer in scorers {
        let (name, weight, scores): (&str, f64, Vec<f64>) = match scorer {
            Scorer::Model { name, weight, model } => {
                let context = model.trunk.config().context();
                let inputs: Vec<Vec<u32>> = episodes
                    .iter()
                    .map(|e| {
                        let mut tokens = e.prompt_tokens.clone();
                        tokens.extend(e.response.tokens.iter().copied().filter(|&t| t != end));
                        tokens.push(end);
                        if tokens.len() > context {
                            tokens.drain(..tokens.len() - context);
                        }
                        tokens
                    })
                    .collect();
                let scores = model
                    .score(&inputs, 32, pad)
                    .map_err(|source| RlError::RewardModel { name: name.clone(), source })?;
                (name, *weight, scores.into_iter().map(f64::from).collect())
            }
            Scorer::Plugin { name, weight, plugin } => {
                let batch: Vec<Episode> = episodes
                    .iter()
                    .map(|e| Episode {
                        prompt: e.prompt.clone(),
                        response: e.response_text.clone(),
                        reference: e.reference.clone(),
                    })
                    .collect();
                let started = Instant::now();
                let scores = plugin.score(&batch)?;
                plugin_seconds += started.elapsed().as_secs_f64();
                (name, *weight, scores)
            }
        };
        if let Some(record) = scores.iter().position(|s| !s.is_finite() || s.abs() > limit) {
            let scorer = match scorer {
                Scorer::Model { .. } => format!("reward model `{name}`"),
                Scorer::Plugin { .. } => format!("reward plugin `{name}`"),
            };
            return Err(RlError::RewardOutOfRange { scorer, record, score: scores[record], limit });
        }
        for (total, s) in totals.iter_mut().zip(&scores) {
            *total += weight * s;
        }
        terms.push((name.to_string(), scores));
    }
    Ok(Scored { totals, terms, plugin_seconds })
}

/// The scores an update optimises: standardised by the running statistics of every score so far
/// (with `normalize`, the statistics updated with this batch first), then clipped to
/// `[-clip, clip]` (with a `clip`).
pub fn shape(scored: &Scored, normalize: bool, clip: Option<f64>, stats: &mut RunningStats) -> Vec<f64> {
    let mut totals = scored.totals.clone();
    if normalize {
        for &t in &scored.totals {
            stats.push(t);
        }
        for t in &mut totals {
            *t = (*t - stats.mean) / stats.std();
        }
    }
    if let Some(clip) = clip {
        for t in &mut totals {
            *t = t.clamp(-clip, clip);
        }
    }
    totals
}
