//! Hostile plugins, each contained with a clear error while the host keeps serving the next
//! call of a healthy plugin (and of the same plugin, re-instantiated).

use crate::support;

use std::time::{Duration, Instant};

use triad::plugins::{Episode, Limits, Plugin, PluginSpec, Problem, Sample, Sandbox};

fn episode(response: &str) -> Episode {
    Episode { prompt: "Write a review.".into(), response: response.into(), reference: None }
}

/// After the misdeed, the same plugin answers a benign batch and a healthy plugin still works.
fn still_serving(hostile: &triad::plugins::RewardPlugin) {
    let scores = hostile.score(&[episode("fine"), episode("also fine")]).expect("re-instantiated plugin serves");
    assert_eq!(scores, vec![4.0, 9.0]);
    let healthy = support::load("lexicon-sentiment", "{}").into_reward().expect("a reward");
    let scores = healthy.score(&[episode("A wonderful, moving film."), episode("Dull and awful.")]).expect("healthy");
    assert!(scores[0] > 0.5 && scores[1] < -0.5, "healthy scores {scores:?}");
}

fn hostile() -> triad::plugins::RewardPlugin {
    support::load("hostile-reward", "{}").into_reward().expect("hostile-reward is a reward plugin")
}

/// The hostile reward on one instance, so that a batch is one call and a message can name its size.
fn hostile_one_call() -> triad::plugins::RewardPlugin {
    support::load_one_instance("hostile-reward", "{}").into_reward().expect("hostile-reward is a reward plugin")
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    // One call of both records: the deadline stops it, then the records run one by one to find
    // the one that hits it again (the other takes microseconds).
    let plugin = hostile_one_call();
    let started = Instant::now();
    let err = plugin.score(&[episode("ok"), episode("loop")]).expect_err("a loop cannot finish");
    let elapsed = started.elapsed();
    assert!(matches!(err.problem, Problem::Deadline(_)), "{err}");
    assert_eq!(err.record, Some(1), "{err}");
    assert!(elapsed < Duration::from_millis(1500), "stopped after {elapsed:?} (two deadlines of 500 ms)");
    let message = err.to_string();
    assert!(message.contains("hostile-reward") && message.contains("reward") && message.contains("score"), "{message}");
    still_serving(&plugin);
}

#[test]
fn growing_memory_to_a_gibibyte_hits_the_memory_limit() {
    let plugin = hostile();
    let err = plugin.score(&[episode("grow-memory")]).expect_err("1 GiB is over the cap");
    assert!(matches!(err.problem, Problem::Memory { limit_mib: 64 }), "{err}");
    assert!(err.to_string().contains("memory limit of 64 MiB"), "{err}");
    still_serving(&plugin);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let plugin = hostile();
    let err = plugin.score(&[episode("recurse")]).expect_err("recursion without end");
    assert!(matches!(err.problem, Problem::Stack), "{err}");
    still_serving(&plugin);
}

#[test]
fn a_panic_reports_its_message_and_its_record() {
    let plugin = hostile();
    let err = plugin
        .score(&[episode("fine"), episode("ok"), episode("panic"), episode("good")])
        .expect_err("the plugin panics");
    assert!(matches!(err.problem, Problem::Panic(_)), "{err}");
    assert_eq!(err.record, Some(2), "the batch call names no record; the host finds it: {err}");
    assert!(
        err.to_string().contains("hostile plugin panics on purpose") && err.to_string().contains("at record 2"),
        "{err}"
    );
    still_serving(&plugin);
}

#[test]
fn non_finite_scores_are_refused_with_their_record() {
    let plugin = hostile();
    for (misdeed, shown) in [("nan", "NaN"), ("infinity", "inf")] {
        let err = plugin.score(&[episode("a"), episode("b"), episode(misdeed)]).expect_err("non-finite");
        assert!(matches!(err.problem, Problem::InvalidOutput(_)), "{err}");
        assert_eq!(err.record, Some(2), "{err}");
        assert!(err.to_string().contains(shown), "{err}");
    }
    still_serving(&plugin);
}

#[test]
fn a_wrong_number_of_outputs_is_refused() {
    let plugin = hostile_one_call();
    let err = plugin.score(&[episode("a"), episode("wrong-count"), episode("c")]).expect_err("2 outputs for 3");
    assert!(err.to_string().contains("returned 2 outputs for 3 inputs"), "{err}");
    still_serving(&plugin);
}

#[test]
fn a_hundred_megabyte_output_is_refused() {
    // Enough memory to build the text, so that the output cap (not the memory cap) stops it.
    let limits = Limits { memory_bytes: 512 << 20, deadline: Duration::from_secs(10), ..Limits::default() };
    let filter = support::load_with("huge-output", "{}", limits).into_filter().expect("a filter");
    let err = filter.filter(&[Sample { text: "short".into(), fields: vec![] }]).expect_err("100 MB output");
    assert!(err.to_string().contains("95.4 MiB of text, over the cap of 16.0 MiB"), "{err}");
    still_serving(&hostile());
}

/// Under the cap of a call, a rewrite still may not blow one record up: 15 MB from a few bytes
/// is refused at its record, so filters cannot grow a corpus past a few times its size.
#[test]
fn a_rewrite_that_grows_its_record_past_the_bound_is_refused_at_its_record() {
    let filter = support::load("huge-output", r#"{"bytes": 15000000}"#).into_filter().expect("a filter");
    let samples: Vec<Sample> = (0..3).map(|i| Sample { text: format!("record {i}"), fields: vec![] }).collect();
    // One record per call's worth: 15 MB is under the 16 MiB a call may return.
    let err = filter.filter(&samples[..1]).expect_err("15 MB from 8 bytes");
    assert_eq!(err.record, Some(0), "{err}");
    assert!(err.to_string().contains("a rewrite may be at most 4x its record"), "{err}");
    let fine = support::load("huge-output", r#"{"bytes": 20}"#).into_filter().expect("a filter");
    assert_eq!(fine.filter(&samples).expect("small rewrites pass").len(), 3);
}

#[test]
fn a_forbidden_import_is_refused_at_load_with_its_name() {
    let spec = PluginSpec::at(support::wasm("forbidden-import"));
    let err = match Plugin::load(&Sandbox::shared(), &spec) {
        Ok(_) => panic!("a plugin importing WASI must be refused"),
        Err(err) => err,
    };
    assert!(matches!(err.problem, Problem::ForbiddenImport { .. }), "{err}");
    assert!(err.to_string().contains("wasi_snapshot_preview1::random_get"), "{err}");
    still_serving(&hostile());
}

/// A finite but enormous score passes the plugin boundary (it is a number), and is stopped where
/// rewards enter training, with the scorer and the record named, before any weight moves.
#[test]
fn a_huge_finite_reward_is_refused_before_training() {
    use triad::model::generate::Generated;
    use triad::train::rl::RlError;
    use triad::train::rl::rollout::Sampled;
    use triad::train::rl::scoring::{DEFAULT_REWARD_LIMIT, Scorer, score};
    let sampled = |response: &str| Sampled {
        prompt: "Write a review.".into(),
        prompt_tokens: vec![1, 2],
        response: Generated { prompt_len: 2, tokens: vec![3], logprobs: vec![-1.0], stopped: false },
        response_text: response.into(),
        reference: None,
    };
    let scorers = [Scorer::Plugin { name: "hostile".into(), weight: 1.0, plugin: Box::new(hostile()) }];
    let fine =
        score(&scorers, &[sampled("fine"), sampled("ok")], 0, 0, DEFAULT_REWARD_LIMIT).expect("small scores pass");
    assert_eq!(fine.totals, vec![4.0, 2.0]);
    let episodes = [sampled("fine"), sampled("huge")];
    match score(&scorers, &episodes, 0, 0, DEFAULT_REWARD_LIMIT) {
        Err(RlError::RewardOutOfRange { record: 1, score, .. }) => assert_eq!(score, 1e300),
        Err(other) => panic!("wrong error: {other}"),
        Ok(scored) => panic!("a score of 1e300 was accepted: {:?}", scored.totals),
    }
}

/// A crate whose build script tries to leave the build: it writes outside its target folder,
/// reads the machine's `/etc/passwd` and the user's home, and records what it managed in its
/// `OUT_DIR`.
fn escaping_crate(dir: &std::path::Path, name: &str, marker: &std::path::Path, lib: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("crate folder");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("manifest");
    let build = format!(
        r#"fn main() {{
    let wrote = std::fs::write({marker:?}, "escaped").is_ok();
    // The jail's /etc holds one line that names no user of this machine.
    let passwd = std::fs::read_to_string("/etc/passwd").is_ok_and(|p| p.lines().count() > 1 || !p.starts_with("root:x:0:0:root:/tmp:"));
    let home = std::env::var("HOME").unwrap_or_default();
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{{out}}/seen.txt"), format!("wrote={{wrote}} passwd={{passwd}} home={{home}}")).expect("OUT_DIR is writable");
}}"#
    );
    std::fs::write(dir.join("build.rs"), build).expect("build script");
    std::fs::write(dir.join("src/lib.rs"), lib).expect("lib");
}

#[test]
fn building_a_plugin_crate_runs_its_code_in_isolation() {
    use triad::plugins::build::build_crates;
    use triad::plugins::isolate::{Isolation, isolation};
    assert_eq!(isolation(), Isolation::Namespaces, "this machine can isolate plugin builds");
    let root = std::env::temp_dir().join(format!("triad-escape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Its own sources are read-only to it, like everything outside its target folder.
    let marker = root.join("script/escaped.txt");

    // The build script runs, but sees nothing it should and writes only its own folder.
    let name = format!("escape-{}", std::process::id());
    escaping_crate(&root.join("script"), &name, &marker, "");
    let wasm = build_crates(&[root.join("script")]).expect("the crate builds");
    assert!(!marker.exists(), "the build script wrote {}", marker.display());
    // `<target>/wasm32-unknown-unknown/release/x.wasm`: the plugin target folder holds the OUT_DIR.
    let target = wasm[0].ancestors().nth(3).expect("the plugin target folder");
    let seen: Vec<_> = walk(target)
        .into_iter()
        .filter(|p| p.ends_with("out/seen.txt") && p.to_string_lossy().contains(&format!("/{name}-")))
        .collect();
    assert_eq!(seen.len(), 1, "the build script ran and wrote into its OUT_DIR: {seen:?}");
    // Its environment is triad's, not the user's: HOME is an empty scratch folder.
    assert_eq!(std::fs::read_to_string(&seen[0]).expect("seen.txt"), "wrote=false passwd=false home=/tmp");

    // `include_str!` of a file outside the crate's workspace does not compile.
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "a file of the user's, beside the crate").expect("secret");
    escaping_crate(
        &root.join("include"),
        &format!("{name}-include"),
        &marker,
        &format!("pub static SECRET: &str = include_str!({:?});", secret.display().to_string()),
    );
    let error = build_crates(&[root.join("include")]).expect_err("the secret is not there to include");
    assert!(error.to_string().contains("secret.txt"), "{error}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { found.extend(walk(&path)) } else { found.push(path) }
    }
    found
}

#[test]
fn a_blame_outside_the_batch_is_reported_not_believed() {
    let plugin = hostile_one_call();
    let err = plugin.score(&[episode("a"), episode("blame-far"), episode("b")]).expect_err("an error");
    assert_eq!(err.record, None, "{err}");
    assert!(err.to_string().contains("it blamed record 4000000000 of a call of 3"), "{err}");
}

#[test]
fn plugin_text_reaches_the_terminal_escaped() {
    let plugin = hostile();
    let err = plugin.score(&[episode("escape")]).expect_err("an error");
    let text = err.to_string();
    assert!(!text.contains('\u{1b}') && !text.contains('\n'), "raw control characters: {text:?}");
    assert!(text.contains("\\u{1b}[31mred\\nERROR"), "escaped, still readable: {text}");
}

#[test]
fn a_flood_of_log_lines_is_cut_and_the_call_still_answers() {
    let plugin = hostile();
    let started = Instant::now();
    let scores = plugin.score(&[episode("log-flood")]).expect("the score still comes back");
    assert_eq!(scores, vec![9.0]);
    assert!(started.elapsed() < Duration::from_secs(5), "100,000 lines took {:?}", started.elapsed());
}

/// A loss plugin's gradients and metrics cross into training: each is checked where it enters.
#[test]
fn a_loss_plugins_gradients_and_metrics_are_checked_where_they_enter() {
    use triad::plugins::{Feature, FeatureValues, LossBatch};
    let batch = LossBatch {
        sequence_offsets: vec![0, 2, 3],
        features: vec![FeatureValues { feature: Feature::Logprob, values: vec![-1.0, -2.0, -0.5] }],
    };
    let loss = |misdeed: &str| {
        support::load("hostile-loss", &format!(r#"{{"misdeed": "{misdeed}"}}"#)).into_loss().expect("a loss plugin")
    };
    let fine = loss("none").compute(&batch).expect("a well-behaved batch");
    assert!((fine.value - 3.5 / 3.0).abs() < 1e-9, "{}", fine.value);
    for (misdeed, expected) in [
        ("undeclared", "a feature it did not declare"),
        ("duplicate", "two gradients for `logprob`"),
        ("huge", "outside [-1e6, 1e6]"),
        ("names", "more than 64"),
        ("bad-name", "names are 1-64 characters"),
    ] {
        let err = loss(misdeed).compute(&batch).expect_err(misdeed);
        assert!(err.to_string().contains(expected), "{misdeed}: {err}");
    }
}

/// Load a Python or JavaScript hostile reward (`tests/hostile-plugins/<name>`), on one instance
/// so that a batch is one call.
fn script_hostile(name: &str, config: &str) -> Result<triad::plugins::RewardPlugin, triad::plugins::PluginError> {
    // A deadline well above the slowest misdeed that must end another way (Python's C recursion
    // takes half a second to overflow the stack on a busy machine).
    let limits = Limits { deadline: Duration::from_secs(3), ..Limits::default() };
    let spec = PluginSpec::at(support::wasm(name)).with_config(config).with_workers(1).with_limits(limits);
    Plugin::load(&Sandbox::shared(), &spec)?.into_reward()
}

/// A misdeed and what the host must say to it: (the response that asks for it, the problem, the
/// record blamed in a batch of a benign record and the misdeed).
type Misdeed = (&'static str, fn(&Problem) -> bool, Option<usize>);

/// Commit each misdeed in a batch after a benign record; each is contained, and the plugin
/// serves the next call; a configure that raises is reported as the plugin's error.
fn contain_misdeeds(name: &str, misdeeds: &[Misdeed]) {
    let plugin = script_hostile(name, "{}").unwrap_or_else(|e| panic!("{name} loads: {e}"));
    for (misdeed, expected, record) in misdeeds {
        let started = Instant::now();
        let err = plugin.score(&[episode("fine"), episode(misdeed)]).expect_err(misdeed);
        assert!(expected(&err.problem), "{name} `{misdeed}`: {err}");
        assert_eq!(err.record, *record, "{name} `{misdeed}`: {err}");
        assert!(err.to_string().contains(name) && err.to_string().contains("in `score`"), "{err}");
        // A deadline costs at most two deadlines (the batch, then the record alone).
        assert!(started.elapsed() < Duration::from_secs(9), "{name} `{misdeed}` took {:?}", started.elapsed());
        // The same plugin, re-instantiated, serves the next call.
        let scores = plugin.score(&[episode("fine"), episode("also fine")]).expect("serves after the misdeed");
        assert_eq!(scores, vec![4.0, 9.0], "{name} after `{misdeed}`");
    }
    let err = match script_hostile(name, r#"{"fail_configure": true}"#) {
        Ok(_) => panic!("{name}: configure raises on purpose"),
        Err(err) => err,
    };
    assert!(matches!(err.problem, Problem::Reported(_)), "{err}");
    assert!(
        err.to_string().contains("in `configure`: invalid config") && err.to_string().contains("on purpose"),
        "{err}"
    );
}

#[test]
fn a_hostile_python_plugin_is_contained_like_a_rust_one() {
    let deadline = |p: &Problem| matches!(p, Problem::Deadline(_));
    let memory = |p: &Problem| matches!(p, Problem::Memory { limit_mib: 64 });
    let stack = |p: &Problem| matches!(p, Problem::Stack);
    let recursion = |p: &Problem| p.to_string().starts_with("RecursionError: maximum recursion depth exceeded");
    let raised = |p: &Problem| p.to_string().starts_with("ValueError: hostile plugin raises on purpose");
    let no_clock = |p: &Problem| matches!(p, Problem::Trap(t) if t.contains("files, the clock, randomness"));
    let nan = |p: &Problem| p.to_string().contains("score returned nan");
    contain_misdeeds(
        "py-hostile",
        &[
            ("loop", deadline, Some(1)),
            ("grow-memory", memory, Some(1)),
            // Python's own limit, then the interpreter's frames on the heap, then C recursion on
            // the wasm stack.
            ("recurse", recursion, Some(1)),
            ("recurse-deep", memory, Some(1)),
            ("recurse-c", stack, Some(1)),
            // A 100 MB line for the host's log cannot even be built in 64 MiB.
            ("huge", memory, Some(1)),
            ("raise", raised, Some(1)),
            ("time", no_clock, Some(1)),
            ("open", no_clock, Some(1)),
            ("nan", nan, Some(1)),
        ],
    );
}

#[test]
fn a_hostile_javascript_plugin_is_contained_like_a_rust_one() {
    let deadline = |p: &Problem| matches!(p, Problem::Deadline(_));
    let memory = |p: &Problem| matches!(p, Problem::Memory { limit_mib: 64 });
    let recursion = |p: &Problem| p.to_string() == "InternalError: too much recursion";
    let thrown = |p: &Problem| p.to_string().starts_with("TypeError: ");
    contain_misdeeds(
        "js-hostile",
        &[
            ("loop", deadline, Some(1)),
            ("grow-memory", memory, Some(1)),
            ("recurse", recursion, Some(1)),
            // Encoding a 100 MB line for the host's log outlasts the deadline.
            ("huge", deadline, Some(1)),
            ("throw", thrown, Some(1)),
        ],
    );
}
