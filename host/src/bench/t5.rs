//! `triad bench train --model t5`: T5 v1.1 training steps, triad against `transformers`'
//! `T5ForConditionalGeneration` in eager PyTorch (`bench/train_t5_reference.py`) on the same
//! weights (triad's initialisation, written as a Hugging Face folder the reference loads) and
//! the same batches (a fixed formula of step and position on both sides), so the first step's
//! losses must agree. Each side times whole steps: encoder and teacher-forced decoder forward,
//! cross-entropy, backward, clipping at 1.0, AdamW. triad splits the batch's rows across the
//! threads as its trainers do.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::{BenchError, BenchResult, kernels_label, peak_rss_mib, run_reference_on_weights};
use crate::model::t5::{FeedForward, T5Config};
use crate::model::{Model, ModelConfig};
use crate::train::TrainError;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::trainer::{data_parallel_grads, part_rows};

/// The workload: a T5 v1.1 of about 17M parameters, source and target of 128 tokens.
#[derive(Debug, Clone)]
pub struct T5BenchConfig {
    pub model: T5Config,
    pub batch: usize,
    pub source: usize,
    pub target: usize,
    pub warmup: usize,
    pub steps: usize,
    pub lr: f64,
    pub threads: usize,
}

impl T5BenchConfig {
    /// The reference workload with `steps` timed steps on `threads` threads.
    pub fn reference(steps: usize, threads: usize) -> T5BenchConfig {
        T5BenchConfig {
            model: T5Config {
                vocab_size: 4096,
                context: 128,
                d_model: 256,
                d_kv: 64,
                d_ff: 1024,
                num_layers: 4,
                num_decoder_layers: 4,
                num_heads: 4,
                relative_attention_num_buckets: 32,
                relative_attention_max_distance: 128,
                layer_norm_epsilon: 1e-6,
                feed_forward: FeedForward::GatedGelu,
                tie_word_embeddings: false,
                decoder_start_token_id: 0,
            },
            batch: 8,
            source: 128,
            target: 128,
            warmup: 2,
            steps,
            lr: 1e-3,
            threads,
        }
    }
}

/// (source ids, decoder input ids, labels) of `step`, each row-major: the formula
/// `bench/train_t5_reference.py` also uses.
pub fn t5_batch(step: usize, config: &T5BenchConfig) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let vocab = config.model.vocab_size as u64;
    let token = |n: usize| ((((n + step * 1_000_003) as u64) * 7919 + 17) % vocab) as u32;
    let (b, s, t) = (config.batch, config.source, config.target);
    let source = (0..b * s).map(token).collect();
    let labels: Vec<u32> = (b * s..b * s + b * t).map(token).collect();
    let decoder = labels.chunks(t).flat_map(|row| std::iter::once(0).chain(row[..t - 1].iter().copied())).collect();
    (source, decoder, labels)
}

/// Trains on both sides: PyTorch first (on triad's initial weights), then triad. Returns
/// (triad, PyTorch).
pub fn bench_t5(
    config: &T5BenchConfig,
    python: &Path,
    script: &Path,
    device: &Device,
) -> Result<(BenchResult, BenchResult), BenchError> {
    let model = Model::new(&ModelConfig::T5(config.model.clone()), device, 0)?;
    let t5 = model.as_t5().ok_or_else(|| BenchError::Failed("the T5 workload built another model".into()))?;
    let args = [
        ("--batch", config.batch.to_string()),
        ("--source", config.source.to_string()),
        ("--target", config.target.to_string()),
        ("--lr", config.lr.to_string()),
        ("--steps", config.steps.to_string()),
        ("--warmup", config.warmup.to_string()),
        ("--threads", config.threads.to_string()),
    ];
    let reference = run_reference_on_weights(|dir| model.save(dir), python, script, &args)?;

    let vars = model.vars();
    // Decay on matrices, not on the norms' gains (the reference does the same).
    let mut optimizer = AdamW::new(&vars, |name| !name.contains("layer_norm"), AdamWConfig::default())?;
    let (b, s, t) = (config.batch, config.source, config.target);
    let (mut times, mut first_loss) = (Vec::new(), f64::NAN);
    for step in 0..config.warmup + config.steps {
        let (source, decoder, labels) = t5_batch(step, config);
        let source = Tensor::from_vec(source, (b, s), device)?;
        let decoder = Tensor::from_vec(decoder, (b, t), device)?;
        let labels = Tensor::from_vec(labels, (b, t), device)?;
        let start = Instant::now();
        let parts = rayon::current_num_threads().clamp(1, b);
        let part_loss = |part| {
            let rows = part_rows(b, part, parts);
            let tensor_error = |source| TrainError::Tensor { step: step as u64, source };
            let rows_of = |x: &Tensor| x.narrow(0, rows.start, rows.len()).map_err(tensor_error);
            let loss = t5
                .loss(&rows_of(&source)?, None, &rows_of(&decoder)?, &rows_of(&labels)?)
                .map_err(|source| TrainError::Model { step: step as u64, source })?;
            // The part's mean, weighted by its share of the rows: the parts add up to the mean.
            Ok((loss.affine(rows.len() as f64 / b as f64, 0.0).map_err(tensor_error)?, Vec::new()))
        };
        let mut grads = HashMap::new();
        let (loss, _) = data_parallel_grads(step as u64, &vars, parts, part_loss, &mut grads)?;
        optimizer.step(&grads, config.lr, Some(1.0))?;
        if step == 0 {
            first_loss = loss;
        }
        if step >= config.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let tokens_per_s = (b * (s + t)) as f64 / times[times.len() / 2];
    let ours = BenchResult {
        implementation: format!("triad (candle 0.11, {})", kernels_label()),
        tokens_per_s,
        flops_per_token: 0.0,
        mfu: 0.0,
        peak_rss_mib: peak_rss_mib(),
        first_loss: Some(first_loss),
    };
    Ok((ours, reference))
}
