//! `idle`: many open, quiet connections, and what they cost the server in memory.
//!
//! Connections are opened with non-blocking connects, `--batch` in flight per thread, from
//! source addresses 127.0.0.2, 127.0.0.3, ... (`--per-source` connections each at most), each
//! bound before the connect with port 0. Why at most 10 000 per address by default: to pick
//! a port for `bind`, Linux searches the odd half of the ephemeral range (about 14 000
//! ports of 32768-60999) before the even half, and once that half is full each `bind`
//! scans all of it: measured here, 19 000 connections from one address stalled at about
//! 14 300 (under 2 000 connects/s), while two addresses opened all 19 000 in 0.8 s. Each is confirmed with an 8-byte echo.
//! When all are confirmed (or `--timeout` is up) the connections are held for `--hold`
//! seconds, during which a connection the server closes counts as an error. With `--pid`
//! the server's VmRSS is read before connecting and at the end of the hold.

use std::io;
use std::time::{Duration, Instant};

use crate::cli::IdleArgs;
use crate::engine::{Ctx, Engine, Session, Step};
use crate::fault::{Fault, Faults};
use crate::host::rss_kib;
use crate::modes::{merge_all, Env, Part};
use crate::report::Report;
use crate::runner::{run_threads, Ticket};
use duo_testkit::Rng as XorShift;

/// Bytes of the echo that confirms a connection.
const PROBE: usize = 8;
/// How often the server's RSS is read while holding.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Runs `idle`.
pub(crate) fn run(args: &IdleArgs, env: &Env) -> Result<Report, String> {
    let mut report = Report {
        mode: "idle",
        unit: "confirmed",
        addr: Some(env.target),
        size: Some(PROBE as u64),
        ..Report::default()
    };
    let conns = env.cap_conns(args.conns, &mut report) as usize;
    let threads = env.threads_for(conns as u64);
    report.threads = threads;
    report.conns = Some(conns as u64);
    let sources = if env.target.is_ipv4() {
        conns.div_ceil(args.per_source as usize).max(1)
    } else {
        report
            .notes
            .push("IPv6 target: one source address (::1) only".into());
        0
    };

    if let Some(pid) = args.pid {
        match rss_kib(pid) {
            Ok(kib) => report.rss_before_kib = Some(kib),
            Err(e) => report.notes.push(e),
        }
    }

    let start = Instant::now();
    let connect_deadline = start + env.timeout;
    let batch = args.batch as usize;
    let mut connect_secs = 0.0;
    let mut hold_samples = Vec::new();
    let mut held = Duration::ZERO;
    let results = run_threads(
        threads,
        |t, ticket| {
            worker(
                env,
                Part::new(t, threads, conns, sources),
                batch,
                connect_deadline,
                ticket,
            )
        },
        |gate| {
            gate.wait_arrivals(threads, connect_deadline);
            connect_secs = start.elapsed().as_secs_f64();
            let hold_start = gate.open();
            let hold_end = hold_start + args.hold;
            // Sample through the hold; the last sample (at its end) is the one reported.
            loop {
                let now = Instant::now();
                if now >= hold_end {
                    break;
                }
                std::thread::sleep(RSS_SAMPLE_INTERVAL.min(hold_end - now));
                if let Some(pid) = args.pid {
                    hold_samples.push(rss_kib(pid));
                }
            }
            if hold_samples.is_empty() {
                if let Some(pid) = args.pid {
                    hold_samples.push(rss_kib(pid));
                }
            }
            held = hold_start.elapsed();
            gate.stop();
        },
    );
    let total = merge_all(results, IdleTally::merge)?;

    report.established = Some(total.confirmed);
    report.msgs = Some(total.confirmed);
    report.connect_secs = Some(connect_secs);
    report.elapsed_secs = Some(connect_secs);
    report.msgs_per_sec = (connect_secs > 0.0).then(|| total.confirmed as f64 / connect_secs);
    report.hold_secs = Some(held.as_secs_f64());
    report.errors.merge(&total.faults);
    match hold_samples.pop() {
        Some(Ok(kib)) => report.rss_hold_kib = Some(kib),
        Some(Err(e)) => report.notes.push(e),
        None => {}
    }
    if let (Some(before), Some(hold)) = (report.rss_before_kib, report.rss_hold_kib) {
        if total.confirmed > 0 {
            let delta = hold as f64 - before as f64;
            report.rss_per_conn_bytes = Some(delta * 1024.0 / total.confirmed as f64);
        }
    }
    if total.confirmed < conns as u64 {
        let mut note = format!("{} of {conns} connections confirmed", total.confirmed);
        if total.fd_exhausted {
            note.push_str(&format!(
                "; the open-file limit ({} soft, {} hard) was reached",
                env.fds.soft, env.fds.hard
            ));
        }
        report.notes.push(note);
    }
    if total.lost > 0 {
        report.notes.push(format!(
            "{} confirmed connections were lost while holding",
            total.lost
        ));
    }
    Ok(report)
}

/// What one thread saw.
#[derive(Debug, Default)]
struct IdleTally {
    confirmed: u64,
    lost: u64,
    faults: Faults,
    fd_exhausted: bool,
}

impl IdleTally {
    fn merge(&mut self, other: &IdleTally) {
        self.confirmed += other.confirmed;
        self.lost += other.lost;
        self.faults.merge(&other.faults);
        self.fd_exhausted |= other.fd_exhausted;
    }
}

/// One thread: open and confirm its share, then hold until told to stop.
fn worker(
    env: &Env,
    part: Part,
    batch: usize,
    connect_deadline: Instant,
    mut ticket: Ticket<'_>,
) -> io::Result<IdleTally> {
    let sessions = env.sessions(part, IdleSession::new);
    let mine = sessions.len() as u64;
    let mut engine = Engine::new(env.target, sessions, Shared::default(), env.options(batch))?;
    while engine.shared().confirmed + (engine.done_count() as u64) < mine
        && Instant::now() < connect_deadline
    {
        engine.poll(connect_deadline)?;
    }
    // Connections not even started by now count as timed out; those under way get the
    // rest of their `--timeout` (and are counted as timeouts by the engine if they fail to
    // confirm), but are not part of `established`.
    engine.cancel_pending(Fault::Timeout);
    let confirmed = engine.shared().confirmed;
    let fd_exhausted = engine.fd_exhausted();
    if ticket.arrive_and_wait(&mut engine)?.is_some() {
        while !ticket.gate().stopped() {
            engine.poll(Instant::now() + Duration::from_millis(100))?;
        }
    }
    let (shared, faults) = engine.finish();
    Ok(IdleTally {
        confirmed,
        lost: shared.lost,
        faults,
        fd_exhausted,
    })
}

/// Counters of one thread.
#[derive(Debug, Default)]
struct Shared {
    confirmed: u64,
    lost: u64,
}

/// One connection: its probe and whether it came back.
#[derive(Debug)]
struct IdleSession {
    probe: [u8; PROBE],
    received: usize,
    sent_at: Option<Instant>,
    confirmed: bool,
}

impl IdleSession {
    fn new(seed: u64) -> IdleSession {
        let mut probe = [0; PROBE];
        XorShift::new(seed).fill(&mut probe);
        IdleSession {
            probe,
            received: 0,
            sent_at: None,
            confirmed: false,
        }
    }
}

impl Session for IdleSession {
    type Shared = Shared;

    fn on_open(&mut self, ctx: &mut Ctx<'_, Shared>) -> Step {
        ctx.out.extend_from_slice(&self.probe);
        self.sent_at = Some(ctx.now);
        Step::Continue
    }

    fn on_data(&mut self, input: &[u8], ctx: &mut Ctx<'_, Shared>) -> Result<(usize, Step), Fault> {
        let expected = &self.probe[self.received..];
        if self.confirmed || input.len() > expected.len() || input != &expected[..input.len()] {
            return Err(Fault::Mismatch);
        }
        self.received += input.len();
        if self.received == PROBE {
            self.confirmed = true;
            self.sent_at = None;
            ctx.shared.confirmed += 1;
        }
        Ok((input.len(), Step::Continue))
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.sent_at
    }

    fn retry_after(&mut self, _fault: Fault, shared: &mut Shared) -> bool {
        if self.confirmed {
            shared.lost += 1;
        }
        false
    }
}
