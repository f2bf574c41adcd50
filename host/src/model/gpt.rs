//! GPT-2: learned positions, pre-LayerNorm blocks, GELU MLP, LM head tied to the token
//! embedding. Tensor names and layouts are Hugging Face's `GPT2Model` (projections are `Conv1D`,
//! weight `(in, out)`), so a checkpoint loads in `transformers` as is.
//!
//! ```text
//! x = drop(wte[idx] + wpe[pos])
//! x = x + drop(attn(ln_1(x)))        for each block
//! x = x + drop(mlp(ln_2(x)))
//! h = ln_f(x)                        logits = h wteᵀ
//! ```

use candle_core::{Result, Tensor};

use super::Params;
use super::attention::{GptAttention, LayerKv, Pass};
use super::config::GptConfig;
use super::init::{INIT_STD, Init, ParamSpec, residual_std};
use super::linear::{Layout, Linear};
use super::mlp::GeluMlp;
use super::norm::{LAYER_NORM_EPS, LayerNorm};

/// Every parameter of a GPT-2 with this config, in Hugging Face names.
pub fn param_specs(c: &GptConfig) -> Vec<ParamSpec> {
    let d = c.d_model;
    let normal = Init::Normal { std: INIT_STD };
    let residual = Init::Normal { std: residual_std(c.layers) };
    let mut specs = vec![
        ParamSpec::new("wte.weight", &[c.vocab_size, d], normal),
        ParamSpec::new("wpe.weight", &[c.context, d], normal),
    ];
    let norm = |specs: &mut Vec<ParamSpec>, name: String| {
        specs.push(ParamSpec::new(format!("{name}.weight"), &[d], Init::Ones));
        if c.bias {
            specs.push(ParamSpec::new(format!("{name}.bias"), &[d], Init::Zeros));
        }
    };
    let conv1d = |specs: &mut Vec<ParamSpec>, name: String, d_in: usize, d_out: usize, init: Init| {
        specs.push(ParamSpec::new(format!("{name}.weight"), &[d_in, d_out], init));
        if c.bias {
            specs.push(ParamSpec::new(format!("{name}.bias"), &[d_out], Init::Zeros));
        }
    };
    for i in 0..c.layers {
        norm(&mut specs, format!("h.{i}.ln_1"));
        conv1d(&mut specs, format!("h.{i}.attn.c_attn"), d, 3 * d, normal);
        conv1d(&mut specs, format!("h.{i}.attn.c_proj"), d, d, residual);
        norm(&mut specs, format!("h.{i}.ln_2"));
        conv1d(&mut specs, format!("h.{i}.mlp.c_fc"), d, 4 * d, normal);
        conv1d(&mut specs, format!("h.{i}.mlp.c_proj"), 4 * d, d, residual);
    }
    norm(&mut specs, "ln_f".into());
    specs
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: GptAttention,
    ln_2: LayerNorm,
    mlp: GeluMlp,
}

impl Block {
    fn forward(&self, x: &Tensor, pass: &Pass, cache: Option<&LayerKv>) -> Result<Tensor> {
        let x = (x + pass.drop(&self.attn.forward(&self.ln_1.forward(x)?, pass, cache)?)?)?;
        &x + pass.drop(&self.mlp.forward(&self.ln_2.forward(&x)?)?)?
    }
}

/// The GPT-2 trunk.
#[derive(Debug, Clone)]
pub struct Gpt {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    pub(crate) fn new(c: &GptConfig, p: &Params) -> Result<Gpt> {
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: p.get(&format!("{name}.weight"))?,
                bias: if c.bias { Some(p.get(&format!("{name}.bias"))?) } else { None },
                eps: LAYER_NORM_EPS,
            })
        };
        let conv1d = |name: &str| -> Result<Linear> {
            Ok(Linear {
                weight: p.get(&format!("{name}.weight"))?,
                bias: if c.bias { Some(p.get(&format!("{name}.bias"))?) } else { None },
                layout: Layout::InOut,
            })
        };
        let blocks = (0..c.layers)
            .map(|i| {
                Ok(Block {
                    ln_1: norm(&format!("h.{i}.ln_1"))?,
                    attn: GptAttention {
                        c_attn: conv1d(&format!("h.{i}.attn.c_attn"))?,
                        c_proj: conv1d(&format!("h.{i}.attn.c_proj"))?,
                        heads: c.heads,
                    },
                    ln_2: norm(&format!("h.{i}.ln_2"))?,
                    mlp: GeluMlp {
                        c_fc: conv1d(&format!("h.{i}.mlp.c_fc"))?,
                        c_proj: conv1d(&format!("h.{i}.mlp.c_proj"))?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpt { wte: p.get("wte.weight")?, wpe: p.get("wpe.weight")?, blocks, ln_f: norm("ln_f")? })
    }

    /// Hidden states after `ln_f`, (B, T, D), for tokens (B, T) at positions `pass.pos..`, or
    /// at `pass.positions` per row.
    pub(crate) fn hidden(&self, idx: &Tensor, pass: &Pass, cache: Option<&[LayerKv]>) -> Result<Tensor> {
        let tok = super::linear::embed(&self.wte, idx)?;
        let pos = match &pass.positions {
            Some(positions) => super::linear::embed(&self.wpe, positions)?,
            None => self.wpe.narrow(0, pass.pos, idx.dim(1)?)?,
        };
        let mut x = pass.drop(&tok.broadcast_add(&pos)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, pass, cache.map(|layers| &layers[i]))?;
        }
        self.ln_f.forward(&x)
    }

    /// The LM head's weight, (V, D): the token embedding (tied).
    pub(crate) fn lm_head(&self) -> &Tensor {
        &self.wte
    }
}
