//! The reward-model stage: a scalar head on a backbone, trained by supervised learning on human
//! feedback, the first half of RLHF.
//!
//! Records carry a text and a human rating (the movie snippets: the mean of 15-20 raters on a
//! -4..+4 scale). Two objectives:
//! - `Ratings`: regression of the score on the standardised rating (mean squared error);
//! - `Pairwise`: Bradley-Terry on pairs of training records whose ratings differ by at least
//!   `min_gap`: `-log sigmoid(r(chosen) - r(rejected) - margin)`.
//!
//! Either way the model is judged on held-out records: the pairwise accuracy over every held-out
//! pair whose ratings differ by at least `eval_gap` (ties in score count half), and the Spearman
//! rank correlation of score and rating. Batches are a pure function of (seed, step).

use std::path::Path;

use candle_core::{Device, Tensor};

use serde::{Deserialize, Serialize};

use super::StageOutput;
use super::context::{RunContext, StageError};
use super::examples::{default_hash_split, filter_slots};
use crate::data::blocks::{draw_indices, splitmix64};
use crate::data::source::Record;
use crate::data::split::Split;
use crate::experiment::{StageSpec, TrainSettings};
use crate::model::RewardModel;
use crate::model::reward::pad_rows;
use crate::plugins::PluginKind;
use crate::train::loss::softplus;
use crate::train::settings::{non_negative, positive};
use crate::train::{Objective, SplitLoss, TrainError, part_rows, train};

/// A reward model: a scalar head on a backbone, trained on human feedback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelStage {
    pub name: String,
    /// The stage whose model is the backbone; absent: the experiment's model.
    #[serde(default)]
    pub from: Option<String>,
    /// Records to learn from: their text is what is scored.
    pub data: String,
    #[serde(default)]
    pub filters: Vec<String>,
    /// How held-out records are chosen (default: 10% by hash).
    #[serde(default = "default_hash_split")]
    pub split: Split,
    pub objective: RewardObjective,
    /// Longest scored text in tokens (default: the model's context).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Held-out pairs count for the accuracy only when their ratings differ by at least this.
    #[serde(default = "default_eval_gap")]
    pub eval_gap: f64,
    pub train: TrainSettings,
}

/// What the reward model learns from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RewardObjective {
    /// Regression on the numeric rating in `field`, standardised over the training records
    /// (mean 0, std 1): mean squared error.
    Ratings { field: String },
    /// Bradley-Terry on pairs: -log sigmoid(r(chosen) - r(rejected) - margin). Pairs are built
    /// from the ratings in `rating`: two training records whose ratings differ by at least
    /// `min_gap`, the higher one chosen. With `margin`, the margin is the rating gap in units
    /// of the ratings' standard deviation (Llama 2's margin loss); without, 0.
    Pairwise {
        rating: String,
        #[serde(default = "default_min_gap")]
        min_gap: f64,
        #[serde(default)]
        margin: bool,
    },
}

impl RewardObjective {
    /// The field holding each record's rating.
    pub fn rating_field(&self) -> &str {
        match self {
            RewardObjective::Ratings { field } => field,
            RewardObjective::Pairwise { rating, .. } => rating,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            RewardObjective::Pairwise { min_gap, .. } if !positive(*min_gap) => {
                Err(format!("Pairwise(min_gap) must be a positive number, got {min_gap}"))
            }
            _ => Ok(()),
        }
    }
}

fn default_eval_gap() -> f64 {
    2.0
}
fn default_min_gap() -> f64 {
    1.0
}

impl StageSpec for RewardModelStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "RewardModel"
    }
    fn inputs(&self) -> Vec<&str> {
        self.from.iter().map(String::as_str).collect()
    }
    fn data(&self) -> Vec<&str> {
        vec![&self.data]
    }
    fn plugin_slots(&self) -> Vec<(&str, PluginKind)> {
        filter_slots(&self.filters).collect()
    }
    fn validate(&self) -> Result<(), String> {
        self.train.validate()?;
        self.objective.validate()?;
        if !non_negative(self.eval_gap) {
            return Err(format!("eval_gap must be a number >= 0, got {}", self.eval_gap));
        }
        match self.max_len {
            Some(m) if m < 2 => Err(format!("max_len {m} leaves no room for a text and its end token")),
            _ => Ok(()),
        }
    }
    fn describe(&self) -> String {
        let from = self.from.as_deref().unwrap_or("the experiment's model");
        format!("from `{from}` on `{}`: {}", self.data, self.train.describe())
    }
}

/// Attempts to find a partner whose rating differs enough, before the draw gives up on a slot.
const PARTNER_TRIES: usize = 64;

/// A scored text: its tokens (ended by the end-of-text token) and its human rating.
#[derive(Debug, Clone)]
pub struct Rated {
    pub tokens: Vec<u32>,
    pub rating: f64,
}

/// Held-out quality of a reward model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardQuality {
    /// Share of held-out pairs (ratings at least `eval_gap` apart) ordered as the humans did.
    pub pair_accuracy: f64,
    pub pairs: usize,
    /// Spearman rank correlation of score and rating.
    pub spearman: f64,
}

/// Pairwise accuracy over all pairs whose ratings differ by at least `gap`, and Spearman's rho.
pub fn reward_quality(scores: &[f32], ratings: &[f64], gap: f64) -> RewardQuality {
    let (mut right, mut pairs) = (0.0, 0usize);
    for i in 0..scores.len() {
        for j in i + 1..scores.len() {
            let difference = ratings[i] - ratings[j];
            if difference.abs() < gap {
                continue;
            }
            pairs += 1;
            let order = (scores[i] - scores[j]) as f64 * difference;
            right += if order > 0.0 {
                1.0
            } else if order == 0.0 {
                0.5
            } else {
                0.0
            };
        }
    }
    let scores: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
    RewardQuality {
        pair_accuracy: if pairs == 0 { f64::NAN } else { right / pairs as f64 },
        pairs,
        spearman: pearson(&ranks(&scores), &ranks(ratings)),
    }
}

/// Ranks from 1, ties given their average rank.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let average = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = average;
        }
        start = end;
    }
    ranks
}

/// Pearson correlation; NaN when either side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

struct RewardTraining<'a> {
    model: &'a RewardModel,
    train: Vec<Rated>,
    valid: Vec<Rated>,
    objective: RewardObjective,
    /// Mean and standard deviation of the training ratings.
    mean: f64,
    std: f64,
    eval_gap: f64,
    pad: u32,
    seed: u64,
    batch: usize,
    accumulation: usize,
    device: &'a Device,
}

impl RewardTraining<'_> {
    /// A partner for record `a` whose rating differs by at least `min_gap`, drawn from
    /// (seed, draw, slot).
    fn partner(&self, a: usize, draw: u64, slot: usize, min_gap: f64) -> Option<usize> {
        let mut state = self.seed ^ draw.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (slot as u64).wrapping_mul(0x9e37_79b9);
        (0..PARTNER_TRIES)
            .map(|_| ((splitmix64(&mut state) as u128 * self.train.len() as u128) >> 64) as usize)
            .find(|&b| (self.train[a].rating - self.train[b].rating).abs() >= min_gap)
    }

    fn scores(&self, rows: &[&Rated], step: u64) -> Result<Tensor, TrainError> {
        let sequences: Vec<Vec<u32>> = rows.iter().map(|r| r.tokens.clone()).collect();
        let (tokens, lengths) =
            pad_rows(&sequences, self.pad, self.device).map_err(|e| TrainError::Objective(e.to_string()))?;
        self.model.trunk.seed_dropout(self.seed, step);
        self.model.forward(&tokens, &lengths, true).map_err(|e| TrainError::Objective(e.to_string()))
    }
}

impl RewardTraining<'_> {
    /// The loss of micro-batch `micro` of step `step`, or of `part` of `parts` of it (its share
    /// of the micro-batch's mean, with its pair accuracy weighted alike: see [`SplitLoss`]).
    fn loss_of(
        &self,
        step: u64,
        micro: usize,
        part: Option<(usize, usize)>,
    ) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        let draw = step * self.accumulation as u64 + micro as u64;
        let tensor = |source| TrainError::Tensor { step, source };
        let indices = draw_indices(draw, self.batch, self.train.len(), self.seed);
        // The part's units (ratings or pairs) of the micro-batch's n, and its share of them.
        let span = |n: usize| {
            let range = part.map_or(0..n, |(part, parts)| part_rows(n, part, parts));
            let share = range.len() as f64 / n as f64;
            (range, share)
        };
        let nothing = || -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
            Ok((Tensor::new(0f32, self.device).map_err(tensor)?, Vec::new()))
        };
        match &self.objective {
            RewardObjective::Ratings { .. } => {
                let (range, share) = span(indices.len());
                if range.is_empty() {
                    return nothing();
                }
                let rows: Vec<&Rated> = indices[range].iter().map(|&i| &self.train[i]).collect();
                let targets: Vec<f32> = rows.iter().map(|r| ((r.rating - self.mean) / self.std) as f32).collect();
                let targets = Tensor::from_vec(targets, rows.len(), self.device).map_err(tensor)?;
                let scores = self.scores(&rows, draw)?;
                let loss = (scores - targets)
                    .and_then(|d| d.sqr())
                    .and_then(|d| d.mean_all())
                    .and_then(|l| l.affine(share, 0.0))
                    .map_err(tensor)?;
                Ok((loss, Vec::new()))
            }
            RewardObjective::Pairwise { min_gap, margin, .. } => {
                let pairs: Vec<(usize, usize)> = indices
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, &a)| {
                        let b = self.partner(a, draw, slot, *min_gap)?;
                        Some(if self.train[a].rating > self.train[b].rating { (a, b) } else { (b, a) })
                    })
                    .collect();
                if pairs.is_empty() {
                    return Err(TrainError::Objective(format!(
                        "no training ratings differ by {min_gap} or more: lower Pairwise(min_gap)"
                    )));
                }
                let (range, share) = span(pairs.len());
                if range.is_empty() {
                    return nothing();
                }
                let pairs = &pairs[range];
                let rows: Vec<&Rated> = pairs
                    .iter()
                    .map(|&(c, _)| &self.train[c])
                    .chain(pairs.iter().map(|&(_, r)| &self.train[r]))
                    .collect();
                let scores = self.scores(&rows, draw)?;
                let n = pairs.len();
                let chosen = scores.narrow(0, 0, n).map_err(tensor)?;
                let rejected = scores.narrow(0, n, n).map_err(tensor)?;
                let margins: Vec<f32> =
                    pairs
                        .iter()
                        .map(|&(c, r)| {
                            if *margin {
                                ((self.train[c].rating - self.train[r].rating) / self.std) as f32
                            } else {
                                0.0
                            }
                        })
                        .collect();
                let margins = Tensor::from_vec(margins, n, self.device).map_err(tensor)?;
                let difference = ((chosen - rejected).map_err(tensor)? - margins).map_err(tensor)?;
                // -log sigmoid(d) = softplus(-d) = log(1 + exp(-d)), written stably.
                let loss = softplus(&difference.neg().map_err(tensor)?)
                    .and_then(|l| l.mean_all())
                    .and_then(|l| l.affine(share, 0.0))
                    .map_err(tensor)?;
                let accuracy = difference
                    .ge(0f32)
                    .and_then(|a| a.to_dtype(candle_core::DType::F32))
                    .and_then(|a| a.mean_all())
                    .and_then(|a| a.to_scalar::<f32>())
                    .map_err(tensor)?;
                Ok((loss, vec![("pair_accuracy".into(), accuracy as f64 * share)]))
            }
        }
    }
}

impl SplitLoss for RewardTraining<'_> {
    fn rows(&self) -> usize {
        self.batch
    }

    fn part_loss(
        &self,
        step: u64,
        micro: usize,
        part: usize,
        parts: usize,
    ) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        self.loss_of(step, micro, Some((part, parts)))
    }
}

impl Objective for RewardTraining<'_> {
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> {
        self.loss_of(step, micro, None)
    }

    fn split(&self) -> Option<&dyn SplitLoss> {
        // Dropout draws its masks from one generator per step: parts running at once would take
        // them in a racing order.
        (!self.model.trunk.has_dropout()).then_some(self as &dyn SplitLoss)
    }

    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError> {
        if self.valid.is_empty() {
            return Ok(Vec::new());
        }
        let sequences: Vec<Vec<u32>> = self.valid.iter().map(|r| r.tokens.clone()).collect();
        let scores =
            self.model.score(&sequences, self.batch * 2, self.pad).map_err(|e| TrainError::Objective(e.to_string()))?;
        let ratings: Vec<f64> = self.valid.iter().map(|r| r.rating).collect();
        let quality = reward_quality(&scores, &ratings, self.eval_gap);
        Ok(vec![
            ("pair_accuracy".into(), quality.pair_accuracy),
            ("pairs".into(), quality.pairs as f64),
            ("spearman".into(), quality.spearman),
        ])
    }
}

/// Records as rated token sequences: the text (cut to `max_len - 1` tokens) plus the end token.
fn rate(
    records: &[Record],
    field: &str,
    tokenizer: &crate::data::tokenizer::Tokenizer,
    end: u32,
    max_len: usize,
) -> Result<Vec<Rated>, String> {
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    let encoded = tokenizer.encode_batch(&texts).map_err(|error| format!("tokenizing the records: {error}"))?;
    records
        .iter()
        .zip(encoded)
        .map(|(record, mut tokens)| {
            let at = || format!("{}:{}", record.origin.file.display(), record.origin.line);
            let raw = record.fields.get(field).ok_or_else(|| {
                let known: Vec<&str> = record.fields.keys().map(String::as_str).collect();
                format!("{}: no field `{field}` to read a rating from (fields: {})", at(), known.join(", "))
            })?;
            let rating: f64 =
                raw.trim().parse().map_err(|_| format!("{}: rating `{raw}` in `{field}` is not a number", at()))?;
            if !rating.is_finite() {
                return Err(format!("{}: rating `{raw}` is not finite", at()));
            }
            tokens.truncate(max_len.saturating_sub(1).max(1));
            tokens.push(end);
            Ok(Rated { tokens, rating })
        })
        .collect()
}

/// Run the stage into `dir`: the trained reward model is saved there.
pub fn run(ctx: &RunContext, stage: &RewardModelStage, dir: &Path) -> Result<(RewardModel, StageOutput), StageError> {
    let name = stage.name.as_str();
    let data_error = |message: String| StageError::Data { stage: name.to_string(), message };
    let records = ctx.filtered_records(name, &stage.data, &stage.filters, dir)?;
    let parts = stage.split.apply(records).map_err(|e| data_error(e.to_string()))?;
    let trunk = ctx.starting_model(stage.from.as_deref())?;
    let tokenizer = ctx.tokenizer()?;
    let end = tokenizer
        .eos_id()
        .ok_or_else(|| data_error("the tokenizer has no end-of-text token to end scored texts with".into()))?;
    let max_len = stage.max_len.unwrap_or(trunk.config().context()).min(trunk.config().context());
    let field = stage.objective.rating_field();
    let train_rows = rate(&parts.train, field, &tokenizer, end, max_len).map_err(&data_error)?;
    let valid = rate(&parts.valid, field, &tokenizer, end, max_len).map_err(&data_error)?;
    let n = train_rows.len() as f64;
    let mean = train_rows.iter().map(|r| r.rating).sum::<f64>() / n;
    let std = (train_rows.iter().map(|r| (r.rating - mean).powi(2)).sum::<f64>() / n).sqrt();
    if std.is_nan() || std <= 0.0 {
        return Err(data_error(format!("every training rating in `{field}` is the same: there is nothing to learn")));
    }
    tracing::info!(stage = name, train = train_rows.len(), held_out = valid.len(), mean, std, "ratings read");

    let model = RewardModel::new(trunk, ctx.experiment.seed).map_err(|e| data_error(e.to_string()))?;
    let objective = RewardTraining {
        model: &model,
        train: train_rows,
        valid,
        objective: stage.objective.clone(),
        mean,
        std,
        eval_gap: stage.eval_gap,
        pad: tokenizer.pad_id().unwrap_or(end),
        seed: ctx.experiment.seed,
        batch: stage.train.batch,
        accumulation: stage.train.accumulation,
        device: &ctx.device,
    };
    let vars = model.vars();
    let summary = train(name, dir, &vars, crate::model::decays, &objective, &stage.train.to_config(), &ctx.device)
        .map_err(|source| StageError::Train { stage: name.into(), source })?;
    model.save(dir).map_err(|source| StageError::Model { stage: name.into(), source })?;
    Ok((model, StageOutput::trained(dir, name, &summary)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_counts_ordered_pairs_and_rank_correlation() {
        let ratings = [-3.0, -1.0, 0.5, 2.5];
        // Perfect order: every pair with a gap of 2 or more is right, rho = 1.
        let q = reward_quality(&[-1.0, 0.0, 0.2, 3.0], &ratings, 2.0);
        assert_eq!((q.pairs, q.pair_accuracy), (5, 1.0));
        assert!((q.spearman - 1.0).abs() < 1e-12);
        // Reversed: all wrong, rho = -1; a tie in score counts half.
        let q = reward_quality(&[3.0, 0.2, 0.0, -1.0], &ratings, 2.0);
        assert_eq!(q.pair_accuracy, 0.0);
        assert!((q.spearman + 1.0).abs() < 1e-12);
        let q = reward_quality(&[0.0, 0.0], &[-1.0, 2.0], 2.0);
        assert_eq!(q.pair_accuracy, 0.5);
    }

    /// Split across threads, both objectives give the whole micro-batch's loss, pair accuracy
    /// and gradients (rows of different lengths, so parts pad differently).
    #[test]
    fn parts_add_up_to_the_micro_batch() {
        use crate::model::{GptConfig, Model, ModelConfig};
        use crate::train::data_parallel_grads;
        use std::collections::HashMap;
        let device = Device::Cpu;
        let config = ModelConfig::Gpt(GptConfig {
            vocab_size: 40,
            context: 16,
            layers: 1,
            heads: 2,
            d_model: 16,
            dropout: 0.0,
            bias: true,
        });
        let model = RewardModel::new(Model::new(&config, &device, 5).expect("trunk"), 6).expect("reward model");
        let records: Vec<Rated> = (0..24)
            .map(|i| Rated {
                tokens: (0..3 + i % 7).map(|j| ((i * 7 + j * 3) % 40) as u32).collect(),
                rating: (i % 5) as f64,
            })
            .collect();
        let objectives = [
            RewardObjective::Ratings { field: "rating".into() },
            RewardObjective::Pairwise { rating: "rating".into(), min_gap: 1.0, margin: true },
        ];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        let vars = model.vars();
        for objective in objectives {
            let training = RewardTraining {
                model: &model,
                train: records.clone(),
                valid: Vec::new(),
                objective: objective.clone(),
                mean: 2.0,
                std: 1.4,
                eval_gap: 2.0,
                pad: 0,
                seed: 3,
                batch: 6,
                accumulation: 1,
                device: &device,
            };
            let (whole, whole_metrics) = training.loss(4, 0).expect("loss");
            let whole_value = whole.to_scalar::<f32>().expect("scalar") as f64;
            let store = whole.backward().expect("backward");
            for parts in [2, 3] {
                let part_loss = |part| training.part_loss(4, 0, part, parts);
                let mut grads = HashMap::new();
                let (value, metrics) =
                    pool.install(|| data_parallel_grads(4, &vars, parts, part_loss, &mut grads)).expect("parts");
                assert!(
                    (value - whole_value).abs() < 1e-5,
                    "{objective:?}, {parts} parts: loss {value} vs {whole_value}"
                );
                assert_eq!(metrics.len(), whole_metrics.len());
                for ((name, a), (_, b)) in metrics.iter().zip(&whole_metrics) {
                    assert!((a - b).abs() < 1e-6, "{objective:?}, {parts} parts: {name} {a} vs {b}");
                }
                for (name, var) in &vars {
                    let want = store.get(var.as_tensor()).expect("gradient");
                    let diff =
                        (&grads[name] - want).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>()).expect("diff");
                    assert!(diff < 1e-5, "{objective:?}, {parts} parts, {name}: gradients differ by {diff}");
                }
            }
        }
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
    }
}
