//! `idle`: many open, quiet connections, and what they cost the server in memory.
//!
//! Connections are opened with non-blocking connects, `--batch` in flight per thread (a
//! connection is in flight until its probe comes back, so a slow server is not buried under
//! connections it has not accepted yet, see [`Options::budget_until_reply`]), from
//! source addresses 127.0.0.2, 127.0.0.3, ... (`--per-source` connections each at most), each
//! bound before the connect with port 0. Why at most 10 000 per address by default: to pick
//! a port for `bind`, Linux searches the odd half of the ephemeral range (about 14 000
//! ports of 32768-60999) before the even half, and once that half is full each `bind`
//! scans all of it: measured here, 19 000 connections from one address stalled at about
//! 14 300 (under 2 000 connects/s), while two addresses opened all 19 000 in 0.8 s. Each is
//! confirmed with an 8-byte echo. When all are confirmed (or the connect phase, see
//! [`IdleArgs::setup_limit`], is up; a connection whose echo comes after that missed it and
//! ends as a timeout, not held) the connections are held for `--hold` seconds, during
//! which a connection the server closes counts as an error. With `--pid` the server's VmRSS
//! is read before connecting and at the end of the hold.
//!
//! At the end of the hold every connection proves it still works with a second 8-byte
//! echo (other bytes than the first), `--batch` probes in flight per thread at most so
//! that a million connections do not all write at once: `verified_end`. A connection that
//! does not answer within `--timeout` (or by the end of [`IdleArgs::verify_limit`]) counts
//! as a timeout.
//!
//! As a child of `idle --procs` ([`super::procs`], `--child`), the process prints `held N`
//! on stdout when its connect phase is over, holds until a line arrives on stdin (the
//! parent says when every process is holding and the hold is over), then verifies; if
//! stdin ends first, the parent is gone and the process exits at once.

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::IdleArgs;
use crate::engine::{Ctx, Engine, Options, Session, Step};
use crate::fault::{Fault, Faults};
use crate::host::rss_kib;
use crate::modes::{fail_if_unreached, merge_all, Env, Part};
use crate::report::Report;
use crate::runner::{run_threads, Ticket};
use duo_testkit::Rng as XorShift;

/// Bytes of the echo that confirms a connection (and of the one that verifies it at the
/// end).
const PROBE: usize = 8;
/// Connects in flight per thread unless `--batch` says otherwise.
pub(crate) const DEFAULT_BATCH: u64 = 256;
/// How long past the connect deadline the workers may take to arrive at the hold.
const ARRIVAL_GRACE: Duration = Duration::from_secs(2);

/// How often the server's RSS is read while holding.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Runs `idle`.
pub(crate) fn run(args: &IdleArgs, env: &Env) -> Result<Report, String> {
    let mut report = Report {
        mode: "idle",
        unit: "confirmed",
        addr: Some(env.target.to_string()),
        size: Some(PROBE as u64),
        ..Report::default()
    };
    let conns = env.cap_conns(args.conns, &mut report) as usize;
    let threads = env.threads_for(conns as u64);
    report.threads = threads;
    report.conns = Some(conns as u64);
    let sources = if env.target.inet().is_some_and(|t| t.is_ipv4()) {
        conns.div_ceil(args.per_source as usize).max(1)
    } else if env.target.inet().is_none() {
        report
            .notes
            .push("Unix-domain target: no source addresses (--per-source unused)".into());
        0
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

    let released = args.child.then(watch_parent);
    let start = Instant::now();
    let connect_deadline = start + args.setup_limit(env.timeout);
    let verify_limit = args.verify_limit(env.timeout);
    let batch = args.batch.unwrap_or(DEFAULT_BATCH) as usize;
    let confirmed_at_hold = AtomicU64::new(0);
    let mut connect_secs = 0.0;
    let mut hold_samples = Vec::new();
    let mut held = Duration::ZERO;
    let results = run_threads(
        threads,
        |t, ticket| {
            let phases = Phases {
                batch,
                connect_deadline,
                verify_limit,
                confirmed: &confirmed_at_hold,
            };
            worker(env, Part::new(t, threads, conns, sources), &phases, ticket)
        },
        |gate| {
            // The workers stop connecting at the deadline, then count what they hold and
            // arrive: wait for them past it (bounded), or the hold line below would miss
            // their counts.
            gate.wait_arrivals(threads, connect_deadline + ARRIVAL_GRACE);
            connect_secs = start.elapsed().as_secs_f64();
            let hold_start = gate.open();
            if let Some(released) = &released {
                // A child of --procs: say so, and hold until the parent says the hold is
                // over (the watchdog bounds this wait; a gone parent ends the process).
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "held {}", confirmed_at_hold.load(Ordering::Acquire));
                let _ = out.flush();
                drop(out);
                while !released.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                held = hold_start.elapsed();
                gate.stop();
                return;
            }
            // What `cargo xtask scale` waits for before it samples memory.
            eprintln!(
                "loadgen idle: holding {} connections in 1 process",
                confirmed_at_hold.load(Ordering::Acquire)
            );
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
    report.setup_per_sec = report.msgs_per_sec;
    report.verified_end = Some(total.verified_end);
    report.verify_secs = Some(total.verify.as_secs_f64());
    report.hold_secs = Some(held.as_secs_f64());
    report.errors.merge(&total.faults);
    fail_if_unreached(&mut report, total.reached);
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
    if total.verified_end < total.confirmed {
        report.notes.push(format!(
            "{} of {} confirmed connections echoed again at the end of the hold",
            total.verified_end, total.confirmed
        ));
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
    verified_end: u64,
    /// How long the final verification took.
    verify: Duration,
    lost: u64,
    faults: Faults,
    fd_exhausted: bool,
    /// Connections established at any time (confirmed or not).
    reached: u64,
}

impl IdleTally {
    fn merge(&mut self, other: &IdleTally) {
        self.confirmed += other.confirmed;
        self.verified_end += other.verified_end;
        self.verify = self.verify.max(other.verify);
        self.lost += other.lost;
        self.faults.merge(&other.faults);
        self.fd_exhausted |= other.fd_exhausted;
        self.reached += other.reached;
    }
}

/// What every worker thread of a run shares: its limits, and where it adds its count.
#[derive(Debug)]
struct Phases<'a> {
    /// Connects (and final probes) in flight at most.
    batch: usize,
    /// The end of the connect phase.
    connect_deadline: Instant,
    /// How long the final verification may last.
    verify_limit: Duration,
    /// Connections confirmed by the end of the connect phase, over all threads.
    confirmed: &'a AtomicU64,
}

/// One thread: open and confirm its share, hold until told to stop, then verify each
/// connection again.
fn worker(
    env: &Env,
    part: Part,
    phases: &Phases<'_>,
    mut ticket: Ticket<'_>,
) -> io::Result<IdleTally> {
    let sessions = env.sessions(part, IdleSession::new);
    let mine = sessions.len() as u64;
    let opts = Options {
        budget_until_reply: true,
        ..env.options(phases.batch)
    };
    let mut engine = Engine::new(env.target.clone(), sessions, Shared::default(), opts)?;
    let connect_deadline = phases.connect_deadline;
    while engine.shared().confirmed + (engine.done_count() as u64) < mine
        && Instant::now() < connect_deadline
    {
        engine.poll(connect_deadline)?;
    }
    // Connections not even started by now count as timed out; those under way get the
    // rest of their `--timeout` to fail by themselves, but one that confirms now missed
    // the set-up: a timeout too (see `set_up_over`).
    engine.cancel_pending(Fault::Timeout);
    engine.shared_mut().set_up_over = true;
    let confirmed = engine.shared().confirmed;
    phases.confirmed.fetch_add(confirmed, Ordering::AcqRel);
    let fd_exhausted = engine.fd_exhausted();
    let mut verify = Duration::ZERO;
    if ticket.arrive_and_wait(&mut engine)?.is_some() {
        while !ticket.gate().stopped() {
            engine.poll(Instant::now() + Duration::from_millis(100))?;
        }
        let started = Instant::now();
        verify_all(&mut engine, phases.batch, started + phases.verify_limit)?;
        verify = started.elapsed();
    }
    let reached = engine.opened_total();
    let (shared, faults) = engine.finish();
    Ok(IdleTally {
        confirmed,
        verified_end: shared.verified_end,
        verify,
        lost: shared.lost,
        faults,
        fd_exhausted,
        reached,
    })
}

/// Sends every open connection its second probe, `window` in flight at most, and waits for
/// the echoes until `deadline`; a connection still open and unverified then counts as a
/// timeout.
fn verify_all(
    engine: &mut Engine<IdleSession>,
    window: usize,
    deadline: Instant,
) -> io::Result<()> {
    let slots = engine.slot_count();
    let window = window.max(1) as u64;
    let (mut next, mut sent) = (0, 0u64);
    loop {
        let shared = engine.shared();
        let mut in_flight = sent.saturating_sub(shared.verified_end + shared.lost_final);
        while in_flight < window && next < slots {
            if engine.poke(next, IdleSession::send_final) {
                sent += 1;
                in_flight += 1;
            }
            next += 1;
        }
        if (next >= slots && in_flight == 0) || Instant::now() >= deadline {
            break;
        }
        engine.poll(deadline)?;
    }
    engine.each(|session, ctx| {
        if session.stage != Stage::Verified {
            ctx.faults.count(Fault::Timeout);
        }
        Step::Continue
    });
    Ok(())
}

/// In a child of `--procs`: a thread that waits for the parent's line on stdin; returns the
/// flag it raises then. If stdin ends first, the parent is gone: the process exits at once
/// (its connections close with it).
fn watch_parent() -> Arc<AtomicBool> {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let spawned = std::thread::Builder::new()
        .name("loadgen-parent".into())
        .spawn(move || {
            let mut line = String::new();
            match io::stdin().lock().read_line(&mut line) {
                Ok(n) if n > 0 => flag.store(true, Ordering::Release),
                _ => {
                    eprintln!("loadgen idle: the parent process is gone (stdin closed); exiting");
                    std::process::exit(1);
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread the hold would never end: give up at once.
        eprintln!("loadgen idle: cannot start the thread that reads stdin: {e}");
        std::process::exit(1);
    }
    released
}

/// Counters of one thread.
#[derive(Debug, Default)]
struct Shared {
    confirmed: u64,
    /// The connect phase is over: a connection confirmed from now on missed it, and ends
    /// as a timeout rather than being held and verified without being counted as
    /// established (its memory in the server's figures, `verified_end` above
    /// `established`).
    set_up_over: bool,
    lost: u64,
    verified_end: u64,
    /// Connections asked for their second probe that failed instead.
    lost_final: u64,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first probe is out.
    Probing,
    /// The first probe came back.
    Confirmed,
    /// The second probe is out.
    Final,
    /// The second probe came back.
    Verified,
}

/// One connection: its two probes and how far it got.
#[derive(Debug)]
struct IdleSession {
    /// The first probe, then the second.
    probes: [u8; 2 * PROBE],
    stage: Stage,
    received: usize,
    sent_at: Option<Instant>,
    /// The final verification has asked for the second probe.
    final_asked: bool,
}

impl IdleSession {
    fn new(seed: u64) -> IdleSession {
        let mut probes = [0; 2 * PROBE];
        XorShift::new(seed).fill(&mut probes);
        IdleSession {
            probes,
            stage: Stage::Probing,
            received: 0,
            sent_at: None,
            final_asked: false,
        }
    }

    /// Queues the second probe. A connection whose first probe has not come back yet gets
    /// none: it missed the set-up and ends as a timeout when its echo comes (or its
    /// `--timeout` passes), counted in `lost_final`.
    fn send_final(&mut self, ctx: &mut Ctx<'_, Shared>) -> Step {
        self.final_asked = true;
        if self.stage == Stage::Confirmed {
            ctx.out.extend_from_slice(&self.probes[PROBE..]);
            self.stage = Stage::Final;
            self.received = 0;
            self.sent_at = Some(ctx.now);
        }
        Step::Continue
    }
}

impl Session for IdleSession {
    type Shared = Shared;

    fn on_open(&mut self, ctx: &mut Ctx<'_, Shared>) -> Step {
        ctx.out.extend_from_slice(&self.probes[..PROBE]);
        self.sent_at = Some(ctx.now);
        Step::Continue
    }

    fn on_data(&mut self, input: &[u8], ctx: &mut Ctx<'_, Shared>) -> Result<(usize, Step), Fault> {
        let probe = match self.stage {
            Stage::Probing => &self.probes[..PROBE],
            Stage::Final => &self.probes[PROBE..],
            Stage::Confirmed | Stage::Verified => return Err(Fault::Mismatch),
        };
        let expected = &probe[self.received..];
        if input.len() > expected.len() || input != &expected[..input.len()] {
            return Err(Fault::Mismatch);
        }
        self.received += input.len();
        if self.received < PROBE {
            return Ok((input.len(), Step::Continue));
        }
        self.sent_at = None;
        if self.stage == Stage::Probing {
            if ctx.shared.set_up_over {
                return Err(Fault::Timeout);
            }
            self.stage = Stage::Confirmed;
            ctx.shared.confirmed += 1;
        } else {
            self.stage = Stage::Verified;
            ctx.shared.verified_end += 1;
        }
        Ok((input.len(), Step::Continue))
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.sent_at
    }

    fn retry_after(&mut self, _fault: Fault, shared: &mut Shared) -> bool {
        if self.stage != Stage::Probing {
            shared.lost += 1;
        }
        if self.final_asked {
            shared.lost_final += 1;
        }
        false
    }
}
