//! Affine maps over the last dimension, with the weight in either Hugging Face layout.
//!
//! GPT-2 stores its projections as `Conv1D`, weight `(in, out)`: y = x·W + b. Llama (and every
//! `nn.Linear`) stores `(out, in)`: y = x·Wᵀ. Keeping each family's own layout in memory means
//! checkpoints need no transposition at all, and the matmul reads either layout in place (a
//! transposed view costs nothing). Leading dimensions are folded into rows first so that forward
//! and backward are each a single 2-D matmul (a weight broadcast over the batch would make the
//! backward pass build and then sum a per-batch weight gradient).

use candle_core::{Result, Tensor};

/// Which way the weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `(in, out)`, Hugging Face GPT-2 `Conv1D`.
    InOut,
    /// `(out, in)`, `torch.nn.Linear`.
    OutIn,
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: Layout,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (lead, d_in) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, d_in[0]))?;
        let y = match self.layout {
            Layout::InOut => x2.matmul(&self.weight)?,
            Layout::OutIn => x2.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let d_out = y.dim(1)?;
        let mut out = lead.to_vec();
        out.push(d_out);
        y.reshape(out)
    }
}

/// Row lookup of token ids `idx` (B, T) in an embedding table (V, D): (B, T, D).
pub fn embed(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (b, t) = idx.dims2()?;
    table.embedding(&idx.flatten_all()?)?.reshape((b, t, table.dim(1)?))
}
