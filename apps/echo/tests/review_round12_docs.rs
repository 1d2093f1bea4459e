//! Review round 12 of the docs' truth (after the round's changes: capped-pool reads,
//! `TcpClient`, the loop-group spin detector, the supervisor's back-off across upgrades,
//! `echo reload --wait`, the bank's per-host `connect_timeout`, loadgen, the `hub`
//! example, `LineCodec::crlf`): claims a test can check, checked here.
//!
//! - The worker protocol's module doc (`crates/supervisor/src/protocol.rs`) is the
//!   reference of what a supervisor hands a worker, its next image and an upgrade's check:
//!   every variable the module defines is named there. The round added
//!   `DUO_SUPERVISOR_BACKOFF_MS` to the upgrade's table, but `DUO_SUPERVISOR_STATS_SEEN`
//!   and the `DUO_SUPERVISOR_READY_PIPE_PID` variables, also handed over by every
//!   upgrade, were missing from the module doc (only their items' own docs had them).
//!
//! Nothing here opens a socket: the checks read the repository's files.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this crate is `apps/echo`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("apps/echo sits two levels below the workspace root")
        .to_path_buf()
}

/// The `pub const NAME: &str = "VALUE";` items of a Rust source, as `(NAME, VALUE)`.
fn string_consts(source: &str) -> Vec<(String, String)> {
    source
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pub const ")?;
            let (name, rest) = rest.split_once(": &str = \"")?;
            let value = rest.strip_suffix("\";")?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// A module's `//!` doc.
fn module_doc(source: &str) -> String {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_worker_protocol_module_doc_names_every_variable() {
    let source = fs::read_to_string(root().join("crates/supervisor/src/protocol.rs")).unwrap();
    let vars: Vec<(String, String)> = string_consts(&source)
        .into_iter()
        .filter(|(name, _)| name.ends_with("_VAR") || name.ends_with("_VAR_PREFIX"))
        .collect();
    assert!(vars.len() > 10, "found the variables: {vars:?}");
    let doc = module_doc(&source);
    // Named by its constant (a link: the upgrade's table, the check) or by its value in
    // backticks (the worker's table).
    let unnamed: Vec<&String> = vars
        .iter()
        .filter(|(name, value)| {
            !doc.contains(&format!("[`{name}`]")) && !doc.contains(&format!("`{value}`"))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        unnamed.is_empty(),
        "the worker protocol's module doc (crates/supervisor/src/protocol.rs) does not name \
         {unnamed:?}"
    );
}

#[test]
fn the_constant_scan_reads_names_and_values() {
    assert_eq!(
        string_consts("pub const A_VAR: &str = \"DUO_A\";\nconst B: &str = \"x\";"),
        [("A_VAR".to_owned(), "DUO_A".to_owned())]
    );
}
