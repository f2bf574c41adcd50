//! The host's floors, read from its source: every `crate::`, `super::` (and, in `main.rs`,
//! `triad::`) path of every file under `host/src` is an import of the module it names. Each
//! top-level module sits on a floor,
//!
//! ```text
//! main -> bench -> stages -> experiment -> train -> model, data -> plugins -> runs -> util
//! ```
//!
//! and may import only modules on floors below its own; modules on one floor never import each
//! other; and no two files import each other (a folder's `mod.rs` and the files under it are one
//! module, the parent and its parts, and are exempt).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support;

/// Floors, highest first.
const FLOORS: &[&[&str]] = &[
    &["main"],
    &["bench"],
    &["stages"],
    &["experiment"],
    &["train"],
    &["model", "data"],
    &["plugins"],
    &["runs"],
    &["util"],
];

fn floor(top: &str) -> Option<usize> {
    FLOORS.iter().position(|names| names.contains(&top))
}

/// Every `.rs` file under `dir`, with its module path (`stages/ppo.rs` -> `stages::ppo`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).expect("readable source folder").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().expect("named").to_string_lossy().into_owned();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            modules(&path, &inner, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.to_vec();
            if name != "mod" && name != "lib" {
                module.push(name);
            }
            if !module.is_empty() {
                out.insert(module, std::fs::read_to_string(&path).expect("readable source"));
            }
        }
    }
}

/// The code of a file without its comments (doc links name modules too).
fn code(text: &str) -> String {
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The paths a file names after `anchor` (`crate::`, `super::`, `triad::`), grouped
/// `anchor{a::b, c}` forms included, each as its segments.
fn paths_after(code: &str, anchor: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for (at, _) in code.match_indices(anchor) {
        if code[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let rest = &code[at + anchor.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            for item in body.split(',') {
                let segments: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty() && s.chars().all(ident))
                    .collect();
                if !segments.is_empty() {
                    out.push(segments);
                }
            }
        } else {
            let end = rest.find(|c: char| !(ident(c) || c == ':')).unwrap_or(rest.len());
            let segments: Vec<String> = rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            if !segments.is_empty() {
                out.push(segments);
            }
        }
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, String>) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|prefix| known.contains_key(prefix))
}

/// Whether one module is the other or contains it.
fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut known = BTreeMap::new();
    modules(&support::workspace().join("host/src"), &[], &mut known);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &known {
        let code = code(text);
        // `super` of a file `a::b` and of a folder's `a/b/mod.rs` alike is `a`.
        let parent = module[..module.len() - 1].to_vec();
        let mut targets = Vec::new();
        for path in paths_after(&code, "crate::") {
            targets.push(path);
        }
        if module == &["main".to_string()] {
            targets.extend(paths_after(&code, "triad::"));
        }
        for path in paths_after(&code, "super::") {
            let mut full = parent.clone();
            full.extend(path);
            targets.push(full);
        }
        for path in targets {
            if let Some(target) = resolve(&path, &known)
                && !related(module, &target)
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

#[test]
fn no_module_imports_a_floor_above_or_beside_its_own() {
    let mut wrong = Vec::new();
    for (from, targets) in imports() {
        for to in targets {
            let (Some(a), Some(b)) = (floor(&from[0]), floor(&to[0])) else {
                wrong.push(format!("{} or {} is on no floor: add it to FLOORS", from.join("::"), to.join("::")));
                continue;
            };
            if from[0] != to[0] && a >= b {
                wrong.push(format!("{} imports {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the floors:\n{}", wrong.join("\n"));
}

#[test]
fn no_two_files_import_each_other() {
    let edges = imports();
    let mut pairs = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            if from < to && edges.get(to).is_some_and(|back| back.contains(from)) {
                pairs.push(format!("{} <-> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(pairs.is_empty(), "modules that import each other:\n{}", pairs.join("\n"));
}

/// The check itself finds what it is for: an import up a floor, and a pair.
#[test]
fn the_reader_sees_grouped_and_relative_imports() {
    let found = paths_after(
        "use crate::{stages::ppo, util::names::nearest};\nlet x = super::context::RunContext::new();",
        "crate::",
    );
    assert_eq!(
        found,
        vec![vec!["stages".to_string(), "ppo".to_string()], vec!["util".into(), "names".into(), "nearest".into()]]
    );
    let relative = paths_after("use super::{context::StageError, StageOutput};", "super::");
    assert_eq!(relative, vec![vec!["context".to_string(), "StageError".to_string()], vec!["StageOutput".to_string()]]);
    assert!(paths_after("let supercrate::x = 1;", "crate::").is_empty(), "only whole path starts count");
}
