//! Building Python and JavaScript plugins into components: componentize-py and
//! componentize-js, pinned, installed into triad's cache on first use, run isolated.
//!
//! A Python plugin is a folder with `plugin.py`, a JavaScript plugin a folder with `plugin.js`;
//! either declares its kind through the SDK (`@triad.reward`, `export default reward({...})`),
//! which picks the WIT world to build against. Both tools run the plugin's top-level code at
//! build time (to snapshot the initialised interpreter), so they run in the build jail
//! (`isolate`): the tool, the SDK and the plugin's folder read-only, one output folder
//! writable, no network. WASI is stubbed out, so the component imports only `host.log`, as a
//! Rust plugin does. A build is kept in triad's cache under the sha256 of everything it read
//! (the folder's files, the SDK, the tool's version, the world), so an unchanged plugin is
//! built once; that sha256, not the component's, identifies the plugin in run manifests, stage
//! keys and `sha256` pins, since neither tool reproduces a component's bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::bindings::PluginKind;
use super::error::Problem;
use super::isolate::{self, Jail};
use super::sdk;
use crate::util::packages::cache_dir;

/// componentize-py from PyPI, the version Python plugins are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// @bytecodealliance/componentize-js from npm, the version JavaScript plugins are built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// What componentize-js needs beside it, pinned: jco for its regex pass (the engine has no
/// Unicode property classes), preview2-shim because componentize-js imports it but lists it as
/// a development dependency only (and 0.17, as later ones show it no folder to read the WIT from).
const JS_COMPANIONS: [&str; 2] = ["@bytecodealliance/jco@1.35.0", "@bytecodealliance/preview2-shim@0.17.9"];

/// A language a plugin can be written in besides Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Python,
    JavaScript,
}

impl Script {
    /// The language of the plugin in `dir`, if it is a Python or JavaScript plugin.
    pub fn of(dir: &Path) -> Option<Script> {
        [Script::Python, Script::JavaScript].into_iter().find(|script| dir.join(script.entry()).is_file())
    }

    /// The user's module in a plugin folder.
    pub fn entry(self) -> &'static str {
        match self {
            Script::Python => "plugin.py",
            Script::JavaScript => "plugin.js",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Script::Python => "python",
            Script::JavaScript => "javascript",
        }
    }

    /// The tool that builds it, its pinned version, and the SDK's folder for the language.
    fn tool(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Script::Python => ("componentize-py", COMPONENTIZE_PY, "python"),
            Script::JavaScript => ("componentize-js", COMPONENTIZE_JS, "js"),
        }
    }

    /// How a plugin of each kind declares it, as a user would write it. Loss plugins are Rust
    /// only (the Rust SDK derives their gradients); the word is known so as to say so.
    fn declarations(self) -> [(&'static str, PluginKind); 4] {
        let filter = match self {
            Script::Python => "data_filter",
            Script::JavaScript => "dataFilter",
        };
        [
            ("reward", PluginKind::Reward),
            (filter, PluginKind::DataFilter),
            ("metric", PluginKind::Metric),
            ("loss", PluginKind::Loss),
        ]
    }

    /// The kind the source declares: exactly one line `@triad.reward` (or `@reward`, and so on)
    /// in Python, one line starting `export default reward(` in JavaScript (the rule the SDK's
    /// build.mjs also applies).
    pub fn kind(self, source: &str) -> Result<PluginKind, String> {
        let mut found: Vec<(&str, PluginKind)> = Vec::new();
        for line in source.lines() {
            let line = if self == Script::Python { line.trim_start() } else { line };
            let declared = match self {
                Script::Python => line.strip_prefix('@').map(|rest| rest.strip_prefix("triad.").unwrap_or(rest)),
                Script::JavaScript => line.strip_prefix("export default "),
            };
            let Some(declared) = declared else { continue };
            for (word, kind) in self.declarations() {
                let rest = declared.strip_prefix(word);
                let ends = |r: &str| match self {
                    Script::Python => !r.starts_with(|c: char| c.is_alphanumeric() || c == '_'),
                    Script::JavaScript => r.starts_with('('),
                };
                if rest.is_some_and(ends) {
                    found.push((word, kind));
                }
            }
        }
        let forms: Vec<String> = self.declarations()[..3].iter().map(|(word, _)| self.declaration(word)).collect();
        match found.as_slice() {
            [(_, PluginKind::Loss)] => Err(format!(
                "{}: loss plugins are written in Rust (the Rust SDK derives their gradients)",
                self.entry()
            )),
            [(_, kind)] => Ok(*kind),
            [] => Err(format!("{} declares no plugin kind: use one of {}", self.entry(), forms.join(", "))),
            _ => Err(format!(
                "{} declares {} plugin kinds ({}): a plugin is one kind",
                self.entry(),
                found.len(),
                found.iter().map(|(word, _)| self.declaration(word)).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn declaration(self, word: &str) -> String {
        match self {
            Script::Python => format!("`@triad.{word}`"),
            Script::JavaScript => format!("`export default {word}({{...}})`"),
        }
    }
}

/// The WIT world a plugin of `kind` is built against.
fn world(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::DataFilter => "data-filter",
        PluginKind::Reward => "reward",
        PluginKind::Loss => "loss",
        PluginKind::Metric => "metric",
    }
}

/// Build the Python or JavaScript plugin in `dir` (unless this exact build is in the cache) and
/// return its component's path.
pub fn build(dir: &Path, script: Script) -> Result<PathBuf, Problem> {
    let fail = |message: String| Problem::Build { dir: dir.to_path_buf(), message };
    let dir = std::fs::canonicalize(dir).map_err(|e| fail(format!("cannot open the folder: {e}")))?;
    let entry = dir.join(script.entry());
    let source = std::fs::read_to_string(&entry).map_err(|e| fail(format!("cannot read {}: {e}", entry.display())))?;
    let kind = script.kind(&source).map_err(fail)?;
    let sdk = sdk::sdk_dir().map_err(|e| fail(e.to_string()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());

    let (tool, tool_version, sdk_part) = script.tool();
    let key = build_key(&dir, &sdk, &[script.name(), tool_version, world(kind), &name]).map_err(fail)?;
    let out_dir = cache_dir().join("plugin-build").join(script.name()).join(&key[..24]);
    let wasm = out_dir.join(format!("{name}.wasm"));
    if wasm.is_file() && sources_sha256(&wasm).is_some() {
        return Ok(wasm);
    }
    // One build of a plugin at a time on the machine: stages ask for it from several threads,
    // tests from several processes.
    let _one = lock_file(&out_dir.with_extension("lock")).map_err(fail)?;
    if wasm.is_file() && sources_sha256(&wasm).is_some() {
        return Ok(wasm);
    }
    let tools = match script {
        Script::Python => python_tools(),
        Script::JavaScript => js_tools(),
    }
    .map_err(fail)?;

    let partial = out_dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    // A build from before its sources' sha256 was kept beside it: made again.
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&partial).map_err(|e| fail(format!("cannot create {}: {e}", partial.display())))?;
    // The plugin's name, known to the host only: the SDK reads it as its default `name`.
    let generated = partial.join("generated");
    std::fs::create_dir_all(&generated).map_err(|e| fail(format!("cannot create {}: {e}", generated.display())))?;
    let out = partial.join(format!("{name}.wasm"));
    let wit = sdk.join("wit");
    let sdk_lang = sdk.join(sdk_part);
    let (program, args, env) = match script {
        Script::Python => {
            let name_module = format!("NAME = {name:?}\n");
            std::fs::write(generated.join("triad_build.py"), name_module)
                .map_err(|e| fail(format!("cannot write into {}: {e}", generated.display())))?;
            let args: Vec<String> = [
                "-d",
                &wit.display().to_string(),
                "-w",
                world(kind),
                "componentize",
                "--stub-wasi",
                "-p",
                &dir.display().to_string(),
                "-p",
                &sdk_lang.display().to_string(),
                "-p",
                &generated.display().to_string(),
                "triad_entry",
                "-o",
                &out.display().to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            let env = vec![("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string())];
            (tools.program.clone(), args, env)
        }
        Script::JavaScript => {
            let args = [sdk_lang.join("build.mjs"), dir.clone(), PathBuf::from(world(kind)), wit.clone(), out.clone()]
                .iter()
                .map(|p| p.display().to_string())
                .chain(std::iter::once(name.clone()))
                .collect();
            let env = vec![("TRIAD_JS_TOOLS".to_string(), tools.home.display().to_string())];
            (tools.program.clone(), args, env)
        }
    };
    let mut read_only = vec![dir.clone(), sdk.clone()];
    read_only.extend(tools.read_only.iter().cloned());
    let jail = Jail {
        scratch: Vec::new(),
        read_only,
        writable: vec![partial.clone()],
        env,
        base_env: vec![("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string())],
    };
    let mut command = jail.command(&dir, &program, &args).map_err(|m| fail(m.into()))?;
    tracing::info!(plugin = name, "building a {} plugin ({kind}) with {tool}", script.name());
    isolate::run(&mut command, &format!("{tool} (building {})", script.entry())).map_err(fail)?;
    if !out.is_file() {
        return Err(fail(format!("the build wrote no {}", out.display())));
    }
    std::fs::write(partial.join(SOURCES_SHA256), &key)
        .map_err(|e| fail(format!("cannot write into {}: {e}", partial.display())))?;
    std::fs::rename(&partial, &out_dir)
        .map_err(|e| fail(format!("cannot move the build to {}: {e}", out_dir.display())))?;
    Ok(wasm)
}

/// The file beside a built component that holds the sha256 of what its build read.
const SOURCES_SHA256: &str = "sources.sha256";

/// The sha256 that identifies the Python or JavaScript plugin built into `wasm`: that of what its
/// build read (the folder's files, the SDK, the tool and its version, the world), not of the
/// component, whose bytes componentize-py and componentize-js do not reproduce from build to
/// build. `None` for a component this module did not build.
pub fn sources_sha256(wasm: &Path) -> Option<String> {
    let text = std::fs::read_to_string(wasm.with_file_name(SOURCES_SHA256)).ok()?;
    let sha = text.trim();
    (sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit())).then(|| sha.to_string())
}

/// sha256 of the plugin folder's files (their paths and bytes; bytecode caches, `node_modules`
/// and hidden files aside), the SDK folder's name (a hash of its sources) and `parts`.
fn build_key(dir: &Path, sdk: &Path, parts: &[&str]) -> Result<String, String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "__pycache__" || name == "node_modules" {
                continue;
            }
            let path = entry.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    let mut all: Vec<u8> = Vec::new();
    for part in parts.iter().copied().chain(sdk.file_name().and_then(|n| n.to_str())) {
        all.extend(part.as_bytes());
        all.push(0);
    }
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        all.extend(file.strip_prefix(dir).unwrap_or(&file).to_string_lossy().as_bytes());
        all.push(0);
        all.extend(crate::util::sha256_hex(&bytes).as_bytes());
    }
    Ok(crate::util::sha256_hex(&all))
}

/// An exclusive lock on `path` (created), held until the file is dropped: tool installs and
/// builds are shared by every triad process on the machine.
fn lock_file(path: &Path) -> Result<std::fs::File, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.lock().map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
}

/// A build tool as installed: what to run, its folder, what the jail must show it.
struct Tools {
    program: PathBuf,
    home: PathBuf,
    read_only: Vec<PathBuf>,
}

/// componentize-py in a virtual environment of its own in triad's cache, installed from PyPI
/// by the first Python build.
fn python_tools() -> Result<Tools, String> {
    let home = cache_dir().join("plugin-tools").join(format!("componentize-py-{COMPONENTIZE_PY}"));
    let program = home.join("bin").join("componentize-py");
    let complete = home.join(".complete");
    let _one = lock_file(&home.with_extension("lock"))?;
    if !complete.is_file() {
        let python = isolate::which("python3")
            .ok_or("Python plugins need python3 (3.9 or newer) on PATH, to install componentize-py")?;
        tracing::info!("installing componentize-py {COMPONENTIZE_PY} from PyPI into {}", home.display());
        let _ = std::fs::remove_dir_all(&home);
        let shown = format!("{} -m venv {}", python.display(), home.display());
        isolate::run(Command::new(&python).args(["-m", "venv"]).arg(&home), &shown)?;
        let pip = home.join("bin").join("pip");
        let package = format!("componentize-py=={COMPONENTIZE_PY}");
        let shown = format!("pip install {package}");
        isolate::run(Command::new(&pip).args(["install", "--quiet", "--disable-pip-version-check", &package]), &shown)?;
        std::fs::write(&complete, COMPONENTIZE_PY).map_err(|e| format!("cannot write {}: {e}", complete.display()))?;
    }
    // The environment's interpreter links to the Python it was made from: the jail shows both.
    let mut read_only = vec![home.clone()];
    let config = std::fs::read_to_string(home.join("pyvenv.cfg")).unwrap_or_default();
    let base = config.lines().find_map(|line| line.strip_prefix("home")?.trim_start().strip_prefix('='));
    if let Some(prefix) = base.map(|bin| PathBuf::from(bin.trim())).and_then(|bin| bin.parent().map(Path::to_path_buf))
        && !prefix.starts_with("/usr")
    {
        read_only.push(prefix);
    }
    Ok(Tools { program, home, read_only })
}

/// componentize-js in an npm prefix of its own in triad's cache, installed from npm by the first
/// JavaScript build; run by Node.
fn js_tools() -> Result<Tools, String> {
    let home = cache_dir().join("plugin-tools").join(format!("componentize-js-{COMPONENTIZE_JS}"));
    let node = isolate::which("node").ok_or("JavaScript plugins need Node.js (18 or newer) on PATH")?;
    let complete = home.join(".complete");
    let _one = lock_file(&home.with_extension("lock"))?;
    if !complete.is_file() {
        let npm = isolate::which("npm").ok_or("JavaScript plugins need npm on PATH, to install componentize-js")?;
        tracing::info!(
            "installing @bytecodealliance/componentize-js {COMPONENTIZE_JS} from npm into {}",
            home.display()
        );
        let _ = std::fs::remove_dir_all(&home);
        let package = format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS}");
        let shown = format!("npm install {package} {}", JS_COMPANIONS.join(" "));
        let mut install = Command::new(&npm);
        install.args(["install", "--save-exact", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]);
        install.arg(&home).arg(&package).args(JS_COMPANIONS);
        isolate::run(&mut install, &shown)?;
        std::fs::write(&complete, COMPONENTIZE_JS).map_err(|e| format!("cannot write {}: {e}", complete.display()))?;
    }
    let mut read_only = vec![home.clone()];
    // Node installed outside /usr (nvm, a tarball): its whole prefix.
    let resolved = std::fs::canonicalize(&node).unwrap_or_else(|_| node.clone());
    if let Some(prefix) = resolved.parent().and_then(Path::parent).filter(|p| !p.starts_with("/usr")) {
        read_only.push(prefix.to_path_buf());
    }
    Ok(Tools { program: resolved, home, read_only })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_plugin_declares_exactly_one_kind() {
        let kind = |source: &str| Script::Python.kind(source);
        assert_eq!(kind("import triad\n\n@triad.reward\ndef score(e, c):\n    return 1.0\n"), Ok(PluginKind::Reward));
        assert_eq!(kind("from triad import metric\n@metric(version='1')\nclass M: pass\n"), Ok(PluginKind::Metric));
        assert_eq!(kind("  @triad.data_filter()\n"), Ok(PluginKind::DataFilter));
        // A decorator that only starts like a kind is not one.
        assert!(kind("@triad.rewards\ndef f(): pass\n").unwrap_err().contains("declares no plugin kind"));
        let two = kind("@triad.reward\ndef a(): pass\n@triad.metric\nclass B: pass\n").unwrap_err();
        assert!(two.contains("declares 2 plugin kinds") && two.contains("`@triad.metric`"), "{two}");
    }

    /// The key of a build is what it read: the same sources in another folder of the same name
    /// give the same key, a changed byte or another tool version another.
    #[test]
    fn a_build_is_known_by_its_sources() {
        let root = std::env::temp_dir().join(format!("triad-build-key-{}", std::process::id()));
        let (a, b) = (root.join("a/plugin"), root.join("b/plugin"));
        for dir in [&a, &b] {
            std::fs::create_dir_all(dir.join("__pycache__")).unwrap();
            std::fs::write(dir.join("plugin.py"), "import triad\n").unwrap();
        }
        std::fs::write(b.join("__pycache__/plugin.cpython-311.pyc"), "bytecode").unwrap();
        let sdk = Path::new("/sdk/0123456789abcdef");
        let key = |dir: &Path, version: &str| build_key(dir, sdk, &["python", version, "reward"]).unwrap();
        assert_eq!(key(&a, COMPONENTIZE_PY), key(&b, COMPONENTIZE_PY));
        assert_ne!(key(&a, COMPONENTIZE_PY), key(&a, "0.0.0"));
        std::fs::write(b.join("plugin.py"), "import triad \n").unwrap();
        assert_ne!(key(&a, COMPONENTIZE_PY), key(&b, COMPONENTIZE_PY));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_javascript_plugin_declares_exactly_one_kind() {
        let kind = |source: &str| Script::JavaScript.kind(source);
        assert_eq!(kind("import { reward } from \"triad\";\nexport default reward({\n"), Ok(PluginKind::Reward));
        assert_eq!(kind("export default dataFilter({ filter() {} });"), Ok(PluginKind::DataFilter));
        assert!(kind("  export default metric({})").is_err());
        assert!(kind("// export default metric({})\nconst x = 1;").is_err());
        assert!(kind("export default loss({})").unwrap_err().contains("written in Rust"));
    }
}
