//! `manifest.json`: what a run was made from (enough to reproduce it and to group it in
//! comparisons), which stage output each of its stages uses, and whether the run finished.
//!
//! The pipeline writes it when a run starts (incomplete, with every stage's key) and again when
//! the run ends (complete); a run's stage links always match its manifest's keys.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::util::atomic::write_atomically;

/// What a run was made from. Fields an older manifest lacks take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    pub experiment: String,
    pub run: String,
    pub seed: u64,
    /// The sweep point's settings, seed excluded (empty without a sweep).
    pub sweep: BTreeMap<String, serde_json::Value>,
    pub triad_version: String,
    /// The git revision triad itself was built from (`-dirty` with uncommitted changes), its
    /// build profile and features: recorded by the binary, wherever the experiment lives.
    pub triad_revision: String,
    pub triad_build: String,
    /// The git revision of the checkout holding the experiment file, when it is in one.
    pub git_revision: Option<String>,
    pub device: String,
    /// Data sources read, by sha256.
    pub data: BTreeMap<String, String>,
    /// Plugins run, by the sha256 of their wasm (of their sources, for Python and JavaScript
    /// plugins, whose builds are not byte-for-byte reproducible).
    pub plugins: BTreeMap<String, String>,
    /// Stage names in the order they run.
    pub stages: Vec<String>,
    /// The experiment's `summary` metrics: what `triad compare` shows by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<String>,
    /// Each stage's output key.
    pub keys: BTreeMap<String, String>,
    /// Whether every stage of the run finished (older manifests were written only then).
    pub complete: bool,
    /// When the run was moved to the experiment's history (`2026-12-07T03-24-52Z`), because a
    /// later invocation ran a changed experiment under the same run name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<String>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            experiment: String::new(),
            run: String::new(),
            seed: 0,
            sweep: BTreeMap::new(),
            triad_version: String::new(),
            triad_revision: String::new(),
            triad_build: String::new(),
            git_revision: None,
            device: String::new(),
            data: BTreeMap::new(),
            plugins: BTreeMap::new(),
            stages: Vec::new(),
            summary: Vec::new(),
            keys: BTreeMap::new(),
            complete: true,
            archived: None,
        }
    }
}

impl Manifest {
    /// The file's name inside a run folder.
    pub const FILE: &'static str = "manifest.json";

    /// The manifest of the run in `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, StoreError> {
        super::read_json(&dir.join(Self::FILE))
    }

    /// Write the manifest into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(Self::FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|source| StoreError::Json { path: path.clone(), source })?;
        Ok(write_atomically(&path, &json)?)
    }
}
