//! Review round 8 (unit tests; the code under test is private to the `xtask` binary): the
//! run kept when steal spoils an attempt and a later one fails, the PostgreSQL targets'
//! "totals conserved" when some runs were not checked, and the pgbench rate of releases
//! before 14.

use duo_testkit::loadgen_json::LoadgenJson;
use serde_json::Value;

use super::outcome::{Outcome, Run};
use super::pg::parse_pgbench;
use super::report::{report_json, Header};
use super::runner::StealPolicy;
use super::scenarios::{Target, SCENARIOS};
use super::until_steal_low;

const POLICY: StealPolicy = StealPolicy {
    max_pct: 5.0,
    retries: 2,
};

/// A run that measured `rate` transfers per second with `steal` % steal.
fn measured(rate: f64, steal: f64) -> Run {
    let mut r = Run::failed(String::new());
    r.result = Ok(LoadgenJson {
        mode: "bank".into(),
        transfers: Some(1000),
        transfers_per_sec: Some(rate),
        total_ok: Some(true),
        ..LoadgenJson::default()
    });
    r.steal_pct = Some(steal);
    r
}

#[test]
fn a_failed_retry_does_not_throw_away_a_measured_attempt() {
    // The first attempt measured (steal 9 % > 5 %); the retry could not be made at all
    // (the server did not start, say). The measurement is what the run has: kept, marked
    // high steal; not a failed run that fails the whole bench.
    let run = until_steal_low(POLICY, |n, _| {
        Ok(match n {
            1 => measured(1000.0, 9.0),
            _ => Run::failed("cannot start the server".into()),
        })
    })
    .unwrap_or_else(|_| panic!("the attempts do not fail"));
    assert!(run.result.is_ok(), "kept {:?}", run.result.as_ref().err());
    assert_eq!(run.steal_pct, Some(9.0));
    assert!(run.steal_high, "every measured attempt had high steal");
    // A failure on the first attempt is still kept as it is: nothing else was measured.
    let run = until_steal_low(POLICY, |_, _| Ok(Run::failed("refused".into())))
        .unwrap_or_else(|_| panic!("the attempts do not fail"));
    assert!(run.result.is_err());
    assert_eq!((run.attempts, run.steal_high), (1, false));
}

/// The `postgres.summary` and `postgres.targets` of the report of `results`.
fn pg_report(results: &[(Target, Vec<Run>)]) -> Value {
    let results: Vec<_> = results
        .iter()
        .map(|(target, runs)| {
            let sc = SCENARIOS
                .iter()
                .find(|s| s.target == *target)
                .expect("a scenario of that target");
            let runs = runs
                .iter()
                .map(|r| Run {
                    result: r.result.clone(),
                    ..Run::failed(String::new())
                })
                .collect();
            let o = Outcome {
                server: "duo-bank".into(),
                duo: true,
                runs,
            };
            (sc, vec![o])
        })
        .collect();
    let header = Header {
        command: "t",
        machine: "m",
        secs: 1,
        reps: 1,
        skipped: &[],
        steal: POLICY,
    };
    report_json(&results, &[], &header)["postgres"].clone()
}

fn lost_money() -> Run {
    let mut r = measured(30_000.0, 0.0);
    if let Ok(j) = &mut r.result {
        j.total_ok = Some(false);
    }
    r
}

#[test]
fn money_lost_in_one_scenario_is_not_hidden_by_another_unchecked_one() {
    let group = Target::BankPg {
        group: true,
        processes: 1,
        early_release: true,
    };
    let single = Target::BankPg {
        group: false,
        processes: 1,
        early_release: true,
    };
    // The group-commit scenario lost money; the other one could not run at all.
    let pg = pg_report(&[
        (group, vec![lost_money()]),
        (single, vec![Run::failed("cannot start the server".into())]),
    ]);
    assert_eq!(
        pg["summary"]["totals_conserved"],
        Value::Bool(false),
        "{pg:#}"
    );
    let target = pg["targets"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["target"] == "totals conserved in every run")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(target["met"], Value::Bool(false), "{target:#}");
    // Every scenario checked and conserved: met; one not checked, none lost: unknown.
    let pg = pg_report(&[(group, vec![measured(30_000.0, 0.0)])]);
    assert_eq!(pg["summary"]["totals_conserved"], Value::Bool(true));
    let pg = pg_report(&[
        (group, vec![measured(30_000.0, 0.0)]),
        (single, vec![Run::failed("x".into())]),
    ]);
    assert_eq!(pg["summary"]["totals_conserved"], Value::Null);
}

#[test]
fn pgbench_before_14_gives_the_rate_without_connection_set_up() {
    // PostgreSQL 13 and older print two rates: with the connections' set-up counted in,
    // and without it. The baseline is the one without, as PostgreSQL 14 and later print.
    let out = "transaction type: <builtin: TPC-B (sort of)>\n\
               number of transactions actually processed: 14488\n\
               latency average = 34.835 ms\n\
               tps = 2000.000000 (including connections establishing)\n\
               tps = 2870.654316 (excluding connections establishing)\n";
    let j = parse_pgbench(out).expect("a report");
    assert_eq!(j.transfers_per_sec, Some(2870.654316));
    let newer = "number of transactions actually processed: 14488\n\
                 tps = 2870.654316 (without initial connection time)\n";
    let j = parse_pgbench(newer).expect("a report");
    assert_eq!(j.transfers_per_sec, Some(2870.654316));
}

/// `cargo xtask bench ARGS`, parsed.
fn parse(args: &[&str]) -> Result<super::BenchArgs, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: super::BenchArgs,
    }
    Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
}

#[test]
fn seconds_and_repetitions_out_of_range_are_usage_errors() {
    // `--secs` near u64::MAX passed, and the run's bound (`secs + 120`) overflowed: a
    // panic (or, in a release build, a bound in the past) after minutes of building.
    for bad in [
        &["--secs", "18446744073709551615"][..],
        &["--secs", "18446744073709551500"],
        &["--secs", "100000"],
        &["--reps", "18446744073709551615"],
    ] {
        let err = parse(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} is accepted"));
        assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
    }
    let ok = parse(&["--secs", "86400", "--reps", "100"]).unwrap_or_else(|e| panic!("{e}"));
    // (Debug: the same text for a plain or a non-zero integer.)
    assert_eq!(
        format!("{:?}", (ok.secs, ok.reps)),
        "(Some(86400), Some(100))"
    );
}

#[test]
fn an_empty_only_is_a_usage_error_not_a_full_run() {
    // Every name starts with "": `--only ""` ran everything.
    let args = parse(&["--only", ""]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        super::check_only(&args),
        Err(crate::Failure::Usage(_))
    ));
    let args = parse(&["--only", "churn"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(super::check_only(&args).is_ok());
}
