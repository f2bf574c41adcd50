//! The plugin SDK's sources, carried in the `triad` binary and written once into triad's cache
//! (`plugin-sdk/<hash of the sources>/`): a standalone Rust crate that plugin crates outside this
//! repository name by path, the Python and JavaScript SDK modules their builds include, and the
//! WIT contract every build reads.

use std::path::{Path, PathBuf};

use crate::util::atomic::{FileError, write_atomically};

/// The SDK's files, as the binary was built with them: (path in the crate, contents).
const SDK_FILES: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../plugin-sdk/src/lib.rs")),
    ("src/autodiff.rs", include_str!("../../../plugin-sdk/src/autodiff.rs")),
    ("src/glue.rs", include_str!("../../../plugin-sdk/src/glue.rs")),
    ("src/hash.rs", include_str!("../../../plugin-sdk/src/hash.rs")),
    ("src/log.rs", include_str!("../../../plugin-sdk/src/log.rs")),
    ("src/loss_helpers.rs", include_str!("../../../plugin-sdk/src/loss_helpers.rs")),
    ("src/testing.rs", include_str!("../../../plugin-sdk/src/testing.rs")),
    ("wit/plugin.wit", include_str!("../../../plugin-sdk/wit/plugin.wit")),
    ("python/triad.py", include_str!("../../../plugin-sdk/python/triad.py")),
    ("python/triad_entry.py", include_str!("../../../plugin-sdk/python/triad_entry.py")),
    ("js/triad.js", include_str!("../../../plugin-sdk/js/triad.js")),
    ("js/build.mjs", include_str!("../../../plugin-sdk/js/build.mjs")),
    ("testdata/review-snippets.tsv", include_str!("../../../plugin-sdk/testdata/review-snippets.tsv")),
];

/// The SDK's manifest outside the workspace: the workspace's settings written out.
const SDK_MANIFEST: &str = r#"[package]
name = "triad-plugin-sdk"
description = "Write triad plugins as WebAssembly components in a few lines (written by triad)."
version = "0.1.0"
edition = "2024"
license = "MIT OR Apache-2.0"
publish = false

[dependencies]
wit-bindgen = { version = "0.60", default-features = false, features = ["macros", "realloc"] }
serde = { version = "1", default-features = false, features = ["derive", "std"] }
serde_json = { version = "1", default-features = false, features = ["std", "float_roundtrip"] }
"#;

/// The SDK as a standalone crate in triad's cache, written on first use; its folder.
pub fn sdk_dir() -> Result<PathBuf, FileError> {
    let mut all = String::from(SDK_MANIFEST);
    for (path, text) in SDK_FILES {
        all.push_str(path);
        all.push_str(text);
    }
    let hash = crate::util::sha256_hex(all.as_bytes());
    let dir = crate::util::packages::cache_dir().join("plugin-sdk").join(&hash[..16]);
    if !dir.join("Cargo.toml").is_file() {
        for (path, text) in SDK_FILES {
            write_file(&dir.join(path), text)?;
        }
        // The manifest last: its presence says the copy is whole.
        write_file(&dir.join("Cargo.toml"), SDK_MANIFEST)?;
    }
    Ok(dir)
}

/// Write `text` to `path` atomically, making its folder.
pub(super) fn write_file(path: &Path, text: &str) -> Result<(), FileError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| FileError::new(parent, e))?;
    }
    write_atomically(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the SDK's source folder travels in the binary (a new file must be added to
    /// `SDK_FILES`, or plugins outside the repository would not build).
    #[test]
    fn the_binary_carries_every_sdk_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
        let mut on_disk = Vec::new();
        for folder in ["src", "wit", "testdata", "python", "js"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap().flatten() {
                if entry.path().is_dir() {
                    continue; // __pycache__
                }
                on_disk.push(format!("{folder}/{}", entry.file_name().to_string_lossy()));
            }
        }
        on_disk.sort();
        let mut carried: Vec<String> = SDK_FILES.iter().map(|(path, _)| path.to_string()).collect();
        carried.sort();
        assert_eq!(carried, on_disk);
    }
}
