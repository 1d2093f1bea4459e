//! A Cargo example (or binary) of the workspace, as a program a test can run.

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
    built_binary(package, Target::Example, name)
}

/// The binary target `name` of package `package` (an app such as `echo`, from a test of
/// another package), brought up to date once per test process like [`example_binary`]:
/// `target/PROFILE/deps/TEST-HASH` -> `target/PROFILE/NAME`.
pub fn package_binary(package: &str, name: &str) -> PathBuf {
    built_binary(package, Target::Bin, name)
}

/// What kind of Cargo target is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Example,
    Bin,
}

impl Target {
    /// The `cargo build` option that selects it.
    fn option(self) -> &'static str {
        match self {
            Target::Example => "--example",
            Target::Bin => "--bin",
        }
    }
}

fn built_binary(package: &str, target: Target, name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let key = format!("{package}/{}/{name}", target.option());
    if let Some(binary) = built.get_or_insert_with(HashMap::new).get(&key) {
        return binary.clone();
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/PROFILE/deps");
    let dir = match target {
        Target::Example => profile_dir.join("examples"),
        Target::Bin => profile_dir.to_path_buf(),
    };
    let binary = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    build(package, target, name, profile_dir, &binary);
    assert!(binary.exists(), "{} was not built", binary.display());
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, binary.clone());
    binary
}

/// `cargo build --example NAME -p PACKAGE` (or `--bin`) into `profile_dir`, with a deadline.
fn build(package: &str, target: Target, name: &str, profile_dir: &Path, binary: &Path) {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", target.option(), name, "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    // What cargo set for running this test, not configuration: passed on, the variables
    // reach the build scripts of this build, and one that tracks a variable (ring's
    // tracks `CARGO_MANIFEST_DIR`) is rerun, and everything above it rebuilt, here and
    // again by the next `cargo test`, which does not have it.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_for_the_test) {
            cargo.env_remove(key);
        }
    }
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
        Err(e) => panic!("cannot run cargo to build {name}: {e}"),
    };
    let Some(status) = wait_child_within(&mut child, BUILD) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "cargo build {} {name} did not finish in {BUILD:?}",
            target.option()
        );
    };
    assert!(
        status.success(),
        "cargo build {} {name}: {status}",
        target.option()
    );
}

/// Whether `name` is one of the variables cargo sets for the test being run (its package,
/// crate and binaries), rather than one that configures cargo itself.
fn set_for_the_test(name: &str) -> bool {
    const EXACT: [&str; 8] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}
