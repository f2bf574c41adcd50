//! Experiments declared in RON: the schema ([`schema`]) and loading with errors that say file,
//! line, column and the fix ([`load`]).

pub mod load;
pub mod schema;
pub mod sweep;

pub use load::{ExperimentError, load_experiment, parse_experiment};
pub use schema::{
    DeviceSpec, EvalStage, ExampleFormat, ExampleSet, Experiment, ModelSpec, Critic, Judge, KlControl, KlEstimator, PluginDecl, PpoSettings, PpoStage, PretrainStage, RewardModelStage, RewardObjective, RewardTerm, SftStage, Stage,
    Template,
    TrainSettings, WinRateSpec,
};
