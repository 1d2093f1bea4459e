//! `kill -9` at random moments of a transfer storm, round after round on the same
//! database. Each round: start the server, let every account's client pipeline transfers
//! (half of them with request ids) to the others, kill the server with SIGKILL after a
//! random 50-400 ms, restart it and check, against what the clients saw:
//!
//! - every acknowledged transfer (`OK <balance>`) is in the ledger, with that balance;
//! - a transfer whose reply was lost is in the ledger at most once: retrying its request
//!   id settles it (and a second retry replays the first answer and moves nothing), and a
//!   transfer without an id that is in the ledger was really sent;
//! - money is conserved, no balance is negative, every balance equals the initial deposit
//!   adjusted by the transfers the ledger holds, each ledger is a consistent chain and
//!   every transfer has both of its halves, next to each other;
//! - the newest acknowledged transfer shows in `HISTORY`, and retried request ids of
//!   earlier rounds replay their first answer.
//!
//! Rounds alternate group commit on and off. The seed is printed; `CRASH_SEED=<n>` repeats
//! a run's choices (not its timing).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ok_number, Client, Gate, Server, TempDir, PW};
use duo_testkit::Rng;

/// Accounts; each has a client paying the others.
const ACCOUNTS: usize = 5;
/// Each account's initial deposit, in cents.
const FUNDS: i64 = 50_000;
/// Largest transfer (small enough against `FUNDS` that refusals are rare but happen).
const MAX_AMOUNT: u64 = 3_000;
/// Crash rounds.
const ROUNDS: usize = 20;
/// Most transfers one client pipelines in one write.
const MAX_BATCH: u64 = 4;

fn name(a: usize) -> String {
    format!("acct{a}")
}

/// What became of a transfer, as far as its client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// `OK <balance>`.
    Done(i64),
    /// `ERR INSUFFICIENT_FUNDS ...` (the whole line).
    Refused(String),
    /// No reply: cut off by the kill.
    Unknown,
}

/// One transfer a client sent.
#[derive(Debug, Clone)]
struct Sent {
    payer: usize,
    to: usize,
    amount: i64,
    request_id: Option<String>,
    round: usize,
    outcome: Outcome,
}

impl Sent {
    fn line(&self) -> String {
        match &self.request_id {
            Some(id) => format!("TRANSFER {} {} {id}", name(self.to), self.amount),
            None => format!("TRANSFER {} {}", name(self.to), self.amount),
        }
    }
}

fn outcome_of(reply: &str) -> Option<Outcome> {
    if let Some(b) = ok_number(reply) {
        Some(Outcome::Done(b))
    } else if reply.starts_with("ERR INSUFFICIENT_FUNDS ") {
        Some(Outcome::Refused(reply.to_owned()))
    } else {
        None
    }
}

/// A storm client: pipelines batches of transfers until the connection dies. A partial
/// reply line (the kill cut it) counts as no reply.
fn storm(addr: SocketAddr, payer: usize, round: usize, seed: u64, gate: &Gate) -> Vec<Sent> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let line = |reader: &mut BufReader<TcpStream>| -> Option<String> {
        let mut buf = String::new();
        match reader.read_line(&mut buf) {
            Ok(_) if buf.ends_with('\n') => {
                buf.pop();
                Some(buf)
            }
            _ => None,
        }
    };
    writer
        .write_all(format!("LOGIN {} {PW}\n", name(payer)).as_bytes())
        .expect("login");
    assert_eq!(
        line(&mut reader).as_deref(),
        Some(format!("OK welcome {}", name(payer)).as_str())
    );
    gate.wait();

    let mut rng = Rng::new(seed);
    let mut sent: Vec<Sent> = Vec::new();
    let mut n = 0;
    'storm: loop {
        let k = 1 + rng.below(MAX_BATCH) as usize;
        let first = sent.len();
        let mut wire = String::new();
        for _ in 0..k {
            let to = (payer + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
            let t = Sent {
                payer,
                to,
                amount: 1 + rng.below(MAX_AMOUNT) as i64,
                request_id: (rng.below(2) == 0).then(|| format!("r{round}-{n}")),
                round,
                outcome: Outcome::Unknown,
            };
            n += 1;
            wire.push_str(&t.line());
            wire.push('\n');
            sent.push(t);
        }
        if writer.write_all(wire.as_bytes()).is_err() {
            break;
        }
        for t in &mut sent[first..] {
            let Some(reply) = line(&mut reader) else {
                break 'storm;
            };
            t.outcome = outcome_of(&reply).unwrap_or_else(|| {
                panic!("{}: {}: unexpected reply {reply:?}", name(payer), t.line())
            });
        }
    }
    sent
}

/// The ledger and balances, read straight from the database (beside the running server).
struct Ledger {
    /// Account index by user id.
    index: HashMap<i64, usize>,
    balances: Vec<i64>,
    /// (id, account, kind, counterparty account, amount, balance after), by id.
    entries: Vec<(i64, usize, String, Option<usize>, i64, i64)>,
}

fn read_ledger(db: &Path) -> Ledger {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the database read-only");
    let mut index = HashMap::new();
    let mut balances = vec![0; ACCOUNTS];
    let mut by_name = HashMap::new();
    let mut q = c.prepare("SELECT id, name, balance FROM users").unwrap();
    let rows = q
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, user, balance) = row.unwrap();
        let a: usize = user
            .strip_prefix("acct")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected user {user}"));
        index.insert(id, a);
        by_name.insert(user, a);
        balances[a] = balance;
    }
    assert_eq!(index.len(), ACCOUNTS, "accounts");
    let mut q = c
        .prepare(
            "SELECT id, user_id, kind, counterparty, amount, balance_after FROM ledger ORDER BY id",
        )
        .unwrap();
    let entries = q
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .unwrap()
        .map(|row| {
            let (id, user, kind, cp, amount, after) = row.unwrap();
            let cp = cp.map(|n| by_name[&n]);
            (id, index[&user], kind, cp, amount, after)
        })
        .collect();
    Ledger {
        index,
        balances,
        entries,
    }
}

/// Logs in to account `a` on a new connection.
fn login(addr: SocketAddr, a: usize) -> Client {
    let mut c = Client::connect(addr);
    assert_eq!(
        c.cmd(&format!("LOGIN {} {PW}", name(a))),
        format!("OK welcome {}", name(a))
    );
    c
}

/// After a restart: settles the transfers with request ids that got no reply, then checks
/// everything the module documentation lists.
fn verify(addr: SocketAddr, db: &Path, sent: &mut [Sent], round: usize, rng: &mut Rng) {
    let mut clients: Vec<Client> = (0..ACCOUNTS).map(|a| login(addr, a)).collect();

    // Transfers with an id and no reply: the retry's answer is the transfer's fate, and
    // a second retry must give the same answer without moving money.
    for t in sent.iter_mut() {
        if t.outcome != Outcome::Unknown || t.request_id.is_none() {
            continue;
        }
        let c = &mut clients[t.payer];
        let first = c.cmd(&t.line());
        let outcome = outcome_of(&first)
            .unwrap_or_else(|| panic!("retry of {}: unexpected reply {first:?}", t.line()));
        let before = c.balance();
        assert_eq!(c.cmd(&t.line()), first, "second retry of {}", t.line());
        assert_eq!(
            c.balance(),
            before,
            "second retry of {} moved money",
            t.line()
        );
        t.outcome = outcome;
    }
    // Some acknowledged transfers with ids, from any round: the retry replays the answer.
    for (a, c) in clients.iter_mut().enumerate() {
        let with_ids: Vec<&Sent> = sent
            .iter()
            .filter(|t| t.payer == a && t.request_id.is_some())
            .collect();
        if with_ids.is_empty() {
            continue;
        }
        let before = c.balance();
        for _ in 0..3 {
            let t = with_ids[rng.below(with_ids.len() as u64) as usize];
            let reply = c.cmd(&t.line());
            assert_eq!(
                outcome_of(&reply).as_ref(),
                Some(&t.outcome),
                "round {}: retry of {} by {}: {reply}",
                t.round,
                t.line(),
                name(a)
            );
        }
        assert_eq!(c.balance(), before, "{}: a replay moved money", name(a));
    }

    let ledger = read_ledger(db);
    let ctx = |what: String| format!("after the kill of round {round}: {what}");

    // Each ledger is a chain from 0: one initial deposit, then transfers; never negative.
    let mut running = vec![0i64; ACCOUNTS];
    let mut deposits = vec![0; ACCOUNTS];
    for (i, &(id, a, ref kind, cp, amount, after)) in ledger.entries.iter().enumerate() {
        assert_eq!(
            running[a] + amount,
            after,
            "{}",
            ctx(format!("ledger entry {id}"))
        );
        assert!(after >= 0, "{}", ctx(format!("ledger entry {id} negative")));
        running[a] = after;
        match kind.as_str() {
            "deposit" => {
                deposits[a] += 1;
                assert_eq!(amount, FUNDS);
            }
            "transfer_out" => {
                // Its other half is the very next entry.
                let next = ledger.entries.get(i + 1);
                let want = (id + 1, cp.unwrap(), "transfer_in", Some(a), -amount);
                let got = next.map(|n| (n.0, n.1, n.2.as_str(), n.3, n.4));
                assert_eq!(
                    got,
                    Some(want),
                    "{}",
                    ctx(format!("halves of transfer {id}"))
                );
            }
            "transfer_in" => {
                let prev = &ledger.entries[i.checked_sub(1).expect("a first entry")];
                assert_eq!(
                    prev.2,
                    "transfer_out",
                    "{}",
                    ctx(format!("entry {id} alone"))
                );
            }
            other => panic!("{}", ctx(format!("unexpected ledger entry {id}: {other}"))),
        }
    }
    assert_eq!(deposits, vec![1; ACCOUNTS], "{}", ctx("deposits".into()));
    assert_eq!(
        running,
        ledger.balances,
        "{}",
        ctx("balances vs ledgers".into())
    );
    assert_eq!(
        ledger.balances.iter().sum::<i64>(),
        FUNDS * ACCOUNTS as i64,
        "{}",
        ctx("money created or destroyed".into())
    );

    // Every acknowledged transfer is in its payer's ledger with the acknowledged balance;
    // what else is there was sent and never answered.
    let mut outs: HashMap<(usize, usize, i64, i64), usize> = HashMap::new();
    for &(_, a, ref kind, cp, amount, after) in &ledger.entries {
        if kind == "transfer_out" {
            *outs.entry((a, cp.unwrap(), -amount, after)).or_default() += 1;
        }
    }
    for t in sent.iter() {
        if let Outcome::Done(b) = t.outcome {
            let key = (t.payer, t.to, t.amount, b);
            match outs.get_mut(&key) {
                Some(n) if *n > 0 => *n -= 1,
                _ => panic!(
                    "{}",
                    ctx(format!(
                        "acknowledged transfer lost: {} by {} in round {} (OK {b})",
                        t.line(),
                        name(t.payer),
                        t.round
                    ))
                ),
            }
        }
    }
    let mut unanswered: HashMap<(usize, usize, i64), usize> = HashMap::new();
    for t in sent.iter().filter(|t| t.outcome == Outcome::Unknown) {
        *unanswered.entry((t.payer, t.to, t.amount)).or_default() += 1;
    }
    let mut committed_unanswered = 0;
    for (&(a, to, amount, after), &n) in &outs {
        for _ in 0..n {
            match unanswered.get_mut(&(a, to, amount)) {
                Some(k) if *k > 0 => {
                    *k -= 1;
                    committed_unanswered += 1;
                }
                _ => panic!(
                    "{}",
                    ctx(format!(
                        "transfer in the ledger that nobody sent (or applied twice): {} -> {} \
                         {amount}, balance after {after}",
                        name(a),
                        name(to)
                    ))
                ),
            }
        }
    }

    // What the server says agrees.
    for (a, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.balance(),
            ledger.balances[a],
            "{}",
            ctx(format!("BALANCE of {}", name(a)))
        );
        // The newest acknowledged transfer of this account is in its HISTORY.
        let last = sent
            .iter()
            .rev()
            .find(|t| t.payer == a && matches!(t.outcome, Outcome::Done(_)));
        if let Some(t) = last {
            let Outcome::Done(b) = t.outcome else {
                unreachable!()
            };
            let needle = format!(" transfer_out {} -{} {b} ", name(t.to), t.amount);
            let history = c.history(1000);
            assert!(
                history.iter().any(|l| l.contains(&needle)),
                "{}",
                ctx(format!("{}: {needle:?} not in HISTORY", name(a)))
            );
        }
    }
    let unknown = sent
        .iter()
        .filter(|t| t.outcome == Outcome::Unknown)
        .count();
    eprintln!(
        "round {round}: ledger {} entries; {unknown} transfers without id never answered, \
         {committed_unanswered} of them committed",
        ledger.entries.len()
    );
    let _ = ledger.index;
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_transfer() {
    let started = Instant::now();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash_rounds: CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("crash-rounds");
    let db = dir.join("bank.db");

    {
        let server = Server::start(&db, &[]);
        for a in 0..ACCOUNTS {
            let mut c = Client::logged_in(server.addr, &name(a));
            assert_eq!(c.cmd(&format!("DEPOSIT {FUNDS}")), format!("OK {FUNDS}"));
        }
    } // killed: the deposits were acknowledged, so they are on disk

    let mut sent: Vec<Sent> = Vec::new();
    let mut kills_at = Vec::new();
    let mut storm_sizes = Vec::new();
    for round in 0..ROUNDS {
        let extra: &[&str] = if round % 2 == 0 {
            &[]
        } else {
            &["--no-group-commit"]
        };
        let mut server = Server::start(&db, extra);
        let addr = server.addr;
        if round > 0 {
            verify(addr, &db, &mut sent, round - 1, &mut rng);
        }

        let gate = Gate::new(ACCOUNTS + 1);
        let clients: Vec<_> = (0..ACCOUNTS)
            .map(|a| {
                let gate = gate.clone();
                let seed = rng.next_u64();
                std::thread::spawn(move || storm(addr, a, round, seed, &gate))
            })
            .collect();
        gate.wait();
        let after = Duration::from_millis(50 + rng.below(351));
        std::thread::sleep(after);
        server.kill9();
        kills_at.push(after.as_millis());
        let mut n = 0;
        for c in clients {
            let mine = c.join().expect("storm client");
            n += mine.len();
            sent.extend(mine);
        }
        storm_sizes.push(n);
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "round {round}: already {:?}",
            started.elapsed()
        );
    }
    let server = Server::start(&db, &[]);
    verify(server.addr, &db, &mut sent, ROUNDS - 1, &mut rng);

    let done = sent
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Done(_)))
        .count();
    let refused = sent
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Refused(_)))
        .count();
    eprintln!(
        "crash_rounds: {ROUNDS} rounds in {:?}; kills after {kills_at:?} ms; transfers sent \
         per round {storm_sizes:?}; {} in all, {done} done, {refused} refused",
        started.elapsed(),
        sent.len()
    );
    assert!(
        storm_sizes.iter().all(|&n| n > 0),
        "a round sent nothing: {storm_sizes:?}"
    );
    assert!(done >= ROUNDS * ACCOUNTS, "too few transfers: {done}");
}
