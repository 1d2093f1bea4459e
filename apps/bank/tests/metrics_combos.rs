//! The bank's figures after real failures: a write the database refused is counted as an
//! error and a database error, and a batch that committed nothing is neither a committed
//! batch nor a commit time.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{scrape, Client, Server, TempDir};

/// The value of the series written exactly as `series` (name and labels); 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    duo_testkit::sample(text, series).unwrap_or(0.0)
}

/// `bank.db` plus `suffix` (`-wal`, `-shm`).
fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[test]
fn a_batch_the_database_refused_is_no_committed_batch() {
    let dir = TempDir::new("metrics-refused-batch");
    let mut server = Server::start(&dir.join("bank.db"), &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut alice = Client::logged_in(server.addr, "alice");
    Client::logged_in(server.addr, "bob");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    let before = scrape(metrics);
    // Three committed batches so far: two registrations and the deposit.
    assert_eq!(
        value(&before, "bank_batch_operations_count"),
        3.0,
        "{before}"
    );
    assert_eq!(value(&before, "bank_commit_seconds_count"), 3.0, "{before}");

    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(with_suffix(&dir.join("bank.db"), suffix)).unwrap();
    }
    for line in ["DEPOSIT 5", "TRANSFER bob 5"] {
        let reply = alice.cmd(line);
        assert!(reply.starts_with("ERR INTERNAL"), "{line}: {reply}");
    }
    let after = scrape(metrics);
    let writes = |kind: &str, outcome: &str| {
        value(
            &after,
            &format!("bank_writes_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(writes("deposit", "ok"), 1.0, "{after}");
    assert_eq!(writes("deposit", "error"), 1.0, "{after}");
    assert_eq!(writes("transfer", "error"), 1.0, "{after}");
    assert_eq!(
        value(&after, "bank_database_errors_total{code=\"INTERNAL\"}"),
        2.0,
        "{after}"
    );
    // Nothing was committed: no batch size, no commit time (a database that fails fast
    // would otherwise show as more commits, each quicker than the disk's fsync).
    assert_eq!(value(&after, "bank_batch_operations_count"), 3.0, "{after}");
    assert_eq!(value(&after, "bank_batch_operations_sum"), 3.0, "{after}");
    assert_eq!(value(&after, "bank_commit_seconds_count"), 3.0, "{after}");
    drop(alice);
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
