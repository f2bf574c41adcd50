//! Corpus BLEU (Papineni et al. 2002), computed exactly as sacrebleu 2.x's `BLEU()` does.
//!
//! Each record's prediction is scored against all of its references: clipped n-gram counts use
//! the maximum count of each n-gram over the references, and the brevity penalty uses the
//! reference length closest to the prediction's length (the shorter one on a tie). The host sums
//! the per-record statistics `[hyp_len, ref_len, correct_1..N, total_1..N]` over the corpus, so
//! the score is corpus BLEU, not an average of sentence scores.
//!
//! Reported values: `bleu` (0-100, sacrebleu's scale), `bleu_bp` (brevity penalty),
//! `bleu_p1`..`bleu_pN` (n-gram precisions in percent, after smoothing), `bleu_hyp_len` and
//! `bleu_ref_len` (token counts).
//!
//! Config (defaults are sacrebleu's):
//! - `lowercase` (bool, false): lowercase predictions and references first.
//! - `tokenize` ("13a" | "zh" | "intl" | "char" | "none", "13a"): sacrebleu 2.4.3's tokenizer of
//!   that name. "13a": mteval-v13a, splitting ASCII punctuation from words. "zh": for Chinese,
//!   every character in sacrebleu's CJK ranges is a token and the rest is tokenized like 13a
//!   (`TokenizerZh`). "intl": mteval-v14's international tokenizer, splitting off every Unicode
//!   punctuation mark not between digits and every Unicode symbol (`TokenizerV14International`).
//!   "char": every character other than whitespace is a token (`TokenizerChar`). "none": split on
//!   whitespace only.
//! - `smooth` ("exp" | "none" | "floor" | "add-k", "exp"): smoothing of zero n-gram counts.
//! - `smooth_value` (number, optional): epsilon for "floor" (0.1) and k for "add-k" (1).
//! - `max_order` (integer, 4): the largest n-gram order.
//! - `effective_order` (bool, false): average only over orders the corpus has n-grams of.

mod categories;

use std::collections::HashMap;

use triad_plugin_sdk::prelude::*;

/// sacrebleu's floor for log(0), kept so that zero precisions give exactly its score (zero).
const LOG_ZERO: f64 = -9_999_999_999.0;

/// The tokenizer applied after optional lowercasing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Tokenize {
    /// mteval-v13a, sacrebleu's default: splits punctuation from words.
    #[default]
    Mteval13a,
    /// sacrebleu's `zh`: CJK characters one by one, the rest as in 13a.
    Zh,
    /// sacrebleu's `intl` (mteval-v14 international): Unicode punctuation and symbols split off.
    Intl,
    /// sacrebleu's `char`: every non-whitespace character is a token.
    Char,
    /// Split on whitespace only.
    None,
}

impl Tokenize {
    const NAMES: [(&'static str, Tokenize); 5] = [
        ("13a", Tokenize::Mteval13a),
        ("zh", Tokenize::Zh),
        ("intl", Tokenize::Intl),
        ("char", Tokenize::Char),
        ("none", Tokenize::None),
    ];
}

impl TryFrom<String> for Tokenize {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Tokenize::NAMES.iter().find(|(n, _)| *n == name).map(|&(_, t)| t).ok_or_else(|| {
            let names: Vec<String> = Tokenize::NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
            format!("tokenize must be one of {}, got {name:?}", names.join(", "))
        })
    }
}

/// How n-gram orders with no matches are smoothed (Chen and Cherry 2014).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Smooth {
    /// No smoothing: any order without a match makes BLEU zero.
    None,
    /// A zero count becomes `smooth_value` (default 0.1).
    Floor,
    /// Orders 2 and up get `smooth_value` (default 1) added to matches and totals.
    AddK,
    /// NIST's geometric smoothing (mteval-v13a), sacrebleu's default.
    #[default]
    Exp,
}

/// The BLEU metric and its configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bleu {
    /// Lowercase texts before tokenizing.
    pub lowercase: bool,
    /// Tokenizer.
    pub tokenize: Tokenize,
    /// Smoothing method.
    pub smooth: Smooth,
    /// Parameter of the "floor" and "add-k" smoothing methods.
    pub smooth_value: Option<f64>,
    /// Largest n-gram order.
    pub max_order: usize,
    /// Leave out of the geometric mean the orders for which the corpus has no n-grams.
    pub effective_order: bool,
}

impl Default for Bleu {
    fn default() -> Self {
        Bleu {
            lowercase: false,
            tokenize: Tokenize::Mteval13a,
            smooth: Smooth::Exp,
            smooth_value: None,
            max_order: 4,
            effective_order: false,
        }
    }
}

impl Plugin for Bleu {
    fn init(&mut self) -> Result<(), String> {
        if self.max_order == 0 || self.max_order > 16 {
            return Err(format!("max_order must be between 1 and 16, got {}", self.max_order));
        }
        if let Some(v) = self.smooth_value {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("smooth_value must be a finite number >= 0, got {v}"));
            }
            if matches!(self.smooth, Smooth::None | Smooth::Exp) {
                return Err("smooth_value only applies to smooth \"floor\" or \"add-k\"".into());
            }
        }
        Ok(())
    }
}

impl Metric for Bleu {
    fn statistics(&mut self, record: &MetricRecord) -> Result<Vec<f64>, String> {
        if record.references.is_empty() {
            return Err("BLEU needs at least one reference per prediction".into());
        }
        let order = self.max_order;

        // Reference n-gram counts: the maximum over references, which is the clipping limit.
        let refs: Vec<String> = record.references.iter().map(|r| self.preprocess(r)).collect();
        let ref_tokens: Vec<Vec<&str>> = refs.iter().map(|r| py_split(r).collect()).collect();
        let mut ref_counts: HashMap<&[&str], u32> = HashMap::new();
        let mut ref_lens = Vec::with_capacity(refs.len());
        for tokens in &ref_tokens {
            ref_lens.push(tokens.len());
            for (ngram, count) in ngram_counts(tokens, order) {
                let entry = ref_counts.entry(ngram).or_insert(0);
                *entry = (*entry).max(count);
            }
        }

        let hyp = self.preprocess(&record.prediction);
        let hyp_tokens: Vec<&str> = py_split(&hyp).collect();
        let mut correct = vec![0.0; order];
        let mut total = vec![0.0; order];
        for (ngram, count) in ngram_counts(&hyp_tokens, order) {
            let n = ngram.len() - 1;
            total[n] += f64::from(count);
            if let Some(&limit) = ref_counts.get(ngram) {
                correct[n] += f64::from(count.min(limit));
            }
        }

        let hyp_len = hyp_tokens.len();
        let mut stats = vec![hyp_len as f64, closest_ref_len(hyp_len, &ref_lens) as f64];
        stats.extend(correct);
        stats.extend(total);
        Ok(stats)
    }

    fn finish(&mut self, totals: &[f64]) -> Result<Vec<(String, f64)>, String> {
        let order = self.max_order;
        if totals.is_empty() {
            return Err("BLEU saw no records".into());
        }
        if totals.len() != 2 + 2 * order {
            return Err(format!(
                "BLEU with max_order {order} expects {} statistics, got {}",
                2 + 2 * order,
                totals.len()
            ));
        }
        let score = self.compute(totals[0], totals[1], &totals[2..2 + order], &totals[2 + order..]);
        let mut values = vec![("bleu".to_string(), score.bleu), ("bleu_bp".to_string(), score.bp)];
        for (n, p) in score.precisions.iter().enumerate() {
            values.push((format!("bleu_p{}", n + 1), *p));
        }
        values.push(("bleu_hyp_len".to_string(), totals[0]));
        values.push(("bleu_ref_len".to_string(), totals[1]));
        Ok(values)
    }
}

export_metric!(Bleu);

/// BLEU and its parts, as sacrebleu's `BLEUScore` holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// BLEU on the 0-100 scale.
    pub bleu: f64,
    /// Brevity penalty.
    pub bp: f64,
    /// Smoothed n-gram precisions in percent.
    pub precisions: Vec<f64>,
}

impl Bleu {
    /// Lowercase (if configured) and tokenize one text; tokens are separated by single spaces.
    pub fn preprocess(&self, text: &str) -> String {
        let text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        // sacrebleu strips trailing whitespace before tokenizing.
        let text = text.trim_end_matches(is_py_space);
        match self.tokenize {
            Tokenize::Mteval13a => tokenize_13a(text),
            Tokenize::Zh => tokenize_zh(text),
            Tokenize::Intl => tokenize_intl(text),
            Tokenize::Char => tokenize_char(text),
            Tokenize::None => text.to_string(),
        }
    }

    /// BLEU from summed statistics: a port of sacrebleu's `BLEU.compute_bleu`.
    pub fn compute(&self, sys_len: f64, ref_len: f64, correct: &[f64], total: &[f64]) -> Score {
        let order = correct.len();
        let bp =
            if sys_len < ref_len { if sys_len > 0.0 { (1.0 - ref_len / sys_len).exp() } else { 0.0 } } else { 1.0 };
        let mut precisions = vec![0.0; order];
        // sacrebleu returns 0 outright when nothing matched at any order.
        if correct.iter().all(|&c| c == 0.0) {
            return Score { bleu: 0.0, bp, precisions };
        }

        let smooth_value = self.smooth_value.unwrap_or(match self.smooth {
            Smooth::Floor => 0.1,
            Smooth::AddK => 1.0,
            Smooth::None | Smooth::Exp => 0.0,
        });
        let mut smooth_mteval = 1.0;
        let mut eff_order = order;
        for n in 0..order {
            let (mut c, mut t) = (correct[n], total[n]);
            if self.smooth == Smooth::AddK && n > 0 {
                c += smooth_value;
                t += smooth_value;
            }
            if t == 0.0 {
                break;
            }
            if self.effective_order {
                eff_order = n + 1;
            }
            if c == 0.0 {
                match self.smooth {
                    Smooth::Exp => {
                        smooth_mteval *= 2.0;
                        precisions[n] = 100.0 / (smooth_mteval * t);
                    }
                    Smooth::Floor => precisions[n] = 100.0 * smooth_value / t,
                    Smooth::None | Smooth::AddK => {}
                }
            } else {
                precisions[n] = 100.0 * c / t;
            }
        }

        let log_sum: f64 = precisions[..eff_order].iter().map(|&p| if p == 0.0 { LOG_ZERO } else { p.ln() }).sum();
        Score { bleu: bp * (log_sum / eff_order as f64).exp(), bp, precisions }
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII separators U+001C..U+001F,
/// which `str.split()` also splits on.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no arguments.
fn py_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_py_space).filter(|t| !t.is_empty())
}

/// Counts of every n-gram of order 1..=max_order.
fn ngram_counts<'a, 'b>(tokens: &'b [&'a str], max_order: usize) -> HashMap<&'b [&'a str], u32> {
    let mut counts = HashMap::new();
    for n in 1..=max_order {
        for ngram in tokens.windows(n) {
            *counts.entry(ngram).or_insert(0) += 1;
        }
    }
    counts
}

/// The reference length closest to the hypothesis length; ties go to the shorter reference.
fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (difference, length)
    for &len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            Some((d, l)) if d < diff || (d == diff && l <= len) => Some((d, l)),
            _ => Some((diff, len)),
        };
    }
    best.map_or(0, |(_, len)| len)
}

/// The mteval-v13a tokenizer as sacrebleu implements it (`Tokenizer13a`): entities and line
/// breaks first, then [`tokenize_regexp`] on the line padded with a space on each side. The
/// result is tokens joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // The padding matters: it lets a period or comma at either end of the line be split off.
    tokenize_regexp(&format!(" {line} "))
}

/// sacrebleu's `TokenizerRegexp`, the part of 13a that `zh` shares.
///
/// sacrebleu's four regexes each match exactly two characters (or one), so they are applied here
/// as left-to-right scans with the same non-overlapping semantics as Python's `re.sub`.
fn tokenize_regexp(line: &str) -> String {
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 ": ASCII symbols other than ' , - . become tokens.
    let mut chars: Vec<char> = Vec::with_capacity(line.len() * 2);
    for c in line.chars() {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }

    let is_digit = |c: char| c.is_ascii_digit();
    let is_period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> "\1 \2 ": period and comma not preceded by a digit.
    let chars = sub_pairs(&chars, |c| !is_digit(c), is_period_comma, |a, b| [a, ' ', b, ' ']);
    // ([\.,])([^0-9]) -> " \1 \2": period and comma not followed by a digit.
    let chars = sub_pairs(&chars, is_period_comma, |c| !is_digit(c), |a, b| [' ', a, ' ', b]);
    // ([0-9])(-) -> "\1 \2 ": a dash after a digit.
    let chars = sub_pairs(&chars, is_digit, |c| c == '-', |a, b| [a, ' ', b, ' ']);
    join_tokens(&chars)
}

/// sacrebleu's `TokenizerZh`: the line stripped of whitespace at both ends, every character in
/// sacrebleu's CJK ranges padded with spaces, then [`tokenize_regexp`] without 13a's padding.
pub fn tokenize_zh(line: &str) -> String {
    let mut padded = String::with_capacity(line.len() * 2);
    for c in line.trim_matches(is_py_space).chars() {
        if is_zh_char(c) {
            padded.extend([' ', c, ' ']);
        } else {
            padded.push(c);
        }
    }
    tokenize_regexp(&padded)
}

/// sacrebleu's `TokenizerZh._is_chinese_char`: membership in its `_UCODE_RANGES`.
///
/// Two of those ranges are written as `u'\u20000'` and `u'\u2f800'`, which Python reads as a
/// four-digit escape followed by a digit: two-character strings, which compare against one
/// character as U+2001..=U+2A6D and U+2F81..=U+2FA1. So sacrebleu treats general punctuation
/// (U+2001..), arrows and mathematical symbols as Chinese, and CJK Extension B (U+20000..) as
/// not: kept here as sacrebleu has it, since matching sacrebleu is the point.
fn is_zh_char(c: char) -> bool {
    const RANGES: [(u32, u32); 22] = [
        (0x3400, 0x4DB5),
        (0x4E00, 0x9FA5),
        (0x9FA6, 0x9FBB),
        (0xF900, 0xFA2D),
        (0xFA30, 0xFA6A),
        (0xFA70, 0xFAD9),
        (0x2001, 0x2A6D),
        (0x2F81, 0x2FA1),
        (0xFF00, 0xFFEF),
        (0x2E80, 0x2EFF),
        (0x3000, 0x303F),
        (0x31C0, 0x31EF),
        (0x2F00, 0x2FDF),
        (0x2FF0, 0x2FFF),
        (0x3100, 0x312F),
        (0x31A0, 0x31BF),
        (0xFE10, 0xFE1F),
        (0xFE30, 0xFE4F),
        (0x2600, 0x26FF),
        (0x2700, 0x27BF),
        (0x3200, 0x32FF),
        (0x3300, 0x33FF),
    ];
    let c = u32::from(c);
    RANGES.iter().any(|&(start, end)| (start..=end).contains(&c))
}

/// sacrebleu's `TokenizerV14International` (mteval-v14's international tokenization):
/// `(\P{N})(\p{P})` -> "\1 \2 ", then `(\p{P})(\P{N})` -> " \1 \2", then `(\p{S})` -> " \1 ".
pub fn tokenize_intl(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let is_number = |c: char| in_table(categories::NUMBER, c);
    let is_punctuation = |c: char| in_table(categories::PUNCTUATION, c);
    let chars = sub_pairs(&chars, |c| !is_number(c), is_punctuation, |a, b| [a, ' ', b, ' ']);
    let chars = sub_pairs(&chars, is_punctuation, |c| !is_number(c), |a, b| [' ', a, ' ', b]);
    let mut spaced = Vec::with_capacity(chars.len() + chars.len() / 4);
    for c in chars {
        if in_table(categories::SYMBOL, c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    join_tokens(&spaced)
}

/// sacrebleu's `TokenizerChar`: every character joined by spaces; BLEU then splits on whitespace,
/// so every non-whitespace character is one token.
pub fn tokenize_char(line: &str) -> String {
    let chars: Vec<char> = line.chars().filter(|&c| !is_py_space(c)).flat_map(|c| [c, ' ']).collect();
    join_tokens(&chars)
}

/// Whether a character is in a sorted table of inclusive code point ranges.
fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    table
        .binary_search_by(|&(start, end)| {
            if end < c {
                std::cmp::Ordering::Less
            } else if start > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `' '.join(line.split())`: the tokens of a character sequence, joined by single spaces.
fn join_tokens(chars: &[char]) -> String {
    let text: String = chars.iter().collect();
    py_split(&text).collect::<Vec<_>>().join(" ")
}

/// `re.sub` for a pattern of two single-character classes: scan left to right and replace each
/// non-overlapping match `(first)(second)`.
fn sub_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    replace: impl Fn(char, char) -> [char; 4],
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            out.extend(replace(chars[i], chars[i + 1]));
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use triad_plugin_sdk::configure;

    /// Real movie-review snippets, Chinese reviews and Tang poems, and sacrebleu's scores on them;
    /// see tests/make_fixture.py.
    const FIXTURE: &str = include_str!("../tests/fixture.json");

    /// The tokenizers whose per-pair statistics the fixture holds.
    const TOKENIZERS: [&str; 4] = ["13a", "zh", "intl", "char"];

    struct Pair {
        record: MetricRecord,
        /// sacrebleu's statistics of the pair under each of [`TOKENIZERS`].
        stats: Vec<Vec<f64>>,
    }

    fn with_tokenizer(name: &str) -> Bleu {
        configure(&format!(r#"{{"tokenize": "{name}"}}"#)).expect("tokenizer config")
    }

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("fixture.json is valid JSON")
    }

    fn pairs(fixture: &Value) -> Vec<Pair> {
        fixture["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| Pair {
                record: MetricRecord {
                    prediction: p["hyp"].as_str().expect("hyp").to_string(),
                    references: p["refs"]
                        .as_array()
                        .expect("refs")
                        .iter()
                        .map(|r| r.as_str().expect("ref").to_string())
                        .collect(),
                },
                stats: TOKENIZERS
                    .iter()
                    .map(|t| {
                        let stats = p["stats"][t].as_str().expect("stats");
                        stats.split(' ').map(|x| x.parse().expect("integer statistic")).collect()
                    })
                    .collect(),
            })
            .collect()
    }

    fn sum(bleu: &mut Bleu, records: &[&MetricRecord]) -> Vec<f64> {
        let mut totals = vec![0.0; 2 + 2 * bleu.max_order];
        for record in records {
            let stats = bleu.statistics(record).expect("statistics");
            totals.iter_mut().zip(&stats).for_each(|(t, s)| *t += s);
        }
        totals
    }

    use triad_plugin_sdk::testing::metric as value;

    #[test]
    fn tokenizers_match_sacrebleu() {
        let fixture = fixture();
        let cases = fixture["token_cases"].as_array().expect("token_cases");
        assert!(cases.len() > 60);
        for name in TOKENIZERS {
            let bleu = with_tokenizer(name);
            for case in cases {
                let text = case["text"].as_str().expect("text");
                let expected = case["tokens"][name].as_str().expect("tokens");
                assert_eq!(bleu.preprocess(text), expected, "{name}: tokenizing {text:?}");
            }
        }
        assert_eq!(Bleu::default().tokenize, with_tokenizer("13a").tokenize);
    }

    #[test]
    fn segment_statistics_match_sacrebleu_for_every_tokenizer() {
        let fixture = fixture();
        let pairs = pairs(&fixture);
        assert!(pairs.len() > 300);
        for (k, name) in TOKENIZERS.iter().enumerate() {
            let mut bleu = with_tokenizer(name);
            for pair in &pairs {
                let stats = bleu.statistics(&pair.record).expect("statistics");
                assert_eq!(stats, pair.stats[k], "{name}: statistics of {:?}", pair.record);
            }
        }
    }

    #[test]
    fn chinese_needs_a_chinese_tokenizer() {
        // 13a sees a Chinese sentence as one or a few long tokens; zh and char see characters.
        let text = "房间设施还可以，床上被褥很干净";
        assert_eq!(with_tokenizer("13a").preprocess(text), text);
        assert_eq!(with_tokenizer("zh").preprocess(text), "房 间 设 施 还 可 以 ， 床 上 被 褥 很 干 净");
        assert_eq!(with_tokenizer("intl").preprocess(text), "房间设施还可以 ， 床上被褥很干净");
        assert_eq!(with_tokenizer("char").preprocess("a b，c"), "a b ， c");
    }

    #[test]
    fn category_tables_are_sorted_disjoint_ranges() {
        for table in [categories::PUNCTUATION, categories::SYMBOL, categories::NUMBER] {
            assert!(table.iter().all(|&(start, end)| start <= end));
            assert!(table.windows(2).all(|w| w[0].1 + 1 < w[1].0), "sorted, disjoint and merged");
        }
        for (c, p, s, n) in [('，', true, false, false), ('$', false, true, false), ('²', false, false, true)] {
            assert_eq!(
                (
                    in_table(categories::PUNCTUATION, c),
                    in_table(categories::SYMBOL, c),
                    in_table(categories::NUMBER, c)
                ),
                (p, s, n),
                "{c}"
            );
        }
    }

    #[test]
    fn corpus_bleu_matches_sacrebleu_on_every_config_and_subset() {
        let fixture = fixture();
        let pairs = pairs(&fixture);
        let cases = fixture["corpus"].as_array().expect("corpus");
        assert!(cases.len() > 200);
        for tokenizer in ["zh", "intl", "char"] {
            assert!(cases.iter().filter(|c| c["config"]["tokenize"] == tokenizer).count() >= 30, "{tokenizer}");
        }
        let mut max_difference: f64 = 0.0;
        for case in cases {
            let config = case["config"].to_string();
            let mut bleu: Bleu = configure(&config).expect("config");
            let indices: Vec<usize> = fixture["subsets"][case["subset"].as_str().expect("subset")]
                .as_array()
                .expect("indices")
                .iter()
                .map(|i| i.as_u64().expect("index") as usize)
                .collect();
            let records: Vec<&MetricRecord> = indices.iter().map(|&i| &pairs[i].record).collect();
            let totals = sum(&mut bleu, &records);
            let values = bleu.finish(&totals).expect("finish");
            let what = format!("config {config}, subset {}", case["subset"]);

            let expected = case["bleu"].as_f64().expect("bleu");
            let got = value(&values, "bleu");
            assert!((got - expected).abs() < 1e-9, "{what}: BLEU {got} vs sacrebleu {expected}");
            max_difference = max_difference.max((got - expected).abs());
            let bp = case["bp"].as_f64().expect("bp");
            assert!((value(&values, "bleu_bp") - bp).abs() < 1e-12, "{what}: brevity penalty");
            for (n, p) in case["precisions"].as_array().expect("precisions").iter().enumerate() {
                let p = p.as_f64().expect("precision");
                let got = value(&values, &format!("bleu_p{}", n + 1));
                assert!((got - p).abs() < 1e-9, "{what}: p{} {got} vs {p}", n + 1);
            }
            assert_eq!(value(&values, "bleu_hyp_len"), case["sys_len"].as_f64().expect("sys_len"), "{what}");
            assert_eq!(value(&values, "bleu_ref_len"), case["ref_len"].as_f64().expect("ref_len"), "{what}");
        }
        eprintln!("{} corpus cases, largest |BLEU - sacrebleu| {max_difference:e}", cases.len());
    }

    /// The host sums statistics per chunk on each core and then sums the chunks, in any order.
    #[test]
    fn chunked_sums_give_the_corpus_score() {
        let fixture = fixture();
        let pairs = pairs(&fixture);
        let records: Vec<&MetricRecord> = pairs.iter().map(|p| &p.record).collect();
        let expected = fixture["corpus"]
            .as_array()
            .expect("corpus")
            .iter()
            .find(|c| c["subset"] == "all" && c["config"] == serde_json::json!({}))
            .expect("whole-corpus case")["bleu"]
            .as_f64()
            .expect("bleu");

        let mut bleu = Bleu::default();
        for chunk_sizes in [vec![1usize], vec![7], vec![50, 3, 97, 1], vec![200]] {
            let mut chunk_totals = Vec::new();
            let (mut start, mut k) = (0, 0);
            while start < records.len() {
                let end = (start + chunk_sizes[k % chunk_sizes.len()]).min(records.len());
                chunk_totals.push(sum(&mut bleu, &records[start..end]));
                start = end;
                k += 1;
            }
            let mut totals = vec![0.0; 10];
            for chunk in chunk_totals.iter().rev() {
                totals.iter_mut().zip(chunk).for_each(|(t, s)| *t += s);
            }
            let got = value(&bleu.finish(&totals).expect("finish"), "bleu");
            assert!((got - expected).abs() < 1e-9, "chunks {chunk_sizes:?}: {got} vs {expected}");
        }
    }

    #[test]
    fn identical_text_scores_100_and_truncation_is_penalized() {
        let mut bleu = Bleu::default();
        let text = "An idealistic love story that brings out the latent 15 year old romantic in everyone.";
        let same = MetricRecord { prediction: text.into(), references: vec![text.into()] };
        let totals = bleu.statistics(&same).expect("statistics");
        let values = bleu.finish(&totals).expect("finish");
        assert!((value(&values, "bleu") - 100.0).abs() < 1e-9);

        // Half the words: every n-gram is right, so only the brevity penalty exp(1 - 16/8) remains.
        let half = MetricRecord {
            prediction: "An idealistic love story that brings out the".into(),
            references: vec![text.into()],
        };
        let totals = bleu.statistics(&half).expect("statistics");
        assert_eq!(totals[..2], [8.0, 16.0]);
        let values = bleu.finish(&totals).expect("finish");
        assert!((value(&values, "bleu") - 100.0 * (-1.0f64).exp()).abs() < 1e-9);
    }

    #[test]
    fn closest_reference_length_prefers_the_shorter_on_ties() {
        assert_eq!(closest_ref_len(10, &[12, 8]), 8);
        assert_eq!(closest_ref_len(10, &[8, 12]), 8);
        assert_eq!(closest_ref_len(10, &[13, 11, 9]), 9);
        assert_eq!(closest_ref_len(10, &[20, 4]), 4);
    }

    #[test]
    fn bad_configs_and_records_are_rejected() {
        let err = configure::<Bleu>(r#"{"tokenize": "ja-mecab"}"#).expect_err("unknown tokenizer").message;
        assert!(
            err.contains("tokenize") && err.contains("ja-mecab") && err.contains(r#""zh", "intl", "char""#),
            "{err}"
        );
        assert!(configure::<Bleu>(r#"{"max_order": 0}"#).is_err());
        assert!(configure::<Bleu>(r#"{"smooth": "exp", "smooth_value": 0.5}"#).is_err());
        assert!(configure::<Bleu>(r#"{"smoothing": "exp"}"#).is_err());
        assert!(configure::<Bleu>(r#"{"smooth": "floor", "smooth_value": 0.2}"#).is_ok());

        let mut bleu = Bleu::default();
        let orphan = MetricRecord { prediction: "A masterpiece four years in the making.".into(), references: vec![] };
        assert!(bleu.statistics(&orphan).is_err());
        assert!(bleu.finish(&[]).is_err());
        assert!(bleu.finish(&[1.0, 2.0, 3.0]).is_err());
    }
}
