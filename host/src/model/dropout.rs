//! Dropout with masks from a seeded generator, so that a run is reproducible to the bit.
//!
//! candle's own dropout draws from an unseedable generator. Here the masks come from a `StdRng`
//! that the training loop reseeds with (seed, step) before each step
//! ([`crate::model::Model::seed_dropout`]): the masks of step `s` are then a pure function of the
//! seed and `s`, and an interrupted run resumes on exactly the same curve. Masks are drawn on the
//! host and uploaded (one transfer per dropout site on a GPU); with p = 0 nothing is drawn.

use std::sync::Mutex;

use candle_core::{Result, Tensor};
use rand::RngCore;
use rand::rngs::StdRng;

use super::init::{mix64, stream};

/// The model's dropout generator.
#[derive(Debug)]
pub struct DropoutRng {
    rng: Mutex<StdRng>,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        DropoutRng { rng: Mutex::new(Self::generator(seed, 0)) }
    }

    fn generator(seed: u64, step: u64) -> StdRng {
        stream(seed ^ mix64(step.wrapping_add(0x5eed)), "dropout")
    }

    /// Restarts the masks at the stream of (seed, step).
    pub fn reseed(&self, seed: u64, step: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = Self::generator(seed, step);
    }

    /// Zeroes each element with probability `p` and scales the rest by 1/(1-p).
    pub fn apply(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let threshold = (p * 4_294_967_296.0) as u64;
        let keep = (1.0 / (1.0 - p)) as f32;
        let mut mask = Vec::with_capacity(n + 1);
        {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            while mask.len() < n {
                let r = rng.next_u64();
                for u in [r & 0xffff_ffff, r >> 32] {
                    mask.push(if u >= threshold { keep } else { 0.0 });
                }
            }
        }
        mask.truncate(n);
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masks_are_a_function_of_seed_and_step() -> Result<()> {
        let x = Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu)?;
        let d = DropoutRng::new(1);
        d.reseed(9, 3);
        let a = d.apply(&x, 0.25)?.flatten_all()?.to_vec1::<f32>()?;
        let a2 = d.apply(&x, 0.25)?.flatten_all()?.to_vec1::<f32>()?;
        d.reseed(9, 3);
        let b = d.apply(&x, 0.25)?.flatten_all()?.to_vec1::<f32>()?;
        d.reseed(9, 4);
        let c = d.apply(&x, 0.25)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b, "same (seed, step) gives the same mask");
        assert_ne!(a, a2, "successive masks in a step differ");
        assert_ne!(a, c, "another step gives another mask");
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((0.2..0.3).contains(&dropped), "dropped fraction {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        Ok(())
    }
}
