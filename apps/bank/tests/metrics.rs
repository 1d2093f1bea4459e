//! `bank serve --metrics`: the bank's own figures (writes by kind and outcome, batches,
//! commit latency, failed logins) next to duo's, scraped over HTTP as Prometheus would.

mod common;

use std::time::Duration;

use common::{scrape, Backend, Client, Server, TempDir, TestDb, PW};

/// The value of the series written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    duo_testkit::sample(text, series)
}

#[test]
fn the_bank_s_figures_are_on_its_metrics_page() {
    let dir = TempDir::new("metrics");
    let mut server = Server::start(&dir.join("bank.db"), &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();

    let mut alice = Client::connect(server.addr);
    assert!(alice.cmd(&format!("REGISTER alice {PW}")).starts_with("OK"));
    assert!(alice.cmd(&format!("REGISTER bob {PW}")).starts_with("OK"));
    assert!(alice.cmd("LOGIN alice wrong-password").starts_with("ERR"));
    assert!(alice.cmd(&format!("LOGIN alice {PW}")).starts_with("OK"));
    assert!(alice.cmd("DEPOSIT 1000").starts_with("OK"));
    for _ in 0..3 {
        assert!(alice.cmd("TRANSFER bob 100").starts_with("OK"));
    }
    assert!(alice.cmd("TRANSFER bob 100000").starts_with("ERR"));

    let text = scrape(metrics);
    let writes = |kind: &str, outcome: &str| {
        value(
            &text,
            &format!("bank_writes_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(writes("register", "ok"), Some(2.0), "{text}");
    assert_eq!(writes("deposit", "ok"), Some(1.0));
    assert_eq!(writes("transfer", "ok"), Some(3.0));
    assert_eq!(writes("transfer", "rejected"), Some(1.0));
    assert_eq!(value(&text, "bank_failed_logins_total"), Some(1.0));
    // Every write above waited for its reply: 7 batches of one operation or more.
    let batches = value(&text, "bank_batch_operations_count").unwrap();
    assert!((1.0..=7.0).contains(&batches), "{text}");
    assert_eq!(value(&text, "bank_batch_operations_sum"), Some(7.0));
    assert_eq!(value(&text, "bank_commit_seconds_count"), Some(batches));
    // duo's own figures for the bank's server are there too.
    assert_eq!(
        value(&text, "duo_server_connections{server=\"bank\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("duo_loop_stalls_total{loop=\"bank-0\"}"),
        "{text}"
    );
    drop(alice);
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

/// On PostgreSQL with group commit, every write's replies wait for a flush barrier (early
/// lock release): the barriers are counted and timed, and none failed.
#[test]
fn flush_barriers_are_on_the_metrics_page_on_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres, "metrics_flush") else {
        return;
    };
    let mut server = db.start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut alice = Client::connect(server.addr);
    assert!(alice.cmd(&format!("REGISTER alice {PW}")).starts_with("OK"));
    assert!(alice.cmd(&format!("LOGIN alice {PW}")).starts_with("OK"));
    for n in 1..=3 {
        assert_eq!(
            alice.cmd(&format!("DEPOSIT {n}")),
            format!("OK {}", n * (n + 1) / 2)
        );
    }
    let text = scrape(metrics);
    // Each of the four writes waited for a barrier that began after its commit.
    let barriers = value(&text, "bank_flush_seconds_count").unwrap();
    assert!(barriers >= 4.0, "{text}");
    assert!(value(&text, "bank_flush_seconds_sum").unwrap() > 0.0);
    assert_eq!(
        value(&text, "bank_flush_failures_total"),
        Some(0.0),
        "{text}"
    );
    drop(alice);
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

/// `bank serve --processes 1 --metrics`: the supervisor serves the address and gathers its
/// worker's figures, the bank's own among them, labelled with the worker's PID.
#[test]
fn a_supervisor_s_metrics_page_gathers_its_worker_s_figures() {
    let dir = TempDir::new("metrics_supervisor");
    let mut server = Server::start(
        &dir.join("bank.db"),
        &["--processes", "1", "--metrics", "127.0.0.1:0"],
    );
    let metrics = server.metrics_addr();
    let worker = *duo_testkit::children(server.pid())
        .iter()
        .next()
        .expect("a worker");

    let mut alice = Client::connect(server.addr);
    assert!(alice.cmd(&format!("REGISTER alice {PW}")).starts_with("OK"));
    assert!(alice.cmd("LOGIN alice wrong-password").starts_with("ERR"));

    let text = scrape(metrics);
    let labels = format!("process=\"worker\",pid=\"{worker}\",generation=\"1\"");
    assert_eq!(
        value(
            &text,
            &format!("bank_writes_total{{{labels},kind=\"register\",outcome=\"ok\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("bank_failed_logins_total{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("duo_aggregate_up{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(text.matches("# TYPE bank_writes ").count(), 1, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    drop(alice);
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
