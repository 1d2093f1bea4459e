//! Review round 8 (unit tests; the code under test is private to the `xtask` binary): a
//! check of the soak that has no sample to judge is a failure, not a pass.

use super::judge::{fd_check, rss_check};
use super::sample::{Mark, Proc, Sample};

fn proc(rss_kib: u64, fds: u64) -> Option<Proc> {
    Some(Proc {
        rss_kib,
        fds,
        ..Proc::default()
    })
}

#[test]
fn a_check_without_its_samples_fails_the_soak() {
    // The server ran and stopped cleanly, but its cool-down sample could not be read
    // (a `/proc` field this kernel lacks, say): the leak checks judged nothing.
    let mut failures = Vec::new();
    let check = fd_check("echo", proc(20_000, 12), None, &mut failures);
    assert!(!check.ok);
    assert!(
        failures.iter().any(|f| f.contains("echo")),
        "the report says FAIL, the verdict must too: {failures:?}"
    );
    // No warm-up peak (the end of warm-up was not sampled) for the VmRSS check.
    let samples = [
        Sample {
            t: 0.0,
            mark: Mark::Baseline,
            procs: vec![proc(20_000, 12)],
        },
        Sample {
            t: 1.0,
            mark: Mark::Fine,
            procs: vec![None],
        },
    ];
    let mut failures = Vec::new();
    let check = rss_check(&samples, 0, "bank", proc(21_000, 12), &mut failures);
    assert!(!check.ok);
    assert!(failures.iter().any(|f| f.contains("bank")), "{failures:?}");
    // Both samples there, within the limits: no failure.
    let samples = [Sample {
        t: 2.0,
        mark: Mark::WarmUpEnd,
        procs: vec![proc(21_000, 12)],
    }];
    let mut failures = Vec::new();
    assert!(fd_check("echo", proc(20_000, 12), proc(20_000, 13), &mut failures).ok);
    assert!(rss_check(&samples, 0, "echo", proc(21_500, 12), &mut failures).ok);
    assert!(failures.is_empty(), "{failures:?}");
}

/// A soak killed before it removed its database (`target/soak/bank-db-PID`) left it for
/// good; the next soak removes those of processes that are gone, not a live one's.
#[test]
fn the_databases_of_killed_soaks_are_removed_at_the_next() {
    let out = std::env::temp_dir().join(format!("duo-soak-left-{}", std::process::id()));
    let dead = out.join(format!(
        "bank-db-{}",
        crate::observe::harness_combos::dead_pid()
    ));
    let live = out.join(format!("bank-db-{}", std::process::id()));
    let other = out.join("logs");
    for d in [&dead, &live, &other] {
        std::fs::create_dir_all(d.join("sub")).expect("a directory");
    }
    crate::process::remove_left_behind(&out, "bank-db-");
    let left = (dead.exists(), live.exists(), other.exists());
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(left, (false, true, true));
}
