//! The fused training kernels change nothing but speed: a small version of the reference
//! workload (and a Llama with RMSNorm and grouped-query heads) trained for 50 AdamW steps with
//! the fused kernels follows the plain tensor-op composition's loss curve to 1e-4, and so do both
//! T5 styles (encoder-decoder, teacher-forced).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use triad::model::kernels::{Kernels, with_kernels};
use triad::model::{GptConfig, LlamaConfig, Model, ModelConfig, decays};
use triad::train::{AdamW, AdamWConfig, lm_loss};

/// Losses of `steps` steps from the same init on the same random batches.
fn loss_curve(config: &ModelConfig, steps: usize, kernels: Kernels) -> Vec<f32> {
    with_kernels(kernels, || {
        let device = Device::Cpu;
        let model = Model::new(config, &device, 7).expect("a model");
        let vars = model.vars();
        let mut optimizer = AdamW::new(&vars, decays, AdamWConfig::default()).expect("an optimizer");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (batch, context, vocab) = (4, config.context(), 96u32);
        let mut losses = Vec::new();
        for _ in 0..steps {
            // A learnable pattern (next token = token + 1) so that the loss falls steadily.
            let rows: Vec<Vec<u32>> = (0..batch)
                .map(|_| {
                    let start = rng.random_range(0..vocab);
                    (0..=context as u32).map(|i| (start + i) % vocab).collect()
                })
                .collect();
            let inputs: Vec<u32> = rows.iter().flat_map(|r| r[..context].to_vec()).collect();
            let targets: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
            let inputs = Tensor::from_vec(inputs, (batch, context), &device).expect("inputs");
            let targets = Tensor::from_vec(targets, (batch, context), &device).expect("targets");
            let loss = lm_loss(&model, &inputs, &targets, true).expect("a loss");
            losses.push(step(&loss, &vars, &mut optimizer));
        }
        losses
    })
}

/// Backpropagates `loss`, checks that every variable got a gradient and takes an AdamW step;
/// returns the loss.
fn step(loss: &Tensor, vars: &[(String, candle_core::Var)], optimizer: &mut AdamW) -> f32 {
    let store = loss.backward().expect("gradients");
    let grads: HashMap<String, Tensor> =
        vars.iter().filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
    assert_eq!(grads.len(), vars.len(), "every variable gets a gradient");
    optimizer.step(&grads, 3e-3, Some(1.0)).expect("a step");
    loss.to_scalar::<f32>().expect("a scalar")
}

fn assert_same_curve(config: &ModelConfig) {
    let fused = loss_curve(config, 50, Kernels::Fused);
    let plain = loss_curve(config, 50, Kernels::Plain);
    let (first, last) = (plain[0], plain[49]);
    assert!(last < 0.7 * first, "the model learns: {first} -> {last}");
    for (step, (f, p)) in fused.iter().zip(&plain).enumerate() {
        assert!((f - p).abs() <= 1e-4 * p.abs().max(1.0), "step {step}: fused {f} vs plain {p}");
    }
}

#[test]
fn gpt_trains_on_the_same_loss_curve_with_fused_kernels() {
    let config = ModelConfig::Gpt(GptConfig {
        vocab_size: 96,
        context: 32,
        layers: 2,
        heads: 4,
        d_model: 64,
        dropout: 0.0,
        bias: true,
    });
    assert_same_curve(&config);
}

#[test]
fn llama_trains_on_the_same_loss_curve_with_fused_kernels() {
    let config = ModelConfig::Llama(LlamaConfig {
        vocab_size: 96,
        context: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        d_model: 64,
        ffn_hidden: 128,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tie_embeddings: true,
    });
    assert_same_curve(&config);
}

/// T5's losses of `steps` teacher-forced steps on the same batches: a learnable pattern (the
/// decoder copies the encoder's tokens, each plus one).
fn t5_loss_curve(feed_forward: triad::model::t5::FeedForward, tied: bool, steps: usize, kernels: Kernels) -> Vec<f32> {
    use triad::model::t5::T5Config;
    with_kernels(kernels, || {
        let device = Device::Cpu;
        let config = T5Config {
            vocab_size: 96,
            context: 64,
            d_model: 32,
            d_kv: 8,
            d_ff: 64,
            num_layers: 2,
            num_decoder_layers: 2,
            num_heads: 4,
            relative_attention_num_buckets: 16,
            relative_attention_max_distance: 32,
            layer_norm_epsilon: 1e-6,
            feed_forward,
            tie_word_embeddings: tied,
            decoder_start_token_id: 0,
        };
        let model = Model::new(&ModelConfig::T5(config), &device, 7).expect("a model");
        let vars = model.vars();
        let t5 = model.as_t5().expect("a T5");
        let mut optimizer = AdamW::new(&vars, |_| true, AdamWConfig::default()).expect("an optimizer");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (batch, length) = (4, 16);
        let mut losses = Vec::new();
        for _ in 0..steps {
            let source: Vec<u32> = (0..batch * length).map(|_| rng.random_range(2..95u32)).collect();
            let labels: Vec<u32> = source.iter().map(|t| t + 1).collect();
            let decoder: Vec<u32> = labels
                .chunks(length)
                .flat_map(|row| std::iter::once(0).chain(row[..length - 1].iter().copied()))
                .collect();
            let tensor = |v: Vec<u32>| Tensor::from_vec(v, (batch, length), &device).expect("ids");
            let loss = t5.loss(&tensor(source), None, &tensor(decoder), &tensor(labels)).expect("a loss");
            losses.push(step(&loss, &vars, &mut optimizer));
        }
        losses
    })
}

#[test]
fn t5_trains_on_the_same_loss_curve_with_fused_kernels() {
    use triad::model::t5::FeedForward;
    for (feed_forward, tied) in [(FeedForward::GatedGelu, false), (FeedForward::Relu, true)] {
        let fused = t5_loss_curve(feed_forward, tied, 50, Kernels::Fused);
        let plain = t5_loss_curve(feed_forward, tied, 50, Kernels::Plain);
        let (first, last) = (plain[0], plain[49]);
        // The tied original T5 (embeddings drawn N(0, 1), the head rescaled) learns more slowly.
        assert!(last < first - 0.3, "{feed_forward:?}: the model learns: {first} -> {last}");
        for (step, (f, p)) in fused.iter().zip(&plain).enumerate() {
            assert!((f - p).abs() <= 1e-4 * p.abs().max(1.0), "{feed_forward:?} step {step}: fused {f} vs plain {p}");
        }
    }
}
