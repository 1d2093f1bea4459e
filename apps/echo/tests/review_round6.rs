//! Review round 6 of `echo serve --processes N`: workers that do not end as asked, and
//! the summed `stats:` line across workers that end.
//!
//! - A worker of a retired generation that never finishes draining (hung; here stopped
//!   by `SIGSTOP` when the reload retires it) used to stay for good: only a stop and a
//!   failed reload had a `SIGKILL` deadline. Now it is killed at the stop timeout
//!   (`--drain-timeout` + 2 s).
//! - A worker that exits of its own accord (here: `SIGTERM` from someone else, so it
//!   drains and exits 0) is replaced, and what it counted in its last second is in the
//!   totals: a worker published its counters once a second and not when it ended, so the
//!   supervisor's `accepted` total missed the connections of its last second.
//!
//! Every wait is bounded; every process is killed by PID (`Sup`'s guard).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::round_trip;
use common::supervised::{list_after, Sup, ECHO};
use duo_testkit::{all_gone_within, send_signal, wait_until};

/// A reload retires workers that are hung (stopped): at the stop timeout they are
/// killed, and the new generation alone is left. They used to be kept for good.
#[test]
fn a_hung_worker_of_a_retired_generation_is_killed_at_the_stop_timeout() {
    // The supervisor's stop timeout: 1 s of drain and echo's 2 s margin.
    let mut sup = Sup::start(Path::new(ECHO), 2, &["--drain-timeout", "1"]);
    sup.log_has("generation 1 is serving");
    let old = sup.workers();
    for pid in &old {
        send_signal(*pid, "STOP").unwrap();
    }
    sup.signal("HUP");
    let key = "generation 2 is serving: workers";
    sup.log_has(key);
    let new = list_after(&sup.stderr(), key);
    assert!(
        all_gone_within(&old, Duration::from_secs(7)),
        "the retired, hung workers {old:?} still run 7 s after their SIGTERM (stop \
         timeout 3 s):\n{}",
        sup.stderr()
    );
    wait_until("generation 2 alone", || sup.workers() == new);
    round_trip(&mut sup.connect(), b"served by generation 2");
    sup.signal("TERM");
    let log = sup.exited_0();
    assert!(
        log.contains("still running 3s after its SIGTERM: SIGKILL"),
        "{log}"
    );
}

/// The `accepted` total of the last `stats:` line of `log`.
fn last_accepted(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stats: generation"))?;
    let i = line.find(" accepted")?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Three times: one connection, then the worker gets `SIGTERM` from outside the
/// supervisor (it drains and exits 0) and is replaced. The summed line counts all three
/// connections; it used to miss those a worker accepted after its last publication (at
/// most a second before it ended), here nearly always all of them.
#[test]
fn what_a_worker_counted_just_before_it_exited_is_in_the_totals() {
    let sup = Sup::start(Path::new(ECHO), 1, &["--stats-interval", "1"]);
    for round in 0..3 {
        let worker = *sup.workers().iter().next().unwrap();
        round_trip(&mut sup.connect(), b"counted");
        send_signal(worker, "TERM").unwrap();
        wait_until("a replacement", || {
            let now = sup.workers();
            now.len() == 1 && !now.contains(&worker)
        });
        assert!(
            sup.stderr()
                .contains(&format!("worker {worker} (generation 1) died")),
            "round {round}: {}",
            sup.stderr()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    while last_accepted(&sup.stderr()) != Some(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        last_accepted(&sup.stderr()),
        Some(3),
        "the three connections of the three workers:\n{}",
        sup.stderr()
    );
    assert!(sup.stderr().contains("exit status 0"), "{}", sup.stderr());
}
