//! Building plugin crates for `wasm32-unknown-unknown` with cargo, isolated.
//!
//! Plugins build in release mode with `panic = "abort"` and LTO, into their own target folder
//! (`<target dir>/wasm-plugins`), so a plugin build never waits on, or invalidates, the host's
//! own build. The wasm32 target is installed with rustup when it is missing.
//!
//! Building a crate runs code: its build scripts and procedural macros run natively, and
//! `include_str!` reads any path. So cargo runs in new user, mount, network, PID, IPC and UTS
//! namespaces (util-linux's `unshare`, on every Linux), chrooted into a fresh file system that
//! holds only the system's programs and libraries (the linker build scripts need), the
//! toolchain, cargo's registry cache and the crate's workspace (and its local path
//! dependencies), all read-only, with the plugin target folder the one place it can write: no
//! network, no other process, no environment variable, no home folder, no `/etc`. Dependencies
//! are downloaded first, outside, by `cargo fetch`, which runs no code of theirs. Where the
//! namespaces cannot be made, building fails with what to do, unless the user says
//! `TRIAD_PLUGIN_BUILD=trusted` (the build then runs with their rights).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::error::Problem;

const TARGET: &str = "wasm32-unknown-unknown";

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
        run(&mut fetch, root)?;
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
        let mut cargo = match isolation() {
            Isolation::Namespaces => sandboxed(metadata, &args, &env)?,
            Isolation::Trusted => {
                let mut cargo = Command::new(cargo_bin());
                cargo.current_dir(root).args(&args).envs(env.iter().map(|(k, v)| (k, v)));
                cargo
            }
            Isolation::Missing => {
                return Err(Problem::Build {
                    dir: root.clone(),
                    message: "building a plugin crate runs its build scripts and macros, and triad runs them \
                              in new Linux namespaces, which util-linux's `unshare` could not create here (no \
                              `unshare`, or unprivileged user namespaces are off): build the plugin yourself and \
                              give the experiment its .wasm, or set TRIAD_PLUGIN_BUILD=trusted to build it with \
                              your own rights"
                        .into(),
                });
            }
        };
        tracing::info!(plugins = packages.join(", "), "building plugin crates for {TARGET}");
        run(&mut cargo, root)?;
    }
    Ok(outputs)
}

/// How plugin builds are isolated on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// In new user, mount, network, PID, IPC and UTS namespaces (see the module docs).
    Namespaces,
    /// With the user's rights, because the user said so (`TRIAD_PLUGIN_BUILD=trusted`).
    Trusted,
    /// Neither: builds are refused.
    Missing,
}

impl Isolation {
    /// What `triad plugin check` says about a build.
    pub fn describe(self) -> &'static str {
        match self {
            Isolation::Namespaces => "isolated (no network, no environment, read-only sources and toolchain)",
            Isolation::Trusted => "NOT isolated: TRIAD_PLUGIN_BUILD=trusted, build scripts ran with your rights",
            Isolation::Missing => "refused: this machine cannot isolate builds",
        }
    }
}

/// The isolation plugin builds get here: namespaces when util-linux's `unshare` can make them
/// (checked once per process), else none.
pub fn isolation() -> Isolation {
    static WORKS: OnceLock<bool> = OnceLock::new();
    if std::env::var("TRIAD_PLUGIN_BUILD").is_ok_and(|v| v == "trusted") {
        return Isolation::Trusted;
    }
    let works = *WORKS.get_or_init(|| {
        let mut probe = Command::new("unshare");
        probe.args(UNSHARE).args(["true"]);
        probe.output().is_ok_and(|o| o.status.success())
    });
    if works { Isolation::Namespaces } else { Isolation::Missing }
}

/// New namespaces for everything a build could reach beyond its files: the network, other
/// processes, IPC, the host name; root inside maps to the user outside.
const UNSHARE: &[&str] =
    ["--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"].as_slice();

/// `cargo args` in new namespaces, chrooted into a fresh file system that holds, read-only, the
/// system's programs and libraries, the toolchain, cargo's registry cache and the sources, with
/// the plugin target folder the one writable place, and no environment but `env`.
fn sandboxed(metadata: &Metadata, args: &[String], env: &[(&str, String)]) -> Result<Command, Problem> {
    let root = &metadata.workspace_root;
    let fail = |message: String| Problem::Build { dir: root.clone(), message };
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cargo"));
    let rustup_home = std::env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".rustup"));
    // As found, not resolved: rustup's proxies are links whose name says what to run.
    let cargo = which(&cargo_bin()).ok_or_else(|| fail(format!("no `{}` on PATH", cargo_bin())))?;
    let q = |path: &Path| shell_quote(&path.display().to_string());
    let mut script = String::from(
        "set -e\n\
         R=$(mktemp -d)\n\
         mount -t tmpfs -o mode=755 triad-plugin-build \"$R\"\n\
         ro() { mkdir -p \"$R$1\"; mount --rbind \"$1\" \"$R$1\"; mount -o remount,bind,ro \"$R$1\"; }\n\
         dev() { touch \"$R/dev/$1\"; mount --bind \"/dev/$1\" \"$R/dev/$1\"; }\n\
         ro /usr\n\
         for top in bin sbin lib lib32 lib64; do\n\
           if [ -L \"/$top\" ]; then ln -s \"$(readlink \"/$top\")\" \"$R/$top\"; elif [ -d \"/$top\" ]; then ro \"/$top\"; fi\n\
         done\n\
         if [ -d /etc/alternatives ]; then ro /etc/alternatives; fi\n\
         mkdir -p \"$R/tmp\" \"$R/proc\" \"$R/dev\"\n\
         mount -t tmpfs tmpfs \"$R/tmp\"\n\
         mount -t proc proc \"$R/proc\"\n\
         for d in null zero full random urandom; do dev $d; done\n",
    );
    // cargo's home: scratch (its package-cache lock) over read-only registry cache and binaries.
    script.push_str(&format!("mkdir -p \"$R\"{ch}\nmount -t tmpfs tmpfs \"$R\"{ch}\n", ch = q(&cargo_home)));
    for part in ["registry", "git", "bin"] {
        let dir = cargo_home.join(part);
        if dir.is_dir() {
            script.push_str(&format!("ro {}\n", q(&dir)));
        }
    }
    script.push_str(&format!("ro {}\n", q(&rustup_home)));
    for dir in std::iter::once(root).chain(&metadata.local_dirs) {
        script.push_str(&format!("ro {}\n", q(dir)));
    }
    let target = &metadata.plugin_target_dir;
    script.push_str(&format!("mkdir -p \"$R\"{t}\nmount --rbind {t} \"$R\"{t}\n", t = q(target)));
    let mut vars = vec![
        format!("PATH={}:/usr/local/bin:/usr/bin:/bin", cargo_home.join("bin").display()),
        "HOME=/tmp".to_string(),
        format!("CARGO_HOME={}", cargo_home.display()),
        format!("RUSTUP_HOME={}", rustup_home.display()),
    ];
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        vars.push(format!("RUSTUP_TOOLCHAIN={toolchain}"));
    }
    vars.extend(env.iter().map(|(key, value)| format!("{key}={value}")));
    let vars: Vec<String> = vars.iter().map(|v| shell_quote(v)).collect();
    let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    script.push_str(&format!(
        "cd /\nstatus=0\nchroot \"$R\" /usr/bin/env -i {} /bin/sh -c 'cd \"$0\" && exec \"$@\"' {} {} {} || status=$?\n\
         umount -l \"$R\"\nrmdir \"$R\"\nexit $status\n",
        vars.join(" "),
        q(root),
        q(&cargo),
        args.join(" ")
    ));
    let mut command = Command::new("unshare");
    command.args(UNSHARE).args(["sh", "-c", &script]);
    Ok(command)
}

/// `text` as one word for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The program `name` resolves to on PATH (or `name` itself when it is a path).
fn which(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return Some(path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
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
    let stdout = run(&mut cargo, dir)?;
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
