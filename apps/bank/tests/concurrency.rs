//! Ordering of pipelined commands, money conservation under concurrent transfers, and
//! request-id idempotency, on both storage backends (`NAME::sqlite`, `NAME::postgres`).

#[macro_use]
mod common;

use std::collections::HashMap;

use common::{ok_number, Backend, Client, Gate, TestDb, PW};
use duo_testkit::Rng;

on_both_backends! {
    a_thousand_pipelined_commands_are_answered_in_order,
    concurrent_random_transfers_conserve_money,
    concurrent_transfers_on_a_loop_group_conserve_money,
    concurrent_transfers_on_loops_any_thread_runs_conserve_money,
    request_ids_make_transfers_idempotent,
}

fn a_thousand_pipelined_commands_are_answered_in_order(backend: Backend) {
    let Some(db) = TestDb::new(backend, "pipeline") else {
        return;
    };
    let server = db.start(&[]);
    Client::logged_in(server.addr, "bob");
    let mut alice = Client::connect(server.addr);
    assert_eq!(alice.cmd(&format!("REGISTER alice {PW}")), "OK registered");

    // One write: LOGIN first (so the rest depends on its effect), then a mix of commands
    // that need a worker, the writer, or nothing at all.
    let mut batch = format!("LOGIN alice {PW}\n");
    let mut expected = vec!["OK welcome alice".to_owned()];
    let mut balance = 0i64;
    let mut history_len = 0usize;
    for i in 1..1000 {
        let (cmd, reply) = match i % 9 {
            0 => {
                balance += i;
                history_len += 1;
                (format!("DEPOSIT {i}"), format!("OK {balance}"))
            }
            1 => ("BALANCE".into(), format!("OK {balance}")),
            2 => ("PING".into(), "PONG".into()),
            3 => (
                "WITHDRAW 1000000000000".into(),
                "ERR INSUFFICIENT_FUNDS the balance does not cover the withdrawal".into(),
            ),
            4 if balance > 0 => {
                balance -= 1;
                history_len += 1;
                ("TRANSFER bob 1".into(), format!("OK {balance}"))
            }
            5 => (
                "FROB".into(),
                "ERR UNKNOWN_COMMAND unknown command FROB".into(),
            ),
            6 => (
                "DEPOSIT 0".into(),
                "ERR INVALID_AMOUNT amount must be a whole number of cents from 1 to 1000000000000"
                    .into(),
            ),
            7 if balance > 0 => {
                balance -= 1;
                history_len += 1;
                ("WITHDRAW 1".into(), format!("OK {balance}"))
            }
            _ => {
                balance += 2;
                history_len += 1;
                ("DEPOSIT 2".into(), format!("OK {balance}"))
            }
        };
        batch.push_str(&cmd);
        batch.push('\n');
        expected.push(reply);
    }
    assert_eq!(expected.len(), 1000);
    alice.send(batch.as_bytes());
    for (i, want) in expected.iter().enumerate() {
        let got = alice.line();
        assert_eq!(&got, want, "reply {i} out of order or wrong");
    }
    assert_eq!(alice.balance(), balance);
    assert_eq!(alice.history(1000).len(), history_len);
}

fn concurrent_random_transfers_conserve_money(backend: Backend) {
    transfers_conserve_money(backend, &[]);
}

/// The same on 8 loops shared by 2 I/O threads (`--loops`): the workers' replies reach
/// connections whose loop moves between threads.
fn concurrent_transfers_on_a_loop_group_conserve_money(backend: Backend) {
    transfers_conserve_money(backend, &["--io-threads", "2", "--loops", "8"]);
}

/// The same with `--loop-sharing any`: no loop has an owner, any free thread runs its
/// next turn.
fn concurrent_transfers_on_loops_any_thread_runs_conserve_money(backend: Backend) {
    transfers_conserve_money(
        backend,
        &["--io-threads", "2", "--loops", "8", "--loop-sharing", "any"],
    );
}

fn transfers_conserve_money(backend: Backend, server_args: &[&str]) {
    const ACCOUNTS: usize = 20;
    const CLIENTS: usize = 50;
    const TRANSFERS: usize = 40;
    const START: i64 = 10_000;
    let Some(db) = TestDb::new(backend, "transfers") else {
        return;
    };
    let server = db.start(server_args);
    let addr = server.addr;
    for a in 0..ACCOUNTS {
        let mut c = Client::logged_in(addr, &format!("acct{a}"));
        assert_eq!(c.cmd(&format!("DEPOSIT {START}")), format!("OK {START}"));
    }

    let barrier = Gate::new(CLIENTS);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let me = i % ACCOUNTS;
                let mut c = Client::connect(addr);
                assert_eq!(
                    c.cmd(&format!("LOGIN acct{me} {PW}")),
                    format!("OK welcome acct{me}")
                );
                let mut rng = Rng::new(i as u64 + 1);
                let mut moved = Vec::new();
                barrier.wait();
                let mut n = 0;
                while n < TRANSFERS {
                    // Some requests one by one, some pipelined three to a write, to mix the
                    // per-connection and cross-connection batching paths.
                    let burst = if n % 4 == 0 { 3.min(TRANSFERS - n) } else { 1 };
                    let mut wire = String::new();
                    let mut sent = Vec::new();
                    for _ in 0..burst {
                        let to = (me + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                        let amount = 1 + rng.below(3000) as i64;
                        wire.push_str(&format!("TRANSFER acct{to} {amount}\n"));
                        sent.push((to, amount));
                    }
                    c.send(wire.as_bytes());
                    for (to, amount) in sent {
                        let reply = c.line();
                        match ok_number(&reply) {
                            Some(after) => {
                                assert!(after >= 0, "negative balance {after}");
                                moved.push((me, to, amount));
                            }
                            None => assert!(
                                reply.starts_with("ERR INSUFFICIENT_FUNDS"),
                                "transfer {n}: {reply}"
                            ),
                        }
                        n += 1;
                    }
                }
                moved
            })
        })
        .collect();
    let mut expected = [START; ACCOUNTS];
    let mut oks = 0;
    for t in threads {
        for (from, to, amount) in t.join().expect("client thread") {
            expected[from] -= amount;
            expected[to] += amount;
            oks += 1;
        }
    }
    assert!(oks > 0);

    let mut total = 0;
    for (a, want) in expected.iter().enumerate() {
        let mut c = Client::connect(addr);
        assert_eq!(
            c.cmd(&format!("LOGIN acct{a} {PW}")),
            format!("OK welcome acct{a}")
        );
        let b = c.balance();
        assert!(b >= 0, "acct{a} is negative: {b}");
        assert_eq!(
            b, *want,
            "acct{a}: balance differs from the acknowledged transfers"
        );
        total += b;
    }
    assert_eq!(total, START * ACCOUNTS as i64, "money created or destroyed");
}

fn request_ids_make_transfers_idempotent(backend: Backend) {
    let Some(db) = TestDb::new(backend, "idempotent") else {
        return;
    };
    let server = db.start(&[]);
    let mut bob = Client::logged_in(server.addr, "bob");
    let mut alice = Client::logged_in(server.addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");

    assert_eq!(alice.cmd("TRANSFER bob 100 pay-1"), "OK 900");
    // The retry returns the first result and moves nothing.
    assert_eq!(alice.cmd("TRANSFER bob 100 pay-1"), "OK 900");
    assert_eq!(alice.balance(), 900);
    assert_eq!(bob.balance(), 100);
    // Also from another connection of the same user, after other changes.
    assert_eq!(alice.cmd("DEPOSIT 5"), "OK 905");
    let mut alice2 = Client::connect(server.addr);
    assert_eq!(alice2.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
    assert_eq!(alice2.cmd("TRANSFER bob 100 pay-1"), "OK 900");
    assert_eq!(alice2.balance(), 905);
    // A retry pipelined right behind the original (same write, same commit).
    alice.send(b"TRANSFER bob 10 pay-2\nTRANSFER bob 10 pay-2\nBALANCE\n");
    assert_eq!(alice.line(), "OK 895");
    assert_eq!(alice.line(), "OK 895");
    assert_eq!(alice.line(), "OK 895");
    // A new id moves money again.
    assert_eq!(alice.cmd("TRANSFER bob 100 pay-3"), "OK 795");
    // The same id for a different transfer is refused.
    assert!(alice
        .cmd("TRANSFER bob 101 pay-3")
        .starts_with("ERR BAD_REQUEST request id already used"));
    // Ids are per user.
    assert_eq!(bob.cmd("TRANSFER alice 1 pay-1"), "OK 209");
    // A refusal is the first result too, even once the balance would cover it.
    assert!(alice
        .cmd("TRANSFER bob 5000 pay-4")
        .starts_with("ERR INSUFFICIENT_FUNDS"));
    assert_eq!(alice.cmd("DEPOSIT 10000"), "OK 10796");
    assert!(alice
        .cmd("TRANSFER bob 5000 pay-4")
        .starts_with("ERR INSUFFICIENT_FUNDS"));
    assert_eq!(alice.balance(), 10796);
    // Without an id, every transfer moves money.
    assert_eq!(alice.cmd("TRANSFER bob 1"), "OK 10795");
    assert_eq!(alice.cmd("TRANSFER bob 1"), "OK 10794");

    let mut transfers: HashMap<String, usize> = HashMap::new();
    for line in alice.history(100) {
        *transfers
            .entry(line.split(' ').nth(1).unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(transfers.get("transfer_out"), Some(&5), "{transfers:?}");
    assert_eq!(transfers.get("transfer_in"), Some(&1), "{transfers:?}");
    assert_eq!(bob.balance(), 100 + 10 + 100 - 1 + 2);
}
