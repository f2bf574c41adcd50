//! Each fused kernel against the plain composition it replaces, values and gradients, on random
//! and adversarial inputs.
//!
//! Tolerances: f32 carries 24 bits (relative rounding 6e-8), and the fused and plain paths sum
//! in different orders and compute e^x differently (a polynomial within 2 ulp against libm), so
//! their results differ by a few ulp per operation chained. Values and gradients must agree to
//! 1e-5 relative, plus an absolute term for what f32 cannot resolve: a result that is a
//! difference of inputs of magnitude M (a logit of 1e4 minus the log-sum-exp) is only known to
//! about M * 2^-23, so that term is a few ulp of the largest input in the row.

use super::testing::{assert_close, flat, random, tensor};
use super::*;
use candle_core::Var;

/// One path's output and the gradient of each input, flattened.
type Run = (Vec<f32>, Vec<Vec<f32>>);

/// Runs `f` with the fused and then the plain kernels on fresh variables made from `inputs`,
/// returning (output, gradient of each input) per path. The gradient flows from
/// sum(output * coef) with a fixed random coef, so that no gradient vanishes by symmetry.
fn both(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<[Run; 2]> {
    let run = |kernels: Kernels| -> Result<Run> {
        with_kernels(kernels, || {
            let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let out = f(&tensors)?;
            let coef = tensor(random(99, out.dims(), 1.0), out.dims());
            let grads = (&out * &coef)?.sum_all()?.backward()?;
            let grads = vars.iter().map(|v| grads.get(v).map(flat).unwrap_or_default()).collect();
            Ok((flat(&out), grads))
        })
    };
    Ok([run(Kernels::Fused)?, run(Kernels::Plain)?])
}

/// Few ulp of the largest magnitude in `xs`.
fn ulps(xs: &[f32], n: f32) -> f32 {
    n * f32::EPSILON * xs.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[test]
fn cross_entropy_matches_log_softmax_and_gather() -> Result<()> {
    let cases: Vec<(&str, usize, usize, Vec<f32>)> = vec![
        ("random", 7, 37, random(1, &[7, 37], 3.0)),
        ("magnitude 1e4", 5, 64, random(2, &[5, 64], 1e4)),
        ("50,000 columns", 3, 50_000, random(3, &[3, 50_000], 2.0)),
        ("all equal", 4, 100, vec![1.5; 400]),
        // One dominant logit: the target's probability rounds to 1 or 0.
        ("saturated", 2, 16, (0..32).map(|i| if i % 16 == 3 { 90.0 } else { -5.0 }).collect()),
    ];
    for (name, n, v, logits) in cases {
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let targets = Tensor::from_vec(targets, n, &Device::Cpu)?;
        let atol = ulps(&logits, 8.0).max(1e-6);
        let [fused, plain] = both(&[tensor(logits.clone(), &[n, v])], |x| cross_entropy_rows(&x[0], &targets))?;
        // Against the exact (f64) values: 1e-5 relative.
        let (loss, grad) = cross_entropy_f64(&logits, &targets.to_vec1::<u32>()?, v, &random(99, &[n], 1.0));
        assert_close(&format!("{name}: loss against f64"), &fused.0, &loss, 1e-5, atol);
        assert_close(&format!("{name}: gradient against f64"), &fused.1[0], &grad, 1e-5, 1e-7);
        // Against the plain path, whose own f32 sum over a row of V terms is off by about
        // sqrt(V) ulp (4e-5 relative measured at V = 50,000).
        let rtol = (1e-5f32).max(4.0 * (v as f32).sqrt() * f32::EPSILON);
        assert_close(&format!("{name}: loss"), &fused.0, &plain.0, rtol, atol);
        // Gradients are probabilities minus the one-hot, times a coefficient of order 1.
        assert_close(&format!("{name}: gradient"), &fused.1[0], &plain.1[0], rtol, 1e-7);
    }
    Ok(())
}

/// Per-row loss and the gradient of sum(loss * coef), in f64.
fn cross_entropy_f64(logits: &[f32], targets: &[u32], v: usize, coef: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut loss, mut grad) = (vec![], vec![]);
    for (i, row) in logits.chunks(v).enumerate() {
        let m = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        let t = targets[i] as usize;
        loss.push((m + z.ln() - row[t] as f64) as f32);
        for (j, &x) in row.iter().enumerate() {
            let p = (x as f64 - m).exp() / z;
            grad.push((coef[i] as f64 * (p - if j == t { 1.0 } else { 0.0 })) as f32);
        }
    }
    (loss, grad)
}

#[test]
fn cross_entropy_rejects_targets_outside_the_vocabulary() -> Result<()> {
    let logits = tensor(random(4, &[2, 5], 1.0), &[2, 5]);
    let targets = Tensor::new(&[1u32, 5], &Device::Cpu)?;
    let result = with_kernels(Kernels::Fused, || cross_entropy_rows(&logits, &targets));
    let message = result.expect_err("target 5 of 5 classes").to_string();
    assert!(message.contains("target 5 out of a vocabulary of 5"), "{message}");
    Ok(())
}

#[test]
fn softmax_matches_the_composition_including_masked_rows() -> Result<()> {
    let inf = f32::NEG_INFINITY;
    let mut causal = random(5, &[2, 3, 6, 6], 2.0);
    for (i, x) in causal.iter_mut().enumerate() {
        let (row, col) = ((i / 6) % 6, i % 6);
        if col > row {
            *x = inf;
        }
    }
    let cases: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("random", vec![2, 3, 5, 7], random(6, &[2, 3, 5, 7], 1.0)),
        ("causal -inf mask", vec![2, 3, 6, 6], causal),
        ("magnitude 1e4", vec![4, 33], random(7, &[4, 33], 1e4)),
        ("50,000 columns", vec![2, 50_000], random(8, &[2, 50_000], 3.0)),
        ("all equal", vec![3, 40], vec![-2.25; 120]),
        ("key-pad mask", vec![2, 5], vec![-1e9, -1e9, 0.5, 1.0, 2.0, -1e9, -1e9, -1e9, -1e9, -1e9]),
    ];
    for (name, shape, x) in cases {
        let finite: Vec<f32> = x.iter().copied().filter(|x| x.is_finite() && x.abs() < 1e8).collect();
        let atol = ulps(&finite, 8.0).max(1e-7);
        let [fused, plain] = both(&[tensor(x, &shape)], |x| softmax_last_dim(&x[0]))?;
        assert_close(&format!("{name}: softmax"), &fused.0, &plain.0, 1e-5, atol);
        assert_close(&format!("{name}: gradient"), &fused.1[0], &plain.1[0], 1e-5, 1e-6);
    }
    Ok(())
}

#[test]
fn fully_masked_softmax_rows_are_zero_not_nan() -> Result<()> {
    let inf = f32::NEG_INFINITY;
    let x = Var::from_tensor(&tensor(vec![inf, inf, inf, 0.0, 1.0, inf], &[2, 3]))?;
    let y = with_kernels(Kernels::Fused, || softmax_last_dim(x.as_tensor()))?;
    let values = flat(&y);
    assert_eq!(&values[..3], &[0.0, 0.0, 0.0]);
    assert!((values[3] + values[4] - 1.0).abs() < 1e-6 && values[5] == 0.0, "{values:?}");
    let grad = y.sum_all()?.backward()?.get(&x).map(flat).expect("a gradient");
    assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
    Ok(())
}

#[test]
fn layer_norm_matches_the_composition() -> Result<()> {
    let d = 64;
    let cases: Vec<(&str, usize, usize, Vec<f32>, f32)> = vec![
        ("random", 12, d, random(9, &[12, d], 1.0), 0.0),
        // Mean 1e4, spread 100: the plain and fused means differ by ulps of 1e4, which the
        // normalisation scales by 1/std.
        (
            "offset 1e4",
            6,
            d,
            random(10, &[6, d], 100.0).into_iter().map(|x| x + 1e4).collect(),
            64.0 * f32::EPSILON * 1e2,
        ),
        ("50,000 columns", 2, 50_000, random(11, &[2, 50_000], 2.0), 0.0),
        ("all equal", 3, d, vec![3.0; 3 * d], 0.0),
    ];
    for (name, n, cols, x, extra) in cases {
        let w = random(12, &[cols], 1.0);
        let b = random(13, &[cols], 1.0);
        let inputs = [tensor(x, &[n, cols]), tensor(w, &[cols]), tensor(b, &[cols])];
        let [fused, plain] = both(&inputs, |t| {
            crate::model::norm::LayerNorm { weight: t[1].clone(), bias: Some(t[2].clone()), eps: 1e-5 }.forward(&t[0])
        })?;
        assert_close(&format!("{name}: layer norm"), &fused.0, &plain.0, 1e-5, 1e-5 + extra);
        for (i, part) in ["x", "weight", "bias"].iter().enumerate() {
            // The weight and bias gradients sum over rows: their scale grows with the row count.
            let atol = ulps(&plain.1[i], 64.0).max(1e-5) + extra * 1e2;
            assert_close(&format!("{name}: gradient of {part}"), &fused.1[i], &plain.1[i], 1e-4, atol);
        }
    }
    Ok(())
}

#[test]
fn rms_norm_matches_the_composition() -> Result<()> {
    let cases: Vec<(&str, usize, usize, Vec<f32>)> = vec![
        ("random", 12, 48, random(14, &[12, 48], 1.0)),
        ("magnitude 1e4", 4, 48, random(15, &[4, 48], 1e4)),
        ("50,000 columns", 2, 50_000, random(16, &[2, 50_000], 2.0)),
        ("all equal", 3, 48, vec![-0.5; 144]),
    ];
    for (name, n, cols, x) in cases {
        let w = random(17, &[cols], 1.0);
        let inputs = [tensor(x, &[n, cols]), tensor(w, &[cols])];
        let [fused, plain] =
            both(&inputs, |t| crate::model::norm::RmsNorm { weight: t[1].clone(), eps: 1e-5 }.forward(&t[0]))?;
        assert_close(&format!("{name}: rms norm"), &fused.0, &plain.0, 1e-5, 1e-6);
        for (i, part) in ["x", "weight"].iter().enumerate() {
            let atol = ulps(&plain.1[i], 64.0).max(1e-6);
            assert_close(&format!("{name}: gradient of {part}"), &fused.1[i], &plain.1[i], 1e-4, atol);
        }
    }
    Ok(())
}

#[test]
fn gelu_matches_candles_tanh_gelu() -> Result<()> {
    let cases: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("random", vec![3, 7, 11], random(40, &[3, 7, 11], 2.0)),
        ("magnitude 1e4", vec![2, 50], random(41, &[2, 50], 1e4)),
        ("near zero", vec![64], random(42, &[64], 1e-4)),
        ("50,000 elements", vec![50_000], random(43, &[50_000], 3.0)),
        ("all equal", vec![4, 9], vec![0.75; 36]),
    ];
    for (name, shape, x) in cases {
        let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
        let coef = random(99, &shape, 1.0);
        let exact: Vec<(f32, f32)> = x
            .iter()
            .zip(&coef)
            .map(|(&v, &c)| {
                let (v, k, cu) = (v as f64, (2.0 / std::f64::consts::PI).sqrt(), 0.044715);
                let t = (k * (v + cu * v * v * v)).tanh();
                let d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * cu * v * v);
                ((0.5 * v * (1.0 + t)) as f32, (c as f64 * d) as f32)
            })
            .collect();
        let [fused, plain] = both(&[tensor(x, &shape)], |x| if fused(&[&x[0]]) { gelu(&x[0]) } else { x[0].gelu() })?;
        let (value, grad): (Vec<f32>, Vec<f32>) = exact.into_iter().unzip();
        // Against the exact values: 1e-5 relative, plus a few ulp of the input for the value.
        assert_close(&format!("{name}: gelu against f64"), &fused.0, &value, 1e-5, 1e-7 * scale);
        assert_close(&format!("{name}: gradient against f64"), &fused.1[0], &grad, 1e-5, 1e-7);
        // Against candle, whose f32 tanh carries 6e-8 absolute error and saturates to -1 for
        // x below about -4, so that its 1 - tanh² (and the derivative) is off by up to 1e-6
        // there (it gives 0 where the exact derivative is 1e-6).
        assert_close(&format!("{name}: gelu"), &fused.0, &plain.0, 1e-5, 4e-7 * scale);
        assert_close(&format!("{name}: gradient"), &fused.1[0], &plain.1[0], 1e-5, 3e-6);
    }
    Ok(())
}

#[test]
fn add_bias_matches_broadcast_add() -> Result<()> {
    for (name, n, d, std) in [("random", 37, 24, 1.0), ("magnitude 1e4", 5, 8, 1e4), ("long rows", 2, 50_000, 2.0)] {
        let inputs = [tensor(random(50, &[n, d], std), &[n, d]), tensor(random(51, &[d], std), &[d])];
        let [fused, plain] =
            both(&inputs, |t| if fused(&[&t[0]]) { add_bias(&t[0], &t[1]) } else { t[0].broadcast_add(&t[1]) })?;
        // The sum is exact up to one rounding either way; the bias gradient sums n rows in a
        // different order (a few ulp of the largest partial sum).
        assert_close(&format!("{name}: value"), &fused.0, &plain.0, 1e-6, 0.0);
        assert_close(&format!("{name}: gradient of x"), &fused.1[0], &plain.1[0], 0.0, 0.0);
        assert_close(
            &format!("{name}: gradient of bias"),
            &fused.1[1],
            &plain.1[1],
            1e-5,
            ulps(&plain.1[1], 4.0 * n as f32),
        );
    }
    Ok(())
}

/// The plain causal attention the fused kernels replace: `attend` with the additive causal mask
/// of (T, S) and, when given, the per-row key bias (B, S) added as the model adds it.
fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor, key_bias: Option<&Tensor>) -> Result<Tensor> {
    use crate::model::attention::{CausalMasks, attend, pass_mask};
    let (t, s) = (q.dim(2)?, k.dim(2)?);
    let mask = pass_mask(CausalMasks::new(&Device::Cpu).get(t, s)?, key_bias)?;
    attend(q, k, v, mask.as_ref())
}

/// An additive key bias (B, S) for left-padded rows: `pads[r]` pad keys first in row r.
fn key_bias(pads: &[usize], s: usize) -> Tensor {
    use crate::model::attention::KEY_PAD;
    let values = pads.iter().flat_map(|&pad| (0..s).map(move |j| if j < pad { KEY_PAD } else { 0.0 })).collect();
    tensor(values, &[pads.len(), s])
}

/// Values within rtol of the plain ones plus a few ulp of the largest plain magnitude (the two
/// paths sum the scores and products in different orders, and exponentiate differently).
fn assert_attention_close(name: &str, fused: &Run, plain: &Run, inputs: &[&str]) {
    assert_close(&format!("{name}: value"), &fused.0, &plain.0, 1e-4, ulps(&plain.0, 64.0).max(1e-6));
    for (i, input) in inputs.iter().enumerate() {
        let atol = ulps(&plain.1[i], 256.0).max(1e-6);
        assert_close(&format!("{name}: gradient of {input}"), &fused.1[i], &plain.1[i], 1e-4, atol);
    }
}

#[test]
fn fused_attention_matches_the_masked_composition() -> Result<()> {
    // (name, b, h, kv, t, s, d, std of q and k, pads of the rows or none)
    type Case = (&'static str, usize, usize, usize, usize, usize, usize, f64, Option<Vec<usize>>);
    let cases: Vec<Case> = vec![
        ("random", 2, 4, 4, 7, 7, 8, 1.0, None),
        ("grouped-query heads", 2, 6, 2, 9, 9, 4, 1.0, None),
        ("one query after cached keys", 3, 4, 2, 1, 11, 8, 1.0, None),
        ("queries after cached keys", 2, 2, 1, 5, 12, 8, 1.0, None),
        // Longer than a block of query rows: the causal skipping crosses blocks.
        ("long rows", 1, 2, 1, 150, 150, 16, 1.0, None),
        ("long rows after cached keys", 1, 2, 2, 70, 200, 8, 1.0, None),
        // Scores of magnitude ~100: the softmax is nearly one-hot.
        ("large logits", 2, 2, 2, 20, 20, 16, 10.0, None),
        ("left-padded rows", 3, 4, 2, 8, 8, 8, 1.0, Some(vec![0, 3, 7])),
        ("left-padded, one query", 2, 2, 2, 1, 6, 8, 1.0, Some(vec![2, 0])),
        // Several key tiles: the online softmax rescales what earlier tiles gave.
        ("keys over three tiles", 1, 2, 1, 300, 300, 8, 1.0, None),
        ("large logits over three tiles", 1, 2, 2, 290, 290, 8, 10.0, None),
        // Query blocks straddling a tile border: some rows see none of the tile's keys.
        ("queries after cached keys over tiles", 1, 2, 1, 100, 390, 8, 1.0, None),
        ("one query after 400 cached keys", 2, 2, 1, 1, 401, 8, 1.0, None),
        // Whole tiles of pad keys before the first real one (a pad query sees only pads).
        ("left padding longer than a tile", 2, 2, 1, 280, 280, 8, 1.0, Some(vec![200, 0])),
    ];
    for (name, b, h, kv, t, s, d, std, pads) in cases {
        let inputs = [
            tensor(random(60, &[b, h, t, d], std), &[b, h, t, d]),
            tensor(random(61, &[b, kv, s, d], std), &[b, kv, s, d]),
            tensor(random(62, &[b, kv, s, d], 1.0), &[b, kv, s, d]),
        ];
        let bias = pads.map(|pads| key_bias(&pads, s));
        let [fused_run, plain] = both(&inputs, |x| {
            if fused(&[&x[0]]) {
                causal_attention(&x[0], &x[1], &x[2], bias.as_ref())
            } else {
                plain_attention(&x[0], &x[1], &x[2], bias.as_ref())
            }
        })?;
        assert_attention_close(name, &fused_run, &plain, &["q", "k", "v"]);
    }
    Ok(())
}

#[test]
fn fused_attention_reads_strided_views_of_a_cache() -> Result<()> {
    // k and v as the KV cache hands them out: the filled prefix of a longer buffer.
    let (b, h, kv, t, s, cap, d) = (2, 4, 2, 3, 10, 16, 8);
    let q = tensor(random(63, &[b, h, t, d], 1.0), &[b, h, t, d]);
    let k = tensor(random(64, &[b, kv, cap, d], 1.0), &[b, kv, cap, d]).narrow(2, 0, s)?;
    let v = tensor(random(65, &[b, kv, cap, d], 1.0), &[b, kv, cap, d]).narrow(2, 0, s)?;
    assert!(!k.is_contiguous());
    let fused_y = with_kernels(Kernels::Fused, || causal_attention(&q, &k, &v, None))?;
    let plain_y = plain_attention(&q, &k, &v, None)?;
    assert_close("strided cache", &flat(&fused_y), &flat(&plain_y), 1e-5, 1e-6);
    Ok(())
}

#[test]
fn fused_qkv_attention_matches_the_gpt_composition() -> Result<()> {
    // The plain GPT path: split the projection into heads, attend, put the heads side by side.
    fn plain_qkv(qkv: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, c3) = qkv.dims3()?;
        let (c, d) = (c3 / 3, c3 / 3 / heads);
        let third = |i: usize| qkv.narrow(2, i * c, c)?.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
        let y = plain_attention(&third(0)?, &third(1)?, &third(2)?, bias)?;
        y.transpose(1, 2)?.reshape((b, t, c))
    }
    for (name, b, t, heads, d, std, pads) in [
        ("random", 2, 9, 3, 8, 1.0, None),
        ("one position", 2, 1, 2, 4, 1.0, None),
        ("long rows", 1, 130, 2, 16, 1.0, None),
        ("large logits", 2, 12, 2, 16, 10.0, None),
        ("left-padded rows", 2, 6, 2, 4, 1.0, Some(vec![4, 0])),
    ] {
        let c3 = 3 * heads * d;
        let inputs = [tensor(random(66, &[b, t, c3], std), &[b, t, c3])];
        let bias = pads.map(|pads: Vec<usize>| key_bias(&pads, t));
        let [fused_run, plain] = both(&inputs, |x| {
            if fused(&[&x[0]]) {
                causal_attention_qkv(&x[0], heads, bias.as_ref())
            } else {
                plain_qkv(&x[0], heads, bias.as_ref())
            }
        })?;
        assert_attention_close(name, &fused_run, &plain, &["qkv"]);
    }
    Ok(())
}

#[test]
fn fused_t5_attention_matches_the_composition_with_its_position_bias() -> Result<()> {
    // The plain T5 path: heads apart, unscaled scores plus the position bias, the causal mask
    // and the key bias, softmax, heads side by side.
    fn plain_t5(
        q: &Tensor,
        kv: &Tensor,
        bias: Option<&Tensor>,
        keys: Option<&Tensor>,
        causal: bool,
        heads: usize,
    ) -> Result<Tensor> {
        let (b, t, c) = q.dims3()?;
        let s = kv.dim(1)?;
        let d = c / heads;
        let split = |x: &Tensor, n: usize| x.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (split(q, t)?, split(&kv.narrow(2, 0, c)?, s)?, split(&kv.narrow(2, c, c)?, s)?);
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(&bias.unsqueeze(0)?)?;
        }
        if causal {
            let mask: Vec<f32> = (0..t).flat_map(|i| (0..s).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
            scores = scores.broadcast_add(&tensor(mask, &[1, 1, t, s]))?;
        }
        if let Some(keys) = keys {
            scores = scores.broadcast_add(&keys.reshape((b, 1, 1, s))?)?;
        }
        let y = softmax_last_dim(&scores)?.matmul(&v)?;
        y.transpose(1, 2)?.reshape((b, t, c))
    }
    // (name, b, t, s, heads, d, causal, position bias, pads of the keys)
    type Case = (&'static str, usize, usize, usize, usize, usize, bool, bool, Option<Vec<usize>>);
    let cases: Vec<Case> = vec![
        ("encoder", 2, 9, 9, 4, 8, false, true, None),
        ("encoder, right-padded", 3, 7, 7, 2, 8, false, true, Some(vec![0, 3, 6])),
        ("decoder", 2, 11, 11, 4, 4, true, true, None),
        ("cross-attention, more queries than keys", 2, 12, 5, 2, 8, false, false, Some(vec![0, 2])),
        ("decoder over three tiles", 1, 290, 290, 2, 8, true, true, None),
        ("encoder over three tiles", 1, 270, 270, 2, 8, false, true, Some(vec![100])),
    ];
    for (name, b, t, s, heads, d, causal, with_bias, pads) in cases {
        let c = heads * d;
        let mut inputs = vec![
            tensor(random(70, &[b, t, c], 1.0), &[b, t, c]),
            tensor(random(71, &[b, s, 2 * c], 1.0), &[b, s, 2 * c]),
        ];
        if with_bias {
            inputs.push(tensor(random(72, &[heads, t, s], 1.0), &[heads, t, s]));
        }
        // Padding at the end of each row, as T5's batches are padded: `pads[r]` pad keys.
        let keys = pads.map(|pads| {
            let values =
                pads.iter().flat_map(|&pad| (0..s).map(move |j| if j >= s - pad { -1e9 } else { 0.0 })).collect();
            tensor(values, &[b, s])
        });
        let [fused_run, plain] = both(&inputs, |x| {
            if fused(&[&x[0]]) {
                t5_attention(&x[0], &x[1], heads, x.get(2), keys.as_ref(), causal)
            } else {
                plain_t5(&x[0], &x[1], x.get(2), keys.as_ref(), causal, heads)
            }
        })?;
        let names: &[&str] = if with_bias { &["q", "kv", "position bias"] } else { &["q", "kv"] };
        assert_attention_close(name, &fused_run, &plain, names);
    }
    Ok(())
}

/// x (lead..., d_in) of the given spread, a weight stored in `layout`, and a bias when asked,
/// all random from `seed` on.
fn linear_inputs(
    seed: u64,
    lead: &[usize],
    d_in: usize,
    d_out: usize,
    layout: crate::model::linear::Layout,
    bias: bool,
    std: f64,
) -> Vec<Tensor> {
    use crate::model::linear::Layout as WeightLayout;
    let x_shape: Vec<usize> = lead.iter().copied().chain([d_in]).collect();
    let w_shape = match layout {
        WeightLayout::InOut => vec![d_in, d_out],
        WeightLayout::OutIn => vec![d_out, d_in],
    };
    let mut inputs =
        vec![tensor(random(seed, &x_shape, std), &x_shape), tensor(random(seed + 1, &w_shape, 1.0), &w_shape)];
    if bias {
        inputs.push(tensor(random(seed + 2, &[d_out], 1.0), &[d_out]));
    }
    inputs
}

#[test]
fn fused_linear_matches_matmul_and_bias() -> Result<()> {
    use crate::model::linear::{Layout as WeightLayout, Linear};
    // (name, leading dims of x, in, out, layout, bias, std)
    let cases = [
        ("(in, out) with bias", vec![3, 40], 24, 16, WeightLayout::InOut, true, 1.0),
        ("(in, out) without bias", vec![2, 3, 17], 8, 33, WeightLayout::InOut, false, 1.0),
        ("(out, in) with bias", vec![2, 50], 32, 20, WeightLayout::OutIn, true, 1.0),
        ("(out, in) without bias, one row", vec![1], 12, 7, WeightLayout::InOut, false, 1.0),
        ("magnitude 1e3", vec![70], 16, 24, WeightLayout::OutIn, true, 1e3),
    ];
    for (name, lead, d_in, d_out, layout, bias, std) in cases {
        let inputs = linear_inputs(70, &lead, d_in, d_out, layout, bias, std);
        let [fused_run, plain] = both(&inputs, |t| {
            // The rows fold into one 2-D product, as `Linear` folds them; the plain path is
            // candle's matmul and broadcast add.
            let linear = Linear { weight: t[1].clone(), bias: t.get(2).cloned(), layout };
            if fused(&[&t[0]]) {
                linear.forward(&t[0])
            } else {
                let rows: usize = t[0].dims()[..t[0].rank() - 1].iter().product();
                let x2 = t[0].reshape((rows, d_in))?;
                let y = match layout {
                    WeightLayout::InOut => x2.matmul(&t[1])?,
                    WeightLayout::OutIn => x2.matmul(&t[1].t()?)?,
                };
                let y = match t.get(2) {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                let mut shape = t[0].dims().to_vec();
                *shape.last_mut().expect("a last dimension") = d_out;
                y.reshape(shape)
            }
        })?;
        assert_close(&format!("{name}: value"), &fused_run.0, &plain.0, 1e-5, ulps(&plain.0, 16.0));
        for (i, part) in ["x", "weight", "bias"].iter().enumerate().take(inputs.len()) {
            assert_close(
                &format!("{name}: gradient of {part}"),
                &fused_run.1[i],
                &plain.1[i],
                1e-5,
                ulps(&plain.1[i], 64.0),
            );
        }
    }
    Ok(())
}

#[test]
fn fused_linear_gelu_matches_linear_then_candles_gelu() -> Result<()> {
    use crate::model::linear::{Layout as WeightLayout, Linear};
    // (name, leading dims of x, in, out, layout, bias, std of x)
    let cases = [
        ("GPT's c_fc: (in, out) with bias", vec![2, 30], 16, 64, WeightLayout::InOut, true, 1.0),
        ("(out, in) without bias", vec![50], 12, 20, WeightLayout::OutIn, false, 1.0),
        // Pre-activations out to about ±40: GELU's flat and linear tails.
        ("wide pre-activations", vec![3, 11], 24, 40, WeightLayout::InOut, true, 3.0),
    ];
    for (name, lead, d_in, d_out, layout, bias, std) in cases {
        let inputs = linear_inputs(73, &lead, d_in, d_out, layout, bias, std);
        // Fused: one op. Plain: candle's matmul, broadcast add and tanh GELU.
        let [fused_run, plain] =
            both(&inputs, |t| Linear { weight: t[1].clone(), bias: t.get(2).cloned(), layout }.forward_gelu(&t[0]))?;
        assert_close(&format!("{name}: value"), &fused_run.0, &plain.0, 1e-5, ulps(&plain.0, 64.0));
        for (i, part) in ["x", "weight", "bias"].iter().enumerate().take(inputs.len()) {
            assert_close(
                &format!("{name}: gradient of {part}"),
                &fused_run.1[i],
                &plain.1[i],
                1e-4,
                ulps(&plain.1[i], 64.0),
            );
        }
    }
    Ok(())
}

#[test]
fn fused_linear_reads_a_narrowed_weight() -> Result<()> {
    // GPT's decoding path multiplies by a third of c_attn's weight, a strided view.
    let w = tensor(random(73, &[16, 48], 1.0), &[16, 48]);
    let third = w.narrow(1, 16, 16)?;
    let x = tensor(random(74, &[40, 16], 1.0), &[40, 16]);
    let fused_y = with_kernels(Kernels::Fused, || linear(&x, &third, None, false))?;
    let plain_y = x.matmul(&third.contiguous()?)?;
    assert_close("narrowed weight", &flat(&fused_y), &flat(&plain_y), 1e-5, 1e-5);
    Ok(())
}

#[test]
fn fused_lm_head_loss_matches_logits_then_cross_entropy() -> Result<()> {
    // (name, leading dims, width, vocabulary, std of the hidden states)
    let cases = [
        ("random", vec![2, 5], 16, 37, 1.0),
        ("one row", vec![1], 8, 11, 1.0),
        ("long rows", vec![3], 12, 5000, 1.0),
        // Logits of magnitude ~1e3: the softmax is one-hot and the loss a difference of large
        // numbers.
        ("large logits", vec![2, 3], 16, 50, 300.0),
    ];
    for (name, lead, d, v, std) in cases {
        let x_shape: Vec<usize> = lead.iter().copied().chain([d]).collect();
        let n: usize = lead.iter().product();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919 + 3) % v) as u32).collect();
        let targets = Tensor::from_vec(targets, lead.as_slice(), &Device::Cpu)?;
        let inputs = [tensor(random(80, &x_shape, std), &x_shape), tensor(random(81, &[v, d], 1.0), &[v, d])];
        let [fused_run, plain] = both(&inputs, |t| {
            if fused(&[&t[0]]) {
                lm_head_cross_entropy(&t[0], &t[1], &targets)
            } else {
                cross_entropy_rows(&t[0].broadcast_matmul(&t[1].t()?)?, &targets)
            }
        })?;
        // The loss is a difference of logits of magnitude M: a few ulp of M, summed over d terms
        // in different orders by the two products.
        let m = ulps(&random(80, &x_shape, std), 1.0) * d as f32 * 4.0;
        let atol = (m * 64.0).max(1e-5);
        assert_close(&format!("{name}: loss"), &fused_run.0, &plain.0, 1e-5, atol);
        for (i, part) in ["hidden states", "head"].iter().enumerate() {
            let atol = ulps(&plain.1[i], 256.0).max(1e-6);
            assert_close(&format!("{name}: gradient of the {part}"), &fused_run.1[i], &plain.1[i], 1e-4, atol);
        }
    }
    Ok(())
}
