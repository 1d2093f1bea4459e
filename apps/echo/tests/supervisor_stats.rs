//! The summed `stats:` line of `echo serve --processes N --stats-interval SECS` across a
//! worker's restart: it summed the live workers' own totals, so when a worker died its
//! counts left the sum. "accepted" went down, and the rates, computed from the drop,
//! showed 0 while the new worker served (a bug found by review).

mod common;

use std::time::Duration;

use common::round_trip;
use common::supervised::{Sup, ECHO};
use duo_testkit::{send_signal, wait_until, wait_until_within};

/// One `stats:` line's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    accepted: u64,
    msgs_per_sec: f64,
}

/// The `stats:` lines of `log`, oldest first.
fn stats_lines(log: &str) -> Vec<Line> {
    log.lines()
        .filter(|l| l.contains("stats: generation"))
        .filter_map(|line| {
            let before = |word: &str| -> Option<&str> {
                let i = line.find(word)?;
                line[..i].split_whitespace().last()
            };
            Some(Line {
                accepted: before(" accepted")?.parse().ok()?,
                msgs_per_sec: before(" msg/s")?.parse().ok()?,
            })
        })
        .collect()
}

#[test]
fn the_summed_counters_survive_a_worker_restart() {
    let sup = Sup::start(std::path::Path::new(ECHO), 1, &["--stats-interval", "1"]);
    // The first worker: 6 connections, 10 round trips each.
    for _ in 0..6 {
        let mut s = sup.connect();
        for _ in 0..10 {
            round_trip(&mut s, b"counted");
        }
    }
    wait_until("a stats line counting the 6 connections", || {
        stats_lines(&sup.stderr())
            .last()
            .is_some_and(|l| l.accepted == 6)
    });
    let first = *sup.workers().iter().next().unwrap();
    send_signal(first, "KILL").unwrap();
    wait_until_within(Duration::from_secs(15), "a new worker", || {
        sup.workers().iter().any(|pid| *pid != first)
    });
    let seen = stats_lines(&sup.stderr()).len();
    // The new worker serves less than the first did, in one interval or two.
    let mut s = sup.connect();
    for _ in 0..5 {
        round_trip(&mut s, b"after");
    }
    drop(s);
    wait_until("three stats lines after the restart", || {
        stats_lines(&sup.stderr()).len() >= seen + 3
    });
    let lines = stats_lines(&sup.stderr());
    for pair in lines.windows(2) {
        assert!(
            pair[1].accepted >= pair[0].accepted,
            "the accepted total went down: {lines:?}"
        );
    }
    assert_eq!(
        lines.last().unwrap().accepted,
        7,
        "every connection of both workers: {lines:?}"
    );
    assert!(
        lines[seen..].iter().any(|l| l.msgs_per_sec > 0.0),
        "the new worker's messages are in a rate: {lines:?}"
    );
}
