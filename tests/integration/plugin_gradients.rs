//! A loss plugin in training gives the same parameter gradients as the host's native loss on the
//! same batch: `ppo-clip` against native PPO (policy, clipped value and entropy terms),
//! `label-smoothed-ce` (epsilon 0) against native SFT cross-entropy (a GPT's and a T5's), and
//! `dpo` against the DPO stage's native DPO, IPO and conservative DPO losses, and `ppo-clip`
//! against native GRPO (token and sequence normalisation: the weights reach the plugin as its
//! mask). Both run a real model forward and backward; the plugin runs in the sandbox through the
//! surrogate-gradient contract.

use crate::support;

use std::collections::HashMap;

use candle_core::{D, Device, Tensor};
use triad::model::{GptConfig, Model, ModelConfig, ScalarHead};
use triad::stages::dpo::{EncodedPair, preference_loss};
use triad::stages::layout::Encoded;
use triad::stages::sft::{SftBatch, seq2seq_nll, seq2seq_plugin_loss, sft_plugin_loss};
use triad::train::dpo::{DpoConfig, DpoLossType};
use triad::train::masked_lm_loss;
use triad::train::ppo::{PpoBatch, PpoLossConfig, ppo_loss};
use triad::train::rl::update::ppo_plugin_loss;

fn model() -> Model {
    let config = ModelConfig::Gpt(GptConfig {
        vocab_size: 64,
        context: 16,
        layers: 2,
        heads: 2,
        d_model: 32,
        dropout: 0.0,
        bias: true,
    });
    Model::new(&config, &Device::Cpu, 11).expect("model")
}

/// Every gradient, by variable name.
fn gradients(loss: &Tensor, vars: &[(String, candle_core::Var)]) -> HashMap<String, Vec<f32>> {
    let store = loss.backward().expect("backward");
    vars.iter()
        .filter_map(|(name, var)| {
            let g = store.get(var.as_tensor())?;
            Some((name.clone(), g.flatten_all().and_then(|g| g.to_vec1()).expect("values")))
        })
        .collect()
}

fn assert_same_gradients(native: &HashMap<String, Vec<f32>>, plugin: &HashMap<String, Vec<f32>>, vars: usize) {
    assert_eq!(native.len(), vars, "every variable gets a native gradient");
    assert_eq!(native.len(), plugin.len());
    let mut largest = 0f32;
    for (name, want) in native {
        let got = &plugin[name];
        for (a, b) in want.iter().zip(got) {
            let difference = (a - b).abs();
            assert!(difference <= 1e-5, "`{name}`: native {a} vs plugin {b}");
            largest = largest.max(a.abs());
        }
    }
    assert!(largest > 1e-4, "the gradients are not all (near) zero: largest {largest}");
}

#[test]
fn the_ppo_clip_plugin_and_native_ppo_give_the_same_parameter_gradients() {
    let model = model();
    let head = ScalarHead::new(32, &Device::Cpu, 5).expect("head");
    let mut vars = model.vars();
    vars.extend(head.vars());
    let rows = [[3u32, 9, 12, 40, 41, 42, 43], [5, 6, 50, 51, 52, 0, 0]];
    let responses = [(3usize, 4usize), (2, 3)];
    let plugin = support::load("ppo-clip", r#"{"clip": 0.2, "value_clip": 0.2, "vf_coef": 0.1, "ent_coef": 0.01}"#)
        .into_loss()
        .expect("a loss plugin");

    let features = || {
        let tokens = Tensor::new(&rows, &Device::Cpu).expect("tokens");
        let hidden = model.hidden(&tokens, false).expect("hidden");
        let logp =
            candle_nn::ops::log_softmax(&model.lm_logits(&hidden).expect("logits"), D::Minus1).expect("log-softmax");
        let values = head.forward(&hidden).expect("values");
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (r, &(prompt, len)) in responses.iter().enumerate() {
            for j in 0..len {
                positions.push((r * 7 + prompt + j - 1) as u32);
                targets.push(rows[r][prompt + j]);
            }
        }
        let n = positions.len();
        let index = Tensor::from_vec(positions, n, &Device::Cpu).expect("index");
        let flat = logp.reshape((14, 64)).and_then(|l| l.index_select(&index, 0)).expect("flat");
        let targets = Tensor::from_vec(targets, (n, 1), &Device::Cpu).expect("targets");
        let logprob = flat.gather(&targets, 1).and_then(|l| l.squeeze(1)).expect("logprob");
        let entropy =
            (flat.exp().expect("p") * &flat).and_then(|x| x.sum(D::Minus1)).and_then(|x| x.neg()).expect("entropy");
        let value = values.reshape(14).and_then(|v| v.index_select(&index, 0)).expect("value");
        // A sampling policy a little away from the current one, so some ratios are clipped.
        let shift: Vec<f32> = (0..n).map(|i| [0.3f32, -0.25, 0.05, -0.4, 0.1, 0.35, -0.02][i]).collect();
        let old_logprob = (logprob.detach() + Tensor::from_vec(shift, n, &Device::Cpu).expect("shift")).expect("old");
        let constant = |v: &[f32]| Tensor::from_slice(v, n, &Device::Cpu).expect("constant");
        PpoBatch {
            logprob,
            value: Some(value),
            entropy: Some(entropy),
            old_logprob,
            old_value: constant(&[0.1, -0.2, 0.3, 0.0, 0.05, -0.1, 0.2]),
            advantage: constant(&[1.0, 0.5, 0.8, -1.2, 0.3, 0.9, -0.7]),
            returns: constant(&[0.6, -0.9, 0.1, 0.4, -0.3, 0.7, 0.5]),
        }
    };
    let config = PpoLossConfig { clip: 0.2, value_clip: 0.2, value_coef: 0.1, entropy_coef: 0.01 };
    let (native_loss, native_metrics) = ppo_loss(&features(), &config).expect("native loss");
    let clip_fraction =
        native_metrics.iter().find(|(n, _)| n == "clip_fraction").map(|(_, v)| *v).expect("clip fraction");
    assert!(clip_fraction > 0.0 && clip_fraction < 1.0, "some ratios clipped, some not: {clip_fraction}");
    let native = gradients(&native_loss, &vars);
    let (surrogate, _) = ppo_plugin_loss(&plugin, &features(), &[4, 3]).expect("plugin loss");
    let value = surrogate.to_scalar::<f32>().expect("value");
    let want = native_loss.to_scalar::<f32>().expect("native value");
    assert!((value - want).abs() < 1e-5, "plugin loss {value} vs native {want}");
    assert_same_gradients(&native, &gradients(&surrogate, &vars), vars.len());
}

#[test]
fn a_cross_entropy_plugin_and_native_sft_loss_give_the_same_parameter_gradients() {
    let model = model();
    let vars = model.vars();
    let plugin = support::load("label-smoothed-ce", r#"{"epsilon": 0.0}"#).into_loss().expect("a loss plugin");
    let a = Encoded { tokens: vec![1, 2, 3, 4, 30, 31, 32, 33, 63], prompt_len: 4 };
    let b = Encoded { tokens: vec![7, 8, 40, 41, 63], prompt_len: 2 };
    let batch = SftBatch::from_rows(&[&a, &b], 0);
    let (inputs, targets, mask) = batch.to_tensors(&Device::Cpu).expect("tensors");
    let native_loss = masked_lm_loss(&model, &inputs, &targets, &mask, false).expect("native loss");
    let native = gradients(&native_loss, &vars);
    let (surrogate, _) = sft_plugin_loss(&plugin, &model, &batch, false).expect("plugin loss");
    let (value, want) = (surrogate.to_scalar::<f32>().expect("value"), native_loss.to_scalar::<f32>().expect("native"));
    assert!((value - want).abs() < 1e-5, "plugin loss {value} vs native {want}");
    assert_same_gradients(&native, &gradients(&surrogate, &vars), vars.len());
}

#[test]
fn a_cross_entropy_plugin_and_native_sft_loss_agree_on_an_encoder_decoder_too() {
    let config: ModelConfig = ron::from_str(
        "T5(vocab_size: 64, d_model: 16, d_kv: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1, num_heads: 4, \
         context: 16)",
    )
    .expect("a T5 config");
    let model = Model::new(&config, &Device::Cpu, 3).expect("T5");
    let vars = model.vars();
    let plugin = support::load("label-smoothed-ce", r#"{"epsilon": 0.0}"#).into_loss().expect("a loss plugin");
    let a = Encoded { tokens: vec![1, 2, 3, 4, 30, 31, 32, 33, 63], prompt_len: 4 };
    let b = Encoded { tokens: vec![7, 8, 40, 41, 63], prompt_len: 2 };
    let native_loss = seq2seq_nll(&model, &[&a, &b], 0, false).expect("native NLL").mean_all().expect("mean");
    let native = gradients(&native_loss, &vars);
    let (surrogate, _) = seq2seq_plugin_loss(&plugin, &model, &[&a, &b], 0, false).expect("plugin loss");
    let (value, want) = (surrogate.to_scalar::<f32>().expect("value"), native_loss.to_scalar::<f32>().expect("native"));
    assert!((value - want).abs() < 1e-5, "plugin loss {value} vs native {want}");
    assert_same_gradients(&native, &gradients(&surrogate, &vars), vars.len());
}

#[test]
fn the_dpo_plugin_and_the_native_dpo_ipo_and_conservative_losses_give_the_same_parameter_gradients() {
    let policy = model();
    let reference = Model::new(policy.config(), &Device::Cpu, 12).expect("reference");
    let vars = policy.vars();
    // Three pairs of different prompt and response lengths (63 ends a response).
    let encoded = |tokens: &[u32], prompt_len| Encoded { tokens: tokens.to_vec(), prompt_len };
    let pairs = [
        (encoded(&[1, 2, 3, 30, 31, 63], 3), encoded(&[1, 2, 3, 40, 63], 3)),
        (encoded(&[5, 6, 7, 8, 9, 33, 63], 5), encoded(&[5, 6, 7, 8, 9, 44, 45, 46, 47, 63], 5)),
        (encoded(&[11, 12, 50, 51, 52, 63], 2), encoded(&[11, 12, 20, 63], 2)),
    ];
    let pairs: Vec<&EncodedPair> = pairs.iter().collect();
    for (native_config, plugin_config) in [
        (DpoConfig { beta: 0.1, label_smoothing: 0.0, loss_type: DpoLossType::Sigmoid }, r#"{"beta": 0.1}"#),
        (
            DpoConfig { beta: 0.5, label_smoothing: 0.1, loss_type: DpoLossType::Sigmoid },
            r#"{"beta": 0.5, "label_smoothing": 0.1}"#,
        ),
        (
            DpoConfig { beta: 0.1, label_smoothing: 0.0, loss_type: DpoLossType::Ipo },
            r#"{"beta": 0.1, "loss_type": "ipo"}"#,
        ),
    ] {
        let plugin = support::load("dpo", plugin_config).into_loss().expect("a loss plugin");
        let (native_loss, native_metrics) =
            preference_loss((&policy, &reference), &pairs, &native_config, None, 0, false).expect("native loss");
        let (surrogate, plugin_metrics) =
            preference_loss((&policy, &reference), &pairs, &native_config, Some(&plugin), 0, false).expect("plugin");
        let (value, want) =
            (surrogate.to_scalar::<f32>().expect("value"), native_loss.to_scalar::<f32>().expect("native"));
        assert!((value - want).abs() < 1e-5, "{plugin_config}: plugin loss {value} vs native {want}");
        // The host's implicit rewards are the plugin's own figures.
        for name in ["chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"] {
            let find = |metrics: &[(String, f64)], name: &str| {
                metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("{name} logged"))
            };
            let (host, guest) = (find(&native_metrics, name), find(&plugin_metrics, &format!("plugin/{name}")));
            assert!((host - guest).abs() < 1e-5, "{plugin_config}: {name} host {host} vs plugin {guest}");
        }
        assert_same_gradients(&gradients(&native_loss, &vars), &gradients(&surrogate, &vars), vars.len());
    }
}

#[test]
fn the_ppo_clip_plugin_and_native_grpo_give_the_same_parameter_gradients() {
    use triad::train::grpo::{GrpoBatch, GrpoLossConfig, LossNorm, grpo_loss, token_weights};
    use triad::train::ppo::KlEstimator;
    use triad::train::rl::group::group_plugin_loss;
    use triad::train::rl::policy::policy_pass;

    let model = model();
    let vars = model.vars();
    // Two responses of one group (lengths 4 and 2) and one of another (3), as GRPO samples them.
    let rows = vec![vec![3u32, 9, 12, 40, 41, 42, 43], vec![3, 9, 12, 50, 51], vec![5, 6, 7, 8, 60, 61, 62]];
    let lens = [4usize, 2, 3];
    let plugin = support::load("ppo-clip", r#"{"clip": 0.2, "vf_coef": 0.0}"#).into_loss().expect("a loss plugin");
    for norm in [LossNorm::Token, LossNorm::Sequence] {
        let batch = || {
            let pass = policy_pass(&model, &rows, &lens, 0).expect("forward");
            let n = lens.iter().sum::<usize>();
            let shift = [0.3f32, -0.25, 0.05, -0.4, 0.1, 0.35, -0.02, 0.2, -0.3];
            let old_logprob =
                (pass.logprob.detach() + Tensor::from_slice(&shift, n, &Device::Cpu).expect("shift")).expect("old");
            // Sequence advantages 1.2, -0.8, 0.4, on every token of each.
            let advantage: Vec<f32> =
                [1.2f32, -0.8, 0.4].iter().zip(lens).flat_map(|(&a, len)| std::iter::repeat_n(a, len)).collect();
            let batch = GrpoBatch {
                logprob: pass.logprob,
                old_logprob,
                ref_logprob: None,
                advantage: Tensor::from_vec(advantage, n, &Device::Cpu).expect("advantage"),
                weight: Tensor::from_vec(token_weights(&lens, norm), n, &Device::Cpu).expect("weights"),
            };
            (batch, pass.entropy)
        };
        let config = GrpoLossConfig { clip_low: 0.2, clip_high: 0.2, kl_coef: 0.0, estimator: KlEstimator::K3 };
        let (native_batch, _) = batch();
        let (native_loss, metrics) = grpo_loss(&native_batch, &config).expect("native loss");
        let clipped = metrics.iter().find(|(n, _)| n == "clip_fraction").map(|(_, v)| *v).expect("clip fraction");
        assert!(clipped > 0.0 && clipped < 1.0, "some ratios clipped, some not: {clipped}");
        let native = gradients(&native_loss, &vars);
        let (plugin_batch, entropy) = batch();
        let (surrogate, _) = group_plugin_loss(&plugin, &plugin_batch, &entropy, &lens).expect("plugin loss");
        let (value, want) = (surrogate.to_scalar::<f32>().expect("value"), native_loss.to_scalar::<f32>().expect("v"));
        assert!((value - want).abs() < 1e-5, "{norm:?}: plugin loss {value} vs native {want}");
        assert_same_gradients(&native, &gradients(&surrogate, &vars), vars.len());
    }
}
