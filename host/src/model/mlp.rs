//! The feed-forward halves of the blocks: GPT-2's GELU MLP and Llama's SwiGLU.

use candle_core::{Result, Tensor};

use super::linear::Linear;

/// y = c_proj(gelu(c_fc(x))), 4x wide, GELU in GPT-2's tanh approximation ("gelu_new").
#[derive(Debug, Clone)]
pub struct GeluMlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

impl GeluMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&self.c_fc.forward_gelu(x)?)
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
