//! Reward plugin: does a line of classical Chinese verse keep the form of the line it follows?
//!
//! Regulated verse (律詩, 絕句) repeats one shape: every couplet has the same number of
//! characters per clause (five or seven), a comma between its clauses and a full stop at its
//! end. The line to match is the last non-empty line of the prompt; the answer is the first
//! non-empty line of the response. Both are cut into clauses at punctuation (，。？！；：、 and
//! their ASCII forms); the reward is the share of clause positions where the answer's clause
//! has the matched clause's length and ends with the same mark, over the longer of the two
//! clause lists: 1 for a line of the same form, 0 for an empty answer or one of no matching
//! clause. It judges form only, not meaning, which is what a rule can judge honestly.
//!
//! No config.

use triad_plugin_sdk::prelude::*;

/// The form reward; it has no settings.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerseForm {}

/// Marks that end a clause.
const MARKS: &[char] = &['，', '。', '？', '！', '；', '：', '、', ',', '.', '?', '!', ';', ':'];

/// The clauses of a line: (characters before the mark, the mark; `None` for a last clause
/// without one).
pub fn clauses(line: &str) -> Vec<(usize, Option<char>)> {
    let mut out = Vec::new();
    let mut length = 0;
    for c in line.trim().chars() {
        if MARKS.contains(&c) {
            out.push((length, Some(normalise(c))));
            length = 0;
        } else if !c.is_whitespace() {
            length += 1;
        }
    }
    if length > 0 {
        out.push((length, None));
    }
    out
}

/// ASCII marks as their full-width forms, so that `,` and `，` are one mark.
fn normalise(mark: char) -> char {
    match mark {
        ',' => '，',
        '.' => '。',
        '?' => '？',
        '!' => '！',
        ';' => '；',
        ':' => '：',
        other => other,
    }
}

/// The first non-empty line of `text`, or the last, trimmed.
fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}
fn last_line(text: &str) -> &str {
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("")
}

/// The share of clause positions where `answer` keeps the form of `given`, in [0, 1].
pub fn form_score(given: &str, answer: &str) -> f64 {
    let (want, got) = (clauses(given), clauses(answer));
    let positions = want.len().max(got.len());
    if positions == 0 || got.is_empty() {
        return 0.0;
    }
    let kept = want.iter().zip(&got).filter(|(w, g)| w == g).count();
    kept as f64 / positions as f64
}

impl Plugin for VerseForm {}

impl Reward for VerseForm {
    fn score(&mut self, episode: &Episode) -> Result<f64, String> {
        Ok(form_score(last_line(&episode.prompt), first_line(&episode.response)))
    }
}

export_reward!(VerseForm);

#[cfg(test)]
mod tests {
    use super::*;

    // Real couplets of Li Bai's 靜夜思 and Wang Zhihuan's 登鸛雀樓, as the quantangshi
    // files of the npm package chinese-poetry write them (traditional characters).
    const GIVEN: &str = "靜夜思\n床前明月光，疑是地上霜。\n";

    #[test]
    fn the_next_couplet_keeps_the_form_and_broken_lines_lose_it() {
        assert_eq!(form_score(last_line(GIVEN), "舉頭望明月，低頭思故鄉。"), 1.0);
        // Another real five-character couplet has the same form.
        assert_eq!(form_score(last_line(GIVEN), "白日依山盡，黃河入海流。"), 1.0);
        // A seven-character couplet keeps the marks but not the lengths.
        assert_eq!(form_score(last_line(GIVEN), "朝辭白帝彩雲間，千里江陵一日還。"), 0.0);
        // One clause right, the second cut short and unfinished.
        assert_eq!(form_score(last_line(GIVEN), "舉頭望明月，低頭"), 0.5);
        // Right lengths, but a third clause runs on.
        assert!((form_score(last_line(GIVEN), "舉頭望明月，低頭思故鄉。夜") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(form_score(last_line(GIVEN), ""), 0.0);
        // ASCII marks and spaces count as their full-width forms.
        assert_eq!(form_score(last_line(GIVEN), " 舉頭望明月, 低頭思故鄉. "), 1.0);
    }

    #[test]
    fn the_answer_is_the_first_line_of_the_response() {
        let mut plugin = VerseForm::default();
        let episode = |response: &str| Episode { prompt: GIVEN.into(), response: response.into(), reference: None };
        assert_eq!(plugin.score(&episode("\n舉頭望明月，低頭思故鄉。\n登樓")).unwrap(), 1.0);
        assert_eq!(plugin.score(&episode("舉頭望明月")).unwrap(), 0.0);
        assert_eq!(clauses("床前明月光，疑是地上霜。"), vec![(5, Some('，')), (5, Some('。'))]);
    }
}
