//! What `docs/observability.md` says `bank serve --metrics` exports, checked against a
//! real scrape: every `bank_*` family the page lists is on the page once it has a series
//! (a database error among them), and every exported one is listed. And the flag table
//! of `docs/bank-protocol.md` against `bank serve --help` (review round 11 of the docs):
//! every flag of one is in the other, with the same default.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Client, Server, TempDir};
use duo_testkit::{assert_metrics_documented, http_get};

#[test]
fn every_listed_bank_metric_is_exported_and_every_exported_one_is_listed() {
    let dir = TempDir::new("doc-claims");
    let mut server = Server::start(&dir.join("bank.db"), &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut alice = Client::logged_in(server.addr, "alice");
    Client::logged_in(server.addr, "bob");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    let mut guesser = Client::connect(server.addr);
    assert!(guesser
        .cmd("LOGIN alice wrong-password")
        .starts_with("ERR AUTH_FAILED"));
    // A database error, so that `bank_database_errors_total` has a series: the database
    // file removed under the server (`sqlite_faults.rs`) makes writes `ERR INTERNAL`.
    for suffix in ["", "-wal", "-shm"] {
        let mut path = dir.join("bank.db").into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(path));
    }
    assert!(alice.cmd("DEPOSIT 5").starts_with("ERR INTERNAL"));

    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_metrics_documented(&text, "bank_");
    drop((alice, guesser));
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

/// The rows of the flag table in `docs/bank-protocol.md`: each flag (a row may name two,
/// `--tls-cert`, `--tls-key`) with the row's default cell, backticks removed.
fn documented_flags() -> Vec<(String, String)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/bank-protocol.md");
    let text = std::fs::read_to_string(doc).unwrap();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let default = cells[2].replace('`', "");
        for flag in cells[1].split(", ") {
            rows.push((flag.trim_matches('`').to_owned(), default.clone()));
        }
    }
    rows
}

/// The flags of `bank serve --help` with their `[default: ...]`, if any.
fn help_flags() -> Vec<(String, Option<String>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_bank"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") {
            let flag = t.split([' ', '\t']).next().unwrap().to_owned();
            flags.push((flag, None));
        }
        if let (Some(last), Some(at)) = (flags.last_mut(), t.find("[default: ")) {
            let rest = &t[at + "[default: ".len()..];
            last.1 = rest.split(']').next().map(str::to_owned);
        }
    }
    flags.retain(|(f, _)| f != "--help");
    flags
}

#[test]
fn the_flag_table_matches_bank_serve_help() {
    let documented = documented_flags();
    let help = help_flags();
    assert!(help.len() > 10, "parsed the help: {help:?}");
    for (flag, default) in &help {
        let Some((_, doc_default)) = documented.iter().find(|(f, _)| f == flag) else {
            panic!("`bank serve {flag}` is not in docs/bank-protocol.md's flag table");
        };
        // A default clap prints as a value (not a phrase such as "number of CPUs, at
        // least 2", which the table words its own way) must be the table's.
        if let Some(default) = default.as_ref().filter(|d| !d.contains(' ')) {
            assert_eq!(
                doc_default, default,
                "default of {flag}: docs/bank-protocol.md says {doc_default}, --help {default}"
            );
        }
    }
    for (flag, _) in &documented {
        assert!(
            help.iter().any(|(f, _)| f == flag),
            "docs/bank-protocol.md lists {flag}, which `bank serve --help` does not have"
        );
    }
}
