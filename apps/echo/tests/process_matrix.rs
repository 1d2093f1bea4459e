//! `echo serve --processes N`: states of the supervisor that no other test combines, run
//! against the real binary. Signals while a reload is still pending, while an old
//! generation drains a held connection (up to three generations alive), after a stop has
//! begun, right after an upgrade; workers killed while draining, before they are ready,
//! or while a reload is pending; the aggregated `--metrics` page throughout (HTTP 200,
//! one `# EOF`, every `# TYPE` once, `duo_aggregate_up` 1 for exactly the live workers).
//! After each test the supervisor exited as documented (0 after a stop) and no worker it
//! started still runs.
//!
//! A reload is held pending without guessing at timing by a [`Gate`]: the supervisor runs
//! from a hard link of `echo` in a directory of its own; closing the gate puts a script
//! at that path under which a new worker waits until a file exists. Every wait is
//! bounded; every process is killed by PID.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::supervised::{
    large_request_pending, list_after, number_after, spawned, Gate, Pids, Sup, ECHO,
};
use common::{read_to_eof, round_trip, IO_TIMEOUT};
use duo_testkit::{http_get, is_running, join_within, run_within, send_signal, LIMIT};

/// The supervisor's log line of a stop, with the workers it sends SIGTERM.
const STOPPING: &str = "stopping; SIGTERM to workers";

/// Waits (at most [`LIMIT`]) until `check` is `Ok`; panics with `what` and its last error.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + LIMIT;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `Ok` if `now == want`, else both, for [`eventually`].
fn same<T: PartialEq + std::fmt::Debug>(now: T, want: &T) -> Result<(), String> {
    holds(now == *want, format!("{now:?}, not {want:?}"))
}

/// `Ok` if `cond`, else `why`, for [`eventually`].
fn holds(cond: bool, why: impl std::fmt::Display) -> Result<(), String> {
    cond.then_some(()).ok_or_else(|| why.to_string())
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// The number right after `key` in `line`.
/// Whether the newest generation started has become serving (or was given up).
fn settled(log: &str) -> bool {
    let newest = log
        .lines()
        .filter_map(|l| number_after(l, "starting generation "));
    newest.max().is_some_and(|n| {
        log.contains(&format!("generation {n} is serving"))
            || log.contains(&format!("generation {n} was not ready"))
    })
}

impl Sup {
    /// The real `echo` with 2 workers.
    fn echo(extra: &[&str]) -> Sup {
        Sup::start(Path::new(ECHO), 2, extra)
    }

    fn metrics(&mut self) -> SocketAddr {
        let line = self.line_starting("metrics on ", LIMIT);
        line["metrics on ".len()..].trim().parse().unwrap()
    }

    /// Waits for generation `n` to serve: its workers.
    fn serving(&self, n: u64) -> Pids {
        let key = format!("generation {n} is serving: workers");
        self.log_has(&key);
        list_after(&self.stderr(), &key)
    }

    /// A connection that has had one round trip and stays open (its worker cannot finish
    /// draining until it closes).
    fn hold(&self) -> TcpStream {
        let mut s = self.connect();
        round_trip(&mut s, b"hold");
        s
    }

    fn wait_workers(&self, what: &str, want: &Pids) {
        eventually(what, || same(self.workers(), want));
    }

    /// `echo reload --pid SUP [--upgrade]`, which must succeed.
    fn reload(&self, upgrade: bool) {
        let mut cmd = Command::new(ECHO);
        cmd.args(["reload", "--pid", &self.pid().to_string()]);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let done = run_within(&mut cmd, LIMIT).unwrap();
        assert!(done.status.success(), "{done:?}");
    }

    /// SIGHUP, generation `generation` serving, and of the workers it retired exactly one
    /// left (draining a held connection): that one, and the new generation's workers.
    fn reload_leaving_one(&self, generation: u64) -> (u32, Pids) {
        self.signal("HUP");
        let key = format!("generation {generation} is serving: workers");
        let (mut new, mut retired) = (Pids::new(), Pids::new());
        eventually("the promotion and its retirement logged", || {
            let log = self.stderr();
            let tail = log.find(&key).map_or("", |i| &log[i..]);
            new = list_after(tail, &key);
            retired = list_after(tail, "retiring the previous workers");
            holds(!retired.is_empty(), log)
        });
        let mut left = Vec::new();
        eventually("one retired worker left", || {
            left = retired.iter().copied().filter(|p| is_running(*p)).collect();
            holds(left.len() == 1, format!("{left:?} of {retired:?}"))
        });
        (left[0], new)
    }

    /// SIGTERM, then as [`exited_0`](Self::exited_0).
    fn stop_cleanly(mut self) -> String {
        self.signal("TERM");
        self.exited_0()
    }
}

/// `GET /metrics`: HTTP 200 and well formed (one `# EOF`, last; every `# TYPE` once).
fn scrape(metrics: SocketAddr) -> String {
    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(count(&text, "# EOF"), 1, "{text}");
    let mut seen = BTreeSet::new();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap_or(family);
        assert!(seen.insert(name.to_owned()), "# TYPE {name} twice:\n{text}");
    }
    text
}

/// The workers the page shows with `duo_aggregate_up 1`: PID -> generation label.
fn up(metrics: SocketAddr) -> BTreeMap<u32, u64> {
    let text = scrape(metrics);
    text.lines()
        .filter_map(|l| {
            let (labels, value) = l.strip_prefix("duo_aggregate_up{")?.split_once("} ")?;
            if value.trim().parse::<f64>().ok()? != 1.0 {
                return None;
            }
            let label = |k: &str| -> Option<u64> {
                labels.split(',').find_map(|kv| {
                    let v = kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"')?;
                    v.parse().ok()
                })
            };
            Some((u32::try_from(label("pid")?).ok()?, label("generation")?))
        })
        .collect()
}

/// Waits until the page shows exactly `want` (PID -> generation) up.
fn wait_up(metrics: SocketAddr, want: &BTreeMap<u32, u64>) {
    eventually("the metrics page to show the live workers", || {
        same(up(metrics), want)
    });
}

fn gen_of(pids: &Pids, generation: u64) -> BTreeMap<u32, u64> {
    pids.iter().map(|p| (*p, generation)).collect()
}

/// A supervisor from a gate's binary, the gate closed and `hups` SIGHUPs sent at once:
/// generation 2 is pending, its workers waiting at the gate. Returns generation 1's and
/// 2's workers.
fn pending_reload(gate: &Gate, sup: &Sup, hups: usize) -> (Pids, Pids) {
    let g1 = sup.workers();
    gate.close();
    for _ in 0..hups {
        sup.signal("HUP");
    }
    sup.log_has("starting generation 2");
    let mut g2 = Pids::new();
    eventually("generation 2 started, waiting at the gate", || {
        g2 = sup.workers().difference(&g1).copied().collect();
        holds(g2.len() == 2, format!("{g2:?}"))
    });
    (g1, g2)
}

#[test]
fn sighup_twice_and_again_while_a_reload_is_pending_starts_one_generation() {
    let gate = Gate::new("hup-pending");
    let mut sup = Sup::start(&gate.exe(), 2, &["--metrics", "127.0.0.1:0"]);
    let metrics = sup.metrics();
    wait_up(metrics, &gen_of(&sup.workers(), 1));
    // Two at once (the second coalesced or ignored), then one surely while pending.
    let (g1, g2) = pending_reload(&gate, &sup, 2);
    sup.signal("HUP");
    sup.log_has("SIGHUP: generation 2 is still starting; ignored");
    // Meanwhile the page serves generation 1 (the waiting workers have no endpoint yet).
    assert_eq!(up(metrics), gen_of(&g1, 1));
    gate.open();
    sup.log_has("generation 2 is serving");
    sup.wait_workers("generation 2 alone", &g2);
    wait_up(metrics, &gen_of(&g2, 2));
    let log = sup.stop_cleanly();
    assert!(!log.contains("starting generation 3"), "{log}");
}

#[test]
fn sigterm_during_a_pending_reload_stops_both_generations_and_exits_0() {
    let gate = Gate::new("term-pending");
    let sup = Sup::start(&gate.exe(), 2, &[]);
    let (g1, g2) = pending_reload(&gate, &sup, 1);
    let log = sup.stop_cleanly();
    let all: Pids = g1.union(&g2).copied().collect();
    assert_eq!(list_after(&log, STOPPING), all, "{log}");
    assert!(!log.contains("generation 2 is serving"), "{log}");
    assert!(!log.contains("was not ready"), "{log}");
}

#[test]
fn a_new_worker_killed_before_ready_aborts_the_reload_and_the_old_generation_serves() {
    let gate = Gate::new("kill-pending");
    let mut sup = Sup::start(&gate.exe(), 2, &["--metrics", "127.0.0.1:0"]);
    let metrics = sup.metrics();
    let (g1, g2) = pending_reload(&gate, &sup, 1);
    let victim = *g2.iter().next().unwrap();
    send_signal(victim, "KILL").unwrap();
    sup.log_has(&format!("worker {victim} exited before it was ready"));
    sup.log_has("generation 1 keeps serving");
    sup.wait_workers("generation 1 alone", &g1);
    for i in 0..4u8 {
        round_trip(&mut sup.connect(), &[b'a' + i; 64]);
    }
    wait_up(metrics, &gen_of(&g1, 1));
    // A later reload goes through, under the next number.
    gate.open();
    sup.signal("HUP");
    let g3 = sup.serving(3);
    sup.wait_workers("generation 3 alone", &g3);
    wait_up(metrics, &gen_of(&g3, 3));
    let log = sup.stop_cleanly();
    assert_eq!(count(&log, "starting generation 2:"), 1, "{log}");
}

#[test]
fn an_upgrade_after_a_failed_reload_does_not_reuse_its_generation_number() {
    let gate = Gate::new("upgrade-after-failure");
    let sup = Sup::start(&gate.exe(), 2, &[]);
    let (g1, g2) = pending_reload(&gate, &sup, 1);
    send_signal(*g2.iter().next().unwrap(), "KILL").unwrap();
    sup.log_has("generation 1 keeps serving");
    sup.wait_workers("generation 1 alone", &g1);
    gate.open();
    // `echo reload` would refuse: this supervisor runs another path of the binary.
    sup.signal("USR2");
    sup.log_has("adopting worker");
    eventually("the upgrade's reload done", || {
        let log = sup.stderr();
        holds(count(&log, " is serving: workers") == 2, log)
    });
    let log = sup.stderr();
    // "Numbers are never reused, so a log line names one generation (a failed reload
    // keeps its number)": generation 2 was the failed one.
    assert_eq!(count(&log, "starting generation 2:"), 1, "reused:\n{log}");
    sup.stop_cleanly();
}

#[test]
fn a_serving_worker_killed_while_a_reload_is_pending_is_replaced_then_retired() {
    let gate = Gate::new("kill-serving-pending");
    let sup = Sup::start(&gate.exe(), 2, &[]);
    let (g1, g2) = pending_reload(&gate, &sup, 1);
    let victim = *g1.iter().next().unwrap();
    send_signal(victim, "KILL").unwrap();
    sup.log_has(&format!("worker {victim} (generation 1) died"));
    // Its replacement belongs to generation 1 (it waits at the gate too).
    let mut replacement = 0;
    eventually("a replacement in generation 1", || {
        let log = sup.stderr();
        let started = spawned(&log);
        let extra: Vec<u32> = started
            .difference(&g1)
            .filter(|p| !g2.contains(p))
            .copied()
            .collect();
        replacement = extra.first().copied().unwrap_or(0);
        let line = format!("started worker {replacement} (generation 1,");
        holds(extra.len() == 1 && log.contains(&line), log)
    });
    gate.open();
    assert_eq!(sup.serving(2), g2);
    let mut want_retired = g1.clone();
    want_retired.remove(&victim);
    want_retired.insert(replacement);
    eventually("the retirement logged", || {
        same(
            list_after(&sup.stderr(), "retiring the previous workers"),
            &want_retired,
        )
    });
    sup.wait_workers("generation 2 alone", &g2);
    round_trip(&mut sup.connect(), b"after");
    sup.stop_cleanly();
}

/// A worker of the new generation that reported ready and died before all of it was
/// ready fails the reload (the supervisor's documented rule: "or one of it dies first"),
/// as one that died before it was ready does: retiring the serving generation for one
/// whose workers die would take the service down. Generation 1 serves on. (It used to
/// count as started: generation 2 was promoted and made up.)
#[test]
fn a_new_worker_ready_then_dead_before_its_generation_is_ready_fails_the_reload() {
    let gate = Gate::new("ready-then-dead");
    let sup = Sup::start(&gate.exe(), 2, &[]);
    let (g1, g2) = pending_reload(&gate, &sup, 1);
    let first = *g2.first().unwrap();
    gate.open_for(first);
    sup.log_has(&format!("worker {first} (generation 2) is ready"));
    send_signal(first, "KILL").unwrap();
    sup.log_has("generation 1 keeps serving");
    gate.open();
    sup.wait_workers("generation 1 alone", &g1);
    let log = sup.stderr();
    assert!(!log.contains("generation 2 is serving"), "{log}");
    assert!(!log.contains("retiring the previous workers"), "{log}");
    round_trip(&mut sup.connect(), b"after");
    sup.stop_cleanly();
}

#[test]
fn three_generations_alive_each_draining_its_held_connection() {
    let mut sup = Sup::echo(&["--drain-timeout", "60", "--metrics", "127.0.0.1:0"]);
    let metrics = sup.metrics();
    let mut a = sup.hold();
    let (wa, g2) = sup.reload_leaving_one(2);
    // Its EOF: generation 1 no longer accepts (the listener goes before the half-close),
    // so this one lands on generation 2.
    assert_eq!(read_to_eof(&mut a), b"", "the half-close of generation 1");
    let mut b = sup.hold();
    let (wb, g3) = sup.reload_leaving_one(3);
    assert!(g2.contains(&wb), "{wb} not in {g2:?}");
    assert_eq!(read_to_eof(&mut b), b"");
    let mut alive = g3.clone();
    alive.extend([wa, wb]);
    sup.wait_workers("three generations", &alive);
    let mut want = gen_of(&g3, 3);
    want.extend([(wa, 1), (wb, 2)]);
    wait_up(metrics, &want);
    round_trip(&mut sup.connect(), b"new");
    drop((a, b));
    sup.wait_workers("generation 3 alone", &g3);
    wait_up(metrics, &gen_of(&g3, 3));
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    sup.stop_cleanly();
}

#[test]
fn a_fourth_generation_while_three_are_alive_shows_on_the_metrics_page() {
    let mut sup = Sup::start(
        Path::new(ECHO),
        1,
        &["--drain-timeout", "60", "--metrics", "127.0.0.1:0"],
    );
    let metrics = sup.metrics();
    let mut a = sup.hold();
    let (w1, _) = sup.reload_leaving_one(2);
    // Its EOF: w1 no longer accepts, so `b` lands on generation 2.
    assert_eq!(read_to_eof(&mut a), b"");
    let mut b = sup.hold();
    let (w2, _) = sup.reload_leaving_one(3);
    assert_eq!(read_to_eof(&mut b), b"");
    // Generations 1 and 2 drain, 3 serves: now a fourth.
    sup.signal("HUP");
    let g4 = sup.serving(4);
    drop((a, b));
    sup.wait_workers("generation 4 alone", &g4);
    assert!(!is_running(w1) && !is_running(w2));
    // Settled: one worker serves, and the page must show it.
    eventually("the serving worker on the page", || {
        let now = up(metrics);
        let log = sup.stderr();
        let uncounted = log.contains("uncounted");
        let health = http_get(metrics, "/healthz");
        let why = format!("up {now:?}, live {g4:?}, uncounted {uncounted}; /healthz {health:?}");
        holds(now == gen_of(&g4, 4), why)
    });
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    sup.stop_cleanly();
}

#[test]
fn a_draining_worker_killed_is_not_restarted() {
    let sup = Sup::echo(&["--drain-timeout", "60"]);
    let _held = sup.hold();
    let (wa, g2) = sup.reload_leaving_one(2);
    send_signal(wa, "KILL").unwrap();
    sup.log_has(&format!(
        "worker {wa} (generation 1) exited: killed by signal 9"
    ));
    // A restart would come at once, or after the first back-off step (100 ms): look for
    // one (bounded) for 600 ms.
    let end = Instant::now() + Duration::from_millis(600);
    while Instant::now() < end {
        assert_eq!(sup.workers(), g2, "no worker started");
        thread::sleep(Duration::from_millis(10));
    }
    let log = sup.stop_cleanly();
    assert!(
        !log.contains(&format!("worker {wa} (generation 1) died")),
        "{log}"
    );
    assert_eq!(count(&log, "started worker"), 4, "{log}");
    assert_eq!(list_after(&log, STOPPING), g2, "{log}");
}

#[test]
fn sigterm_while_an_old_generation_drains_waits_for_it_then_exits_0() {
    let mut sup = Sup::echo(&["--drain-timeout", "60"]);
    let held = sup.hold();
    let (wa, g2) = sup.reload_leaving_one(2);
    sup.signal("TERM");
    sup.log_has(STOPPING);
    // Only the serving generation gets it now: the draining one had its SIGTERM.
    assert_eq!(list_after(&sup.stderr(), STOPPING), g2);
    sup.wait_workers("the draining worker alone", &BTreeSet::from([wa]));
    assert!(sup.try_wait().is_none(), "it waits for the drain");
    drop(held);
    sup.exited_0();
}

#[test]
fn a_second_signal_during_a_reload_drain_quits_at_once() {
    let mut sup = Sup::echo(&["--drain-timeout", "60"]);
    let _held = sup.hold();
    let (wa, _) = sup.reload_leaving_one(2);
    let sent = Instant::now();
    sup.signal("TERM");
    sup.log_has(STOPPING);
    sup.signal("INT");
    let log = sup.exited_0();
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}:\n{log}");
    assert!(log.contains("SIGINT again: workers quit now"), "{log}");
    assert!(!is_running(wa));
    assert!(!log.contains("still running"), "no SIGKILL needed:\n{log}");
}

#[test]
fn a_reload_and_an_upgrade_after_sigterm_start_no_workers() {
    let mut sup = Sup::echo(&["--drain-timeout", "60"]);
    let g1 = sup.workers();
    let held = sup.hold();
    sup.signal("TERM");
    sup.log_has(STOPPING);
    sup.reload(false);
    sup.log_has("SIGHUP while stopping: ignored");
    sup.reload(true);
    sup.log_has("SIGUSR2: not now");
    assert!(sup.workers().is_subset(&g1), "{g1:?}");
    assert!(sup.try_wait().is_none(), "still draining `held`");
    drop(held);
    let log = sup.exited_0();
    assert_eq!(count(&log, "started worker"), 2, "{log}");
    assert!(!log.contains("starting generation 2"), "{log}");
}

#[test]
fn an_upgrade_then_a_sighup_at_once_leaves_one_new_generation() {
    let sup = Sup::echo(&[]);
    let g1 = sup.workers();
    sup.reload(true);
    sup.signal("HUP");
    eventually("one new generation, settled", || {
        let (log, now) = (sup.stderr(), sup.workers());
        let ok = settled(&log) && now.len() == 2 && now.is_disjoint(&g1);
        holds(ok, format!("{now:?}\n{log}"))
    });
    assert!(g1.iter().all(|p| !is_running(*p)));
    let mut sup = sup;
    assert!(sup.try_wait().is_none(), "the SIGHUP did not end it");
    round_trip(&mut sup.connect(), b"after");
    sup.stop_cleanly();
}

#[test]
fn an_upgrade_then_a_sigterm_at_once_exits_0() {
    let mut sup = Sup::echo(&[]);
    sup.reload(true);
    sup.signal("TERM");
    sup.exited_0();
}

#[test]
fn an_upgrade_while_an_old_generation_drains_a_large_reply_delivers_it_whole() {
    let sup = Sup::echo(&["--drain-timeout", "60"]);
    let mut s = sup.connect();
    // Written without reading: the reply piles up in the kernel and the worker's buffer.
    let data = large_request_pending(&sup, &s);
    let (wa, _) = sup.reload_leaving_one(2);
    sup.reload(true);
    // With its own generation (from its stats row), not "the serving one minus one".
    sup.log_has(&format!(
        "adopting worker {wa} (generation 1), still draining"
    ));
    let g3 = sup.serving(3);
    let mut alive = g3.clone();
    alive.insert(wa);
    sup.wait_workers("the draining worker and generation 3", &alive);
    let got = read_to_eof(&mut s);
    assert_eq!(got.len(), data.len(), "the whole reply");
    assert!(got == data, "the reply is the request");
    drop(s);
    sup.wait_workers("generation 3 alone", &g3);
    sup.stop_cleanly();
}

#[test]
fn the_announced_metrics_address_answers_after_an_upgrade() {
    let mut sup = Sup::echo(&["--metrics", "127.0.0.1:0"]);
    let metrics = sup.metrics();
    wait_up(metrics, &gen_of(&sup.workers(), 1));
    sup.reload(true);
    let g2 = sup.serving(2);
    sup.wait_workers("generation 2 alone", &g2);
    eventually("the announced metrics address to answer again", || {
        TcpStream::connect(metrics)
            .map(drop)
            .map_err(|e| format!("{metrics}: {e}"))
    });
    wait_up(metrics, &gen_of(&g2, 2));
    sup.stop_cleanly();
}

/// The metrics endpoint's socket is handed to the upgraded image, not bound again: no
/// connection attempt to it is refused while the supervisor re-executes itself, and the
/// new image says it serves on the socket handed over.
#[test]
fn an_upgrade_hands_over_the_metrics_socket_and_refuses_no_scrape() {
    let mut sup = Sup::echo(&["--metrics", "127.0.0.1:0"]);
    let metrics = sup.metrics();
    wait_up(metrics, &gen_of(&sup.workers(), 1));
    let stop = Arc::new(AtomicBool::new(false));
    let knocking = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut tries, mut refused) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                tries += 1;
                if let Err(e) = TcpStream::connect_timeout(&metrics, IO_TIMEOUT) {
                    refused.push(e.to_string());
                }
                // About a thousand a second: the `exec` is a few milliseconds.
                thread::sleep(Duration::from_millis(1));
            }
            (tries, refused)
        })
    };
    sup.reload(true);
    let g2 = sup.serving(2);
    sup.log_has("the socket the previous image handed over");
    stop.store(true, Ordering::Relaxed);
    let (tries, refused) = join_within("the connecting thread", knocking);
    assert!(
        refused.is_empty(),
        "{} of {tries} connects failed: {refused:?}",
        refused.len()
    );
    wait_up(metrics, &gen_of(&g2, 2));
    sup.stop_cleanly();
}

#[test]
fn a_worker_adopted_before_it_published_anything_keeps_its_stats_row() {
    // A replacement held at the gate has written nothing into its row when the upgrade
    // comes: the row must still be known as its own (the supervisor writes the PID at
    // the spawn), or the new image frees it and gives it to a new worker while this one
    // writes into it too.
    let gate = Gate::new("adopt-unpublished");
    let sup = Sup::start(&gate.exe(), 2, &[]);
    let g1 = sup.workers();
    gate.close();
    let victim = *g1.iter().next().unwrap();
    send_signal(victim, "KILL").unwrap();
    let mut replacement = 0;
    eventually("a replacement waiting at the gate", || {
        let log = sup.stderr();
        let extra: Vec<u32> = spawned(&log).difference(&g1).copied().collect();
        replacement = extra.first().copied().unwrap_or(0);
        holds(extra.len() == 1, log)
    });
    sup.signal("USR2");
    sup.log_has(&format!(
        "adopting worker {replacement} (generation 1, stats row"
    ));
    gate.open();
    let g2 = sup.serving(2);
    sup.wait_workers("generation 2 alone", &g2);
    round_trip(&mut sup.connect(), b"after");
    sup.stop_cleanly();
}
