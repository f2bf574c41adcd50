//! Running a plugin's build in isolation: cargo for Rust, componentize-py for Python,
//! componentize-js for JavaScript.
//!
//! Building a plugin runs its code: a crate's build scripts and procedural macros run natively,
//! componentize-py and componentize-js run the plugin's top-level code to snapshot it. So a
//! build runs in new user, mount, network, PID, IPC and UTS namespaces (util-linux's `unshare`,
//! on every Linux), chrooted into a fresh file system that holds only the system's programs and
//! libraries, the tools and the sources, all read-only, with one output folder the only place
//! it can write: no network, no other process, no environment variable, no home folder, no
//! `/etc`. Where the namespaces cannot be made, building fails with what to do, unless the user
//! says `TRIAD_PLUGIN_BUILD=trusted` (the build then runs with their rights).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
            Isolation::Namespaces => "isolated (no network, no environment, read-only sources and tools)",
            Isolation::Trusted => "NOT isolated: TRIAD_PLUGIN_BUILD=trusted, the build ran with your rights",
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

/// What `isolation()` refuses with when it is `Missing`.
pub const MISSING: &str = "building a plugin runs its code (build scripts, macros, a Python or JavaScript module's \
                           top level), and triad runs it in new Linux namespaces, which util-linux's `unshare` \
                           could not create here (no `unshare`, or unprivileged user namespaces are off): build \
                           the plugin yourself and give the experiment its .wasm, or set \
                           TRIAD_PLUGIN_BUILD=trusted to build it with your own rights";

/// New namespaces for everything a build could reach beyond its files: the network, other
/// processes, IPC, the host name; root inside maps to the user outside.
const UNSHARE: &[&str] =
    ["--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"].as_slice();

/// A build's world: what it may read, where it may write, its environment.
#[derive(Debug, Default)]
pub struct Jail {
    /// Empty, writable scratch folders (a tool's lock files), made before the read-only ones
    /// so that those may lie inside them.
    pub scratch: Vec<PathBuf>,
    /// Folders the build reads: tools, sources.
    pub read_only: Vec<PathBuf>,
    /// Folders the build writes its output into (they must exist).
    pub writable: Vec<PathBuf>,
    /// The build's own variables.
    pub env: Vec<(String, String)>,
    /// The rest of the environment in the jail, besides `HOME=/tmp` (PATH, tool homes); a
    /// trusted build keeps the user's instead.
    pub base_env: Vec<(String, String)>,
}

impl Jail {
    /// `program args` run in `dir`: in this jail when builds are isolated, as it is when the
    /// user trusts the build, refused (with `MISSING`) otherwise.
    pub fn command(&self, dir: &Path, program: &Path, args: &[String]) -> Result<Command, &'static str> {
        match isolation() {
            Isolation::Namespaces => Ok(self.namespaced(dir, program, args)),
            Isolation::Trusted => {
                let mut command = Command::new(program);
                command.current_dir(dir).args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
                Ok(command)
            }
            Isolation::Missing => Err(MISSING),
        }
    }

    /// The command in new namespaces, chrooted into a fresh file system that holds,
    /// read-only, the system's programs and libraries and `read_only`, with `writable` the only
    /// places it can write, and no environment but `base_env` and `env`. Its `/etc` holds only a
    /// one-line `passwd` that gives root (the user, mapped) the home `/tmp`: some tools (wizer,
    /// under componentize-js) look the home folder up by user, not in `$HOME`.
    fn namespaced(&self, dir: &Path, program: &Path, args: &[String]) -> Command {
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
             mkdir -p \"$R/etc\"\n\
             echo 'root:x:0:0:root:/tmp:/bin/sh' > \"$R/etc/passwd\"\n\
             for d in null zero full random urandom; do dev $d; done\n",
        );
        for dir in &self.scratch {
            script.push_str(&format!("mkdir -p \"$R\"{d}\nmount -t tmpfs tmpfs \"$R\"{d}\n", d = q(dir)));
        }
        for dir in &self.read_only {
            script.push_str(&format!("ro {}\n", q(dir)));
        }
        for dir in &self.writable {
            script.push_str(&format!("mkdir -p \"$R\"{d}\nmount --rbind {d} \"$R\"{d}\n", d = q(dir)));
        }
        let vars: Vec<String> = std::iter::once("HOME=/tmp".to_string())
            .chain(self.base_env.iter().chain(&self.env).map(|(key, value)| format!("{key}={value}")))
            .map(|v| shell_quote(&v))
            .collect();
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!(
            "cd /\nstatus=0\nchroot \"$R\" /usr/bin/env -i {} /bin/sh -c 'cd \"$0\" && exec \"$@\"' {} {} {} || status=$?\n\
             umount -l \"$R\"\nrmdir \"$R\"\nexit $status\n",
            vars.join(" "),
            q(dir),
            q(program),
            args.join(" ")
        ));
        let mut command = Command::new("unshare");
        command.args(UNSHARE).args(["sh", "-c", &script]);
        command
    }
}

/// `text` as one word for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The program `name` resolves to on PATH (or `name` itself when it is a path).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return Some(path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Run a command, returning its stdout, or the last 40 lines of its stderr as the error, which
/// names the command by `shown` (an isolated command is a long shell script).
pub fn run(command: &mut Command, shown: &str) -> Result<Vec<u8>, String> {
    let output = command.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("{shown} failed:\n{}", tail.join("\n")))
}
