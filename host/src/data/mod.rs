//! Data: where training and evaluation text comes from, and how it becomes batches of token ids.
//!
//! The path of a corpus through this module, one concept per file:
//! 1. [`source`]: a [`SourceSpec`] (a file, a file inside a pip, npm or apt package, or
//!    arithmetic word problems that [`arithmetic`] generates from a seed) loads as
//!    [`Record`]s, each with its text, its other columns and the file and line it came from,
//!    plus the sha256 of the bytes read (for run manifests and cache keys);
//! 2. [`filter`]: the experiment's filter plugins run over the records in order, in batches,
//!    and leave a [`FilterReport`] of what they kept, dropped (and why) and rewrote;
//! 3. [`split`]: a deterministic train/validation [`Split`];
//! 4. [`tokenizer`]: a [`Tokenizer`] trained (byte-level BPE, or characters) or loaded;
//! 5. [`blocks`]: token streams and language-model batches whose random offsets are a pure
//!    function of (seed, step, side), so a resumed run sees exactly the batches it would have.
//!
//! [`registry`] fetches packaged data once into a local cache; [`span_corruption`] makes an
//! encoder-decoder's pretraining pairs (T5's objective) from token sequences.
//!
//! The spec types ([`SourceSpec`], [`TokenizerSpec`], [`Split`]) are what an experiment file
//! embeds: serde, RON-friendly, unknown fields rejected.

pub mod arithmetic;
pub mod blocks;
pub mod filter;
pub mod formats;
pub mod source;
pub mod span_corruption;
pub mod split;
pub mod tokenizer;

pub use arithmetic::ArithOp;
pub use blocks::{Batch, Blocks, BlocksError, EvalBatches, Side};
pub use filter::{FilterError, FilterReport, FilterStep, apply_filters};
pub use source::{Format, LoadedSource, Origin, Record, SourceError, SourceSpec, TextSplit};
pub use split::{Split, SplitError, SplitParts};
pub use tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};

/// Any failure of data preparation, for callers that run the whole path.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Blocks(#[from] BlocksError),
    #[error(transparent)]
    Registry(#[from] crate::util::packages::RegistryError),
}

pub use crate::util::sha256_hex;
