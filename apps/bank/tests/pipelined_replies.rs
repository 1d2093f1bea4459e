//! Replies the server makes at once (`PONG`, refusals, parse errors) to commands a client
//! pipelined go out together: one send per burst of commands read, not one per reply. A
//! flood of them then costs the connection's loop a system call per read, not one per
//! command, and the other connections of that loop are not kept waiting meanwhile. The
//! order of the replies, with those a worker makes in between, is the order of the
//! commands.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::{scrape, Client, Server, TempDir, PW};
use duo_testkit::family_sum;

/// The sends of every connection so far (`duo_server_messages_out_total`, all loops).
fn sends(metrics: SocketAddr) -> f64 {
    family_sum(&scrape(metrics), "duo_server_messages_out_total")
}

#[test]
fn replies_to_a_pipelined_burst_go_out_in_a_few_sends() {
    const N: usize = 1000;
    let dir = TempDir::new("pipelined");
    let mut server = Server::start(&dir.join("bank.db"), &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut c = Client::connect(server.addr);
    let before = sends(metrics);
    // One write: PINGs, commands refused without a login, and lines that do not parse.
    let mut burst = String::new();
    for i in 0..N {
        burst.push_str(match i % 3 {
            0 => "PING\n",
            1 => "BALANCE\n",
            _ => "FROBNICATE\n",
        });
    }
    c.stream().write_all(burst.as_bytes()).unwrap();
    for i in 0..N {
        let line = c.line();
        let expected = match i % 3 {
            0 => "PONG",
            1 => "ERR NOT_AUTHENTICATED",
            _ => "ERR UNKNOWN_COMMAND",
        };
        assert!(line.starts_with(expected), "reply {i}: {line:?}");
    }
    // A send is counted just after its system call, so the last one may be counted only
    // after the client has its bytes; by the time the loop answers one more command, it
    // has been. (That command's own send may be counted or not.)
    assert_eq!(c.cmd("PING"), "PONG");
    let used = sends(metrics) - before;
    // The burst arrives in a few reads (the kernel may split it); each read's replies go
    // out in one send.
    assert!(used >= 1.0, "the replies were sent: {used}");
    assert!(used <= 21.0, "{N} replies took {used} sends");
}

/// Replies made at once stay in order with the ones workers make: the ones before a
/// worker's command go out before its reply, the ones after it after.
#[test]
fn replies_made_at_once_and_by_workers_keep_the_commands_order() {
    let dir = TempDir::new("pipelined-order");
    let server = Server::start(&dir.join("bank.db"), &[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    let mut burst = String::new();
    for i in 0..50 {
        burst.push_str(&format!("PING\nDEPOSIT {}\nPING\nBALANCE\nNOPE\n", i + 1));
    }
    burst.push_str(&format!("LOGIN alice {PW}\nPING\n"));
    alice.stream().write_all(burst.as_bytes()).unwrap();
    let mut balance = 0;
    for i in 0..50 {
        balance += i + 1;
        assert_eq!(alice.line(), "PONG", "round {i}");
        assert_eq!(alice.line(), format!("OK {balance}"), "round {i}");
        assert_eq!(alice.line(), "PONG", "round {i}");
        assert_eq!(alice.line(), format!("OK {balance}"), "round {i}");
        assert!(alice.line().starts_with("ERR UNKNOWN_COMMAND"), "round {i}");
    }
    assert_eq!(alice.line(), "OK welcome alice");
    assert_eq!(alice.line(), "PONG");
}
