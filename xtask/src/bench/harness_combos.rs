//! Unit tests (the code under test is private to the `xtask` binary): the server CPU time
//! a bench run is charged, in the combinations of how `loadgen` ended and what it
//! measured.

use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;

use super::outcome::{Outcome, Run};
use super::pg::PhaseCpu;
use super::runner::{charge_phase, loadgen_run};

/// `loadgen --json`'s line for `report`, after some progress text.
fn stdout_of(report: &LoadgenJson) -> String {
    format!("connecting...\n{}\n", report.to_line())
}

fn near(v: Option<f64>, want: f64) -> bool {
    v.is_some_and(|v| (v - want).abs() < 1e-6)
}

#[test]
fn a_run_whose_loadgen_exited_non_zero_is_charged_its_measured_phase_only() {
    // The bank: 1 000 transfers in the measured phase, 0.5 s of server CPU over it; the
    // whole run (registering, argon2 logins, the final check) cost the server 30 s.
    let report = LoadgenJson {
        mode: "bank".into(),
        transfers: Some(1000),
        transfers_per_sec: Some(100.0),
        server_cpu_secs: Some(0.5),
        total_ok: Some(false),
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "bank",
        Ok((false, stdout_of(&report))),
        Some(Duration::from_secs(30)),
        "t",
    );
    assert!(run.verification_failed());
    assert!(
        near(run.cpu_per_op_us(), 500.0),
        "CPU per transfer {:?} µs: the set-up phase must not be charged",
        run.cpu_per_op_us()
    );
}

#[test]
fn a_run_without_a_measured_phase_has_no_cpu_figure() {
    // loadgen could not sample the server (it says so in a note): the whole run's CPU,
    // connecting included, is not the measured phase's.
    let report = LoadgenJson {
        mode: "rr".into(),
        msgs: Some(1000),
        msgs_per_sec: Some(1000.0),
        notes: vec!["server CPU time not measured: gone".into()],
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "rr",
        Ok((true, stdout_of(&report))),
        Some(Duration::from_secs(5)),
        "t",
    );
    assert!(run.result.is_ok());
    assert_eq!(
        run.cpu_per_op_us(),
        None,
        "no figure rather than a wrong one"
    );
    // Medians over the repetitions leave the unknown run out.
    let measured = |secs: f64| {
        let r = LoadgenJson {
            server_cpu_secs: Some(secs),
            ..report.clone()
        };
        loadgen_run("rr", Ok((true, stdout_of(&r))), None, "t")
    };
    let o = Outcome {
        server: "duo-0".into(),
        duo: true,
        runs: vec![measured(0.001), run, measured(0.003)],
    };
    assert!(near(o.cpu_per_op_us(), 2.0), "{:?}", o.cpu_per_op_us());
}

#[test]
fn an_idle_run_is_charged_its_whole_run() {
    // idle has no measured phase: the server's CPU over the run, per connection.
    let report = LoadgenJson {
        mode: "idle".into(),
        msgs: Some(2000),
        established: Some(2000),
        ..LoadgenJson::default()
    };
    let run = loadgen_run(
        "idle",
        Ok((true, stdout_of(&report))),
        Some(Duration::from_secs(1)),
        "t",
    );
    assert!(
        near(run.cpu_per_op_us(), 500.0),
        "{:?}",
        run.cpu_per_op_us()
    );
    let run = loadgen_run("idle", Ok((true, stdout_of(&report))), None, "t");
    assert_eq!(run.cpu_per_op_us(), None);
}

#[test]
fn a_run_with_no_report_is_a_failure_without_figures() {
    let run = loadgen_run(
        "rr",
        Ok((false, "panicked\n".into())),
        Some(Duration::from_secs(5)),
        "t",
    );
    assert!(run.result.is_err());
    assert_eq!((run.cpu_per_op_us(), run.rate()), (None, None));
}

#[test]
fn a_front_end_whose_cpu_was_not_sampled_is_not_shown_as_free() {
    let report = LoadgenJson {
        mode: "bank".into(),
        transfers: Some(1000),
        transfers_per_sec: Some(100.0),
        server_cpu_secs: Some(0.5),
        elapsed_secs: Some(10.0),
        ..LoadgenJson::default()
    };
    let mut run = loadgen_run("bank", Ok((true, stdout_of(&report))), None, "t");
    // The front-end's process tree could not be read at the window's ends.
    charge_phase(
        &mut run,
        Some(PhaseCpu {
            front: None,
            db: Duration::from_secs(1),
        }),
    );
    assert!(near(run.db_cpu_per_op_us(), 1000.0));
    assert_eq!(
        run.cpu_per_op_us(),
        None,
        "an unknown front-end CPU time is not 0 µs per transfer"
    );
    // Sampled: the window's figures replace loadgen's single-process one.
    let mut run = loadgen_run("bank", Ok((true, stdout_of(&report))), None, "t");
    charge_phase(
        &mut run,
        Some(PhaseCpu {
            front: Some(Duration::from_secs(2)),
            db: Duration::from_secs(1),
        }),
    );
    assert!(near(run.cpu_per_op_us(), 2000.0));
    // No window at all (the run failed): nothing.
    let mut run = loadgen_run("bank", Ok((true, stdout_of(&report))), None, "t");
    charge_phase(&mut run, None);
    assert_eq!((run.cpu_per_op_us(), run.db_cpu_per_op_us()), (None, None));
}

#[test]
fn a_total_cpu_per_transfer_needs_the_front_ends_share() {
    use super::report::{report_json, Header};
    use super::runner::StealPolicy;
    use super::scenarios::{Target, SCENARIOS};

    let scenario = |t: Target| {
        SCENARIOS
            .iter()
            .find(|s| s.target == t)
            .expect("the scenario exists")
    };
    let group = scenario(Target::BankPg {
        group: true,
        processes: 1,
        early_release: true,
    });
    let pgbench = scenario(Target::PgBench);
    let report = LoadgenJson {
        mode: "bank".into(),
        transfers: Some(1000),
        transfers_per_sec: Some(100.0),
        elapsed_secs: Some(10.0),
        ..LoadgenJson::default()
    };
    let mut bank = loadgen_run("bank", Ok((true, stdout_of(&report))), None, "t");
    charge_phase(
        &mut bank,
        Some(PhaseCpu {
            front: None,
            db: Duration::from_secs(1),
        }),
    );
    let mut base = Run::failed(String::new());
    base.result = Ok(LoadgenJson {
        mode: "pgbench".into(),
        transfers: Some(1000),
        transfers_per_sec: Some(100.0),
        ..LoadgenJson::default()
    });
    base.db_cpu = Some(Duration::from_secs(2));
    let outcome = |server: &str, run: Run| Outcome {
        server: server.into(),
        duo: false,
        runs: vec![run],
    };
    let results = [
        (group, vec![outcome("bank", bank)]),
        (pgbench, vec![outcome("pgbench", base)]),
    ];
    let header = Header {
        command: "t",
        machine: "m",
        secs: 10,
        reps: 1,
        skipped: &[],
        steal: StealPolicy {
            max_pct: 5.0,
            retries: 0,
        },
    };
    let json = report_json(&results, &[], &header);
    let summary = &json["postgres"]["summary"];
    // pgbench has no front-end: its total is the database's.
    assert_eq!(summary["pgbench_tps"], 100.0);
    assert!(
        summary["cpu_group_over_pgbench"].is_null(),
        "a total without the front-end's share is not the total: {summary}"
    );
    let runs = &json["scenarios"][0]["servers"][0]["runs"][0];
    assert!(runs["server_cpu_secs"].is_null(), "{runs}");
}
