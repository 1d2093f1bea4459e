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
