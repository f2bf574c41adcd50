//! Affine maps over the last dimension, with the weight in either Hugging Face layout.
//!
//! GPT-2 stores its projections as `Conv1D`, weight `(in, out)`: y = x·W + b. Llama (and every
//! `nn.Linear`) stores `(out, in)`: y = x·Wᵀ. Keeping each family's own layout in memory means
//! checkpoints need no transposition at all, and the matmul reads either layout in place (a
//! transposed view costs nothing). Leading dimensions are folded into rows first so that forward
//! and backward are each a single 2-D matmul (a weight broadcast over the batch would make the
//! backward pass build and then sum a per-batch weight gradient).
//!
//! With few rows (decoding: one per sequence) and an `(out, in)` weight, `y = (W xᵀ)ᵀ` is the
//! same product with the weight as the left operand, which candle's gemm runs 1.3-2x faster
//! (measured at 1-32 rows, for instance 1.7x on an 8-row LM head of 4096 x 256); training's
//! thousands of rows keep `x Wᵀ`.
//!
//! Otherwise, with the fused kernels in force on the CPU, the whole map is one op
//! (`kernels::linear`) whose backward skips candle's per-node gradient buffers.

use candle_core::{Result, Tensor};

use super::kernels;

/// Which way the weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `(in, out)`, Hugging Face GPT-2 `Conv1D`.
    InOut,
    /// `(out, in)`, `torch.nn.Linear`.
    OutIn,
}

/// Up to this many rows, an `(out, in)` weight multiplies from the left (see the module notes).
const FEW_ROWS: usize = 32;

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: Layout,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) {
            // One op for reshape, product, bias and reshape: one backward node instead of four
            // (see `kernels::linear`).
            return kernels::linear(x, &self.weight, self.bias.as_ref(), self.layout == Layout::OutIn);
        }
        let dims = x.dims();
        let (lead, d_in) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, d_in[0]))?;
        let y = match self.layout {
            Layout::InOut => x2.matmul(&self.weight)?,
            Layout::OutIn if rows <= FEW_ROWS => self.weight.matmul(&x2.t()?)?.t()?,
            Layout::OutIn => x2.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            // The same broadcast add, with a backward that sums the bias gradient row by row.
            Some(b) if y.is_contiguous() && kernels::fused(&[&y, b]) => kernels::add_bias(&y, b)?,
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let d_out = y.dim(1)?;
        let mut out = lead.to_vec();
        out.push(d_out);
        y.reshape(out)
    }

    /// GELU(self(x)), GPT-2's tanh approximation ("gelu_new"): one op with the fused kernels
    /// (`kernels::linear_gelu`), whose backward needs no node for the activation.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) {
            return kernels::linear_gelu(x, &self.weight, self.bias.as_ref(), self.layout == Layout::OutIn);
        }
        let h = self.forward(x)?;
        // candle's `gelu` is the tanh approximation, with a backward pass of a dozen ops; the
        // fused kernel computes the same in one pass each way.
        if kernels::fused(&[&h]) { kernels::gelu(&h) } else { h.gelu() }
    }

    /// Whether the fused op computes this map for `x`: fused kernels in force, and not the few
    /// rows that multiply best from the left.
    fn fused_for(&self, x: &Tensor) -> bool {
        let rows: usize = x.dims().split_last().map_or(0, |(_, lead)| lead.iter().product());
        let few = self.layout == Layout::OutIn && rows <= FEW_ROWS;
        !few && kernels::fused(&[x, &self.weight])
    }
}

/// Row lookup of token ids `idx` (B, T) in an embedding table (V, D): (B, T, D).
pub fn embed(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (b, t) = idx.dims2()?;
    table.embedding(&idx.flatten_all()?)?.reshape((b, t, table.dim(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{normal_values, stream};
    use candle_core::{Device, Var};

    fn random(seed: u64, shape: (usize, usize)) -> Result<Tensor> {
        Tensor::from_vec(normal_values(&mut stream(seed, "linear"), shape.0 * shape.1, 1.0), shape, &Device::Cpu)
    }

    #[test]
    fn few_and_many_rows_give_the_same_product_and_gradients() -> Result<()> {
        let w = Var::from_tensor(&random(1, (24, 40))?)?;
        for rows in [1, 5, FEW_ROWS, FEW_ROWS + 1, 100] {
            let x = random(2, (rows, 40))?;
            for bias in [None, Some(random(3, (1, 24))?.squeeze(0)?)] {
                let linear = Linear { weight: w.as_tensor().clone(), bias: bias.clone(), layout: Layout::OutIn };
                let y = linear.forward(&x.reshape((1, rows, 40))?)?;
                assert_eq!(y.dims(), &[1, rows, 24]);
                let mut want = x.matmul(&w.as_tensor().t()?.contiguous()?)?;
                if let Some(b) = &bias {
                    want = want.broadcast_add(b)?;
                }
                let diff = (y.squeeze(0)? - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{rows} rows: {diff}");
                let g = y.sum_all()?.backward()?;
                let g = g.get(&w).expect("a weight gradient").sum_all()?.to_scalar::<f32>()?;
                let g_want = x.sum_all()?.to_scalar::<f32>()? * 24.0;
                assert!((g - g_want).abs() < 1e-3 * g_want.abs().max(1.0), "{rows} rows: gradient {g} vs {g_want}");
            }
        }
        Ok(())
    }
}
