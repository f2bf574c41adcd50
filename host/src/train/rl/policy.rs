//! The learner of an RL stage (the policy, its value head, and optionally a separate critic
//! trunk) and what it predicts at the positions that produced the response tokens; the frozen
//! reference's log-probs at the same positions.

use candle_core::{D, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{RlError, model, tensor};
use crate::model::{Model, ScalarHead};

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
        let m_err = model("predicting values");
        let pass = policy_pass(&self.policy, rows, response_lens, pad)?;
        let value_states = match &self.critic {
            Some(critic) => critic.response_states(rows, response_lens, pad, false).map_err(&m_err)?.0,
            None => pass.states,
        };
        let value = self.value_head.forward(&value_states).map_err(&m_err)?;
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

/// One differentiable forward pass of a policy at the positions predicting response tokens.
pub struct PolicyPass {
    /// log π of each response token, (N).
    pub logprob: Tensor,
    /// The entropy of π at each of those positions, (N).
    pub entropy: Tensor,
    /// The trunk's states there, (N, D): what a value head reads.
    pub states: Tensor,
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
    // The LM head only where a response token is predicted: prompts and padding are about half
    // of a batch, and (B, T, V) logits its largest tensor.
    let (states, targets) = policy.response_states(rows, response_lens, pad, false).map_err(&m_err)?;
    let flat_logits = policy.lm_logits(&states).map_err(&m_err)?; // (N, V)
    let logp = candle_nn::ops::log_softmax(&flat_logits, D::Minus1).map_err(&t_err)?;
    let logprob = targets.unsqueeze(1).and_then(|t| logp.gather(&t, 1)).and_then(|l| l.squeeze(1)).map_err(&t_err)?;
    // H = -Σ_v p log p
    let entropy =
        logp.exp().and_then(|p| p * &logp).and_then(|x| x.sum(D::Minus1)).and_then(|x| x.neg()).map_err(&t_err)?;
    Ok(PolicyPass { logprob, entropy, states })
}

/// Log-probs of the response tokens under a frozen model (no value head), flat like
/// [`Model::response_states`], `chunk` rows at a time; only those values leave the device.
pub fn reference_logprobs(
    reference: &Model,
    rows: &[Vec<u32>],
    lens: &[usize],
    chunk: usize,
    pad: u32,
) -> Result<Vec<f32>, RlError> {
    let t_err = tensor("reference log-probs");
    let m_err = model("reference log-probs");
    let mut out = Vec::new();
    for (rows, lens) in rows.chunks(chunk).zip(lens.chunks(chunk)) {
        // The fused LM head and cross-entropy at the response positions: no logits are made.
        let (states, targets) = reference.response_states(rows, lens, pad, false).map_err(&m_err)?;
        let nll = reference.token_nll(&states.unsqueeze(0).map_err(&t_err)?, &targets.unsqueeze(0).map_err(&t_err)?);
        out.extend(nll.map_err(&m_err)?.neg().and_then(|l| l.flatten_all()?.to_vec1::<f32>()).map_err(&t_err)?);
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
    let mut out = Vec::with_capacity(rows.len());
    for (rows, lens) in rows.chunks(chunk.max(1)).zip(lens.chunks(chunk.max(1))) {
        // (N, V) log-probs at the positions predicting response tokens.
        let at_positions = |model: &Model| -> Result<Tensor, RlError> {
            let (states, _) = model.response_states(rows, lens, pad, false).map_err(&m_err)?;
            let logits = model.lm_logits(&states).map_err(&m_err)?;
            candle_nn::ops::log_softmax(&logits, D::Minus1).map_err(&t_err)
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
    use crate::model::prediction_positions;
    use crate::model::reward::pad_rows;

    /// Each row's next token at every position of a (rows, width) grid, row after row; `pad`
    /// where there is none.
    fn next_tokens(rows: &[Vec<u32>], width: usize, pad: u32) -> Vec<u32> {
        let mut next = vec![pad; rows.len() * width];
        for (r, row) in rows.iter().enumerate() {
            next[r * width..r * width + row.len() - 1].copy_from_slice(&row[1..]);
        }
        next
    }

    /// log_softmax of the full (B, T, V) logits, read at the positions predicting responses:
    /// what the passes compute, the long way.
    fn plain_logprobs(model: &Model, rows: &[Vec<u32>], lens: &[usize], pad: u32) -> Vec<f32> {
        let (tokens, _) = pad_rows(rows, pad, model.device()).unwrap();
        let t = tokens.dim(1).unwrap();
        let logp = candle_nn::ops::log_softmax(&model.forward(&tokens, false).unwrap(), D::Minus1).unwrap();
        let logp: Vec<Vec<Vec<f32>>> = logp.to_vec3().unwrap();
        let next = next_tokens(rows, t, pad);
        prediction_positions(rows, lens, t)
            .into_iter()
            .map(|p| {
                let (r, i) = (p as usize / t, p as usize % t);
                logp[r][i][next[p as usize] as usize]
            })
            .collect()
    }

    /// The policy's pass and the reference's fused log-probs give `expected` (11 values); the
    /// KL of the model to itself is 0.
    fn assert_passes_give(model: &Model, rows: &[Vec<u32>], lens: &[usize], expected: &[f32]) {
        let pass = policy_pass(model, rows, lens, 0).unwrap().logprob.to_vec1::<f32>().unwrap();
        let fused = reference_logprobs(model, rows, lens, 2, 0).unwrap();
        assert_eq!(expected.len(), 11);
        for (i, e) in expected.iter().enumerate() {
            assert!((pass[i] - e).abs() < 1e-5, "policy pass at {i}: {} vs {e}", pass[i]);
            assert!((fused[i] - e).abs() < 1e-5, "reference log-probs at {i}: {} vs {e}", fused[i]);
        }
        let to_itself = sequence_kl(model, model, rows, lens, 2, 0).unwrap();
        assert!(to_itself.iter().all(|k| k.abs() < 1e-5), "{to_itself:?}");
    }

    #[test]
    fn response_logprobs_equal_the_full_logits_long_way() {
        let config = crate::model::ModelConfig::tiny_gpt(61);
        let model = Model::new(&config, &candle_core::Device::Cpu, 5).unwrap();
        let reference = Model::new(&config, &candle_core::Device::Cpu, 6).unwrap();
        // Rows of different lengths (padding), prompts of 3 and 1 tokens.
        let rows = vec![vec![1, 2, 3, 40, 41, 42, 43], vec![7, 8, 9], vec![5, 60, 59, 58, 57, 56]];
        let lens = [4, 2, 5];
        assert_passes_give(&model, &rows, &lens, &plain_logprobs(&model, &rows, &lens, 0));
        // KL to another model is positive.
        let to_other = sequence_kl(&model, &reference, &rows, &lens, 2, 0).unwrap();
        assert!(to_other.iter().all(|&k| k > 0.0), "{to_other:?}");
    }

    /// T5's passes read the prompt with the encoder and the response with the decoder: each
    /// row alone, through `T5::forward` (start token, then the response), is the long way.
    #[test]
    fn t5_response_logprobs_are_its_decoders_over_the_encoded_prompt() {
        let config: crate::model::ModelConfig = ron::from_str(
            "T5(vocab_size: 61, d_model: 16, d_kv: 4, d_ff: 24, num_layers: 2, num_decoder_layers: 2, num_heads: 4, \
             context: 16, decoder_start_token_id: 1)",
        )
        .unwrap();
        let device = candle_core::Device::Cpu;
        let model = Model::new(&config, &device, 5).unwrap();
        let t5 = model.as_t5().unwrap();
        let rows = vec![vec![1, 2, 3, 40, 41, 42, 43], vec![7, 8, 9], vec![5, 60, 59, 58, 57, 56]];
        let lens = [4usize, 2, 5];
        let mut expected = Vec::new();
        for (row, &len) in rows.iter().zip(&lens) {
            let (prompt, response) = row.split_at(row.len() - len);
            let ids = Tensor::new(prompt, &device).unwrap().unsqueeze(0).unwrap();
            let mut dec = vec![1u32];
            dec.extend(&response[..len - 1]);
            let dec = Tensor::new(dec.as_slice(), &device).unwrap().unsqueeze(0).unwrap();
            let logp = candle_nn::ops::log_softmax(&t5.forward(&ids, None, &dec).unwrap(), D::Minus1).unwrap();
            let logp: Vec<Vec<f32>> = logp.squeeze(0).unwrap().to_vec2().unwrap();
            expected.extend(response.iter().enumerate().map(|(j, &tok)| logp[j][tok as usize]));
        }
        assert_passes_give(&model, &rows, &lens, &expected);
    }

    #[test]
    fn response_tokens_are_predicted_one_position_earlier() {
        let rows = vec![vec![1, 2, 3, 10, 11], vec![4, 12]];
        // Row 0: prompt of 3, response at 3 and 4, predicted at 2 and 3; row 1 (width 5): at 5.
        assert_eq!(prediction_positions(&rows, &[2, 1], 5), vec![2, 3, 5]);
    }
}
