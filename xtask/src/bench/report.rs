//! The bench report: markdown (`report.md`, and the section of `docs/benchmarks.md`
//! between the markers), JSON (`report.json`) and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use super::micro::Estimate;
use super::outcome::{fmt_rate, fmt_steal, ratio, spread, Outcome};
use super::runner::StealPolicy;
use super::scenarios::{Scenario, Target, ECHO_SERVERS};
use crate::report::{markdown, svg, unix_now, write};
use crate::{root, Failure};

mod tail;
mod transports;
use tail::{model_rows, models_table, tail_rows, tail_table};
use transports::{tls_table, udp_table, uds_table};

/// Every scenario run, with one outcome per server.
pub(super) type Results<'a> = [(&'a Scenario, Vec<Outcome>)];

/// How the run was made, for the report's first line.
pub(super) struct Header<'a> {
    pub(super) command: &'a str,
    pub(super) machine: &'a str,
    pub(super) secs: u64,
    pub(super) reps: usize,
    /// Scenarios left out, and why.
    pub(super) skipped: &'a [String],
    /// When runs spoiled by steal time were repeated.
    pub(super) steal: StealPolicy,
}

/// `name`'s headline in a scenario's outcomes, or `-` where it did not run.
fn server_cell(sc: &Scenario, outcomes: &[Outcome], name: &str) -> String {
    outcomes
        .iter()
        .find(|o| o.server == name)
        .map_or("-".into(), |o| headline(sc, o))
}

/// The markdown report of the load scenarios.
pub(super) fn scenarios_md(results: &Results<'_>, h: &Header<'_>) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `{}` ({} s per run, {} interleaved repetition(s), medians \
         with min-max). Machine: {}.\n",
        h.command, h.secs, h.reps, h.machine
    );
    let _ = writeln!(
        md,
        "Servers: `duo-0` is duo's echo as a single reactor (one thread, like \
         `raw-epoll`), `duo-1` and `duo-2` serve on 1 and 2 I/O threads that accept for \
         themselves on the one listening socket (`EPOLLEXCLUSIVE`, the default), \
         `duo-2-main` has the main loop accept and hand connections round robin to 2 I/O \
         threads, `duo-2-reuseport` gives each of 2 I/O threads a `SO_REUSEPORT` socket \
         (those two only where accepting matters: churn and 1 000 connections), \
         `duo-2-busy` is `duo-2` with busy polling (`--busy-poll-us 20`, rr only); \
         `duo-2-loops` runs 16 loops on the 2 I/O threads (`--loops`: each loop owned by \
         a thread, run by the other when its owner makes no progress for 200 µs) and \
         `duo-2-loops64` 64 loops that any free thread runs (`--loop-sharing any`; rr \
         only); each loop accepts on a `SO_REUSEPORT` socket of its own; \
         `duo-0-defer`, `duo-2-defer`, `raw-epoll-defer` and `tokio-defer` (churn \
         only) accept a connection only once its first bytes arrived \
         (`--defer-accept`, `TCP_DEFER_ACCEPT`, the same socket option on each); \
         `raw-epoll-2`, `raw-epoll-2-shared`, `raw-epoll-2-loops` and `raw-epoll-2-flat` \
         (rr only) are the raw epoll server on 2 threads, a connection per thread \
         (`SO_REUSEPORT`), any thread serving any connection (one shared epoll set, \
         `EPOLLONESHOT`), 16 reactors with a connection per reactor, any thread running \
         any reactor's turn (`--spread loops`), and 64 reactors owned by the threads, \
         their connections in one epoll set per thread, served by the other thread when \
         their owner makes no progress for 200 µs (`--spread flat`); \
         `tokio` runs 2 workers and `tokio-1` one (rr and pingpong-100x16k only). In \
         both tokio servers the main thread only accepts (`block_on`) and the workers \
         serve the connections, so `tokio-1` serves on one thread, as `duo-0` does \
         (accepting on that same thread) and as `duo-1` does (its main loop idle, its I/O \
         thread accepting): the fair one-thread comparisons are `duo-0` / `tokio-1`, the \
         strict one (everything on one thread), and `duo-1` / `tokio-1`, the same thread \
         layout; at two, `duo-2` / `tokio`. Each cell: the server's CPU time (user + \
         system, from \
         `/proc/PID/stat`, over the measured phase only: set-up such as connecting or the \
         bank's logins is excluded) per operation, the ranking figure because it holds within about \
         10 % on this machine while throughput swings 30-50 %; then throughput (messages, \
         requests or connections per second), with p99 and p99.9 for rr. Idle: server RSS \
         per held connection. Every cell ends with the median steal of its runs.\n"
    );
    steal_note(&mut md, results, h);
    echo_tables(&mut md, results);
    tls_table(&mut md, results);
    tail_table(&mut md, results);
    models_table(&mut md, results);
    udp_table(&mut md, results);
    bank_table(&mut md, results);
    pg_table(&mut md, results);
    for note in h.skipped {
        let _ = writeln!(md, "\nSkipped {note}.");
    }
    errors_list(&mut md, results);
    let _ = writeln!(
        md,
        "\nCharts: `target/bench/throughput.svg`, `cpu.svg`, `latency.svg`."
    );
    md
}

/// The echo scenarios: every server's headline, then the ratios at equal thread counts.
fn echo_tables(md: &mut String, results: &Results<'_>) {
    let echo = || results.iter().filter(|(sc, _)| sc.target == Target::Echo);
    if echo().next().is_none() {
        return;
    }
    let servers: Vec<&str> = ECHO_SERVERS.iter().map(|s| s.name).collect();
    let header: Vec<&str> = ["scenario"]
        .into_iter()
        .chain(servers.iter().copied())
        .chain(["ranking"])
        .collect();
    md.push_str(&markdown::table(
        &header,
        echo().map(|(sc, outcomes)| {
            let cells = servers.iter().map(|name| server_cell(sc, outcomes, name));
            std::iter::once(sc.name.to_owned())
                .chain(cells)
                .chain([ranking(sc, outcomes)])
                .collect::<Vec<_>>()
        }),
    ));
    let _ = writeln!(
        md,
        "\nRatios at equal thread counts, duo / peer: CPU per operation (< 1 favours duo), \
         then throughput (> 1 favours duo); for idle, RSS per connection.\n"
    );
    md.push_str(&markdown::table(
        &[
            "scenario",
            "duo-0 / raw-epoll",
            "duo-0 / tokio-1",
            "duo-2 / tokio",
            "duo-2-main / tokio",
            "duo-2-reuseport / tokio",
            "duo-0-defer / raw-epoll-defer",
            "duo-0-defer / raw-epoll",
            "duo-2-defer / tokio-defer",
        ],
        echo().map(|(sc, outcomes)| {
            let get = |name: &str| outcomes.iter().find(|o| o.server == name);
            let cell = |duo: &str, peer: &str| -> String {
                let (Some(d), Some(p)) = (get(duo), get(peer)) else {
                    return "-".into();
                };
                if sc.mode == "idle" {
                    let rss = |o: &Outcome| o.median(|j| j.rss_per_conn_bytes);
                    ratio(rss(d), rss(p))
                } else {
                    format!(
                        "{} / {}",
                        ratio(d.cpu_per_op_us(), p.cpu_per_op_us()),
                        ratio(d.rate(), p.rate())
                    )
                }
            };
            [
                sc.name.to_owned(),
                cell("duo-0", "raw-epoll"),
                cell("duo-0", "tokio-1"),
                cell("duo-2", "tokio"),
                cell("duo-2-main", "tokio"),
                cell("duo-2-reuseport", "tokio"),
                cell("duo-0-defer", "raw-epoll-defer"),
                cell("duo-0-defer", "raw-epoll"),
                cell("duo-2-defer", "tokio-defer"),
            ]
        }),
    ));
    uds_table(md, results);
}

/// The bank scenarios on SQLite, and group commit against one commit per transfer.
fn bank_table(md: &mut String, results: &Results<'_>) {
    let bank: Vec<_> = results
        .iter()
        .filter(|(sc, _)| matches!(sc.target, Target::Bank(_)))
        .collect();
    if bank.is_empty() {
        return;
    }
    let _ = writeln!(md, "\nBank (durable transfers: every `OK` is on disk):\n");
    let rows = bank.iter().flat_map(|(sc, outcomes)| {
        outcomes.iter().map(|o| {
            let n = o.runs.len();
            let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} µs"));
            [
                sc.name.to_owned(),
                if o.failed() {
                    "failed".into()
                } else {
                    spread(o.rate_stats(), n, |v| format!("{:.1} k", v / 1e3))
                },
                us(o.median(|j| j.p50_us)),
                us(o.median(|j| j.p99_us)),
                spread(o.cpu_stats(), n, |v| format!("{v:.0} µs")),
                totals(o).into(),
                steal_cell(o),
            ]
        })
    });
    md.push_str(&markdown::table(
        &[
            "scenario",
            "transfers/s",
            "p50",
            "p99",
            "server CPU/transfer",
            "totals",
            "steal",
        ],
        rows,
    ));
    let find = |group| {
        results
            .iter()
            .find(|(sc, _)| sc.target == Target::Bank(group))
    };
    if let (Some((_, g)), Some((_, s))) = (find(true), find(false)) {
        let _ = writeln!(
            md,
            "\nGroup commit / one commit per transfer: {}x the transfers per second.",
            ratio(
                g.first().and_then(Outcome::rate),
                s.first().and_then(Outcome::rate)
            )
        );
    }
}

/// The PostgreSQL scenarios: the bank's runs and pgbench's, CPU per transfer split
/// between the front-end and the database server, then the ratios and the targets.
fn pg_table(md: &mut String, results: &Results<'_>) {
    let pg: Vec<_> = results
        .iter()
        .filter(|(sc, _)| sc.target.on_postgres())
        .collect();
    if pg.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nBank on PostgreSQL (durable: `fsync` and `synchronous_commit` on; a fresh \
         database per run), and PostgreSQL's own `pgbench` (TPC-B-like, `-M prepared`, \
         the same 100 clients, same cluster) as the baseline. CPU per transfer (per \
         transaction for pgbench): the front-end's processes and the database server's \
         (postmaster and backends), sampled every 50 ms from `/proc` over the measured \
         phase (the phase-long window where the database worked most: set-up and the \
         final check fall outside).\n"
    );
    let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} µs"));
    let rows = pg.iter().flat_map(|(sc, outcomes)| {
        outcomes.iter().map(move |o| {
            let n = o.runs.len();
            let pgbench = sc.target == Target::PgBench;
            let cpu = |st| spread(st, n, |v| format!("{v:.0} µs"));
            [
                sc.name.to_owned(),
                if o.failed() {
                    "failed".into()
                } else {
                    spread(o.rate_stats(), n, |v| format!("{:.1} k", v / 1e3))
                },
                if pgbench {
                    format!("avg {}", us(o.median(|j| j.mean_us)))
                } else {
                    us(o.median(|j| j.p99_us))
                },
                if pgbench {
                    "-".into()
                } else {
                    totals(o).into()
                },
                if pgbench {
                    "-".into()
                } else {
                    cpu(o.cpu_stats())
                },
                cpu(o.db_cpu_stats()),
                us(o.total_cpu_per_op_us()),
                steal_cell(o),
            ]
        })
    });
    md.push_str(&markdown::table(
        &[
            "scenario",
            "transfers/s",
            "p99",
            "totals",
            "front-end CPU/transfer",
            "database CPU/transfer",
            "total CPU/transfer",
            "steal",
        ],
        rows,
    ));
    let s = PgSummary::of(results);
    let _ = writeln!(md, "\nTargets (figures of this run):\n");
    md.push_str(&markdown::table(
        &["target", "this run", "met"],
        s.targets().into_iter().map(|t| {
            [
                t.name.to_owned(),
                t.value,
                match t.met {
                    Some(true) => "yes".into(),
                    Some(false) => "**no**".into(),
                    None => "-".into(),
                },
            ]
        }),
    ));
    let _ = writeln!(
        md,
        "\nCPU per transfer, total (front-end + database): group / pgbench {}, \
         group / one transaction per transfer {}, 2 front-ends / 1 {} (< 1: less CPU).",
        fmt_ratio(s.cpu_group_over_pgbench),
        fmt_ratio(s.cpu_group_over_single),
        fmt_ratio(s.cpu_two_over_one),
    );
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}x"))
}

/// The targets for the bank on PostgreSQL.
const TARGET_RATE: f64 = 20_000.0;
const TARGET_OVER_PGBENCH: f64 = 10.0;
const TARGET_OVER_SINGLE: f64 = 5.0;
const TARGET_P99_US: f64 = 20_000.0;

/// The PostgreSQL scenarios' headline figures (medians) and ratios.
#[derive(Default, serde::Serialize)]
struct PgSummary {
    group_rate: Option<f64>,
    group_2_rate: Option<f64>,
    single_rate: Option<f64>,
    pgbench_tps: Option<f64>,
    group_p99_us: Option<f64>,
    group_2_p99_us: Option<f64>,
    /// Every PostgreSQL bank run conserved the total (`None`: none was checked).
    totals_conserved: Option<bool>,
    group_over_pgbench: Option<f64>,
    group_over_single: Option<f64>,
    two_over_one: Option<f64>,
    /// Group commit with early lock release over the same holding its locks through the
    /// flush (`--no-early-release`).
    early_over_locked: Option<f64>,
    cpu_group_over_pgbench: Option<f64>,
    cpu_group_over_single: Option<f64>,
    cpu_two_over_one: Option<f64>,
}

/// One target: what, this run's figure, whether it was met (`None`: not measured).
struct TargetCheck {
    name: &'static str,
    value: String,
    met: Option<bool>,
}

impl PgSummary {
    fn of(results: &Results<'_>) -> PgSummary {
        let find = |want: Target| {
            results
                .iter()
                .find(|(sc, _)| sc.target == want)
                .and_then(|(_, os)| os.first())
                .filter(|o| !o.failed())
        };
        let group = find(Target::BankPg {
            group: true,
            processes: 1,
            early_release: true,
        });
        let group_2 = find(Target::BankPg {
            group: true,
            processes: 2,
            early_release: true,
        });
        let locked = find(Target::BankPg {
            group: true,
            processes: 1,
            early_release: false,
        });
        let single = find(Target::BankPg {
            group: false,
            processes: 1,
            early_release: true,
        });
        let pgbench = find(Target::PgBench);
        let rate = |o: Option<&Outcome>| o.and_then(Outcome::rate);
        let p99 = |o: Option<&Outcome>| o.and_then(|o| o.median(|j| j.p99_us));
        let cpu = |o: Option<&Outcome>| o.and_then(Outcome::total_cpu_per_op_us);
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let checked: Vec<&str> = results
            .iter()
            .filter(|(sc, _)| matches!(sc.target, Target::BankPg { .. }))
            .flat_map(|(_, os)| os.iter().map(totals))
            .collect();
        PgSummary {
            group_rate: rate(group),
            group_2_rate: rate(group_2),
            single_rate: rate(single),
            pgbench_tps: rate(pgbench),
            group_p99_us: p99(group),
            group_2_p99_us: p99(group_2),
            // Money lost in one run is a miss, whatever other runs did not check.
            totals_conserved: if checked.iter().any(|t| !matches!(*t, "conserved" | "-")) {
                Some(false)
            } else {
                (!checked.is_empty() && !checked.contains(&"-")).then_some(true)
            },
            group_over_pgbench: div(rate(group), rate(pgbench)),
            group_over_single: div(rate(group), rate(single)),
            two_over_one: div(rate(group_2), rate(group)),
            early_over_locked: div(rate(group), rate(locked)),
            cpu_group_over_pgbench: div(cpu(group), cpu(pgbench)),
            cpu_group_over_single: div(cpu(group), cpu(single)),
            cpu_two_over_one: div(cpu(group_2), cpu(group)),
        }
    }

    fn targets(&self) -> Vec<TargetCheck> {
        let at_least = |v: Option<f64>, min: f64| v.map(|v| v >= min);
        let p99_ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1} ms", v / 1e3));
        vec![
            TargetCheck {
                name: "group commit ≥ 20 000 durable transfers/s",
                value: self.group_rate.map_or("-".into(), |v| format!("{v:.0}/s")),
                met: at_least(self.group_rate, TARGET_RATE),
            },
            TargetCheck {
                name: "group commit ≥ 10 x pgbench's transactions/s",
                value: fmt_ratio(self.group_over_pgbench),
                met: at_least(self.group_over_pgbench, TARGET_OVER_PGBENCH),
            },
            TargetCheck {
                name: "group commit ≥ 5 x one transaction per transfer",
                value: fmt_ratio(self.group_over_single),
                met: at_least(self.group_over_single, TARGET_OVER_SINGLE),
            },
            TargetCheck {
                name: "group commit p99 ≤ 20 ms",
                value: p99_ms(self.group_p99_us),
                met: self.group_p99_us.map(|v| v <= TARGET_P99_US),
            },
            TargetCheck {
                name: "2 front-ends, group commit p99 ≤ 20 ms",
                value: p99_ms(self.group_2_p99_us),
                met: self.group_2_p99_us.map(|v| v <= TARGET_P99_US),
            },
            TargetCheck {
                name: "totals conserved in every run",
                value: match self.totals_conserved {
                    Some(true) => "conserved".into(),
                    Some(false) => "NOT conserved".into(),
                    None => "-".into(),
                },
                met: self.totals_conserved,
            },
            TargetCheck {
                name: "2 front-ends / 1, transfers/s (no target)",
                value: fmt_ratio(self.two_over_one),
                met: None,
            },
            TargetCheck {
                name: "early lock release / locks held through the flush, transfers/s (no \
                       target)",
                value: fmt_ratio(self.early_over_locked),
                met: None,
            },
        ]
    }
}

/// Whether the bank's money was conserved in every run.
fn totals(o: &Outcome) -> &'static str {
    let conserved: Vec<Option<bool>> = o.runs.iter().map(|r| r.get(|j| j.total_ok)).collect();
    if conserved.contains(&Some(false)) {
        "**NOT conserved**"
    } else if !conserved.is_empty() && conserved.iter().all(|c| *c == Some(true)) {
        "conserved"
    } else {
        "-"
    }
}

/// The runs that failed or counted errors, not hidden.
fn errors_list(md: &mut String, results: &Results<'_>) {
    let errors: Vec<String> = results
        .iter()
        .flat_map(|(sc, os)| os.iter().filter_map(move |o| run_errors(sc, o)))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            md,
            "\n**Runs with errors** (not hidden; see `target/bench/logs/`):\n"
        );
        for e in errors {
            let _ = writeln!(md, "{e}");
        }
    }
}

fn run_errors(sc: &Scenario, o: &Outcome) -> Option<String> {
    if let Some(e) = o.failure() {
        return Some(format!("- {} on {}: {e}", sc.name, o.server));
    }
    if o.errors() == 0 && !o.verification_failed() {
        return None;
    }
    let kinds: Vec<String> = o
        .runs
        .iter()
        .filter_map(|r| serde_json::to_string(&r.result.as_ref().ok()?.errors).ok())
        .collect();
    Some(format!(
        "- {} on {}: {} errors{}: {}",
        sc.name,
        o.server,
        o.errors(),
        if o.verification_failed() {
            ", verification failed"
        } else {
            ""
        },
        kinds.join(" ")
    ))
}

/// The scenario's main figures for one server, as table text: CPU per operation (the
/// ranking figure), throughput, and p99 where latency is measured.
fn headline(sc: &Scenario, o: &Outcome) -> String {
    if o.failed() {
        return "failed".into();
    }
    let n = o.runs.len();
    let mut s = if sc.mode == "idle" {
        spread(o.stats(|j| j.rss_per_conn_bytes), n, |b| format!("{b:.0}"))
            + &format!(
                " B/conn ({:.0} conns)",
                o.median(|j| j.established.map(|e| e as f64)).unwrap_or(0.0)
            )
    } else {
        let mut s = format!(
            "CPU {} µs/op; {}",
            spread(o.cpu_stats(), n, |v| format!("{v:.2}")),
            fmt_rate(o.rate())
        );
        if let Some(m) = o.median(|j| j.mib_per_sec).filter(|m| *m >= 1.0) {
            let _ = write!(s, " ({m:.0} MiB/s)");
        }
        if matches!(sc.mode, "rr" | "bank") {
            let _ = write!(
                s,
                ", p99 {}",
                o.median(|j| j.p99_us)
                    .map_or("-".into(), |v| format!("{v:.0} µs"))
            );
        }
        if sc.mode == "rr" {
            let _ = write!(
                s,
                ", p99.9 {}",
                o.median(|j| j.p999_us)
                    .map_or("-".into(), |v| format!("{v:.0} µs"))
            );
        }
        s
    };
    let _ = write!(s, "; steal {}", steal_cell(o));
    if o.errors() > 0 {
        let _ = write!(s, "; **{} errors**", o.errors());
    }
    if o.verification_failed() {
        s.push_str("; **verification failed**");
    }
    s
}

/// Servers of a scenario from best to worst by CPU per operation (RSS per connection
/// for the idle scenario).
fn ranking(sc: &Scenario, outcomes: &[Outcome]) -> String {
    let key = |o: &Outcome| {
        if sc.mode == "idle" {
            o.median(|j| j.rss_per_conn_bytes)
        } else {
            o.cpu_per_op_us()
        }
    };
    let mut ranked: Vec<(&str, f64)> = outcomes
        .iter()
        .filter_map(|o| Some((o.server.as_str(), key(o)?)))
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    ranked
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" < ")
}

/// The machine-readable report: every run's `loadgen` output and the micro-benchmarks'
/// estimates.
pub(super) fn report_json(results: &Results<'_>, micro: &[Estimate], h: &Header<'_>) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|(sc, outcomes)| {
            json!({
                "scenario": sc.name,
                "about": sc.about,
                "servers": outcomes.iter().map(|o| json!({
                    "server": o.server,
                    "duo": o.duo,
                    "median_rate": o.rate(),
                    "median_server_cpu_per_op_us": o.cpu_per_op_us(),
                    "median_db_cpu_per_op_us": o.db_cpu_stats().map(|s| s.median),
                    "median_steal_pct": o.steal_stats().map(|s| s.median),
                    "steal_repeats": o.repeats(),
                    "runs": o.runs.iter().map(|r| json!({
                        "server_cpu_secs": r.cpu.map(|c| c.as_secs_f64()),
                        "server_cpu_per_op_us": r.cpu_per_op_us(),
                        "db_cpu_secs": r.db_cpu.map(|c| c.as_secs_f64()),
                        "db_cpu_per_op_us": r.db_cpu_per_op_us(),
                        "steal_pct": r.steal_pct,
                        "attempts": r.attempts,
                        "steal_high": r.steal_high,
                        "loadgen": r.result.as_ref().ok(),
                        "error": r.result.as_ref().err(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let postgres = results
        .iter()
        .any(|(sc, _)| sc.target.on_postgres())
        .then(|| {
            let s = PgSummary::of(results);
            let targets: Vec<Value> = s
                .targets()
                .iter()
                .map(|t| json!({"target": t.name, "value": t.value, "met": t.met}))
                .collect();
            json!({"summary": s, "targets": targets})
        });
    json!({
        "command": h.command,
        "machine": h.machine,
        "secs": h.secs,
        "unix_time": unix_now(),
        "skipped": h.skipped,
        "max_steal_pct": h.steal.max_pct,
        "steal_retries": h.steal.retries,
        "tail": tail_rows(results).iter().map(|r| r.json(true)).collect::<Vec<_>>(),
        "tail_models": model_rows(results).iter().map(|r| r.json(false)).collect::<Vec<_>>(),
        "micro": micro,
        "scenarios": scenarios,
        "postgres": postgres,
    })
}

/// Writes `throughput.svg`, `cpu.svg` and `latency.svg` into `dir`.
pub(super) fn write_charts(dir: &Path, results: &Results<'_>) -> Result<(), Failure> {
    let servers: Vec<&str> = ECHO_SERVERS.iter().map(|s| s.name).collect();
    let groups = |value: &dyn Fn(&Outcome) -> Option<f64>| -> Vec<(&str, Vec<Option<f64>>)> {
        results
            .iter()
            .filter(|(sc, _)| sc.target == Target::Echo && sc.mode != "idle")
            .map(|(sc, os)| {
                // One bar slot per server of the list, in its order (a scenario runs
                // only some of them).
                let by_name = servers
                    .iter()
                    .map(|name| os.iter().find(|o| o.server == *name).and_then(value));
                (sc.name, by_name.collect())
            })
            .collect()
    };
    write(
        &dir.join("throughput.svg"),
        &svg::relative_bars(
            "throughput relative to the best server (higher is better)",
            &servers,
            &groups(&Outcome::rate),
            false,
        ),
    )?;
    write(
        &dir.join("cpu.svg"),
        &svg::relative_bars(
            "server CPU per operation relative to the best (lower is better)",
            &servers,
            &groups(&Outcome::cpu_per_op_us),
            true,
        ),
    )?;
    let rows: Vec<(String, f64, f64)> = results
        .iter()
        .filter(|(sc, _)| sc.mode == "rr" && sc.target == Target::Echo)
        .flat_map(|(_, os)| os.iter())
        .filter_map(|o| {
            Some((
                o.server.clone(),
                o.median(|j| j.p50_us)?,
                o.median(|j| j.p99_us)?,
            ))
        })
        .collect();
    write(
        &dir.join("latency.svg"),
        &svg::latency_bars("rr-100x64 latency: p50 (dark) and p99 (light), µs", &rows),
    )
}

const DOCS_BEGIN: &str = "<!-- bench:begin -->";
const DOCS_END: &str = "<!-- bench:end -->";

/// Replaces the end-to-end section of `docs/benchmarks.md` (between the markers) with
/// this run's report.
pub(super) fn update_docs(md: &str) -> Result<(), Failure> {
    let path = root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path)
        .map_err(|e| Failure::Run(format!("{}: {e}", path.display())))?;
    let (Some(b), Some(e)) = (doc.find(DOCS_BEGIN), doc.find(DOCS_END)) else {
        return Err(Failure::Run(format!(
            "{} lacks the {DOCS_BEGIN} ... {DOCS_END} markers",
            path.display()
        )));
    };
    let new = format!("{}{DOCS_BEGIN}\n{md}{}", &doc[..b], &doc[e..]);
    write(&path, &new)
}

/// Marks a cell whose figures include a run where every attempt had high steal.
const STEAL_MARK: &str = "‡";

/// A server's median steal over its kept runs, marked when one of them had high steal
/// in every attempt.
fn steal_cell(o: &Outcome) -> String {
    let mark = if o.steal_high() {
        format!(" {STEAL_MARK}")
    } else {
        String::new()
    };
    format!("{}{mark}", fmt_steal(o.steal_stats().map(|s| s.median)))
}

/// What steal time is, the threshold, and how many runs it made repeat.
fn steal_note(md: &mut String, results: &Results<'_>, h: &Header<'_>) {
    let outcomes = || results.iter().flat_map(|(_, os)| os.iter());
    let runs: usize = outcomes().map(|o| o.runs.len()).sum();
    let repeated = outcomes()
        .flat_map(|o| o.runs.iter())
        .filter(|r| r.attempts > 1)
        .count();
    let attempts: u32 = outcomes().map(Outcome::repeats).sum();
    let spoiled = outcomes()
        .flat_map(|o| o.runs.iter())
        .filter(|r| r.steal_high)
        .count();
    let worst = outcomes()
        .flat_map(|o| o.runs.iter())
        .filter_map(|r| r.steal_pct)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let _ = writeln!(
        md,
        "Steal: the hypervisor's steal time over each run (the load generator's whole \
         run, from the `cpu` line of `/proc/stat`: stolen ticks over all ticks of the \
         machine), as a share of the machine's CPU time; every cell gives the median \
         over its runs. Time stolen from a vCPU stalls whatever runs on it, so it shows \
         in tail latency first, then in throughput. A run with more than {} % steal is \
         made again at once (before the next server's, keeping the repetitions \
         interleaved), up to {} more time(s); the first attempt under the threshold \
         is kept, else the one with the least steal, and its cell is marked \
         {STEAL_MARK}. This report: {repeated} of {runs} run(s) repeated ({attempts} \
         extra attempt(s)), {spoiled} kept with high steal, highest steal of a kept \
         run {}.\n",
        h.steal.max_pct,
        h.steal.retries,
        fmt_steal(worst)
    );
}
