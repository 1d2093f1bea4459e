//! Review: the summed `stats:` line across an upgrade (`SIGUSR2`, same PID). The totals
//! ("accepted") were documented as "what every worker counted since the supervisor
//! started ... totals that do not go down"; the new image starts them from zero.

mod common;

use common::round_trip;
use common::supervised::{Sup, ECHO};
use duo_testkit::wait_until;

/// The "accepted" figure of every `stats:` line of `log`, oldest first.
fn accepted(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("stats: generation"))
        .filter_map(|line| {
            let i = line.find(" accepted")?;
            line[..i].split_whitespace().last()?.parse().ok()
        })
        .collect()
}

#[test]
fn the_accepted_total_does_not_go_down_across_an_upgrade() {
    let sup = Sup::start(std::path::Path::new(ECHO), 1, &["--stats-interval", "1"]);
    for _ in 0..6 {
        let mut s = sup.connect();
        round_trip(&mut s, b"counted");
    }
    wait_until("a stats line counting the 6 connections", || {
        accepted(&sup.stderr()).last() == Some(&6)
    });
    let first = sup.workers();
    sup.signal("USR2");
    sup.log_has("adopting worker");
    wait_until("the upgrade's reload done", || {
        sup.stderr().matches(" is serving: workers").count() >= 2
    });
    // The adopted worker drains once the new one serves; until it has exited it may
    // still accept a connection and half-close it at once (it is told to stop).
    wait_until("the adopted worker gone", || {
        sup.workers().is_disjoint(&first)
    });
    let seen = accepted(&sup.stderr()).len();
    let mut s = sup.connect();
    round_trip(&mut s, b"after");
    drop(s);
    wait_until("two stats lines after the upgrade", || {
        accepted(&sup.stderr()).len() >= seen + 2
    });
    let lines = accepted(&sup.stderr());
    for pair in lines.windows(2) {
        assert!(
            pair[1] >= pair[0],
            "the accepted total went down at the upgrade: {lines:?}"
        );
    }
    assert_eq!(*lines.last().unwrap(), 7, "{lines:?}");
}
