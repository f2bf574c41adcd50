//! Rotary position embeddings, laid out as Hugging Face Llama does it.
//!
//! Dimension `i` of a head is paired with dimension `i + d/2` (the "rotate_half" layout, not the
//! interleaved pairs of the original paper or of llama.cpp), and the pair is rotated by the angle
//! `pos * theta^(-2i/d)`:
//!
//! ```text
//! x' = x * cos + rotate_half(x) * sin,    rotate_half([x1, x2]) = [-x2, x1]
//! ```
//!
//! The cos/sin tables cover the whole context and are computed once, in f32 as `transformers`
//! computes them, so that logits match a Hugging Face forward pass closely. A forward pass picks
//! its rows once ([`Angles`]) and every layer rotates with them: a narrow for positions
//! `pos..pos + T`, or a gather per row for left-padded batches, whose rows each start at 0.

use candle_core::{D, Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Rope {
    /// (context, head_dim): cos of the angle of each position and dimension.
    cos: Tensor,
    /// (context, head_dim): sin of the same.
    sin: Tensor,
}

impl Rope {
    pub fn new(head_dim: usize, context: usize, theta: f64, device: &Device) -> Result<Rope> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut cos = Vec::with_capacity(context * head_dim);
        let mut sin = Vec::with_capacity(context * head_dim);
        for pos in 0..context {
            // Both halves of a row use the same angles: dimension i pairs with i + half.
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (context, head_dim), device)?,
            sin: Tensor::from_vec(sin, (context, head_dim), device)?,
        })
    }

    /// The angles of positions `pos..pos + t`, the same for every row: (t, head_dim).
    pub fn angles(&self, pos: usize, t: usize) -> Result<Angles> {
        Ok(Angles { cos: self.cos.narrow(0, pos, t)?, sin: self.sin.narrow(0, pos, t)? })
    }

    /// The angles of per-row positions (B, T) u32: (B, 1, T, head_dim), broadcast over heads.
    pub fn angles_at(&self, positions: &Tensor) -> Result<Angles> {
        let (b, t) = positions.dims2()?;
        let d = self.cos.dim(1)?;
        let flat = positions.flatten_all()?;
        let pick = |table: &Tensor| table.index_select(&flat, 0)?.reshape((b, 1, t, d));
        Ok(Angles { cos: pick(&self.cos)?, sin: pick(&self.sin)? })
    }

    /// Rotates `x` of shape (B, H, T, head_dim), whose rows sit at positions `pos..pos + T`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        self.angles(pos, x.dim(2)?)?.rotate(x)
    }
}

/// cos and sin of the positions of one forward pass, broadcastable over (B, H, T, head_dim).
#[derive(Debug, Clone)]
pub struct Angles {
    cos: Tensor,
    sin: Tensor,
}

impl Angles {
    /// x' = x * cos + rotate_half(x) * sin, for x (B, H, T, head_dim).
    pub fn rotate(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.cos)? + rotate_half(x)?.broadcast_mul(&self.sin)?
    }
}

/// [x1, x2] -> [-x2, x1], halves taken over the last dimension.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{normal_values, stream};

    fn vector(seed: u64, d: usize) -> Result<Tensor> {
        Tensor::from_vec(normal_values(&mut stream(seed, "v"), d, 1.0), (1, 1, 1, d), &Device::Cpu)
    }

    fn dot(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a * b)?.sum_all()?.to_scalar::<f32>()
    }

    #[test]
    fn scores_depend_only_on_relative_position() -> Result<()> {
        let d = 16;
        let rope = Rope::new(d, 64, 10_000.0, &Device::Cpu)?;
        let (q, k) = (vector(1, d)?, vector(2, d)?);
        for (m, n) in [(5usize, 2usize), (9, 9), (3, 7)] {
            let base = dot(&rope.apply(&q, m)?, &rope.apply(&k, n)?)?;
            for shift in [1usize, 10, 40] {
                let shifted = dot(&rope.apply(&q, m + shift)?, &rope.apply(&k, n + shift)?)?;
                assert!((base - shifted).abs() < 1e-4, "({m},{n}) shifted by {shift}: {base} vs {shifted}");
            }
        }
        // ...and it does depend on the relative position (the rotation is not the identity).
        let a = dot(&rope.apply(&q, 5)?, &rope.apply(&k, 2)?)?;
        let b = dot(&rope.apply(&q, 5)?, &rope.apply(&k, 4)?)?;
        assert!((a - b).abs() > 1e-3);
        Ok(())
    }

    #[test]
    fn per_row_positions_rotate_each_row_as_its_own_positions() -> Result<()> {
        let d = 8;
        let rope = Rope::new(d, 32, 10_000.0, &Device::Cpu)?;
        let n = 2 * 3 * 4 * d;
        let x = Tensor::from_vec(normal_values(&mut stream(7, "x"), n, 1.0), (2, 3, 4, d), &Device::Cpu)?;
        let positions = Tensor::new(&[[0u32, 0, 1, 2], [5, 6, 7, 8]], &Device::Cpu)?;
        let rotated = rope.angles_at(&positions)?.rotate(&x)?;
        // Row 1 sits at 5..9; row 0's last three tokens at 0..3.
        let row1 = rope.apply(&x.narrow(0, 1, 1)?, 5)?;
        assert_eq!(rotated.narrow(0, 1, 1)?.flatten_all()?.to_vec1::<f32>()?, row1.flatten_all()?.to_vec1::<f32>()?);
        let row0 = rope.apply(&x.narrow(0, 0, 1)?.narrow(2, 1, 3)?, 0)?;
        let ours = rotated.narrow(0, 0, 1)?.narrow(2, 1, 3)?;
        assert_eq!(ours.flatten_all()?.to_vec1::<f32>()?, row0.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn pairs_dimension_i_with_i_plus_half() -> Result<()> {
        let d = 8;
        let theta = 100.0f64;
        let rope = Rope::new(d, 16, theta, &Device::Cpu)?;
        let x = vector(3, d)?;
        let pos = 7;
        let y = rope.apply(&x, pos)?.flatten_all()?.to_vec1::<f32>()?;
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        for i in 0..d / 2 {
            let angle = pos as f64 * theta.powf(-(2.0 * i as f64) / d as f64);
            let (c, s) = (angle.cos() as f32, angle.sin() as f32);
            let (a, b) = (x[i], x[i + d / 2]);
            assert!((y[i] - (a * c - b * s)).abs() < 1e-5, "dim {i}");
            assert!((y[i + d / 2] - (b * c + a * s)).abs() < 1e-5, "dim {}", i + d / 2);
        }
        Ok(())
    }
}
