//! `triad bench train --profile`: where a training step of the reference workload spends its
//! time. The whole step is split into forward (to the loss), backward and optimizer, medians over
//! the timed steps; the forward's main parts (embeddings, attention, MLP, norms, LM head + loss)
//! are then timed by running each piece alone on the step's shapes, forward and backward, with
//! the same weight shapes and as many times as the model runs it per step (once per layer).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::{BenchConfig, BenchError};
use crate::model::attention::{CausalMasks, GptAttention, Pass};
use crate::model::decays;
use crate::model::init::{normal_values, stream};
use crate::model::kernels::{self, cross_entropy_rows};
use crate::model::linear::{Layout, Linear, embed};
use crate::model::mlp::GeluMlp;
use crate::model::norm::{LAYER_NORM_EPS, LayerNorm};
use crate::train::loss::lm_loss;
use crate::train::optimizer::{AdamW, AdamWConfig};

/// Median seconds of one piece, forward and backward.
#[derive(Debug, Clone)]
pub struct PartTime {
    pub name: String,
    /// How many times a step runs the piece (the layers, for per-block pieces).
    pub per_step: usize,
    /// Median seconds of all `per_step` runs together.
    pub forward: f64,
    pub backward: f64,
}

/// Where one training step's time goes, medians in seconds.
#[derive(Debug, Clone)]
pub struct StepProfile {
    /// Which kernels ran ([`kernels::active`]).
    pub kernels: kernels::Kernels,
    pub step: f64,
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    /// The forward's main parts, each timed alone.
    pub parts: Vec<PartTime>,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::from(e.to_string())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times the full step phase by phase, then the forward's parts one by one.
pub fn profile_train(config: &BenchConfig, device: &Device) -> Result<StepProfile, BenchError> {
    let model =
        super::reference_model(config.vocab, config.context, config.layers, config.heads, config.width, device)?;
    let vars = model.vars();
    let mut optimizer = AdamW::new(&vars, decays, AdamWConfig::default()).map_err(err)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (b, t) = (config.batch, config.context);
    let tokens = |rng: &mut rand::rngs::StdRng| -> Result<Tensor, BenchError> {
        let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..config.vocab as u32)).collect();
        Tensor::from_vec(ids, (b, t), device).map_err(err)
    };
    let (mut forward, mut backward, mut update, mut step) = (vec![], vec![], vec![], vec![]);
    for i in 0..config.warmup + config.steps {
        let (inputs, targets) = (tokens(&mut rng)?, tokens(&mut rng)?);
        let start = Instant::now();
        let loss = lm_loss(&model, &inputs, &targets, true).map_err(err)?;
        device.synchronize().map_err(err)?;
        let forward_done = Instant::now();
        let store = loss.backward().map_err(err)?;
        let grads: HashMap<String, Tensor> = vars
            .iter()
            .filter_map(|(name, var)| store.get(var.as_tensor()).map(|g| (name.clone(), g.clone())))
            .collect();
        device.synchronize().map_err(err)?;
        let backward_done = Instant::now();
        optimizer.step(&grads, 1e-3, Some(1.0)).map_err(err)?;
        device.synchronize().map_err(err)?;
        let end = Instant::now();
        if i >= config.warmup {
            forward.push((forward_done - start).as_secs_f64());
            backward.push((backward_done - forward_done).as_secs_f64());
            update.push((end - backward_done).as_secs_f64());
            step.push((end - start).as_secs_f64());
        }
    }
    let parts = profile_parts(config, device)?;
    Ok(StepProfile {
        kernels: kernels::active(),
        step: median(step),
        forward: median(forward),
        backward: median(backward),
        optimizer: median(update),
        parts,
    })
}

/// A random variable of `shape` (std 0.02, as the model's init).
fn var(seed: u64, shape: &[usize], device: &Device) -> Result<Var, BenchError> {
    let n = shape.iter().product();
    let t = Tensor::from_vec(normal_values(&mut stream(seed, "profile"), n, 0.02), shape, device).map_err(err)?;
    Var::from_tensor(&t).map_err(err)
}

/// Forward and backward medians of `run`, which returns the piece's output (reduced to a scalar
/// by a sum for the backward, whose own cost is negligible next to the piece's).
fn time_part(
    name: &str,
    per_step: usize,
    repeats: usize,
    run: impl Fn() -> candle_core::Result<Tensor>,
) -> Result<PartTime, BenchError> {
    let (mut forward, mut backward) = (vec![], vec![]);
    for i in 0..repeats + 1 {
        let (mut f, mut bwd) = (0.0, 0.0);
        for _ in 0..per_step {
            let start = Instant::now();
            let out = run().map_err(err)?;
            let mid = Instant::now();
            let _grads = out.sum_all().and_then(|s| s.backward()).map_err(err)?;
            f += (mid - start).as_secs_f64();
            bwd += mid.elapsed().as_secs_f64();
        }
        if i > 0 {
            forward.push(f);
            backward.push(bwd);
        }
    }
    Ok(PartTime { name: name.into(), per_step, forward: median(forward), backward: median(backward) })
}

fn profile_parts(config: &BenchConfig, device: &Device) -> Result<Vec<PartTime>, BenchError> {
    let (b, t, d, v, layers) = (config.batch, config.context, config.width, config.vocab, config.layers);
    let repeats = config.steps;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..v as u32)).collect();
    let idx = Tensor::from_vec(ids.clone(), (b, t), device).map_err(err)?;
    let targets = Tensor::from_vec(ids, b * t, device).map_err(err)?;
    let wte = var(1, &[v, d], device)?;
    let wpe = var(2, &[t, d], device)?;
    let x = var(3, &[b, t, d], device)?;
    let linear = |seed: u64, d_in: usize, d_out: usize| -> Result<Linear, BenchError> {
        Ok(Linear {
            weight: var(seed, &[d_in, d_out], device)?.as_tensor().clone(),
            bias: Some(var(seed + 100, &[d_out], device)?.as_tensor().clone()),
            layout: Layout::InOut,
        })
    };
    let attention = GptAttention { c_attn: linear(4, d, 3 * d)?, c_proj: linear(5, d, d)?, heads: config.heads };
    let mlp = GeluMlp { c_fc: linear(6, d, 4 * d)?, c_proj: linear(7, 4 * d, d)? };
    let norm = LayerNorm {
        weight: var(8, &[d], device)?.as_tensor().clone(),
        bias: Some(var(9, &[d], device)?.as_tensor().clone()),
        eps: LAYER_NORM_EPS,
    };
    let masks = CausalMasks::new(device);
    let pass = Pass { pos: 0, positions: None, mask: masks.get(t, t).map_err(err)?, key_mask: None, dropout: None };
    let scores = var(10, &[b, config.heads, t, t], device)?;
    let qkv = var(12, &[b, t, 3 * d], device)?;
    let zero = Tensor::zeros((), candle_core::DType::F32, device).map_err(err)?;
    let head = Linear { weight: wte.as_tensor().clone(), bias: None, layout: Layout::OutIn };
    Ok(vec![
        time_part("embeddings", 1, repeats, || {
            embed(wte.as_tensor(), &idx)?.broadcast_add(&wpe.as_tensor().narrow(0, 0, t)?)
        })?,
        time_part("attention (c_attn, softmax(q kT) v, c_proj)", layers, repeats, || {
            attention.forward(x.as_tensor(), &pass, None)
        })?,
        if kernels::fused(&[qkv.as_tensor()]) {
            time_part("  of which the fused core (scores, mask, softmax, ·v)", layers, repeats, || {
                kernels::causal_attention_qkv(qkv.as_tensor(), config.heads, None)
            })?
        } else {
            time_part("  of which softmax (masked)", layers, repeats, || {
                let att = scores.as_tensor().broadcast_add(pass.mask.as_ref().unwrap_or(&zero))?;
                crate::model::attention::softmax_last_dim(&att)
            })?
        },
        time_part("MLP (c_fc, GELU, c_proj)", layers, repeats, || mlp.forward(x.as_tensor()))?,
        time_part("  of which c_fc + GELU", layers, repeats, || mlp.c_fc.forward_gelu(x.as_tensor()))?,
        time_part("  of which c_fc (matmul + bias)", layers, repeats, || mlp.c_fc.forward(x.as_tensor()))?,
        time_part("LayerNorms", 2 * layers + 1, repeats, || norm.forward(x.as_tensor()))?,
        time_part("LM head + loss", 1, repeats, || {
            if kernels::fused(&[x.as_tensor()]) {
                return kernels::lm_head_cross_entropy(x.as_tensor(), wte.as_tensor(), &targets.reshape((b, t))?)?
                    .mean_all();
            }
            let logits = head.forward(x.as_tensor())?.reshape((b * t, v))?;
            cross_entropy_rows(&logits, &targets)?.mean_all()
        })?,
    ])
}

impl std::fmt::Display for StepProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |s: f64| 1e3 * s;
        let pct = |s: f64| 100.0 * s / self.step;
        writeln!(f, "kernels: {:?}", self.kernels)?;
        writeln!(f, "| phase | ms | % of step |\n|---|---|---|")?;
        for (name, s) in [
            ("forward (to the loss)", self.forward),
            ("backward", self.backward),
            ("optimizer (AdamW, clipping)", self.optimizer),
            ("whole step", self.step),
        ] {
            writeln!(f, "| {name} | {:.1} | {:.0}% |", ms(s), pct(s))?;
        }
        writeln!(f, "\nforward's parts, each run alone on the step's shapes (x runs per step):")?;
        writeln!(f, "| part | runs | forward ms | backward ms | % of step (fwd + bwd) |\n|---|---|---|---|---|")?;
        for p in &self.parts {
            writeln!(
                f,
                "| {} | {} | {:.1} | {:.1} | {:.0}% |",
                p.name,
                p.per_step,
                ms(p.forward),
                ms(p.backward),
                pct(p.forward + p.backward)
            )?;
        }
        Ok(())
    }
}
