//! The bundled plugins running in the sandbox, on real data, through the host's typed handles:
//! results equal the reference implementations, and are the same whether a batch runs on one
//! instance or is split across one instance per core.

use crate::support;

use serde_json::Value;
use triad::plugins::{
    Decision, Episode, Limits, MetricRecord, NamedValue, Plugin, PluginSpec, Problem, Sample, Sandbox,
};

fn fixture(plugin: &str) -> Value {
    let path = support::workspace().join("plugins").join(plugin).join("tests/fixture.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

fn value_of(values: &[NamedValue], name: &str) -> f64 {
    values.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no metric {name} in {values:?}")).value
}

/// A metric fixture's pairs as records: the prediction under `prediction_key`, references `refs`.
fn fixture_records(fixture: &Value, prediction_key: &str) -> Vec<MetricRecord> {
    fixture["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| MetricRecord {
            prediction: p[prediction_key].as_str().expect("prediction").into(),
            references: strings(&p["refs"]),
        })
        .collect()
}

/// Small calls, so that a corpus is split into many chunks over several instances.
fn small_calls() -> Limits {
    Limits { max_records_per_call: 7, ..Limits::default() }
}

#[test]
fn lexicon_reward_in_the_sandbox_equals_the_native_function_on_real_reviews() {
    let snippets = support::movie_snippets();
    assert!(snippets.len() > 10_000, "{} snippets", snippets.len());
    let episodes: Vec<Episode> = snippets
        .iter()
        .take(3000)
        .map(|(_, text)| Episode { prompt: String::new(), response: text.clone(), reference: None })
        .collect();
    let reward = support::load("lexicon-sentiment", "{}").into_reward().expect("a reward");
    let scores = reward.score(&episodes).expect("scoring real reviews");
    for (episode, score) in episodes.iter().zip(&scores) {
        let native = lexicon_sentiment::compound(&episode.response);
        assert!((score - native).abs() < 1e-12, "{score} vs native {native} for {:?}", episode.response);
    }
    // VADER agrees with the human raters more often than not on the sign of the sentiment.
    let agree = snippets.iter().take(3000).zip(&scores).filter(|((mean, _), s)| mean.signum() == s.signum()).count();
    assert!(agree as f64 / 3000.0 > 0.6, "sign agreement {agree}/3000");
    // The config block reaches the plugin.
    let negated = support::load("lexicon-sentiment", r#"{"scale": -1.0}"#).into_reward().expect("a reward");
    assert_eq!(negated.score(&episodes[..50]).expect("scores"), scores[..50].iter().map(|s| -s).collect::<Vec<_>>());
}

/// Math word problems and answers to them: right, wrong, malformed, with and without a stated
/// format, with commas, decimals, fractions and signs; GSM8K-style references ("... #### 72") and
/// plain ones ("The answer is 40.").
fn math_episodes() -> Vec<Episode> {
    let natalia =
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72";
    let weng = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nFor 50 minutes she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10";
    let cases: &[(&str, &str)] = &[
        ("She sold 24 in May, so 48 + 24 = 72 in all.\n#### 72", natalia),
        ("48 + 24 = 72. The answer is 72.", natalia),
        ("The answer is 72", natalia),
        ("48 + 24 = 72", natalia),
        ("#### 72.0", natalia),
        ("#### 72 clips", natalia),
        ("####72", natalia),
        ("#### 70", natalia),
        ("The answer is 24. She sold 72 in all.", natalia),
        ("She sold 72 clips. #### 24", natalia),
        ("I am not sure.", natalia),
        ("#### seventy-two", natalia),
        ("", natalia),
        ("0.2 x 50 = 10 dollars.\n#### 10", weng),
        ("She earned $10.", weng),
        ("#### 10.0000001", weng),
        ("#### 10.001", weng),
        ("#### 1,0", weng),
        ("The answer is $1,234.50.", "#### 1,234.5"),
        ("#### 1,234.5", "Total: 1234.50 dollars."),
        ("#### 1234", "#### 1,234"),
        ("#### 1,234", "#### 1,234"),
        ("The answer is 3/4.", "#### 0.75"),
        ("#### 0.75", "3 of 4 slices: 3/4"),
        ("#### 6/8", "#### 3/4"),
        ("#### 1/3", "#### 0.3333333"),
        ("#### 1/0", "#### 0"),
        ("The temperature fell to -5 degrees.", "5 - 10 = -5. The answer is -5."),
        ("The answer is 5", "5 - 10 = -5. The answer is -5."),
        ("10-15", "#### -5"),
        ("The answer is: -5", "#### -5"),
        ("THE ANSWER IS 12 apples.", "4 * 3 = 12"),
        ("The answer is unclear. 12?", "4 * 3 = 12"),
        ("The answer is 12. The other answer is wrong.", "4 * 3 = 12"),
        ("3 + 4 = 7, 7 * 2 = 14.", "(3 + 4) * 2 = 14."),
        ("#### 14\n#### 15", "#### 14"),
        ("#### 15\nActually the answer is 14", "#### 14"),
        ("≈ 1,000,000 people", "#### 1000000"),
        ("007", "#### 7"),
    ];
    cases
        .iter()
        .map(|&(response, reference)| Episode {
            prompt: "Solve the problem.".into(),
            response: response.into(),
            reference: Some(reference.into()),
        })
        .collect()
}

#[test]
fn math_answer_in_the_sandbox_equals_the_native_function() {
    let episodes = math_episodes();
    assert!(episodes.len() >= 30);
    let configs = [
        ("{}", math_answer::MathAnswer::default()),
        (
            r#"{"correct": 2, "incorrect": -1, "format_bonus": 0.5, "format": "answer-is", "fallback": "none", "tolerance": 0.01}"#,
            math_answer::MathAnswer {
                correct: 2.0,
                incorrect: -1.0,
                format_bonus: 0.5,
                format: math_answer::Format::AnswerIs,
                fallback: math_answer::Fallback::None,
                tolerance: 0.01,
            },
        ),
        (
            r#"{"format_bonus": 0.25}"#,
            math_answer::MathAnswer { format_bonus: 0.25, ..math_answer::MathAnswer::default() },
        ),
    ];
    let mut all = Vec::new();
    for (config, native) in &configs {
        let reward = support::load_with("math-answer", config, small_calls()).into_reward().expect("a reward");
        let scores = reward.score(&episodes).expect("scoring math answers");
        assert_eq!(scores.len(), episodes.len());
        for (episode, score) in episodes.iter().zip(&scores) {
            let expected = native.score_texts(&episode.response, episode.reference.as_deref()).expect("native score");
            assert_eq!(
                score.to_bits(),
                expected.to_bits(),
                "{config}: {episode:?}: sandbox {score}, native {expected}"
            );
        }
        all.push(scores);
    }
    // Hand-computed: default config (1 right, 0 wrong, no bonus).
    let default: Vec<f64> = all[0][..13].to_vec();
    assert_eq!(default, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(all[0][16], 0.0, "10.001 is 1e-3 away from 10");
    assert_eq!(all[0][15], 1.0, "10.0000001 is within 1e-6 of 10");
    assert_eq!(all[0][24], 1.0, "6/8 = 3/4");
    assert_eq!(all[0][26], 0.0, "1/0 is no answer");
    assert_eq!(all[0][29], 0.0, "10-15 is 10 and 15, not -15");
    // Custom: "answer is" earns 0.5 right or wrong, no last-number fallback, tolerance 0.01.
    assert_eq!(all[1][1], 2.5, "right, stated as 'The answer is 72.'");
    assert_eq!(all[1][3], -1.0, "no marker and no fallback");
    assert_eq!(all[1][8], -0.5, "'The answer is 24' is wrong (-1) but well formed (+0.5)");
    assert_eq!(all[1][0], 2.0, "right, but stated with ####");
    assert_eq!(all[1][16], 2.0, "10.001 is within 0.01 of 10");
    assert_eq!(all[1][28], -0.5, "5 is not -5");
    // `####` format bonus.
    assert_eq!(all[2][0], 1.25);
    assert_eq!(all[2][7], 0.25, "#### 70 is wrong but well formed");
    assert_eq!(all[2][11], 0.0, "#### seventy-two states no number");
    assert_eq!(all[2][2], 1.0, "right, but not in the #### form");

    // An episode without a reference, or whose reference has no number, is an error naming it
    // (index 9: in the second call of 7).
    let reward = support::load_with("math-answer", "{}", small_calls()).into_reward().expect("a reward");
    for (reference, says) in [(None, "no reference"), (Some("no number here"), "no final number")] {
        let mut broken = episodes[..12].to_vec();
        broken[9].reference = reference.map(String::from);
        let err = reward.score(&broken).expect_err("a broken reference must fail");
        let message = err.to_string();
        assert_eq!(err.record, Some(9), "{message}");
        assert!(
            message.contains("math-answer") && message.contains("at record 9") && message.contains(says),
            "{message}"
        );
    }
}

#[test]
fn one_instance_and_one_per_core_give_the_same_results() {
    let episodes: Vec<Episode> = support::movie_snippets()
        .into_iter()
        .take(2000)
        .map(|(_, text)| Episode { prompt: String::new(), response: text, reference: None })
        .collect();
    let load = |workers| {
        let spec = PluginSpec::at(support::wasm("lexicon-sentiment")).with_limits(small_calls()).with_workers(workers);
        Plugin::load(&Sandbox::shared(), &spec).and_then(Plugin::into_reward).expect("a reward")
    };
    assert_eq!(load(1).score(&episodes).expect("serial"), load(4).score(&episodes).expect("parallel"));
}

/// Corpus BLEU in the sandbox on every subset of the fixture, with sacrebleu's default and each of
/// its tokenizers alone (the other configs are checked natively in the plugin's own tests).
#[test]
fn bleu_through_the_host_equals_sacrebleu() {
    let fixture = fixture("bleu");
    let records = fixture_records(&fixture, "hyp");
    let mut checked = std::collections::BTreeMap::new();
    for tokenize in ["13a", "zh", "intl", "char"] {
        let config = serde_json::json!({ "tokenize": tokenize });
        let bleu = support::load_with("bleu", &config.to_string(), small_calls()).into_metric().expect("a metric");
        for case in fixture["corpus"].as_array().expect("corpus cases") {
            let default = tokenize == "13a" && case["config"] == serde_json::json!({});
            if !(default || case["config"] == config) {
                continue;
            }
            let subset: Vec<MetricRecord> = fixture["subsets"][case["subset"].as_str().expect("subset")]
                .as_array()
                .expect("indices")
                .iter()
                .map(|i| records[i.as_u64().expect("index") as usize].clone())
                .collect();
            let values = bleu.evaluate(&subset).expect("BLEU");
            let (got, expected) = (value_of(&values, "bleu"), case["bleu"].as_f64().expect("bleu"));
            assert!((got - expected).abs() < 1e-9, "{tokenize}, {}: {got} vs sacrebleu {expected}", case["subset"]);
            *checked.entry(tokenize).or_insert(0) += 1;
        }
    }
    // Each tokenizer on the whole corpus, the English and Chinese halves and smaller subsets.
    assert!(checked.values().all(|&n| n >= 30), "cases per tokenizer: {checked:?}");
}

/// Mean ROUGE in the sandbox under each config of the fixture: the default, the Porter stemmer,
/// and the "char" tokenizer on English and Chinese pairs, with and without the stemmer.
#[test]
fn rouge_through_the_host_equals_rouge_score() {
    let fixture = fixture("rouge");
    let pairs = fixture["pairs"].as_array().expect("pairs");
    let all = fixture_records(&fixture, "pred");
    let configs = fixture["configs"].as_object().expect("configs");
    assert_eq!(configs.len(), 4);
    for (name, config) in configs {
        // The pairs rouge-score scored under this config.
        let records: Vec<MetricRecord> =
            pairs.iter().zip(&all).filter(|(p, _)| p["scores"].get(name).is_some()).map(|(_, r)| r.clone()).collect();
        assert!(records.len() > 200, "{name}: {} pairs", records.len());
        let rouge = support::load_with("rouge", &config.to_string(), small_calls()).into_metric().expect("a metric");
        let values = rouge.evaluate(&records).expect("ROUGE");
        for rouge_type in ["rouge1", "rouge2", "rougeL"] {
            let expected = fixture["mean_f"][name][rouge_type].as_f64().expect("mean F1");
            let got = value_of(&values, rouge_type);
            assert!((got - expected).abs() < 1e-9, "{name} {rouge_type}: {got} vs rouge-score {expected}");
        }
    }
}

#[test]
fn distinct_n_is_stateful_and_runs_on_one_instance() {
    let fixture = fixture("distinct-n");
    let texts = strings(&fixture["texts"]);
    let distinct = support::load_with("distinct-n", "{}", small_calls()).into_metric().expect("a metric");
    assert!(distinct.info().stateful);
    let records: Vec<MetricRecord> =
        texts.iter().map(|t| MetricRecord { prediction: t.clone(), references: vec![] }).collect();
    for _ in 0..2 {
        // Twice: `finish` resets the corpus state, so the second evaluation is not polluted.
        let values = distinct.evaluate(&records).expect("distinct-n");
        for order in ["1", "2"] {
            let expected = fixture["expected"]["all_300"][order]["value"].as_f64().expect("value");
            let got = value_of(&values, &format!("distinct_{order}"));
            assert!((got - expected).abs() < 1e-9, "distinct-{order}: {got} vs {expected}");
        }
    }
}

#[test]
fn exact_match_through_the_host_counts_like_squad() {
    let fixture = fixture("exact-match");
    let records = fixture_records(&fixture, "pred");
    let metric = support::load_with("exact-match", "{}", small_calls()).into_metric().expect("a metric");
    let values = metric.evaluate(&records).expect("exact match");
    let expected = fixture["matches"]["default"].as_f64().expect("count") / records.len() as f64;
    assert!((value_of(&values, "exact_match") - expected).abs() < 1e-12);
}

#[test]
fn a_bad_config_fails_at_load_naming_plugin_and_field() {
    let spec = PluginSpec::at(support::wasm("length-filter")).with_config(r#"{"min_chars": 10, "max_charz": 5}"#);
    let err = match Plugin::load(&Sandbox::shared(), &spec) {
        Ok(_) => panic!("a misspelt field must be refused"),
        Err(err) => err,
    };
    let message = err.to_string();
    assert!(
        message.contains("length-filter") && message.contains("configure") && message.contains("max_charz"),
        "{message}"
    );
}

#[test]
fn a_plugin_of_the_wrong_kind_is_refused_with_both_kinds() {
    let err = match support::load("rouge", "{}").into_reward() {
        Ok(_) => panic!("rouge is a metric, not a reward"),
        Err(err) => err,
    };
    assert!(matches!(err.problem, Problem::WrongKind { .. }));
    assert!(err.to_string().contains("is a metric plugin, but a reward plugin is required"), "{err}");
}

fn samples(texts: &[String]) -> Vec<Sample> {
    texts.iter().map(|t| Sample { text: t.clone(), fields: vec![] }).collect()
}

fn reasons(decisions: &[Decision]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for decision in decisions {
        let key = match decision {
            Decision::Keep => "keep".to_string(),
            Decision::Drop(reason) => reason.clone(),
            Decision::Rewrite(_) => "rewrite".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[test]
fn dedup_remembers_earlier_batches_and_catches_near_duplicates() {
    let texts: Vec<String> = support::movie_snippets().into_iter().map(|(_, t)| t).take(4000).collect();
    let dedup = support::load_with("dedup-filter", "{}", small_calls()).into_filter().expect("a filter");
    assert!(dedup.info().stateful, "dedup must run on one instance to see every batch");
    let first = dedup.filter(&samples(&texts[..2000])).expect("first batch");
    let kept_first = first.iter().filter(|d| matches!(d, Decision::Keep)).count();
    assert!(kept_first > 1950, "real snippets are mostly distinct: kept {kept_first}");
    // A second batch: 200 snippets seen before, 200 of them edited a little, 200 new ones.
    let edited: Vec<String> = texts[..200].iter().map(|t| format!("{} indeed", t.replace(',', ""))).collect();
    let second: Vec<String> = texts[..200].iter().chain(&edited).chain(&texts[2000..2200]).cloned().collect();
    let decisions = dedup.filter(&samples(&second)).expect("second batch");
    let counts = reasons(&decisions[..200]);
    assert_eq!(counts.get("exact duplicate"), Some(&200), "{counts:?}");
    let near = reasons(&decisions[200..400]);
    let near_dropped =
        near.get("near duplicate").copied().unwrap_or(0) + near.get("exact duplicate").copied().unwrap_or(0);
    // Very short snippets change a lot when edited; most are still caught.
    assert!(near_dropped >= 150, "edited snippets caught: {near:?}");
    let fresh = reasons(&decisions[400..]);
    assert!(fresh.get("keep").copied().unwrap_or(0) >= 195, "new snippets kept: {fresh:?}");
}

#[test]
fn length_and_quality_filters_give_the_same_decisions_on_one_instance_and_on_all_cores() {
    let texts: Vec<String> = support::movie_snippets().into_iter().map(|(_, t)| t).take(3000).collect();
    for (name, config) in [("length-filter", r#"{"min_chars": 40, "max_words": 30}"#), ("quality-filter", "{}")] {
        let load = |workers| {
            let spec = PluginSpec::at(support::wasm(name))
                .with_config(config)
                .with_limits(small_calls())
                .with_workers(workers);
            Plugin::load(&Sandbox::shared(), &spec).and_then(Plugin::into_filter).expect("a filter")
        };
        let serial = load(1).filter(&samples(&texts)).expect("serial");
        let parallel = load(4).filter(&samples(&texts)).expect("parallel");
        assert_eq!(serial, parallel, "{name}");
        let counts = reasons(&serial);
        assert!(counts.len() >= 2 && counts["keep"] > 1000, "{name}: {counts:?}");
    }
    // The length filter's decisions are what its rules say, record by record.
    let filter =
        support::load("length-filter", r#"{"min_chars": 40, "max_words": 30}"#).into_filter().expect("a filter");
    for (text, decision) in texts.iter().zip(filter.filter(&samples(&texts)).expect("filter")) {
        let keep = text.chars().count() >= 40 && text.split_whitespace().count() <= 30;
        assert_eq!(matches!(decision, Decision::Keep), keep, "{text:?}: {decision:?}");
    }
}
