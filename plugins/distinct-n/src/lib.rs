//! Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
//! Conversation Models"): the number of distinct n-grams in all generated texts divided by the
//! total number of n-grams in them. Low values mean the model repeats itself.
//!
//! Only predictions are read; references are ignored. Tokens are the lowercased text split on
//! Unicode whitespace (punctuation stays attached to words, as in `text.lower().split()`).
//!
//! The set of n-grams seen so far is not additive, so this metric is stateful: the host feeds
//! every record to one instance, `statistics` returns an empty vector, and `finish` computes the
//! values from the accumulated sets and then clears them, ready for the next evaluation.
//!
//! Reported values: `distinct_1`, `distinct_2`, ... one per configured order (0 when the corpus
//! has no n-gram of that order).
//!
//! Config: `orders` (list of n-gram orders, default `[1, 2]`).

use std::collections::HashSet;

use triad_plugin_sdk::prelude::*;

/// The distinct-n metric, its configuration and its corpus state.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistinctN {
    /// The n-gram orders to report.
    pub orders: Vec<usize>,
    /// Per order: the distinct n-grams seen so far (tokens joined by single spaces) and the
    /// number of n-grams seen.
    #[serde(skip)]
    seen: Vec<(HashSet<String>, u64)>,
}

impl Default for DistinctN {
    fn default() -> Self {
        DistinctN { orders: vec![1, 2], seen: Vec::new() }
    }
}

impl Plugin for DistinctN {
    fn init(&mut self) -> Result<(), String> {
        if self.orders.is_empty() {
            return Err("orders must list at least one n-gram order".into());
        }
        for (i, &n) in self.orders.iter().enumerate() {
            if n == 0 || n > 16 {
                return Err(format!("n-gram orders must be between 1 and 16, got {n}"));
            }
            if self.orders[..i].contains(&n) {
                return Err(format!("order {n} is listed twice"));
            }
        }
        self.reset();
        Ok(())
    }
}

impl Metric for DistinctN {
    const STATEFUL: bool = true;

    fn statistics(&mut self, record: &MetricRecord) -> Result<Vec<f64>, String> {
        if self.seen.len() != self.orders.len() {
            self.reset();
        }
        let text = record.prediction.to_lowercase();
        let tokens: Vec<&str> = text.split_whitespace().collect();
        for (&n, (set, total)) in self.orders.iter().zip(&mut self.seen) {
            for ngram in tokens.windows(n) {
                // Tokens hold no whitespace, so joining with a space is unambiguous.
                set.insert(ngram.join(" "));
                *total += 1;
            }
        }
        Ok(Vec::new())
    }

    fn finish(&mut self, _totals: &[f64]) -> Result<Vec<(String, f64)>, String> {
        if self.seen.len() != self.orders.len() {
            self.reset();
        }
        let values = self
            .orders
            .iter()
            .zip(&self.seen)
            .map(|(n, (set, total))| {
                let value = if *total == 0 { 0.0 } else { set.len() as f64 / *total as f64 };
                (format!("distinct_{n}"), value)
            })
            .collect();
        self.reset();
        Ok(values)
    }
}

export_metric!(DistinctN);

// The n-gram sets live in one instance: the host must not split records across instances.
const _: () = assert!(<DistinctN as Metric>::STATEFUL);

impl DistinctN {
    fn reset(&mut self) {
        self.seen = self.orders.iter().map(|_| (HashSet::new(), 0)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use triad_plugin_sdk::configure;

    /// Real review snippets and distinct-n computed by an independent Python script; see
    /// tests/make_fixture.py.
    const FIXTURE: &str = include_str!("../tests/fixture.json");

    fn record(text: &str) -> MetricRecord {
        MetricRecord { prediction: text.to_string(), references: vec![] }
    }

    use triad_plugin_sdk::testing::metric as value;

    #[test]
    fn matches_independent_computation_on_real_snippets() {
        let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture.json is valid JSON");
        let texts: Vec<&str> =
            fixture["texts"].as_array().expect("texts").iter().map(|t| t.as_str().expect("text")).collect();
        assert_eq!(texts.len(), 300);
        let corpora: [(&str, Vec<&str>); 3] = [
            ("first_50", texts[..50].to_vec()),
            ("all_300", texts.clone()),
            ("repeated", texts.iter().chain(&texts[..100]).copied().collect()),
        ];

        // One instance across all three evaluations: finish must leave no state behind.
        let mut metric: DistinctN = configure(r#"{"orders": [1, 2, 3, 4]}"#).expect("config");
        for (name, corpus) in &corpora {
            for text in corpus {
                assert!(metric.statistics(&record(text)).expect("statistics").is_empty());
            }
            let values = metric.finish(&[]).expect("finish");
            assert_eq!(values.len(), 4);
            for n in 1..=4 {
                let expected = fixture["expected"][name][n.to_string()]["value"].as_f64().expect("value");
                let got = value(&values, &format!("distinct_{n}"));
                assert!((got - expected).abs() < 1e-12, "{name} distinct_{n}: {got} vs {expected}");
            }
        }
    }

    #[test]
    fn hand_checked_example() {
        let mut metric: DistinctN = configure("").expect("default config");
        // After case folding the tokens are [i, liked, it] and [liked, it].
        metric.statistics(&record("I liked it")).expect("statistics");
        metric.statistics(&record("Liked it")).expect("statistics");
        let values = metric.finish(&[]).expect("finish");
        // 5 unigrams, 3 distinct; 3 bigrams, 2 distinct ("i liked", "liked it").
        assert_eq!(values, [("distinct_1".to_string(), 3.0 / 5.0), ("distinct_2".to_string(), 2.0 / 3.0)]);
        // Nothing seen since the last finish.
        assert_eq!(metric.finish(&[]).expect("finish")[0].1, 0.0);
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(configure::<DistinctN>(r#"{"orders": []}"#).is_err());
        assert!(configure::<DistinctN>(r#"{"orders": [0]}"#).is_err());
        assert!(configure::<DistinctN>(r#"{"orders": [2, 2]}"#).is_err());
        assert!(configure::<DistinctN>(r#"{"lowercase": false}"#).is_err());
    }
}
