//! Batched text generation with a KV cache: greedy, or sampled with temperature, top-k and top-p.
//!
//! [`generate()`] runs every prompt at once. Prompts of different lengths are left-padded to the
//! longest; each row's real tokens sit at positions 0.. exactly as if the prompt ran alone (GPT's
//! learned positions and Llama's rotations both need that), and pad keys are masked out per row.
//! One forward pass over the padded prompts fills the cache (prefill), then each step feeds one
//! token per row. Only the last position's logits, (B, V), come to the host, once per step, where
//! each row samples its next token:
//!
//! ```text
//! logprob = log_softmax(logits)[token]                (temperature 1: what PPO needs)
//! z = logits / temperature  ->  keep the top k  ->  keep the smallest top set of mass >= top_p
//!   ->  draw from softmax(z) over what is kept        (temperature 0: argmax)
//! ```
//!
//! Row r draws from its own generator, seeded from (seed, r), so a prompt's sample does not
//! depend on the other prompts of the batch. A row that emits a stop token stops (the stop token
//! is reported); it is fed a pad while the others go on, and its outputs are ignored.
//!
//! A small model's decode step is a chain of tiny ops; splitting each across threads costs more
//! in wake-ups than it saves, so such models split the batch's rows across the threads instead,
//! each part decoding on one thread (see [`SERIAL_DECODE_MACS`]).

use std::sync::{Mutex, PoisonError};

use candle_core::Tensor;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::init::stream;
use super::{KvCache, Model, ModelError, Rows, WithContext};

/// How to sample: `generation: (max_new_tokens: 24, temperature: 0.7, top_k: Some(50))` in an
/// experiment file; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// New tokens per prompt at most (fewer if the context runs out first).
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy (argmax).
    pub temperature: f64,
    /// Sample only among the k most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to at least p (nucleus).
    pub top_p: Option<f64>,
    /// Tokens that end a row (reported as its last token).
    pub stop_tokens: Vec<u32>,
    /// Stop tokens are not drawn before this many new tokens (Hugging Face's `min_new_tokens`):
    /// keeps RLHF from learning that the shortest answer is the safest. Not serialized when 0,
    /// so stage keys made before it existed still hold.
    #[serde(skip_serializing_if = "is_zero")]
    pub min_new_tokens: usize,
    /// Seed of the sampling generators.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 32,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            stop_tokens: Vec::new(),
            min_new_tokens: 0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingConfig { max_new_tokens, temperature: 0.0, ..SamplingConfig::default() }
    }

    /// Refuses settings that sample nothing or are not distributions.
    pub fn validate(&self) -> Result<(), ModelError> {
        let error = |message: String| Err(ModelError::Sampling(message));
        if self.max_new_tokens == 0 {
            return error("max_new_tokens must be at least 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return error(format!(
                "min_new_tokens ({}) is more than max_new_tokens ({})",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return error(format!("temperature must be finite and >= 0 (0 is greedy), got {}", self.temperature));
        }
        if self.top_k == Some(0) {
            return error("top_k must be at least 1 (leave it out to keep every token)".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return error(format!("top_p must be in (0, 1], got {p}"));
        }
        Ok(())
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Tokens in the prompt.
    pub prompt_len: usize,
    /// The new tokens only; the stop token is the last one if one was hit.
    pub tokens: Vec<u32>,
    /// log p(token) of each new token under the model at temperature 1 (the plain log-softmax
    /// of its logits, whatever the sampling settings).
    pub logprobs: Vec<f32>,
    /// Whether the row ended on a stop token.
    pub stopped: bool,
}

/// The id fed in place of tokens that do not exist (left padding, rows that stopped): any id
/// works, its keys are masked or its outputs ignored.
const PAD: u32 = 0;

/// Below this many multiply-adds per decode step (parameters x rows), generation runs on one
/// thread per part of the batch. Measured on 2 cores with the benchmark's reference model (4.2M
/// parameters, 8 rows): 3,033 new tokens/s on one thread against 1,643 with each op split across
/// two.
pub const SERIAL_DECODE_MACS: usize = 100_000_000;

/// `n` one-thread pools, made as first needed and kept for the process (fewer if a thread
/// cannot be started).
fn one_thread_pools(n: usize) -> Vec<&'static rayon::ThreadPool> {
    static POOLS: Mutex<Vec<&'static rayon::ThreadPool>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    while pools.len() < n {
        let i = pools.len();
        match rayon::ThreadPoolBuilder::new().num_threads(1).thread_name(move |_| format!("triad-decode-{i}")).build() {
            Ok(pool) => pools.push(Box::leak(Box::new(pool))),
            Err(_) => break,
        }
    }
    pools[..n.min(pools.len())].to_vec()
}

/// Continues every prompt (all at once, with a KV cache) as `config` says. Prompts may differ in
/// length; none may be empty or longer than the model's context. `max_new_tokens` is clipped to
/// what the context leaves after the longest prompt.
///
/// A small model's batch is split by rows across the threads, each part decoding on one thread
/// (rows never interact, and each row keeps its own generator): the reference model's decode
/// step is a chain of tiny ops that one core runs best. Large models decode the whole batch on
/// every thread, where reading the weights once per step is what counts.
pub fn generate(model: &Model, prompts: &[Vec<u32>], config: &SamplingConfig) -> Result<Vec<Generated>, ModelError> {
    config.validate()?;
    let (context, vocab) = (model.config().context(), model.config().vocab_size());
    for (row, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() || prompt.len() > context {
            return Err(ModelError::Input(format!(
                "prompt {row} has {} tokens: it must have 1 to {context} (the model's context)",
                prompt.len()
            )));
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Input(format!("prompt {row} holds token {id}, outside the vocabulary of {vocab}")));
        }
    }
    if let Some(t5) = model.as_t5() {
        // The decoder starts over at its start token: the whole context is the answer's.
        let config = SamplingConfig { max_new_tokens: config.max_new_tokens.min(context), ..config.clone() };
        return t5.generate(prompts, &config);
    }
    let Some(longest) = prompts.iter().map(Vec::len).max() else { return Ok(Vec::new()) };
    // The last new token is never fed back, so it may sit one past the context.
    let new_tokens = config.max_new_tokens.min(context + 1 - longest);
    let small = model.num_parameters().saturating_mul(prompts.len()) < SERIAL_DECODE_MACS;
    let threads = rayon::current_num_threads();
    let pools = if small && model.device().is_cpu() && threads > 1 {
        one_thread_pools(threads.min(prompts.len()))
    } else {
        Vec::new()
    };
    if pools.is_empty() {
        return decode(model, prompts, 0, new_tokens, config);
    }
    use rayon::prelude::*;
    let parts = pools.len();
    let rows = |part: usize| prompts.len() * part / parts..prompts.len() * (part + 1) / parts;
    let decoded: Vec<Result<Vec<Generated>, ModelError>> = (0..parts)
        .into_par_iter()
        .map(|part| pools[part].install(|| decode(model, &prompts[rows(part)], rows(part).start, new_tokens, config)))
        .collect();
    let mut out = Vec::with_capacity(prompts.len());
    for part in decoded {
        out.extend(part?);
    }
    Ok(out)
}

/// Decodes up to `new_tokens` tokens for each of the checked `prompts`, rows `first_row..` of
/// the caller's batch (each row's generator is seeded from its index there), on the current
/// thread pool.
fn decode(
    model: &Model,
    prompts: &[Vec<u32>],
    first_row: usize,
    new_tokens: usize,
    config: &SamplingConfig,
) -> Result<Vec<Generated>, ModelError> {
    let Some(longest) = prompts.iter().map(Vec::len).max() else { return Ok(Vec::new()) };
    let (b, device) = (prompts.len(), model.device());
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let capacity = longest + new_tokens - 1;
    let mut cache = KvCache::with_capacity(capacity);
    // The key mask of every position the cache will hold; each step attends over a prefix.
    let key_mask = Rows::left_padded(&pads, 0, 1, capacity, device)?.key_mask;
    let mut rngs: Vec<StdRng> =
        (first_row..first_row + b).map(|row| stream(config.seed, &format!("generate row {row}"))).collect();
    let mut out: Vec<Generated> = prompts
        .iter()
        .map(|p| Generated { prompt_len: p.len(), tokens: Vec::new(), logprobs: Vec::new(), stopped: false })
        .collect();

    let padded: Vec<u32> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| std::iter::repeat_n(PAD, pad).chain(p.iter().copied()))
        .collect();
    let mut input = Tensor::from_vec(padded, (b, longest), device).ctx(|| "prompt batch".into())?;
    let mut rows = Rows::left_padded(&pads, 0, longest, longest, device)?;
    for step in 0..new_tokens {
        let logits = last_logits(model, &input, &mut cache, &rows)?;
        draw_step(&mut out, &logits, step, config, &mut rngs);
        if step + 1 == new_tokens || out.iter().all(|g| g.stopped) {
            break;
        }
        // The token sampled at this step sits at padded offset longest + step.
        let offset = longest + step;
        let next: Vec<u32> = out.iter().map(|g| if g.stopped { PAD } else { g.tokens[step] }).collect();
        input = Tensor::from_vec(next, (b, 1), device).ctx(|| "next tokens".into())?;
        let positions: Vec<u32> = pads.iter().map(|&pad| (offset - pad) as u32).collect();
        rows = Rows {
            positions: Tensor::from_vec(positions, (b, 1), device).ctx(|| "next positions".into())?,
            key_mask: key_mask.as_ref().map(|m| m.narrow(1, 0, offset + 1)).transpose().ctx(|| "key mask".into())?,
        };
    }
    Ok(out)
}

/// Feeds `input` after the cached positions and returns each row's logits at the last position.
fn last_logits(model: &Model, input: &Tensor, cache: &mut KvCache, rows: &Rows) -> Result<Vec<Vec<f32>>, ModelError> {
    let hidden = model.hidden_rows(input, cache, rows)?;
    let t = input.dim(1).ctx(|| "input length".into())?;
    let last = hidden.narrow(1, t - 1, 1).ctx(|| "last position".into())?;
    let logits = model.lm_logits(&last)?;
    logits.squeeze(1).and_then(|l| l.to_vec2::<f32>()).ctx(|| "logits to the host".into())
}

/// Each row that has not stopped draws its token of decoding `step` from its logits and its own
/// generator; a stop token ends the row.
pub(crate) fn draw_step(
    out: &mut [Generated],
    logits: &[Vec<f32>],
    step: usize,
    config: &SamplingConfig,
    rngs: &mut [StdRng],
) {
    for ((generated, rng), logits) in out.iter_mut().zip(rngs.iter_mut()).zip(logits) {
        if generated.stopped {
            continue;
        }
        let (token, logprob) = next_token(logits, step, config, rng);
        generated.tokens.push(token);
        generated.logprobs.push(logprob);
        generated.stopped = config.stop_tokens.contains(&token);
    }
}

/// The token a row draws at decoding `step` from its logits, and its log-probability at
/// temperature 1: before `min_new_tokens`, drawn as if the stop tokens did not exist (the
/// log-probability stays the model's own).
fn next_token(logits: &[f32], step: usize, config: &SamplingConfig, rng: &mut StdRng) -> (u32, f32) {
    if step < config.min_new_tokens && !config.stop_tokens.is_empty() {
        let mut allowed = logits.to_vec();
        for &stop in &config.stop_tokens {
            if let Some(l) = allowed.get_mut(stop as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let (token, _) = sample(&allowed, config, rng);
        (token, log_softmax_at(logits, token as usize))
    } else {
        sample(logits, config, rng)
    }
}

/// Picks the next token from one row's logits; returns it with its log-probability at
/// temperature 1.
pub(crate) fn sample(logits: &[f32], config: &SamplingConfig, rng: &mut StdRng) -> (u32, f32) {
    let token = if config.temperature == 0.0 {
        argmax(logits)
    } else {
        let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / config.temperature).collect();
        let kept = filter(&scaled, config.top_k, config.top_p);
        let u = rng.random::<f64>();
        let mut cumulative = 0.0;
        // The fallback is the last kept token: rounding may leave the sum a hair under u.
        let mut choice = kept.last().map_or(0, |&(id, _)| id);
        for &(id, p) in &kept {
            cumulative += p;
            if u < cumulative {
                choice = id;
                break;
            }
        }
        choice as u32
    };
    (token, log_softmax_at(logits, token as usize))
}

/// The index of the largest logit (the first of equals).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log softmax(logits)[i], as the fused cross-entropy computes it (so that PPO's old and new
/// log-probs round alike); vectorised, where an f64 exp per logit cost about 3% of decoding.
fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    logits[i] - super::kernels::log_sum_exp(logits)
}

/// The tokens that may be drawn from scaled logits `z`, with their probabilities renormalised
/// over them: the top `top_k`, then of those the smallest most-likely set whose probability
/// reaches `top_p`. Sorted by decreasing probability (ties by id) when filtering; all tokens in
/// id order otherwise.
pub(crate) fn filter(z: &[f64], top_k: Option<usize>, top_p: Option<f64>) -> Vec<(usize, f64)> {
    let mut ids: Vec<usize> = (0..z.len()).collect();
    if top_k.is_some() || top_p.is_some() {
        let by_z = |a: &usize, b: &usize| z[*b].total_cmp(&z[*a]).then(a.cmp(b));
        if let Some(k) = top_k.filter(|&k| k < ids.len()) {
            ids.select_nth_unstable_by(k, by_z);
            ids.truncate(k);
        }
        ids.sort_unstable_by(by_z);
    }
    let max = ids.iter().map(|&i| z[i]).fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = ids.iter().map(|&i| (z[i] - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut kept: Vec<(usize, f64)> = ids.into_iter().zip(weights).map(|(i, w)| (i, w / total)).collect();
    if let Some(p) = top_p {
        let mut mass = 0.0;
        let keep = kept.iter().position(|&(_, q)| {
            mass += q;
            mass >= p
        });
        if let Some(last) = keep {
            kept.truncate(last + 1);
            let total: f64 = kept.iter().map(|&(_, q)| q).sum();
            kept.iter_mut().for_each(|(_, q)| *q /= total);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand::{RngCore, SeedableRng};

    use super::*;
    use crate::model::{GptConfig, LlamaConfig, ModelConfig};

    const VOCAB: usize = 37;
    const CONTEXT: usize = 16;

    fn gpt() -> ModelConfig {
        ModelConfig::Gpt(GptConfig {
            vocab_size: VOCAB,
            context: CONTEXT,
            layers: 2,
            heads: 4,
            d_model: 32,
            dropout: 0.1,
            bias: true,
        })
    }

    fn llama() -> ModelConfig {
        ModelConfig::Llama(LlamaConfig {
            vocab_size: VOCAB,
            context: CONTEXT,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            d_model: 32,
            ffn_hidden: 48,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tie_embeddings: false,
        })
    }

    fn models() -> Vec<(&'static str, Model)> {
        vec![
            ("gpt", Model::new(&gpt(), &Device::Cpu, 3).unwrap()),
            ("llama gqa", Model::new(&llama(), &Device::Cpu, 4).unwrap()),
        ]
    }

    fn prompt(seed: u64, len: usize) -> Vec<u32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.next_u32() % VOCAB as u32).collect()
    }

    /// Prompts of lengths 3, 7, 1 and 5.
    fn prompts() -> Vec<Vec<u32>> {
        [3, 7, 1, 5].iter().enumerate().map(|(i, &len)| prompt(i as u64 + 100, len)).collect()
    }

    fn sampled(max_new_tokens: usize, seed: u64) -> SamplingConfig {
        SamplingConfig { max_new_tokens, temperature: 1.0, seed, ..SamplingConfig::default() }
    }

    /// Generation without a cache, padding or batching: each row alone, the whole sequence
    /// through `Model::forward` at every step, sampling with the same row generator.
    fn uncached(model: &Model, prompts: &[Vec<u32>], config: &SamplingConfig, new_tokens: usize) -> Vec<Generated> {
        prompts
            .iter()
            .enumerate()
            .map(|(row, p)| {
                let mut rng = stream(config.seed, &format!("generate row {row}"));
                let mut seq = p.clone();
                let mut g = Generated { prompt_len: p.len(), tokens: vec![], logprobs: vec![], stopped: false };
                while g.tokens.len() < new_tokens && !g.stopped {
                    let input = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                    let logits = model.forward(&input, false).unwrap();
                    let last = logits.squeeze(0).unwrap().get(seq.len() - 1).unwrap().to_vec1::<f32>().unwrap();
                    let (token, logprob) = sample(&last, config, &mut rng);
                    g.tokens.push(token);
                    g.logprobs.push(logprob);
                    g.stopped = config.stop_tokens.contains(&token);
                    seq.push(token);
                }
                g
            })
            .collect()
    }

    fn assert_same(label: &str, a: &[Generated], b: &[Generated], tolerance: f32) {
        assert_eq!(a.len(), b.len(), "{label}");
        for (row, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(
                (x.prompt_len, &x.tokens, x.stopped),
                (y.prompt_len, &y.tokens, y.stopped),
                "{label}: row {row}"
            );
            for (i, (p, q)) in x.logprobs.iter().zip(&y.logprobs).enumerate() {
                assert!((p - q).abs() <= tolerance, "{label}: row {row} token {i}: logprob {p} vs {q}");
            }
        }
    }

    #[test]
    fn cached_batched_generation_equals_full_forward_per_row() {
        for (label, model) in models() {
            for config in [SamplingConfig::greedy(12), sampled(12, 7)] {
                let prompts = prompts();
                let ours = generate(&model, &prompts, &config).unwrap();
                // The longest prompt (7) leaves 16 - 7 + 1 = 10 new tokens: max_new_tokens is clipped.
                assert!(ours.iter().all(|g| g.tokens.len() == 10 && !g.stopped), "{label}: {ours:?}");
                let want = uncached(&model, &prompts, &config, 10);
                assert_same(&format!("{label}, temperature {}", config.temperature), &ours, &want, 1e-4);
                assert!(ours.iter().flat_map(|g| &g.logprobs).all(|&lp| lp <= 0.0 && lp.is_finite()));
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_other_rows_of_its_batch() {
        for (label, model) in models() {
            for config in [SamplingConfig::greedy(6), sampled(6, 11)] {
                let prompts = prompts();
                let batch = generate(&model, &prompts, &config).unwrap();
                for (row, p) in prompts.iter().enumerate() {
                    // Row `row` again, behind `row` other prompts of other lengths.
                    let mut other: Vec<Vec<u32>> = (0..row).map(|i| prompt(900 + i as u64, 2 + 3 * i)).collect();
                    other.push(p.clone());
                    let again = generate(&model, &other, &config).unwrap();
                    assert_same(&format!("{label}, row {row}"), &batch[row..=row], &again[row..], 1e-5);
                    if config.temperature == 0.0 {
                        let alone = generate(&model, std::slice::from_ref(p), &config).unwrap();
                        assert_same(&format!("{label}, row {row} alone"), &batch[row..=row], &alone, 1e-5);
                    }
                }
            }
        }
    }

    /// Split by rows across 1, 2 or 3 threads, a batch decodes to the same tokens, log-probs
    /// and stops: each row samples from its own generator and clips to the whole batch's room.
    #[test]
    fn splitting_the_batch_across_threads_changes_no_row() {
        for (label, model) in models() {
            // Prompt 1 (7 tokens) leaves 10 new tokens; the parts without it must stop there too.
            let config = SamplingConfig { stop_tokens: vec![5], ..sampled(12, 3) };
            let prompts = prompts();
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| generate(&model, &prompts, &config)).unwrap()
            };
            let whole = on(1);
            assert!(whole.iter().all(|g| g.tokens.len() <= 10), "{label}: {whole:?}");
            for threads in [2, 3] {
                assert_same(&format!("{label}, {threads} threads"), &on(threads), &whole, 1e-5);
            }
        }
    }

    #[test]
    fn stop_tokens_end_their_row_only() {
        for (label, model) in models() {
            let prompts = prompts();
            let free = generate(&model, &prompts, &sampled(8, 3)).unwrap();
            // A token that row 1 first emits at step 2 stops it there.
            let stop = free[1].tokens[2];
            assert!(!free[1].tokens[..2].contains(&stop), "{label}: pick another seed");
            let config = SamplingConfig { stop_tokens: vec![stop], ..sampled(8, 3) };
            let stopped = generate(&model, &prompts, &config).unwrap();
            for (row, (s, f)) in stopped.iter().zip(&free).enumerate() {
                let cut = f.tokens.iter().position(|&t| t == stop);
                let end = cut.map_or(f.tokens.len(), |i| i + 1);
                assert_eq!(s.tokens, f.tokens[..end], "{label}: row {row}");
                assert_eq!(s.logprobs.len(), s.tokens.len());
                assert_eq!(s.stopped, cut.is_some(), "{label}: row {row}");
            }
            assert_eq!(stopped[1].tokens.len(), 3);
            assert!(stopped[1].stopped);
            // Every row stops at once: generation ends after the first token.
            let all: Vec<u32> = (0..VOCAB as u32).collect();
            let config = SamplingConfig { stop_tokens: all, ..sampled(8, 3) };
            let first = generate(&model, &prompts, &config).unwrap();
            assert!(first.iter().zip(&free).all(|(a, f)| a.stopped && a.tokens == f.tokens[..1]), "{label}");
        }
    }

    #[test]
    fn no_stop_token_is_drawn_before_the_minimum_length() {
        for (label, model) in models() {
            let prompts = prompts();
            // Every token but one stops a row: only the minimum keeps rows going.
            let keep = 5u32;
            let stops: Vec<u32> = (0..VOCAB as u32).filter(|&t| t != keep).collect();
            let config = SamplingConfig { stop_tokens: stops, min_new_tokens: 4, ..sampled(8, 3) };
            for g in generate(&model, &prompts, &config).unwrap() {
                assert_eq!(&g.tokens[..4], &[keep; 4], "{label}: the only token that does not stop");
                assert_eq!(g.tokens.len(), 5, "{label}: the first draw after the minimum stops");
                assert!(
                    g.logprobs[..4].iter().all(|&l| l < 0.0 && l.is_finite()),
                    "{label}: the model's own log-probs"
                );
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_decide_samples() {
        for (label, model) in models() {
            let prompts = prompts();
            let greedy = generate(&model, &prompts, &SamplingConfig::greedy(8)).unwrap();
            let top1 = generate(&model, &prompts, &SamplingConfig { top_k: Some(1), ..sampled(8, 5) }).unwrap();
            assert_same(&format!("{label}: top-k 1"), &greedy, &top1, 0.0);
            let tiny_p = generate(&model, &prompts, &SamplingConfig { top_p: Some(1e-9), ..sampled(8, 5) }).unwrap();
            assert_same(&format!("{label}: top-p 1e-9"), &greedy, &tiny_p, 0.0);

            let a = generate(&model, &prompts, &sampled(8, 5)).unwrap();
            let a2 = generate(&model, &prompts, &sampled(8, 5)).unwrap();
            let b = generate(&model, &prompts, &sampled(8, 6)).unwrap();
            assert_same(&format!("{label}: same seed"), &a, &a2, 0.0);
            let tokens = |g: &[Generated]| g.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>();
            assert_ne!(tokens(&a), tokens(&b), "{label}: the seed changes nothing");
            assert_ne!(tokens(&a), tokens(&greedy), "{label}: sampling at temperature 1 is greedy");
        }
    }

    #[test]
    fn filtering_keeps_top_k_then_the_smallest_set_reaching_top_p() {
        let z: Vec<f64> = [0.15f64, 0.5, 0.05, 0.3].iter().map(|p| p.ln()).collect();
        let ids = |kept: &[(usize, f64)]| kept.iter().map(|&(i, _)| i).collect::<Vec<_>>();
        let close = |kept: &[(usize, f64)], want: &[f64]| {
            assert_eq!(kept.len(), want.len());
            for (&(_, p), w) in kept.iter().zip(want) {
                assert!((p - w).abs() < 1e-12, "{kept:?} vs {want:?}");
            }
        };
        let all = filter(&z, None, None);
        assert_eq!(ids(&all), [0, 1, 2, 3]);
        close(&all, &[0.15, 0.5, 0.05, 0.3]);
        let k2 = filter(&z, Some(2), None);
        assert_eq!(ids(&k2), [1, 3]);
        close(&k2, &[0.625, 0.375]);
        assert_eq!(ids(&filter(&z, Some(10), None)), [1, 3, 0, 2]);
        // Masses in order: 0.5, 0.8, 0.95, 1.
        assert_eq!(ids(&filter(&z, None, Some(0.45))), [1]);
        assert_eq!(ids(&filter(&z, None, Some(0.75))), [1, 3]);
        assert_eq!(ids(&filter(&z, None, Some(0.81))), [1, 3, 0]);
        assert_eq!(ids(&filter(&z, None, Some(1.0))), [1, 3, 0, 2]);
        close(&filter(&z, None, Some(0.75)), &[0.625, 0.375]);
        // Top-p applies to the distribution top-k leaves: 0.5/0.95, 0.8/0.95 = 0.842, 1.
        assert_eq!(ids(&filter(&z, Some(3), Some(0.8))), [1, 3]);
        assert_eq!(ids(&filter(&z, Some(3), Some(0.85))), [1, 3, 0]);
        // Ties keep the lower id first.
        assert_eq!(ids(&filter(&[1.0, 2.0, 2.0, 0.0], Some(2), None)), [1, 2]);
    }

    #[test]
    fn temperature_sharpens_and_greedy_takes_the_argmax() {
        let logits = [1.0f32, 3.0, 2.0];
        let mut rng = StdRng::seed_from_u64(0);
        let (t, lp) = sample(&logits, &SamplingConfig::greedy(1), &mut rng);
        assert_eq!(t, 1);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((lp as f64 - (3.0 - z.ln())).abs() < 1e-6);
        // At a low temperature almost every draw is the argmax; the logprob stays at temperature 1.
        let cold = SamplingConfig { temperature: 0.05, ..SamplingConfig::default() };
        let draws: Vec<(u32, f32)> = (0..200).map(|_| sample(&logits, &cold, &mut rng)).collect();
        assert!(draws.iter().all(|&(t, l)| t == 1 && l == lp));
        let hot = SamplingConfig { temperature: 1.0, ..SamplingConfig::default() };
        let counts = (0..3000).fold([0usize; 3], |mut c, _| {
            c[sample(&logits, &hot, &mut rng).0 as usize] += 1;
            c
        });
        // softmax([1, 3, 2]) = 0.090, 0.665, 0.245.
        for (c, p) in counts.iter().zip([0.090, 0.665, 0.245]) {
            assert!((*c as f64 / 3000.0 - p).abs() < 0.03, "{counts:?}");
        }
    }

    #[test]
    fn bad_settings_and_prompts_are_refused_with_a_reason() {
        let bad = [
            SamplingConfig { max_new_tokens: 0, ..SamplingConfig::default() },
            SamplingConfig { temperature: -0.1, ..SamplingConfig::default() },
            SamplingConfig { temperature: f64::NAN, ..SamplingConfig::default() },
            SamplingConfig { top_k: Some(0), ..SamplingConfig::default() },
            SamplingConfig { top_p: Some(0.0), ..SamplingConfig::default() },
            SamplingConfig { top_p: Some(1.5), ..SamplingConfig::default() },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(ModelError::Sampling(_))), "{config:?}");
        }
        let model = Model::new(&gpt(), &Device::Cpu, 0).unwrap();
        let config = SamplingConfig::greedy(4);
        for prompts in [vec![vec![1, 2], vec![]], vec![vec![1; CONTEXT + 1]], vec![vec![VOCAB as u32]]] {
            let e = generate(&model, &prompts, &config).unwrap_err();
            assert!(matches!(e, ModelError::Input(_)), "{e}");
        }
        assert!(generate(&model, &[], &config).unwrap().is_empty());
        // A prompt that fills the context still gets its one next token.
        let full = generate(&model, &[vec![1; CONTEXT]], &config).unwrap();
        assert_eq!(full[0].tokens.len(), 1);
    }

    #[test]
    fn sampling_config_reads_from_ron_with_defaults() {
        let c: SamplingConfig = ron::from_str("(max_new_tokens: 24, temperature: 0.7, top_k: Some(50))").unwrap();
        assert_eq!(
            c,
            SamplingConfig { max_new_tokens: 24, temperature: 0.7, top_k: Some(50), ..SamplingConfig::default() }
        );
        let d: SamplingConfig = ron::from_str("()").unwrap();
        assert_eq!(d, SamplingConfig::default());
        assert_eq!((d.max_new_tokens, d.temperature, d.seed), (32, 1.0, 0));
        let e = ron::from_str::<SamplingConfig>("(temprature: 0.7)").unwrap_err().to_string();
        assert!(e.contains("temprature"), "{e}");
    }

    #[test]
    fn left_padded_forward_equals_each_row_alone() {
        for (label, model) in models() {
            let prompts = prompts();
            let longest = 7;
            let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
            let padded: Vec<u32> =
                prompts.iter().zip(&pads).flat_map(|(p, &pad)| std::iter::repeat_n(5, pad).chain(p.clone())).collect();
            let input = Tensor::from_vec(padded, (prompts.len(), longest), &Device::Cpu).unwrap();
            let hidden = model.hidden_left_padded(&input, &pads, false).unwrap();
            for (row, p) in prompts.iter().enumerate() {
                let alone = model
                    .hidden(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), false)
                    .unwrap();
                let ours = hidden.get(row).unwrap().narrow(0, pads[row], p.len()).unwrap();
                let d = (ours - alone.squeeze(0).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-5, "{label}: row {row} differs by {d}");
            }
            // Pad positions stay finite even though all their keys are masked.
            let all = hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(all.iter().all(|x| x.is_finite()), "{label}");
            assert!(model.hidden_left_padded(&input, &[0, 7, 0, 0], false).is_err());
        }
    }
}
