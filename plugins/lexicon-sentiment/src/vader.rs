//! A faithful port of VADER's `SentimentIntensityAnalyzer.polarity_scores` compound score
//! (vaderSentiment 3.3.2, `vaderSentiment/vaderSentiment.py`).
//!
//! The rules are ported line by line, quirks included, because the point is to agree with the
//! reference implementation that people cite: for example the "but" rule rescales the *first*
//! sentiment equal to each value (Python's `list.index`), and `never ... so/this` multiplies by
//! 1.25 whenever the word just before is "so" or "this" (Python's `and`/`or` precedence). The
//! tests compare against Python's scores on real movie-review snippets and on one sentence per
//! rule. Only one thing is left out: VADER's `SENTIMENT_LADEN_IDIOMS`, which its own code never
//! calls ("future work").
//!
//! Python's `polarity_scores` rounds the compound to 4 decimals; [`Vader::compound`] returns it
//! unrounded. The f64 operations run in Python's order, so the results are bit-identical to
//! Python 3.11's (3.12 changed `sum()` of floats to compensated summation, which can move the
//! last bit).

use std::borrow::Cow;
use std::sync::OnceLock;

use triad_plugin_sdk::hash::FastHashMap;

/// Token and mean human valence (-4..+4), two columns of `vader_lexicon.txt`; see data/make_data.py.
const LEXICON: &str = include_str!("../data/vader_lexicon.tsv");
/// One-code-point emojis and their textual descriptions; see data/make_data.py.
const EMOJIS: &str = include_str!("../data/emoji_lexicon.tsv");

// Empirically derived constants from the paper and the reference code.
/// Intensity added by a booster word ("very").
const B_INCR: f64 = 0.293;
/// Intensity removed by a dampener word ("slightly").
const B_DECR: f64 = -0.293;
/// Intensity added by writing a sentiment word in ALL CAPS among mixed-case words.
const C_INCR: f64 = 0.733;
/// Factor applied to a negated sentiment.
const N_SCALAR: f64 = -0.74;

/// Words that negate a sentiment word up to three places after them (VADER's `NEGATE`).
const NEGATE: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

/// Degree adverbs of one word (VADER's `BOOSTER_DICT` without its three two-word entries, which
/// [`booster_bigram`] handles).
fn booster(word: &str) -> Option<f64> {
    match word {
        "absolutely" | "amazingly" | "awfully" | "completely" | "considerable" | "considerably" | "decidedly"
        | "deeply" | "effing" | "enormous" | "enormously" | "entirely" | "especially" | "exceptional"
        | "exceptionally" | "extreme" | "extremely" | "fabulously" | "flipping" | "flippin" | "frackin"
        | "fracking" | "fricking" | "frickin" | "frigging" | "friggin" | "fully" | "fuckin" | "fucking" | "fuggin"
        | "fugging" | "greatly" | "hella" | "highly" | "hugely" | "incredible" | "incredibly" | "intensely"
        | "major" | "majorly" | "more" | "most" | "particularly" | "purely" | "quite" | "really" | "remarkably"
        | "so" | "substantially" | "thoroughly" | "total" | "totally" | "tremendous" | "tremendously" | "uber"
        | "unbelievably" | "unusually" | "utter" | "utterly" | "very" => Some(B_INCR),
        "almost" | "barely" | "hardly" | "kinda" | "kindof" | "kind-of" | "less" | "little" | "marginal"
        | "marginally" | "occasional" | "occasionally" | "partly" | "scarce" | "scarcely" | "slight" | "slightly"
        | "somewhat" | "sorta" | "sortof" | "sort-of" => Some(B_DECR),
        _ => None,
    }
}

/// The two-word entries of `BOOSTER_DICT`. Python looks up space-joined words; tokens never
/// contain whitespace, so matching word pairs is the same test without building strings.
fn booster_bigram(first: &str, second: &str) -> Option<f64> {
    match (first, second) {
        ("just", "enough") | ("kind", "of") | ("sort", "of") => Some(B_DECR),
        _ => None,
    }
}

/// VADER's `SPECIAL_CASES`: phrases whose valence replaces the word's own ("the shit" is good).
/// The one-word key "badass" can never equal a space-joined sequence, so it is not here.
fn special_case(words: &[&str]) -> Option<f64> {
    match words {
        ["the", "shit"] | ["the", "bomb"] | ["to", "die", "for"] => Some(3.0),
        ["bad", "ass"] => Some(1.5),
        ["bus", "stop"] => Some(0.0),
        ["yeah", "right"] => Some(-2.0),
        ["kiss", "of", "death"] => Some(-1.5),
        ["beating", "heart"] => Some(3.5),
        _ => None,
    }
}

fn negated(word: &str) -> bool {
    NEGATE.contains(&word) || word.contains("n't")
}

/// Python's `str.split()` separators: Unicode White_Space plus the four ASCII information
/// separators, which Python also counts as whitespace.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Titlecase letters (category Lt): Python's `isupper` is false when one is present.
fn is_titlecase(c: char) -> bool {
    matches!(c,
        '\u{01C5}' | '\u{01C8}' | '\u{01CB}' | '\u{01F2}' | '\u{1F88}'..='\u{1F8F}'
        | '\u{1F98}'..='\u{1F9F}' | '\u{1FA8}'..='\u{1FAF}' | '\u{1FBC}' | '\u{1FCC}' | '\u{1FFC}')
}

/// Python's `str.isupper`: at least one cased character and none lowercase or titlecase.
fn is_upper(word: &str) -> bool {
    let mut cased = false;
    for c in word.chars() {
        if c.is_lowercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// VADER's `_strip_punc_if_word`: strip ASCII punctuation from both ends unless that leaves two
/// characters or fewer, which was probably an emoticon (":)", ":-D").
fn strip_punctuation(token: &str) -> &str {
    let stripped = token.trim_matches(|c: char| c.is_ascii_punctuation());
    if stripped.chars().count() <= 2 { token } else { stripped }
}

fn lowercase(word: &str) -> Cow<'_, str> {
    if word.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(word.to_lowercase())
    }
}

/// The VADER analyzer: the lexicon and the emoji descriptions, parsed once.
pub struct Vader {
    lexicon: FastHashMap<&'static str, f64>,
    emojis: FastHashMap<char, &'static str>,
    /// The smallest emoji code point, so that plain text skips the emoji lookup.
    first_emoji: char,
}

impl Default for Vader {
    fn default() -> Self {
        Self::new()
    }
}

/// One token of the text with what the rules ask about it, computed once.
struct Token<'a> {
    word: &'a str,
    lower: Cow<'a, str>,
    valence: Option<f64>,
}

impl Vader {
    /// Parse the compiled-in lexicons (about 8,700 lines; a millisecond or so).
    pub fn new() -> Self {
        // A later duplicate wins, as in Python's dict.
        let lexicon: FastHashMap<&'static str, f64> = LEXICON
            .lines()
            .filter_map(|line| {
                let (word, mean) = line.split_once('\t')?;
                Some((word, mean.trim().parse().ok()?))
            })
            .collect();
        let emojis: FastHashMap<char, &'static str> = EMOJIS
            .lines()
            .filter_map(|line| {
                let (emoji, description) = line.split_once('\t')?;
                let mut chars = emoji.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some((c, description)),
                    _ => None,
                }
            })
            .collect();
        let first_emoji = emojis.keys().copied().min().unwrap_or(char::MAX);
        Vader { lexicon, emojis, first_emoji }
    }

    /// Number of lexicon entries (distinct tokens).
    pub fn lexicon_len(&self) -> usize {
        self.lexicon.len()
    }

    /// The mean valence of a lexicon token, if it has one.
    pub fn valence(&self, token: &str) -> Option<f64> {
        self.lexicon.get(token).copied()
    }

    /// VADER's compound score of `text`: the sum of its adjusted word valences, normalized to
    /// [-1, 1] by x / sqrt(x^2 + 15). 0.0 for text with no sentiment words.
    pub fn compound(&self, text: &str) -> f64 {
        let text = self.replace_emojis(text);
        let tokens: Vec<Token> = text
            .split(is_python_space)
            .filter(|t| !t.is_empty())
            .map(strip_punctuation)
            .map(|word| {
                let lower = lowercase(word);
                let valence = self.valence(&lower);
                Token { word, lower, valence }
            })
            .collect();
        if tokens.is_empty() {
            return 0.0;
        }
        // Caps only emphasise when some, not all, words are in caps.
        let caps = tokens.iter().filter(|t| is_upper(t.word)).count();
        let cap_diff = caps > 0 && caps < tokens.len();

        let mut sentiments = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            // Modifiers carry no valence of their own.
            let kind_of = token.lower == "kind" && tokens.get(i + 1).is_some_and(|t| t.lower == "of");
            if booster(&token.lower).is_some() || kind_of {
                sentiments.push(0.0);
                continue;
            }
            sentiments.push(sentiment_valence(&tokens, i, cap_diff));
        }
        but_check(&tokens, &mut sentiments);

        let mut sum: f64 = sentiments.iter().sum();
        let emphasis = punctuation_emphasis(&text);
        if sum > 0.0 {
            sum += emphasis;
        } else if sum < 0.0 {
            sum -= emphasis;
        }
        normalize(sum)
    }

    /// Replace each emoji by its description, as `polarity_scores` does: a space is added
    /// before a description unless the previous character was a space, but none after it.
    fn replace_emojis<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Option<String> = None;
        let mut prev_space = true;
        for (at, c) in text.char_indices() {
            let description = if c >= self.first_emoji { self.emojis.get(&c) } else { None };
            match description {
                Some(description) => {
                    let out = out.get_or_insert_with(|| text[..at].to_string());
                    if !prev_space {
                        out.push(' ');
                    }
                    out.push_str(description);
                    prev_space = false;
                }
                None => {
                    if let Some(out) = out.as_mut() {
                        out.push(c);
                    }
                    prev_space = c == ' ';
                }
            }
        }
        out.map_or(Cow::Borrowed(text), Cow::Owned)
    }
}

/// The valence of token `i` after negation, boosters, caps, idioms and "least" (VADER's
/// `sentiment_valence`).
fn sentiment_valence(tokens: &[Token], i: usize, cap_diff: bool) -> f64 {
    let Some(base) = tokens[i].valence else {
        return 0.0;
    };
    let lower = |k: usize| -> &str { &tokens[k].lower };
    let mut valence = base;

    // "no" before another sentiment word is a negation, not a negative word itself.
    if lower(i) == "no" && i + 1 < tokens.len() && tokens[i + 1].valence.is_some() {
        valence = 0.0;
    }
    if (i > 0 && lower(i - 1) == "no")
        || (i > 1 && lower(i - 2) == "no")
        || (i > 2 && lower(i - 3) == "no" && matches!(lower(i - 1), "or" | "nor"))
    {
        valence = base * N_SCALAR;
    }

    if is_upper(tokens[i].word) && cap_diff {
        if valence > 0.0 {
            valence += C_INCR;
        } else {
            valence -= C_INCR;
        }
    }

    // Up to three preceding non-lexicon words may boost, dampen or negate; farther ones less.
    for start in 0..3 {
        if i > start && tokens[i - start - 1].valence.is_none() {
            let mut scalar = scalar_inc_dec(&tokens[i - start - 1], valence, cap_diff);
            if start == 1 && scalar != 0.0 {
                scalar *= 0.95;
            }
            if start == 2 && scalar != 0.0 {
                scalar *= 0.9;
            }
            valence += scalar;
            valence = negation_check(valence, tokens, start, i);
            if start == 2 {
                valence = special_idioms_check(valence, tokens, i);
            }
        }
    }
    least_check(valence, tokens, i)
}

/// How much a booster or dampener word shifts a valence, away from zero for boosters.
fn scalar_inc_dec(token: &Token, valence: f64, cap_diff: bool) -> f64 {
    let Some(mut scalar) = booster(&token.lower) else {
        return 0.0;
    };
    if valence < 0.0 {
        scalar = -scalar;
    }
    if is_upper(token.word) && cap_diff {
        if valence > 0.0 {
            scalar += C_INCR;
        } else {
            scalar -= C_INCR;
        }
    }
    scalar
}

fn negation_check(valence: f64, tokens: &[Token], start: usize, i: usize) -> f64 {
    let lower = |k: usize| -> &str { &tokens[k].lower };
    let so_or_this = |w: &str| w == "so" || w == "this";
    match start {
        0 if negated(lower(i - 1)) => valence * N_SCALAR,
        1 => {
            if lower(i - 2) == "never" && so_or_this(lower(i - 1)) {
                valence * 1.25
            } else if lower(i - 2) == "without" && lower(i - 1) == "doubt" {
                valence
            } else if negated(lower(i - 2)) {
                valence * N_SCALAR
            } else {
                valence
            }
        }
        2 => {
            // Python's `a and b or c`: the second clause alone also triggers the 1.25.
            if (lower(i - 3) == "never" && so_or_this(lower(i - 2))) || so_or_this(lower(i - 1)) {
                valence * 1.25
            } else if lower(i - 3) == "without" && (lower(i - 2) == "doubt" || lower(i - 1) == "doubt") {
                valence
            } else if negated(lower(i - 3)) {
                valence * N_SCALAR
            } else {
                valence
            }
        }
        _ => valence,
    }
}

/// Idioms around token `i` (called with i >= 3): a matching phrase replaces the valence; "kind
/// of" and friends before it dampen it.
fn special_idioms_check(mut valence: f64, tokens: &[Token], i: usize) -> f64 {
    let w = |k: usize| -> &str { &tokens[k].lower };
    let (w3, w2, w1, w0) = (w(i - 3), w(i - 2), w(i - 1), w(i));
    let before: [&[&str]; 5] = [&[w1, w0], &[w2, w1, w0], &[w2, w1], &[w3, w2, w1], &[w3, w2]];
    if let Some(v) = before.iter().find_map(|seq| special_case(seq)) {
        valence = v;
    }
    if tokens.len() - 1 > i
        && let Some(v) = special_case(&[w0, w(i + 1)])
    {
        valence = v;
    }
    if tokens.len() - 1 > i + 1
        && let Some(v) = special_case(&[w0, w(i + 1), w(i + 2)])
    {
        valence = v;
    }
    for (first, second) in [(w3, w2), (w2, w1)] {
        if let Some(b) = booster_bigram(first, second) {
            valence += b;
        }
    }
    valence
}

/// "least good" is negative, "at least good" and "very least good" are not.
fn least_check(valence: f64, tokens: &[Token], i: usize) -> f64 {
    let least_before = i > 0 && tokens[i - 1].valence.is_none() && tokens[i - 1].lower == "least";
    if i > 1 && least_before {
        if tokens[i - 2].lower != "at" && tokens[i - 2].lower != "very" {
            return valence * N_SCALAR;
        }
        valence
    } else if least_before {
        valence * N_SCALAR
    } else {
        valence
    }
}

/// The contrastive "but": halve what comes before the first "but", weigh what follows by 1.5.
/// Ported with Python's quirk: each value rescales the first entry *equal* to it
/// (`sentiments.index(sentiment)`), so repeated values rescale one entry several times.
fn but_check(tokens: &[Token], sentiments: &mut [f64]) {
    let Some(but) = tokens.iter().position(|t| t.lower == "but") else {
        return;
    };
    for k in 0..sentiments.len() {
        let value = sentiments[k];
        let first = sentiments.iter().position(|&s| s == value).unwrap_or(k);
        if first < but {
            sentiments[first] = value * 0.5;
        } else if first > but {
            sentiments[first] = value * 1.5;
        }
    }
}

/// Emphasis from "!" (up to four) and from two or more "?".
fn punctuation_emphasis(text: &str) -> f64 {
    let exclamations = text.matches('!').count().min(4);
    let questions = text.matches('?').count();
    let question_emphasis = match questions {
        0 | 1 => 0.0,
        2 | 3 => questions as f64 * 0.18,
        _ => 0.96,
    };
    exclamations as f64 * 0.292 + question_emphasis
}

/// Map an unbounded sum of valences to [-1, 1]; 15 approximates the largest expected sum.
fn normalize(score: f64) -> f64 {
    (score / (score * score + 15.0).sqrt()).clamp(-1.0, 1.0)
}

/// The shared analyzer, built on first use.
pub fn vader() -> &'static Vader {
    static VADER: OnceLock<Vader> = OnceLock::new();
    VADER.get_or_init(Vader::new)
}

/// VADER's compound sentiment of `text` in [-1, 1] (unrounded; Python rounds it to 4 decimals).
pub fn compound(text: &str) -> f64 {
    vader().compound(text)
}
