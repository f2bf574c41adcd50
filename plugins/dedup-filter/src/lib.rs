//! Data filter: removes exact and near-duplicate records, remembering every record it kept in
//! earlier batches (a stateful filter: the host feeds all batches, in order, to one instance).
//! The first occurrence is kept; later copies are dropped.
//!
//! - Exact duplicates: a 64-bit hash of the normalized text (lowercased, whitespace runs
//!   collapsed to one space, ends trimmed). Punctuation counts. Reason: "exact duplicate".
//! - Near duplicates: MinHash (Broder 1997) over word shingles, with LSH banding to find
//!   candidates. Words are the lowercased runs of letters and digits, so punctuation and spacing
//!   do not matter; a shingle is `shingle` consecutive words (a text with fewer words is one
//!   shingle). Each candidate found through a shared band is verified: it is a duplicate when the
//!   share of equal signature values, an unbiased estimate of the shingle sets' Jaccard
//!   similarity, reaches `threshold`. Reason: "near duplicate".
//!
//! Config (all optional):
//! - `exact` (true), `near` (true): which checks run;
//! - `threshold` (0.8): Jaccard similarity from which a record is a near duplicate, in (0, 1];
//! - `shingle` (5): words per shingle;
//! - `num_perm` (64): MinHash hash functions (signature length), 1..=1024;
//! - `bands`, `rows`: LSH banding, `bands * rows <= num_perm`; by default rows 4 and
//!   `bands = num_perm / 4`. Given one, the other is `num_perm` divided by it. A low
//!   `threshold` needs short bands (rows 2 for 0.3), or similar pairs never become candidates.
//!
//! Why these defaults: with 16 bands of 4 rows a pair with Jaccard 0.8 shares a band with
//! probability 1 - (1 - 0.8^4)^16 > 0.999, and one at 0.5 still with 0.65; verification then
//! removes the candidates below the threshold, so banding costs recall only far below it. With
//! 64 values the estimate's standard error is sqrt(J(1-J)/64), 0.05 at J = 0.8.
//!
//! Everything is deterministic: the hash functions' parameters come from a fixed seed, not from
//! randomness (the sandbox has none). Memory: only hashes are kept, no text: per kept record an
//! 8-byte exact hash, `num_perm` 2-byte signature values and one index entry per band, about
//! 400 bytes at the defaults, up to twice that with the spare capacity and freed blocks that
//! growing tables leave in the sandbox's linear memory. Measured with `triad plugin run` on
//! distinct 20-word records: 60,000 fit in the default 64 MiB (70,000 do not), 120,000 in
//! 128 MiB, 200,000 in 256 MiB; `num_perm: 32` fits 120,000 in 64 MiB. For bigger corpora raise
//! the plugin's memory limit, lower `num_perm`, or set `near: false` (about 20 bytes a record).

use std::hash::Hasher;

use triad_plugin_sdk::hash::{FastHashMap, FastHashSet, FnvHasher};
use triad_plugin_sdk::prelude::*;

/// The MinHash universal hash family works modulo this Mersenne prime, 2^61 - 1.
const MERSENNE: u64 = (1 << 61) - 1;
/// Seed of the hash functions' parameters: fixed so that every run and every instance agree.
const SEED: u64 = 0x7472_6961_645f_6d68; // "triad_mh"
/// End of a bucket chain.
const NONE: u32 = u32::MAX;

/// The dedup filter; the public fields are its config.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupFilter {
    /// Drop exact duplicates of the normalized text.
    pub exact: bool,
    /// Drop near duplicates by MinHash.
    pub near: bool,
    /// Jaccard similarity from which a text is a near duplicate.
    pub threshold: f64,
    /// Words per shingle.
    pub shingle: usize,
    /// Number of MinHash hash functions.
    pub num_perm: usize,
    /// LSH bands.
    pub bands: Option<usize>,
    /// Signature values per LSH band.
    pub rows: Option<usize>,
    #[serde(skip)]
    state: State,
}

/// What the filter remembers of the records it kept.
#[derive(Default)]
struct State {
    /// (a, b) of each hash function x -> (a x + b) mod 2^61-1.
    perms: Vec<(u64, u64)>,
    bands: usize,
    rows: usize,
    /// Hashes of the normalized texts kept.
    exact: FastHashSet<u64>,
    /// Signatures of the texts kept, `num_perm` values each, back to back, cut to their low 16
    /// bits: two different values then agree by chance with probability 2^-16, which biases
    /// the Jaccard estimate by less than 0.0001 and halves the largest part of the memory.
    signatures: Vec<u16>,
    /// Bucket key (32 bits: a collision only adds a candidate) -> the latest index entry in
    /// it. Entry `doc * bands + band`.
    buckets: FastHashMap<u32, u32>,
    /// For each index entry, the previous entry of the same bucket, or NONE.
    next: Vec<u32>,
    /// Records kept so far.
    kept: usize,
}

impl Default for DedupFilter {
    fn default() -> Self {
        DedupFilter {
            exact: true,
            near: true,
            threshold: 0.8,
            shingle: 5,
            num_perm: 64,
            bands: None,
            rows: None,
            state: State::default(),
        }
    }
}

/// SplitMix64: expands the fixed seed into hash-function parameters.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// MurmurHash3's finalizer: spreads FNV's weak high bits over the whole word.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// (a * x + b) mod 2^61-1, for a, b, x < 2^61.
fn universal_hash(a: u64, b: u64, x: u64) -> u64 {
    let product = u128::from(a) * u128::from(x) + u128::from(b);
    // x mod 2^61-1 = (low 61 bits) + (the rest), folded twice.
    let folded = (product as u64 & MERSENNE) + (product >> 61) as u64;
    let folded = (folded & MERSENNE) + (folded >> 61);
    if folded >= MERSENNE { folded - MERSENNE } else { folded }
}

/// Hash of the text lowercased with whitespace runs collapsed, computed without building it.
pub fn exact_hash(text: &str) -> u64 {
    let mut hasher = FnvHasher::default();
    let mut buf = [0u8; 4];
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            hasher.write(b" ");
        }
        for c in word.chars().flat_map(char::to_lowercase) {
            hasher.write(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    fmix64(hasher.finish())
}

/// The shingle hashes of `text`: every run of `size` consecutive words (lowercased runs of
/// letters and digits), or one shingle of all words when there are fewer. Empty without words.
pub fn shingles(text: &str, size: usize) -> Vec<u64> {
    let words: Vec<u64> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|word| {
            let mut hasher = FnvHasher::default();
            let mut buf = [0u8; 4];
            for c in word.chars().flat_map(char::to_lowercase) {
                hasher.write(c.encode_utf8(&mut buf).as_bytes());
            }
            fmix64(hasher.finish())
        })
        .collect();
    let size = size.max(1);
    if words.is_empty() {
        return Vec::new();
    }
    words
        .windows(size.min(words.len()))
        .map(|window| {
            // Order matters inside a shingle: combine positionally, then mix.
            let h = window.iter().fold(0u64, |h, &w| h.wrapping_mul(0x0000_0100_0000_01b3) ^ w);
            fmix64(h ^ window.len() as u64)
        })
        .collect()
}

/// The share of equal positions in two signatures: an unbiased estimate of the Jaccard
/// similarity of the sets they were computed from.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

impl DedupFilter {
    /// The MinHash signature of `text`, or `None` when it has no words.
    pub fn signature(&self, text: &str) -> Option<Vec<u32>> {
        let shingles = shingles(text, self.shingle);
        if shingles.is_empty() {
            return None;
        }
        let reduced: Vec<u64> = shingles.iter().map(|&s| s % MERSENNE).collect();
        Some(
            self.state
                .perms
                .iter()
                .map(|&(a, b)| {
                    let min = reduced.iter().map(|&x| universal_hash(a, b, x)).min().unwrap_or(0);
                    // The low 32 bits are as uniform as the 61 and halve the memory.
                    min as u32
                })
                .collect(),
        )
    }

    /// Number of records kept so far.
    pub fn kept(&self) -> usize {
        self.state.kept
    }

    fn bucket_key(band: usize, values: &[u32]) -> u32 {
        let mut hasher = FnvHasher::default();
        hasher.write(&(band as u32).to_le_bytes());
        for v in values {
            hasher.write(&v.to_le_bytes());
        }
        fmix64(hasher.finish()) as u32
    }

    /// True when a kept text shares a band with `signature` and is similar enough.
    fn has_near_duplicate(&self, signature: &[u32]) -> bool {
        let state = &self.state;
        let n = self.num_perm;
        let mut checked: Vec<u32> = Vec::new();
        for band in 0..state.bands {
            let key = Self::bucket_key(band, &signature[band * state.rows..(band + 1) * state.rows]);
            let mut entry = state.buckets.get(&key).copied().unwrap_or(NONE);
            while entry != NONE {
                let doc = entry / state.bands as u32;
                if !checked.contains(&doc) {
                    checked.push(doc);
                    let kept = &state.signatures[doc as usize * n..(doc as usize + 1) * n];
                    let equal = signature.iter().zip(kept).filter(|(a, b)| **a as u16 == **b).count();
                    if equal as f64 / n as f64 >= self.threshold {
                        return true;
                    }
                }
                entry = state.next[entry as usize];
            }
        }
        false
    }

    fn remember(&mut self, signature: Vec<u32>) {
        let state = &mut self.state;
        let doc = (state.signatures.len() / self.num_perm) as u32;
        for band in 0..state.bands {
            let key = Self::bucket_key(band, &signature[band * state.rows..(band + 1) * state.rows]);
            let entry = doc * state.bands as u32 + band as u32;
            let previous = state.buckets.insert(key, entry).unwrap_or(NONE);
            state.next.push(previous);
        }
        state.signatures.extend(signature.iter().map(|&v| v as u16));
    }

    /// Why `text` is dropped, or `None` when it is new (and is then remembered).
    pub fn check(&mut self, text: &str) -> Option<&'static str> {
        let hash = exact_hash(text);
        if self.exact && self.state.exact.contains(&hash) {
            return Some("exact duplicate");
        }
        let signature = if self.near { self.signature(text) } else { None };
        if let Some(signature) = &signature
            && self.has_near_duplicate(signature)
        {
            return Some("near duplicate");
        }
        self.state.kept += 1;
        if self.exact {
            self.state.exact.insert(hash);
        }
        if let Some(signature) = signature {
            // Doc ids are u32 index entries; past that, stop indexing rather than wrap.
            if (self.state.next.len() + self.state.bands) < NONE as usize {
                self.remember(signature);
            }
        }
        None
    }
}

impl Plugin for DedupFilter {
    fn init(&mut self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!("threshold must lie in (0, 1], got {}", self.threshold));
        }
        if self.shingle == 0 {
            return Err("shingle must be at least 1 word".into());
        }
        if !(1..=1024).contains(&self.num_perm) {
            return Err(format!("num_perm must lie in 1..=1024, got {}", self.num_perm));
        }
        let (bands, rows) = match (self.bands, self.rows) {
            (None, None) => {
                let rows = self.num_perm.min(4);
                (self.num_perm / rows, rows)
            }
            (Some(bands), None) => (bands, self.num_perm / bands.max(1)),
            (None, Some(rows)) => (self.num_perm / rows.max(1), rows),
            (Some(bands), Some(rows)) => (bands, rows),
        };
        if bands == 0 || rows == 0 || bands * rows > self.num_perm {
            return Err(format!(
                "bands ({bands}) and rows ({rows}) must be at least 1 with bands * rows <= num_perm ({})",
                self.num_perm
            ));
        }
        let mut seed = SEED;
        let perms = (0..self.num_perm)
            .map(|_| (1 + splitmix64(&mut seed) % (MERSENNE - 1), splitmix64(&mut seed) % MERSENNE))
            .collect();
        self.state = State { perms, bands, rows, ..State::default() };
        Ok(())
    }
}

impl DataFilter for DedupFilter {
    const STATEFUL: bool = true;

    fn filter(&mut self, sample: &Sample) -> Result<Decision, String> {
        Ok(match self.check(&sample.text) {
            Some(reason) => Decision::Drop(reason.to_string()),
            None => Decision::Keep,
        })
    }
}

export_data_filter!(DedupFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use triad_plugin_sdk::configure;
    use triad_plugin_sdk::testing::{decide, review_texts};

    // No two of the 303 real review snippets are duplicates: over the whole 10,605-line
    // movieReviewSnippets_GroundTruth.txt they come from, the only pairs of texts with a
    // 5-word-shingle Jaccard above 0.5 are the two exact copies below.

    /// The real duplicates of that file (ids 10324 and 10341, 10505 and 10559), and its most
    /// similar distinct pair (ids 3888 and 4165, shingle Jaccard 0.5).
    const COPY_1: &str = "'Stock up on silver bullets for director Neil Marshall's intense freight train of a film.'";
    const COPY_2: &str = "...a pretentious mess...";
    const SIMILAR: [&str; 2] = ["A small movie with a big impact.", "A small movie with a big heart."];

    fn jaccard(a: &[u64], b: &[u64]) -> f64 {
        let a: HashSet<_> = a.iter().collect();
        let b: HashSet<_> = b.iter().collect();
        a.intersection(&b).count() as f64 / a.union(&b).count() as f64
    }

    #[test]
    fn keeps_distinct_real_snippets_and_drops_the_real_copies() {
        let mut f: DedupFilter = configure("{}").expect("defaults");
        const { assert!(<DedupFilter as DataFilter>::STATEFUL) };
        let texts = review_texts();
        assert_eq!(texts.len(), 303);
        for text in &texts {
            assert_eq!(decide(&mut f, text), "keep", "{text}");
        }
        for text in [COPY_1, COPY_2, SIMILAR[0], SIMILAR[1]] {
            assert_eq!(decide(&mut f, text), "keep", "{text}");
        }
        assert_eq!(decide(&mut f, COPY_1), "exact duplicate");
        assert_eq!(decide(&mut f, COPY_2), "exact duplicate");
        assert_eq!(f.kept(), 307);
        // Every earlier record is still remembered, whatever batch it came in.
        for text in &texts {
            assert_eq!(decide(&mut f, text), "exact duplicate");
        }
    }

    #[test]
    fn exact_matching_ignores_case_and_spacing_but_not_punctuation() {
        let mut f: DedupFilter = configure(r#"{"near": false}"#).expect("config");
        let text = review_texts()[0];
        assert_eq!(decide(&mut f, text), "keep");
        let shouted = format!("  {}\n", text.to_uppercase().replace(' ', " \t "));
        assert_eq!(decide(&mut f, &shouted), "exact duplicate");
        // Without the near check, a punctuation change is a new text.
        assert_eq!(decide(&mut f, &text.replace(['\'', ','], "")), "keep");
    }

    #[test]
    fn near_duplicates_of_real_snippets_are_dropped() {
        let texts: Vec<&str> = review_texts().into_iter().filter(|t| t.split_whitespace().count() >= 20).collect();
        assert!(texts.len() > 50);
        let mut f: DedupFilter = configure("{}").expect("defaults");
        for text in &texts {
            assert_eq!(decide(&mut f, text), "keep");
        }
        // Edits that leave most 5-word shingles intact: punctuation changed (Jaccard 1), a word
        // appended ((n-4)/(n-3)), the first word dropped ((n-5)/(n-4)); >= 0.93 for n >= 20.
        for text in &texts {
            let variants = [
                format!("\"{}\"", text.replace(['\'', ',', '.', '-'], " ")),
                format!("{text} Recommended."),
                text.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
            ];
            for variant in variants {
                assert_eq!(decide(&mut f, &variant), "near duplicate", "{variant}");
            }
        }
    }

    #[test]
    fn below_threshold_pairs_are_kept() {
        let mut f: DedupFilter = configure("{}").expect("defaults");
        assert_eq!(jaccard(&shingles(SIMILAR[0], 5), &shingles(SIMILAR[1], 5)), 0.5);
        assert_eq!(decide(&mut f, SIMILAR[0]), "keep");
        assert_eq!(decide(&mut f, SIMILAR[1]), "keep");
        // Half of a long snippet is not a duplicate of it.
        let long = review_texts().into_iter().max_by_key(|t| t.len()).expect("snippets");
        let words: Vec<&str> = long.split_whitespace().collect();
        assert_eq!(decide(&mut f, long), "keep");
        assert_eq!(decide(&mut f, &words[..words.len() / 2].join(" ")), "keep");
        // But with a low threshold it is; low thresholds need short bands to find candidates
        // (a band of 2 rows is shared with probability 0.19 at J = 0.44, and there are 32).
        let mut loose: DedupFilter = configure(r#"{"threshold": 0.3, "rows": 2}"#).expect("config");
        assert_eq!(decide(&mut loose, long), "keep");
        assert_eq!(decide(&mut loose, &words[..words.len() / 2].join(" ")), "near duplicate");
    }

    #[test]
    fn signature_estimates_jaccard() {
        // Pairs of real snippets cut at different points: their exact shingle Jaccard spans
        // 0..1, and the MinHash estimate (64 values, standard error <= 0.0625) tracks it.
        let f: DedupFilter = configure("{}").expect("defaults");
        let mut errors = Vec::new();
        let mut bias = 0.0;
        for text in review_texts() {
            let words: Vec<&str> = text.split_whitespace().collect();
            if words.len() < 16 {
                continue;
            }
            let a = words[..words.len() * 3 / 4].join(" ");
            let b = words[words.len() / 4..].join(" ");
            let exact = jaccard(&shingles(&a, 5), &shingles(&b, 5));
            let (sa, sb) = (f.signature(&a).expect("words"), f.signature(&b).expect("words"));
            let error = estimated_jaccard(&sa, &sb) - exact;
            bias += error;
            errors.push(error.abs());
        }
        let n = errors.len() as f64;
        let (mean, bias) = (errors.iter().sum::<f64>() / n, bias / n);
        let worst = errors.iter().cloned().fold(0.0, f64::max);
        eprintln!("MinHash estimate over {n} pairs: mean |error| {mean:.3}, bias {bias:+.4}, max {worst:.3}");
        assert!(n > 100.0);
        // Expected mean |error| ~0.8 standard errors (0.05 at J = 0.5); bias ~0 (s.e. 0.005).
        assert!(mean < 0.07, "mean error {mean}");
        assert!(bias.abs() < 0.02, "bias {bias}");
        assert!(worst < 0.25, "max error {worst}");
    }

    #[test]
    fn hashes_are_deterministic_across_instances() {
        let a: DedupFilter = configure("{}").expect("defaults");
        let b: DedupFilter = configure("{}").expect("defaults");
        let text = review_texts()[7];
        assert_eq!(a.signature(text), b.signature(text));
        assert_eq!(exact_hash(text), exact_hash(&text.to_lowercase()));
        assert_ne!(exact_hash(text), exact_hash(review_texts()[8]));
        // Word order inside a shingle matters.
        assert_ne!(shingles("good not bad", 3), shingles("bad not good", 3));
        assert!(shingles("!!! ...", 5).is_empty());
    }

    #[test]
    fn hashes_are_pinned() {
        // Computed independently in Python (FNV-1a 64 over the lowercased UTF-8, MurmurHash3's
        // fmix64, SplitMix64 from SEED): a change to any of them would show here first.
        let text = "Effective but too tepid biopic";
        assert_eq!(exact_hash(""), 0);
        assert_eq!(exact_hash(text), 0x1b63_5fa2_7be0_1651);
        assert_eq!(shingles("good not bad", 2), vec![0x94a0_89d0_9b2d_d871, 0xa717_1a29_7571_c265]);
        let f: DedupFilter = configure("{}").expect("defaults");
        let signature = f.signature(text).expect("words");
        assert_eq!(signature[..4], [36_846_481, 3_229_538_639, 3_350_782_001, 1_852_726_662]);
        assert_eq!(DedupFilter::bucket_key(3, &signature[12..16]), 0x08da_3b48);
    }

    #[test]
    fn texts_without_words_are_only_checked_exactly() {
        let mut f: DedupFilter = configure("{}").expect("defaults");
        assert_eq!(decide(&mut f, "!!!"), "keep");
        assert_eq!(decide(&mut f, "?!"), "keep");
        assert_eq!(decide(&mut f, "!!!"), "exact duplicate");
        assert_eq!(decide(&mut f, ""), "keep");
        assert_eq!(decide(&mut f, "   "), "exact duplicate");
    }

    #[test]
    fn exact_copies_are_near_duplicates_when_exact_is_off() {
        let mut f: DedupFilter = configure(r#"{"exact": false}"#).expect("config");
        assert_eq!(decide(&mut f, COPY_1), "keep");
        assert_eq!(decide(&mut f, COPY_1), "near duplicate");
    }

    #[test]
    fn banding_parameters() {
        let f: DedupFilter = configure(r#"{"num_perm": 128}"#).expect("config");
        assert_eq!((f.state.bands, f.state.rows), (32, 4));
        let f: DedupFilter = configure(r#"{"num_perm": 128, "bands": 16}"#).expect("config");
        assert_eq!((f.state.bands, f.state.rows), (16, 8));
        let f: DedupFilter = configure(r#"{"num_perm": 2}"#).expect("config");
        assert_eq!((f.state.bands, f.state.rows), (1, 2));
        let mut f: DedupFilter =
            configure(r#"{"exact": false, "num_perm": 16, "bands": 2, "rows": 8, "shingle": 2}"#).expect("config");
        assert_eq!(decide(&mut f, COPY_1), "keep");
        assert_eq!(decide(&mut f, &COPY_1.to_uppercase()), "near duplicate");
        assert_eq!(decide(&mut f, SIMILAR[0]), "keep");
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, field) in [
            (r#"{"threshold": 0}"#, "threshold"),
            (r#"{"threshold": 1.5}"#, "threshold"),
            (r#"{"shingle": 0}"#, "shingle"),
            (r#"{"num_perm": 0}"#, "num_perm"),
            (r#"{"num_perm": 5000}"#, "num_perm"),
            (r#"{"bands": 0}"#, "bands"),
            (r#"{"bands": 20, "rows": 4}"#, "bands"),
            (r#"{"rows": 65}"#, "rows"),
            (r#"{"shingles": 3}"#, "shingles"),
        ] {
            let err = configure::<DedupFilter>(config).err().unwrap_or_else(|| panic!("{config} accepted"));
            assert!(err.message.contains(field), "{config}: {}", err.message);
        }
    }
}
