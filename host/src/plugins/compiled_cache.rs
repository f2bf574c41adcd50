//! The on-disk cache of compiled plugins: wasmtime's precompiled form of each component, so a
//! later process loads a plugin without compiling it again (compiling is most of a plugin's
//! load time, and grows with its size).
//!
//! An entry is keyed by the sha256 of the component's bytes and of the engine's
//! precompile-compatibility hash (its configuration, the CPU features it compiles for and
//! wasmtime's version): a changed plugin, another wasmtime or another engine configuration
//! misses the cache and compiles.
//!
//! Precompiled code is native code, and wasmtime trusts it as such (`Component::deserialize` is
//! `unsafe`), so only what this cache wrote is ever read: each entry is `<key>.cwasm` beside
//! `<key>.sha256`, the sha256 of the `.cwasm` bytes as written, both written atomically into
//! triad's own cache folder. An entry is read into memory, checked against its recorded sha256,
//! and only then deserialised from those same bytes; anything else (a missing or different hash,
//! a truncated file, an entry wasmtime refuses) is compiled again and replaced, with a warning.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::util::atomic::{FileError, write_atomically};

/// Where the cache's entries live, and the part of their key that comes from the engine.
pub struct CompiledCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Read from the cache.
    Cached,
    /// Compiled (and written to the cache for next time).
    Compiled,
}

impl CompiledCache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> CompiledCache {
        // A stable hasher: the key must mean the same in every process (std's default hasher is
        // seeded per process), so the engine's hash feeds sha256.
        struct Sha(Sha256);
        impl Hasher for Sha {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut hasher = Sha(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompiledCache { dir, engine_key: hex(&hasher.0.finalize()) }
    }

    /// The cache in triad's cache folder (`$TRIAD_CACHE/compiled-plugins`).
    pub fn in_triad_cache(engine: &Engine) -> CompiledCache {
        CompiledCache::new(crate::util::packages::cache_dir().join("compiled-plugins"), engine)
    }

    /// The component of `component_bytes`: from the cache when a valid entry is there, else
    /// compiled and stored.
    pub fn load_or_compile(&self, engine: &Engine, component_bytes: &[u8]) -> wasmtime::Result<(Component, Outcome)> {
        let key = self.key(component_bytes);
        let (cwasm, hash) = (self.dir.join(format!("{key}.cwasm")), self.dir.join(format!("{key}.sha256")));
        match read_checked(&cwasm, &hash) {
            Ok(Some(bytes)) => {
                // SAFETY: these bytes are exactly what `store` below wrote (their sha256 is the
                // one it recorded beside them) from `Engine::precompile_component` of an engine
                // with the same compatibility hash (in the key).
                match unsafe { Component::deserialize(engine, &bytes) } {
                    Ok(component) => return Ok((component, Outcome::Cached)),
                    Err(e) => tracing::warn!("{}: compiling again: wasmtime refused the entry: {e:#}", cwasm.display()),
                }
            }
            Ok(None) => {}
            Err(reason) => tracing::warn!("{}: compiling again: {reason}", cwasm.display()),
        }
        let precompiled = engine.precompile_component(component_bytes)?;
        // SAFETY: `precompiled` was made by `precompile_component` of this very engine, just now.
        let component = unsafe { Component::deserialize(engine, &precompiled)? };
        if let Err(reason) = self.store(&cwasm, &hash, &precompiled) {
            tracing::warn!("{}: not cached: {reason}", cwasm.display());
        }
        Ok((component, Outcome::Compiled))
    }

    fn key(&self, component_bytes: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(component_bytes);
        hasher.update(self.engine_key.as_bytes());
        hex(&hasher.finalize())
    }

    /// Write the entry: the precompiled bytes, then their sha256 (so a crash between the two
    /// leaves an entry without a hash, which is never read).
    fn store(&self, cwasm: &Path, hash: &Path, precompiled: &[u8]) -> Result<(), FileError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| FileError::new(&self.dir, e))?;
        write_atomically(cwasm, precompiled)?;
        write_atomically(hash, hex(&Sha256::digest(precompiled)).as_bytes())
    }
}

/// Why an entry on disk is not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("unreadable: {0}")]
    Unreadable(std::io::Error),
    #[error("its sha256 is {actual}, but the cache recorded {recorded}")]
    Changed { actual: String, recorded: String },
}

/// The entry's bytes when they have the sha256 recorded beside them; `None` when there is no
/// entry; why not, when there is one that cannot be used.
fn read_checked(cwasm: &Path, hash: &Path) -> Result<Option<Vec<u8>>, Unusable> {
    let Ok(recorded) = std::fs::read_to_string(hash) else {
        return Ok(None);
    };
    let bytes = std::fs::read(cwasm).map_err(Unusable::Unreadable)?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != recorded.trim() {
        return Err(Unusable::Changed { actual, recorded: recorded.trim().to_string() });
    }
    Ok(Some(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).expect("an engine")
    }

    #[test]
    fn a_second_load_reads_the_entry_and_a_tampered_entry_is_compiled_again() {
        let dir = std::env::temp_dir().join(format!("triad-compiled-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = engine();
        let cache = CompiledCache::new(dir.clone(), &engine);
        // The smallest component: no imports, no exports.
        let bytes = wasm_encoder::Component::new().finish();
        assert_eq!(cache.load_or_compile(&engine, &bytes).unwrap().1, Outcome::Compiled);
        assert_eq!(cache.load_or_compile(&engine, &bytes).unwrap().1, Outcome::Cached);

        // Bytes that are not what the cache wrote are never deserialised.
        let cwasm = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .expect("an entry");
        let mut tampered = std::fs::read(&cwasm).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(&cwasm, &tampered).unwrap();
        let reason = read_checked(&cwasm, &cwasm.with_extension("sha256")).unwrap_err().to_string();
        assert!(reason.contains("but the cache recorded"), "{reason}");
        assert_eq!(cache.load_or_compile(&engine, &bytes).unwrap().1, Outcome::Compiled);
        assert_eq!(cache.load_or_compile(&engine, &bytes).unwrap().1, Outcome::Cached);

        // Another engine configuration is another key.
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        let other_cache = CompiledCache::new(dir.clone(), &other);
        assert_ne!(other_cache.key(&bytes), cache.key(&bytes));
        assert_eq!(other_cache.load_or_compile(&other, &bytes).unwrap().1, Outcome::Compiled);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
