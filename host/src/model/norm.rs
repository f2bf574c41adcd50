//! LayerNorm (GPT-2) and RMSNorm (Llama), written with plain tensor ops.
//!
//! `candle_nn::LayerNorm::forward` and `RmsNorm::forward` dispatch to fused kernels that have no
//! backward pass on contiguous input: gradients silently stop there and every weight below the
//! norm stops training. These compositions are differentiable everywhere and run on any device;
//! on the CPU, the fused kernels of [`super::kernels`] (with their own backward) replace them.

use candle_core::{D, Result, Tensor};

use super::kernels;

/// GPT-2's LayerNorm epsilon.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// y = (x - mean) / sqrt(var + eps) * weight + bias, over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fused(&[x, &self.weight]) {
            // Fuses the row mean and variance, normalisation, scale and shift below.
            return kernels::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x.broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// y = x / sqrt(mean(x²) + eps) * weight, over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fused(&[x, &self.weight]) {
            // Fuses the mean square, normalisation and scale below.
            return kernels::rms_norm(x, &self.weight, self.eps);
        }
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_mul(&(ms + self.eps)?.sqrt()?.recip()?)?.broadcast_mul(&self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn norms_match_candle_and_pass_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[[1f32, -2., 3., 0.5], [0.1, 0.2, -0.3, 4.0]], &dev)?)?;
        let w = Var::from_tensor(&Tensor::new(&[1.5f32, 0.5, -1.0, 2.0], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &dev)?)?;

        let ln = LayerNorm { weight: w.as_tensor().clone(), bias: Some(b.as_tensor().clone()), eps: 1e-5 };
        let ours = ln.forward(&x)?;
        let fused = candle_nn::ops::layer_norm(x.as_tensor(), &w, &b, 1e-5)?;
        let diff = (&ours - &fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "layer norm differs by {diff}");

        let rms = RmsNorm { weight: w.as_tensor().clone(), eps: 1e-5 };
        let ours_rms = rms.forward(&x)?;
        let fused = candle_nn::ops::rms_norm(x.as_tensor(), &w, 1e-5)?;
        let diff = (&ours_rms - &fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "rms norm differs by {diff}");

        // A non-symmetric loss so that no gradient vanishes by symmetry.
        let coef = Tensor::new(&[[1f32, 2., 3., 4.], [-1., 0.5, 2., -3.]], &dev)?;
        let loss = ((ours * &coef)?.sum_all()? + (ours_rms * &coef)?.sum_all()?)?;
        let grads = loss.backward()?;
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let g = grads.get(v).expect("gradient present");
            let n = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(n > 0.0, "no gradient reaches {name}");
        }
        Ok(())
    }
}
