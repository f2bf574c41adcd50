//! `triad bench train`: training throughput on the reference workload, measured side by side
//! with PyTorch running the identical model (`bench/train_reference.py`) in the same invocation.
//! `triad bench generate`: the same for batched greedy generation with a KV cache
//! (`bench/generate_reference.py`). `triad bench train --pretrained smollm2-135m-instruct`: training
//! a real pretrained model, PyTorch running the same weights on the same batches
//! (`bench/train_pretrained_reference.py`). `triad bench grpo`: the GRPO stage against TRL's
//! `GRPOTrainer` ([`grpo`]). The benchmarks sit above the stages: they run what users run.
//!
//! Workload: GPT-2 style, vocabulary 4096, context 256, 4 layers, 4 heads, width 256, batch 8,
//! f32, AdamW with decoupled weight decay, clipping at 1.0. Each side times the whole step
//! (forward, backward, optimizer) after a few warm-up steps and reports the median. triad's step
//! is the pretraining stage's: the batch's rows split across the threads.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

pub mod grpo;
pub mod peak;
pub mod plugins;
pub mod profile;
pub mod t5;

use crate::model::{GptConfig, Model, ModelConfig, decays};
use crate::train::TrainError;
use crate::train::loss::lm_loss_rows;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::trainer::{data_parallel_grads, part_rows};

/// The workload and how long to measure it.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub vocab: usize,
    pub context: usize,
    pub layers: usize,
    pub heads: usize,
    pub width: usize,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    /// The machine's peak f32 throughput, for model FLOP utilisation.
    pub peak_gflops: f64,
    /// PyTorch's intra-op threads; triad's side uses candle's pool, which the binary sizes from
    /// `RAYON_NUM_THREADS`.
    pub threads: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            vocab: 4096,
            context: 256,
            layers: 4,
            heads: 4,
            width: 256,
            batch: 8,
            warmup: 3,
            steps: 10,
            peak_gflops: 200.0,
            threads: 2,
        }
    }
}

/// One side's result.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BenchResult {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    pub mfu: f64,
    pub peak_rss_mib: f64,
    /// The first step's loss, where both sides train on the same batches (the pretrained
    /// benchmark): equal on both sides when they run the same model.
    #[serde(default)]
    pub first_loss: Option<f64>,
}

/// Model FLOPs per trained token: 6 per parameter (forward and backward matmuls, positions
/// excluded) plus attention's 12 * layers * context * width (PaLM, appendix B).
pub fn flops_per_token(config: &BenchConfig, parameters: usize) -> f64 {
    let positions = config.context * config.width;
    6.0 * (parameters - positions) as f64 + 12.0 * (config.layers * config.context * config.width) as f64
}

/// The reference model of the benchmarks: GPT-2 style, no dropout, weights from seed 0.
pub fn reference_model(
    vocab: usize,
    context: usize,
    layers: usize,
    heads: usize,
    width: usize,
    device: &Device,
) -> Result<Model, BenchError> {
    let config = ModelConfig::Gpt(GptConfig {
        vocab_size: vocab,
        context,
        layers,
        heads,
        d_model: width,
        dropout: 0.0,
        bias: true,
    });
    Ok(Model::new(&config, device, 0)?)
}

/// Times `warmup + steps` training steps of `model` on the batches `batch(step)` gives, each
/// step as the pretraining stage takes it (the rows split across the threads, see
/// [`data_parallel_grads`]), then AdamW at `lr` with clipping at 1.0. Returns the median seconds
/// of the timed steps and the first step's loss.
fn time_training(
    model: &Model,
    warmup: usize,
    steps: usize,
    lr: f64,
    mut batch: impl FnMut(usize) -> Result<(Tensor, Tensor), BenchError>,
) -> Result<(f64, f64), BenchError> {
    let vars = model.vars();
    let mut optimizer = AdamW::new(&vars, decays, AdamWConfig::default())?;
    let (mut times, mut first_loss) = (Vec::new(), f64::NAN);
    for step in 0..warmup + steps {
        let (inputs, targets) = batch(step)?;
        let rows = inputs.dim(0)?;
        let start = Instant::now();
        let parts = rayon::current_num_threads().clamp(1, rows);
        let part_loss = |part| {
            let loss = lm_loss_rows(model, &inputs, &targets, part_rows(rows, part, parts));
            Ok((loss.map_err(|source| TrainError::Tensor { step: step as u64, source })?, Vec::new()))
        };
        let mut grads = HashMap::new();
        let (loss, _) = data_parallel_grads(step as u64, &vars, parts, part_loss, &mut grads)?;
        optimizer.step(&grads, lr, Some(1.0))?;
        model.device().synchronize()?;
        if step == 0 {
            first_loss = loss;
        }
        if step >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], first_loss))
}

/// Time triad's training step on the workload.
pub fn bench_triad(config: &BenchConfig, device: &Device) -> Result<BenchResult, BenchError> {
    let model = reference_model(config.vocab, config.context, config.layers, config.heads, config.width, device)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (n, shape) = (config.batch * config.context, (config.batch, config.context));
    let batch = |_step| -> Result<(Tensor, Tensor), BenchError> {
        let mut tokens = || {
            let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..config.vocab as u32)).collect();
            Tensor::from_vec(ids, shape, device).map_err(BenchError::from)
        };
        Ok((tokens()?, tokens()?))
    };
    let (median, _) = time_training(&model, config.warmup, config.steps, 1e-3, batch)?;
    let tokens_per_s = n as f64 / median;
    let flops = flops_per_token(config, model.num_parameters());
    Ok(BenchResult {
        implementation: format!("triad (candle 0.11, {})", kernels_label()),
        tokens_per_s,
        flops_per_token: flops,
        mfu: tokens_per_s * flops / (config.peak_gflops * 1e9),
        peak_rss_mib: peak_rss_mib(),
        first_loss: None,
    })
}

/// Run `bench/train_reference.py` with `python` and read its JSON line.
pub fn bench_pytorch(config: &BenchConfig, python: &Path, script: &Path) -> Result<BenchResult, BenchError> {
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(["--vocab", &config.vocab.to_string(), "--context", &config.context.to_string()])
        .args(["--layers", &config.layers.to_string(), "--heads", &config.heads.to_string()])
        .args(["--width", &config.width.to_string(), "--batch", &config.batch.to_string()])
        .args(["--steps", &config.steps.to_string(), "--warmup", &config.warmup.to_string()])
        .args(["--threads", &config.threads.to_string(), "--peak-gflops", &config.peak_gflops.to_string()]);
    run_reference(&mut command, script)
}

/// Which kernels ran, for the results table.
fn kernels_label() -> &'static str {
    match crate::model::kernels::active() {
        crate::model::kernels::Kernels::Fused => "fused kernels",
        crate::model::kernels::Kernels::Plain => "plain tensor ops",
    }
}

/// Writes the model's weights with `save` into a scratch folder, runs the reference script on
/// them (`--weights DIR` and `args`) and reads its JSON line; the folder is removed whatever
/// happened there.
fn run_reference_on_weights(
    save: impl FnOnce(&Path) -> Result<(), crate::model::ModelError>,
    python: &Path,
    script: &Path,
    args: &[(&str, String)],
) -> Result<BenchResult, BenchError> {
    let weights_dir = std::env::temp_dir().join(format!("triad-bench-weights-{}", std::process::id()));
    save(&weights_dir)?;
    let mut command = Command::new(python);
    command.arg(script).arg("--weights").arg(&weights_dir);
    for (flag, value) in args {
        command.args([flag, value.as_str()]);
    }
    let reference = run_reference(&mut command, script);
    let _ = std::fs::remove_dir_all(&weights_dir);
    reference
}

/// Runs a reference script and reads the JSON line it ends with.
fn run_reference<T: serde::de::DeserializeOwned>(command: &mut Command, script: &Path) -> Result<T, BenchError> {
    let output = command.output().map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if !output.status.success() {
        return Err(format!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&output.stderr)).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(line).map_err(|e| format!("unreadable output `{line}`: {e}"))?)
}

/// Peak resident memory of this process (Linux), MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A benchmark that could not run, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("benchmark: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("benchmark: {0}")]
    Train(#[from] TrainError),
    #[error("benchmark: {0}")]
    Pretrained(#[from] crate::model::pretrained::PretrainedError),
    /// A reference script that failed, or a result that cannot be used.
    #[error("benchmark: {0}")]
    Failed(String),
}

impl From<String> for BenchError {
    fn from(message: String) -> Self {
        BenchError::Failed(message)
    }
}

/// The generation workload: the same model as [`BenchConfig`], random init, greedy decoding of
/// `new_tokens` tokens after `prompt` random prompt tokens, for `batch` rows at once with a KV
/// cache.
#[derive(Debug, Clone)]
pub struct GenerateBenchConfig {
    pub vocab: usize,
    pub context: usize,
    pub layers: usize,
    pub heads: usize,
    pub width: usize,
    pub batch: usize,
    pub prompt: usize,
    pub new_tokens: usize,
    pub warmup: usize,
    pub repeats: usize,
    /// PyTorch's intra-op threads; triad's side uses candle's pool, which the binary sizes from
    /// `RAYON_NUM_THREADS`.
    pub threads: usize,
}

impl Default for GenerateBenchConfig {
    fn default() -> Self {
        let train = BenchConfig::default();
        GenerateBenchConfig {
            vocab: train.vocab,
            context: train.context,
            layers: train.layers,
            heads: train.heads,
            width: train.width,
            batch: 8,
            prompt: 16,
            new_tokens: 128,
            warmup: 1,
            repeats: 5,
            threads: 2,
        }
    }
}

/// One side's generation result: new tokens per second over the whole call (prefill included),
/// median over the repeats.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GenerateBenchResult {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
}

/// Time triad's [`generate`](crate::model::generate()) on the workload.
pub fn bench_generate_triad(config: &GenerateBenchConfig, device: &Device) -> Result<GenerateBenchResult, BenchError> {
    use crate::model::{SamplingConfig, generate};
    let model = reference_model(config.vocab, config.context, config.layers, config.heads, config.width, device)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let prompts: Vec<Vec<u32>> = (0..config.batch)
        .map(|_| (0..config.prompt).map(|_| rng.random_range(0..config.vocab as u32)).collect())
        .collect();
    let sampling = SamplingConfig::greedy(config.new_tokens);
    let mut times = Vec::new();
    for repeat in 0..config.warmup + config.repeats {
        let start = Instant::now();
        let out = generate(&model, &prompts, &sampling)?;
        device.synchronize()?;
        if out.iter().any(|g| g.tokens.len() != config.new_tokens) {
            return Err(format!("generation stopped short of {} tokens", config.new_tokens).into());
        }
        if repeat >= config.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(GenerateBenchResult {
        implementation: "triad (candle 0.11)".into(),
        tokens_per_s: (config.batch * config.new_tokens) as f64 / times[times.len() / 2],
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Run `bench/generate_reference.py` with `python` and read its JSON line.
pub fn bench_generate_pytorch(
    config: &GenerateBenchConfig,
    python: &Path,
    script: &Path,
) -> Result<GenerateBenchResult, BenchError> {
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(["--vocab", &config.vocab.to_string(), "--context", &config.context.to_string()])
        .args(["--layers", &config.layers.to_string(), "--heads", &config.heads.to_string()])
        .args(["--width", &config.width.to_string(), "--batch", &config.batch.to_string()])
        .args(["--prompt", &config.prompt.to_string(), "--new-tokens", &config.new_tokens.to_string()])
        .args(["--repeats", &config.repeats.to_string(), "--warmup", &config.warmup.to_string()])
        .args(["--threads", &config.threads.to_string()]);
    run_reference(&mut command, script)
}

/// Training a pretrained model by name, `batch` rows of `context` tokens per step.
#[derive(Debug, Clone)]
pub struct PretrainedBenchConfig {
    /// One of [`PRETRAINED_MODELS`](crate::model::pretrained::PRETRAINED_MODELS).
    pub name: String,
    pub batch: usize,
    pub context: usize,
    pub warmup: usize,
    pub steps: usize,
    pub peak_gflops: f64,
    pub threads: usize,
}

impl PretrainedBenchConfig {
    /// SmolLM2-135M-Instruct, 4 rows of 128 tokens: about a second of 2-core work per step.
    pub fn smollm2(steps: usize, peak_gflops: f64, threads: usize) -> Self {
        PretrainedBenchConfig {
            name: "smollm2-135m-instruct".into(),
            batch: 4,
            context: 128,
            warmup: 2,
            steps,
            peak_gflops,
            threads,
        }
    }
}

/// The batch of `step`: inputs and next-token targets, `(n * 7919 + 17) mod vocab` at running
/// position `n` (offset by the step). A formula rather than a random stream so that
/// `bench/train_pretrained_reference.py` builds the very same batches.
pub fn formula_batch(step: usize, rows: usize, context: usize, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let token = |n: usize| ((((n + step * 1_000_003) as u64) * 7919 + 17) % vocab as u64) as u32;
    let inputs = (0..rows * context).map(token).collect();
    let targets = (1..=rows * context).map(token).collect();
    (inputs, targets)
}

/// Trains the pretrained model on both sides: triad here, then PyTorch on the same weights
/// (written to a scratch folder as safetensors + config.json) and the same batches. Returns
/// (triad, PyTorch).
pub fn bench_pretrained(
    config: &PretrainedBenchConfig,
    python: &Path,
    script: &Path,
    device: &Device,
) -> Result<(BenchResult, BenchResult), BenchError> {
    let model = match config.name.as_str() {
        "smollm2-135m-instruct" => crate::model::pretrained::load(&config.name, Path::new(""), device)?.model,
        other => {
            return Err(format!("no benchmark for pretrained model `{other}` (known: smollm2-135m-instruct)").into());
        }
    };
    let args = [
        ("--batch", config.batch.to_string()),
        ("--context", config.context.to_string()),
        ("--steps", config.steps.to_string()),
        ("--warmup", config.warmup.to_string()),
        ("--threads", config.threads.to_string()),
        ("--peak-gflops", config.peak_gflops.to_string()),
    ];
    let reference = run_reference_on_weights(|dir| model.save(dir), python, script, &args)?;

    let (vocab, shape) = (model.config().vocab_size(), (config.batch, config.context));
    let batch = |step| -> Result<(Tensor, Tensor), BenchError> {
        let (inputs, targets) = formula_batch(step, config.batch, config.context, vocab);
        let tensor = |ids| Tensor::from_vec(ids, shape, device).map_err(BenchError::from);
        Ok((tensor(inputs)?, tensor(targets)?))
    };
    let (median, first_loss) = time_training(&model, config.warmup, config.steps, 1e-5, batch)?;
    let tokens_per_s = (config.batch * config.context) as f64 / median;
    let model_config = model.config();
    // As the reference computes it: 6 per parameter (the tied embedding once, as the LM head)
    // plus attention's 12 * layers * context * width.
    let flops = 6.0 * model.num_parameters() as f64
        + 12.0 * (model_config.layers() * config.context * model_config.d_model()) as f64;
    let ours = BenchResult {
        implementation: format!("triad (candle 0.11, {})", kernels_label()),
        tokens_per_s,
        flops_per_token: flops,
        mfu: tokens_per_s * flops / (config.peak_gflops * 1e9),
        peak_rss_mib: peak_rss_mib(),
        first_loss: Some(first_loss),
    };
    Ok((ours, reference))
}
