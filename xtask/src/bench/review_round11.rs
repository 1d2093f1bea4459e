//! Review round 11 of the load generator and the bench harness (unit tests; the code
//! under test is private to the `xtask` binary): a bench whose runs measured nothing
//! (`loadgen` printed a report with its `failure`), whose verification failed (an echo
//! that differed, money not conserved), or whose server died during the run, fails as a
//! whole instead of exiting 0 with a table.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;

use super::failed_runs;
use super::outcome::{Outcome, Run};
use super::runner::{loadgen_run, server_ended};
use super::scenarios::SCENARIOS;
use crate::Failure;

fn outcome(run: Run) -> Outcome {
    Outcome {
        server: "duo-0".into(),
        duo: true,
        runs: vec![run],
    }
}

/// `failed_runs` over one scenario with one server whose one run is `run`.
fn bench_of(run: Run) -> Result<(), String> {
    let results = [(&SCENARIOS[0], vec![outcome(run)])];
    failed_runs(&results).map_err(|e| match e {
        Failure::Run(why) | Failure::Usage(why) => why,
    })
}

#[test]
fn a_loadgen_report_of_a_run_that_could_not_do_its_job_fails_the_bench() {
    // loadgen's --json report of a run that never established a connection (or hit its
    // hard time limit, or lost an `idle --procs` child): exit status 1, with `failure`.
    let report = LoadgenJson {
        mode: "rr".into(),
        failure: Some("no connection was ever established".into()),
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "rr",
        Ok((false, format!("{}\n", report.to_line()))),
        Some(Duration::from_secs(1)),
        "t",
    );
    let e = run
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("a run that measured nothing is a failed run"));
    assert!(e.contains("no connection was ever established"), "{e}");
    let failed = bench_of(run).expect_err("the bench fails");
    assert!(failed.contains("duo-0"), "{failed}");
}

#[test]
fn a_verification_failure_fails_the_bench() {
    // The bank's money not conserved: a measurement all the same (shown in the table),
    // and a bench that must not exit 0.
    let report = LoadgenJson {
        mode: "bank".into(),
        transfers: Some(1000),
        transfers_per_sec: Some(100.0),
        server_cpu_secs: Some(0.5),
        total_ok: Some(false),
        verification_failed: true,
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "bank",
        Ok((false, format!("{}\n", report.to_line()))),
        None,
        "t",
    );
    assert!(run.result.is_ok(), "the measurement is kept for the report");
    assert!(run.verification_failed());
    let failed = bench_of(run).expect_err("the bench fails");
    assert!(failed.contains("verification"), "{failed}");
    // A clean run does not.
    let clean = LoadgenJson {
        total_ok: Some(true),
        verification_failed: false,
        ..report
    };
    let run = loadgen_run(
        "bank",
        Ok((true, format!("{}\n", clean.to_line()))),
        None,
        "t",
    );
    assert_eq!(bench_of(run), Ok(()));
}

#[test]
fn a_server_that_died_during_the_run_fails_it() {
    let report = LoadgenJson {
        mode: "rr".into(),
        msgs: Some(1000),
        msgs_per_sec: Some(1000.0),
        server_cpu_secs: Some(0.01),
        errors: [("reset".to_owned(), 3)].into_iter().collect(),
        error_total: 3,
        ..LoadgenJson::default()
    };
    let measured = || {
        loadgen_run(
            "rr",
            Ok((true, format!("{}\n", report.to_line()))),
            None,
            "t",
        )
    };
    // Still running when loadgen ended: the run stands.
    let run = server_ended(measured(), None, "t");
    assert!(run.result.is_ok());
    // Exited with status 101 (a panic) before loadgen ended.
    let run = server_ended(measured(), Some(ExitStatus::from_raw(101 << 8)), "t");
    let e = run
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("a run whose server died is a failed run"));
    assert!(e.contains("101"), "{e}");
    assert!(bench_of(run).is_err());
}

#[test]
fn a_run_that_measured_no_work_fails_the_bench() {
    // The server accepted every connection and never answered: loadgen (without
    // `--strict`) exits 0 with 0 requests and the waits counted as errors. A rate of 0
    // and no CPU per operation is no figure: the run failed.
    let report = LoadgenJson {
        mode: "rr".into(),
        msgs: Some(0),
        msgs_per_sec: Some(0.0),
        server_cpu_secs: Some(0.0),
        errors: [("unanswered".to_owned(), 16)].into_iter().collect(),
        error_total: 16,
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "rr",
        Ok((true, format!("{}\n", report.to_line()))),
        None,
        "t",
    );
    let e = run
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("a run that measured nothing is a failed run"));
    assert!(e.contains("unanswered"), "{e}");
    assert!(bench_of(run).is_err());
    // An idle run's work is its confirmed connections: none is the same failure.
    let idle = LoadgenJson {
        mode: "idle".into(),
        msgs: Some(0),
        established: Some(0),
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "idle",
        Ok((true, format!("{}\n", idle.to_line()))),
        Some(Duration::from_secs(1)),
        "t",
    );
    assert!(run.result.is_err());
}

/// A retry made because steal spoiled the first attempt, whose server then died during
/// the run, fails the bench: the crash is what the bench must report, not hide behind the
/// earlier attempt's measurement (as a retry that could not be made at all is).
#[test]
fn a_server_that_died_in_a_steal_retry_is_not_hidden_by_the_first_attempt() {
    let policy = super::runner::StealPolicy {
        max_pct: 5.0,
        retries: 2,
    };
    let spoiled = || {
        let mut r = Run::failed(String::new());
        r.result = Ok(LoadgenJson {
            mode: "rr".into(),
            msgs: Some(1000),
            ..LoadgenJson::default()
        });
        r.steal_pct = Some(9.0);
        r
    };
    let run = super::until_steal_low(policy, |n, _| {
        Ok(match n {
            1 => spoiled(),
            _ => server_ended(spoiled(), Some(ExitStatus::from_raw(11)), "t"),
        })
    })
    .unwrap_or_else(|_| panic!("the attempts do not fail"));
    let e = run
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("the crash is kept, not the spoiled measurement"));
    assert!(e.contains("the server exited"), "{e}");
    assert!(bench_of(run).is_err(), "the bench fails");
}
