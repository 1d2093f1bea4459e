//! States of the bank that no other suite combines, against the real `bank` binary on both
//! storage backends (`NAME::sqlite`, `NAME::postgres`):
//!
//! - pipelined bursts of writes (request ids, replays, refusals) from several connections
//!   at once on a loop group, then a half-close (one burst deeper than the read-pause
//!   mark): every reply in order, then end of stream;
//! - a burst followed by a reset (`SO_LINGER` 0), at once or after the first reply: the
//!   committed part is a prefix, retries by request id complete it exactly once, and a
//!   client pipelining meanwhile is unharmed;
//! - SIGTERM while several connections pipeline writes (one keeps sending), one client
//!   reads its long replies late and one not at all: exit 0 within the grace, and what was
//!   acknowledged is what is on disk after a restart;
//! - one request id twice in a pipeline, on two connections at once (two writers on
//!   PostgreSQL) and after a restart: applied once, the same reply every time;
//! - logins switching accounts, failed logins and unauthenticated writes inside one
//!   pipeline, ended by `QUIT` (or a fifth failed login) with a write behind it;
//! - lines of exactly 1024 bytes (one split at its `\r`) and of 1025 behind pipelined writes
//!   (once behind more writes than the read-pause mark, with a half-close);
//! - refusals (insufficient funds) inside group-committed batches of many connections;
//! - PostgreSQL only: the database restarted (`-m fast`) under deep pipelines.

#[macro_use]
mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bank::protocol::MAX_LINE;
use bank::server::SHUTDOWN_GRACE;
use common::{Backend, Client, Gate, Server, TestDb, PW};
use duo_testkit::pg::PgCluster;
use duo_testkit::{http_get, join_within, wait_until, wait_until_within, LIMIT};

on_both_backends! {
    a_pipelined_burst_then_a_half_close_is_answered_in_order,
    a_reset_after_a_burst_commits_a_prefix_that_retries_complete,
    sigterm_with_pipelines_in_flight_and_slow_readers_keeps_acks_and_disk_equal,
    a_request_id_repeated_in_a_pipeline_across_connections_and_a_restart_applies_once,
    logins_and_unauthenticated_writes_interleave_in_one_pipeline,
    lines_at_and_over_the_limit_behind_pipelined_writes,
    refusals_inside_group_committed_batches_fail_alone,
}

/// The code of an `ERR` reply.
fn err_code(reply: &str) -> Option<&str> {
    reply.strip_prefix("ERR ")?.split(' ').next()
}

/// Logs in to the existing account `user` on a new connection.
fn login(addr: SocketAddr, user: &str) -> Client {
    let mut c = Client::connect(addr);
    let welcome = format!("OK welcome {user}");
    assert_eq!(c.cmd(&format!("LOGIN {user} {PW}")), welcome);
    c
}

fn balance_of(addr: SocketAddr, user: &str) -> i64 {
    login(addr, user).balance()
}

/// An account registered and funded with `cents`.
fn funded(addr: SocketAddr, user: &str, cents: i64) {
    let mut c = Client::logged_in(addr, user);
    assert_eq!(c.cmd(&format!("DEPOSIT {cents}")), format!("OK {cents}"));
}

/// Runs `f(i, gate)` on `n` threads (which line up at `gate`) and joins them.
fn parallel<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize, &Gate) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let (gate, f) = (Gate::new(n), Arc::new(f));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (gate, f) = (gate.clone(), f.clone());
            thread::spawn(move || f(i, &gate))
        })
        .collect();
    (threads.into_iter())
        .map(|t| join_within("a client thread", t))
        .collect()
}

/// What one reply line must be.
#[derive(Debug, Clone)]
enum Want {
    Is(String),
    AnyOk,
    /// `ERR <code> ...`.
    Err(&'static str),
    /// A history entry: its kind, counterparty, amount and balance (not its id and time).
    Entry(String),
}

fn ok(n: impl std::fmt::Display) -> Want {
    Want::Is(format!("OK {n}"))
}

impl Want {
    fn matches(&self, got: &str) -> bool {
        match self {
            Want::Is(s) => got == s,
            Want::AnyOk => got.starts_with("OK "),
            Want::Err(code) => err_code(got) == Some(code),
            Want::Entry(s) => {
                let w: Vec<&str> = got.split(' ').collect();
                w.len() == 6 && w[1..5].join(" ") == *s
            }
        }
    }
}

/// Command lines sent in one write, and the replies they must get.
#[derive(Default)]
struct Burst {
    wire: String,
    want: Vec<Want>,
}

impl Burst {
    fn push(&mut self, line: &str, want: Want) {
        self.wire.push_str(line);
        self.wire.push('\n');
        self.want.push(want);
    }

    /// Sends it all at once and checks every reply, in order.
    fn run(&self, who: &str, c: &mut Client) {
        c.send(self.wire.as_bytes());
        for (n, w) in self.want.iter().enumerate() {
            let got = c.line();
            assert!(w.matches(&got), "{who}: reply {n} is {got:?}, want {w:?}");
        }
    }
}

/// Checks a whole transcript (what came before the end of stream) against `want`.
fn check_transcript(who: &str, got: &[u8], want: &[Want]) {
    let got = String::from_utf8_lossy(got);
    let partial = !got.is_empty() && !got.ends_with('\n');
    assert!(!partial, "{who}: partial last line in {got:?}");
    let lines: Vec<&str> = got.lines().collect();
    for (n, (g, w)) in lines.iter().zip(want).enumerate() {
        assert!(w.matches(g), "{who}: reply {n} is {g:?}, want {w:?}");
    }
    assert_eq!(lines.len(), want.len(), "{who}: replies {got:?}");
}

/// Several connections each send one burst of writes (request ids, replays, refusals,
/// reads between them) and half-close at once: each gets every reply in order, then the
/// end of stream. Then one burst deeper than the queue at which the server stops reading.
/// On a loop group (more loops than I/O threads).
fn a_pipelined_burst_then_a_half_close_is_answered_in_order(backend: Backend) {
    const PAYERS: usize = 4;
    const ROUNDS: usize = 50;
    const START: i64 = 10_000;
    let Some(db) = TestDb::new(backend, "burst-half-close") else {
        return;
    };
    let server = db.start(&["--io-threads", "2", "--loops", "5"]);
    let addr = server.addr;
    Client::logged_in(addr, "hsink");
    for i in 0..PAYERS {
        funded(addr, &format!("hp{i}"), START);
    }
    parallel(PAYERS, move |i, gate| {
        let me = format!("hp{i}");
        let mut c = login(addr, &me);
        let (mut b, mut bal) = (Burst::default(), START);
        for k in 0..ROUNDS {
            bal -= 7;
            b.push(&format!("TRANSFER hsink 7 h{i}-{k}"), ok(bal));
            if k % 10 == 0 {
                b.push(&format!("TRANSFER hsink 7 h{i}-{k}"), ok(bal));
            }
            if k % 10 == 5 {
                let big = format!("TRANSFER hsink 1000000 hb{i}-{k}");
                b.push(&big, Want::Err("INSUFFICIENT_FUNDS"));
                b.push(&big, Want::Err("INSUFFICIENT_FUNDS"));
            }
            bal += 3;
            b.push("DEPOSIT 3", ok(bal));
            if k % 17 == 3 {
                b.push("TRANSFER nobody_here 5", Want::Err("NO_SUCH_USER"));
                b.push(&format!("TRANSFER {me} 5"), Want::Err("BAD_REQUEST"));
                b.push("WITHDRAW 0", Want::Err("INVALID_AMOUNT"));
                b.push("BALANCE", ok(bal));
                b.push("PING", Want::Is("PONG".into()));
            }
        }
        b.push("HISTORY 2", ok(2));
        b.want.push(Want::Entry(format!("deposit - +3 {bal}")));
        let previous = format!("transfer_out hsink -7 {}", bal - 3);
        b.want.push(Want::Entry(previous));
        gate.wait();
        c.send(b.wire.as_bytes());
        c.stream().shutdown(Shutdown::Write).unwrap();
        check_transcript(&me, &c.expect_closed(LIMIT), &b.want);
    });
    // Deeper than the queue at which the server stops reading (4096), then a half-close:
    // the commands still unread when the end of stream comes are answered too.
    let paid = (PAYERS * ROUNDS * 7) as i64;
    let mut deep = login(addr, "hsink");
    deep.send("DEPOSIT 1\nBALANCE\n".repeat(3000).as_bytes());
    deep.stream().shutdown(Shutdown::Write).unwrap();
    let want: Vec<Want> = (1..=3000)
        .flat_map(|k| [ok(paid + k), ok(paid + k)])
        .collect();
    check_transcript("deep", &deep.expect_closed(LIMIT), &want);
    let mut sink = login(addr, "hsink");
    assert_eq!(sink.cmd("WITHDRAW 3000"), format!("OK {paid}"));
    let total: i64 = (0..PAYERS)
        .map(|i| balance_of(addr, &format!("hp{i}")))
        .sum();
    let deposited = PAYERS as i64 * (START + 3 * ROUNDS as i64);
    assert_eq!(total + paid, deposited, "money");
}

/// `N` transfers of 1..=N cents (ids `r<k>`) and a reset right behind them (at once, or
/// once the first reply has arrived, unread): what was committed is transfers 1..=m (a
/// consistent prefix), retrying every id completes the rest exactly once with the replies
/// a sequential run would give, and a client pipelining meanwhile gets all its replies.
fn a_reset_after_a_burst_commits_a_prefix_that_retries_complete(backend: Backend) {
    const N: i64 = 300;
    const OTHER: i64 = 200;
    const START: i64 = 1_000_000;
    let Some(db) = TestDb::new(backend, "reset") else {
        return;
    };
    let server = db.start(&[]);
    let addr = server.addr;
    Client::logged_in(addr, "rsink");
    for payer in ["ra", "rb", "rc"] {
        funded(addr, payer, START);
    }
    let after = |k: i64| START - k * (k + 1) / 2;
    let burst: String = (1..=N)
        .map(|k| format!("TRANSFER rsink {k} r{k}\n"))
        .collect();

    let gate = Gate::new(2);
    let other = {
        let gate = gate.clone();
        thread::spawn(move || {
            let mut c = login(addr, "rb");
            gate.wait();
            let wire: String = (0..OTHER)
                .map(|k| format!("TRANSFER rsink 2 b{k}\n"))
                .collect();
            c.send(wire.as_bytes());
            for k in 1..=OTHER {
                assert_eq!(c.line(), format!("OK {}", START - 2 * k));
            }
        })
    };
    for (payer, wait_reply) in [("ra", false), ("rc", true)] {
        let mut c = login(addr, payer);
        if !wait_reply {
            gate.wait();
        }
        c.send(burst.as_bytes());
        if wait_reply {
            wait_until("the first reply", || {
                duo_sys::socket::bytes_available(c.stream().as_fd()).unwrap() > 0
            });
        }
        duo_sys::socket2::SockRef::from(c.stream())
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // RST
    }
    join_within("the other client", other);
    assert_eq!(Client::connect(addr).cmd("PING"), "PONG");

    for payer in ["ra", "rc"] {
        // A consistent prefix, whenever it is read (a cut-off job may still commit).
        let mut c = login(addr, payer);
        let mut entries = c.history(1000);
        let funding = entries.pop();
        assert!(funding.is_some_and(|e| e.contains(" deposit - +")));
        let m = entries.len() as i64;
        eprintln!("{payer}: {m} of {N} transfers committed before the reset");
        for (n, e) in entries.iter().enumerate() {
            let k = m - n as i64;
            let want = Want::Entry(format!("transfer_out rsink -{k} {}", after(k)));
            assert!(want.matches(e), "{payer}: entry {n} of {m}: {e:?}");
        }
        // Every id again: the committed ones replay, the rest run now, in order.
        c.send(burst.as_bytes());
        for k in 1..=N {
            let want = format!("OK {}", after(k));
            assert_eq!(c.line(), want, "{payer}: retry of r{k}");
        }
        assert_eq!(c.history(1000).len() as i64, N + 1, "each transfer once");
        assert_eq!(c.balance(), after(N));
    }
    let sink = balance_of(addr, "rsink");
    assert_eq!(sink, N * (N + 1) + 2 * OTHER);
    let total = 2 * after(N) + balance_of(addr, "rb") + sink;
    assert_eq!(total, 3 * START, "money");
}

/// The reply to the `j`-th line (from 0) of a stream of pairs `DEPOSIT 2`, `TRANSFER
/// tsink 1 <id>` on an account that starts empty.
fn pair_reply(j: usize) -> String {
    let k = j / 2;
    format!("OK {}", if j % 2 == 0 { k + 2 } else { k + 1 })
}

/// The pairs `from..from + n` of client `i`.
fn pairs(i: usize, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|k| format!("DEPOSIT 2\nTRANSFER tsink 1 f{i}-{k}\n"))
        .collect()
}

/// Deposits of the slow readers' accounts before their pipelines.
const PRE: usize = 1000;

/// A client with `PRE` deposits of 1 cent that pipelines `pairs` of `HISTORY 1000`,
/// `DEPOSIT 1` and does not read yet; returns once replies it has not read pile up.
fn backlogged(addr: SocketAddr, user: &str, pairs: usize) -> Client {
    let mut c = Client::logged_in(addr, user);
    c.send("DEPOSIT 1\n".repeat(PRE).as_bytes());
    for j in 1..=PRE {
        assert_eq!(c.line(), format!("OK {j}"));
    }
    c.send("HISTORY 1000\nDEPOSIT 1\n".repeat(pairs).as_bytes());
    wait_until("a backlog of unread replies", || {
        duo_sys::socket::bytes_available(c.stream().as_fd()).unwrap() >= 32 << 10
    });
    c
}

/// Deposits a backlogged client was told of: its transcript's pairs of `HISTORY 1000`
/// (whose newest entry is the deposit before) and `DEPOSIT 1`, up to the last whole line.
fn backlog_acked(who: &str, got: &[u8]) -> usize {
    let got = String::from_utf8_lossy(got);
    let whole = &got[..got.rfind('\n').map_or(0, |p| p + 1)];
    let mut lines = whole.lines();
    let mut deposits = 0;
    while let Some(header) = lines.next() {
        assert_eq!(
            header, "OK 1000",
            "{who}: HISTORY after {deposits} deposits"
        );
        let entries: Vec<&str> = lines.by_ref().take(1000).collect();
        if let Some(newest) = entries.first() {
            let want = Want::Entry(format!("deposit - +1 {}", PRE + deposits));
            assert!(want.matches(newest), "{who}: {newest}");
        }
        let Some(reply) = lines.next() else { break };
        deposits += 1;
        assert_eq!(reply, format!("OK {}", PRE + deposits), "{who}: DEPOSIT");
    }
    deposits
}

/// SIGTERM while three connections have pipelined writes in flight (one keeps sending,
/// paced by its replies, until the server closes), one client has a backlog of long
/// replies it reads only once the others are done, and one reads nothing until the server
/// has exited: exit 0 within the grace, the writers' replies are an exact prefix ending in
/// a clean end of stream, and after a restart the database holds exactly what they were
/// told; the slow ones hold at least what they were told (all, if they got every reply).
/// (A straggler closed at the end of the grace loses the replies still queued for it,
/// among them those of writes that committed: the docs' "every write that reached the
/// disk was acknowledged" does not hold for it, so the slow ones are not held to it.)
fn sigterm_with_pipelines_in_flight_and_slow_readers_keeps_acks_and_disk_equal(backend: Backend) {
    const FAST: usize = 3;
    const PAIRS: usize = 400;
    const MAX_PAIRS: usize = 20_000;
    const SLOW_PAIRS: usize = 150;
    const STUCK_PAIRS: usize = 300;
    let Some(db) = TestDb::new(backend, "sigterm-slow") else {
        return;
    };
    let mut server = db.start(&[]);
    let addr = server.addr;
    Client::logged_in(addr, "tsink");
    for i in 0..FAST {
        Client::logged_in(addr, &format!("tf{i}"));
    }
    let mut slow = backlogged(addr, "slow", SLOW_PAIRS);
    let mut stuck = backlogged(addr, "stuck", STUCK_PAIRS);

    let started = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let fast: Vec<_> = (0..FAST)
        .map(|i| {
            let (started, done) = (started.clone(), done.clone());
            thread::spawn(move || {
                let mut c = login(addr, &format!("tf{i}"));
                c.send(pairs(i, 0, PAIRS).as_bytes());
                assert_eq!(c.line(), pair_reply(0));
                let read = Arc::new(AtomicUsize::new(1));
                let eof = Arc::new(AtomicBool::new(false));
                // Client 0 keeps sending, at most 400 lines ahead of its replies, until
                // its writes fail or its replies end.
                let writer = (i == 0).then(|| {
                    let mut w = c.stream().try_clone().unwrap();
                    let (read, eof) = (read.clone(), eof.clone());
                    thread::spawn(move || {
                        let mut next = PAIRS;
                        while !eof.load(Ordering::SeqCst) && next < MAX_PAIRS {
                            if 2 * next > read.load(Ordering::SeqCst) + 400 {
                                thread::sleep(Duration::from_millis(1));
                            } else if w.write_all(pairs(i, next, 50).as_bytes()).is_ok() {
                                next += 50;
                            } else {
                                break;
                            }
                        }
                    })
                });
                started.fetch_add(1, Ordering::SeqCst);
                let mut n = 1;
                loop {
                    let asked = Instant::now();
                    let Some(line) = c.try_line() else {
                        assert!(asked.elapsed() < LIMIT, "tf{i}: no end of stream");
                        break;
                    };
                    assert_eq!(line, pair_reply(n), "tf{i}: reply {n}");
                    n += 1;
                    read.store(n, Ordering::SeqCst);
                }
                eof.store(true, Ordering::SeqCst);
                if let Some(w) = writer {
                    join_within("the writer", w);
                }
                done.fetch_add(1, Ordering::SeqCst);
                n
            })
        })
        .collect();
    let slow_reader = thread::spawn(move || {
        wait_until_within(LIMIT, "the writers' end of stream", || {
            done.load(Ordering::SeqCst) == FAST
        });
        slow.expect_closed(LIMIT)
    });
    wait_until("every writer's first reply", || {
        started.load(Ordering::SeqCst) == FAST
    });
    let (status, took) = server.signal_and_wait("TERM", Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let bound = SHUTDOWN_GRACE + Duration::from_secs(3);
    assert!(took < bound, "SIGTERM took {took:?}");
    let acked: Vec<usize> = (fast.into_iter())
        .map(|t| join_within("a writer", t))
        .collect();
    let slow = backlog_acked("slow", &join_within("the slow reader", slow_reader));
    let stuck = backlog_acked("stuck", &stuck.expect_closed(LIMIT));
    eprintln!(
        "SIGTERM: exit after {took:?}; writers' replies {acked:?}; deposits \
         acknowledged: slow {slow} of {SLOW_PAIRS}, stuck {stuck} of {STUCK_PAIRS}"
    );

    let server = db.start(&[]);
    let mut sink = 0;
    for (i, &n) in acked.iter().enumerate() {
        let want = (n / 2 + 2 * (n % 2)) as i64;
        let got = balance_of(server.addr, &format!("tf{i}"));
        assert_eq!(got, want, "tf{i}: {n} replies, so exactly those writes");
        sink += (n / 2) as i64;
    }
    let got = balance_of(server.addr, "tsink");
    assert_eq!(got, sink, "the acknowledged transfers");
    for (who, acked, sent) in [("slow", slow, SLOW_PAIRS), ("stuck", stuck, STUCK_PAIRS)] {
        let on_disk = balance_of(server.addr, who) as usize - PRE;
        eprintln!("{who}: {on_disk} deposits on disk, {acked} acknowledged");
        let range = if acked == sent {
            sent..=sent
        } else {
            acked..=sent
        };
        assert!(
            range.contains(&on_disk),
            "{who}: {on_disk} on disk, {acked} told"
        );
    }
}

/// One request id: twice in each of two pipelines of the same payer, sent at once on two
/// connections (two writers on PostgreSQL), then again after SIGTERM and a restart: it
/// moves money once and gets the same reply every time; a refusal stays a refusal, and the
/// id reused for another amount is refused.
fn a_request_id_repeated_in_a_pipeline_across_connections_and_a_restart_applies_once(
    backend: Backend,
) {
    const IDS: usize = 40;
    const START: i64 = 10_000;
    let Some(db) = TestDb::new(backend, "rid-matrix") else {
        return;
    };
    let extra: &[&str] = match backend {
        Backend::Postgres => &["--db-writers", "2", "--workers", "4"],
        Backend::Sqlite => &[],
    };
    let mut server = db.start(extra);
    let addr = server.addr;
    Client::logged_in(addr, "qb");
    funded(addr, "qa", START);
    let mut lines = Vec::new();
    for k in 0..IDS {
        lines.extend([format!("TRANSFER qb 7 q{k}"), format!("TRANSFER qb 7 q{k}")]);
        match k % 8 {
            0 => lines.push(format!("TRANSFER qb 99999 qbig{k}")),
            4 => lines.push(format!("TRANSFER qb 8 q{k}")),
            _ => {}
        }
    }
    let refusal = |l: &str| match l.split(' ').nth(2) {
        Some("8") => Some("BAD_REQUEST"),
        Some("99999") => Some("INSUFFICIENT_FUNDS"),
        _ => None,
    };
    let sent = lines.clone();
    let replies = parallel(2, move |j, gate| {
        let mut c = login(addr, "qa");
        let wire: String = (sent.iter())
            .map(|l| format!("{l}\nDEPOSIT {}\n", j + 1))
            .collect();
        gate.wait();
        c.send(wire.as_bytes());
        let mut replies = Vec::new();
        for l in &sent {
            let r = c.line();
            assert_eq!(err_code(&r), refusal(l), "{l}: {r}");
            assert!(c.line().starts_with("OK "), "a deposit");
            replies.push(r);
        }
        replies
    });
    for (n, l) in lines.iter().enumerate() {
        assert_eq!(
            replies[0][n], replies[1][n],
            "{l}: the first outcome on both"
        );
        if n > 0 && lines[n - 1] == *l {
            assert_eq!(replies[0][n], replies[0][n - 1], "{l} twice in a row");
        }
    }
    let balance = START + 3 * lines.len() as i64 - 7 * IDS as i64;
    let mut qa = login(addr, "qa");
    assert_eq!(qa.balance(), balance);
    let out = qa.history(1000);
    let transfers = out.iter().filter(|e| e.contains(" transfer_out ")).count();
    assert_eq!(transfers, IDS, "each id applied once");
    drop(qa);

    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let server = db.start(extra);
    let mut qa = login(server.addr, "qa");
    let richer = balance + 100_000;
    assert_eq!(qa.cmd("DEPOSIT 100000"), format!("OK {richer}"));
    let wire: String = lines.iter().map(|l| format!("{l}\n")).collect();
    qa.send(wire.as_bytes());
    for (l, first) in lines.iter().zip(&replies[0]) {
        assert_eq!(&qa.line(), first, "{l} after a restart");
    }
    assert_eq!(qa.balance(), richer, "no retry moved money");
    assert_eq!(balance_of(server.addr, "qb"), 7 * IDS as i64);
}

/// One pipeline per connection (three at once) that registers, writes before any login,
/// logs in, switches accounts, fails a login (which logs it out) and writes on, replays a request id of each
/// account, and quits with a write behind the `QUIT`: each line gets its own reply. Then
/// five failed logins between writes: the fifth closes, and nothing behind it runs.
fn logins_and_unauthenticated_writes_interleave_in_one_pipeline(backend: Backend) {
    const CONNS: usize = 3;
    let Some(db) = TestDb::new(backend, "login-pipeline") else {
        return;
    };
    let server = db.start(&[]);
    let addr = server.addr;
    parallel(CONNS, move |i, gate| {
        let (x, y) = (format!("lx{i}"), format!("ly{i}"));
        let (mut b, e) = (Burst::default(), Want::Err);
        b.push("DEPOSIT 5", e("NOT_AUTHENTICATED"));
        b.push(&format!("REGISTER {x} {PW}"), ok("registered"));
        b.push(&format!("REGISTER {y} {PW}"), ok("registered"));
        b.push(&format!("REGISTER {x} {PW}"), e("USER_EXISTS"));
        b.push(&format!("TRANSFER {y} 1 m1"), e("NOT_AUTHENTICATED"));
        b.push("HISTORY", e("NOT_AUTHENTICATED"));
        b.push(&format!("LOGIN {x} {PW}"), ok(format!("welcome {x}")));
        b.push("DEPOSIT 100", ok(100));
        b.push("DEPOSIT 50", ok(150));
        b.push("DEPOSIT 1.5", e("INVALID_AMOUNT"));
        b.push(&format!("TRANSFER {y} 30 m1"), ok(120));
        b.push(&format!("LOGIN {y} {PW}"), ok(format!("welcome {y}")));
        b.push(&format!("TRANSFER {x} 30 m1"), ok(0));
        b.push("WITHDRAW 1", e("INSUFFICIENT_FUNDS"));
        b.push(&format!("TRANSFER {x} 30 m1"), ok(0));
        b.push("DEPOSIT 7", ok(7));
        // A failed login logs the connection out: what follows it acts on no account.
        b.push(&format!("LOGIN {y} wrong-password"), e("AUTH_FAILED"));
        b.push("DEPOSIT 1", e("NOT_AUTHENTICATED"));
        b.push(&format!("LOGIN {x} {PW}"), ok(format!("welcome {x}")));
        b.push(&format!("TRANSFER {y} 30 m1"), ok(120));
        b.push("BALANCE", ok(150));
        b.push("HISTORY 2", ok(2));
        b.want.push(Want::Entry(format!("transfer_in {y} +30 150")));
        b.want
            .push(Want::Entry(format!("transfer_out {y} -30 120")));
        b.push(&format!("LOGIN nobody{i} {PW}"), e("AUTH_FAILED"));
        b.push("BALANCE", e("NOT_AUTHENTICATED"));
        b.push("QUIT", ok("bye"));
        b.wire.push_str("DEPOSIT 1000\n");
        let mut c = Client::connect(addr);
        gate.wait();
        c.send(b.wire.as_bytes());
        check_transcript(&x, &c.expect_closed(LIMIT), &b.want);
    });
    // Failed logins (checked on a worker, or refused at once for their form) between the
    // writes of a logged-in session; each logs the connection out, so it logs in again.
    let mut b = Burst::default();
    b.push(&format!("LOGIN lx0 {PW}"), ok("welcome lx0"));
    let bad = [
        "lx1 wrong-pw-1",
        "nobody wrong-pw-2",
        "lx1 short",
        "lx1 wrong-pw-4",
    ];
    for (n, bad) in bad.iter().chain(&["lx1 wrong-pw-5"]).enumerate() {
        b.push(
            &format!("DEPOSIT {}", n + 1),
            ok(150 + (n + 1) * (n + 2) / 2),
        );
        b.push(&format!("LOGIN {bad}"), Want::Err("AUTH_FAILED"));
        if n < 4 {
            b.push("DEPOSIT 1", Want::Err("NOT_AUTHENTICATED"));
            b.push(&format!("LOGIN lx0 {PW}"), ok("welcome lx0"));
        }
    }
    b.wire.push_str("DEPOSIT 1000\n");
    let mut c = Client::connect(addr);
    c.send(b.wire.as_bytes());
    let got = c.expect_closed(LIMIT);
    check_transcript("five failures", &got, &b.want);
    assert!(String::from_utf8_lossy(&got).ends_with("closing\n"));
    for i in 0..CONNS {
        let want = if i == 0 { 165 } else { 150 };
        let got = balance_of(addr, &format!("lx{i}"));
        assert_eq!(
            got, want,
            "nothing after QUIT, nor after a fifth failed login"
        );
        assert_eq!(balance_of(addr, &format!("ly{i}")), 7);
    }
}

/// Pipelined writes followed by lines of exactly 1024 bytes (a deposit padded with zeros,
/// a transfer padded with tabs and ended by `\r\n`, an unknown word split at its `\r`),
/// then by a line one byte too long: every command before it is answered (a replayed id
/// with its first reply), then `LINE_TOO_LONG` and the end of stream; nothing after runs.
/// Then 5000 writes, a line that never ends and a half-close, all sent at once.
fn lines_at_and_over_the_limit_behind_pipelined_writes(backend: Backend) {
    let Some(db) = TestDb::new(backend, "line-limit") else {
        return;
    };
    let server = db.start(&[]);
    let addr = server.addr;
    Client::logged_in(addr, "lp");
    funded(addr, "ll", 1000);
    let dep = format!("DEPOSIT {:0>w$}", 5, w = MAX_LINE - "DEPOSIT ".len());
    let tail = " lp 3 pad-1";
    let tr = format!("TRANSFER{}{tail}", "\t".repeat(MAX_LINE - 8 - tail.len()));
    assert_eq!((dep.len(), tr.len()), (MAX_LINE, MAX_LINE));
    let unknown = "Y".repeat(MAX_LINE);

    let mut c = login(addr, "ll");
    c.send(format!("DEPOSIT 2\nTRANSFER lp 1 a1\n{dep}\n{tr}\r\nPING\n{unknown}\r").as_bytes());
    for want in ["OK 1002", "OK 1001", "OK 1006", "OK 1003", "PONG"] {
        assert_eq!(c.line(), want);
    }
    // The line end of the split line, and a write behind it.
    c.send(b"\nDEPOSIT 1\n");
    assert_eq!(err_code(&c.line()), Some("UNKNOWN_COMMAND"));
    assert_eq!(c.line(), "OK 1004");
    // 1025 bytes: a '\r' that is not part of the line end makes it one too many.
    let over = format!("{}\r", "Z".repeat(MAX_LINE));
    let wire = format!("TRANSFER lp 2 a2\nDEPOSIT 3\nTRANSFER lp 1 a1\n{over}\r\nDEPOSIT 1000\n");
    c.send(wire.as_bytes());
    for want in ["OK 1002", "OK 1005", "OK 1001"] {
        assert_eq!(c.line(), want);
    }
    assert_eq!(err_code(&c.line()), Some("LINE_TOO_LONG"));
    let rest = c.expect_closed(LIMIT);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // More writes than the server queues before it stops reading, a line that never
    // ends, and a half-close, in one go: the writes are answered, then the error.
    let mut c = login(addr, "ll");
    let mut wire = "DEPOSIT 1\n".repeat(5000).into_bytes();
    wire.extend(std::iter::repeat_n(b'W', MAX_LINE + 1));
    c.send(&wire);
    c.stream().shutdown(Shutdown::Write).unwrap();
    let mut want: Vec<Want> = (1..=5000).map(|k| ok(1005 + k)).collect();
    want.push(Want::Err("LINE_TOO_LONG"));
    check_transcript("long after 5000", &c.expect_closed(LIMIT), &want);

    assert_eq!(
        balance_of(addr, "ll"),
        6005,
        "nothing after a long line ran"
    );
    assert_eq!(balance_of(addr, "lp"), 6);
}

/// How many batches so far committed more than 8 operations (from the metrics page).
fn batches_over_8(metrics: SocketAddr) -> f64 {
    let text = http_get(metrics, "/metrics").1;
    let value = |series: &str| {
        duo_testkit::sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    value("bank_batch_operations_count") - value("bank_batch_operations_bucket{le=\"8.0\"}")
}

/// The pipeline of client `n` in round `r` of the batch test: a payer's eight writes (a
/// job of its own), three of them refused for want of funds; the drainer's four, one
/// refused; the hub's two, one refused.
fn batch_burst(n: usize, r: usize) -> (String, Burst) {
    let (mut b, e) = (Burst::default(), Want::Err);
    match n {
        0 => {
            b.push("WITHDRAW 999999999", e("INSUFFICIENT_FUNDS"));
            b.push("DEPOSIT 1", Want::AnyOk); // the hub's balance depends on the order
            ("bhub".into(), b)
        }
        1 => {
            b.push("DEPOSIT 50", ok(50));
            b.push("TRANSFER bhub 30", ok(20));
            b.push("TRANSFER bhub 30", e("INSUFFICIENT_FUNDS"));
            b.push("TRANSFER bhub 20", ok(0));
            ("bdrain".into(), b)
        }
        n => {
            b.push("DEPOSIT 100", ok(100));
            b.push(&format!("TRANSFER bhub 60 r{r}-{n}a"), ok(40));
            b.push(
                &format!("TRANSFER bhub 60 r{r}-{n}b"),
                e("INSUFFICIENT_FUNDS"),
            );
            b.push("WITHDRAW 50", e("INSUFFICIENT_FUNDS"));
            b.push(&format!("TRANSFER bhub 40 r{r}-{n}c"), ok(0));
            b.push("DEPOSIT 5", ok(5));
            b.push("TRANSFER bhub 5", ok(0));
            b.push("TRANSFER bhub 1", e("INSUFFICIENT_FUNDS"));
            (format!("bp{n}"), b)
        }
    }
}

/// Rounds of pipelines sent at once by eight payers, a drainer and a hub, with refusals
/// for want of funds in the middle: the refusals fail alone inside batches shared by
/// several connections (shown by the metrics), every other write gets its exact balance,
/// and the money adds up.
fn refusals_inside_group_committed_batches_fail_alone(backend: Backend) {
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 5;
    let Some(db) = TestDb::new(backend, "batch-refusals") else {
        return;
    };
    let mut server = db.start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let addr = server.addr;
    for n in 0..CLIENTS {
        Client::logged_in(addr, &batch_burst(n, 0).0);
    }
    let before = batches_over_8(metrics);
    for r in 0..ROUNDS {
        parallel(CLIENTS, move |n, gate| {
            let (user, b) = batch_burst(n, r);
            let mut c = login(addr, &user);
            gate.wait();
            b.run(&format!("{user}, round {r}"), &mut c);
        });
    }
    let shared = batches_over_8(metrics) - before;
    eprintln!("{shared} batches of more than 8 operations (several connections)");
    assert!(shared >= 1.0, "no batch shared by several connections");
    let hub = (ROUNDS * ((CLIENTS - 2) * 105 + 50 + 1)) as i64;
    assert_eq!(balance_of(addr, "bhub"), hub);
    for n in 1..CLIENTS {
        assert_eq!(balance_of(addr, &batch_burst(n, 0).0), 0);
    }
}

/// A reply a write may get while its database restarts.
fn ok_or_unavailable(reply: &str) -> bool {
    reply.starts_with("OK ") || err_code(reply) == Some("UNAVAILABLE")
}

/// What one payer of the restart test sent: its transfers (request id, amount, final
/// reply), and how many of its deposits were answered `OK` and `UNAVAILABLE`.
#[derive(Default)]
struct Payer {
    transfers: Vec<(String, i64, String)>,
    deposits: (i64, i64),
}

/// One payer of the restart test: rounds of 40 pipelined writes until `stop`, counting
/// the rounds answered `OK` throughout in `clean`; then the unavailable transfers again,
/// by id, until answered.
fn restart_payer(mut c: Client, i: usize, stop: &AtomicBool, clean: &AtomicUsize) -> Payer {
    const DEPTH: usize = 40;
    let mut p = Payer::default();
    for round in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let lines: Vec<(String, i64)> = (0..DEPTH)
            .map(|j| (format!("p{i}-{}", round * DEPTH + j), 1 + j as i64))
            .collect();
        let mut wire = String::new();
        for (j, (rid, amount)) in lines.iter().enumerate() {
            wire.push_str(&match j % 8 {
                7 => "DEPOSIT 1\n".to_owned(),
                _ => format!("TRANSFER psink {amount} {rid}\n"),
            });
        }
        c.send(wire.as_bytes());
        let mut all_ok = true;
        for (j, (rid, amount)) in lines.into_iter().enumerate() {
            let reply = c.try_line().unwrap_or_else(|| panic!("pp{i}: dropped"));
            assert!(ok_or_unavailable(&reply), "pp{i}: {rid}: {reply}");
            all_ok &= reply.starts_with("OK ");
            match (j % 8, reply.starts_with("OK ")) {
                (7, true) => p.deposits.0 += 1,
                (7, false) => p.deposits.1 += 1,
                _ => p.transfers.push((rid, amount, reply)),
            }
        }
        if all_ok {
            clean.fetch_add(1, Ordering::SeqCst);
        } else {
            thread::sleep(Duration::from_millis(20)); // a client's back-off
        }
    }
    let since = Instant::now();
    loop {
        let mut retry: Vec<_> = (p.transfers.iter_mut())
            .filter(|t| !t.2.starts_with("OK "))
            .collect();
        if retry.is_empty() {
            return p;
        }
        assert!(since.elapsed() < LIMIT, "pp{i}: still UNAVAILABLE");
        let wire: String = (retry.iter())
            .map(|(rid, amount, _)| format!("TRANSFER psink {amount} {rid}\n"))
            .collect();
        c.send(wire.as_bytes());
        for t in &mut retry {
            t.2 = c.line();
            assert!(ok_or_unavailable(&t.2), "pp{i}: retry of {}: {}", t.0, t.2);
        }
    }
}

/// PostgreSQL restarted (`pg_ctl restart -m fast`) while four payers have pipelines of 40
/// writes (transfers with ids, deposits without) in flight: replies come in order, each
/// `OK` or `ERR UNAVAILABLE` (and nothing else), the connections stay up, the front-end
/// serves reads and writes again by itself; after retrying the unavailable transfers by
/// id, the database holds each transfer once with the balance its `OK` gave, the deposits
/// between the acknowledged and the sent, and balances that match the ledger.
#[test]
fn postgres_restarting_under_deep_pipelines_keeps_acks_and_conserves_money() {
    const PAYERS: usize = 4;
    const START: i64 = 1_000_000;
    let test = "matrix::postgres_restarting_under_deep_pipelines";
    let Some(cluster) = PgCluster::builder().setting("fsync", "off").for_test(test) else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let addr = server.addr;
    Client::logged_in(addr, "psink");
    for i in 0..PAYERS {
        funded(addr, &format!("pp{i}"), START);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clean = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..PAYERS)
        .map(|i| {
            let (stop, clean) = (stop.clone(), clean.clone());
            let c = login(addr, &format!("pp{i}")); // before the restart
            thread::spawn(move || restart_payer(c, i, &stop, &clean))
        })
        .collect();
    let phase = Duration::from_secs(30);
    wait_until_within(phase, "rounds before the restart", || {
        clean.load(Ordering::SeqCst) >= 2 * PAYERS
    });
    let mut probe = login(addr, "psink");
    cluster.restart_fast().expect("pg_ctl restart -m fast");
    let restarted = Instant::now();
    let at_restart = clean.load(Ordering::SeqCst);
    wait_until_within(phase, "a BALANCE after the restart", || {
        let reply = probe.cmd("BALANCE");
        assert!(ok_or_unavailable(&reply), "{reply}");
        reply.starts_with("OK ")
    });
    let reads_back = restarted.elapsed();
    wait_until_within(phase, "rounds answered OK after the restart", || {
        clean.load(Ordering::SeqCst) >= at_restart + 2 * PAYERS
    });
    let writes_back = restarted.elapsed();
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let payers: Vec<Payer> = (threads.into_iter())
        .map(|t| duo_testkit::join_before(deadline, "a payer", t))
        .collect();
    eprintln!("after the restart: reads back in {reads_back:?}, writes in {writes_back:?}");

    let psql = |sql: &str| cluster.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut total_paid = 0;
    for (i, p) in payers.iter().enumerate() {
        let me = format!("pp{i}");
        let recorded = psql(&format!(
            "select r.request_id || ' ' || r.status || ' ' || r.balance from requests r \
             join users u on u.id = r.user_id where u.name = '{me}'"
        ));
        let mut recorded: Vec<&str> = recorded.lines().collect();
        recorded.sort_unstable();
        let mut want: Vec<String> = (p.transfers.iter())
            .map(|(rid, _, reply)| format!("{rid} {reply}"))
            .collect();
        want.sort_unstable();
        assert_eq!(
            recorded, want,
            "{me}: the requests, with the balances replied"
        );
        let paid: i64 = p.transfers.iter().map(|t| t.1).sum();
        // Transfers out and their sum, deposits (without the funding one), the sum of the
        // ledger, the balance.
        let ledger = psql(&format!(
            "select count(*) filter (where l.kind = 'transfer_out') || ' ' || \
             coalesce(-sum(l.amount) filter (where l.kind = 'transfer_out'), 0) || ' ' || \
             count(*) filter (where l.kind = 'deposit') - 1 || ' ' || sum(l.amount) || ' ' || \
             (select balance from users where name = '{me}') \
             from ledger l join users u on u.id = l.user_id where u.name = '{me}'"
        ));
        let f: Vec<i64> = ledger.split(' ').map(|v| v.parse().unwrap()).collect();
        let transfers = p.transfers.len() as i64;
        assert_eq!((f[0], f[1]), (transfers, paid), "{me}: ledger transfers");
        let (acked, lost) = p.deposits;
        let deposits = f[2];
        assert!(
            (acked..=acked + lost).contains(&deposits),
            "{me}: {deposits} deposits on disk, {acked} acknowledged, {lost} unavailable"
        );
        assert_eq!(f[3], f[4], "{me}: balance = sum of its ledger");
        assert_eq!(f[4], START + deposits - paid, "{me}: balance");
        assert_eq!(balance_of(addr, &me), f[4], "{me}: through the bank");
        total_paid += paid;
    }
    assert_eq!(balance_of(addr, "psink"), total_paid, "the sink");
    let created = psql(
        "select sum(balance) - (select sum(amount) from ledger where kind = 'deposit') \
         from users",
    );
    assert_eq!(created, "0", "money created or destroyed");
}
