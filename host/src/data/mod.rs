//! Data: where training and evaluation text comes from.

pub mod registry;
