//! Whole-model tests on small configs, on the CPU.

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::*;

const VOCAB: usize = 37;
const CONTEXT: usize = 16;

fn gpt(bias: bool, dropout: f64) -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size: VOCAB, context: CONTEXT, layers: 2, heads: 4, d_model: 32, dropout, bias })
}

fn llama(kv_heads: usize, tie_embeddings: bool) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: VOCAB,
        context: CONTEXT,
        layers: 2,
        heads: 4,
        kv_heads,
        d_model: 32,
        ffn_hidden: 48,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tie_embeddings,
    })
}

fn all_families() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("gpt with bias and dropout", gpt(true, 0.1)),
        ("gpt without bias", gpt(false, 0.0)),
        ("llama tied, grouped-query", llama(2, true)),
        ("llama untied", llama(4, false)),
    ]
}

fn random_tokens(seed: u64, b: usize, t: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..b * t).map(|_| rng.next_u32() % VOCAB as u32).collect()
}

fn tokens(values: Vec<u32>, b: usize, t: usize) -> Tensor {
    Tensor::from_vec(values, (b, t), &Device::Cpu).unwrap()
}

/// Next-token cross-entropy of logits (B, T, V) against the same tokens shifted by one.
fn lm_loss(logits: &Tensor, tokens: &Tensor) -> Tensor {
    let (b, t, v) = logits.dims3().unwrap();
    let pred = logits.narrow(1, 0, t - 1).unwrap().reshape((b * (t - 1), v)).unwrap();
    let target = tokens.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
    candle_nn::loss::cross_entropy(&pred, &target).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn every_variable_of_every_family_gets_a_gradient() {
    let dev = Device::Cpu;
    for (label, config) in all_families() {
        let model = Model::new(&config, &dev, 1).unwrap();
        let head = ScalarHead::new(config.d_model(), &dev, 2).unwrap();
        model.seed_dropout(1, 0);
        let x = tokens(random_tokens(3, 2, CONTEXT), 2, CONTEXT);
        let h = model.hidden(&x, true).unwrap();
        let values = head.forward(&h).unwrap();
        let rewards = last_token_values(&values, &[CONTEXT, 5]).unwrap();
        let loss = (lm_loss(&model.lm_logits(&h).unwrap(), &x)
            + values.sqr().unwrap().mean_all().unwrap()
            + rewards.sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let vars: Vec<_> = model.vars().into_iter().chain(head.vars()).collect();
        assert_eq!(vars.len(), config.param_specs().len() + 2);
        for (name, var) in vars {
            let g = grads.get(&var).unwrap_or_else(|| panic!("{label}: `{name}` has no gradient at all"));
            let norm = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{label}: gradient of `{name}` is {norm}");
        }
    }
}

#[test]
fn logits_at_a_position_ignore_later_tokens() {
    let dev = Device::Cpu;
    for (label, config) in all_families() {
        let model = Model::new(&config, &dev, 4).unwrap();
        let (b, t, cut) = (2, 12, 6);
        let a = random_tokens(5, b, t);
        let mut changed = a.clone();
        for row in 0..b {
            for pos in cut + 1..t {
                changed[row * t + pos] = (a[row * t + pos] + 1 + pos as u32) % VOCAB as u32;
            }
        }
        let la = model.forward(&tokens(a, b, t), false).unwrap();
        let lb = model.forward(&tokens(changed, b, t), false).unwrap();
        let before = max_abs_diff(&la.narrow(1, 0, cut + 1).unwrap(), &lb.narrow(1, 0, cut + 1).unwrap());
        let rest = t - cut - 1;
        let after = max_abs_diff(&la.narrow(1, cut + 1, rest).unwrap(), &lb.narrow(1, cut + 1, rest).unwrap());
        assert!(before < 1e-6, "{label}: positions <= {cut} changed by {before}");
        assert!(after > 1e-4, "{label}: later positions should change, changed by {after}");
    }
}

#[test]
fn save_then_load_gives_identical_logits_and_hf_names() {
    let dev = Device::Cpu;
    let x = tokens(random_tokens(6, 2, 10), 2, 10);
    for (label, config) in all_families() {
        let dir = temp_dir(&label.replace([' ', ','], "_"));
        let model = Model::new(&config, &dev, 7).unwrap();
        model.save(&dir).unwrap();
        let back = Model::load(&dir, &dev).unwrap();
        assert_eq!(back.config(), model.config(), "{label}");
        let (a, b) = (model.forward(&x, false).unwrap(), back.forward(&x, false).unwrap());
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{label}: logits changed through save/load");

        let file = load_tensors(&dir.join("model.safetensors"), &dev).unwrap();
        let shape =
            |name: &str| file.get(name).unwrap_or_else(|| panic!("{label}: no `{name}` in the file")).dims().to_vec();
        let config_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        match &config {
            ModelConfig::Gpt(c) => {
                let d = c.d_model;
                // Hugging Face GPT-2 projections are Conv1D: weight (in, out).
                assert_eq!(shape("h.0.attn.c_attn.weight"), vec![d, 3 * d]);
                assert_eq!(shape("h.1.mlp.c_fc.weight"), vec![d, 4 * d]);
                assert_eq!(shape("h.1.mlp.c_proj.weight"), vec![4 * d, d]);
                assert_eq!(shape("wte.weight"), vec![VOCAB, d]);
                assert_eq!(shape("wpe.weight"), vec![CONTEXT, d]);
                assert_eq!(shape("ln_f.weight"), vec![d]);
                assert_eq!(file.contains_key("h.0.attn.c_attn.bias"), c.bias);
                assert_eq!(config_json["model_type"], "gpt2");
                assert_eq!(config_json["n_embd"], d);
            }
            ModelConfig::Llama(c) => {
                let hd = c.head_dim();
                assert_eq!(shape("model.embed_tokens.weight"), vec![VOCAB, c.d_model]);
                assert_eq!(shape("model.layers.1.self_attn.k_proj.weight"), vec![c.kv_heads * hd, c.d_model]);
                assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), vec![c.d_model, c.ffn_hidden]);
                assert_eq!(shape("model.norm.weight"), vec![c.d_model]);
                assert_eq!(file.contains_key("lm_head.weight"), !c.tie_embeddings);
                assert_eq!(config_json["model_type"], "llama");
                assert_eq!(config_json["num_key_value_heads"], c.kv_heads);
            }
            ModelConfig::T5(_) => unreachable!("the decoders' round trip"),
        }
        // transformers refuses safetensors files without this metadata.
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["format"], "pt");
        // No temporary files are left behind.
        let mut names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn same_seed_same_parameters_other_seed_other_parameters() {
    let dev = Device::Cpu;
    for (label, config) in all_families() {
        let a = Model::new(&config, &dev, 11).unwrap().weights();
        let b = Model::new(&config, &dev, 11).unwrap().weights();
        let c = Model::new(&config, &dev, 12).unwrap().weights();
        for (name, ta) in &a {
            let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let vb = b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let vc = c[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{label}: `{name}` differs");
            if !(name.ends_with(".bias") || name.contains("norm") || name.contains("ln_")) {
                assert_ne!(va, vc, "{label}: `{name}` ignores the seed");
            }
        }
    }
}

#[test]
fn init_follows_gpt2() {
    let model = Model::new(&gpt(true, 0.0), &Device::Cpu, 0).unwrap();
    let w = model.weights();
    let std = |name: &str| {
        let v = w[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    assert!((std("wte.weight") - 0.02).abs() < 0.002);
    assert!((std("h.0.mlp.c_fc.weight") - 0.02).abs() < 0.002);
    // Residual projections: 0.02 / sqrt(2 * layers) = 0.01 for 2 layers.
    assert!((std("h.0.mlp.c_proj.weight") - 0.01).abs() < 0.001);
    assert!((std("h.1.attn.c_proj.weight") - 0.01).abs() < 0.001);
    assert_eq!(std("h.0.attn.c_attn.bias"), 0.0);
    assert_eq!(w["ln_f.weight"].to_vec1::<f32>().unwrap(), vec![1.0; 32]);
}

#[test]
fn grouped_query_attention_has_narrow_kv_projections() {
    let dev = Device::Cpu;
    let model = Model::new(&llama(1, true), &dev, 0).unwrap();
    let w = model.weights();
    assert_eq!(w["model.layers.0.self_attn.q_proj.weight"].dims(), &[32, 32]);
    assert_eq!(w["model.layers.0.self_attn.k_proj.weight"].dims(), &[8, 32]);
    assert_eq!(w["model.layers.0.self_attn.v_proj.weight"].dims(), &[8, 32]);
    let logits = model.forward(&tokens(random_tokens(1, 3, 9), 3, 9), false).unwrap();
    assert_eq!(logits.dims(), &[3, 9, VOCAB]);
}

#[test]
fn kv_heads_equal_to_heads_is_repeated_kv_with_one_group() {
    // A grouped model (kv_heads = 2) equals the multi-head model whose k/v projections repeat
    // each kv head's rows for its 2 query heads: that is what sharing a kv head means.
    let dev = Device::Cpu;
    let grouped = Model::new(&llama(2, true), &dev, 3).unwrap();
    let mut w = grouped.weights();
    let hd = 8;
    for i in 0..2 {
        for p in ["k_proj", "v_proj"] {
            let name = format!("model.layers.{i}.self_attn.{p}.weight");
            let rows: Vec<Tensor> = (0..4).map(|h| w[&name].narrow(0, (h / 2) * hd, hd).unwrap()).collect();
            w.insert(name, Tensor::cat(&rows, 0).unwrap());
        }
    }
    let full = Model::from_weights(&llama(4, true), w, &dev).unwrap();
    let x = tokens(random_tokens(8, 2, 11), 2, 11);
    let d = max_abs_diff(&grouped.forward(&x, false).unwrap(), &full.forward(&x, false).unwrap());
    assert!(d < 1e-5, "grouped and repeated differ by {d}");
}

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    let dev = Device::Cpu;
    for (label, config) in all_families() {
        let model = Model::new(&config, &dev, 9).unwrap();
        let (b, t) = (2, CONTEXT);
        let all = random_tokens(10, b, t);
        let full = model.forward(&tokens(all.clone(), b, t), false).unwrap();
        let mut cache = KvCache::new();
        let prompt = 5;
        let slice = |from: usize, len: usize| {
            let v: Vec<u32> = (0..b).flat_map(|r| all[r * t + from..r * t + from + len].to_vec()).collect();
            tokens(v, b, len)
        };
        let mut pieces = vec![model.forward_cached(&slice(0, prompt), &mut cache).unwrap()];
        for pos in prompt..t {
            pieces.push(model.forward_cached(&slice(pos, 1), &mut cache).unwrap());
        }
        assert_eq!(cache.len(), t);
        let stepwise = Tensor::cat(&pieces, 1).unwrap();
        let d = max_abs_diff(&full, &stepwise);
        assert!(d < 1e-4, "{label}: cached decoding differs by {d}");
        // The context is full: one more token is refused with a clear error.
        let err = model.forward_cached(&slice(0, 1), &mut cache).unwrap_err().to_string();
        assert!(err.contains("context"), "{err}");
    }
}

#[test]
fn dropout_is_a_function_of_seed_and_step() {
    let dev = Device::Cpu;
    let model = Model::new(&gpt(true, 0.2), &dev, 1).unwrap();
    let x = tokens(random_tokens(2, 2, 8), 2, 8);
    let run = |step: u64| {
        model.seed_dropout(5, step);
        model.forward(&x, true).unwrap()
    };
    let (a, a2, b) = (run(3), run(3), run(4));
    assert_eq!(max_abs_diff(&a, &a2), 0.0);
    assert!(max_abs_diff(&a, &b) > 1e-4);
    // Evaluation ignores dropout and the generator.
    let e1 = model.forward(&x, false).unwrap();
    let e2 = model.forward(&x, false).unwrap();
    assert_eq!(max_abs_diff(&e1, &e2), 0.0);
    assert!(max_abs_diff(&a, &e1) > 1e-4);
}

#[test]
fn from_weights_names_missing_extra_and_misshaped_tensors() {
    let dev = Device::Cpu;
    let config = llama(2, true);
    let good = Model::new(&config, &dev, 0).unwrap().weights();

    let mut w = good.clone();
    w.remove("model.layers.1.mlp.up_proj.weight");
    let e = Model::from_weights(&config, w, &dev).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("[48, 32]"), "{e}");

    let mut w = good.clone();
    w.insert("lm_head.weight".into(), Tensor::zeros((VOCAB, 32), DType::F32, &dev).unwrap());
    let e = Model::from_weights(&config, w, &dev).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight") && e.contains("tie_embeddings"), "{e}");

    let mut w = good.clone();
    w.insert("model.layers.0.self_attn.k_proj.weight".into(), Tensor::zeros((32, 32), DType::F32, &dev).unwrap());
    let e = Model::from_weights(&config, w, &dev).unwrap_err().to_string();
    assert!(e.contains("k_proj") && e.contains("[32, 32]") && e.contains("[16, 32]"), "{e}");

    // Hugging Face GPT-2 extras are accepted: prefix, mask buffers, tied lm_head.
    let g = gpt(true, 0.0);
    let mut w: HashMap<String, Tensor> =
        Model::new(&g, &dev, 0).unwrap().weights().into_iter().map(|(n, t)| (format!("transformer.{n}"), t)).collect();
    w.insert("transformer.h.0.attn.bias".into(), Tensor::ones((1, 1, CONTEXT, CONTEXT), DType::F32, &dev).unwrap());
    w.insert("lm_head.weight".into(), Tensor::zeros((VOCAB, 32), DType::F32, &dev).unwrap());
    Model::from_weights(&g, w, &dev).unwrap();
}

#[test]
fn from_weights_and_try_clone_do_not_share_storage() {
    let dev = Device::Cpu;
    let model = Model::new(&gpt(true, 0.0), &dev, 0).unwrap();
    let copy = model.try_clone().unwrap();
    let x = tokens(random_tokens(2, 1, 6), 1, 6);
    let before = copy.forward(&x, false).unwrap();
    for (_, var) in model.vars() {
        var.set(&var.zeros_like().unwrap()).unwrap();
    }
    assert_eq!(max_abs_diff(&before, &copy.forward(&x, false).unwrap()), 0.0);
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let dev = Device::Cpu;
    let model = Model::new(&gpt(true, 0.0), &dev, 0).unwrap();
    let long = tokens(vec![0; CONTEXT + 1], 1, CONTEXT + 1);
    assert!(matches!(model.forward(&long, false), Err(ModelError::Input(_))));
    let floats = Tensor::zeros((1, 4), DType::F32, &dev).unwrap();
    assert!(matches!(model.forward(&floats, false), Err(ModelError::Input(_))));
    let flat = Tensor::zeros(4, DType::U32, &dev).unwrap();
    assert!(matches!(model.forward(&flat, false), Err(ModelError::Input(_))));
}

#[test]
fn weight_decay_applies_to_matrices_only() {
    for name in [
        "h.0.attn.c_attn.weight",
        "h.3.mlp.c_proj.weight",
        "model.layers.2.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "lm_head.weight",
        "score.weight",
    ] {
        assert!(decays(name), "{name} should decay");
    }
    for name in [
        "wte.weight",
        "wpe.weight",
        "model.embed_tokens.weight",
        "h.0.ln_1.weight",
        "ln_f.bias",
        "h.0.attn.c_attn.bias",
        "model.norm.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "score.bias",
    ] {
        assert!(!decays(name), "{name} should not decay");
    }
    // Every 2-D parameter except the embeddings decays, every 1-D one does not.
    for config in [gpt(true, 0.0), llama(2, false)] {
        for spec in config.param_specs() {
            let embedding = ["wte", "wpe", "embed_tokens"].iter().any(|e| spec.name.contains(e));
            assert_eq!(decays(&spec.name), spec.shape.len() == 2 && !embedding, "{}", spec.name);
        }
    }
}

#[test]
fn num_parameters_matches_the_config_count() {
    for (_, config) in all_families() {
        let model = Model::new(&config, &Device::Cpu, 0).unwrap();
        assert_eq!(model.num_parameters(), config.num_parameters());
    }
}
