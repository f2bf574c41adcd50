//! A reward model: a trunk with a scalar head, whose score for a text is the head's value at the
//! text's last token (the end-of-text token appended to every scored text, so the score has
//! read the whole text). A T5 trunk reads the text with its encoder and, shifted right, with its
//! decoder; the head reads the decoder's last state (`T5ForSequenceClassification`'s view).

use std::path::Path;

use candle_core::{Device, Tensor};

use super::heads::{ScalarHead, last_token_values};
use super::{Model, ModelError, WithContext};

/// The head's file beside the trunk's `model/` folder.
pub const HEAD_FILE: &str = "reward_head.safetensors";

/// Trunk + scalar head.
#[derive(Debug)]
pub struct RewardModel {
    pub trunk: Model,
    pub head: ScalarHead,
}

impl RewardModel {
    /// A fresh head (from `seed`) on `trunk`.
    pub fn new(trunk: Model, seed: u64) -> Result<RewardModel, ModelError> {
        let head = ScalarHead::new(trunk.config().d_model(), trunk.device(), seed)?;
        Ok(RewardModel { trunk, head })
    }

    /// Scores (B) of right-padded token rows `tokens` (B, T) whose real lengths are `lengths`.
    /// Differentiable; `train` turns dropout on.
    pub fn forward(&self, tokens: &Tensor, lengths: &[usize], train: bool) -> Result<Tensor, ModelError> {
        let values = self.head.forward(&self.trunk.sequence_hidden(tokens, lengths, train)?)?;
        last_token_values(&values, lengths)
    }

    /// Scores of token sequences (each already ended by its end token), `batch` rows at a time.
    pub fn score(&self, sequences: &[Vec<u32>], batch: usize, pad: u32) -> Result<Vec<f32>, ModelError> {
        let mut scores = Vec::with_capacity(sequences.len());
        for chunk in sequences.chunks(batch.max(1)) {
            let (tokens, lengths) = pad_rows(chunk, pad, self.trunk.device())?;
            let values = self.forward(&tokens, &lengths, false)?;
            scores.extend(values.to_vec1::<f32>().ctx(|| "reward scores".into())?);
        }
        Ok(scores)
    }

    /// Trainable variables of trunk and head.
    pub fn vars(&self) -> Vec<(String, candle_core::Var)> {
        let mut vars = self.trunk.vars();
        vars.extend(self.head.vars());
        vars
    }

    /// `dir/model/` (the trunk) and `dir/reward_head.safetensors`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.trunk.save(&dir.join("model"))?;
        self.head.save(&dir.join(HEAD_FILE))
    }

    pub fn load(dir: &Path, device: &Device) -> Result<RewardModel, ModelError> {
        let trunk = Model::load(&dir.join("model"), device)?;
        let head = ScalarHead::load(&dir.join(HEAD_FILE), device)?;
        Ok(RewardModel { trunk, head })
    }
}

/// Right-pad `rows` into a (B, T) u32 tensor; returns it with each row's length. Rows must be
/// non-empty.
pub fn pad_rows(rows: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Vec<usize>), ModelError> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 || rows.iter().any(Vec::is_empty) {
        return Err(ModelError::Input("pad_rows: every row needs at least one token".into()));
    }
    let mut flat = vec![pad; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        flat[r * width..r * width + row.len()].copy_from_slice(row);
    }
    let tokens = Tensor::from_vec(flat, (rows.len(), width), device).ctx(|| "padding rows".into())?;
    Ok((tokens, rows.iter().map(Vec::len).collect()))
}
