//! Experiments declared in RON: the schema and what any stage tells the rest ([`schema`]),
//! loading with errors that say file, line, column and the fix ([`load`]), the order stages run
//! in ([`graph`]), sweeps ([`sweep`]) and cache keys ([`key`]).
//!
//! This floor knows stages only through [`StageSpec`]; the kinds themselves are in `stages/`.

pub mod graph;
pub mod key;
pub mod load;
pub mod schema;
pub mod sweep;

pub use graph::{GraphError, stage_order};
pub use key::{ContentHashes, stage_key};
pub use load::{ExperimentError, load_experiment, parse_experiment, ron_options};
pub use schema::{
    DeviceSpec, Experiment, KlControl, KlEstimator, ModelSpec, PluginDecl, StageSpec, Sweep, TrainSettings,
};
pub use sweep::{RunPoint, SweepError, expand};
