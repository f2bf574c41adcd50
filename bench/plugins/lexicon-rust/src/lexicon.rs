// The plugin benchmark's lexicon reward, shared word for word by the Rust plugin (`lib.rs`) and
// the native baseline in triad's `bench plugins` (both `include!` this file, so the two cannot
// drift); `lexicon-py` and `lexicon-js` write the same reward in their languages.

/// Words that count +1.
const POSITIVE: [&str; 16] = [
    "good", "great", "excellent", "wonderful", "best", "love", "loved", "beautiful", "fun", "brilliant", "superb",
    "enjoyable", "moving", "delightful", "perfect", "amazing",
];
/// Words that count -1.
const NEGATIVE: [&str; 16] = [
    "bad", "worst", "boring", "awful", "dull", "hate", "hated", "poor", "mess", "terrible", "waste", "stupid",
    "horrible", "weak", "annoying", "disappointing",
];

/// (positive words - negative words) / words, where a word is a maximal run of letters, digits
/// and apostrophes, lowercased.
pub fn lexicon_score(text: &str) -> f64 {
    let lower = text.to_lowercase();
    let mut words = 0usize;
    let mut sum = 0i64;
    for word in lower.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()) {
        words += 1;
        if POSITIVE.contains(&word) {
            sum += 1;
        } else if NEGATIVE.contains(&word) {
            sum -= 1;
        }
    }
    sum as f64 / words.max(1) as f64
}
