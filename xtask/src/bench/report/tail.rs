//! The report's request/response tail comparison: duo against a peer with the same
//! number of serving threads, p99 and p99.9, with the steal of those runs.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::super::outcome::{spread, Outcome, Stats};
use super::super::scenarios::TAIL_SCENARIO;
use super::{steal_cell, Results, STEAL_MARK};
use crate::report::markdown;

/// One line of the tail-latency comparison: a duo server against a peer with the same
/// number of serving threads, in the rr scenario.
pub(super) struct TailRow<'a> {
    threads: &'static str,
    duo: &'a Outcome,
    peer: &'a Outcome,
}

/// The comparisons the issue asks for: one thread (`duo-0` strict, `duo-1` same layout,
/// against `tokio-1`) and two (`duo-2` against `tokio`; also `duo-2-busy`, busy polling,
/// and `duo-2-loops`/`duo-2-loops64`, 16 and 64 loops on the two threads).
const TAIL_PAIRS: &[(&str, &str, &str)] = &[
    ("1", "duo-0", "tokio-1"),
    ("1", "duo-1", "tokio-1"),
    ("2", "duo-2", "tokio"),
    ("2", "duo-2-busy", "tokio"),
    ("2", "duo-2-loops", "tokio"),
    ("2", "duo-2-loops64", "tokio"),
];

/// The control experiment: the raw epoll server at two threads in duo's threading model
/// (a connection per thread), in tokio's (work sharing) and in between (a connection per
/// reactor, reactors shared by the threads, or owned by them and helped), each against
/// tokio.
const MODEL_PAIRS: &[(&str, &str, &str)] = &[
    ("2", "raw-epoll-2", "tokio"),
    ("2", "raw-epoll-2-shared", "tokio"),
    ("2", "raw-epoll-2-loops", "tokio"),
    ("2", "raw-epoll-2-flat", "tokio"),
];

pub(super) fn tail_rows<'a>(results: &'a Results<'_>) -> Vec<TailRow<'a>> {
    rows_of(results, TAIL_PAIRS)
}

/// The rows of [`MODEL_PAIRS`] this run has.
pub(super) fn model_rows<'a>(results: &'a Results<'_>) -> Vec<TailRow<'a>> {
    rows_of(results, MODEL_PAIRS)
}

fn rows_of<'a>(
    results: &'a Results<'_>,
    pairs: &'static [(&'static str, &'static str, &'static str)],
) -> Vec<TailRow<'a>> {
    let Some((_, outcomes)) = results.iter().find(|(sc, _)| sc.name == TAIL_SCENARIO) else {
        return Vec::new();
    };
    let get = |name: &str| outcomes.iter().find(|o| o.server == name && !o.failed());
    pairs
        .iter()
        .filter_map(|(threads, duo, peer)| {
            Some(TailRow {
                threads,
                duo: get(duo)?,
                peer: get(peer)?,
            })
        })
        .collect()
}

/// p99 and p99.9 of a server's runs.
pub(super) fn p99(o: &Outcome) -> Option<Stats> {
    o.stats(|j| j.p99_us)
}

fn p999(o: &Outcome) -> Option<Stats> {
    o.stats(|j| j.p999_us)
}

/// `duo / peer` of two medians.
fn median_ratio(duo: Option<Stats>, peer: Option<Stats>) -> Option<f64> {
    match (duo, peer) {
        (Some(d), Some(p)) if p.median > 0.0 => Some(d.median / p.median),
        _ => None,
    }
}

impl TailRow<'_> {
    fn p99_ratio(&self) -> Option<f64> {
        median_ratio(p99(self.duo), p99(self.peer))
    }

    fn p999_ratio(&self) -> Option<f64> {
        median_ratio(p999(self.duo), p999(self.peer))
    }

    /// duo's CPU per request over the peer's: what the tail costs.
    fn cpu_ratio(&self) -> Option<f64> {
        median_ratio(self.duo.cpu_stats(), self.peer.cpu_stats())
    }

    /// The row as JSON; `target`: with whether duo's target (≤ 1) is met (not for a
    /// comparison of peers).
    pub(super) fn json(&self, target: bool) -> Value {
        let st =
            |s: Option<Stats>| s.map(|s| json!({"median": s.median, "min": s.min, "max": s.max}));
        json!({
            "threads": self.threads,
            "duo": self.duo.server,
            "peer": self.peer.server,
            "duo_p99_us": st(p99(self.duo)),
            "peer_p99_us": st(p99(self.peer)),
            "p99_ratio": self.p99_ratio(),
            "duo_p999_us": st(p999(self.duo)),
            "peer_p999_us": st(p999(self.peer)),
            "p999_ratio": self.p999_ratio(),
            "p99_met": self.p99_ratio().filter(|_| target).map(|r| r <= 1.0),
            "p999_met": self.p999_ratio().filter(|_| target).map(|r| r <= 1.0),
            "cpu_ratio": self.cpu_ratio(),
            "duo_steal_pct": self.duo.steal_stats().map(|s| s.median),
            "peer_steal_pct": self.peer.steal_stats().map(|s| s.median),
            "steal_high": self.duo.steal_high() || self.peer.steal_high(),
        })
    }
}

/// duo's request/response tail against tokio's at one and at two serving threads, with
/// the target (duo ≤ tokio) and the steal of those runs.
pub(super) fn tail_table(md: &mut String, results: &Results<'_>) {
    let rows = tail_rows(results);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nTail latency, {TAIL_SCENARIO} (100 connections, one 64 B request at a time \
         each): p99 and p99.9 in µs, medians (min-max) over the repetitions of this run, \
         duo and tokio interleaved; target: duo / tokio ≤ 1 for both, at one and at two \
         serving threads. `duo-0` / `tokio-1` is the strict one-thread comparison (duo \
         accepts and serves on its one thread, tokio accepts on its main thread); \
         `duo-1` / `tokio-1` has the same layout on both sides (an idle accepting or \
         main thread, one serving thread). CPU per request: the ratio of the medians, \
         what each row's tail costs (`duo-2-loops` and `duo-2-loops64` pay a turn's \
         overhead for theirs). Steal: medians of the duo / tokio runs ({STEAL_MARK}: a \
         run kept with high steal).\n"
    );
    rows_table(md, &rows, true);
}

/// The tail of a server with no duo code in it, in four threading models, against
/// tokio's: what the two-thread gap above comes from.
pub(super) fn models_table(md: &mut String, results: &Results<'_>) {
    let rows = model_rows(results);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nThe same tail for four threading models without duo's code: the raw epoll \
         server on 2 threads with a connection per thread (`raw-epoll-2`, `SO_REUSEPORT`: \
         duo's and muduo's model), with any thread serving any connection \
         (`raw-epoll-2-shared`, one epoll set, `EPOLLONESHOT`: work sharing, tokio's \
         model), with a connection per reactor but any thread running any reactor's \
         next turn (`raw-epoll-2-loops`: 16 reactors, each an epoll set and a \
         `SO_REUSEPORT` listener, their epoll sets `EPOLLONESHOT` in one outer set), and \
         with reactors owned by the threads, their descriptors in one epoll set per \
         thread, served by the other thread when their owner makes no progress for \
         200 µs (`raw-epoll-2-flat`: 64 reactors), each against tokio (here the \"duo\" \
         columns are the raw server's).\n"
    );
    rows_table(md, &rows, false);
}

/// The rows as a table; `target`: the ratios are judged against duo's target (≤ 1),
/// otherwise shown plain (a comparison of peers).
fn rows_table(md: &mut String, rows: &[TailRow<'_>], target: bool) {
    let n = |o: &Outcome| o.runs.len();
    let us = |st: Option<Stats>, runs: usize| spread(st, runs, |v| format!("{v:.0}"));
    let met = |r: Option<f64>| match r {
        Some(r) if !target => format!("{r:.2}"),
        Some(r) if r <= 1.0 => format!("{r:.2}, met"),
        // Three decimals where two would read as 1.00.
        Some(r) if r < 1.005 => format!("{r:.3}, **not met**"),
        Some(r) => format!("{r:.2}, **not met**"),
        None => "-".into(),
    };
    md.push_str(&markdown::table(
        &[
            "threads",
            "duo / peer",
            "p99 duo",
            "p99 peer",
            if target {
                "p99 duo/peer ≤ 1"
            } else {
                "p99 ratio"
            },
            "p99.9 duo",
            "p99.9 peer",
            if target {
                "p99.9 duo/peer ≤ 1"
            } else {
                "p99.9 ratio"
            },
            "CPU per request duo/peer",
            "steal duo / peer",
        ],
        rows.iter().map(|r| {
            [
                r.threads.to_owned(),
                format!("{} / {}", r.duo.server, r.peer.server),
                us(p99(r.duo), n(r.duo)),
                us(p99(r.peer), n(r.peer)),
                met(r.p99_ratio()),
                us(p999(r.duo), n(r.duo)),
                us(p999(r.peer), n(r.peer)),
                met(r.p999_ratio()),
                r.cpu_ratio()
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                format!("{} / {}", steal_cell(r.duo), steal_cell(r.peer)),
            ]
        }),
    ));
}
