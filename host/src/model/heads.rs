//! Heads on top of the trunk's hidden states.
//!
//! The LM head is part of [`crate::model::Model`] (`lm_logits`), tied to the token embedding or
//! not. [`ScalarHead`] maps each position's hidden state to one number: PPO's value head, and the
//! reward model's head, whose reward for a sequence is the value at its last real token
//! ([`last_token_values`]; sequences are right-padded, and causal attention keeps the padding
//! from influencing any earlier position).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::checkpoint::{load_tensors, save_tensors_atomically};
use super::init::{INIT_STD, Init, ParamSpec, init_var};
use super::linear::{Layout, Linear};
use super::{ModelError, WithContext};

/// Linear(d_model, 1): one scalar per position. Tensor names follow Hugging Face's
/// sequence-classification heads (`score.weight` (1, D), plus `score.bias`).
#[derive(Debug, Clone)]
pub struct ScalarHead {
    weight: Var,
    bias: Var,
}

impl ScalarHead {
    pub const WEIGHT: &'static str = "score.weight";
    pub const BIAS: &'static str = "score.bias";

    fn specs(d_model: usize) -> [ParamSpec; 2] {
        [
            ParamSpec::new(Self::WEIGHT, &[1, d_model], Init::Normal { std: INIT_STD }),
            ParamSpec::new(Self::BIAS, &[1], Init::Zeros),
        ]
    }

    /// A fresh head, weight normal(0, 0.02) from `seed`, bias zero.
    pub fn new(d_model: usize, device: &Device, seed: u64) -> Result<ScalarHead, ModelError> {
        let [w, b] = Self::specs(d_model);
        Ok(ScalarHead {
            weight: init_var(&w, seed, device).ctx(|| format!("initialising {}", w.name))?,
            bias: init_var(&b, seed, device).ctx(|| format!("initialising {}", b.name))?,
        })
    }

    /// A head from `score.weight` (1, D) and `score.bias` (1); other tensors are ignored (the
    /// map may hold a whole checkpoint). The tensors are copied.
    pub fn from_weights(
        weights: &HashMap<String, Tensor>,
        d_model: usize,
        device: &Device,
    ) -> Result<ScalarHead, ModelError> {
        let [w, b] = Self::specs(d_model).map(|spec| {
            let t = weights
                .get(&spec.name)
                .ok_or_else(|| ModelError::MissingTensor { name: spec.name.clone(), expected: spec.shape.clone() })?;
            if t.dims() != spec.shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    actual: t.dims().to_vec(),
                });
            }
            let t = t.detach().to_dtype(DType::F32).and_then(|t| t.to_device(device));
            t.and_then(|t| Var::from_tensor(&t)).ctx(|| format!("loading {}", spec.name))
        });
        Ok(ScalarHead { weight: w?, bias: b? })
    }

    /// (B, T, D) hidden states -> (B, T) scalars.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let linear = Linear {
            weight: self.weight.as_tensor().clone(),
            bias: Some(self.bias.as_tensor().clone()),
            layout: Layout::OutIn,
        };
        linear.forward(hidden).and_then(|v| v.squeeze(candle_core::D::Minus1)).ctx(|| "scalar head".into())
    }

    /// The trainable variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        vec![(Self::BIAS.into(), self.bias.clone()), (Self::WEIGHT.into(), self.weight.clone())]
    }

    /// Current values, detached from the graph.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.vars().into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect()
    }

    /// Writes the head as a safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        save_tensors_atomically(path, &self.weights())
    }

    /// Reads a head written by [`ScalarHead::save`]; `d_model` is taken from the file.
    pub fn load(path: &Path, device: &Device) -> Result<ScalarHead, ModelError> {
        let weights = load_tensors(path, device)?;
        let d_model = weights.get(Self::WEIGHT).and_then(|w| w.dims().get(1).copied()).ok_or_else(|| {
            ModelError::Format { path: path.to_path_buf(), message: format!("no 2-D `{}` tensor", Self::WEIGHT) }
        })?;
        Self::from_weights(&weights, d_model, device)
    }
}

/// The value at each sequence's last real token: `values` (B, T), `lengths[b]` the number of
/// real (non-pad) tokens of row b. Returns (B); differentiable with respect to `values`.
pub fn last_token_values(values: &Tensor, lengths: &[usize]) -> Result<Tensor, ModelError> {
    let (b, t) = values.dims2().ctx(|| "last_token_values: values must be (batch, time)".into())?;
    if lengths.len() != b {
        return Err(ModelError::Input(format!("last_token_values: {} lengths for a batch of {b}", lengths.len())));
    }
    if let Some((row, &len)) = lengths.iter().enumerate().find(|&(_, &len)| len == 0 || len > t) {
        return Err(ModelError::Input(format!("last_token_values: row {row} has length {len}, outside 1..={t}")));
    }
    let last: Vec<u32> = lengths.iter().map(|&len| (len - 1) as u32).collect();
    let idx = Tensor::from_vec(last, (b, 1), values.device()).ctx(|| "last_token_values: indices".into())?;
    values.gather(&idx, 1).and_then(|v| v.squeeze(1)).ctx(|| "last_token_values".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_last_real_token_and_passes_gradients() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let v = Var::from_tensor(&Tensor::new(&[[1f32, 2., 3., 4.], [5., 6., 7., 8.]], &dev).unwrap()).unwrap();
        let r = last_token_values(&v, &[3, 1])?;
        assert_eq!(r.to_vec1::<f32>().unwrap(), vec![3., 5.]);
        let g = r.sum_all().unwrap().backward().unwrap();
        let g = g.get(&v).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![0., 0., 1., 0.], vec![1., 0., 0., 0.]]);
        assert!(matches!(last_token_values(&v, &[0, 1]), Err(ModelError::Input(_))));
        assert!(matches!(last_token_values(&v, &[5, 1]), Err(ModelError::Input(_))));
        assert!(matches!(last_token_values(&v, &[1]), Err(ModelError::Input(_))));
        Ok(())
    }

    #[test]
    fn head_round_trips_through_a_file() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let head = ScalarHead::new(8, &dev, 5)?;
        let dir = std::env::temp_dir().join(format!("triad-head-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("value_head.safetensors");
        head.save(&path)?;
        let back = ScalarHead::load(&path, &dev)?;
        let h = Tensor::ones((2, 3, 8), DType::F32, &dev).unwrap();
        let (a, b) = (head.forward(&h)?, back.forward(&h)?);
        assert_eq!(a.dims(), &[2, 3]);
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        Ok(())
    }
}
