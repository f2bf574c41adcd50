//! AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, applied only to the variables
//! that should decay (matmul weights; not norms, biases or embeddings), and global-norm gradient
//! clipping.
//!
//! The update for each variable, with bias-corrected moments:
//! ```text
//! m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
//! p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::kernels::{self, AdamWStep};

/// AdamW's hyperparameters (PyTorch's defaults, but weight decay 0.1 as GPT-2/nanoGPT train).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// One trained variable and its moments.
struct Slot {
    name: String,
    var: Var,
    decays: bool,
    m: Tensor,
    v: Tensor,
}

/// The optimizer state: moments per variable and the step count.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    /// Optimizer steps taken so far (`t` in the bias correction).
    pub steps: u64,
}

impl AdamW {
    /// An optimizer over named variables; `decays(name)` says which get weight decay.
    pub fn new(
        vars: &[(String, Var)],
        decays: impl Fn(&str) -> bool,
        config: AdamWConfig,
    ) -> candle_core::Result<Self> {
        let slots = vars
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    decays: decays(name),
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW { config, slots, steps: 0 })
    }

    /// The global L2 norm of the gradients, before clipping.
    pub fn grad_norm(&self, grads: &HashMap<String, Tensor>) -> candle_core::Result<f64> {
        let mut total = 0.0f64;
        for grad in grads.values() {
            total += if kernels::fused(&[grad]) {
                kernels::sum_of_squares(grad)?
            } else {
                grad.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
            };
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`. Gradients are scaled so their global norm is at most
    /// `clip` (when given). Variables without a gradient are left alone. Returns the norm before
    /// clipping; when it is not finite nothing is updated (a NaN or infinite gradient would turn
    /// every weight into NaN), and the caller reports the divergence.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64, clip: Option<f64>) -> candle_core::Result<f64> {
        let norm = self.grad_norm(grads)?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        let scale = match clip {
            Some(clip) if norm > clip => clip / (norm + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let t = self.steps as i32;
        let (correction1, correction2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for slot in &mut self.slots {
            let Some(grad) = grads.get(&slot.name) else { continue };
            let param = slot.var.as_tensor();
            if kernels::fused(&[param, grad, &slot.m, &slot.v]) && param.is_contiguous() {
                // The update below in three in-place passes (moments, then weights).
                let step = AdamWStep {
                    lr: lr as f32,
                    beta1: beta1 as f32,
                    beta2: beta2 as f32,
                    eps: eps as f32,
                    decay: if slot.decays { (1.0 - lr * weight_decay) as f32 } else { 1.0 },
                    correction1: correction1 as f32,
                    correction2: correction2 as f32,
                    grad_scale: scale as f32,
                };
                kernels::adamw_update(param, &slot.m, &slot.v, grad, step)?;
                continue;
            }
            let grad = if scale != 1.0 { grad.affine(scale, 0.0)? } else { grad.clone() };
            slot.m = ((slot.m.affine(beta1, 0.0)? + grad.affine(1.0 - beta1, 0.0)?)?).detach();
            slot.v = ((slot.v.affine(beta2, 0.0)? + grad.sqr()?.affine(1.0 - beta2, 0.0)?)?).detach();
            let denominator = slot.v.affine(1.0 / correction2, 0.0)?.sqrt()?.affine(1.0, eps)?;
            let update = slot.m.affine(1.0 / correction1, 0.0)?.div(&denominator)?;
            let param = slot.var.as_tensor();
            let decayed = if slot.decays { param.affine(1.0 - lr * weight_decay, 0.0)? } else { param.clone() };
            slot.var.set(&(decayed - update.affine(lr, 0.0)?)?)?;
        }
        Ok(norm)
    }

    /// The moments as named tensors (`<name>.m`, `<name>.v`), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for slot in &self.slots {
            state.insert(format!("{}.m", slot.name), slot.m.clone());
            state.insert(format!("{}.v", slot.name), slot.v.clone());
        }
        state
    }

    /// Restore moments saved by [`AdamW::state`]; every variable must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<(), String> {
        for slot in &mut self.slots {
            for (suffix, target) in [("m", &mut slot.m), ("v", &mut slot.v)] {
                let key = format!("{}.{suffix}", slot.name);
                let saved = state.get(&key).ok_or_else(|| format!("optimizer state has no `{key}`"))?;
                let saved =
                    &saved.to_dtype(candle_core::DType::F32).map_err(|e| format!("optimizer state `{key}`: {e}"))?;
                if saved.dims() != target.dims() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        saved.dims(),
                        target.dims()
                    ));
                }
                // A copy: the fused update writes the moments in place, and must not write into
                // the caller's tensors.
                *target = saved.copy().map_err(|e| format!("optimizer state `{key}`: {e}"))?.detach();
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{assert_close, flat, random, tensor};
    use crate::model::kernels::{Kernels, with_kernels};
    use candle_core::Device;

    #[test]
    fn fused_adamw_matches_the_plain_update_and_keeps_its_state_format() -> candle_core::Result<()> {
        let names = ["h.0.attn.c_attn.weight", "h.0.ln_1.bias"];
        let shapes: [&[usize]; 2] = [&[16, 48], &[48]];
        // The trained values of each variable, and the optimizer's state.
        type Trained = (Vec<Vec<f32>>, HashMap<String, Tensor>);
        let run = |kernels: Kernels| -> candle_core::Result<Trained> {
            with_kernels(kernels, || {
                let vars: Vec<(String, Var)> = names
                    .iter()
                    .zip(shapes)
                    .enumerate()
                    .map(|(i, (n, s))| {
                        Ok((n.to_string(), Var::from_tensor(&tensor(random(20 + i as u64, s, 0.5), s))?))
                    })
                    .collect::<candle_core::Result<_>>()?;
                let mut adam = AdamW::new(&vars, crate::model::decays, AdamWConfig::default())?;
                for step in 0..5u64 {
                    // Large gradients on some steps, so that clipping scales them.
                    let std = if step % 2 == 0 { 3.0 } else { 0.01 };
                    let grads: HashMap<String, Tensor> = names
                        .iter()
                        .zip(shapes)
                        .enumerate()
                        .map(|(i, (n, s))| (n.to_string(), tensor(random(30 + 10 * step + i as u64, s, std), s)))
                        .collect();
                    adam.step(&grads, 1e-2, Some(1.0))?;
                }
                Ok((vars.iter().map(|(_, v)| flat(v.as_tensor())).collect(), adam.state()))
            })
        };
        let (fused, fused_state) = run(Kernels::Fused)?;
        let (plain, plain_state) = run(Kernels::Plain)?;
        for (i, name) in names.iter().enumerate() {
            assert_close(&format!("{name} after 5 steps"), &fused[i], &plain[i], 1e-5, 1e-6);
        }
        let mut keys: Vec<&String> = fused_state.keys().collect();
        keys.sort();
        let mut plain_keys: Vec<&String> = plain_state.keys().collect();
        plain_keys.sort();
        assert_eq!(keys, plain_keys, "the same state entries");
        for key in keys {
            assert_close(key, &flat(&fused_state[key]), &flat(&plain_state[key]), 1e-5, 1e-9);
        }
        Ok(())
    }

    #[test]
    fn loaded_adamw_state_is_copied_not_aliased() -> candle_core::Result<()> {
        let w = Var::from_tensor(&tensor(vec![1.0, 2.0], &[2]))?;
        let mut adam = AdamW::new(&[("w".into(), w)], |_| true, AdamWConfig::default())?;
        let saved: HashMap<String, Tensor> =
            [("w.m".to_string(), tensor(vec![0.1, 0.2], &[2])), ("w.v".to_string(), tensor(vec![0.01, 0.04], &[2]))]
                .into();
        adam.load_state(&saved, 3).map_err(candle_core::Error::Msg)?;
        let grads: HashMap<String, Tensor> = [("w".to_string(), tensor(vec![1.0, -1.0], &[2]))].into();
        with_kernels(Kernels::Fused, || adam.step(&grads, 1e-2, None))?;
        assert_eq!(flat(&saved["w.m"]), vec![0.1, 0.2], "the caller's tensors are untouched");
        assert_ne!(flat(&adam.state()["w.m"]), vec![0.1, 0.2], "the optimizer's own moments moved");
        Ok(())
    }

    /// One step by hand against the formula, for a decayed and an undecayed variable.
    #[test]
    fn one_step_matches_the_formula_and_decay_is_decoupled() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &device)?)?;
        let b = Var::from_tensor(&Tensor::new(&[0.5f32], &device)?)?;
        let vars = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
        let config = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let mut adam = AdamW::new(&vars, |name| name == "w", config)?;
        let grads: HashMap<String, Tensor> = [
            ("w".to_string(), Tensor::new(&[0.5f32, 0.25], &device)?),
            ("b".to_string(), Tensor::new(&[-1.0f32], &device)?),
        ]
        .into();
        adam.step(&grads, 0.01, None)?;
        // After one step m_hat = g and v_hat = g^2, so the Adam update is sign(g) (up to eps).
        let w_now = w.as_tensor().to_vec1::<f32>()?;
        let expected_w = [1.0 * (1.0 - 0.01 * 0.1) - 0.01, -2.0 * (1.0 - 0.01 * 0.1) - 0.01];
        for (got, want) in w_now.iter().zip(expected_w) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!((b.as_tensor().to_vec1::<f32>()?[0] - 0.51).abs() < 1e-6, "no decay on b");
        Ok(())
    }

    #[test]
    fn clipping_scales_the_global_norm() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[0.0f32, 0.0], &device)?)?;
        let mut adam = AdamW::new(&[("w".into(), w)], |_| true, AdamWConfig::default())?;
        let grads: HashMap<String, Tensor> = [("w".to_string(), Tensor::new(&[3.0f32, 4.0], &device)?)].into();
        assert!((adam.step(&grads, 0.1, Some(1.0))? - 5.0).abs() < 1e-6, "reports the norm before clipping");
        Ok(())
    }
}
