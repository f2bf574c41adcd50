//! Hostile plugins, each contained with a clear error while the host keeps serving the next
//! call of a healthy plugin (and of the same plugin, re-instantiated).

mod support;

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

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    let plugin = hostile();
    let started = Instant::now();
    let err = plugin.score(&[episode("ok"), episode("loop")]).expect_err("a loop cannot finish");
    let elapsed = started.elapsed();
    assert!(matches!(err.problem, Problem::Deadline(_)), "{err}");
    assert!(elapsed < Duration::from_millis(900), "stopped after {elapsed:?}");
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
fn a_panic_reports_its_message() {
    let plugin = hostile();
    let err = plugin.score(&[episode("panic")]).expect_err("the plugin panics");
    assert!(matches!(err.problem, Problem::Panic(_)), "{err}");
    assert!(err.to_string().contains("hostile plugin panics on purpose"), "{err}");
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
    let plugin = hostile();
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
