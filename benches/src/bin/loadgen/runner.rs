//! Worker threads and the gate that starts their measured phase together.
//!
//! Every mode runs the same way: `--threads` workers each build an [`Engine`] over their
//! share of the connections and set them up (connect, log in, ...); each then *arrives* at
//! the [`Gate`]. The coordinating (main) thread waits until all have arrived or the set-up
//! time is up, then *opens* the gate: that instant starts the measured phase of every
//! worker. For `idle` the coordinator also *stops* the workers after the hold.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::{Engine, Session};
use crate::report::Report;

/// Start and stop signals shared by the workers of one phase and their coordinator.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    arrived: AtomicUsize,
    go: OnceLock<Instant>,
    stop: AtomicBool,
}

impl Gate {
    /// Waits until `workers` have arrived, or `deadline`; returns how many arrived.
    pub(crate) fn wait_arrivals(&self, workers: usize, deadline: Instant) -> usize {
        loop {
            let arrived = self.arrived.load(Ordering::Acquire);
            if arrived >= workers || Instant::now() >= deadline {
                return arrived;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Opens the gate (once); returns the instant the measured phase started.
    pub(crate) fn open(&self) -> Instant {
        *self.go.get_or_init(Instant::now)
    }

    /// When the gate opened, if it has.
    pub(crate) fn opened(&self) -> Option<Instant> {
        self.go.get().copied()
    }

    /// Tells the workers to finish.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether the workers were told to finish.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Blocks (without polling anything) until the gate opens; `None` if stopped first.
    pub(crate) fn wait_open(&self) -> Option<Instant> {
        loop {
            if let Some(t) = self.opened() {
                return Some(t);
            }
            if self.stopped() {
                return None;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One worker's handle on the gate: arriving is idempotent, and a worker that returns
/// early (an error) arrives when its ticket drops, so the coordinator never waits for it.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    gate: &'a Gate,
    arrived: bool,
}

impl Ticket<'_> {
    /// Says this worker's set-up is over.
    pub(crate) fn arrive(&mut self) {
        if !self.arrived {
            self.arrived = true;
            self.gate.arrived.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The gate.
    pub(crate) fn gate(&self) -> &Gate {
        self.gate
    }

    /// Arrives, then keeps `engine` running (so failures are seen and counted) until the
    /// gate opens. Returns the opening instant, or `None` if the coordinator stopped
    /// the phase instead.
    pub(crate) fn arrive_and_wait<S: Session>(
        &mut self,
        engine: &mut Engine<S>,
    ) -> io::Result<Option<Instant>> {
        self.arrive();
        loop {
            if let Some(t) = self.gate.opened() {
                return Ok(Some(t));
            }
            if self.gate.stopped() {
                return Ok(None);
            }
            engine.poll(Instant::now() + Duration::from_millis(2))?;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

/// What [`open_and_measure`] saw of the server's CPU time over the measured phase.
#[derive(Debug, Default)]
pub(crate) struct ServerCpu(Option<Result<Duration, String>>);

impl ServerCpu {
    /// Puts the figure (or why there is none) in `report`.
    pub(crate) fn fill(self, report: &mut Report) {
        match self.0 {
            Some(Ok(cpu)) => report.server_cpu_secs = Some(cpu.as_secs_f64()),
            Some(Err(e)) => report
                .notes
                .push(format!("server CPU time not measured: {e}")),
            None => {}
        }
    }
}

/// For a coordinator: opens the gate and, given the server's pid, samples its CPU time at
/// the opening and again when the measured phase of `secs` ends, so set-up (connecting,
/// logging in) is not charged to the operations measured. The CPU time is that of the
/// server's whole process tree ([`duo_testkit::tree_cpu_time`]): a supervisor's worker
/// processes (`--processes`) do the serving, and one that ends during the phase keeps its
/// share.
pub(crate) fn open_and_measure(gate: &Gate, pid: Option<u32>, secs: Duration) -> ServerCpu {
    let Some(pid) = pid else {
        gate.open();
        return ServerCpu(None);
    };
    let before = duo_testkit::tree_cpu_time(pid);
    let go = gate.open();
    let end = go + secs;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        thread::sleep(left);
    }
    let after = duo_testkit::tree_cpu_time(pid);
    ServerCpu(Some(match (before, after) {
        (Ok(b), Ok(a)) => Ok(a.saturating_sub(b)),
        (Err(e), _) | (_, Err(e)) => Err(format!("process {pid}: {e}")),
    }))
}

/// Runs `worker(index, ticket)` on `threads` threads and `coordinate(gate)` on this one;
/// returns the workers' results in thread order. A worker's panic is propagated.
pub(crate) fn run_threads<R: Send>(
    threads: usize,
    worker: impl Fn(usize, Ticket<'_>) -> R + Sync,
    coordinate: impl FnOnce(&Gate),
) -> Vec<R> {
    let gate = Gate::default();
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (gate, worker) = (&gate, &worker);
                thread::Builder::new()
                    .name(format!("loadgen-{t}"))
                    .spawn_scoped(scope, move || {
                        worker(
                            t,
                            Ticket {
                                gate,
                                arrived: false,
                            },
                        )
                    })
                    .expect("spawn a loadgen thread")
            })
            .collect();
        coordinate(&gate);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The indices in `0..n` that thread `t` of `threads` owns (round robin).
pub(crate) fn share(n: usize, threads: usize, t: usize) -> impl Iterator<Item = usize> {
    (t..n).step_by(threads.max(1))
}
