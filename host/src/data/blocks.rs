//! Language-model batches over a token stream.
//!
//! A split's records become one stream of token ids: a single document as it is, several
//! records each followed by the end-of-text token (GPT-2's convention). Training batches are
//! nanoGPT's `get_batch`: `batch` windows of `context + 1` tokens at random offsets, inputs the
//! first `context`, targets the same shifted by one.
//!
//! The offsets are a pure function of (seed, step, side): a sha256 of the three seeds a
//! SplitMix64 generator, whose draws (multiply-shift into `[0, len - context)`) are the
//! offsets. Nothing else (no generator state carried between steps, no thread, no library
//! whose algorithm may change between versions) decides them, so a run resumed at step `s`
//! after a crash draws exactly the batches the uninterrupted run would have.
//!
//! Evaluation reads the validation stream in order instead ([`Blocks::eval_batches`]): windows
//! at `0, context, 2 context, ...`, every token predicted once, the same every time.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::source::Record;
use super::tokenizer::{Tokenizer, TokenizerError};

/// Which side of a split a stream holds; part of the batch seed, so the two sides draw
/// different offsets for the same step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Train,
    Valid,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Train => "training",
            Side::Valid => "validation",
        })
    }
}

/// A failure to make batches.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("the {side} stream has {tokens} tokens; a window of context {context} needs at least {}", context + 1)]
    TooShort { side: Side, tokens: usize, context: usize },
    #[error("batch and context must both be at least 1 (batch {batch}, context {context})")]
    Shape { batch: usize, context: usize },
    #[error(
        "{records} {side} records must be joined by an end-of-text token, and the tokenizer has none \
             (a character tokenizer gets one with `eos: true`)"
    )]
    NoEos { side: Side, records: usize },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// `batch` rows of `context` token ids, and their targets (the next token of each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Row-major, `batch * context` ids.
    pub inputs: Vec<u32>,
    /// Row-major, `batch * context` ids: `inputs` shifted left by one within the stream.
    pub targets: Vec<u32>,
    pub batch: usize,
    pub context: usize,
}

impl Batch {
    /// Inputs and targets as `(batch, context)` u32 tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let shape = (self.batch, self.context);
        Ok((Tensor::from_slice(&self.inputs, shape, device)?, Tensor::from_slice(&self.targets, shape, device)?))
    }

    /// Row `b`: (inputs, targets).
    pub fn row(&self, b: usize) -> (&[u32], &[u32]) {
        let range = b * self.context..(b + 1) * self.context;
        (&self.inputs[range.clone()], &self.targets[range])
    }
}

/// A token stream of one side of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocks {
    tokens: Vec<u32>,
    side: Side,
}

impl Blocks {
    /// A stream of ids already made.
    pub fn new(tokens: Vec<u32>, side: Side) -> Self {
        Blocks { tokens, side }
    }

    /// Encode `records` into one stream: one record as it is, several each followed by the
    /// end-of-text token.
    pub fn from_records(tokenizer: &Tokenizer, records: &[Record], side: Side) -> Result<Self, BlocksError> {
        let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
        let encoded = tokenizer.encode_batch(&texts)?;
        let eos = match (records.len(), tokenizer.eos_id()) {
            (0 | 1, _) => None,
            (_, Some(eos)) => Some(eos),
            (records, None) => return Err(BlocksError::NoEos { side, records }),
        };
        let mut tokens = Vec::with_capacity(encoded.iter().map(|e| e.len() + 1).sum());
        for ids in encoded {
            tokens.extend(ids);
            tokens.extend(eos);
        }
        tracing::info!(side = %side, records = records.len(), tokens = tokens.len(), "token stream");
        Ok(Blocks { tokens, side })
    }

    /// The stream.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens in the stream.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The side of the split this stream holds.
    pub fn side(&self) -> Side {
        self.side
    }

    fn check(&self, batch: usize, context: usize) -> Result<(), BlocksError> {
        if batch == 0 || context == 0 {
            return Err(BlocksError::Shape { batch, context });
        }
        if self.tokens.len() < context + 1 {
            return Err(BlocksError::TooShort { side: self.side, tokens: self.tokens.len(), context });
        }
        Ok(())
    }

    /// The start of each window of the batch for (seed, step): a pure function of (seed, step,
    /// side, batch, context, stream length).
    pub fn offsets(&self, step: u64, seed: u64, batch: usize, context: usize) -> Result<Vec<usize>, BlocksError> {
        self.check(batch, context)?;
        let mut hasher = Sha256::new();
        hasher.update(b"triad blocks v1");
        hasher.update(seed.to_le_bytes());
        hasher.update(step.to_le_bytes());
        hasher.update([self.side as u8]);
        let digest = hasher.finalize();
        let mut state = u64::from_le_bytes(digest[..8].try_into().expect("a sha256 has 32 bytes"));
        let range = (self.tokens.len() - context) as u128;
        Ok((0..batch).map(|_| ((splitmix64(&mut state) as u128 * range) >> 64) as usize).collect())
    }

    /// The training batch of `step`: `batch` windows of `context` tokens at [`offsets`](Self::offsets).
    pub fn batch(&self, step: u64, seed: u64, batch: usize, context: usize) -> Result<Batch, BlocksError> {
        let offsets = self.offsets(step, seed, batch, context)?;
        Ok(self.gather(&offsets, context))
    }

    fn gather(&self, offsets: &[usize], context: usize) -> Batch {
        let mut inputs = Vec::with_capacity(offsets.len() * context);
        let mut targets = Vec::with_capacity(offsets.len() * context);
        for &o in offsets {
            inputs.extend_from_slice(&self.tokens[o..o + context]);
            targets.extend_from_slice(&self.tokens[o + 1..o + context + 1]);
        }
        Batch { inputs, targets, batch: offsets.len(), context }
    }

    /// Windows of `context` tokens an evaluation pass reads: starts at 0, context, 2 context,
    /// ... while a whole window and its last target fit.
    pub fn eval_windows(&self, context: usize) -> usize {
        if context == 0 || self.tokens.len() < context + 1 { 0 } else { (self.tokens.len() - 1) / context }
    }

    /// The stream in order, as batches of `batch` windows (the last may have fewer rows), at
    /// most `max_batches` of them.
    pub fn eval_batches(
        &self,
        batch: usize,
        context: usize,
        max_batches: Option<usize>,
    ) -> Result<EvalBatches<'_>, BlocksError> {
        self.check(batch, context)?;
        let windows = self.eval_windows(context);
        let windows = match max_batches {
            Some(max) => windows.min(max.saturating_mul(batch)),
            None => windows,
        };
        Ok(EvalBatches { blocks: self, batch, context, next: 0, windows })
    }
}

/// Evaluation batches in stream order, from [`Blocks::eval_batches`].
#[derive(Debug, Clone)]
pub struct EvalBatches<'a> {
    blocks: &'a Blocks,
    batch: usize,
    context: usize,
    /// Next window index.
    next: usize,
    /// Windows to read in all.
    windows: usize,
}

impl Iterator for EvalBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.windows {
            return None;
        }
        let end = (self.next + self.batch).min(self.windows);
        let offsets: Vec<usize> = (self.next..end).map(|w| w * self.context).collect();
        self.next = end;
        Some(self.blocks.gather(&offsets, self.context))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.windows - self.next).div_ceil(self.batch);
        (left, Some(left))
    }
}

impl ExactSizeIterator for EvalBatches<'_> {}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny generator whose output is fixed by its
/// definition, not by a library version.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A permutation of `0..n` that depends only on `seed` (Fisher-Yates over SplitMix64 draws):
/// the example order of one epoch, the same on every platform and after every resume.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = ((splitmix64(&mut state) as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// The items of micro-batch `draw` (counting from 0) over `n` items: consecutive positions of
/// a per-epoch permutation, so each epoch sees every item once and the order depends only on
/// (seed, draw).
pub fn draw_indices(draw: u64, batch: usize, n: usize, seed: u64) -> Vec<usize> {
    (0..batch as u64)
        .map(|i| {
            let position = draw * batch as u64 + i;
            let (epoch, offset) = (position / n as u64, (position % n as u64) as usize);
            permutation(n, seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15))[offset]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_fixed_by_their_seed() {
        let a = permutation(100, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, permutation(100, 7));
        assert_ne!(a, permutation(100, 8));
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The reference implementation (Vigna's splitmix64.c) seeded with 0.
        let mut state = 0;
        assert_eq!(splitmix64(&mut state), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut state), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn eval_batches_cover_the_stream_in_order() {
        let blocks = Blocks::new((0..23).collect(), Side::Valid);
        // (23 - 1) / 5 = 4 windows: starts 0, 5, 10, 15; batches of 3 then 1.
        let batches: Vec<Batch> = blocks.eval_batches(3, 5, None).expect("batches").collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].batch, 3);
        assert_eq!(batches[1].row(0), (&[15, 16, 17, 18, 19][..], &[16, 17, 18, 19, 20][..]));
        assert_eq!(blocks.eval_batches(3, 5, Some(1)).expect("batches").count(), 1);
        assert_eq!(blocks.eval_batches(3, 5, None).expect("batches").len(), 2);
        let err = blocks.batch(0, 0, 2, 23).expect_err("too short").to_string();
        assert_eq!(err, "the validation stream has 23 tokens; a window of context 23 needs at least 24");
        // The longest context that fits: one possible offset.
        assert_eq!(blocks.offsets(9, 9, 4, 22).expect("fits"), vec![0; 4]);
    }
}
