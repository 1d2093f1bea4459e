//! `pingpong` and `rr`: one message outstanding per connection, every echoed byte checked.
//!
//! Both modes run the same loop: send SIZE bytes, wait until all SIZE have come back,
//! record the round trip, send the next. They differ in their defaults (16 KiB messages
//! for throughput, 64 B for latency) and in what the summary leads with.
//!
//! The latency of a request is from when it was queued (at once when the previous echo
//! completed: nothing else delays it) to when the last byte of its echo was read. A
//! request still unanswered when the phase ends (on a connection still open: one lost with
//! its connection is a fault) counts with what it has waited so far if that is longer
//! than every answered one ([`Latency::record_unanswered`]): a server that stops
//! answering shows its stall, not only its earlier, fast answers.
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

    let mut cpu = ServerCpu::default();
    let results = run_threads(
        threads,
        |t, ticket| {
            worker(
                env,
                Part::new(t, threads, conns, 0),
                size,
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

/// One thread: connect its share, wait for the gate, ping-pong until the end.
fn worker(
    env: &Env,
    part: Part,
    size: usize,
    secs: Duration,
    setup_deadline: Instant,
    mut ticket: Ticket<'_>,
) -> io::Result<Tally> {
    let sessions = env.sessions(part, |seed| EchoSession::new(size, seed));
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
    let Some(go) = ticket.arrive_and_wait(&mut engine)? else {
        return Ok(Tally::default());
    };
    engine.shared_mut().running = true;
    engine.each(|session, ctx| {
        session.send(ctx);
        Step::Continue
    });
    let end = go + secs;
    while Instant::now() < end {
        engine.poll(end)?;
    }
    let stopped = Instant::now();
    let elapsed = stopped.saturating_duration_since(go);
    // A stall at the end of the phase: what the requests in flight have waited so far
    // (on open connections: one lost with its connection is a fault, not a wait).
    let waits: Vec<Duration> = engine
        .open_sessions()
        .filter_map(|s| s.sent_at)
        .map(|sent_at| stopped.saturating_duration_since(sent_at))
        .collect();
    engine.shared_mut().latency.record_unanswered(waits);
    let (server_closed, unanswered_on_close) = engine.closed_by_server();
    let waiting_at_end = engine.waiting();
    let (shared, faults) = engine.finish();
    Ok(Tally {
        msgs: shared.msgs,
        bytes: shared.bytes,
        latency: shared.latency,
        faults,
        elapsed,
        established,
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
}

impl EchoSession {
    fn new(size: usize, seed: u64) -> EchoSession {
        let mut rng = XorShift::new(seed);
        let mut tape = vec![0; size + TAPE_SLACK];
        rng.fill(&mut tape);
        EchoSession {
            tape,
            size,
            rng,
            offset: 0,
            received: 0,
            sent_at: None,
        }
    }

    /// Queues the next message.
    fn send(&mut self, ctx: &mut Ctx<'_, Shared>) {
        self.offset = self.rng.below(TAPE_SLACK as u64 + 1) as usize;
        ctx.out
            .extend_from_slice(&self.tape[self.offset..self.offset + self.size]);
        self.received = 0;
        self.sent_at = Some(ctx.now);
    }
}

impl Session for EchoSession {
    type Shared = Shared;

    fn on_open(&mut self, ctx: &mut Ctx<'_, Shared>) -> Step {
        if ctx.shared.running {
            self.send(ctx);
        }
        Step::Continue
    }

    fn on_data(&mut self, input: &[u8], ctx: &mut Ctx<'_, Shared>) -> Result<(usize, Step), Fault> {
        // Bytes when nothing is in flight, more bytes than were sent, or different bytes.
        let Some(sent_at) = self.sent_at else {
            return Err(Fault::Mismatch);
        };
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
                .record(ctx.now.saturating_duration_since(sent_at));
            self.sent_at = None;
            if shared.running {
                self.send(ctx);
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
