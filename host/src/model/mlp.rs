//! The feed-forward halves of the blocks: GPT-2's GELU MLP and Llama's SwiGLU.

use candle_core::{Result, Tensor};

use super::kernels;
use super::linear::Linear;

/// y = c_proj(gelu(c_fc(x))), 4x wide, GELU in GPT-2's tanh approximation ("gelu_new").
#[derive(Debug, Clone)]
pub struct GeluMlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

impl GeluMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        // candle's `gelu` is the tanh approximation, with a backward pass of a dozen ops; the
        // fused kernel computes the same in one pass each way.
        let h = if kernels::fused(&[&h]) { kernels::gelu(&h)? } else { h.gelu()? };
        self.c_proj.forward(&h)
    }
}

/// y = down_proj(silu(gate_proj(x)) * up_proj(x)).
#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl SwiGlu {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}
