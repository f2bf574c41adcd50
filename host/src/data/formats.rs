//! Parsing a source's bytes by its format (text, CSV, TSV, JSONL, Parquet, conversations) into
//! [`Record`]s, each with its file and line.
//!
//! Decisions:
//! - Text is decoded as UTF-8 **lossily**: an invalid byte sequence becomes U+FFFD and is
//!   counted ([`LoadedSource::replacements`], logged as a warning). Real corpora carry the odd
//!   Windows-1252 byte (the `_README_.txt` beside VADER's snippets has six), and refusing a
//!   whole corpus for one dash helps nobody; the count keeps it visible. (The movie-review
//!   snippets themselves are valid UTF-8, with CRLF line ends: 0 replacements.)
//! - A leading byte-order mark is dropped; line ends are `\n` or `\r\n`; blank lines are skipped
//!   in line-based formats. Record text is otherwise kept exactly (no trimming).
//! - CSV follows RFC 4180 (quoted fields may hold commas, doubled quotes and line breaks); TSV
//!   has no quoting: a row is its line split at every tab, and must have exactly the declared
//!   number of columns.
//! - Parquet is read row by row through the `parquet` crate's record API (no arrow): the text
//!   column must hold strings; the other columns become fields as text (strings as they are,
//!   floats in shortest round-trip form with a `.0` when whole, as Python prints them, so a
//!   float column written from a TSV reads back as the TSV's cell; null as an empty string).
//!   A record's `origin.line` is its 1-based row number. The bytes are never decoded as text,
//!   so `replacements` is 0 (the reader refuses a string column that is not UTF-8).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::util::packages::RegistryError;

/// How a text file becomes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TextSplit {
    /// One record per non-blank line.
    #[default]
    Lines,
    /// The whole file is one record (a single document, as nanoGPT's shakespeare).
    Whole,
    /// One record per run of non-blank lines, separated by blank lines; lines joined by `\n`.
    Paragraphs,
}

pub(super) fn default_text_field() -> String {
    "text".into()
}

/// How to read a file found inside a package: the file formats of [`SourceSpec`] without a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Format {
    Text {
        #[serde(default)]
        split: TextSplit,
    },
    Jsonl {
        #[serde(default = "default_text_field")]
        text_field: String,
        #[serde(default)]
        fields: Vec<String>,
    },
    Tsv {
        #[serde(default)]
        columns: Vec<String>,
        #[serde(default = "default_text_field")]
        text_column: String,
        #[serde(default)]
        header: bool,
    },
    Csv {
        #[serde(default)]
        columns: Vec<String>,
        #[serde(default = "default_text_field")]
        text_column: String,
        #[serde(default)]
        header: bool,
    },
    Parquet {
        #[serde(default = "default_text_field")]
        text_column: String,
        #[serde(default)]
        columns: Vec<String>,
    },
    Conversations,
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The file read (for packaged data, the extracted file in the cache).
    pub file: PathBuf,
    /// 1-based line where the record starts.
    pub line: usize,
}

/// One record of a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The text a model reads.
    pub text: String,
    /// The other columns (ratings, ids, labels), as strings.
    pub fields: BTreeMap<String, String>,
    pub origin: Origin,
}

/// A source, read.
#[derive(Debug, Clone)]
pub struct LoadedSource {
    /// The file read.
    pub path: PathBuf,
    /// sha256 of its bytes, lowercase hex: the data hash for manifests and cache keys.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// Invalid UTF-8 sequences replaced by U+FFFD while decoding.
    pub replacements: usize,
    pub records: Vec<Record>,
}

impl LoadedSource {
    /// The records' texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.records.iter().map(|r| r.text.as_str()).collect()
    }
}

/// A failure to read a data source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A line that does not parse; `message` names the column or field where one is to blame.
    #[error("{file}:{line}: {message}")]
    Malformed { file: PathBuf, line: usize, message: String },
    /// A spec that cannot work (no columns, a text column that is not among them, ...).
    #[error("data source {file}: {message}")]
    Spec { file: PathBuf, message: String },
    /// A file the Parquet reader refuses as a whole (not Parquet, truncated, a compression this
    /// build does not read).
    #[error("{file}: cannot read as Parquet: {source}")]
    Parquet { file: PathBuf, source: parquet::errors::ParquetError },
    #[error("{file}: no records (an empty file, or only blank lines)")]
    Empty { file: PathBuf },
}

/// Parse bytes already read from `file` (named in records and errors).
pub fn parse(bytes: &[u8], file: &Path, format: &Format) -> Result<LoadedSource, SourceError> {
    // Parquet is binary: it never goes through the text decoding below.
    let (text, replacements) = match format {
        Format::Parquet { .. } => (String::new(), 0),
        _ => decode(bytes),
    };
    if replacements > 0 {
        tracing::warn!(file = %file.display(), replacements, "invalid UTF-8 replaced by U+FFFD");
    }
    let records = match format {
        Format::Text { split } => text_records(&text, file, *split),
        Format::Jsonl { text_field, fields } => jsonl_records(&text, file, text_field, fields)?,
        Format::Tsv { columns, text_column, header } => {
            let rows = lines(&text).map(|(line, row)| (line, row.split('\t').map(str::to_string).collect()));
            table_records(rows, file, "tab-separated", columns, text_column, *header)?
        }
        Format::Csv { columns, text_column, header } => {
            let rows = csv_rows(&text, file)?;
            table_records(rows.into_iter(), file, "comma-separated", columns, text_column, *header)?
        }
        Format::Parquet { text_column, columns } => parquet_records(bytes, file, text_column, columns)?,
        Format::Conversations => conversation_records(&text, file)?,
    };
    if records.is_empty() {
        return Err(SourceError::Empty { file: file.to_path_buf() });
    }
    let sha256 = super::sha256_hex(bytes);
    tracing::info!(file = %file.display(), records = records.len(), sha256, "data source read");
    Ok(LoadedSource { path: file.to_path_buf(), sha256, bytes: bytes.len(), replacements, records })
}

/// Lossy UTF-8: each invalid sequence becomes one U+FFFD, counted. A leading BOM is dropped.
fn decode(bytes: &[u8]) -> (String, usize) {
    let mut text = String::with_capacity(bytes.len());
    let mut replacements = 0;
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            text.push(char::REPLACEMENT_CHARACTER);
            replacements += 1;
        }
    }
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    (text, replacements)
}

/// Non-blank lines with their 1-based numbers, without `\n` or `\r\n`.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)))
        .filter(|(_, line)| !line.trim().is_empty())
}

fn record(text: String, fields: BTreeMap<String, String>, file: &Path, line: usize) -> Record {
    Record { text, fields, origin: Origin { file: file.to_path_buf(), line } }
}

fn text_records(text: &str, file: &Path, split: TextSplit) -> Vec<Record> {
    match split {
        TextSplit::Lines => lines(text).map(|(n, line)| record(line.to_string(), BTreeMap::new(), file, n)).collect(),
        TextSplit::Whole if text.trim().is_empty() => Vec::new(),
        TextSplit::Whole => vec![record(text.to_string(), BTreeMap::new(), file, 1)],
        TextSplit::Paragraphs => {
            let mut records = Vec::new();
            let mut current: Option<(usize, Vec<&str>)> = None;
            for (i, line) in text.split('\n').enumerate() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.trim().is_empty() {
                    if let Some((start, body)) = current.take() {
                        records.push(record(body.join("\n"), BTreeMap::new(), file, start));
                    }
                } else {
                    current.get_or_insert_with(|| (i + 1, Vec::new())).1.push(line);
                }
            }
            if let Some((start, body)) = current {
                records.push(record(body.join("\n"), BTreeMap::new(), file, start));
            }
            records
        }
    }
}

/// One chatterbot corpus file (a YAML document).
#[derive(Deserialize)]
struct ConversationFile {
    #[serde(default)]
    categories: Vec<String>,
    conversations: Vec<yaml_serde::Value>,
}

/// A conversation's turns; `None` for an entry that is not a list of texts (the corpus has a
/// few, such as a question and its answer written as one string).
fn turns(conversation: &yaml_serde::Value) -> Option<Vec<String>> {
    conversation
        .as_sequence()?
        .iter()
        .map(|turn| match turn {
            yaml_serde::Value::String(s) => Some(s.clone()),
            yaml_serde::Value::Number(n) => Some(n.to_string()),
            yaml_serde::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
        .collect()
}

/// Records of turn/reply pairs from a YAML stream of chatterbot files. A record's line is where
/// its prompt first appears after the previous record's.
fn conversation_records(text: &str, file: &Path) -> Result<Vec<Record>, SourceError> {
    let mut records = Vec::new();
    let mut cursor = 0;
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let parsed = ConversationFile::deserialize(document).map_err(|e| SourceError::Malformed {
            file: file.to_path_buf(),
            line: e.location().map_or(0, |l| l.line()),
            message: format!(
                "YAML document {}: expected chatterbot's `conversations: [[turn, reply, ...]]`: {e}",
                index + 1
            ),
        })?;
        let category = parsed.categories.first().cloned().unwrap_or_default();
        let mut skipped = 0;
        for conversation in &parsed.conversations {
            let Some(conversation) = turns(conversation) else {
                skipped += 1;
                continue;
            };
            for pair in conversation.windows(2) {
                let (prompt, response) = (pair[0].trim(), pair[1].trim());
                if prompt.is_empty() || response.is_empty() {
                    continue;
                }
                let first_line = prompt.lines().next().unwrap_or(prompt);
                if let Some(found) = text[cursor..].find(first_line) {
                    cursor += found;
                }
                let line = text[..cursor].matches('\n').count() + 1;
                let fields = BTreeMap::from([
                    ("prompt".to_string(), prompt.to_string()),
                    ("response".to_string(), response.to_string()),
                    ("category".to_string(), category.clone()),
                ]);
                records.push(record(format!("{prompt}\n{response}"), fields, file, line));
            }
        }
        if skipped > 0 {
            tracing::warn!(file = %file.display(), document = index + 1, category, skipped, "entries that are not lists of turns skipped");
        }
    }
    Ok(records)
}

fn jsonl_records(text: &str, file: &Path, text_field: &str, keep: &[String]) -> Result<Vec<Record>, SourceError> {
    // A list of strings is a text in lines (a poem's); other values keep their JSON text.
    let as_text = |value: &Value| match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            items.iter().map(|i| i.as_str()).collect::<Option<Vec<&str>>>().map(|lines| lines.join("\n"))
        }
        _ => None,
    };
    let to_record = |line: usize, value: Value| {
        let malformed = |message: String| SourceError::Malformed { file: file.to_path_buf(), line, message };
        let Value::Object(object) = value else {
            return Err(malformed(format!("expected a JSON object, found {}", kind_of(&value))));
        };
        let text = match object.get(text_field) {
            Some(value) => as_text(value).ok_or_else(|| {
                malformed(format!(
                    "field `{text_field}` must be a string or a list of strings, found {}",
                    kind_of(value)
                ))
            })?,
            None => return Err(malformed(format!("missing the text field `{text_field}`"))),
        };
        let field = |v: &Value| as_text(v).unwrap_or_else(|| v.to_string());
        let fields = match keep {
            [] => object.iter().filter(|(k, _)| k.as_str() != text_field).map(|(k, v)| (k.clone(), field(v))).collect(),
            keep => keep
                .iter()
                .map(|k| match object.get(k) {
                    Some(v) => Ok((k.clone(), field(v))),
                    None => Err(malformed(format!("missing field `{k}` (listed in `fields`)"))),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(record(text, fields, file, line))
    };
    if text.trim_start().starts_with('[') {
        return json_array_records(text, file, to_record);
    }
    lines(text)
        .map(|(line, raw)| {
            let value: Value = serde_json::from_str(raw).map_err(|e| SourceError::Malformed {
                file: file.to_path_buf(),
                line,
                message: format!("not valid JSON: {e}"),
            })?;
            to_record(line, value)
        })
        .collect()
}

/// The elements of a JSON array (or of several, as a packaged glob of `.json` files joins them),
/// each made a record by `to_record` with the line its element starts on.
fn json_array_records(
    text: &str,
    file: &Path,
    to_record: impl Fn(usize, Value) -> Result<Record, SourceError>,
) -> Result<Vec<Record>, SourceError> {
    let malformed = |line: usize, message: String| SourceError::Malformed { file: file.to_path_buf(), line, message };
    let mut records = Vec::new();
    // Lines counted from one element's start to the next's, so the whole text is scanned once.
    let (mut line, mut counted_to) = (1, 0);
    for (start, end) in array_elements(text).map_err(|(at, message)| malformed(line_at(text, at), message))? {
        line += text[counted_to..start].matches('\n').count();
        counted_to = start;
        let value: Value =
            serde_json::from_str(&text[start..end]).map_err(|e| malformed(line, format!("not valid JSON: {e}")))?;
        records.push(to_record(line, value)?);
    }
    Ok(records)
}

/// The 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Byte ranges of the elements of the top-level JSON arrays in `text` (one or several in a
/// row), found by tracking nesting outside strings; `(offset, message)` where the text is not
/// a sequence of arrays of objects.
fn array_elements(text: &str) -> Result<Vec<(usize, usize)>, (usize, String)> {
    let not_objects = |i: usize| Err((i, "expected a JSON array of objects".to_string()));
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = None;
    let mut elements = Vec::new();
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b' ' | b'\n' | b'\r' | b'\t' | b',' if depth <= 1 => {}
            b'[' if depth == 0 => depth = 1,
            b'{' | b'[' if depth >= 1 => {
                if depth == 1 {
                    start = Some(i);
                }
                depth += 1;
            }
            b'}' | b']' if depth >= 1 => {
                depth -= 1;
                if depth == 1
                    && let Some(s) = start.take()
                {
                    elements.push((s, i + 1));
                }
            }
            b'"' if depth >= 2 => in_string = true,
            _ if depth <= 1 => return not_objects(i),
            _ => {}
        }
    }
    if depth != 0 || in_string {
        return Err((text.len(), "the JSON array is not closed".into()));
    }
    Ok(elements)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Rows (with their 1-based line numbers) of a table into records.
fn table_records(
    mut rows: impl Iterator<Item = (usize, Vec<String>)>,
    file: &Path,
    kind: &str,
    columns: &[String],
    text_column: &str,
    header: bool,
) -> Result<Vec<Record>, SourceError> {
    let spec = |message: String| SourceError::Spec { file: file.to_path_buf(), message };
    let (names, header_line) = match (header, columns.is_empty()) {
        (true, names_from_header) => {
            let Some((line, head)) = rows.next() else { return Ok(Vec::new()) };
            if names_from_header {
                (head.iter().map(|h| h.trim().to_string()).collect(), Some(line))
            } else {
                (columns.to_vec(), None)
            }
        }
        (false, false) => (columns.to_vec(), None),
        (false, true) => return Err(spec("name the columns (`columns: [...]`) or set `header: true`".into())),
    };
    if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n) {
        let message = format!("column `{dup}` appears twice in ({})", names.join(", "));
        return Err(match header_line {
            Some(line) => SourceError::Malformed { file: file.to_path_buf(), line, message },
            None => spec(message),
        });
    }
    let Some(text_index) = names.iter().position(|n| n == text_column) else {
        let message = format!("the text column `{text_column}` is not among the columns ({})", names.join(", "));
        return Err(match header_line {
            Some(line) => SourceError::Malformed { file: file.to_path_buf(), line, message },
            None => spec(message),
        });
    };
    rows.map(|(line, mut cells)| {
        if cells.len() != names.len() {
            let message =
                format!("expected {} {kind} columns ({}), found {}", names.len(), names.join(", "), cells.len());
            return Err(SourceError::Malformed { file: file.to_path_buf(), line, message });
        }
        let text = std::mem::take(&mut cells[text_index]);
        let fields = names
            .iter()
            .zip(cells)
            .enumerate()
            .filter(|(i, _)| *i != text_index)
            .map(|(_, (name, cell))| (name.clone(), cell))
            .collect();
        Ok(record(text, fields, file, line))
    })
    .collect()
}

/// The rows of a Parquet file as records; `origin.line` is the 1-based row number.
fn parquet_records(bytes: &[u8], file: &Path, text_column: &str, keep: &[String]) -> Result<Vec<Record>, SourceError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let unreadable = |source| SourceError::Parquet { file: file.to_path_buf(), source };
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes.to_vec())).map_err(unreadable)?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|field| field.name().to_string())
        .collect();
    let spec = |message: String| SourceError::Spec { file: file.to_path_buf(), message };
    if !names.iter().any(|n| n == text_column) {
        return Err(spec(format!(
            "the text column `{text_column}` is not among the Parquet columns ({})",
            names.join(", ")
        )));
    }
    if let Some(missing) = keep.iter().find(|k| !names.contains(k)) {
        let message =
            format!("column `{missing}` (listed in `columns`) is not among the Parquet columns ({})", names.join(", "));
        return Err(spec(message));
    }
    let rows = reader.get_row_iter(None).map_err(unreadable)?;
    rows.enumerate()
        .map(|(i, row)| {
            let line = i + 1;
            let malformed = |message: String| SourceError::Malformed { file: file.to_path_buf(), line, message };
            let row = row.map_err(|e| malformed(format!("row {line}: cannot read: {e}")))?;
            let mut text = None;
            let mut fields = BTreeMap::new();
            for (name, value) in row.into_columns() {
                let kept = if keep.is_empty() { name != text_column } else { keep.contains(&name) };
                if name == text_column {
                    let Field::Str(s) = &value else {
                        let mut found = format!("{value:?}");
                        if found.len() > 80 {
                            found = format!("{}...", found.chars().take(77).collect::<String>());
                        }
                        return Err(malformed(format!("row {line}: column `{name}` must be a string, found {found}")));
                    };
                    text = Some(s.clone());
                }
                if kept {
                    fields.insert(name, parquet_text(value));
                }
            }
            // The schema has the column, so every row has it (possibly as null, refused above).
            let text = text.ok_or_else(|| malformed(format!("row {line}: no `{text_column}` column")))?;
            Ok(record(text, fields, file, line))
        })
        .collect()
}

/// A Parquet value as field text. Floats print as Python prints them (shortest round trip,
/// `2.0` when whole; parquet's own `Display` writes negatives in exponent form, `-6E-1`), so a
/// rating column reads back as the TSV it was written from; a string as itself (parquet's
/// `Display` quotes it); null as an empty cell, as CSV and TSV have it.
fn parquet_text(value: parquet::record::Field) -> String {
    use parquet::record::Field;
    match value {
        Field::Null => String::new(),
        Field::Str(s) => s,
        Field::Float(x) => format!("{x:?}"),
        Field::Double(x) => format!("{x:?}"),
        Field::Float16(x) => format!("{:?}", f32::from(x)),
        other => other.to_string(),
    }
}

/// RFC 4180 rows with the line each starts on. Blank lines are skipped; a field's line
/// breaks are kept as written.
fn csv_rows(text: &str, file: &Path) -> Result<Vec<(usize, Vec<String>)>, SourceError> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted { since: usize },
        AfterQuote,
    }
    let mut rows = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut state = State::FieldStart;
    let mut line = 1;
    let mut row_line = 1;
    let malformed = |line: usize, message: String| SourceError::Malformed { file: file.to_path_buf(), line, message };
    let mut chars = text.chars().peekable();
    let end_row = |fields: &mut Vec<String>, field: &mut String, rows: &mut Vec<(usize, Vec<String>)>, row_line| {
        fields.push(std::mem::take(field));
        let row = std::mem::take(fields);
        // A blank line is one empty field: skip it, as the other line formats do.
        if !(row.len() == 1 && row[0].trim().is_empty()) {
            rows.push((row_line, row));
        }
    };
    while let Some(c) = chars.next() {
        // A CRLF is one line end everywhere except inside quotes, where it is kept.
        let newline = c == '\n' || (c == '\r' && chars.peek() == Some(&'\n'));
        match state {
            State::Quoted { .. } => match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => state = State::AfterQuote,
                _ => {
                    field.push(c);
                    if c == '\n' {
                        line += 1;
                    }
                }
            },
            _ if newline => {
                if c == '\r' {
                    chars.next();
                }
                end_row(&mut fields, &mut field, &mut rows, row_line);
                state = State::FieldStart;
                line += 1;
                row_line = line;
            }
            _ if c == ',' => {
                fields.push(std::mem::take(&mut field));
                state = State::FieldStart;
            }
            State::FieldStart if c == '"' => state = State::Quoted { since: line },
            State::FieldStart | State::Unquoted if c == '"' => {
                let message = format!(
                    "field {}: a quote inside an unquoted field (quote the whole field and double the quotes in it)",
                    fields.len() + 1
                );
                return Err(malformed(line, message));
            }
            State::FieldStart | State::Unquoted => {
                field.push(c);
                state = State::Unquoted;
            }
            State::AfterQuote => {
                let message =
                    format!("field {}: `{c}` after the closing quote (expected `,` or a line end)", fields.len() + 1);
                return Err(malformed(line, message));
            }
        }
    }
    match state {
        State::Quoted { since } => {
            Err(malformed(since, format!("field {}: the quoted field starting here is never closed", fields.len() + 1)))
        }
        State::FieldStart if fields.is_empty() && field.is_empty() => Ok(rows),
        _ => {
            end_row(&mut fields, &mut field, &mut rows, row_line);
            Ok(rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file() -> PathBuf {
        PathBuf::from("test.csv")
    }

    fn rows(text: &str) -> Vec<(usize, Vec<String>)> {
        csv_rows(text, &file()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn csv_follows_rfc_4180() {
        let text = "id,text\r\n1,\"a, b\"\r\n2,\"she said \"\"hi\"\"\"\n\n3,\"two\r\nlines\"\n4,\n,5";
        assert_eq!(
            rows(text),
            vec![
                (1, row(&["id", "text"])),
                (2, row(&["1", "a, b"])),
                (3, row(&["2", "she said \"hi\""])),
                (5, row(&["3", "two\r\nlines"])),
                (7, row(&["4", ""])),
                (8, row(&["", "5"])),
            ]
        );
        // No final line end, an empty quoted field, and a trailing empty field.
        assert_eq!(rows("\"\",x,"), vec![(1, row(&["", "x", ""]))]);
    }

    #[test]
    fn csv_errors_name_the_line_and_field() {
        let err = csv_rows("a,b\n1,\"never closed\n2,3\n", &file()).expect_err("unterminated").to_string();
        assert_eq!(err, "test.csv:2: field 2: the quoted field starting here is never closed");
        let err = csv_rows("a,b\n1,x\"y\n", &file()).expect_err("bare quote").to_string();
        assert!(err.starts_with("test.csv:2: field 2: a quote inside an unquoted field"), "{err}");
        let err = csv_rows("a,b\n\"1\"x,2\n", &file()).expect_err("junk after quote").to_string();
        assert!(err.starts_with("test.csv:2: field 1: `x` after the closing quote"), "{err}");
    }

    #[test]
    fn json_arrays_of_objects_are_records_with_their_lines_and_joined_string_lists() {
        // Two arrays in a row, as a glob of `.json` files joins them; strings holding brackets,
        // braces and escaped quotes do not confuse the element scanner.
        let text = "[\n  {\"title\": \"靜夜思\", \"paragraphs\": [\"床前明月光，疑是地上霜。\", \"舉頭望明月，低頭思故鄉。\"]},\n  {\"title\": \"a ] } \\\" [\", \"paragraphs\": [\"x\"], \"n\": 3}\n]\n[{\"title\": \"t\", \"paragraphs\": \"one line\"}]\n";
        let format = Format::Jsonl { text_field: "paragraphs".into(), fields: vec![] };
        let loaded = parse(text.as_bytes(), &file(), &format).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(usize, &str, &str)> =
            loaded.records.iter().map(|r| (r.origin.line, r.text.as_str(), r.fields["title"].as_str())).collect();
        assert_eq!(
            got,
            vec![
                (2, "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。", "靜夜思"),
                (3, "x", "a ] } \" ["),
                (5, "one line", "t")
            ]
        );
        assert_eq!(loaded.records[1].fields["n"], "3");
        let err = |text: &str| parse(text.as_bytes(), &file(), &format).expect_err("malformed").to_string();
        assert_eq!(err("[\n{\"paragraphs\": \"a\"},\n 7]"), "test.csv:3: expected a JSON array of objects");
        assert_eq!(err("[{\"paragraphs\": \"a\"}"), "test.csv:1: the JSON array is not closed");
        assert!(err("[{\"paragraphs\": 5}]").contains("must be a string or a list of strings, found a number"));
    }

    #[test]
    fn lossy_decoding_counts_each_invalid_sequence_and_drops_a_bom() {
        let (text, replaced) = decode(b"\xef\xbb\xbfcaf\xe9 \x96 ok \xff\xfe");
        assert_eq!(text, "caf\u{fffd} \u{fffd} ok \u{fffd}\u{fffd}");
        assert_eq!(replaced, 4);
        // A real U+FFFD in valid text is not a replacement.
        assert_eq!(decode("a\u{fffd}".as_bytes()).1, 0);
    }

    #[test]
    fn text_splits() {
        let text = "one\r\n\r\ntwo\nthree\n \nfour\n";
        let texts =
            |split| text_records(text, &file(), split).into_iter().map(|r| (r.origin.line, r.text)).collect::<Vec<_>>();
        assert_eq!(
            texts(TextSplit::Lines),
            vec![(1, "one".into()), (3, "two".into()), (4, "three".into()), (6, "four".into())]
        );
        assert_eq!(texts(TextSplit::Paragraphs), vec![(1, "one".into()), (3, "two\nthree".into()), (6, "four".into())]);
        assert_eq!(texts(TextSplit::Whole), vec![(1, text.to_string())]);
    }

    #[test]
    fn tables_use_the_header_or_the_declared_columns() {
        let parse = |text: &str, format: Format| parse(text.as_bytes(), &file(), &format);
        let csv = |columns: &[&str], header| Format::Csv { columns: row(columns), text_column: "text".into(), header };
        let loaded = parse("text,rating\n\"Good, really\",3\n", csv(&[], true)).expect("header names the columns");
        assert_eq!(loaded.records[0].text, "Good, really");
        assert_eq!(loaded.records[0].fields, BTreeMap::from([("rating".to_string(), "3".to_string())]));
        assert_eq!(loaded.records[0].origin.line, 2);
        let err = parse("review,rating\nx,1\n", csv(&[], true)).expect_err("no text column").to_string();
        assert_eq!(err, "test.csv:1: the text column `text` is not among the columns (review, rating)");
        let err = parse("x,1\n", csv(&[], false)).expect_err("no columns").to_string();
        assert!(err.contains("name the columns"), "{err}");
        let err = parse("x,1\ny\n", csv(&["text", "rating"], false)).expect_err("short row").to_string();
        assert_eq!(err, "test.csv:2: expected 2 comma-separated columns (text, rating), found 1");
        let err = parse("\n \n", csv(&["text"], false)).expect_err("empty").to_string();
        assert!(err.contains("no records"), "{err}");
    }
}
