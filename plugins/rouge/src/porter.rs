//! The Porter stemmer exactly as nltk's `PorterStemmer()` runs it in its default
//! `NLTK_EXTENSIONS` mode, which is what rouge-score's `use_stemmer=True` calls.
//!
//! A rule-by-rule port of `nltk/stem/porter.py`: the irregular-forms table, NLTK's changes to steps
//! 1a, 1b, 1c and 2 (`ies`/`ied` on four-letter words, `alli` first, `fulli`, `logi`), and the
//! two-letter `*o` condition. Other Porter implementations (Martin Porter's own, Porter2 in the
//! `rust-stemmers` crate) stem many words differently, so none of them could stand in for it.
//!
//! The stemmer works on bytes: the ROUGE tokenizers only ever give it ASCII words of `a-z0-9`.

/// nltk's table of irregular forms, looked up before any rule.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// The stem of one lowercase ASCII word, as `nltk.stem.porter.PorterStemmer().stem(word)`.
pub fn stem(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    if let Some((_, irregular)) = IRREGULAR.iter().find(|(form, _)| *form == lower) {
        return (*irregular).to_string();
    }
    if lower.len() <= 2 {
        return lower;
    }
    let mut w = lower.into_bytes();
    w = step1a(w);
    w = step1b(w);
    w = step1c(w);
    w = step2(w);
    w = step3(w);
    w = step4(w);
    w = step5a(w);
    w = step5b(w);
    // Only ASCII bytes were removed or appended, so the bytes are still valid UTF-8.
    String::from_utf8_lossy(&w).into_owned()
}

/// A suffix rule: suffix, replacement, and the condition on the stem left without the suffix.
type Rule<'a> = (&'static str, &'static str, &'a dyn Fn(&[u8]) -> bool);

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// `_is_consonant`: `y` is a consonant at the start or after a vowel, a vowel after a consonant.
fn is_consonant(word: &[u8], i: usize) -> bool {
    if is_vowel(word[i]) {
        return false;
    }
    if word[i] != b'y' {
        return true;
    }
    let (mut i, mut negate) = (i, false);
    while i > 0 && word[i] == b'y' {
        negate = !negate;
        i -= 1;
    }
    // The letter the run of y's follows decides, flipped once per y.
    let consonant = !is_vowel(word[i]);
    consonant != negate
}

/// `_consonant_flags`: `is_consonant` of every position in one pass.
fn consonant_flags(word: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(word.len());
    for (i, &c) in word.iter().enumerate() {
        let flag = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(flag);
    }
    flags
}

/// `_measure`: m in `[C](VC){m}[V]`, the number of vowel-to-consonant transitions.
fn measure(stem: &[u8]) -> usize {
    consonant_flags(stem).windows(2).filter(|pair| !pair[0] && pair[1]).count()
}

fn has_positive_measure(stem: &[u8]) -> bool {
    measure(stem) > 0
}

fn measure_gt_1(stem: &[u8]) -> bool {
    measure(stem) > 1
}

fn contains_vowel(stem: &[u8]) -> bool {
    consonant_flags(stem).iter().any(|&consonant| !consonant)
}

/// Condition `*d`: the word ends with a double consonant.
fn ends_double_consonant(word: &[u8]) -> bool {
    let n = word.len();
    n >= 2 && word[n - 1] == word[n - 2] && is_consonant(word, n - 1)
}

/// Condition `*o`: consonant-vowel-consonant, the last not w, x or y; NLTK also accepts a
/// two-letter vowel-consonant word.
fn ends_cvc(word: &[u8]) -> bool {
    let n = word.len();
    (n >= 3
        && is_consonant(word, n - 3)
        && !is_consonant(word, n - 2)
        && is_consonant(word, n - 1)
        && !matches!(word[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(word, 0) && is_consonant(word, 1))
}

fn replace_suffix(word: &[u8], suffix: &str, replacement: &str) -> Vec<u8> {
    let mut out = word[..word.len() - suffix.len()].to_vec();
    out.extend_from_slice(replacement.as_bytes());
    out
}

/// `_apply_rule_list`: the first rule whose suffix the word ends with decides; when its condition
/// fails the word is returned unchanged, without trying later rules.
fn apply_rules(word: Vec<u8>, rules: &[Rule]) -> Vec<u8> {
    for (suffix, replacement, condition) in rules {
        if word.ends_with(suffix.as_bytes()) {
            let stem = &word[..word.len() - suffix.len()];
            return if condition(stem) { replace_suffix(&word, suffix, replacement) } else { word };
        }
    }
    word
}

fn always(_: &[u8]) -> bool {
    true
}

fn step1a(word: Vec<u8>) -> Vec<u8> {
    if word.ends_with(b"ies") && word.len() == 4 {
        return replace_suffix(&word, "ies", "ie");
    }
    apply_rules(word, &[("sses", "ss", &always), ("ies", "i", &always), ("ss", "ss", &always), ("s", "", &always)])
}

fn step1b(word: Vec<u8>) -> Vec<u8> {
    if word.ends_with(b"ied") {
        return replace_suffix(&word, "ied", if word.len() == 4 { "ie" } else { "i" });
    }
    if word.ends_with(b"eed") {
        let stem = &word[..word.len() - 3];
        return if measure(stem) > 0 { replace_suffix(&word, "eed", "ee") } else { word };
    }
    let Some(stem) = ["ed", "ing"].iter().find_map(|suffix| {
        let stem = word.strip_suffix(suffix.as_bytes())?;
        contains_vowel(stem).then(|| stem.to_vec())
    }) else {
        return word;
    };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if stem.ends_with(suffix.as_bytes()) {
            return replace_suffix(&stem, suffix, replacement);
        }
    }
    if ends_double_consonant(&stem) {
        // A double letter other than l, s or z loses one of its pair; those three stay, and no
        // later rule is tried.
        return match stem.last() {
            Some(b'l' | b's' | b'z') | None => stem,
            Some(_) => stem[..stem.len() - 1].to_vec(),
        };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        let mut stem = stem;
        stem.push(b'e');
        return stem;
    }
    stem
}

fn step1c(word: Vec<u8>) -> Vec<u8> {
    // NLTK: y -> i only after a consonant that is not the whole stem ('happy' but not 'by').
    let condition = |stem: &[u8]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(word, &[("y", "i", &condition)])
}

fn step2(word: Vec<u8>) -> Vec<u8> {
    if word.ends_with(b"alli") && has_positive_measure(&word[..word.len() - 4]) {
        return step2(replace_suffix(&word, "alli", "al"));
    }
    // The 'l' of 'logi' stays with the stem for the condition, so that 'geo'/'theo' stems count.
    let logi_stem_len = word.len().saturating_sub(3);
    let logi_condition = |_: &[u8]| has_positive_measure(&word[..logi_stem_len]);
    let m = &has_positive_measure;
    let rules: [Rule; 22] = [
        ("ational", "ate", m),
        ("tional", "tion", m),
        ("enci", "ence", m),
        ("anci", "ance", m),
        ("izer", "ize", m),
        ("bli", "ble", m),
        ("alli", "al", m),
        ("entli", "ent", m),
        ("eli", "e", m),
        ("ousli", "ous", m),
        ("ization", "ize", m),
        ("ation", "ate", m),
        ("ator", "ate", m),
        ("alism", "al", m),
        ("iveness", "ive", m),
        ("fulness", "ful", m),
        ("ousness", "ous", m),
        ("aliti", "al", m),
        ("iviti", "ive", m),
        ("biliti", "ble", m),
        ("fulli", "ful", m),
        ("logi", "log", &logi_condition),
    ];
    apply_rules(word.clone(), &rules)
}

fn step3(word: Vec<u8>) -> Vec<u8> {
    let m = &has_positive_measure;
    apply_rules(
        word,
        &[
            ("icate", "ic", m),
            ("ative", "", m),
            ("alize", "al", m),
            ("iciti", "ic", m),
            ("ical", "ic", m),
            ("ful", "", m),
            ("ness", "", m),
        ],
    )
}

fn step4(word: Vec<u8>) -> Vec<u8> {
    let m = &measure_gt_1;
    let ion = |stem: &[u8]| measure(stem) > 1 && matches!(stem.last(), Some(b's' | b't'));
    apply_rules(
        word,
        &[
            ("al", "", m),
            ("ance", "", m),
            ("ence", "", m),
            ("er", "", m),
            ("ic", "", m),
            ("able", "", m),
            ("ible", "", m),
            ("ant", "", m),
            ("ement", "", m),
            ("ment", "", m),
            ("ent", "", m),
            ("ion", "", &ion),
            ("ou", "", m),
            ("ism", "", m),
            ("ate", "", m),
            ("iti", "", m),
            ("ous", "", m),
            ("ive", "", m),
            ("ize", "", m),
        ],
    )
}

fn step5a(word: Vec<u8>) -> Vec<u8> {
    // Both conditions are tried (not first-match like `apply_rules`): see nltk's comment on it.
    if let Some(stem) = word.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    word
}

fn step5b(word: Vec<u8>) -> Vec<u8> {
    // The condition is on the word less one 'l', not on the stem less both.
    let without_last = word.len().saturating_sub(1);
    let condition = |_: &[u8]| measure(&word[..without_last]) > 1;
    apply_rules(word.clone(), &[("ll", "l", &condition)])
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn examples_from_porters_paper_and_nltks_extensions() {
        for (word, expected) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("dying", "die"),
            ("spied", "spi"),
            ("died", "die"),
            ("controlling", "control"),
            ("roll", "roll"),
            ("geology", "geolog"),
        ] {
            assert_eq!(stem(word), expected, "{word}");
        }
    }
}
