//! `echo serve --processes N`: combinations of supervisor states that no other test
//! combines, each one a bug found by review (see the doc comment of each test).
//!
//! Run against the real binary; every wait is bounded ([`LIMIT`]), every process is
//! killed by PID (one test plays a terminal's Ctrl-C with SIGINT to a process group the
//! test made for its supervisor, and nothing else). A reload is held pending without
//! guessing at timing by a [`Gate`] (as in `process_matrix.rs`): the supervisor runs from
//! a hard link of `echo` in a directory of its own; closing the gate puts a script at
//! that path under which a new worker waits until a file `open` (or `open-PID`) exists,
//! or (`fail` present) exits at once with status 7.

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::supervised::{large_request_pending, Gate, Pids, Sup, ECHO};
use common::{round_trip, IO_TIMEOUT};
use duo_sys::socket2::{Domain, Socket, Type};
use duo_testkit::{run_within, send_signal, wait_until, LIMIT};

impl Sup {
    /// As [`connect`](Self::connect), with a 4 KiB receive buffer (set before the
    /// connect, so the kernel does not grow it): a reply the client does not read then
    /// stays mostly in the worker's output buffer, not in the kernel's queues (a killed
    /// worker's kernel queue is still delivered; its own buffer is lost).
    fn connect_small_window(&self) -> TcpStream {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect_timeout(&self.addr().into(), Duration::from_secs(5))
            .expect("connect");
        let s = TcpStream::from(socket);
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

/// The inode of the server side of the TCP connection from port `client` to port
/// `server`, from `/proc/net/tcp`.
fn server_side_inode(server: u16, client: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.split(':').nth(1)?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && port(f[1]) == Some(server) && port(f[2]) == Some(client))
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// Whether process `pid` holds the socket `inode` open.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten().any(|e| {
                fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want.as_str())
            })
        })
        .unwrap_or(false)
}

/// Which of `pids` holds the server side of connection `s` (after a round trip on it).
fn owner(sup: &Sup, s: &TcpStream, pids: &Pids) -> Option<u32> {
    let (client, server) = (s.local_addr().unwrap().port(), sup.addr().port());
    let inode = server_side_inode(server, client)?;
    pids.iter().copied().find(|pid| holds_socket(*pid, inode))
}

/// Everything `s` yields until EOF, and the error that ended it early, if any.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (all, None),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => return (all, Some(e)),
        }
    }
}

/// Bug 1. A reload whose new generation fails to start (one of its workers dies before
/// it is ready) is aborted with `SIGKILL` to every worker of that generation, also to one
/// that already reported ready and has been accepting (and serving) connections from the
/// shared socket all along: its clients' replies are cut off. The promise is that a
/// reload refuses or resets no connection, and that a failed one leaves the old
/// generation serving as if nothing had happened; a new worker that is ready has to be
/// retired as the old ones are (`SIGTERM`: it drains), not killed.
#[test]
fn a_failed_reload_does_not_cut_off_the_replies_of_its_ready_worker() {
    let gate = Gate::new("failed-reload-drain");
    // One connection per worker at most: a full worker leaves new connections to the
    // others (`WhenFull::Pause`), which is how a client is sent to the new worker below.
    let mut sup = Sup::start(
        &gate.exe(),
        2,
        &["--drain-timeout", "60", "--max-conns", "1"],
    );
    let g1 = sup.workers();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = sup.connect();
        round_trip(&mut s, b"hold");
        held.push(s);
    }
    gate.close();
    sup.signal("HUP");
    sup.log_has("starting generation 2");
    let mut g2 = Pids::new();
    wait_until("generation 2 started, waiting at the gate", || {
        g2 = sup.workers().difference(&g1).copied().collect();
        g2.len() == 2
    });
    let (ready, doomed) = (*g2.first().unwrap(), *g2.last().unwrap());
    gate.open_for(ready);
    sup.log_has(&format!("worker {ready} (generation 2) is ready"));
    // A client of the new worker (generation 1 is full), with a large reply on its way.
    let mut s = sup.connect_small_window();
    round_trip(&mut s, b"whose");
    let all: Pids = g1.union(&g2).copied().collect();
    assert_eq!(
        owner(&sup, &s, &all),
        Some(ready),
        "served by the ready new worker"
    );
    let data = large_request_pending(&sup, &s);
    // The other new worker crashes before it is ready: the reload fails.
    send_signal(doomed, "KILL").unwrap();
    sup.log_has("generation 1 keeps serving");
    let (got, err) = read_all(&mut s);
    assert!(
        err.is_none() && got.len() == data.len(),
        "the reply of the ready worker {ready} of the failed generation was cut off: \
         {} of {} bytes, then {err:?}; stderr:\n{}",
        got.len(),
        data.len(),
        sup.stderr()
    );
    assert!(got == data, "the reply is the request");
    drop(s);
    wait_until("generation 1 alone", || sup.workers() == g1);
    for s in &mut held {
        round_trip(s, b"still");
    }
    drop(held);
    sup.signal("TERM");
    sup.exited_0();
}

/// The process group of `pid` (`/proc/PID/stat`: "pid (comm) state ppid pgrp ...").
fn process_group(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Bug 2. Ctrl-C on `echo serve --processes N` in a terminal: the terminal sends SIGINT
/// to the whole foreground process group, the supervisor and its workers (which it
/// starts in its own group). Each worker then gets SIGINT from the terminal and SIGTERM
/// from the supervisor, two stop signals, and "a second signal quits at once": its
/// pending output is dropped, where a single-process `echo serve` drains, as documented
/// ("SIGINT or SIGTERM stops the server gracefully ... a supervisor forwards the signal
/// to its workers and exits once they have"). The terminal is played by `kill -s INT --
/// -PGID`, to a process group of the supervisor's own (it is started as its leader, so
/// the group is the supervisor and what it started, nothing else).
#[test]
fn ctrl_c_in_a_terminal_drains_the_workers_as_one_sigint_does() {
    let mut sup = Sup::start_with(Path::new(ECHO), 2, &["--drain-timeout", "60"], |cmd| {
        cmd.process_group(0);
    });
    let pgid = sup.pid();
    assert_eq!(
        process_group(pgid),
        Some(pgid),
        "the supervisor leads its group"
    );
    let workers = sup.workers();
    let mut s = sup.connect_small_window();
    round_trip(&mut s, b"whose");
    let holder = owner(&sup, &s, &workers).expect("a worker holds the connection");
    let data = large_request_pending(&sup, &s);
    let mut kill = Command::new("kill");
    kill.args(["-s", "INT", "--", &format!("-{pgid}")]);
    let done = run_within(&mut kill, LIMIT).unwrap();
    assert!(done.status.success(), "{done:?}");
    let (got, err) = read_all(&mut s);
    assert!(
        err.is_none() && got.len() == data.len(),
        "Ctrl-C cut the pending reply of worker {holder} off: {} of {} bytes, then \
         {err:?}; stderr:\n{}",
        got.len(),
        data.len(),
        sup.stderr()
    );
    assert!(got == data, "the reply is the request");
    drop(s);
    sup.exited_0();
}

/// Bug 3. An upgrade (`SIGUSR2`) while the serving generation has no live worker (they
/// keep dying young and the next restart waits out its back-off) hands over an empty
/// list of workers; the new image then takes itself for a first start
/// (`Supervisor::is_upgrade` is `!adopted.is_empty()`) and runs `on_ready` again: a
/// second `listening on` line. Documented: `on_ready` runs once, "not after an upgrade";
/// echo "prints `listening on ADDR` once the first workers are ready (not again after an
/// upgrade, whose first image printed it)".
#[test]
fn an_upgrade_while_every_worker_waits_out_its_back_off_does_not_announce_again() {
    let gate = Gate::new("upgrade-in-back-off");
    let mut sup = Sup::start(&gate.exe(), 1, &[]);
    let first = *sup.workers().first().unwrap();
    gate.fail(true);
    gate.close();
    send_signal(first, "KILL").unwrap();
    // Its replacements exit at once (status 7): wait until a restart waits 1.6 s, with
    // no worker alive meanwhile (the margin for the signal below to arrive first).
    sup.log_has("restarting in 1.6s");
    assert!(sup.workers().is_empty(), "{:?}", sup.workers());
    gate.fail(false);
    gate.open();
    sup.signal("USR2");
    sup.log_has("handing over workers []");
    wait_until("the upgraded image serving with one worker", || {
        let log = sup.stderr();
        let tail = log.rsplit("handing over workers []").next().unwrap_or("");
        tail.contains(" is serving: workers") && sup.workers().len() == 1
    });
    round_trip(&mut sup.connect(), b"after");
    sup.signal("TERM");
    sup.exited_0();
    // Stdout is closed now: the next `listening on` line is there at once, or never.
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sup.line_starting("listening on ", Duration::from_secs(1))
    }));
    assert!(
        again.is_err(),
        "announced a second time after the upgrade: {:?}",
        again.ok()
    );
}
