//! The learner of an RL stage (the policy, its value head, and optionally a separate critic
//! trunk) and what it predicts at the positions that produced the response tokens; the frozen
//! reference's log-probs at the same positions.

use candle_core::{D, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{RlError, model, tensor};
use crate::model::reward::pad_rows;
use crate::model::{Model, ScalarHead};
use crate::train::token_logprobs;

/// Where the value estimate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Critic {
    /// A value head on the policy's trunk (one model, one optimizer).
    #[default]
    Shared,
    /// A separate copy of the starting model with its own value head.
    Separate,
}

/// The policy (and critic) being trained.
pub struct Learner {
    pub policy: Model,
    pub value_head: ScalarHead,
    /// A separate critic trunk, when `critic: Separate`.
    pub critic: Option<Model>,
}

/// What one forward pass of the learner gives at the positions predicting response tokens,
/// flat over them: (N) each, differentiable.
pub struct Predicted {
    pub logprob: Tensor,
    pub value: Tensor,
    pub entropy: Tensor,
}

impl Learner {
    /// Variables with unique names: the value head's under `value/`, the critic's trunk under
    /// `critic/`.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut vars = self.policy.vars();
        vars.extend(self.value_head.vars().into_iter().map(|(n, v)| (format!("value/{n}"), v)));
        if let Some(critic) = &self.critic {
            vars.extend(critic.vars().into_iter().map(|(n, v)| (format!("critic/{n}"), v)));
        }
        vars
    }

    /// Log-probs, values and entropies at the positions predicting each row's response.
    pub fn predict(&self, rows: &[Vec<u32>], response_lens: &[usize], pad: u32) -> Result<Predicted, RlError> {
        let t_err = tensor("predicting values");
        let m_err = model("predicting values");
        let pass = policy_pass(&self.policy, rows, response_lens, pad)?;
        let value_hidden = match &self.critic {
            Some(critic) => critic.hidden(&pass.tokens, false).map_err(&m_err)?,
            None => pass.hidden,
        };
        let values = self.value_head.forward(&value_hidden).map_err(&m_err)?;
        let value = values.flatten_all().and_then(|v| v.index_select(&pass.index, 0)).map_err(&t_err)?;
        Ok(Predicted { logprob: pass.logprob, value, entropy: pass.entropy })
    }

    /// The sampling policy's log-probs and values over a whole rollout batch, without
    /// gradients, `chunk` rows at a time.
    pub fn old_logprobs_and_values(
        &self,
        rows: &[Vec<u32>],
        lens: &[usize],
        chunk: usize,
        pad: u32,
    ) -> Result<(Vec<f32>, Vec<f32>), RlError> {
        let (mut logprob, mut value) = (Vec::new(), Vec::new());
        for (rows, lens) in rows.chunks(chunk).zip(lens.chunks(chunk)) {
            let p = self.predict(rows, lens, pad)?;
            logprob.extend(p.logprob.to_vec1::<f32>().map_err(tensor("reading log-probs"))?);
            value.extend(p.value.to_vec1::<f32>().map_err(tensor("reading values"))?);
        }
        Ok((logprob, value))
    }
}

/// One differentiable forward pass of a policy over padded rows, at the positions predicting
/// response tokens.
pub struct PolicyPass {
    /// log π of each response token, (N).
    pub logprob: Tensor,
    /// The entropy of π at each of those positions, (N).
    pub entropy: Tensor,
    /// The padded rows, (B, T), and the trunk's states over them, (B, T, D).
    pub tokens: Tensor,
    pub hidden: Tensor,
    /// The flat (row * T + position) indices of the N positions.
    pub index: Tensor,
}

/// Log-probs and entropies of `policy` at the positions predicting each row's response.
pub fn policy_pass(
    policy: &Model,
    rows: &[Vec<u32>],
    response_lens: &[usize],
    pad: u32,
) -> Result<PolicyPass, RlError> {
    let t_err = tensor("predicting log-probs");
    let m_err = model("predicting log-probs");
    let device = policy.device();
    let (tokens, _) = pad_rows(rows, pad, device).map_err(&m_err)?;
    let (b, t) = tokens.dims2().map_err(&t_err)?;
    let positions = prediction_positions(rows, response_lens, t);
    let index = Tensor::from_vec(positions.clone(), positions.len(), device).map_err(&t_err)?;
    let hidden = policy.hidden(&tokens, false).map_err(&m_err)?;
    let logits = policy.lm_logits(&hidden).map_err(&m_err)?;
    let v = logits.dim(2).map_err(&t_err)?;
    let next = Tensor::from_vec(next_tokens(rows, t, pad), b * t, device).map_err(&t_err)?;
    // (B*T, V) -> the (N, V) rows that predict response tokens.
    let flat_logits = logits.reshape((b * t, v)).and_then(|l| l.index_select(&index, 0)).map_err(&t_err)?;
    let logp = candle_nn::ops::log_softmax(&flat_logits, D::Minus1).map_err(&t_err)?;
    let targets = next.index_select(&index, 0).map_err(&t_err)?;
    let logprob = targets.unsqueeze(1).and_then(|t| logp.gather(&t, 1)).and_then(|l| l.squeeze(1)).map_err(&t_err)?;
    // H = -Σ_v p log p
    let entropy =
        logp.exp().and_then(|p| p * &logp).and_then(|x| x.sum(D::Minus1)).and_then(|x| x.neg()).map_err(&t_err)?;
    Ok(PolicyPass { logprob, entropy, tokens, hidden, index })
}

/// Flat indices (row * T + position) of the positions whose next token is a response token,
/// row after row: response token j of a row with prompt length p is predicted at p + j - 1.
pub fn prediction_positions(rows: &[Vec<u32>], response_lens: &[usize], width: usize) -> Vec<u32> {
    let mut positions = Vec::new();
    for (r, (row, &len)) in rows.iter().zip(response_lens).enumerate() {
        let prompt = row.len() - len;
        for j in 0..len {
            positions.push((r * width + prompt + j - 1) as u32);
        }
    }
    positions
}

/// Each row's next token at every position of a (rows, width) grid, row after row; `pad` where
/// there is none (the last position, padding).
fn next_tokens(rows: &[Vec<u32>], width: usize, pad: u32) -> Vec<u32> {
    let mut next = vec![pad; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        if row.len() > 1 {
            next[r * width..r * width + row.len() - 1].copy_from_slice(&row[1..]);
        }
    }
    next
}

/// Log-probs of the response tokens under a frozen model (no value head), flat like
/// [`prediction_positions`], `chunk` rows at a time; only those values leave the device.
pub fn reference_logprobs(
    reference: &Model,
    rows: &[Vec<u32>],
    lens: &[usize],
    chunk: usize,
    pad: u32,
) -> Result<Vec<f32>, RlError> {
    let t_err = tensor("reference log-probs");
    let m_err = model("reference log-probs");
    let device = reference.device();
    let mut out = Vec::new();
    for (rows, lens) in rows.chunks(chunk).zip(lens.chunks(chunk)) {
        let (tokens, _) = pad_rows(rows, pad, device).map_err(&m_err)?;
        let (b, t) = tokens.dims2().map_err(&t_err)?;
        let next = Tensor::from_vec(next_tokens(rows, t, pad), (b, t), device).map_err(&t_err)?;
        let logits = reference.forward(&tokens, false).map_err(&m_err)?;
        let logprobs = token_logprobs(&logits, &next).and_then(|l| l.flatten_all()).map_err(&t_err)?;
        let positions = prediction_positions(rows, lens, t);
        let index = Tensor::from_vec(positions.clone(), positions.len(), device).map_err(&t_err)?;
        out.extend(logprobs.index_select(&index, 0).and_then(|l| l.to_vec1::<f32>()).map_err(&t_err)?);
    }
    Ok(out)
}

/// KL(policy || reference) summed along each row's response: at every position that predicts
/// a response token, the exact KL between the two next-token distributions,
/// `Σ_v p(v) (log p(v) - log q(v))`, summed over the response; `chunk` rows at a time, without
/// gradients. On responses sampled from the policy at temperature 1 its mean over rows
/// estimates the sequence-level KL; on any responses it measures how far the policy has moved
/// from the reference where it answered.
pub fn sequence_kl(
    policy: &Model,
    reference: &Model,
    rows: &[Vec<u32>],
    lens: &[usize],
    chunk: usize,
    pad: u32,
) -> Result<Vec<f64>, RlError> {
    let t_err = tensor("KL to the reference");
    let m_err = model("KL to the reference");
    let device = policy.device();
    let mut out = Vec::with_capacity(rows.len());
    for (rows, lens) in rows.chunks(chunk.max(1)).zip(lens.chunks(chunk.max(1))) {
        let (tokens, _) = pad_rows(rows, pad, device).map_err(&m_err)?;
        let (b, t) = tokens.dims2().map_err(&t_err)?;
        let positions = prediction_positions(rows, lens, t);
        let index = Tensor::from_vec(positions.clone(), positions.len(), device).map_err(&t_err)?;
        // (B, T, V) -> (N, V) log-probs at the positions predicting response tokens.
        let at_positions = |model: &Model| -> Result<Tensor, RlError> {
            let logits = model.forward(&tokens, false).map_err(&m_err)?;
            let v = logits.dim(2).map_err(&t_err)?;
            let flat = logits.reshape((b * t, v)).and_then(|l| l.index_select(&index, 0)).map_err(&t_err)?;
            candle_nn::ops::log_softmax(&flat, D::Minus1).map_err(&t_err)
        };
        let (logp, logq) = (at_positions(policy)?, at_positions(reference)?);
        let per_token = (logp.exp().map_err(&t_err)? * (logp - logq).map_err(&t_err)?)
            .and_then(|x| x.sum(D::Minus1))
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(&t_err)?;
        let mut offset = 0;
        for &len in lens {
            out.push(per_token[offset..offset + len].iter().map(|&k| f64::from(k)).sum());
            offset += len;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_tokens_are_predicted_one_position_earlier() {
        let rows = vec![vec![1, 2, 3, 10, 11], vec![4, 12]];
        // Row 0: prompt of 3, response at 3 and 4, predicted at 2 and 3; row 1 (width 5): at 5.
        assert_eq!(prediction_positions(&rows, &[2, 1], 5), vec![2, 3, 5]);
    }
}
