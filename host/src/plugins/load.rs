//! From a path in an experiment file to a compiled component: build a plugin crate, read a
//! `.wasm`, refuse forbidden imports, wrap a core module into a component, compile (cached).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::build;
use super::error::{PluginError, Problem};
use super::sandbox::Sandbox;

/// The only interface a plugin may import. The version is part of the name, so a plugin built
/// against another version of the WIT package is refused here with both names in the message.
pub const HOST_INTERFACE: &str = "triad:plugin/host@0.1.0";

/// A plugin compiled and ready to instantiate.
pub struct CompiledPlugin {
    /// A name for messages until the plugin's own `info` is read: the file or crate name.
    pub label: String,
    /// sha256 of the wasm as built (of what the build read, for a Python or JavaScript plugin:
    /// see `componentize`), hex; goes into run manifests.
    pub sha256: String,
    pub component: Component,
}

/// Load a plugin from a plugin folder (built first), a core wasm module or a component.
pub fn compile(sandbox: &Sandbox, path: &Path) -> Result<CompiledPlugin, PluginError> {
    let (label, wasm_path) = if path.is_dir() {
        let label = file_label(path);
        let wasm = build::build_plugins(&[path.to_path_buf()])
            .map_err(|problem| PluginError::new(&label, None, "build", problem))?;
        (label, wasm.into_iter().next().unwrap_or_default())
    } else {
        (file_label(path), path.to_path_buf())
    };
    let bytes = std::fs::read(&wasm_path)
        .map_err(|source| PluginError::new(&label, None, "load", Problem::Io { path: wasm_path.clone(), source }))?;
    let mut compiled = compile_bytes(sandbox, &label, &bytes)?;
    // A Python or JavaScript plugin triad built (named by its folder or by the component in
    // triad's cache) is known by its sources.
    if let Some(sha) = super::componentize::sources_sha256(&wasm_path) {
        compiled.sha256 = sha;
    }
    Ok(compiled)
}

/// Compile wasm bytes (a core module or a component) as a plugin.
pub fn compile_bytes(sandbox: &Sandbox, label: &str, bytes: &[u8]) -> Result<CompiledPlugin, PluginError> {
    let fail = |problem| PluginError::new(label, None, "load", problem);
    let sha256 = hex(&Sha256::digest(bytes));
    let component_bytes = if wasmparser::Parser::is_component(bytes) {
        bytes.to_vec()
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        check_imports(bytes).map_err(fail)?;
        wit_component::ComponentEncoder::default()
            .module(bytes)
            .and_then(|encoder| encoder.validate(true).encode())
            .map_err(|e| fail(Problem::Invalid(format!("cannot turn the module into a component: {e:#}"))))?
    } else {
        return Err(fail(Problem::Invalid("the file is not WebAssembly".into())));
    };
    let component = sandbox.compile(&component_bytes).map_err(|e| fail(Problem::Invalid(format!("{e:#}"))))?;
    Ok(CompiledPlugin { label: label.to_string(), sha256, component })
}

/// Refuse a core module that imports anything besides the host interface, naming the import.
fn check_imports(bytes: &[u8]) -> Result<(), Problem> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Problem::Invalid(e.to_string()))?;
        if let wasmparser::Payload::ImportSection(reader) = payload {
            for import in reader.into_imports() {
                let import = import.map_err(|e| Problem::Invalid(e.to_string()))?;
                if import.module != HOST_INTERFACE {
                    let other_version = import.module.starts_with("triad:plugin/");
                    return Err(if other_version {
                        Problem::Invalid(format!(
                            "it was built against `{}`, but this host offers `{HOST_INTERFACE}`: \
                             rebuild it with this version of triad-plugin-sdk",
                            import.module
                        ))
                    } else {
                        Problem::ForbiddenImport { import: format!("{}::{}", import.module, import.name) }
                    });
                }
            }
        }
    }
    Ok(())
}

fn file_label(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The plugins in `folder`: its subfolders that hold a Cargo.toml, a plugin.py or a
/// plugin.js, sorted.
pub fn plugin_dirs(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("Cargo.toml").is_file() || super::componentize::Script::of(path).is_some())
        .collect();
    dirs.sort();
    Ok(dirs)
}
