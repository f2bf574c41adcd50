//! Building plugin crates for `wasm32-unknown-unknown` with cargo.
//!
//! Plugins build in release mode with `panic = "abort"` and LTO, into their own target folder
//! (`<target dir>/wasm-plugins`), so a plugin build never waits on, or invalidates, the host's
//! own build. The wasm32 target is installed with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::error::Problem;

const TARGET: &str = "wasm32-unknown-unknown";

/// Build the plugin crates in `dirs` (one cargo invocation per workspace, so cargo builds them
/// in parallel) and return the path of each crate's `.wasm`, in the order of `dirs`.
pub fn build_crates(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, Problem> {
    // Builds from several threads of one process would only queue on cargo's lock.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(first) = dirs.first() else { return Ok(Vec::new()) };
    ensure_wasm_target(first)?;

    let mut outputs = Vec::with_capacity(dirs.len());
    let mut groups: Vec<(Metadata, Vec<String>)> = Vec::new();
    for dir in dirs {
        let metadata = metadata(dir)?;
        let package = metadata.package.clone();
        outputs.push(metadata.wasm_path());
        match groups.iter_mut().find(|(m, _)| m.workspace_root == metadata.workspace_root) {
            Some((_, packages)) => packages.push(package),
            None => groups.push((metadata, vec![package])),
        }
    }
    for (metadata, packages) in &groups {
        let mut cargo = Command::new(cargo_bin());
        cargo
            .current_dir(&metadata.workspace_root)
            .args(["build", "--release", "--target", TARGET])
            .env("CARGO_TARGET_DIR", &metadata.plugin_target_dir)
            .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
            .env("CARGO_PROFILE_RELEASE_LTO", "true")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
        for package in packages {
            cargo.args(["-p", package]);
        }
        tracing::info!(plugins = packages.join(", "), "building plugin crates for {TARGET}");
        run(&mut cargo, &metadata.workspace_root)?;
    }
    Ok(outputs)
}

struct Metadata {
    workspace_root: PathBuf,
    plugin_target_dir: PathBuf,
    package: String,
}

impl Metadata {
    fn wasm_path(&self) -> PathBuf {
        self.plugin_target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", self.package.replace('-', "_")))
    }
}

/// Read the crate's package name and its workspace's folders from `cargo metadata`.
fn metadata(dir: &Path) -> Result<Metadata, Problem> {
    let manifest = dir.join("Cargo.toml");
    let fail = |message: String| Problem::Build { dir: dir.to_path_buf(), message };
    if !manifest.is_file() {
        return Err(fail(format!("{} not found: a plugin crate needs a Cargo.toml", manifest.display())));
    }
    let mut cargo = Command::new(cargo_bin());
    cargo.args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"]).arg(&manifest);
    let stdout = run(&mut cargo, dir)?;
    let json: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|e| fail(format!("unreadable cargo metadata: {e}")))?;
    let manifest = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let package = json["packages"]
        .as_array()
        .and_then(|packages| {
            packages.iter().find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        })
        .and_then(|p| p["name"].as_str())
        .ok_or_else(|| fail("Cargo.toml has no [package]".into()))?;
    let workspace_root = json["workspace_root"].as_str().map(PathBuf::from).unwrap_or_else(|| dir.to_path_buf());
    let target_dir = json["target_directory"].as_str().map(PathBuf::from).unwrap_or_else(|| workspace_root.join("target"));
    Ok(Metadata { workspace_root, plugin_target_dir: target_dir.join("wasm-plugins"), package: package.to_string() })
}

/// Install the wasm32 target with rustup when the toolchain lacks it.
fn ensure_wasm_target(dir: &Path) -> Result<(), Problem> {
    let fail = |message: String| Problem::Build { dir: dir.to_path_buf(), message };
    let installed = Command::new("rustup").current_dir(dir).args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) => Ok(()),
        Ok(_) => {
            tracing::info!("installing the {TARGET} target with rustup");
            let mut add = Command::new("rustup");
            add.current_dir(dir).args(["target", "add", TARGET]);
            run(&mut add, dir).map(drop)
        }
        // No rustup: the toolchain may still have the target; cargo will say if it does not.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(format!("cannot run rustup: {e}"))),
    }
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Run a command, returning its stdout, or its last lines of stderr as the error.
fn run(command: &mut Command, dir: &Path) -> Result<Vec<u8>, Problem> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| Problem::Build { dir: dir.to_path_buf(), message: format!("cannot run {shown}: {e}") })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(Problem::Build { dir: dir.to_path_buf(), message: format!("{shown} failed:\n{}", tail.join("\n")) })
}
