//! Building plugin folders: Rust crates for `wasm32-unknown-unknown` with cargo here, Python
//! and JavaScript plugins in `componentize`; all isolated (`isolate`).
//!
//! Plugins build in release mode with `panic = "abort"` and LTO, into their own target folder
//! (`<target dir>/wasm-plugins`), so a plugin build never waits on, or invalidates, the host's
//! own build. The wasm32 target is installed with rustup when it is missing.
//!
//! Building a crate runs code: its build scripts and procedural macros run natively, and
//! `include_str!` reads any path. So cargo runs in the build jail with the toolchain, cargo's
//! registry cache and the crate's workspace (and its local path dependencies) read-only, and the
//! plugin target folder the one place it can write. Dependencies are downloaded first, outside,
//! by `cargo fetch`, which runs no code of theirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::componentize::{self, Script};
use super::error::Problem;
use super::isolate::{self, Jail, which};

const TARGET: &str = "wasm32-unknown-unknown";

/// Build the plugin folders in `dirs`, Rust crates, Python and JavaScript plugins alike, and
/// return the path of each one's `.wasm`, in the order of `dirs`.
pub fn build_plugins(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, Problem> {
    let crates: Vec<PathBuf> = dirs.iter().filter(|dir| Script::of(dir).is_none()).cloned().collect();
    let mut crates = build_crates(&crates)?.into_iter();
    dirs.iter()
        .map(|dir| match Script::of(dir) {
            Some(script) => componentize::build(dir, script),
            None => Ok(crates.next().unwrap_or_default()),
        })
        .collect()
}

/// Build the plugin crates in `dirs` (one cargo invocation per workspace, so cargo builds them
/// in parallel) and return the path of each crate's `.wasm`, in the order of `dirs`. A crate is
/// built once per process: a run asks for each plugin from several stages, and a build that
/// finds nothing to do still costs cargo's start and the isolation's set-up.
pub fn build_crates(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, Problem> {
    // Builds from several threads of one process would only queue on cargo's lock.
    static BUILT: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let canonical = |dir: &PathBuf| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let pending: Vec<PathBuf> = dirs.iter().filter(|d| !built.contains_key(&canonical(d))).cloned().collect();
    for (dir, wasm) in pending.iter().zip(build_now(&pending)?) {
        built.insert(canonical(dir), wasm);
    }
    Ok(dirs.iter().map(|d| built[&canonical(d)].clone()).collect())
}

/// Build the crates in `dirs` now, whatever was built before.
fn build_now(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, Problem> {
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
        let root = &metadata.workspace_root;
        // Downloads only: no code of the dependencies runs.
        let mut fetch = Command::new(cargo_bin());
        fetch.current_dir(root).args(["fetch", "--manifest-path"]).arg(root.join("Cargo.toml"));
        run(&mut fetch, root, "cargo fetch")?;
        let mut args: Vec<String> =
            ["build", "--offline", "--release", "--target", TARGET].iter().map(|a| a.to_string()).collect();
        for package in packages {
            args.extend(["-p".to_string(), package.clone()]);
        }
        let env = [
            ("CARGO_TARGET_DIR", metadata.plugin_target_dir.display().to_string()),
            ("CARGO_PROFILE_RELEASE_PANIC", "abort".into()),
            ("CARGO_PROFILE_RELEASE_LTO", "true".into()),
            ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1".into()),
            ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3".into()),
            ("CARGO_PROFILE_RELEASE_DEBUG", "false".into()),
        ];
        std::fs::create_dir_all(&metadata.plugin_target_dir).map_err(|e| Problem::Build {
            dir: root.clone(),
            message: format!("cannot create {}: {e}", metadata.plugin_target_dir.display()),
        })?;
        // As found, not resolved: rustup's proxies are links whose name says what to run.
        let cargo = which(&cargo_bin())
            .ok_or_else(|| Problem::Build { dir: root.clone(), message: format!("no `{}` on PATH", cargo_bin()) })?;
        let mut cargo = jail(metadata, &cargo, &env)
            .command(root, &cargo, &args)
            .map_err(|message| Problem::Build { dir: root.clone(), message: message.into() })?;
        tracing::info!(plugins = packages.join(", "), "building plugin crates for {TARGET}");
        let _registry = registry_read_lock(root)?;
        run(&mut cargo, root, &format!("cargo {}", args.join(" ")))?;
    }
    Ok(outputs)
}

/// Hold cargo's package-cache lock (`$CARGO_HOME/.package-cache`), shared, while a jailed build
/// reads the registry. The jailed cargo's own lock lives in its scratch home, and a cargo outside
/// rewrites index cache files in place under that lock: a concurrent `cargo fetch` would otherwise
/// show the jailed build a half-written index entry ("no matching package named ...").
fn registry_read_lock(dir: &Path) -> Result<std::fs::File, Problem> {
    let path = cargo_home().join(".package-cache");
    let fail = |e: std::io::Error| Problem::Build {
        dir: dir.to_path_buf(),
        message: format!("cannot lock cargo's package cache {}: {e}", path.display()),
    };
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(fail)?;
    file.lock_shared().map_err(fail)?;
    Ok(file)
}

/// cargo's home folder, found as cargo finds it.
fn cargo_home() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cargo"))
}

/// The jail a cargo build runs in: the toolchain, cargo's registry cache and the sources
/// read-only, the plugin target folder writable. `cargo` is the cargo to run: its folder comes
/// first on the jail's PATH, since rustc lies beside it (a toolchain's `bin`, or rustup's
/// proxies, which need not be in `$CARGO_HOME/bin`).
fn jail(metadata: &Metadata, cargo: &Path, env: &[(&str, String)]) -> Jail {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let cargo_home = cargo_home();
    let rustup_home = std::env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".rustup"));
    // cargo's home: scratch (its package-cache lock) over read-only registry cache and binaries.
    let mut read_only: Vec<PathBuf> =
        ["registry", "git", "bin"].iter().map(|part| cargo_home.join(part)).filter(|dir| dir.is_dir()).collect();
    read_only.push(rustup_home.clone());
    let cargo_dir = cargo.parent().filter(|dir| !dir.as_os_str().is_empty()).map(Path::to_path_buf);
    if let Some(dir) = cargo_dir.as_ref().filter(|dir| !read_only.iter().any(|ro| dir.starts_with(ro))) {
        read_only.push(dir.clone());
    }
    read_only.push(metadata.workspace_root.clone());
    read_only.extend(metadata.local_dirs.iter().cloned());
    let tools: Vec<PathBuf> = cargo_dir.into_iter().chain([cargo_home.join("bin")]).collect();
    let tools: Vec<String> = tools.iter().map(|dir| dir.display().to_string()).collect();
    let mut base_env = vec![
        ("PATH".to_string(), format!("{}:/usr/local/bin:/usr/bin:/bin", tools.join(":"))),
        ("CARGO_HOME".to_string(), cargo_home.display().to_string()),
        ("RUSTUP_HOME".to_string(), rustup_home.display().to_string()),
    ];
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        base_env.push(("RUSTUP_TOOLCHAIN".to_string(), toolchain));
    }
    let env = env.iter().map(|(key, value)| (key.to_string(), value.clone())).collect();
    Jail { scratch: vec![cargo_home], read_only, writable: vec![metadata.plugin_target_dir.clone()], env, base_env }
}

struct Metadata {
    workspace_root: PathBuf,
    plugin_target_dir: PathBuf,
    package: String,
    /// Folders of local (path) packages outside the workspace root: the SDK, for a plugin crate
    /// outside the repository.
    local_dirs: Vec<PathBuf>,
}

impl Metadata {
    fn wasm_path(&self) -> PathBuf {
        self.plugin_target_dir.join(TARGET).join("release").join(format!("{}.wasm", self.package.replace('-', "_")))
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
    let stdout = run(&mut cargo, dir, "cargo metadata")?;
    let json: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|e| fail(format!("unreadable cargo metadata: {e}")))?;
    let manifest = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let found = json["packages"].as_array().and_then(|packages| {
        packages.iter().find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
    });
    let package = found.and_then(|p| p["name"].as_str()).ok_or_else(|| fail("Cargo.toml has no [package]".into()))?;
    // Only a cdylib becomes a .wasm component: a library crate (the SDK, a helper) is no plugin.
    let is_cdylib = found.and_then(|p| p["targets"].as_array()).is_some_and(|targets| {
        targets.iter().any(|t| t["crate_types"].as_array().is_some_and(|c| c.iter().any(|c| c == "cdylib")))
    });
    if !is_cdylib {
        return Err(fail(format!(
            "`{package}` is a library crate, not a plugin: a plugin crate builds a cdylib (`[lib] crate-type = \
             [\"cdylib\"]` in its Cargo.toml) and exports its kind with `export_reward!`, `export_loss!`, \
             `export_data_filter!` or `export_metric!` (see plugins/README.md)"
        )));
    }
    let workspace_root = json["workspace_root"].as_str().map(PathBuf::from).unwrap_or_else(|| dir.to_path_buf());
    let target_dir =
        json["target_directory"].as_str().map(PathBuf::from).unwrap_or_else(|| workspace_root.join("target"));
    let local_dirs = local_dependency_dirs(&manifest, &workspace_root)?;
    // Crates of triad's own workspace build beside its target; any other crate in one folder
    // shared by all of them, so the SDK's dependencies build once (each crate's own `target/`
    // would build them again).
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|root| std::fs::canonicalize(root).ok());
    let plugin_target_dir = if ours.flatten() == std::fs::canonicalize(&workspace_root).ok() {
        target_dir.join("wasm-plugins")
    } else {
        crate::util::packages::cache_dir().join("plugin-build")
    };
    Ok(Metadata { workspace_root, plugin_target_dir, package: package.to_string(), local_dirs })
}

/// The folders of the path dependencies of the crate at `manifest` that lie outside
/// `workspace_root`, read from its manifest (`path = "..."` entries), transitively.
fn local_dependency_dirs(manifest: &Path, workspace_root: &Path) -> Result<Vec<PathBuf>, Problem> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut pending = vec![manifest.to_path_buf()];
    while let Some(manifest) = pending.pop() {
        let dir = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        let text = std::fs::read_to_string(&manifest).map_err(|e| Problem::Build {
            dir: dir.clone(),
            message: format!("cannot read {}: {e}", manifest.display()),
        })?;
        for line in text.lines() {
            let Some(at) = line.find("path") else { continue };
            let rest = line[at + 4..].trim_start();
            let Some(rest) = rest.strip_prefix('=') else { continue };
            let Some(value) = rest.trim_start().strip_prefix('"').and_then(|v| v.split('"').next()) else { continue };
            let Ok(target) = std::fs::canonicalize(dir.join(value)) else { continue };
            if target.join("Cargo.toml").is_file() && !target.starts_with(workspace_root) && !found.contains(&target) {
                pending.push(target.join("Cargo.toml"));
                found.push(target);
            }
        }
    }
    Ok(found)
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
            run(&mut add, dir, &format!("rustup target add {TARGET}")).map(drop)
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
fn run(command: &mut Command, dir: &Path, shown: &str) -> Result<Vec<u8>, Problem> {
    isolate::run(command, shown).map_err(|message| Problem::Build { dir: dir.to_path_buf(), message })
}
