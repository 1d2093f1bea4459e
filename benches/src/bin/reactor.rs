//! Micro-benchmarks of the reactor layer (`duo-reactor`), each on a fresh
//! [`EventLoopThread`]:
//!
//! - cross-thread wake-up: round trip client thread → loop (`LoopHandle::queue_in_loop`) →
//!   client thread, p50/p99/max in µs, with the client parked (futex) or spinning;
//! - timers: schedule then cancel 1 000 000 timers on the loop thread (pairs/s), and
//!   100 000 timers spread over 100 ms that all fire (timers/s, early and late firings);
//! - queued functions: 1 000 000 `LoopHandle::queue_in_loop` calls from one and from two
//!   producer threads (calls/s), with the loop's metrics (functions run per wake-up).
//!
//! Every case runs several repetitions and reports the median as a markdown table.
//!
//! ```text
//! cargo run --release -p duo-benches --bin reactor [-- --quick]
//! ```

use std::fmt::Write as _;
use std::hint::black_box;
use std::io;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, EventLoopThread, LoopHandle, LoopMetrics};

const USAGE: &str = "\
usage: reactor [--quick] [--help]

Micro-benchmarks of duo-reactor: cross-thread wake-up latency, timer schedule/cancel and
firing, queue_in_loop throughput. Prints a markdown table (median of repetitions).

  --quick   fewer round trips and repetitions (whole run in a few seconds)
  --help    print this help";

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    repetitions: usize,
    wake_rounds: usize,
    wake_warmup: usize,
    cancel_timers: usize,
    fire_timers: usize,
    fire_spread: Duration,
    queue_calls: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        Plan {
            quick,
            repetitions: if quick { 2 } else { 5 },
            wake_rounds: if quick { 2_000 } else { 20_000 },
            wake_warmup: if quick { 200 } else { 2_000 },
            cancel_timers: 1_000_000,
            fire_timers: 100_000,
            fire_spread: Duration::from_millis(100),
            queue_calls: 1_000_000,
        }
    }
}

/// What the command line asked for.
enum Command {
    Run(Plan),
    Help,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut quick = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--help" | "-h" => return Ok(Command::Help),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Command::Run(Plan::new(quick)))
}

/// One line of the result table.
struct Row {
    bench: String,
    figure: String,
    unit: &'static str,
    notes: String,
}

fn main() -> ExitCode {
    let plan = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(plan)) => plan,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("reactor: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_all(&plan) {
        Ok(rows) => {
            print_table(&plan, &rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reactor: benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_all(plan: &Plan) -> io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    rows.extend(bench_wakeup(plan, Wait::Park)?);
    rows.extend(bench_wakeup(plan, Wait::Spin)?);
    rows.push(bench_timer_cancel(plan, Pattern::Bulk)?);
    rows.push(bench_timer_cancel(plan, Pattern::OneByOne)?);
    rows.push(bench_timer_fire(plan)?);
    rows.push(bench_queue(plan, 1)?);
    rows.push(bench_queue(plan, 2)?);
    Ok(rows)
}

fn print_table(plan: &Plan, rows: &[Row]) {
    let mode = if plan.quick { "quick" } else { "full" };
    println!(
        "duo-reactor micro-benchmarks ({mode} run, median of {} repetitions, {} CPUs)\n",
        plan.repetitions,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| benchmark | figure | unit | notes |");
    println!("|---|---:|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.bench, r.figure, r.unit, r.notes);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Median of `values` (mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile `p` (0..=100) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `body` against a fresh loop thread, stops it (so every counter is published) and
/// returns `body`'s result with the loop's final metrics.
fn with_loop<R>(
    name: &str,
    body: impl FnOnce(&LoopHandle) -> io::Result<R>,
) -> io::Result<(R, LoopMetrics)> {
    let thread = EventLoopThread::spawn(name, None)?;
    let handle = thread.handle().clone();
    let result = body(&handle);
    thread.stop()?;
    Ok((result?, handle.metrics()))
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer from the loop"),
    )
}

// ---------------------------------------------------------------------------------------
// Cross-thread wake-up

/// How the client waits for the loop's answer.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// `thread::park`; the loop `unpark`s it (a futex wake): two sleeping threads.
    Park,
    /// Busy-wait on an atomic: isolates the loop's own wake-up (eventfd → epoll_wait).
    Spin,
}

/// One repetition: round-trip times of the measured rounds and the loop's metrics.
fn wakeup_rep(plan: &Plan, wait: Wait) -> io::Result<(Vec<Duration>, LoopMetrics)> {
    with_loop("bench-wakeup", |handle| {
        let answered = Arc::new(AtomicU64::new(0));
        let me = thread::current();
        let total = (plan.wake_warmup + plan.wake_rounds) as u64;
        let mut samples = Vec::with_capacity(plan.wake_rounds);
        for round in 1..=total {
            let (flag, client) = (answered.clone(), me.clone());
            let start = Instant::now();
            handle.queue_in_loop(move |_| {
                flag.store(round, Ordering::Release);
                if wait == Wait::Park {
                    client.unpark();
                }
            })?;
            let give_up = start + Duration::from_secs(10);
            while answered.load(Ordering::Acquire) != round {
                match wait {
                    Wait::Park => thread::park_timeout(Duration::from_secs(1)),
                    Wait::Spin => std::hint::spin_loop(),
                }
                if Instant::now() > give_up {
                    return Err(timed_out("wake-up round trip"));
                }
            }
            let elapsed = start.elapsed();
            if round > plan.wake_warmup as u64 {
                samples.push(elapsed);
            }
        }
        samples.sort_unstable();
        Ok(samples)
    })
}

fn bench_wakeup(plan: &Plan, wait: Wait) -> io::Result<[Row; 2]> {
    let (mut p10s, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    let mut max = Duration::ZERO;
    let mut iters_per_round = Vec::new();
    for _ in 0..plan.repetitions {
        let (samples, m) = wakeup_rep(plan, wait)?;
        p10s.push(micros(percentile(&samples, 10.0)));
        p50s.push(micros(percentile(&samples, 50.0)));
        p99s.push(micros(percentile(&samples, 99.0)));
        max = max.max(percentile(&samples, 100.0));
        iters_per_round.push(m.iterations as f64 / (plan.wake_warmup + plan.wake_rounds) as f64);
    }
    let how = match wait {
        Wait::Park => "client parks",
        Wait::Spin => "client spins",
    };
    let first = format!(
        "p10 {:.1} µs; {} round trips after {} warm-up; loop iterations/round trip {:.2}",
        median(&mut p10s),
        plan.wake_rounds,
        plan.wake_warmup,
        median(&mut iters_per_round)
    );
    Ok([
        Row {
            bench: format!("wake-up round trip thread→loop→thread ({how}), p50"),
            figure: format!("{:.1}", median(&mut p50s)),
            unit: "µs",
            notes: first,
        },
        Row {
            bench: format!("wake-up round trip thread→loop→thread ({how}), p99"),
            figure: format!("{:.1}", median(&mut p99s)),
            unit: "µs",
            notes: format!("max over all repetitions {:.0} µs", micros(max)),
        },
    ])
}

// ---------------------------------------------------------------------------------------
// Timers

/// A small deterministic generator (xorshift64*) for deadlines in random order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// How schedule and cancel calls are interleaved.
#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    /// Schedule all `n`, then cancel all: the queue holds up to `n` timers.
    Bulk,
    /// Schedule one and cancel it at once: the queue stays (nearly) empty.
    OneByOne,
}

/// One repetition: schedule `n` timers (deadlines 60-120 s away, random order) and cancel
/// them, on the loop thread. Returns the time and how many cancels succeeded.
fn timer_cancel_rep(n: usize, pattern: Pattern) -> io::Result<(Duration, usize)> {
    let (result, _) = with_loop("bench-timers", |handle| {
        let (tx, rx) = mpsc::channel();
        handle.queue_in_loop(move |lp: &mut EventLoop| {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let delays: Vec<Duration> = (0..n)
                .map(|_| Duration::from_secs(60) + Duration::from_micros(rng.next() % 60_000_000))
                .collect();
            let mut ids = Vec::with_capacity(n);
            let mut cancelled = 0;
            let start = Instant::now();
            match pattern {
                Pattern::Bulk => {
                    for &delay in &delays {
                        ids.push(lp.run_after(delay, |_| {}));
                    }
                    cancelled = ids.iter().filter(|&&id| lp.cancel(id)).count();
                }
                Pattern::OneByOne => {
                    for &delay in &delays {
                        let id = lp.run_after(delay, |_| {});
                        cancelled += usize::from(lp.cancel(id));
                    }
                }
            }
            let elapsed = start.elapsed();
            let _ = tx.send((elapsed, cancelled, lp.timer_count()));
        })?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| timed_out("timer schedule/cancel"))
    })?;
    let (elapsed, cancelled, left) = result;
    if left != 0 {
        return Err(io::Error::other(format!(
            "{left} timers left after cancelling all"
        )));
    }
    Ok((elapsed, cancelled))
}

fn bench_timer_cancel(plan: &Plan, pattern: Pattern) -> io::Result<Row> {
    let n = plan.cancel_timers;
    let mut rates = Vec::new();
    let mut all_cancelled = true;
    for _ in 0..plan.repetitions {
        let (elapsed, cancelled) = timer_cancel_rep(n, pattern)?;
        all_cancelled &= cancelled == n;
        rates.push(n as f64 / elapsed.as_secs_f64());
    }
    let rate = median(&mut rates);
    Ok(Row {
        bench: match pattern {
            Pattern::Bulk => format!("timers: schedule {n} then cancel all (loop thread)"),
            Pattern::OneByOne => format!("timers: {n} × (schedule one, cancel it) (loop thread)"),
        },
        figure: format!("{:.2}", rate / 1e6),
        unit: "M pairs/s",
        notes: format!(
            "{:.0} ns per run_after+cancel; random deadlines 60-120 s; every cancel found its timer: {}",
            1e9 / rate,
            if all_cancelled { "yes" } else { "NO" }
        ),
    })
}

/// Outcome of one firing repetition.
struct FireResult {
    /// First schedule to last firing.
    elapsed: Duration,
    /// Time spent scheduling.
    schedule: Duration,
    fired: usize,
    early: usize,
    /// Largest (firing time - max(deadline, end of scheduling)).
    max_late: Duration,
    /// Loop iterations in which timers fired (≈ timerfd wake-ups).
    iterations: u64,
    /// Last firing - last deadline.
    last_late: Duration,
}

/// Per-repetition state shared by the timer callbacks (loop thread only).
struct FireState {
    fired: usize,
    early: usize,
    max_late: Duration,
    /// When scheduling ended: timers due before then cannot have run on time, so their
    /// lateness counts from here.
    scheduled: Option<Instant>,
    done: Option<mpsc::Sender<(Instant, usize, usize, Duration)>>,
}

fn timer_fire_rep(plan: &Plan) -> io::Result<FireResult> {
    let (n, spread) = (plan.fire_timers, plan.fire_spread);
    let ((start, schedule, end, fired, early, max_late), m) =
        with_loop("bench-timers", |handle| {
            let (tx, rx) = mpsc::channel();
            let (stx, srx) = mpsc::channel();
            handle.queue_in_loop(move |lp: &mut EventLoop| {
                let state = Rc::new(std::cell::RefCell::new(FireState {
                    fired: 0,
                    early: 0,
                    max_late: Duration::ZERO,
                    scheduled: None,
                    done: Some(tx),
                }));
                let start = Instant::now();
                for i in 0..n {
                    // A fixed permutation of 0..n (7919 is coprime to n = 100 000), so the
                    // deadlines arrive in scrambled order.
                    let slot = (i as u64 * 7919) % n as u64;
                    let deadline = start + spread.mul_f64(slot as f64 / n as f64);
                    let state = state.clone();
                    lp.run_at(deadline, move |_| {
                        let now = Instant::now();
                        let mut s = state.borrow_mut();
                        s.fired += 1;
                        if now < deadline {
                            s.early += 1;
                        }
                        let due = s.scheduled.map_or(deadline, |t| t.max(deadline));
                        s.max_late = s.max_late.max(now.saturating_duration_since(due));
                        if s.fired == n {
                            if let Some(done) = s.done.take() {
                                let _ = done.send((now, s.fired, s.early, s.max_late));
                            }
                        }
                    });
                }
                state.borrow_mut().scheduled = Some(Instant::now());
                let _ = stx.send((start, start.elapsed()));
            })?;
            let wait = spread + Duration::from_secs(30);
            let (start, schedule) = srx
                .recv_timeout(wait)
                .map_err(|_| timed_out("timer scheduling"))?;
            let (end, fired, early, max_late) = rx
                .recv_timeout(wait)
                .map_err(|_| timed_out("timer firing"))?;
            Ok((start, schedule, end, fired, early, max_late))
        })?;
    let last_deadline = start + spread.mul_f64((n - 1) as f64 / n as f64);
    Ok(FireResult {
        last_late: end.saturating_duration_since(last_deadline),
        elapsed: end.duration_since(start),
        schedule,
        fired,
        early,
        max_late,
        iterations: m.iterations,
    })
}

fn bench_timer_fire(plan: &Plan) -> io::Result<Row> {
    let n = plan.fire_timers;
    let mut rates = Vec::new();
    let (mut schedules, mut lates, mut iters, mut last_lates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fired_min, mut early_total) = (usize::MAX, 0);
    for _ in 0..plan.repetitions {
        let r = timer_fire_rep(plan)?;
        rates.push(r.fired as f64 / r.elapsed.as_secs_f64());
        schedules.push(millis(r.schedule));
        lates.push(micros(r.max_late));
        last_lates.push(micros(r.last_late));
        iters.push(r.iterations as f64);
        fired_min = fired_min.min(r.fired);
        early_total += r.early;
    }
    let mut notes = String::new();
    let _ = write!(
        notes,
        "deadlines spread over {} ms (this bounds the rate); fired {fired_min}/{n} (min over \
         reps), early {early_total}; scheduling took {:.1} ms; last firing {:.0} µs after the \
         last deadline; max lateness {:.0} µs (from max(deadline, end of scheduling)); \
         {:.0} loop iterations (≈{:.0} timers/wake-up)",
        plan.fire_spread.as_millis(),
        median(&mut schedules),
        median(&mut last_lates),
        median(&mut lates),
        median(&mut iters),
        n as f64 / median(&mut iters),
    );
    Ok(Row {
        bench: format!("timers: {n} scheduled, first schedule → last firing"),
        figure: format!("{:.2}", median(&mut rates) / 1e6),
        unit: "M timers/s",
        notes,
    })
}

// ---------------------------------------------------------------------------------------
// Queued functions

/// Outcome of one queue repetition.
struct QueueResult {
    /// First call to the last function having run.
    elapsed: Duration,
    /// First call until every producer had queued its share.
    pushing: Duration,
    metrics: LoopMetrics,
}

fn queue_rep(calls: usize, producers: usize) -> io::Result<QueueResult> {
    let per_producer = calls / producers;
    let ((start, pushed, end), metrics) = with_loop("bench-queue", |handle| {
        let (tx, rx) = mpsc::channel::<Instant>();
        let barrier = Arc::new(Barrier::new(producers));
        let workers: Vec<_> = (0..producers)
            .map(|p| {
                let (handle, tx, barrier) = (handle.clone(), tx.clone(), barrier.clone());
                thread::Builder::new()
                    .name(format!("bench-producer-{p}"))
                    .spawn(move || -> io::Result<(Instant, Instant)> {
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..per_producer {
                            // Captures 8 bytes, so each call allocates its box like a real
                            // closure would.
                            handle.queue_in_loop(move |_| {
                                black_box(i);
                            })?;
                        }
                        // FIFO: when this runs, every function of this producer has run.
                        handle.queue_in_loop(move |_| {
                            let _ = tx.send(Instant::now());
                        })?;
                        Ok((start, Instant::now()))
                    })
            })
            .collect::<io::Result<_>>()?;
        drop(tx);
        let mut starts = Vec::new();
        let mut pushed = Vec::new();
        for w in workers {
            let (s, p) = w
                .join()
                .map_err(|_| io::Error::other("producer thread panicked"))??;
            starts.push(s);
            pushed.push(p);
        }
        let mut end = None;
        for _ in 0..producers {
            let t = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| timed_out("queued functions"))?;
            end = end.max(Some(t));
        }
        let start = starts.into_iter().min().expect("one producer at least");
        let pushed = pushed.into_iter().max().expect("one producer at least");
        Ok((start, pushed, end.expect("one producer at least")))
    })?;
    Ok(QueueResult {
        elapsed: end.duration_since(start),
        pushing: pushed.duration_since(start),
        metrics,
    })
}

fn bench_queue(plan: &Plan, producers: usize) -> io::Result<Row> {
    let calls = plan.queue_calls;
    let (mut rates, mut push_rates, mut per_iter, mut iters, mut lags) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.repetitions {
        let r = queue_rep(calls, producers)?;
        let expected = (calls / producers * producers + producers) as u64;
        if r.metrics.tasks_run != expected {
            return Err(io::Error::other(format!(
                "loop ran {} queued functions, expected {expected}",
                r.metrics.tasks_run
            )));
        }
        rates.push(calls as f64 / r.elapsed.as_secs_f64());
        push_rates.push(calls as f64 / r.pushing.as_secs_f64());
        lags.push(micros(r.elapsed.saturating_sub(r.pushing)));
        iters.push(r.metrics.iterations as f64);
        per_iter.push(r.metrics.tasks_run as f64 / r.metrics.iterations.max(1) as f64);
    }
    let label = if producers == 1 {
        "1 producer thread".to_owned()
    } else {
        format!("{producers} producer threads")
    };
    Ok(Row {
        bench: format!("queue_in_loop: {calls} calls, {label} → loop has run them all"),
        figure: format!("{:.2}", median(&mut rates) / 1e6),
        unit: "M calls/s",
        notes: format!(
            "producers alone: {:.2} M calls/s, loop done {:.0} µs after the last call; \
             {:.0} loop iterations, {:.0} functions per iteration (wake-up coalescing)",
            median(&mut push_rates) / 1e6,
            median(&mut lags),
            median(&mut iters),
            median(&mut per_iter)
        ),
    })
}
