//! Prompt/response examples, shared by SFT (which trains on them), PPO (which samples from the
//! prompts) and evaluation (which generates on the held-out prompts and scores against the
//! responses).
//!
//! An [`ExampleSet`] names a data source, its filter plugins, a split and a format; [`load`]
//! turns it into training and held-out examples. The split is applied to records before they
//! become examples, so every stage that names the same set holds out the same records. A
//! [`Layout`](super::layout::Layout) then turns an example into tokens.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::context::{RunContext, StageError};
use crate::data::source::{Origin, Record};
use crate::data::split::Split;
use crate::plugins::PluginKind;

/// Prompt/response examples read from a data source: which source, which filters, how they
/// are held out, and how a record becomes a prompt and a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleSet {
    pub data: String,
    #[serde(default)]
    pub filters: Vec<String>,
    /// How held-out examples are chosen (default: 10% by hash, stable under any other change).
    #[serde(default = "default_hash_split")]
    pub split: Split,
    pub format: ExampleFormat,
    /// Use at most this many training examples (all by default).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// How a record becomes a (prompt, response) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ExampleFormat {
    /// Both from fields of the record (`text` names the record's text):
    /// `Fields(prompt: "question", response: "answer")`.
    Fields { prompt: String, response: String },
    /// A continuation task cut from plain text: the prompt is the first `words` words of the
    /// record, the response the rest (records with fewer than `words + 1` words are skipped).
    Continuation { words: usize },
    /// A next-line task cut from a text in lines (a poem): the prompt is the field `title` (if
    /// named) on a line of its own, then the record's first `given` lines; the response is
    /// the line after them: `NextLine(given: 1, title: "title")`. Records with fewer than
    /// `given + 1` non-empty lines are skipped.
    NextLine {
        given: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
}

/// Filter plugins named by a stage, as plugin slots.
pub fn filter_slots(filters: &[String]) -> impl Iterator<Item = (&str, PluginKind)> {
    filters.iter().map(|f| (f.as_str(), PluginKind::DataFilter))
}

/// 10% held out by hash: stable under any other change to the data.
pub fn default_hash_split() -> Split {
    Split::Hash { valid_fraction: 0.1, seed: 0 }
}

impl ExampleSet {
    /// The set's filter plugins, as plugin slots.
    pub fn filter_slots(&self) -> impl Iterator<Item = (&str, PluginKind)> {
        filter_slots(&self.filters)
    }

    /// What is wrong with the set's settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        match self.format {
            ExampleFormat::Continuation { words: 0 } => Err("Continuation(words) must be at least 1".into()),
            ExampleFormat::NextLine { given: 0, .. } => Err("NextLine(given) must be at least 1".into()),
            _ if self.limit == Some(0) => Err("limit must be at least 1 (leave it out for every example)".into()),
            _ => Ok(()),
        }
    }
}

/// One prompt and its reference response.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub response: String,
    /// The record it was made from.
    pub origin: Origin,
}

/// Training and held-out examples of one set.
#[derive(Debug, Clone)]
pub struct Examples {
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
}

/// Read, filter, split and format the examples of `set`; the filter report (when there are
/// filters) is written into `dir`.
pub fn load(ctx: &RunContext, set: &ExampleSet, stage: &str, dir: &Path) -> Result<Examples, StageError> {
    let data_error = |message: String| StageError::Data { stage: stage.to_string(), message };
    let records = ctx.filtered_records(stage, &set.data, &set.filters, dir)?;
    let parts = set.split.apply(records).map_err(|e| data_error(e.to_string()))?;
    let to_examples = |records: Vec<Record>| -> Result<Vec<Example>, StageError> {
        let mut examples = Vec::with_capacity(records.len());
        for record in records {
            if let Some(example) = format_record(&set.format, &record).map_err(&data_error)? {
                examples.push(example);
            }
        }
        Ok(examples)
    };
    let mut train = to_examples(parts.train)?;
    let valid = to_examples(parts.valid)?;
    if let Some(limit) = set.limit {
        train.truncate(limit);
    }
    if train.is_empty() {
        return Err(data_error(format!(
            "no training examples could be made from `{}` with {:?}",
            set.data, set.format
        )));
    }
    tracing::info!(stage, train = train.len(), valid = valid.len(), "examples ready");
    Ok(Examples { train, valid })
}

/// Every example the records of `data` (through `filters`) make with `format`, unsplit: what
/// an evaluation on a source of its own reads; the filter report goes into `dir`.
pub fn every(
    ctx: &RunContext,
    data: &str,
    filters: &[String],
    format: &ExampleFormat,
    stage: &str,
    dir: &Path,
) -> Result<Vec<Example>, StageError> {
    let data_error = |message: String| StageError::Data { stage: stage.to_string(), message };
    let mut examples = Vec::new();
    for record in ctx.filtered_records(stage, data, filters, dir)? {
        examples.extend(format_record(format, &record).map_err(&data_error)?);
    }
    if examples.is_empty() {
        return Err(data_error(format!("no prompt/reference pairs could be made from `{data}` with {format:?}")));
    }
    Ok(examples)
}

/// One record as an example; `None` when it cannot make one (a continuation record too short
/// to cut). A field that is not there is an error naming the record.
fn format_record(format: &ExampleFormat, record: &Record) -> Result<Option<Example>, String> {
    let field = |name: &str| record_field(record, name);
    match format {
        ExampleFormat::Fields { prompt, response } => {
            let (prompt, response) = (field(prompt)?, field(response)?);
            if prompt.trim().is_empty() || response.trim().is_empty() {
                return Ok(None);
            }
            Ok(Some(Example { prompt, response, origin: record.origin.clone() }))
        }
        ExampleFormat::Continuation { words } => Ok(cut_after_words(&record.text, *words)
            .map(|(prompt, response)| Example { prompt, response, origin: record.origin.clone() })),
        ExampleFormat::NextLine { given, title } => {
            let lines: Vec<&str> = record.text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let Some(response) = lines.get(*given) else { return Ok(None) };
            let mut prompt = match title {
                Some(name) => format!("{}\n", field(name)?.trim()),
                None => String::new(),
            };
            for line in &lines[..*given] {
                prompt.push_str(line);
                prompt.push('\n');
            }
            Ok(Some(Example { prompt, response: response.to_string(), origin: record.origin.clone() }))
        }
    }
}

/// The field `name` of a record (`text` names the record's text); an error naming the record
/// and the fields it has when it has no such field.
pub fn record_field(record: &Record, name: &str) -> Result<String, String> {
    if name == "text" {
        return Ok(record.text.clone());
    }
    record.fields.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = std::iter::once("text").chain(record.fields.keys().map(String::as_str)).collect();
        format!(
            "{}:{}: the record has no field `{name}` (it has: {})",
            record.origin.file.display(),
            record.origin.line,
            known.join(", ")
        )
    })
}

/// Split `text` after its first `words` words: the prompt keeps the words, the response starts
/// with the whitespace that followed them (byte-level BPE attaches a space to the next word, so
/// the response tokenizes as it would inside the whole text).
pub fn cut_after_words(text: &str, words: usize) -> Option<(String, String)> {
    let text = text.trim();
    let mut seen = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                seen += 1;
                if seen == words {
                    let response = &text[i..];
                    return (!response.trim().is_empty()).then(|| (text[..i].to_string(), response.to_string()));
                }
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_prompts_keep_their_words_and_responses_their_leading_space() {
        let (prompt, response) =
            cut_after_words("  A gorgeous, witty film that never drags. ", 3).expect("long enough");
        assert_eq!(prompt, "A gorgeous, witty");
        assert_eq!(response, " film that never drags.");
        assert_eq!(cut_after_words("too short", 2), None);
        assert_eq!(cut_after_words("too short", 5), None);
    }

    #[test]
    fn next_line_prompts_are_the_title_and_the_given_lines() {
        let record = Record {
            text: "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。".into(),
            fields: [("title".to_string(), "靜夜思".to_string())].into(),
            origin: Origin { file: "poet.tang.json".into(), line: 3 },
        };
        let format = ExampleFormat::NextLine { given: 1, title: Some("title".into()) };
        let example = format_record(&format, &record).expect("formats").expect("long enough");
        assert_eq!(example.prompt, "靜夜思\n床前明月光，疑是地上霜。\n");
        assert_eq!(example.response, "舉頭望明月，低頭思故鄉。");
        let untitled = ExampleFormat::NextLine { given: 1, title: None };
        assert_eq!(format_record(&untitled, &record).unwrap().unwrap().prompt, "床前明月光，疑是地上霜。\n");
        assert_eq!(format_record(&ExampleFormat::NextLine { given: 2, title: None }, &record).unwrap(), None);
        let missing = ExampleFormat::NextLine { given: 1, title: Some("name".into()) };
        assert!(format_record(&missing, &record).unwrap_err().contains("name"));
    }
}
