//! The modes, and what they have in common: the run's environment and per-thread tallies.

pub(crate) mod bank;
pub(crate) mod churn;
pub(crate) mod echo;
pub(crate) mod idle;
pub(crate) mod open_loop;
pub(crate) mod procs;
pub(crate) mod udp;

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use crate::engine::Options;
use crate::fault::{Fault, Faults};
use crate::host::FdBudget;
use crate::latency::Latency;
use crate::net::{source_addr, Target};
use crate::report::Report;
use crate::runner::{share, ServerCpu};

/// Connects in flight at most per thread, for the modes that have no `--batch`.
const CONNECT_BATCH: usize = 512;

/// What every mode runs with.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    /// The server (a loopback address).
    pub(crate) target: Target,
    /// `--threads`.
    pub(crate) threads: usize,
    /// `--timeout`.
    pub(crate) timeout: Duration,
    /// The run's random seed.
    pub(crate) seed: u64,
    /// The open-file limit.
    pub(crate) fds: FdBudget,
    /// `--server-pid`.
    pub(crate) server_pid: Option<u32>,
    /// `--reconnect`: an orderly close by the server is counted apart and the connection
    /// reopened, not an error.
    pub(crate) reconnect: bool,
    /// The index of the first source address this process uses (`idle --procs`: each
    /// process has its own addresses, so their local ports never collide).
    pub(crate) source_base: usize,
}

impl Env {
    /// `wanted` connections, or fewer if the open-file limit does not allow that many
    /// (with a note in the report saying so).
    pub(crate) fn cap_conns(&self, wanted: u64, report: &mut Report) -> u64 {
        report.fd_limit = Some(self.fds.soft);
        if wanted <= self.fds.max_conns {
            return wanted;
        }
        let got = self.fds.max_conns.max(1);
        let why = match &self.fds.raise_error {
            Some(e) => format!("raising it failed: {e}"),
            None if self.fds.soft >= self.fds.hard => {
                "it is already at the hard limit; raise that (ulimit -Hn, limits.conf) for more"
                    .to_owned()
            }
            None => "it could not be raised further".to_owned(),
        };
        let note = format!(
            "open-file limit {} (hard {}) allows {got} connections, not {wanted}: capped; {why}",
            self.fds.soft, self.fds.hard
        );
        eprintln!("loadgen: {note}");
        report.notes.push(note);
        report.requested_conns = Some(wanted);
        got
    }

    /// Threads for `conns` connections: no more threads than connections.
    pub(crate) fn threads_for(&self, conns: u64) -> usize {
        self.threads.min(conns.max(1) as usize).max(1)
    }

    /// Engine options with `max_connecting` connects in flight.
    pub(crate) fn options(&self, max_connecting: usize) -> Options {
        Options {
            max_connecting,
            timeout: self.timeout,
            retry_delay: Duration::from_millis(10),
            reconnect: self.reconnect,
            budget_until_reply: false,
        }
    }

    /// Engine options for the modes without `--batch`.
    pub(crate) fn default_options(&self) -> Options {
        self.options(CONNECT_BATCH)
    }

    /// The seed of connection `i`.
    pub(crate) fn seed_for(&self, i: usize) -> u64 {
        self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The sessions of one worker thread's `part`, each made by `make` from its
    /// connection's seed, with the source address it connects from.
    pub(crate) fn sessions<S>(
        &self,
        part: Part,
        mut make: impl FnMut(u64) -> S,
    ) -> Vec<(S, Option<IpAddr>)> {
        share(part.conns, part.threads, part.t)
            .map(|i| {
                let source = source_addr(&self.target, part.sources, self.source_base, i);
                (make(self.seed_for(i)), source)
            })
            .collect()
    }
}

/// One worker thread's part of a mode's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    /// The thread's index.
    pub(crate) t: usize,
    /// Worker threads.
    pub(crate) threads: usize,
    /// Connections of the whole run.
    pub(crate) conns: usize,
    /// Source addresses to spread the connections over (0: the kernel chooses).
    pub(crate) sources: usize,
}

impl Part {
    /// Thread `t` of `threads`, of `conns` connections spread over `sources` addresses.
    pub(crate) fn new(t: usize, threads: usize, conns: usize, sources: usize) -> Part {
        Part {
            t,
            threads,
            conns,
            sources,
        }
    }
}

/// What one worker thread measured.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Completed units of work.
    pub(crate) msgs: u64,
    /// Payload bytes echoed.
    pub(crate) bytes: u64,
    /// Latency of each unit of work.
    pub(crate) latency: Latency,
    /// Failures.
    pub(crate) faults: Faults,
    /// Length of the measured phase on this thread.
    pub(crate) elapsed: Duration,
    /// Connections open when the measured phase started.
    pub(crate) established: u64,
    /// Connections established at any time of the run (UDP: datagrams that came back):
    /// 0 when the server was never reached ([`fail_if_unreached`]).
    pub(crate) reached: u64,
    /// `--reconnect`: connections the server closed in an orderly way.
    pub(crate) server_closed: u64,
    /// `--reconnect`: requests outstanding on them when they closed.
    pub(crate) unanswered_on_close: u64,
    /// Connections still waiting for the server when the measured phase ended.
    pub(crate) waiting_at_end: u64,
    /// `rr --rate`: what the schedules achieved.
    pub(crate) open_loop: open_loop::RateCounts,
}

impl Tally {
    /// Adds another thread's tally (the elapsed time is the longest of the two).
    pub(crate) fn merge(&mut self, other: &Tally) {
        self.msgs += other.msgs;
        self.bytes += other.bytes;
        self.latency.merge(&other.latency);
        self.faults.merge(&other.faults);
        self.elapsed = self.elapsed.max(other.elapsed);
        self.established += other.established;
        self.reached += other.reached;
        self.server_closed += other.server_closed;
        self.unanswered_on_close += other.unanswered_on_close;
        self.waiting_at_end += other.waiting_at_end;
        self.open_loop.merge(&other.open_loop);
    }

    /// Fills the report's throughput, latency and error fields.
    pub(crate) fn fill(&self, report: &mut Report, with_bytes: bool) {
        let secs = self.elapsed.as_secs_f64();
        let per_sec = |n: u64| (secs > 0.0).then(|| n as f64 / secs);
        report.elapsed_secs = Some(secs);
        report.msgs = Some(self.msgs);
        report.msgs_per_sec = per_sec(self.msgs);
        if with_bytes {
            report.bytes = Some(self.bytes);
            report.mib_per_sec = per_sec(self.bytes).map(|b| b / (1024.0 * 1024.0));
        }
        report.latency = self.latency.summary();
        report.errors.merge(&self.faults);
        // Not one unit of work, and the server still owes answers: it accepts and never
        // answers (in a run shorter than `--timeout`, no `timeout` was counted). An
        // error, so that `--strict` fails the run.
        if self.msgs == 0 {
            report.errors.add(Fault::Unanswered, self.waiting_at_end);
        }
        fail_if_unreached(report, self.reached);
    }

    /// Fills the `--reconnect` counts of the report.
    pub(crate) fn fill_closes(&self, report: &mut Report) {
        report.server_closed = Some(self.server_closed);
        report.unanswered_on_close = Some(self.unanswered_on_close);
    }
}

/// Fails `report` when `reached` is 0: no connection was ever established (UDP: no
/// datagram ever came back), so the run measured nothing. Its zeros are no result, and
/// a script must not take them for one: the run exits 1, with or without `--strict`,
/// saying so and why (the errors counted).
pub(crate) fn fail_if_unreached(report: &mut Report, reached: u64) {
    if reached > 0 || report.failure.is_some() {
        return;
    }
    let addr = report.addr.as_deref().unwrap_or("the server");
    let what = if report.mode == "udp-rr" {
        format!("no datagram ever came back from {addr}")
    } else {
        format!("no connection to {addr} was ever established")
    };
    let errors: Vec<String> = report
        .errors
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let why = if errors.is_empty() {
        "no error counted".to_owned()
    } else {
        format!("errors: {}", errors.join(", "))
    };
    report.failure = Some(format!("{what} ({why}); nothing was measured"));
}

/// Fills `report` with the server's CPU time and the workers' merged tallies (`bytes`
/// too with `with_bytes`); returns the merged tally.
pub(crate) fn finish(
    report: &mut Report,
    cpu: ServerCpu,
    results: Vec<io::Result<Tally>>,
    with_bytes: bool,
) -> Result<Tally, String> {
    cpu.fill(report);
    let tally = merge_all(results, Tally::merge)?;
    tally.fill(report, with_bytes);
    Ok(tally)
}

/// Merges the workers' results; the first worker error (creating an epoll instance,
/// waiting on it) is fatal to the run.
pub(crate) fn merge_all<T>(
    results: Vec<io::Result<T>>,
    mut merge: impl FnMut(&mut T, &T),
) -> Result<T, String> {
    let mut total: Option<T> = None;
    for r in results {
        let r = r.map_err(|e| format!("worker thread failed: {e}"))?;
        match &mut total {
            None => total = Some(r),
            Some(t) => merge(t, &r),
        }
    }
    total.ok_or_else(|| "no worker thread ran".to_owned())
}
