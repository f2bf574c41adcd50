//! The `triad plugin` commands, end to end through the real binary.

use crate::support;

use std::process::{Command, Output};

fn triad(args: &[&str]) -> Output {
    triad_in(&support::workspace(), args)
}

fn triad_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_triad"))
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running triad")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plugin_run_scores_real_reviews_from_jsonl() {
    let wasm = support::wasm("lexicon-sentiment");
    let out =
        triad(&["plugin", "run", wasm.to_str().expect("utf-8 path"), "--input", "examples/review-episodes.jsonl"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let scores: Vec<f64> = text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("JSON line")["score"].as_f64().expect("score")
        })
        .collect();
    assert_eq!(scores.len(), 5);
    // "Campanella's competent direction and his excellent cast overcome the obstacles..." is praise.
    assert!(scores[3] > 0.5, "{scores:?}");
}

#[test]
fn plugin_run_names_the_malformed_input_line() {
    let dir = std::env::temp_dir().join(format!("triad-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input = dir.join("bad.jsonl");
    std::fs::write(&input, "{\"text\": \"fine\"}\n{\"text\": 3}\n").expect("write input");
    let wasm = support::wasm("length-filter");
    let out = triad(&["plugin", "run", wasm.to_str().expect("utf-8"), "--input", input.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.jsonl") && stderr.contains("line 2") && stderr.contains("`text` must be a string"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_refuses_a_forbidden_import() {
    let wasm = support::wasm("forbidden-import");
    let out = triad(&["plugin", "check", wasm.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("wasi_snapshot_preview1::random_get"), "{}", text(&out.stderr));
}

#[test]
fn plugin_list_shows_every_bundled_plugin_with_kind_and_sha256() {
    support::wasm("length-filter"); // build them all first, once
    let out = triad(&["plugin", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    // Outside the repository it lists the plugins the binary was built from.
    let elsewhere = triad_in(&std::env::temp_dir(), &["plugin", "list"]);
    assert!(elsewhere.status.success(), "{}", text(&elsewhere.stderr));
    assert_eq!(text(&elsewhere.stdout), table);
    for dir in triad::plugins::load::plugin_dirs(&support::workspace().join("plugins")).expect("plugins/") {
        let name = dir.file_name().expect("named").to_string_lossy().into_owned();
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("{name} missing:\n{table}"));
        let sha = row.split('|').nth(5).expect("sha256 column").trim();
        assert_eq!(sha.len(), 64, "{row}");
    }
}

#[test]
fn a_library_crate_is_not_taken_for_a_plugin() {
    let out = triad(&["plugin", "check", "plugin-sdk"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("`triad-plugin-sdk` is a library crate, not a plugin"), "{stderr}");
    assert!(!stderr.contains("No such file"), "{stderr}");
}

/// `triad plugin new` writes, outside the repository, a crate of each kind that builds (in the
/// shared plugin build folder) and that `triad plugin check` loads as that kind.
#[test]
fn scaffolded_plugins_of_every_kind_build_outside_the_repository() {
    let dir = support::scratch("plugin-new");
    assert!(!dir.starts_with(support::workspace()), "the scratch folder must lie outside the repository");
    for (kind, name, says) in [
        ("reward", "caps-penalty", "reward"),
        ("filter", "short-filter", "data-filter"),
        ("metric", "contains-metric", "metric"),
        ("loss", "nll-loss", "loss"),
    ] {
        let crate_dir = dir.join(name);
        let path = crate_dir.to_str().expect("utf-8 path");
        let out = triad_in(&dir, &["plugin", "new", kind, path]);
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        let out = triad_in(&dir, &["plugin", "check", path]);
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        let report = text(&out.stdout);
        assert!(report.contains(&format!("name:        {name}\nkind:        {says}\n")), "{report}");
    }
    // Python and JavaScript: one folder, one file (each language's other kinds are checked in
    // plugins/README.md's workflow; a build here costs tens of seconds).
    for (lang, kind, name, says, file) in [
        ("python", "reward", "py-caps", "reward", "plugin.py"),
        ("js", "filter", "js-short", "data-filter", "plugin.js"),
    ] {
        let plugin_dir = dir.join(name);
        let path = plugin_dir.to_str().expect("utf-8 path");
        let out = triad_in(&dir, &["plugin", "new", kind, path, "--lang", lang]);
        assert!(out.status.success(), "{lang}: {}", text(&out.stderr));
        assert!(plugin_dir.join(file).is_file(), "{lang} writes {file}");
        let out = triad_in(&dir, &["plugin", "check", path]);
        assert!(out.status.success(), "{lang}: {}", text(&out.stderr));
        let report = text(&out.stdout);
        assert!(report.contains(&format!("name:        {name}\nkind:        {says}\n")), "{report}");
    }
    let again = triad_in(&dir, &["plugin", "new", "reward", dir.join("caps-penalty").to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already holds a plugin (Cargo.toml)"), "{}", text(&again.stderr));
    let loss = triad_in(&dir, &["plugin", "new", "loss", dir.join("py-loss").to_str().unwrap(), "--lang", "python"]);
    assert!(text(&loss.stderr).contains("loss plugins are written in Rust"), "{}", text(&loss.stderr));
}
