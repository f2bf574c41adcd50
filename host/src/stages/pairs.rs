//! Preference pairs for the DPO stage: a prompt, a chosen and a rejected response. Three
//! sources, each a real user path:
//!
//! - `Fields`: each record already holds a prompt, a chosen and a rejected response (an
//!   HH-RLHF- or UltraFeedback-style file in JSONL, Parquet, ...);
//! - `Ratings`: records rate responses to prompts, several responses sharing a prompt; each
//!   prompt's best-rated response is chosen and its worst rejected;
//! - `Judged`: responses sampled from a stage's model, several per prompt, ranked by a judge (a
//!   weighted mix of reward-model stages and reward plugins, as an RL stage's reward is); the
//!   best is chosen and the worst rejected when their scores differ by at least `min_gap`. This
//!   is how human ratings reach DPO through a reward model, as iterative DPO does it.
//!
//! Whatever the source, the pairs are written to the stage folder as `pairs.jsonl`, one pair per
//! line with its side (`train` or `held-out`) and, for judged pairs, both scores, so a person can
//! read what the policy learned from. Judged pairs are sampled once: a resumed stage reads them
//! back from that file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::context::{RunContext, StageError};
use super::examples::{self, ExampleSet, default_hash_split, filter_slots, record_field};
use super::layout::Layout;
use super::rewards;
use crate::data::source::Record;
use crate::data::split::{Split, partition_by_key};
use crate::model::generate::SamplingConfig;
use crate::plugins::PluginKind;
use crate::train::rl::rollout;
use crate::train::rl::scoring::{DEFAULT_REWARD_LIMIT, RewardTerm, check_terms, score};
use crate::train::settings::non_negative;
use crate::util::atomic::{FileError, write_atomically};

/// Where a DPO stage's preference pairs come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PairSource {
    /// Fields of each record: `Fields(data: "prefs", prompt: "prompt", chosen: "chosen",
    /// rejected: "rejected")` (`text` names the record's text).
    Fields {
        data: String,
        prompt: String,
        chosen: String,
        rejected: String,
        #[serde(default)]
        filters: Vec<String>,
        /// How held-out pairs are chosen (default: 10% by hash of the record's text).
        #[serde(default = "default_hash_split")]
        split: Split,
        /// Use at most this many training pairs.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Human ratings of responses: records with a prompt, a response and a numeric rating;
    /// for each prompt, its best-rated response against its worst, when they differ by at
    /// least `min_gap`. The split is by prompt, so a prompt's responses stay on one side.
    Ratings {
        data: String,
        prompt: String,
        response: String,
        rating: String,
        #[serde(default = "default_rating_gap")]
        min_gap: f64,
        #[serde(default)]
        filters: Vec<String>,
        #[serde(default = "default_hash_split")]
        split: Split,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Labelled by a judge: `samples` responses to each prompt from the model of stage `model`
    /// (default: the DPO stage's policy), scored by `judge`; the best against the worst when
    /// their scores differ by at least `min_gap`. Held-out pairs come from the first `held_out`
    /// held-out prompts of the set.
    Judged {
        prompts: ExampleSet,
        #[serde(default)]
        model: Option<String>,
        #[serde(default = "default_samples")]
        samples: usize,
        judge: Vec<RewardTerm>,
        #[serde(default)]
        min_gap: f64,
        /// How responses are sampled (default: temperature 1, 24 new tokens).
        #[serde(default = "default_generation")]
        generation: SamplingConfig,
        #[serde(default = "default_held_out")]
        held_out: usize,
    },
}

fn default_rating_gap() -> f64 {
    1.0
}
fn default_samples() -> usize {
    4
}
fn default_held_out() -> usize {
    128
}
fn default_generation() -> SamplingConfig {
    SamplingConfig { max_new_tokens: 24, ..SamplingConfig::default() }
}

impl PairSource {
    /// The data source the pairs (or the prompts) are read from.
    pub fn data(&self) -> &str {
        match self {
            PairSource::Fields { data, .. } | PairSource::Ratings { data, .. } => data,
            PairSource::Judged { prompts, .. } => &prompts.data,
        }
    }

    /// The stages it reads, besides the DPO stage's policy: the sampling model and the judge's
    /// reward models.
    pub fn stages(&self) -> Vec<&str> {
        let PairSource::Judged { model, judge, .. } = self else { return Vec::new() };
        let models = judge.iter().filter_map(RewardTerm::model_stage);
        model.as_deref().into_iter().chain(models).collect()
    }

    /// Its plugin slots: data filters, and the judge's reward plugins.
    pub fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        match self {
            PairSource::Fields { filters, .. } | PairSource::Ratings { filters, .. } => filter_slots(filters).collect(),
            PairSource::Judged { prompts, judge, .. } => prompts
                .filter_slots()
                .chain(judge.iter().filter_map(RewardTerm::plugin).map(|name| (name, PluginKind::Reward)))
                .collect(),
        }
    }

    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PairSource::Fields { limit: Some(0), .. } | PairSource::Ratings { limit: Some(0), .. } => {
                Err("pairs: limit must be at least 1 (leave it out for every pair)".into())
            }
            PairSource::Ratings { min_gap, .. } if !non_negative(*min_gap) => {
                Err(format!("pairs: Ratings(min_gap) must be a number >= 0, got {min_gap}"))
            }
            PairSource::Judged { prompts, samples, judge, min_gap, generation, .. } => {
                prompts.validate().map_err(|e| format!("pairs: prompts: {e}"))?;
                if *samples < 2 {
                    return Err(format!("pairs: Judged(samples: {samples}) needs at least 2 responses per prompt"));
                }
                check_terms(judge).map_err(|e| format!("pairs: Judged(judge): {e}"))?;
                if !non_negative(*min_gap) {
                    return Err(format!("pairs: Judged(min_gap) must be a number >= 0, got {min_gap}"));
                }
                generation.validate().map_err(|e| format!("pairs: generation: {e}"))
            }
            _ => Ok(()),
        }
    }
}

/// One preference: `chosen` is preferred over `rejected` as an answer to `prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The judge's (or the raters') scores, where the source has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_score: Option<f64>,
}

/// Training and held-out pairs.
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    pub train: Vec<Pair>,
    pub valid: Vec<Pair>,
}

/// One line of `pairs.jsonl`.
#[derive(Serialize, Deserialize)]
struct SavedPair {
    split: String,
    #[serde(flatten)]
    pair: Pair,
}

/// The file a stage's pairs are written to.
pub const PAIRS_FILE: &str = "pairs.jsonl";

/// The pairs of `source` for stage `stage` (whose policy is `policy`), written to `dir`.
pub fn load(
    ctx: &RunContext,
    source: &PairSource,
    stage: &str,
    policy: &str,
    layout: &Layout,
    dir: &Path,
) -> Result<Pairs, StageError> {
    let data_error = |message: String| StageError::Data { stage: stage.to_string(), message };
    let file = dir.join(PAIRS_FILE);
    let pairs = match source {
        PairSource::Fields { data, prompt, chosen, rejected, filters, split, limit } => {
            let records = ctx.filtered_records(stage, data, filters, dir)?;
            let parts = split.apply(records).map_err(|e| data_error(e.to_string()))?;
            let to_pairs = |records: Vec<Record>| -> Result<Vec<Pair>, StageError> {
                let mut pairs = Vec::with_capacity(records.len());
                for record in &records {
                    let field = |name: &str| record_field(record, name).map_err(&data_error);
                    let (prompt, chosen, rejected) = (field(prompt)?, field(chosen)?, field(rejected)?);
                    if [&prompt, &chosen, &rejected].iter().any(|t| t.trim().is_empty()) || chosen == rejected {
                        continue;
                    }
                    pairs.push(Pair { prompt, chosen, rejected, chosen_score: None, rejected_score: None });
                }
                Ok(pairs)
            };
            let mut train = to_pairs(parts.train)?;
            train.truncate(limit.unwrap_or(usize::MAX));
            Pairs { train, valid: to_pairs(parts.valid)? }
        }
        PairSource::Ratings { data, prompt, response, rating, min_gap, filters, split, limit } => {
            let records = ctx.filtered_records(stage, data, filters, dir)?;
            let mut rated = Vec::with_capacity(records.len());
            for record in &records {
                let field = |name: &str| record_field(record, name).map_err(&data_error);
                let value = field(rating)?;
                let score = value.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    data_error(format!(
                        "{}:{}: rating `{rating}` is `{value}`, not a finite number",
                        record.origin.file.display(),
                        record.origin.line
                    ))
                })?;
                rated.push((field(prompt)?, field(response)?, score));
            }
            let groups = best_and_worst(rated, *min_gap);
            let (mut train, valid) =
                partition_by_key(split, groups, |p: &Pair| p.prompt.as_str()).map_err(|e| data_error(e.to_string()))?;
            train.truncate(limit.unwrap_or(usize::MAX));
            Pairs { train, valid }
        }
        PairSource::Judged { .. } if file.exists() => {
            let pairs = read_pairs(&file)?;
            tracing::info!(stage, train = pairs.train.len(), held_out = pairs.valid.len(), "judged pairs read back");
            return Ok(pairs);
        }
        PairSource::Judged { prompts, model, samples, judge, min_gap, generation, held_out } => {
            let examples = examples::load(ctx, prompts, stage, dir)?;
            let model_stage = model.as_deref().unwrap_or(policy);
            let sampler = ctx.starting_model(Some(model_stage))?;
            let vocab = sampler.config().vocab_size();
            let scorers = rewards::scorers(ctx, stage, judge, (model_stage, vocab))?;
            let judge = Judge { layout, model: &sampler, scorers: &scorers, samples: *samples, min_gap: *min_gap };
            let seed = ctx.experiment.seed;
            let prompts_of = |examples: &[examples::Example]| examples.iter().map(|e| e.prompt.clone()).collect();
            let train_prompts: Vec<String> = prompts_of(&examples.train);
            let valid_prompts: Vec<String> = prompts_of(&examples.valid[..examples.valid.len().min(*held_out)]);
            let rl_error = |source| StageError::Rl { stage: stage.to_string(), step: 0, source };
            let mut sampling = generation.clone();
            sampling.seed ^= seed;
            let train = judge.pairs(&train_prompts, &sampling, stage).map_err(|e| e.into_stage(stage, rl_error))?;
            sampling.seed ^= 0x6865_6c64; // another stream for held-out prompts
            let valid = judge.pairs(&valid_prompts, &sampling, stage).map_err(|e| e.into_stage(stage, rl_error))?;
            let kept = train.len() + valid.len();
            let asked = train_prompts.len() + valid_prompts.len();
            tracing::info!(stage, kept, prompts = asked, min_gap, "judged pairs: {kept} of {asked} prompts kept");
            Pairs { train, valid }
        }
    };
    if pairs.train.is_empty() {
        return Err(data_error(format!("no training pairs could be made from `{}`", source.data())));
    }
    write_pairs(&file, &pairs)?;
    tracing::info!(stage, train = pairs.train.len(), held_out = pairs.valid.len(), "pairs ready");
    Ok(pairs)
}

/// For each prompt (in order of first appearance), its best-rated response against its worst
/// when their ratings differ by at least `min_gap` (and the texts differ).
pub fn best_and_worst(rated: Vec<(String, String, f64)>, min_gap: f64) -> Vec<Pair> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for (prompt, response, rating) in rated {
        let group = groups.entry(prompt.clone()).or_default();
        if group.is_empty() {
            order.push(prompt);
        }
        group.push((response, rating));
    }
    order
        .into_iter()
        .filter_map(|prompt| {
            let group = &groups[&prompt];
            let (chosen, rejected) = extremes(group.iter().map(|(_, r)| *r))?;
            let ((chosen, high), (rejected, low)) = (&group[chosen], &group[rejected]);
            (high - low >= min_gap && high > low && chosen != rejected).then(|| Pair {
                prompt,
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                chosen_score: Some(*high),
                rejected_score: Some(*low),
            })
        })
        .collect()
}

/// Indices of the first largest and the first smallest value.
fn extremes(values: impl Iterator<Item = f64>) -> Option<(usize, usize)> {
    let mut best: Option<(usize, f64, usize, f64)> = None;
    for (i, v) in values.enumerate() {
        best = Some(match best {
            None => (i, v, i, v),
            Some((hi, h, lo, l)) => {
                let (hi, h) = if v > h { (i, v) } else { (hi, h) };
                let (lo, l) = if v < l { (i, v) } else { (lo, l) };
                (hi, h, lo, l)
            }
        });
    }
    best.map(|(hi, _, lo, _)| (hi, lo))
}

/// Samples responses and ranks them.
struct Judge<'a> {
    layout: &'a Layout<'a>,
    model: &'a crate::model::Model,
    scorers: &'a [crate::train::rl::scoring::Scorer],
    samples: usize,
    min_gap: f64,
}

/// Why judging failed.
enum JudgeError {
    Layout(super::layout::LayoutError),
    Rl(crate::train::rl::RlError),
}

impl JudgeError {
    fn into_stage(self, stage: &str, rl: impl Fn(crate::train::rl::RlError) -> StageError) -> StageError {
        match self {
            JudgeError::Layout(source) => StageError::Layout { stage: stage.to_string(), source },
            JudgeError::Rl(source) => rl(source),
        }
    }
}

/// Prompts sampled for at once (times `samples` rows): bounds the KV cache's memory.
const PROMPTS_PER_BATCH: usize = 16;

impl Judge<'_> {
    /// A pair for each prompt whose best and worst sampled responses differ by `min_gap`.
    fn pairs(&self, prompts: &[String], sampling: &SamplingConfig, stage: &str) -> Result<Vec<Pair>, JudgeError> {
        let end = self.layout.end_token();
        let context = self.model.config().context();
        let mut sampling = sampling.clone();
        if !sampling.stop_tokens.contains(&end) {
            sampling.stop_tokens.push(end);
        }
        let bar = crate::util::progress::bar(&format!("{stage}: judging"), prompts.len() as u64, 0);
        let mut pairs = Vec::new();
        for (chunk_index, chunk) in prompts.chunks(PROMPTS_PER_BATCH).enumerate() {
            let repeated: Vec<String> =
                chunk.iter().flat_map(|p| std::iter::repeat_n(p.clone(), self.samples)).collect();
            let tokens = repeated
                .iter()
                .map(|p| self.layout.prompt_tokens_within(p, context, sampling.max_new_tokens))
                .collect::<Result<Vec<_>, _>>()
                .map_err(JudgeError::Layout)?;
            let config = SamplingConfig {
                seed: sampling.seed ^ (chunk_index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ..sampling.clone()
            };
            let episodes = rollout::sample(self.model, &repeated, tokens, &config, |t| self.layout.response_text(t))
                .map_err(JudgeError::Rl)?;
            let pad = self.layout.end_token();
            let scored = score(self.scorers, &episodes, end, pad, DEFAULT_REWARD_LIMIT).map_err(JudgeError::Rl)?;
            for (group, totals) in episodes.chunks(self.samples).zip(scored.totals.chunks(self.samples)) {
                let Some((best, worst)) = extremes(totals.iter().copied()) else { continue };
                let (chosen, rejected) = (&group[best].response_text, &group[worst].response_text);
                let gap = totals[best] - totals[worst];
                if gap >= self.min_gap && gap > 0.0 && chosen != rejected {
                    pairs.push(Pair {
                        prompt: group[best].prompt.clone(),
                        chosen: chosen.clone(),
                        rejected: rejected.clone(),
                        chosen_score: Some(totals[best]),
                        rejected_score: Some(totals[worst]),
                    });
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(pairs)
    }
}

fn write_pairs(path: &Path, pairs: &Pairs) -> Result<(), FileError> {
    let mut out = String::new();
    for (split, side) in [("train", &pairs.train), ("held-out", &pairs.valid)] {
        for pair in side.iter() {
            let line = SavedPair { split: split.to_string(), pair: pair.clone() };
            out.push_str(&serde_json::to_string(&line).map_err(|e| FileError::new(path, e))?);
            out.push('\n');
        }
    }
    write_atomically(path, out.as_bytes())
}

/// Pairs written by [`load`], read back.
pub fn read_pairs(path: &Path) -> Result<Pairs, FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError::new(path, e))?;
    let mut pairs = Pairs::default();
    for (i, line) in text.lines().enumerate() {
        let saved: SavedPair =
            serde_json::from_str(line).map_err(|e| FileError::new(path, format!("line {}: {e}", i + 1)))?;
        match saved.split.as_str() {
            "train" => pairs.train.push(saved.pair),
            _ => pairs.valid.push(saved.pair),
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rated(prompt: &str, response: &str, rating: f64) -> (String, String, f64) {
        (prompt.to_string(), response.to_string(), rating)
    }

    #[test]
    fn each_prompt_gives_its_best_response_against_its_worst() {
        let pairs = best_and_worst(
            vec![
                rated("p1", "ok", 0.5),
                rated("p2", "fine", 1.0),
                rated("p1", "great", 3.0),
                rated("p1", "awful", -2.0),
                rated("p2", "also fine", 1.5),
                rated("p3", "alone", 4.0),
            ],
            1.0,
        );
        // p2's ratings differ by 0.5 < 1.0, p3 has one response.
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].chosen.as_str(), pairs[0].rejected.as_str()), ("great", "awful"));
        assert_eq!((pairs[0].chosen_score, pairs[0].rejected_score), (Some(3.0), Some(-2.0)));
        assert_eq!(best_and_worst(vec![rated("p", "a", 1.0), rated("p", "b", 1.0)], 0.0), Vec::new());
    }

    #[test]
    fn saved_pairs_read_back_exactly() {
        let dir = std::env::temp_dir().join(format!("triad-pairs-{}", std::process::id()));
        let pair = |prompt: &str, score: f64| Pair {
            prompt: prompt.into(),
            chosen: " a \"quoted\"\nline".into(),
            rejected: " ünïcode".into(),
            chosen_score: Some(score),
            rejected_score: Some(score - 0.1),
        };
        let pairs = Pairs { train: vec![pair("a", 0.1 + 0.2), pair("b", -1e-300)], valid: vec![pair("c", 3.0)] };
        let path = dir.join(PAIRS_FILE);
        write_pairs(&path, &pairs).expect("written");
        let back = read_pairs(&path).expect("read");
        assert_eq!((back.train, back.valid), (pairs.train, pairs.valid));
        let _ = std::fs::remove_dir_all(dir);
    }
}
