//! A Cargo example of the workspace, as a binary a test can run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::process::wait_child_within;

/// How long building an example may take (the first build of a cold tree is slow).
const BUILD: Duration = Duration::from_secs(300);

/// The binary of example `name` of package `package`, brought up to date once per test
/// process, next to the running test binary: `target/PROFILE/deps/TEST-HASH` ->
/// `target/PROFILE/examples/NAME`.
///
/// `cargo test` builds the examples before running the tests, but `cargo test --test NAME`
/// does not, and would leave an old binary (or none) in place; so this runs `cargo build
/// --example NAME` (a moment's no-op when it is up to date) in the same profile and target
/// directory, with a deadline. Without cargo (a test binary run by hand elsewhere) an
/// existing binary will do.
pub fn example_binary(package: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let key = format!("{package}/{name}");
    if let Some(binary) = built.get_or_insert_with(HashMap::new).get(&key) {
        return binary.clone();
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/PROFILE/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    build(package, name, profile_dir, &binary);
    assert!(binary.exists(), "{} was not built", binary.display());
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, binary.clone());
    binary
}

/// `cargo build --example NAME -p PACKAGE` into `profile_dir`, with a deadline.
fn build(package: &str, name: &str, profile_dir: &Path, binary: &Path) {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "--example", name, "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(profile) => {
            cargo.args(["--profile", profile]);
        }
    }
    // The target directory the test was built in (unless it is a cross-compilation layout,
    // target/TRIPLE/PROFILE, where cargo's default is left alone).
    if let Some(target_dir) = profile_dir.parent() {
        if target_dir.join("CACHEDIR.TAG").exists() {
            cargo.arg("--target-dir").arg(target_dir);
        }
    }
    let mut child = match cargo.spawn() {
        Ok(child) => child,
        Err(e) if binary.exists() => {
            eprintln!("cannot run cargo ({e}); using {}", binary.display());
            return;
        }
        Err(e) => panic!("cannot run cargo to build the {name} example: {e}"),
    };
    let Some(status) = wait_child_within(&mut child, BUILD) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("cargo build --example {name} did not finish in {BUILD:?}");
    };
    assert!(status.success(), "cargo build --example {name}: {status}");
}
