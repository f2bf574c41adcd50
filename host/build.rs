//! Records what this binary was built from, for run manifests: the git revision of triad's own
//! source (with `-dirty` when the checkout had uncommitted changes), the build profile and the
//! enabled features. A build outside a git checkout records `unknown`.

use std::process::Command;

fn main() {
    // Read when the script runs, not when it was compiled: cargo reuses a compiled build script
    // for a checkout at another path that shares the target folder (CI's clone and a work tree).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from).unwrap_or_default();
    let root = manifest_dir.join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = match git(&["rev-parse", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=TRIAD_GIT_REVISION={revision}");
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-")))
        .collect();
    let features = if features.is_empty() { "none".to_string() } else { features.join(",") };
    println!("cargo:rustc-env=TRIAD_BUILD={profile}, features: {features}");
    // A new commit, a checkout or a staged change: look again. Where git could not answer this
    // time, the checkout's usual files still say when to ask again (else an `unknown` from one
    // failed call would stay in every later build).
    let git_dir = git(&["rev-parse", "--absolute-git-dir"])
        .map(std::path::PathBuf::from)
        .or_else(|| Some(root.join(".git")).filter(|dir| dir.is_dir()));
    if let Some(git_dir) = git_dir {
        for file in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={}", git_dir.join(file).display());
        }
    }
    if revision == "unknown" {
        // A file that never exists: cargo runs this script again on every build, so that a
        // revision git could not give once (a lock, a checkout in the making) is asked for again.
        if let Ok(out) = std::env::var("OUT_DIR") {
            println!("cargo:rerun-if-changed={}", std::path::Path::new(&out).join("ask-git-again").display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
