//! The soak's output: progress lines, the summary on stdout, `report.md` and the charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::hostile::Hostile;
use super::judge::{Check, Verdict};
use super::lanes::{LaneResult, LANES};
use super::sample::{Mark, Proc, Sample, Srv};
use super::{
    COOL_DOWN, FD_SETTLE, IDLE_CONNS, IDLE_HOLD, IDLE_TIMEOUT, RSS_SLACK_KIB, RSS_TOLERANCE,
    WARM_UP_FRACTION,
};
use crate::report::{machine, markdown};

/// How the soak ran, for the report's first lines.
pub(super) struct RunInfo {
    pub(super) command: String,
    pub(super) secs: u64,
    pub(super) interval: Duration,
    pub(super) build_secs: f64,
    pub(super) wall_secs: f64,
    pub(super) clients_gone: f64,
}

/// Error counts by kind, on one line.
pub(super) fn fmt_errors(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A progress line: every server's figures in `sample`.
pub(super) fn print_progress(sample: Option<&Sample>, servers: &[Srv]) {
    let Some(s) = sample else { return };
    let mut line = format!("  t={:>6.1}s {:<16}", s.t, s.mark.label());
    for (srv, p) in servers.iter().zip(&s.procs) {
        match p {
            Some(p) => {
                let _ = write!(
                    line,
                    " | {} rss {:>7} KiB fds {:>5} thr {:>2}",
                    srv.name, p.rss_kib, p.fds, p.threads
                );
                if let Some(c) = p.conns {
                    let _ = write!(line, " conns {c:>5}");
                }
            }
            None => {
                let _ = write!(line, " | {} GONE", srv.name);
            }
        }
    }
    println!("{line}");
}

/// The table cells of one server's sample.
fn fmt_proc(p: &Option<Proc>) -> [String; 4] {
    match p {
        Some(p) => [
            p.rss_kib.to_string(),
            p.anon_kib.to_string(),
            p.fds.to_string(),
            format!(
                "{}{}",
                p.threads,
                p.conns.map_or(String::new(), |c| format!(" / {c}"))
            ),
        ],
        None => ["gone".into(), "-".into(), "-".into(), "-".into()],
    }
}

/// The summary on stdout: checks, lanes, hostile clients.
pub(super) fn print_summary(
    run: &RunInfo,
    lanes: &[LaneResult],
    hostile: &[Arc<Hostile>],
    checks: &[Check],
) {
    println!(
        "\n== soak summary ({} s of load; build {:.1} s, wall {:.1} s)",
        run.secs, run.build_secs, run.wall_secs
    );
    println!("\n{:<40} {:<6} {:<50} result", "check", "server", "value");
    for c in checks {
        println!(
            "{:<40} {:<6} {:<50} {}",
            c.what,
            c.server,
            c.value,
            if c.ok { "ok" } else { "FAIL" }
        );
    }
    println!(
        "\n{:<18} {:>5} {:>12} {:>10}  errors",
        "loadgen lane", "runs", "work", "conserved"
    );
    for (lane, r) in LANES.iter().zip(lanes) {
        println!(
            "{:<18} {:>5} {:>12} {:>10}  {}",
            lane.name,
            r.runs,
            r.work,
            r.conserved_cell(lane),
            r.errors_cell()
        );
    }
    println!(
        "\n{:<22} {:>7} {:>8} {:>10} {:>8} {:>8} {:>20} {:>9}",
        "hostile clients",
        "conns",
        "conn err",
        "MiB sent",
        "closed",
        "replies",
        "evicted(max)+warm-up",
        "anomalies"
    );
    for h in hostile {
        let [name, conns, failed, mib, closed, replies, evicted, anomalies] = hostile_cells(h);
        println!(
            "{name:<22} {conns:>7} {failed:>8} {mib:>10} {closed:>8} {replies:>8} {evicted:>20} \
             {anomalies:>9}"
        );
    }
    println!();
}

/// One hostile kind's figures: name, connections, connect failures, MiB sent, closed by
/// the server, reply lines, evictions, anomalies.
fn hostile_cells(h: &Hostile) -> [String; 8] {
    [
        h.name.to_owned(),
        h.get(&h.conns).to_string(),
        h.get(&h.connect_failed).to_string(),
        format!("{:.1}", h.get(&h.bytes_sent) as f64 / (1024.0 * 1024.0)),
        h.get(&h.closed_by_server).to_string(),
        h.get(&h.replies).to_string(),
        evicted_text(h),
        h.get(&h.anomalies).to_string(),
    ]
}

/// The slow readers' evictions (longest wait) and warm-up cycles, or `-`.
fn evicted_text(h: &Hostile) -> String {
    if h.name.contains("slow") {
        format!(
            "{} ({:.1}s) +{}w",
            h.get(&h.evicted),
            h.get(&h.max_evict_ms) as f64 / 1000.0,
            h.get(&h.warm_cycles)
        )
    } else {
        "-".into()
    }
}

/// `report.md`.
pub(super) fn report_md(
    run: &RunInfo,
    servers: &[Srv],
    samples: &[Sample],
    lanes: &[LaneResult],
    hostile: &[Arc<Hostile>],
    verdict: &Verdict,
) -> String {
    let (checks, logs, failures) = (&verdict.checks, &verdict.logs, &verdict.failures);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak report\n\nCommand: `{}`: {} s of load (warm-up {:.0} s), then the clients \
         stop and a cool-down of {} s plus up to {} s for descriptors to settle; samples \
         every {} s. The last client was gone {:.1} s after the load started. Build {:.1} s, \
         wall time {:.1} s. Machine: {}.\n",
        run.command,
        run.secs,
        run.secs as f64 * WARM_UP_FRACTION,
        COOL_DOWN.as_secs(),
        FD_SETTLE.as_secs(),
        run.interval.as_secs(),
        run.clients_gone,
        run.build_secs,
        run.wall_secs,
        machine()
    );
    let _ = writeln!(
        md,
        "**Result: {}**\n",
        if failures.is_empty() { "PASS" } else { "FAIL" }
    );
    for f in failures {
        let _ = writeln!(md, "- {f}");
    }
    if !failures.is_empty() {
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Servers: `echo serve --io-threads 2 --idle-timeout {idle} --stats-interval 1`; \
         `bank serve --io-threads 1 --workers 2 --idle-timeout {idle} --hash-cost low` \
         (low-cost password hashes keep account set-up fast; a fresh database per soak).\n\n\
         The RSS check compares the highest VmRSS sampled during warm-up (every second, \
         under the full mix of load) with VmRSS after the cool-down, once every client is \
         gone: memory the servers keep after the load beyond what the same mix needed at \
         its peak in warm-up is memory not given back, a leak, while the high-water marks \
         of pools and allocators (reached in warm-up) and per-connection memory (gone with \
         the connections) do not count. Allowed: +{:.0} % or +{} KiB, whichever is more. \
         Descriptors are compared with the baseline sampled after a short priming run.\n",
        RSS_TOLERANCE * 100.0,
        RSS_SLACK_KIB,
        idle = IDLE_TIMEOUT.as_secs()
    );
    md.push_str(&checks_md(checks));
    md.push_str(&samples_md(servers, samples));
    md.push_str(&lanes_md(lanes));
    md.push_str(&hostile_md(hostile));
    let _ = writeln!(md, "\n## Server logs\n");
    for (s, l) in servers.iter().zip(logs) {
        let _ = writeln!(
            md,
            "- `{}`: {} warnings, {} errors, {} panics",
            s.log.display(),
            l.warn,
            l.error,
            l.panics
        );
        let mut kinds: Vec<(&String, &u64)> = l.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in kinds.into_iter().take(8) {
            let _ = writeln!(md, "  - {n} × `{}`", k.replace('`', "'"));
        }
    }
    md
}

fn checks_md(checks: &[Check]) -> String {
    let rows = checks.iter().map(|c| {
        [
            c.what.to_owned(),
            c.server.to_owned(),
            c.value.clone(),
            if c.ok { "ok" } else { "**FAIL**" }.to_owned(),
        ]
    });
    format!(
        "## Checks\n\n{}",
        markdown::table(&["check", "server", "value", "result"], rows)
    )
}

/// The samples at the phase boundaries and every `interval`, one row each.
fn samples_md(servers: &[Srv], samples: &[Sample]) -> String {
    let mut header = vec!["t (s)".to_owned(), "phase".to_owned()];
    for s in servers {
        let conns = if s.name == "echo" { " / conns" } else { "" };
        header.extend([
            format!("{} VmRSS KiB", s.name),
            format!("{} RssAnon KiB", s.name),
            format!("{} fds", s.name),
            format!("{} threads{conns}", s.name),
        ]);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows = samples.iter().filter(|s| s.mark != Mark::Fine).map(|s| {
        let mut row = vec![format!("{:.1}", s.t), s.mark.label().to_owned()];
        row.extend(s.procs.iter().flat_map(fmt_proc));
        row
    });
    format!(
        "\n## Samples\n\n![VmRSS](rss.svg)\n\n![descriptors](fds.svg)\n\n{}",
        markdown::table(&header, rows)
    )
}

fn lanes_md(lanes: &[LaneResult]) -> String {
    let rows = LANES.iter().zip(lanes).map(|(lane, r)| {
        let options = if lane.mode == "idle" {
            format!("--conns {IDLE_CONNS} --hold {}", IDLE_HOLD.as_secs())
        } else {
            lane.args.join(" ")
        };
        [
            lane.name.to_owned(),
            format!("`{} {options}`", lane.mode),
            r.runs.to_string(),
            r.work.to_string(),
            r.conserved_cell(lane),
            r.errors_cell(),
        ]
    });
    format!(
        "\n## loadgen lanes (all at once, one run after another)\n\n{}",
        markdown::table(
            &[
                "lane",
                "mode and options",
                "runs",
                "work",
                "bank totals conserved",
                "errors",
            ],
            rows,
        )
    )
}

fn hostile_md(hostile: &[Arc<Hostile>]) -> String {
    format!(
        "\n## Hostile clients\n\n{}",
        markdown::table(
            &[
                "kind",
                "conns",
                "connect failures",
                "MiB sent",
                "closed by server",
                "reply lines",
                "slow readers evicted (longest wait) +w short warm-up cycles",
                "anomalies",
            ],
            hostile.iter().map(|h| hostile_cells(h)),
        )
    )
}
