//! What `docs/observability.md` says `bank serve --metrics` exports, checked against a
//! real scrape: every `bank_*` family the page lists is on the page once it has a series
//! (a database error among them), and every exported one is listed.

mod common;

use std::path::PathBuf;
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
