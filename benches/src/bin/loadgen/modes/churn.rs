//! `churn`: connect, one round trip, close, again, on `--conns` workers at once.
//!
//! The load generator closes first, so the `TIME_WAIT` state would land on its side and
//! hold a local port for 60 s per connection: at thousands of connections per second the
//! ephemeral ports would run out within seconds. Every connection is therefore closed with
//! `SO_LINGER` 0 (an RST, no `TIME_WAIT`; see [`crate::net::close_abortively`]), and the
//! workers are also spread over `--sources` source addresses.
//!
//! The latency reported is that of a whole cycle: from the end of the previous cycle
//! (or the start) to the echo of this one, so it includes the connect. A cycle still in
//! flight when the phase ends (connecting, or its echo awaited) counts with what it has
//! waited so far if that is longer than every completed one
//! ([`Latency::record_unanswered`]): a server that hangs shows its stall.

use std::io;
use std::time::{Duration, Instant};

use crate::cli::ChurnArgs;
use crate::engine::{Ctx, Engine, Session, Step};
use crate::fault::Fault;
use crate::latency::Latency;
use crate::modes::{finish, Env, Part, Tally};
use crate::report::Report;
use crate::runner::{open_and_measure, run_threads, ServerCpu, Ticket};
use duo_testkit::Rng as XorShift;

/// Runs `churn`.
pub(crate) fn run(args: &ChurnArgs, env: &Env) -> Result<Report, String> {
    let mut report = Report {
        mode: "churn",
        unit: "connections",
        addr: Some(env.target.to_string()),
        size: Some(args.size),
        secs: Some(args.secs.as_secs_f64()),
        ..Report::default()
    };
    let conns = env.cap_conns(args.conns, &mut report) as usize;
    let threads = env.threads_for(conns as u64);
    report.threads = threads;
    report.conns = Some(conns as u64);
    let sources = args.sources as usize;
    if env.target.inet().is_none() {
        report
            .notes
            .push("Unix-domain target: no source addresses (--sources unused)".into());
    }
    let size = args.size as usize;
    let mut cpu = ServerCpu::default();
    let results = run_threads(
        threads,
        |t, ticket| {
            worker(
                env,
                Part::new(t, threads, conns, sources),
                size,
                args.secs,
                ticket,
            )
        },
        |gate| {
            gate.wait_arrivals(threads, Instant::now() + env.timeout);
            cpu = open_and_measure(gate, env.server_pid, args.secs);
        },
    );
    let tally = finish(&mut report, cpu, results, false)?;
    if args.reconnect {
        tally.fill_closes(&mut report);
    }
    Ok(report)
}

/// One thread: its workers cycle until the end of the run.
fn worker(
    env: &Env,
    part: Part,
    size: usize,
    secs: Duration,
    mut ticket: Ticket<'_>,
) -> io::Result<Tally> {
    ticket.arrive();
    let Some(go) = ticket.gate().wait_open() else {
        return Ok(Tally::default());
    };
    let sessions = env.sessions(part, |seed| ChurnSession::new(size, seed, go));
    let mut engine = Engine::new(
        env.target.clone(),
        sessions,
        Shared::default(),
        env.options(part.conns),
    )?;
    let end = go + secs;
    while Instant::now() < end {
        engine.poll(end)?;
    }
    let stopped = Instant::now();
    let elapsed = stopped.saturating_duration_since(go);
    // A stall at the end of the phase: what the cycles in flight (connecting, or their
    // round trip unanswered) have waited so far, as `rr` records its requests in flight
    // (see `Latency::record_unanswered`). A cycle whose connection failed is a fault,
    // already counted, and waits for nothing.
    let waits: Vec<Duration> = engine
        .waiting_sessions()
        .map(|s| stopped.saturating_duration_since(s.cycle_start))
        .collect();
    engine.shared_mut().latency.record_unanswered(waits);
    let (server_closed, unanswered_on_close) = engine.closed_by_server();
    let waiting_at_end = engine.waiting();
    let reached = engine.opened_total();
    let (shared, faults) = engine.finish();
    Ok(Tally {
        msgs: shared.cycles,
        bytes: shared.cycles * size as u64,
        latency: shared.latency,
        faults,
        elapsed,
        established: 0,
        reached,
        server_closed,
        unanswered_on_close,
        waiting_at_end,
        ..Tally::default()
    })
}

/// Counters of one thread.
#[derive(Debug, Default)]
struct Shared {
    cycles: u64,
    latency: Latency,
}

/// One worker: the bytes of its current round trip.
#[derive(Debug)]
struct ChurnSession {
    rng: XorShift,
    probe: Vec<u8>,
    received: usize,
    cycle_start: Instant,
    sent_at: Option<Instant>,
}

impl ChurnSession {
    fn new(size: usize, seed: u64, start: Instant) -> ChurnSession {
        ChurnSession {
            rng: XorShift::new(seed),
            probe: vec![0; size],
            received: 0,
            cycle_start: start,
            sent_at: None,
        }
    }
}

impl Session for ChurnSession {
    type Shared = Shared;

    fn on_open(&mut self, ctx: &mut Ctx<'_, Shared>) -> Step {
        self.rng.fill(&mut self.probe);
        ctx.out.extend_from_slice(&self.probe);
        self.received = 0;
        self.sent_at = Some(ctx.now);
        Step::Continue
    }

    fn on_data(&mut self, input: &[u8], ctx: &mut Ctx<'_, Shared>) -> Result<(usize, Step), Fault> {
        let expected = &self.probe[self.received..];
        if self.sent_at.is_none()
            || input.len() > expected.len()
            || input != &expected[..input.len()]
        {
            return Err(Fault::Mismatch);
        }
        self.received += input.len();
        if self.received < self.probe.len() {
            return Ok((input.len(), Step::Continue));
        }
        ctx.shared.cycles += 1;
        ctx.shared
            .latency
            .record(ctx.now.saturating_duration_since(self.cycle_start));
        self.cycle_start = ctx.now;
        self.sent_at = None;
        Ok((input.len(), Step::Reconnect))
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.sent_at
    }

    fn retry_after(&mut self, _fault: Fault, _shared: &mut Shared) -> bool {
        // A failed cycle is counted; the worker goes on (after the engine's retry pause).
        self.sent_at = None;
        self.cycle_start = Instant::now();
        true
    }

    fn on_server_close(&mut self, _shared: &mut Shared) -> u64 {
        // The cycle starts again on the new connection.
        self.received = 0;
        self.cycle_start = Instant::now();
        u64::from(self.sent_at.take().is_some())
    }
}
