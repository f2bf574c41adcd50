//! Errors from loading and calling plugins.
//!
//! Every error says which plugin, of which kind, in which call, and (where one record is to
//! blame) at which record index of the batch the caller passed in, so a user can find the
//! offending input line without a debugger.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::bindings::PluginKind;

/// A failure of one plugin, with where it happened.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`{kind}{call}{record}: {problem}",
    kind = KindSuffix(*.kind),
    call = CallSuffix(.call),
    record = RecordSuffix(*.record))]
pub struct PluginError {
    /// The plugin's name (from its `info`, or its file name before `info` could be called).
    pub plugin: String,
    /// Its kind, once known.
    pub kind: Option<PluginKind>,
    /// The call that failed (`load`, `configure`, `score`, ...).
    pub call: &'static str,
    /// Index of the offending record in the caller's batch.
    pub record: Option<usize>,
    /// What went wrong.
    pub problem: Problem,
}

/// What went wrong in a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The plugin folder did not build.
    #[error("cannot build plugin {dir}: {message}")]
    Build { dir: PathBuf, message: String },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The module imports something the sandbox does not provide.
    #[error(
        "imports `{import}`, which the host does not offer: a plugin may import only \
             triad:plugin/host (files, sockets, clocks, randomness and the environment are not available)"
    )]
    ForbiddenImport { import: String },
    /// The bytes are not a usable plugin (not wasm, wrong world, wrong interface version).
    #[error("not a valid triad plugin: {0}")]
    Invalid(String),
    /// The call ran past its deadline and was interrupted.
    #[error("ran longer than its deadline of {0:?} and was stopped (an infinite loop?)")]
    Deadline(Duration),
    /// The instance tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {limit_mib} MiB")]
    Memory { limit_mib: usize },
    /// The instance tried to grow a table past the cap.
    #[error("grew a table past its limit of {limit} elements")]
    Table { limit: usize },
    /// The wasm stack overflowed.
    #[error("overflowed its stack (unbounded recursion?)")]
    Stack,
    /// The plugin panicked; the message is the one the panic printed.
    #[error("{0}")]
    Panic(String),
    /// Any other trap (unreachable, out-of-bounds access, ...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin returned an error on purpose.
    #[error("{0}")]
    Reported(String),
    /// The plugin returned something the host refuses (wrong count, NaN, too large).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// The plugin's `info` names a kind other than the interface it exports.
    #[error(
        "its `info` says it is a {claims} plugin, but it exports the {exports} interface: make `info` return the kind it implements"
    )]
    InfoKind { exports: PluginKind, claims: PluginKind },
    /// The experiment used a plugin of one kind where another was required.
    #[error("is a {actual} plugin, but a {expected} plugin is required here")]
    WrongKind { expected: PluginKind, actual: PluginKind },
}

impl PluginError {
    /// An error in `call` of `plugin`.
    pub fn new(plugin: &str, kind: Option<PluginKind>, call: &'static str, problem: Problem) -> Self {
        PluginError { plugin: plugin.to_string(), kind, call, record: None, problem }
    }

    /// Blame one record of the caller's batch.
    pub fn at_record(mut self, record: usize) -> Self {
        self.record = Some(record);
        self
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::DataFilter => "data-filter",
            PluginKind::Reward => "reward",
            PluginKind::Loss => "loss",
            PluginKind::Metric => "metric",
        })
    }
}

struct KindSuffix(Option<PluginKind>);
impl fmt::Display for KindSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(kind) => write!(f, " ({kind})"),
            None => Ok(()),
        }
    }
}

struct CallSuffix<'a>(&'a str);
impl fmt::Display for CallSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, " in `{}`", self.0)
    }
}

struct RecordSuffix(Option<usize>);
impl fmt::Display for RecordSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(record) => write!(f, " at record {record}"),
            None => Ok(()),
        }
    }
}

/// Text from a plugin as it may reach a terminal or a log: at most 4,096 characters, control
/// characters (escape sequences, newlines that would forge a line of the host's) escaped.
pub(crate) fn printable(text: &str) -> String {
    text.chars().take(4096).flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}
