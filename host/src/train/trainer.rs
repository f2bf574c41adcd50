//! The step loop every stage shares.
//!
//! For each step: the loss of each micro-batch (scaled by 1/accumulation) is backpropagated and
//! the gradients summed; the optimizer clips them to a global norm and updates the weights with
//! the scheduled learning rate. An objective that can split a micro-batch by rows
//! ([`SplitLoss`]) has its parts run at once, one per thread, each with its own backward pass:
//! candle runs a backward pass on one thread, so this is what keeps every core busy (2 cores,
//! the reference workload). Every `eval_every` steps (and at the end) the objective is evaluated;
//! every `checkpoint_every` steps a checkpoint is written ([`super::session`]). Metrics go to the
//! stage's metrics file as they happen; a progress bar shows the step, loss and learning rate.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::error::TrainError;
use super::optimizer::{AdamW, AdamWConfig};
use super::schedule::Schedule;
use super::session::{Cadence, Session, config_key};
use crate::model::kernels::on_one_core;
use crate::runs::metrics::read_rows;

/// How to train: steps, schedule, optimizer, accumulation, clipping, evaluation, checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (none when absent).
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
}

/// A loss whose micro-batch splits by rows into parts whose losses add up to the micro-batch's.
pub trait SplitLoss: Sync {
    /// Rows in a micro-batch: at most this many parts.
    fn rows(&self) -> usize;

    /// The loss of `part` of `parts` of micro-batch `micro` of step `step`, weighted so that the
    /// parts sum to [`Objective::loss`] (a part's mean times its share of the rows), with its
    /// metrics weighted alike (so that they too add up to the micro-batch's).
    fn part_loss(
        &self,
        step: u64,
        micro: usize,
        part: usize,
        parts: usize,
    ) -> Result<(Tensor, Vec<(String, f64)>), TrainError>;
}

/// Rows `part` of `parts` of `rows`, as even as they come.
pub fn part_rows(rows: usize, part: usize, parts: usize) -> std::ops::Range<usize> {
    rows * part / parts..rows * (part + 1) / parts
}

/// Runs `part_loss` for every part at once on the thread pool, backpropagates each, adds the
/// gradients into `grads` in part order (the same bits on every run with the same number of
/// parts) and returns the summed loss and metrics. Each part runs its matrix products on its own
/// core ([`on_one_core`]).
pub fn data_parallel_grads(
    step: u64,
    vars: &[(String, Var)],
    parts: usize,
    part_loss: impl Fn(usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError> + Sync,
    grads: &mut HashMap<String, Tensor>,
) -> Result<(f64, Vec<(String, f64)>), TrainError> {
    use rayon::prelude::*;
    type Part = (f64, Vec<(String, f64)>, candle_core::backprop::GradStore);
    let results: Vec<Result<Part, TrainError>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let forward_backward = || {
                let (loss, metrics) = part_loss(part)?;
                let tensor = |source| TrainError::Tensor { step, source };
                let value = loss.to_scalar::<f32>().map_err(tensor)? as f64;
                Ok((value, metrics, loss.backward().map_err(tensor)?))
            };
            // Each part holds a core; one part alone may use them all.
            if parts > 1 { on_one_core(forward_backward) } else { forward_backward() }
        })
        .collect();
    let (mut total, mut metrics) = (0.0, Vec::new());
    for result in results {
        let (value, part_metrics, store) = result?;
        total += value;
        accumulate(&mut metrics, &part_metrics, 1);
        add_grads(grads, vars, &store).map_err(|source| TrainError::Tensor { step, source })?;
    }
    Ok((total, metrics))
}

/// Adds the gradients in `store` of each of `vars` into `grads`.
fn add_grads(
    grads: &mut HashMap<String, Tensor>,
    vars: &[(String, Var)],
    store: &candle_core::backprop::GradStore,
) -> candle_core::Result<()> {
    for (name, var) in vars {
        if let Some(grad) = store.get(var.as_tensor()) {
            let summed = match grads.remove(name) {
                Some(previous) => (previous + grad)?,
                None => grad.clone(),
            };
            grads.insert(name.clone(), summed);
        }
    }
    Ok(())
}

/// What a stage trains: the loss of a micro-batch, and an evaluation.
pub trait Objective {
    /// The scalar loss of micro-batch `micro` of step `step`, plus metrics to log (averaged over
    /// the micro-batches of the step). Must be a pure function of the weights, `step` and
    /// `micro`, so that resumed runs continue exactly.
    fn loss(&self, step: u64, micro: usize) -> Result<(Tensor, Vec<(String, f64)>), TrainError>;

    /// Held-out metrics (for example validation loss and perplexity).
    fn evaluate(&self) -> Result<Vec<(String, f64)>, TrainError>;

    /// The same loss split by rows, where the objective can split it (and splitting changes
    /// nothing but the summation order): the trainer then runs the parts in parallel.
    fn split(&self) -> Option<&dyn SplitLoss> {
        None
    }
}

/// What training produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The step training started from (non-zero after a resume).
    pub resumed_from: u64,
    /// The last evaluation.
    pub final_eval: Vec<(String, f64)>,
    /// The training loss of the last step.
    pub final_train_loss: f64,
    /// Training tokens or examples processed per second, as the objective counts them.
    pub seconds: f64,
}

/// Train `vars` on `objective`, with checkpoints and metrics under `dir`.
pub fn train(
    stage: &str,
    dir: &Path,
    vars: &[(String, Var)],
    decays: impl Fn(&str) -> bool,
    objective: &dyn Objective,
    config: &TrainConfig,
    device: &Device,
) -> Result<TrainSummary, TrainError> {
    let tensor = |step: u64| move |source: candle_core::Error| TrainError::Tensor { step, source };
    let mut optimizer = AdamW::new(vars, decays, config.adamw).map_err(tensor(0))?;
    let cadence = Cadence {
        steps: config.steps,
        eval_every: config.eval_every,
        checkpoint_every: config.checkpoint_every,
        keep_checkpoints: config.keep_checkpoints,
    };
    let (mut session, _) = Session::open(stage, dir, vars, &mut optimizer, cadence, config_key(config), device)?;
    let start = session.start;
    let schedule =
        Schedule { lr: config.lr, min_lr: config.min_lr, warmup_steps: config.warmup_steps, decay_steps: config.steps };
    let mut final_train_loss = f64::NAN;
    let mut final_eval = Vec::new();
    let accumulation = config.accumulation.max(1);
    let (split, threads) = (objective.split(), rayon::current_num_threads());
    if start == 0 && config.eval_every > 0 {
        // Where training starts from: the reference every later evaluation is read against.
        for (name, value) in objective.evaluate()? {
            session.write(0, &format!("eval/{name}"), value)?;
        }
    }
    for step in start..config.steps {
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let mut step_loss = 0.0;
        let mut step_metrics: Vec<(String, f64)> = Vec::new();
        let scale = 1.0 / accumulation as f64;
        for micro in 0..accumulation {
            let parts = split.map_or(1, |split| threads.min(split.rows()));
            let value = match split {
                Some(split) if parts > 1 => {
                    let part_loss = |part| {
                        let (loss, metrics) = split.part_loss(step, micro, part, parts)?;
                        Ok((loss.affine(scale, 0.0).map_err(tensor(step))?, metrics))
                    };
                    let (value, metrics) = data_parallel_grads(step, vars, parts, part_loss, &mut grads)?;
                    accumulate(&mut step_metrics, &metrics, accumulation);
                    value
                }
                _ => {
                    let (loss, extra) = objective.loss(step, micro)?;
                    accumulate(&mut step_metrics, &extra, accumulation);
                    let scaled = if accumulation > 1 { loss.affine(scale, 0.0).map_err(tensor(step))? } else { loss };
                    let value = scaled.to_scalar::<f32>().map_err(tensor(step))? as f64;
                    if value.is_finite() {
                        let store = scaled.backward().map_err(tensor(step))?;
                        add_grads(&mut grads, vars, &store).map_err(tensor(step))?;
                    }
                    value
                }
            };
            if !value.is_finite() {
                return Err(TrainError::Diverged { step, value: value * accumulation as f64 });
            }
            step_loss += value;
        }
        let lr = schedule.at(step);
        let grad_norm = optimizer.step(&grads, lr, config.grad_clip).map_err(tensor(step))?;
        if !grad_norm.is_finite() {
            return Err(TrainError::DivergedGradient { step, norm: grad_norm });
        }
        let done = step + 1;
        final_train_loss = step_loss;
        session.write(done, "train/loss", step_loss)?;
        session.write(done, "train/lr", lr)?;
        session.write(done, "train/grad_norm", grad_norm)?;
        for (name, value) in &step_metrics {
            session.write(done, &format!("train/{name}"), *value)?;
        }
        session.bar.set_message(format!("loss {step_loss:.4}  lr {lr:.2e}"));
        session.bar.inc(1);
        if session.cadence.eval_due(done) {
            final_eval = objective.evaluate()?;
            for (name, value) in &final_eval {
                session.write(done, &format!("eval/{name}"), *value)?;
            }
            let shown: Vec<String> = final_eval.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
            session
                .bar
                .suspend(|| tracing::info!(stage, step = done, train_loss = step_loss, "eval: {}", shown.join(", ")));
        }
        session.checkpoint_if_due(done, vars, &optimizer, None::<&()>)?;
    }
    if start >= config.steps {
        // Killed after the last checkpoint but before the stage was marked done: nothing to
        // train; the last training loss is in the metrics stream.
        final_eval = objective.evaluate()?;
        final_train_loss = read_rows(&dir.join("metrics.jsonl"))?
            .iter()
            .rev()
            .find(|row| row.metric == "train/loss")
            .map_or(f64::NAN, |row| row.value);
    }
    session.bar.finish_and_clear();
    Ok(TrainSummary { resumed_from: start, final_eval, final_train_loss, seconds: session.seconds() })
}

fn accumulate(total: &mut Vec<(String, f64)>, extra: &[(String, f64)], parts: usize) {
    for (name, value) in extra {
        match total.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += value / parts as f64,
            None => total.push((name.clone(), value / parts as f64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GptConfig, Model, ModelConfig};
    use crate::train::{lm_loss, lm_loss_rows, masked_lm_loss, masked_lm_loss_rows};
    use rand::{Rng, SeedableRng};

    /// Splitting a batch by rows across threads gives the whole batch's loss and gradients:
    /// pretraining's mean over every position, and SFT's mean over the masked positions (one row
    /// with none, so parts differ in their counts).
    #[test]
    fn data_parallel_parts_sum_to_the_whole_batch() -> Result<(), TrainError> {
        let tensor = |source| TrainError::Tensor { step: 0, source };
        let config = ModelConfig::Gpt(GptConfig {
            vocab_size: 50,
            context: 12,
            layers: 2,
            heads: 2,
            d_model: 16,
            dropout: 0.0,
            bias: true,
        });
        let device = Device::Cpu;
        let model = Model::new(&config, &device, 3).map_err(|e| TrainError::Objective(e.to_string()))?;
        let vars = model.vars();
        let rows = 5;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut tokens = || -> Vec<u32> { (0..rows * 12).map(|_| rng.random_range(0..50)).collect() };
        let inputs = Tensor::from_vec(tokens(), (rows, 12), &device).map_err(tensor)?;
        let targets = Tensor::from_vec(tokens(), (rows, 12), &device).map_err(tensor)?;
        let scored: Vec<f32> = (0..rows * 12).map(|i| if i / 12 == 1 || i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let mask = Tensor::from_vec(scored, (rows, 12), &device).map_err(tensor)?;
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(2).build().map_err(|e| TrainError::Objective(e.to_string()))?;
        for masked in [false, true] {
            let run = |parts: usize| {
                let part_loss = |part| {
                    let rows = part_rows(rows, part, parts);
                    let loss = if masked {
                        masked_lm_loss_rows(&model, &inputs, &targets, &mask, rows)
                    } else {
                        lm_loss_rows(&model, &inputs, &targets, rows)
                    };
                    Ok((loss.map_err(tensor)?, Vec::new()))
                };
                let mut grads = HashMap::new();
                pool.install(|| data_parallel_grads(0, &vars, parts, part_loss, &mut grads))
                    .map(|(loss, _)| (loss, grads))
            };
            let (whole_loss, whole) = run(1)?;
            let direct = if masked {
                masked_lm_loss(&model, &inputs, &targets, &mask, true)
            } else {
                lm_loss(&model, &inputs, &targets, true)
            };
            let direct = direct.and_then(|l| l.to_scalar::<f32>()).map_err(tensor)? as f64;
            assert!((whole_loss - direct).abs() < 1e-6, "masked {masked}: one part {whole_loss} vs the loss {direct}");
            for parts in [2, 3, 5] {
                let (loss, grads) = run(parts)?;
                assert!(
                    (loss - whole_loss).abs() < 1e-5,
                    "masked {masked}, {parts} parts: loss {loss} vs {whole_loss}"
                );
                assert_eq!(grads.len(), whole.len());
                for (name, g) in &grads {
                    let diff =
                        (g - &whole[name]).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>()).map_err(tensor)?;
                    assert!(diff < 1e-5, "masked {masked}, {parts} parts, {name}: gradients differ by {diff}");
                }
            }
        }
        Ok(())
    }
}
