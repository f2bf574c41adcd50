//! Python and JavaScript plugins, built from their folders by componentize-py and
//! componentize-js in the build jail, against Rust on real review snippets: the examples compute
//! what their Rust counterparts compute, and the benchmark's lexicon reward gives the same score
//! in Rust (native and plugin), Python and JavaScript; a script plugin is known by the sha256 of
//! its sources.

use crate::support;

use triad::plugins::{Decision, Episode, MetricRecord, Plugin, PluginKind, Sample};

include!("../../bench/plugins/lexicon-rust/src/lexicon.rs");

/// The first `n` review snippets, as continuations to score.
fn responses(n: usize) -> Vec<Episode> {
    let snippets = support::movie_snippets();
    assert!(snippets.len() > n, "{} snippets", snippets.len());
    snippets
        .into_iter()
        .take(n)
        .map(|(_, text)| Episode { prompt: "Review:".into(), response: text, reference: None })
        .collect()
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

#[test]
fn the_python_and_javascript_length_rewards_equal_the_rust_one() {
    let episodes = responses(600);
    let config = r#"{"target_words": 10, "tolerance": 2}"#;
    let rust = support::load("target-length", config).into_reward().expect("a reward").score(&episodes).expect("rust");
    for name in ["py-length-reward", "js-length-reward"] {
        let plugin = support::load(name, config);
        assert_eq!(plugin.info().kind, PluginKind::Reward);
        assert_eq!(plugin.info().name, name);
        // Known by what its build read, which a rebuild reproduces (the component's bytes it does not).
        let sources = triad::plugins::componentize::sources_sha256(&support::wasm(name));
        assert_eq!(sources.as_deref(), Some(plugin.sha256()), "{name}");
        let scores = plugin.into_reward().expect("a reward").score(&episodes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(scores, rust, "{name}");
    }
    assert!(rust.contains(&0.0) && rust.iter().any(|&s| s < -0.5), "the snippets span the range");
}

#[test]
fn the_python_and_javascript_filters_drop_what_they_say() {
    let samples: Vec<Sample> = support::movie_snippets()
        .into_iter()
        .take(800)
        .map(|(_, text)| Sample { text: format!(" {text}"), fields: vec![] })
        .collect();
    let config = r#"{"min_words": 6}"#;
    for name in ["py-short-filter", "js-short-filter"] {
        let filter = support::load(name, config).into_filter().expect("a filter");
        let decisions = filter.filter(&samples).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (sample, decision) in samples.iter().zip(&decisions) {
            let short = words(&sample.text).len() < 6;
            match decision {
                Decision::Drop(reason) => {
                    assert!(short, "{name} dropped {:?}", sample.text);
                    assert_eq!(reason, "fewer than 6 words");
                }
                // The Python example also strips the text it keeps.
                Decision::Rewrite(kept) => assert!(!short && kept.text == sample.text.trim(), "{name}: {kept:?}"),
                Decision::Keep => assert!(!short, "{name} kept {:?}", sample.text),
            }
        }
        assert!(decisions.iter().any(|d| matches!(d, Decision::Drop(_))), "{name} drops some snippets");
    }
}

#[test]
fn the_python_and_javascript_metrics_equal_their_definitions() {
    let snippets = support::movie_snippets();
    // Predictions: each snippet's first half; references: the whole snippet and its neighbour.
    let records: Vec<MetricRecord> = snippets
        .windows(2)
        .take(500)
        .map(|pair| {
            let all = words(&pair[0].1);
            MetricRecord {
                prediction: all[..all.len().div_ceil(2)].join(" "),
                references: vec![pair[0].1.clone(), pair[1].1.clone()],
            }
        })
        .collect();

    // Unigram F1 (lowercased whitespace words, clipped counts) against the best reference.
    let f1 = |prediction: &str, reference: &str| {
        let p: Vec<String> = words(prediction).iter().map(|w| w.to_lowercase()).collect();
        let mut counts = std::collections::HashMap::new();
        for w in words(reference) {
            *counts.entry(w.to_lowercase()).or_insert(0usize) += 1;
        }
        let overlap = p
            .iter()
            .filter(|w| {
                counts.get_mut(*w).is_some_and(|c| {
                    *c > 0 && {
                        *c -= 1;
                        true
                    }
                })
            })
            .count();
        if overlap == 0 {
            return 0.0;
        }
        let (precision, recall) = (overlap as f64 / p.len() as f64, overlap as f64 / words(reference).len() as f64);
        2.0 * precision * recall / (precision + recall)
    };
    let expected: f64 = records
        .iter()
        .map(|r| r.references.iter().map(|reference| f1(&r.prediction, reference)).fold(0.0, f64::max))
        .sum::<f64>()
        / records.len() as f64;
    let metric = support::load("js-word-overlap", "{}").into_metric().expect("a metric");
    let values = metric.evaluate(&records).expect("js-word-overlap");
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].name, "word_f1");
    assert!((values[0].value - expected).abs() < 1e-12, "{} vs {expected}", values[0].value);

    // Distinct words over all words, and words per prediction (a stateful metric: in order).
    let all: Vec<String> =
        records.iter().flat_map(|r| words(&r.prediction).into_iter().map(str::to_lowercase)).collect();
    let distinct = all.iter().collect::<std::collections::HashSet<_>>().len() as f64 / all.len() as f64;
    let mean_words = all.len() as f64 / records.len() as f64;
    let plugin = support::load("py-distinct-words", "{}");
    assert!(plugin.info().stateful);
    let values = plugin.into_metric().expect("a metric").evaluate(&records).expect("py-distinct-words");
    let value = |name: &str| values.iter().find(|v| v.name == name).map(|v| v.value).expect(name);
    assert!((value("distinct-words") - distinct).abs() < 1e-12, "{values:?} vs {distinct}");
    assert!((value("mean-words") - mean_words).abs() < 1e-12, "{values:?} vs {mean_words}");
}

#[test]
fn the_lexicon_reward_scores_the_same_in_every_language() {
    let episodes = responses(2000);
    let native: Vec<f64> = episodes.iter().map(|e| lexicon_score(&e.response)).collect();
    assert!(native.iter().filter(|&&s| s != 0.0).count() > 200, "the lexicon finds words in the snippets");
    for name in ["lexicon-rust", "lexicon-py", "lexicon-js"] {
        let reward = support::load(name, "{}").into_reward().expect("a reward");
        let scores = reward.score(&episodes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let differ: Vec<usize> = (0..native.len()).filter(|&i| (scores[i] - native[i]).abs() > 1e-12).collect();
        assert!(
            differ.is_empty(),
            "{name} differs at {} records, first {:?}",
            differ.len(),
            differ.first().map(|&i| &episodes[i].response)
        );
    }
}

#[test]
fn a_plugin_that_declares_two_kinds_or_a_loss_is_refused_before_building() {
    let dir = support::scratch("script-kinds");
    let two = dir.join("two");
    std::fs::create_dir_all(&two).expect("folder");
    std::fs::write(
        two.join("plugin.py"),
        "import triad\n\n@triad.reward\ndef a(e):\n    return 0.0\n\n@triad.metric\nclass B:\n    pass\n",
    )
    .expect("write");
    let err = Plugin::inspect(&triad::plugins::Sandbox::shared(), &two).expect_err("two kinds");
    assert!(err.to_string().contains("plugin.py declares 2 plugin kinds"), "{err}");
    let loss = dir.join("loss");
    std::fs::create_dir_all(&loss).expect("folder");
    std::fs::write(loss.join("plugin.js"), "export default loss({});\n").expect("write");
    let err = Plugin::inspect(&triad::plugins::Sandbox::shared(), &loss).expect_err("a loss");
    assert!(err.to_string().contains("loss plugins are written in Rust"), "{err}");
}
