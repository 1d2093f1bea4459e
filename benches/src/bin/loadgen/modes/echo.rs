//! `pingpong` and `rr`: one message outstanding per connection, every echoed byte checked.
//!
//! Both modes run the same loop: send SIZE bytes, wait until all SIZE have come back,
//! record the round trip, send the next. They differ in their defaults (16 KiB messages
//! for throughput, 64 B for latency) and in what the summary leads with.
//!
//! The latency of a request is from when it was queued (at once when the previous echo
//! completed: nothing else delays it) to when the last byte of its echo was read; with
//! `rr --rate` (open loop, [`open_loop`]), from its intended send time. A
//! request still unanswered when the phase ends (on a connection still open: one lost with
//! its connection is a fault) counts with what it has waited so far if that is longer
//! than every answered one ([`Latency::record_unanswered`]): a server that stops
//! answering shows its stall, not only its earlier, fast answers. Open loop, so do the
//! requests due and never sent behind it.
//!
//! Each connection draws its messages from its own random *tape* of SIZE + 4 KiB bytes,
//! starting at a random offset: generating no new bytes per message keeps the load
//! generator's CPU cost low, yet consecutive messages differ and no two connections share
//! bytes, so an echo of the wrong bytes (stale, reordered, another connection's) is caught.

use std::io;
use std::time::{Duration, Instant};

use crate::cli::EchoArgs;
use crate::engine::{Ctx, Engine, Session, Step};
use crate::fault::Fault;
use crate::latency::Latency;
use crate::modes::open_loop::{self, Pacer, Schedule};
use crate::modes::{finish, Env, Part, Tally};
use crate::report::Report;
use crate::runner::{open_and_measure, run_threads, ServerCpu, Ticket};
use duo_testkit::Rng as XorShift;

/// Extra tape beyond one message: the range of message start offsets.
const TAPE_SLACK: usize = 4096;

/// Which of the two modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Throughput: messages/s and MiB/s.
    Pingpong,
    /// Latency: requests/s and percentiles.
    Rr,
}

/// Runs `pingpong` or `rr`.
pub(crate) fn run(kind: Kind, args: &EchoArgs, env: &Env) -> Result<Report, String> {
    let size = args.size.unwrap_or(match kind {
        Kind::Pingpong => 16 * 1024,
        Kind::Rr => 64,
    }) as usize;
    let mut report = Report {
        mode: match kind {
            Kind::Pingpong => "pingpong",
            Kind::Rr => "rr",
        },
        unit: match kind {
            Kind::Pingpong => "messages",
            Kind::Rr => "requests",
        },
        addr: Some(env.target.to_string()),
        size: Some(size as u64),
        secs: Some(args.secs.as_secs_f64()),
        ..Report::default()
    };
    let conns = env.cap_conns(args.conns, &mut report) as usize;
    let threads = env.threads_for(conns as u64);
    report.threads = threads;
    report.conns = Some(conns as u64);
    let setup_deadline = Instant::now() + env.timeout;
    // `rr --rate`: each connection's share of the rate.
    let rate = args.rate.filter(|_| kind == Kind::Rr);
    let interval = rate.map(|rate| open_loop::interval_for(conns, rate));

    let mut cpu = ServerCpu::default();
    let results = run_threads(
        threads,
        |t, ticket| {
            worker(
                env,
                Part::new(t, threads, conns, 0),
                size,
                interval,
                args.secs,
                setup_deadline,
                ticket,
            )
        },
        |gate| {
            gate.wait_arrivals(threads, setup_deadline);
            cpu = open_and_measure(gate, env.server_pid, args.secs);
        },
    );
    let tally = finish(&mut report, cpu, results, true)?;
    if let Some(rate) = rate {
        tally.open_loop.fill(&mut report, rate);
    }
    if args.reconnect {
        tally.fill_closes(&mut report);
    }
    report.established = Some(tally.established);
    if tally.established < conns as u64 {
        report.notes.push(format!(
            "only {} of {conns} connections were open when the measurement started",
            tally.established
        ));
    }
    Ok(report)
}

/// One thread: connect its share, wait for the gate, ping-pong until the end (open loop,
/// with `interval`: each connection sends on its schedule, one request per interval).
fn worker(
    env: &Env,
    part: Part,
    size: usize,
    interval: Option<Duration>,
    secs: Duration,
    setup_deadline: Instant,
    mut ticket: Ticket<'_>,
) -> io::Result<Tally> {
    let mut slot = 0;
    let sessions = env.sessions(part, |seed| {
        slot += 1;
        EchoSession::new(size, seed, interval.map(|i| (slot - 1, i)))
    });
    let mut engine = Engine::new(
        env.target.clone(),
        sessions,
        Shared::default(),
        env.default_options(),
    )?;
    while !engine.is_settled() && Instant::now() < setup_deadline {
        engine.poll(setup_deadline)?;
    }
    let established = engine.open_count() as u64;
    let Some(_opened) = ticket.arrive_and_wait(&mut engine)? else {
        return Ok(Tally::default());
    };
    // This thread's phase starts when it sees the gate open, up to one wait of
    // `arrive_and_wait` after the opening: an open-loop schedule counted from the opening
    // would have sent its first requests late, and charged that delay to the server.
    let go = Instant::now();
    engine.shared_mut().running = true;
    engine.shared_mut().pacer.go = Some(go);
    engine.each(|session, ctx| {
        session.next(ctx);
        Step::Continue
    });
    let end = go + secs;
    if interval.is_some() {
        open_loop::drive(&mut engine, end, |s| &mut s.pacer, EchoSession::fire)?;
    } else {
        while Instant::now() < end {
            engine.poll(end)?;
        }
    }
    let stopped = Instant::now();
    let elapsed = stopped.saturating_duration_since(go);
    // A stall at the end of the phase: what the requests in flight have waited so far
    // (on open connections: one lost with its connection is a fault, not a wait), and,
    // open loop, those due and never sent behind them.
    let mut waits: Vec<(Duration, u64)> = Vec::new();
    for s in engine.open_sessions() {
        if s.sent_at.is_some() {
            waits.push((stopped.saturating_duration_since(s.intended), 1));
        }
        if let Some(schedule) = &s.schedule {
            waits.extend(schedule.unsent(end, stopped, go));
        }
    }
    // Open loop, every request due in the phase and never sent is `unsent`, whatever
    // held it back: a request in flight before it, or a connection not open (never
    // opened, lost, reopening). Only those of open connections count as waits above.
    let unsent = engine
        .sessions()
        .filter_map(|s| s.schedule.as_ref())
        .flat_map(|schedule| schedule.unsent(end, stopped, go))
        .map(|(_, n)| n)
        .sum();
    let shared = engine.shared_mut();
    shared.latency.record_unanswered_n(waits);
    shared.pacer.counts.unsent = unsent;
    let (server_closed, unanswered_on_close) = engine.closed_by_server();
    let waiting_at_end = engine.waiting();
    let reached = engine.opened_total();
    let (shared, faults) = engine.finish();
    Ok(Tally {
        open_loop: shared.pacer.counts,
        msgs: shared.msgs,
        bytes: shared.bytes,
        latency: shared.latency,
        faults,
        elapsed,
        established,
        reached,
        server_closed,
        unanswered_on_close,
        waiting_at_end,
    })
}

/// Counters of one thread.
#[derive(Debug, Default)]
struct Shared {
    /// Whether the measured phase has started (sessions send only then).
    running: bool,
    msgs: u64,
    bytes: u64,
    latency: Latency,
    /// Open loop: the connections' timers and what their schedules achieved.
    pacer: Pacer,
}

/// One connection: the message in flight and how much of it came back.
#[derive(Debug)]
struct EchoSession {
    tape: Vec<u8>,
    size: usize,
    rng: XorShift,
    /// Where in the tape the message in flight starts.
    offset: usize,
    /// Bytes of it echoed so far.
    received: usize,
    /// When it was sent; `None` when no message is in flight.
    sent_at: Option<Instant>,
    /// When it was meant to be sent, from which its latency counts (with `sent_at`): open
    /// loop, its time in the schedule; closed loop, `sent_at`.
    intended: Instant,
    /// Open loop (`rr --rate`): the connection's intended send times.
    schedule: Option<Schedule>,
}

impl EchoSession {
    /// A connection's session; open loop with `schedule`: its slot in the engine and the
    /// interval between its requests.
    fn new(size: usize, seed: u64, schedule: Option<(usize, Duration)>) -> EchoSession {
        let mut rng = XorShift::new(seed);
        let mut tape = vec![0; size + TAPE_SLACK];
        rng.fill(&mut tape);
        let schedule = schedule.map(|(slot, interval)| Schedule::new(slot, interval, &mut rng));
        EchoSession {
            tape,
            size,
            rng,
            offset: 0,
            received: 0,
            sent_at: None,
            intended: Instant::now(),
            schedule,
        }
    }

    /// Nothing is in flight: closed loop, sends the next message now; open loop, sends it
    /// if its time has come, or leaves it to its timer ([`EchoSession::fire`]).
    fn next(&mut self, ctx: &mut Ctx<'_, Shared>) {
        let intended = match &mut self.schedule {
            None => Some(ctx.now),
            Some(schedule) => ctx.shared.pacer.next_send(schedule, ctx.now),
        };
        if let Some(intended) = intended {
            self.send(ctx, intended);
        }
    }

    /// Open loop: the timer of the next message is due.
    fn fire(&mut self, ctx: &mut Ctx<'_, Shared>) {
        // A stale timer (the connection reopened meanwhile) finds a message in flight.
        if self.sent_at.is_none() && ctx.shared.running {
            self.next(ctx);
        }
    }

    /// Queues the next message, meant to be sent at `intended`.
    fn send(&mut self, ctx: &mut Ctx<'_, Shared>, intended: Instant) {
        self.offset = self.rng.below(TAPE_SLACK as u64 + 1) as usize;
        ctx.out
            .extend_from_slice(&self.tape[self.offset..self.offset + self.size]);
        self.received = 0;
        self.sent_at = Some(ctx.now);
        self.intended = intended;
    }
}

impl Session for EchoSession {
    type Shared = Shared;

    fn on_open(&mut self, ctx: &mut Ctx<'_, Shared>) -> Step {
        if ctx.shared.running {
            self.next(ctx);
        }
        Step::Continue
    }

    fn on_data(&mut self, input: &[u8], ctx: &mut Ctx<'_, Shared>) -> Result<(usize, Step), Fault> {
        // Bytes when nothing is in flight, more bytes than were sent, or different bytes.
        if self.sent_at.is_none() {
            return Err(Fault::Mismatch);
        }
        let expected = &self.tape[self.offset + self.received..self.offset + self.size];
        if input.len() > expected.len() || input != &expected[..input.len()] {
            return Err(Fault::Mismatch);
        }
        self.received += input.len();
        if self.received == self.size {
            let shared = &mut *ctx.shared;
            shared.msgs += 1;
            shared.bytes += self.size as u64;
            shared
                .latency
                .record(ctx.now.saturating_duration_since(self.intended));
            self.sent_at = None;
            if shared.running {
                self.next(ctx);
            }
        }
        Ok((input.len(), Step::Continue))
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.sent_at
    }

    fn on_server_close(&mut self, _shared: &mut Shared) -> u64 {
        // The request in flight, if any, is lost with the connection; a new one goes out
        // when the next connection opens.
        self.received = 0;
        u64::from(self.sent_at.take().is_some())
    }
}
