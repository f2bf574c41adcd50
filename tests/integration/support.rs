//! Shared by the integration tests: where the workspace is, scratch folders, the `triad` binary,
//! and every plugin crate built once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use triad::plugins::componentize::Script;
use triad::plugins::{Limits, Plugin, PluginSpec, Sandbox, build};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// An empty folder for one test, `triad-<name>-<pid>` in the system's temporary folder.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Real review snippets (PyPI vadersentiment 3.3.2), as an experiment's data block entry.
pub const REVIEWS: &str = r#""reviews": Package(pip: "vadersentiment==3.3.2", sdist: true,
            file: "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner: "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            format: Tsv(columns: ["id", "rating", "text"], text_column: "text"))"#;

/// The `triad` binary run in `dir` with `args` (without backtraces): its status and output.
pub fn triad(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_triad"))
        .current_dir(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running triad")
}

/// The folder of bundled plugin `name`, as an experiment file names it.
pub fn plugin_dir(name: &str) -> String {
    workspace().join("plugins").join(name).display().to_string()
}

/// The folders plugins lie in: bundled, hostile (for tests), benchmark.
const PLUGIN_FOLDERS: [&str; 3] = ["plugins", "tests/hostile-plugins", "bench/plugins"];

/// The `.wasm` of a bundled plugin (`plugins/<name>`), hostile test plugin
/// (`tests/hostile-plugins/<name>`) or benchmark plugin (`bench/plugins/<name>`). The Rust crates
/// are built in one cargo call, once per test run; a Python or JavaScript plugin when it is
/// first asked for (triad keeps its build in its cache).
pub fn wasm(name: &str) -> PathBuf {
    let script =
        PLUGIN_FOLDERS.iter().map(|folder| workspace().join(folder).join(name)).find(|dir| Script::of(dir).is_some());
    if let Some(dir) = script {
        let built = build::build_plugins(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("building {name}: {e}"));
        return built.into_iter().next().expect("one plugin, one wasm");
    }
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = workspace();
        let mut dirs = Vec::new();
        for folder in PLUGIN_FOLDERS {
            for entry in std::fs::read_dir(root.join(folder)).expect("plugin folder exists") {
                let path = entry.expect("readable folder").path();
                if path.join("Cargo.toml").is_file() {
                    dirs.push(path);
                }
            }
        }
        let wasm = build::build_crates(&dirs).unwrap_or_else(|e| panic!("building plugins: {e}"));
        dirs.iter().map(|d| d.file_name().expect("named").to_string_lossy().into_owned()).zip(wasm).collect()
    });
    built.get(name).unwrap_or_else(|| panic!("no plugin crate named {name}")).clone()
}

/// Load a plugin by crate name with a JSON config and default limits.
pub fn load(name: &str, config: &str) -> Plugin {
    load_with(name, config, Limits::default())
}

/// Load a plugin by crate name with a JSON config and limits.
pub fn load_with(name: &str, config: &str, limits: Limits) -> Plugin {
    let spec = PluginSpec { name: name.into(), path: wasm(name), config: config.into(), limits, workers: None };
    Plugin::load(&Sandbox::shared(), &spec).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// Load a plugin by crate name with a JSON config on one instance: a batch is one call (below
/// the record cap), whatever the machine's cores.
pub fn load_one_instance(name: &str, config: &str) -> Plugin {
    let spec = PluginSpec {
        name: name.into(),
        path: wasm(name),
        config: config.into(),
        limits: Limits::default(),
        workers: Some(1),
    };
    Plugin::load(&Sandbox::shared(), &spec).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// The human-rated movie review snippets: (mean rating, text).
pub fn movie_snippets() -> Vec<(f64, String)> {
    let path = triad::util::packages::MOVIE_REVIEW_SNIPPETS.fetch().expect("fetching review snippets");
    let bytes = std::fs::read(&path).expect("reading review snippets");
    // The file is mostly UTF-8 with a few Latin-1 bytes.
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .filter_map(|line| {
            let mut cols = line.splitn(3, '\t');
            let (_id, mean, text) = (cols.next()?, cols.next()?, cols.next()?);
            Some((mean.trim().parse().ok()?, text.trim().to_string()))
        })
        .collect()
}
