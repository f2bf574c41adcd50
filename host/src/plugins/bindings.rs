//! Host-side bindings generated from `plugin-sdk/wit/plugin.wit`, one module per world.
//!
//! The `data_filter` module also generates the shared `types` and `host` interfaces; the other
//! worlds reuse them with `with:` so that one Rust type exists per WIT type.

/// The `data-filter` world, plus the shared `types` and `host` interfaces.
pub mod filter {
    wasmtime::component::bindgen!({
        world: "data-filter",
        path: "../plugin-sdk/wit",
        additional_derives: [PartialEq],
    });
}

/// The `reward` world.
pub mod reward {
    wasmtime::component::bindgen!({
        world: "reward",
        path: "../plugin-sdk/wit",
        with: {
            "triad:plugin/types": crate::plugins::bindings::filter::triad::plugin::types,
            "triad:plugin/host": crate::plugins::bindings::filter::triad::plugin::host,
        },
    });
}

/// The `loss` world.
pub mod loss {
    wasmtime::component::bindgen!({
        world: "loss",
        path: "../plugin-sdk/wit",
        with: {
            "triad:plugin/types": crate::plugins::bindings::filter::triad::plugin::types,
            "triad:plugin/host": crate::plugins::bindings::filter::triad::plugin::host,
        },
    });
}

/// The `metric` world.
pub mod metric {
    wasmtime::component::bindgen!({
        world: "metric",
        path: "../plugin-sdk/wit",
        with: {
            "triad:plugin/types": crate::plugins::bindings::filter::triad::plugin::types,
            "triad:plugin/host": crate::plugins::bindings::filter::triad::plugin::host,
        },
    });
}

pub use filter::triad::plugin::host::{Host, Level};
pub use filter::triad::plugin::types::{
    Decision, Episode, Feature, FeatureValues, LossBatch, LossOutput, MetricRecord, NamedValue,
    PluginError as GuestError, PluginInfo, PluginKind, Sample,
};
