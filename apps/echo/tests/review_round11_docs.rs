//! Review round 11 of the docs' truth: claims of `README.md`, `docs/*.md` and the crate
//! docs that a test can check, checked here (the bank's metric list and duo-metrics' have
//! their own `doc_claims.rs`).
//!
//! - Every source file the docs (and the crate docs) name exists (a module renamed or
//!   split leaves a name behind in `docs/architecture.md` otherwise).
//! - duo-sys's crate doc lists every public module in its module table (`unix` was
//!   missing).
//! - The synopsis at the top of echo's crate doc (`apps/echo/src/main.rs`) names exactly
//!   the options of `echo serve --help`.
//!
//! Nothing here opens a socket: the checks read the repository's files, and one runs
//! `echo serve --help`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate is `apps/echo`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("apps/echo sits two levels below the workspace root")
        .to_path_buf()
}

/// Every file under `dir` (relative to the root, `/`-separated), skipping build output
/// and hidden directories.
fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The documents whose claims are checked: the README, `docs/*.md` and the crate docs of
/// every crate and app (`src/lib.rs`, `src/main.rs`).
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    for dir in ["crates", "apps"] {
        let mut libs: Vec<PathBuf> = fs::read_dir(root.join(dir))
            .expect("crates/ and apps/")
            .flatten()
            .flat_map(|e| [e.path().join("src/lib.rs"), e.path().join("src/main.rs")])
            .filter(|p| p.is_file())
            .collect();
        libs.sort();
        docs.extend(libs);
    }
    docs
}

/// The part of `text` that is documentation: all of a markdown page, the `//!` lines of
/// a Rust file.
fn doc_text(path: &Path, text: &str) -> String {
    if path.extension().is_some_and(|e| e == "rs") {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text.to_owned()
    }
}

/// The names of source files in `text`: runs of path characters ending in `.rs` or
/// `.sql`, such as `crates/net/src/conn/mod.rs` or `conn/linger.rs`.
fn source_names(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-');
    let mut names = Vec::new();
    for word in text.split(|c: char| !is_path_char(c)) {
        let word = word.trim_start_matches("./").trim_end_matches('.');
        if (word.ends_with(".rs") || word.ends_with(".sql"))
            && !word.starts_with("//")
            && word.len() > 3
        {
            names.push(word.to_owned());
        }
    }
    names
}

#[test]
fn every_source_file_the_docs_name_exists() {
    let root = root();
    let mut files = Vec::new();
    files_under(&root, &root, &mut files);
    assert!(
        files.iter().any(|f| f == "crates/net/src/lib.rs"),
        "the walk found the repository's files"
    );
    let mut missing = Vec::new();
    for doc in documents(&root) {
        let text = doc_text(&doc, &fs::read_to_string(&doc).unwrap());
        for name in source_names(&text) {
            // A full path from the root must be that file; a shorter one (`conn/linger.rs`,
            // `epoll.rs`, named below its crate in a table) must end some file's path.
            let found = files
                .iter()
                .any(|f| *f == name || f.ends_with(&format!("/{name}")));
            if !found {
                missing.push(format!("{}: {name}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name source files that do not exist: {missing:#?}"
    );
}

#[test]
fn the_source_name_scan_finds_paths() {
    assert_eq!(
        source_names("see `crates/net/src/conn/mod.rs` (and `conn/linger.rs`)."),
        ["crates/net/src/conn/mod.rs", "conn/linger.rs"]
    );
    assert!(source_names("https://docs.rs/criterion").is_empty());
}

#[test]
fn duo_sys_module_table_lists_every_public_module() {
    let lib = fs::read_to_string(root().join("crates/sys/src/lib.rs")).unwrap();
    let table: Vec<&str> = lib.lines().filter(|l| l.starts_with("//! | [`")).collect();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    assert!(modules.len() > 5, "found the modules: {modules:?}");
    let unlisted: Vec<&&str> = modules
        .iter()
        .filter(|m| {
            !table
                .iter()
                .any(|row| row.starts_with(&format!("//! | [`{m}`] |")))
        })
        .collect();
    assert!(
        unlisted.is_empty(),
        "duo-sys's crate doc has no row for the public modules {unlisted:?}"
    );
}

/// The `--options` in `text`.
fn options_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.len() > 2 && w.starts_with("--") && !w.starts_with("---"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn echo_s_synopsis_names_exactly_the_options_of_serve_help() {
    let main = fs::read_to_string(root().join("apps/echo/src/main.rs")).unwrap();
    let doc: Vec<&str> = main.lines().filter_map(|l| l.strip_prefix("//!")).collect();
    let start = doc.iter().position(|l| l.trim() == "```text").unwrap() + 1;
    let len = doc[start..].iter().position(|l| l.trim() == "```").unwrap();
    let synopsis: Vec<&str> = doc[start..start + len]
        .iter()
        .copied()
        .filter(|l| !l.trim_start().starts_with("echo reload"))
        .collect();
    let synopsis = options_in(&synopsis.join("\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_echo"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| format!("--{}", l.split([' ', ',']).next().unwrap()))
        .filter(|o| o != "--help")
        .collect();
    assert!(help.len() > 10, "parsed the help: {help:?}");
    assert_eq!(
        synopsis, help,
        "the synopsis of apps/echo/src/main.rs and `echo serve --help` differ"
    );
}
