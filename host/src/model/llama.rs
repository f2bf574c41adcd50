//! Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, tied or untied LM head. Tensor names
//! and layouts are Hugging Face's `LlamaForCausalLM`.
//!
//! ```text
//! x = embed_tokens[idx]
//! x = x + attn(input_layernorm(x))              for each layer (RoPE inside attn)
//! x = x + mlp(post_attention_layernorm(x))
//! h = norm(x)                                   logits = h lm_headᵀ  (lm_head = embed_tokens if tied)
//! ```

use candle_core::{Device, Result, Tensor};

use super::Params;
use super::attention::{LayerKv, LlamaAttention, Pass};
use super::config::LlamaConfig;
use super::init::{INIT_STD, Init, ParamSpec, residual_std};
use super::linear::{Layout, Linear};
use super::mlp::SwiGlu;
use super::norm::RmsNorm;
use super::rope::{Angles, Rope};

/// Every parameter of a Llama with this config, in Hugging Face names. The GPT-2 init is used
/// here too, residual projections (`o_proj`, `down_proj`) scaled by 1/sqrt(2 * layers).
pub fn param_specs(c: &LlamaConfig) -> Vec<ParamSpec> {
    let (d, hd, f) = (c.d_model, c.head_dim(), c.ffn_hidden);
    let normal = Init::Normal { std: INIT_STD };
    let residual = Init::Normal { std: residual_std(c.layers) };
    let mut specs = vec![ParamSpec::new("model.embed_tokens.weight", &[c.vocab_size, d], normal)];
    for i in 0..c.layers {
        let l = format!("model.layers.{i}");
        specs.extend([
            ParamSpec::new(format!("{l}.input_layernorm.weight"), &[d], Init::Ones),
            ParamSpec::new(format!("{l}.self_attn.q_proj.weight"), &[c.heads * hd, d], normal),
            ParamSpec::new(format!("{l}.self_attn.k_proj.weight"), &[c.kv_heads * hd, d], normal),
            ParamSpec::new(format!("{l}.self_attn.v_proj.weight"), &[c.kv_heads * hd, d], normal),
            ParamSpec::new(format!("{l}.self_attn.o_proj.weight"), &[d, c.heads * hd], residual),
            ParamSpec::new(format!("{l}.post_attention_layernorm.weight"), &[d], Init::Ones),
            ParamSpec::new(format!("{l}.mlp.gate_proj.weight"), &[f, d], normal),
            ParamSpec::new(format!("{l}.mlp.up_proj.weight"), &[f, d], normal),
            ParamSpec::new(format!("{l}.mlp.down_proj.weight"), &[d, f], residual),
        ]);
    }
    specs.push(ParamSpec::new("model.norm.weight", &[d], Init::Ones));
    if !c.tie_embeddings {
        specs.push(ParamSpec::new("lm_head.weight", &[c.vocab_size, d], normal));
    }
    specs
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    post_attention_layernorm: RmsNorm,
    mlp: SwiGlu,
}

impl Block {
    fn forward(&self, x: &Tensor, rope: &Angles, pass: &Pass, cache: Option<&LayerKv>) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, pass, cache)?)?;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

/// The Llama trunk.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    rope: Rope,
}

impl Llama {
    pub(crate) fn new(c: &LlamaConfig, p: &Params, device: &Device) -> Result<Llama> {
        let linear = |name: String| -> Result<Linear> {
            Ok(Linear { weight: p.get(&format!("{name}.weight"))?, bias: None, layout: Layout::OutIn })
        };
        let rms = |name: String| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: p.get(&format!("{name}.weight"))?, eps: c.rms_eps })
        };
        let layers = (0..c.layers)
            .map(|i| {
                let l = format!("model.layers.{i}");
                Ok(Block {
                    input_layernorm: rms(format!("{l}.input_layernorm"))?,
                    self_attn: LlamaAttention {
                        q_proj: linear(format!("{l}.self_attn.q_proj"))?,
                        k_proj: linear(format!("{l}.self_attn.k_proj"))?,
                        v_proj: linear(format!("{l}.self_attn.v_proj"))?,
                        o_proj: linear(format!("{l}.self_attn.o_proj"))?,
                        heads: c.heads,
                        kv_heads: c.kv_heads,
                        head_dim: c.head_dim(),
                    },
                    post_attention_layernorm: rms(format!("{l}.post_attention_layernorm"))?,
                    mlp: SwiGlu {
                        gate_proj: linear(format!("{l}.mlp.gate_proj"))?,
                        up_proj: linear(format!("{l}.mlp.up_proj"))?,
                        down_proj: linear(format!("{l}.mlp.down_proj"))?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Llama {
            embed_tokens: p.get("model.embed_tokens.weight")?,
            layers,
            norm: rms("model.norm".into())?,
            lm_head: if c.tie_embeddings { None } else { Some(p.get("lm_head.weight")?) },
            rope: Rope::new(c.head_dim(), c.context, c.rope_theta, device)?,
        })
    }

    /// Hidden states after the final norm, (B, T, D), for tokens (B, T) at positions
    /// `pass.pos..`, or at `pass.positions` per row.
    pub(crate) fn hidden(&self, idx: &Tensor, pass: &Pass, cache: Option<&[LayerKv]>) -> Result<Tensor> {
        let angles = match &pass.positions {
            Some(positions) => self.rope.angles_at(positions)?,
            None => self.rope.angles(pass.pos, idx.dim(1)?)?,
        };
        let mut x = super::linear::embed(&self.embed_tokens, idx)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &angles, pass, cache.map(|layers| &layers[i]))?;
        }
        self.norm.forward(&x)
    }

    /// The LM head's weight, (V, D): `lm_head`, or the token embedding when tied.
    pub(crate) fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}
