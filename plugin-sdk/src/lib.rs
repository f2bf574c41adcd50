//! Write triad plugins in a few lines.
//!
//! A triad plugin is a WebAssembly component that the host runs in a sandbox: no files, sockets,
//! clock or randomness, a memory cap and a deadline on every call. This crate hides the component
//! model behind four traits, one per plugin kind, and one export macro per trait:
//!
//! ```ignore
//! use triad_plugin_sdk::prelude::*;
//!
//! /// Rewards answers whose length is close to a target number of words.
//! #[derive(Default, Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct TargetLength { words: usize }
//!
//! impl Plugin for TargetLength {}
//!
//! impl Reward for TargetLength {
//!     fn score(&mut self, episode: &Episode) -> Result<f64, String> {
//!         let words = episode.response.split_whitespace().count();
//!         Ok(-(words as f64 - self.words as f64).abs())
//!     }
//! }
//!
//! export_reward!(TargetLength);
//! ```
//!
//! The plugin's struct is its configuration: the host passes the plugin's config block from the
//! experiment file as JSON and the SDK deserializes it into the struct (an absent block gives
//! `Default`). A panic inside the plugin reaches the host as an error carrying the panic message.
//! The plugin's name, version and description come from its `Cargo.toml`.
//!
//! A loss can be written as its forward computation alone, its gradients coming from the small
//! reverse-mode tape in [`autodiff`].
//!
//! Plugin logic is plain Rust: test it natively with `cargo test -p <plugin>` by calling the trait
//! methods, and end to end in the sandbox with `triad plugin run`.

#![warn(missing_docs)]

/// Bindings generated from `wit/plugin.wit`, one module per world. Plugin authors rarely need
/// these: the traits and macros below wrap them.
pub mod bindings {
    #![allow(missing_docs)]

    /// The `data-filter` world. Its generation also defines the shared `types` and `host`
    /// interfaces that the other worlds reuse.
    pub mod data_filter {
        wit_bindgen::generate!({
            world: "data-filter",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_data_filter_world",
            default_bindings_module: "triad_plugin_sdk::bindings::data_filter",
            generate_unused_types: true,
        });
    }

    /// The `reward` world.
    pub mod reward {
        wit_bindgen::generate!({
            world: "reward",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_reward_world",
            default_bindings_module: "triad_plugin_sdk::bindings::reward",
            with: {
                "triad:plugin/types@0.1.0": crate::bindings::data_filter::triad::plugin::types,
                "triad:plugin/host@0.1.0": crate::bindings::data_filter::triad::plugin::host,
            },
        });
    }

    /// The `loss` world.
    pub mod loss {
        wit_bindgen::generate!({
            world: "loss",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_loss_world",
            default_bindings_module: "triad_plugin_sdk::bindings::loss",
            with: {
                "triad:plugin/types@0.1.0": crate::bindings::data_filter::triad::plugin::types,
                "triad:plugin/host@0.1.0": crate::bindings::data_filter::triad::plugin::host,
            },
        });
    }

    /// The `metric` world.
    pub mod metric {
        wit_bindgen::generate!({
            world: "metric",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_metric_world",
            default_bindings_module: "triad_plugin_sdk::bindings::metric",
            with: {
                "triad:plugin/types@0.1.0": crate::bindings::data_filter::triad::plugin::types,
                "triad:plugin/host@0.1.0": crate::bindings::data_filter::triad::plugin::host,
            },
        });
    }
}

#[doc(hidden)]
#[path = "glue.rs"]
pub mod __glue;
pub mod autodiff;
pub mod hash;
pub mod log;
mod loss_helpers;
pub mod testing;

pub use bindings::data_filter::triad::plugin::types::{
    Decision, Episode, Feature, FeatureValues, LossBatch, LossOutput, MetricRecord, NamedValue, PluginError,
    PluginInfo, PluginKind, Sample,
};
pub use loss_helpers::{LossBatchExt, feature_name, is_differentiable};
pub use serde::Deserialize;

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        DataFilter, Decision, Deserialize, Episode, Feature, FeatureValues, Loss, LossBatch, LossBatchExt, LossOutput,
        Metric, MetricRecord, NamedValue, Plugin, Reward, Sample, export_data_filter, export_loss, export_metric,
        export_reward,
    };
}

/// What every plugin is: a configuration struct that the host fills from the experiment file.
pub trait Plugin: serde::de::DeserializeOwned + Default + 'static {
    /// Called once after the config is parsed: check values and precompute what is derived from
    /// them. An error here fails the experiment before any training starts.
    fn init(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A data filter: keeps, drops (with a reason) or rewrites each record.
pub trait DataFilter: Plugin {
    /// True when decisions depend on earlier batches (deduplication): the host then feeds every
    /// batch, in order, to a single instance.
    const STATEFUL: bool = false;

    /// Decide what happens to one sample.
    fn filter(&mut self, sample: &Sample) -> Result<Decision, String>;
}

/// A reward function: scores a prompt and its generated response.
pub trait Reward: Plugin {
    /// True when scores depend on earlier calls; the host then uses a single instance.
    const STATEFUL: bool = false;

    /// Score one episode. The score must be finite.
    fn score(&mut self, episode: &Episode) -> Result<f64, String>;
}

/// A loss over host-computed features that returns its value and gradient.
///
/// The host computes the declared features inside its autograd graph, passes their values, and
/// backpropagates `sum stopgrad(gradient) * feature`, so the parameters receive exactly the
/// gradient of the value returned here.
pub trait Loss: Plugin {
    /// The features this loss reads. Gradients may be returned for the differentiable ones
    /// ([`is_differentiable`]: `logprob`, `mean-logprob`, `entropy`, `value`, `sequence-logprob`).
    fn features(&self) -> Vec<Feature>;

    /// The loss on one batch, with `d loss / d feature` for each differentiable feature used:
    /// derived by hand, or by [`autodiff::compute`] from the forward computation alone.
    fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String>;
}

/// An evaluation metric built from additive sufficient statistics.
///
/// The host splits the records across cores, sums the statistics vectors of all records, and
/// calls `finish` once on the total. A metric that cannot be written this way (distinct-n needs
/// the set of all n-grams) sets `STATEFUL`, keeps its state in the struct and returns an empty
/// vector from `statistics`.
pub trait Metric: Plugin {
    /// True when the metric keeps corpus state in the struct; the host then uses one instance.
    const STATEFUL: bool = false;

    /// The statistics of one prediction against its references. Every record must return a
    /// vector of the same length.
    fn statistics(&mut self, record: &MetricRecord) -> Result<Vec<f64>, String>;

    /// Turn the summed statistics into named metric values.
    fn finish(&mut self, totals: &[f64]) -> Result<Vec<(String, f64)>, String>;
}

/// Parse a plugin's config the way the host passes it (JSON text; empty means defaults) and run
/// its `init`. Useful in native tests of plugin logic.
pub fn configure<T: Plugin>(config: &str) -> Result<T, PluginError> {
    __glue::parse_config(config)
}

/// Exports a [`DataFilter`] as the plugin's entry points: `export_data_filter!(MyFilter);`
#[macro_export]
macro_rules! export_data_filter {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::data_filter::Guest for Export {
                fn info() -> $crate::PluginInfo {
                    $crate::__info!($crate::PluginKind::DataFilter, <$plugin as $crate::DataFilter>::STATEFUL)
                }
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::configure(slot, &config))
                }
                fn filter(samples: ::std::vec::Vec<$crate::Sample>)
                    -> ::core::result::Result<::std::vec::Vec<$crate::Decision>, $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::with_plugin(slot, |p| $crate::__glue::filter(p, &samples)))
                }
            }
            $crate::bindings::data_filter::__export_data_filter_world!(Export with_types_in $crate::bindings::data_filter);
        };
    };
}

/// Exports a [`Reward`] as the plugin's entry points: `export_reward!(MyReward);`
#[macro_export]
macro_rules! export_reward {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::reward::Guest for Export {
                fn info() -> $crate::PluginInfo {
                    $crate::__info!($crate::PluginKind::Reward, <$plugin as $crate::Reward>::STATEFUL)
                }
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::configure(slot, &config))
                }
                fn score(
                    episodes: ::std::vec::Vec<$crate::Episode>,
                ) -> ::core::result::Result<::std::vec::Vec<f64>, $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::with_plugin(slot, |p| $crate::__glue::score(p, &episodes)))
                }
            }
    $crate::bindings::reward::__export_reward_world!(Export with_types_in $crate::bindings::reward);
        };
    };
}

/// Exports a [`Loss`] as the plugin's entry points: `export_loss!(MyLoss);`
#[macro_export]
macro_rules! export_loss {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::loss::Guest for Export {
                fn info() -> $crate::PluginInfo {
                    $crate::__info!($crate::PluginKind::Loss, false)
                }
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::configure(slot, &config))
                }
                fn features() -> ::std::vec::Vec<$crate::Feature> {
                    PLUGIN.with(|slot| $crate::__glue::features(slot))
                }
                fn compute(
                    batch: $crate::LossBatch,
                ) -> ::core::result::Result<$crate::LossOutput, $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::with_plugin(slot, |p| $crate::__glue::compute(p, &batch)))
                }
            }
    $crate::bindings::loss::__export_loss_world!(Export with_types_in $crate::bindings::loss);
        };
    };
}

/// Exports a [`Metric`] as the plugin's entry points: `export_metric!(MyMetric);`
#[macro_export]
macro_rules! export_metric {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::metric::Guest for Export {
                fn info() -> $crate::PluginInfo {
                    $crate::__info!($crate::PluginKind::Metric, <$plugin as $crate::Metric>::STATEFUL)
                }
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::configure(slot, &config))
                }
                fn statistics(
                    records: ::std::vec::Vec<$crate::MetricRecord>,
                ) -> ::core::result::Result<::std::vec::Vec<f64>, $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::with_plugin(slot, |p| $crate::__glue::statistics(p, &records)))
                }
                fn finish(
                    totals: ::std::vec::Vec<f64>,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::NamedValue>, $crate::PluginError> {
                    PLUGIN.with(|slot| $crate::__glue::with_plugin(slot, |p| $crate::__glue::finish(p, &totals)))
                }
            }
    $crate::bindings::metric::__export_metric_world!(Export with_types_in $crate::bindings::metric);
        };
    };
}

/// The plugin's identity, read from the plugin crate's own `Cargo.toml` at its compile time.
#[doc(hidden)]
#[macro_export]
macro_rules! __info {
    ($kind:expr, $stateful:expr) => {
        $crate::PluginInfo {
            name: ::std::string::String::from(::core::env!("CARGO_PKG_NAME")),
            version: ::std::string::String::from(::core::env!("CARGO_PKG_VERSION")),
            kind: $kind,
            description: ::std::string::String::from(::core::env!("CARGO_PKG_DESCRIPTION")),
            stateful: $stateful,
        }
    };
}
