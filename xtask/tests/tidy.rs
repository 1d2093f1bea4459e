//! Repository rules, checked by plain `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file of the workspace except `duo-sys` (and this test, which names the
/// patterns it looks for).
fn files_outside_sys() -> Vec<PathBuf> {
    let root = root();
    let mut files = Vec::new();
    for dir in ["crates", "apps", "benches", "xtask"] {
        rust_files(&root.join(dir), &mut files);
    }
    files
        .retain(|f| !f.starts_with(root.join("crates/sys")) && !f.ends_with("xtask/tests/tidy.rs"));
    files
}

#[test]
fn libc_is_called_only_from_duo_sys() {
    // The benchmark baselines are the one sanctioned exception: `raw-epoll-echo` exists to
    // show what a server written directly on libc costs.
    let offenders: Vec<_> = files_outside_sys()
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("raw_epoll"))
        .filter(|f| fs::read_to_string(f).unwrap().contains("libc::"))
        .collect();
    assert!(
        offenders.is_empty(),
        "libc used outside duo-sys: {offenders:?}"
    );
}

#[test]
fn library_crates_above_sys_forbid_unsafe() {
    let root = root();
    let crates = fs::read_dir(root.join("crates")).unwrap();
    for krate in crates.flatten() {
        if krate.file_name() == "sys" {
            continue;
        }
        let lib = krate.path().join("src/lib.rs");
        let text = fs::read_to_string(&lib).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{} must carry #![forbid(unsafe_code)]",
            lib.display()
        );
    }
}

#[test]
fn every_unsafe_block_in_sys_has_a_safety_comment() {
    // clippy's `undocumented_unsafe_blocks` (denied in duo-sys) checks this as well; this
    // test keeps the rule even when clippy is not run.
    let mut files = Vec::new();
    rust_files(&root().join("crates/sys/src"), &mut files);
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("unsafe {") || line.trim_start().starts_with("//") {
                continue;
            }
            let documented = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    let t = l.trim_start();
                    t.starts_with("//")
                        || !t.ends_with(';') && !t.ends_with('{') && !t.ends_with('}')
                })
                .any(|l| l.contains("SAFETY:"));
            assert!(
                documented,
                "{}:{} unsafe block without // SAFETY:",
                file.display(),
                i + 1
            );
        }
    }
}

/// The top-level module of `duo-net` a source file belongs to (`conn/machine.rs` →
/// `conn`); `None` for the crate root.
fn net_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib").then_some(name)
}

/// The code of a file without its comments (doc links are not dependencies).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names the crate root re-exports, with the module they come from
/// (`pub use conn::{ConnCtx, ..}` → `ConnCtx` → `conn`).
fn reexports(lib: &str) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    let code = code_only(lib);
    for stmt in code.split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = path.split_once("::") else {
            continue;
        };
        let names = names.trim().trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

/// Every `crate::X` a piece of code names, grouped imports included
/// (`use crate::{a::B, c}` names `a` and `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let head = item.trim().split("::").next().unwrap_or("").trim();
                if !head.is_empty() {
                    out.push(head.to_owned());
                }
            }
        } else {
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !head.is_empty() {
                out.push(head);
            }
        }
    }
    out
}

/// The dependency graph between the top-level modules of `duo-net`: an edge `a → b` when a
/// file of `a` names `crate::b::..` or a name the crate root re-exports from `b`.
fn net_module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = root().join("crates/net/src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexported = reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for file in files {
        let Some(module) = net_module(&src, &file) else {
            continue;
        };
        let deps = graph.entry(module.clone()).or_default();
        let code = code_only(&fs::read_to_string(&file).unwrap());
        for name in crate_paths(&code) {
            let target = reexported.get(&name).cloned().unwrap_or(name);
            let is_module = src.join(format!("{target}.rs")).exists() || src.join(&target).is_dir();
            if is_module && target != module {
                deps.insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = Default::default();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn duo_net_modules_have_no_use_cycle() {
    let graph = net_module_graph();
    // The check must see the real structure, not an empty graph.
    assert!(
        graph.get("conn").is_some_and(|d| d.contains("per_loop")),
        "expected the connection module to use the per-loop state: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "modules of duo-net use each other in a cycle: {}\n(dependencies must run one way; graph: {graph:?})",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::{conn::X, stats};\nlet x = crate::guard::f(); duo_crate::y"),
        vec!["conn", "stats", "guard"]
    );
}
