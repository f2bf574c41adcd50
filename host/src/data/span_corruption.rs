//! T5's span corruption: the pretraining objective of an encoder-decoder on unlabelled text.
//!
//! About `noise_density` of a sequence's tokens, in spans of `mean_span_length` on average, are
//! cut out; the encoder reads the text with each span replaced by a sentinel token, and the
//! decoder learns to write the spans, each after its sentinel, then a final sentinel:
//!
//! ```text
//! tokens   Thank you for inviting me to your party last week .
//! inputs   Thank you <X> me to your party <Y> week .
//! targets  <X> for inviting <Y> last <Z>
//! ```
//!
//! As in T5's `random_spans_noise_mask`: round(length · density) noise tokens (at least one, and
//! at least one token kept), round(noise / mean span) spans (at least one); the noise and the
//! kept tokens are each split into that many non-empty spans at random, and the spans alternate,
//! starting with kept tokens. Drawn from the caller's generator, so a seeded step sees the same
//! corruption on every run.

use rand::Rng;
use rand::seq::SliceRandom;

/// How much of a sequence to corrupt: a Pretrain stage's `objective: SpanCorruption(noise_density:
/// 0.15, mean_span_length: 3.0)` in an experiment file (T5's defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanCorruption {
    /// The share of tokens cut out.
    pub noise_density: f64,
    /// The mean length of a cut-out span.
    pub mean_span_length: f64,
}

impl Default for SpanCorruption {
    fn default() -> Self {
        SpanCorruption { noise_density: 0.15, mean_span_length: 3.0 }
    }
}

impl SpanCorruption {
    /// Why these settings cannot corrupt anything, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.noise_density > 0.0 && self.noise_density < 1.0) {
            return Err(format!("noise_density must lie strictly between 0 and 1, not {}", self.noise_density));
        }
        if !(self.mean_span_length >= 1.0 && self.mean_span_length.is_finite()) {
            return Err(format!("mean_span_length must be at least 1, not {}", self.mean_span_length));
        }
        Ok(())
    }

    /// The number of sentinels a sequence of `length` tokens needs at most: one per span, and
    /// one to end the targets.
    pub fn sentinels_needed(&self, length: usize) -> usize {
        self.spans(self.noise_tokens(length)) + 1
    }

    fn noise_tokens(&self, length: usize) -> usize {
        ((length as f64 * self.noise_density).round() as usize).clamp(1, length.saturating_sub(1).max(1))
    }

    fn spans(&self, noise: usize) -> usize {
        ((noise as f64 / self.mean_span_length).round() as usize).max(1)
    }

    /// Which of `length` tokens are noise, drawn from `rng`.
    pub fn noise_mask(&self, length: usize, rng: &mut impl Rng) -> Vec<bool> {
        if length < 2 {
            return vec![false; length];
        }
        let noise = self.noise_tokens(length);
        let spans = self.spans(noise).min(noise).min(length - noise);
        let noise_lengths = segment(noise, spans, rng);
        let kept_lengths = segment(length - noise, spans, rng);
        let mut mask = Vec::with_capacity(length);
        for (kept, noisy) in kept_lengths.into_iter().zip(noise_lengths) {
            mask.extend(std::iter::repeat_n(false, kept));
            mask.extend(std::iter::repeat_n(true, noisy));
        }
        mask
    }

    /// The encoder's inputs and the decoder's targets for `tokens`: each noise span replaced by
    /// the next of `sentinels` in the inputs; in the targets, each span after its sentinel, then
    /// one more sentinel. `sentinels` must hold [`Self::sentinels_needed`] tokens.
    pub fn corrupt(&self, tokens: &[u32], sentinels: &[u32], rng: &mut impl Rng) -> (Vec<u32>, Vec<u32>) {
        let mask = self.noise_mask(tokens.len(), rng);
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let mut span = 0;
        for (i, (&token, &noisy)) in tokens.iter().zip(&mask).enumerate() {
            let starts = noisy && (i == 0 || !mask[i - 1]);
            if noisy {
                if starts {
                    inputs.push(sentinels[span]);
                    targets.push(sentinels[span]);
                    span += 1;
                }
                targets.push(token);
            } else {
                inputs.push(token);
            }
        }
        targets.push(sentinels[span]);
        (inputs, targets)
    }
}

/// `items` split into `parts` non-empty runs at random: the lengths, in order.
fn segment(items: usize, parts: usize, rng: &mut impl Rng) -> Vec<usize> {
    // A run starts after each of `parts - 1` of the `items - 1` gaps, chosen at random.
    let mut starts: Vec<bool> = (0..items.saturating_sub(1)).map(|gap| gap < parts - 1).collect();
    starts.shuffle(rng);
    let mut lengths = vec![1];
    for start in starts {
        if start {
            lengths.push(1);
        } else if let Some(last) = lengths.last_mut() {
            *last += 1;
        }
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn corruption_cuts_the_density_in_spans_and_the_targets_restore_the_text() {
        let config = SpanCorruption::default();
        let tokens: Vec<u32> = (100..612).collect();
        let sentinels: Vec<u32> = (0..config.sentinels_needed(tokens.len()) as u32).map(|i| 99 - i).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (inputs, targets) = config.corrupt(&tokens, &sentinels, &mut rng);
        // 512 tokens: 77 of noise in 26 spans.
        let noise = targets.iter().filter(|&&t| t >= 100).count();
        assert_eq!(noise, 77);
        let used = inputs.iter().filter(|&&t| t < 100).count();
        assert_eq!(used, 26);
        assert_eq!(inputs.len(), 512 - 77 + 26);
        assert_eq!(targets.len(), 77 + 26 + 1);
        // Putting each span back where its sentinel stands gives the text.
        let mut spans: Vec<Vec<u32>> = Vec::new();
        for &t in &targets {
            if t < 100 {
                spans.push(Vec::new())
            } else if let Some(s) = spans.last_mut() {
                s.push(t)
            }
        }
        let restored: Vec<u32> =
            inputs.iter().flat_map(|&t| if t < 100 { spans[(99 - t) as usize].clone() } else { vec![t] }).collect();
        assert_eq!(restored, tokens);
        // Every span is non-empty and the last sentinel closes the targets.
        assert!(spans[..26].iter().all(|s| !s.is_empty()) && spans[26].is_empty());
        // The same generator state, the same corruption.
        let again = config.corrupt(&tokens, &sentinels, &mut rand::rngs::StdRng::seed_from_u64(4));
        assert_eq!(again, (inputs, targets));
    }

    #[test]
    fn short_sequences_keep_a_token_and_corrupt_one() {
        let config = SpanCorruption { noise_density: 0.5, mean_span_length: 3.0 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for length in 2..8 {
            let mask = config.noise_mask(length, &mut rng);
            let noise = mask.iter().filter(|&&m| m).count();
            assert!(noise >= 1 && noise < length, "{length}: {mask:?}");
            assert!(!mask[0], "spans start with kept tokens: {mask:?}");
        }
        assert!(SpanCorruption { noise_density: 1.0, mean_span_length: 3.0 }.validate().is_err());
        assert!(SpanCorruption { noise_density: 0.15, mean_span_length: 0.5 }.validate().is_err());
    }
}
