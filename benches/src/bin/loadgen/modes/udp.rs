//! `rr --udp`: request/response over UDP. Each of CONNS connected UDP sockets sends a
//! SIZE-byte datagram (a sequence number, the socket's index, then bytes of its own) and
//! waits for the echo before sending the next; the echo must be the same bytes.
//!
//! UDP may lose a datagram: a request unanswered after [`LOSS_TIMEOUT`] (or `--timeout`,
//! if shorter) is counted as `lost` and the socket sends the next one; an echo that comes
//! back later is recognised by its old sequence number and ignored. An echo already
//! waiting in the socket when the request expires is read first and counted as an answer,
//! never as a loss. Latency, rate and the report are those of the TCP `rr` mode: a request
//! still in flight when the phase ends counts with what it has waited so far if that is
//! longer than every answered one ([`Latency::record_unanswered`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use duo_sys::{Epoll, Events, Interest};

use crate::cli::{EchoArgs, Mode};
use crate::fault::Fault;
#[cfg(doc)]
use crate::latency::Latency;
use crate::modes::{finish, Env, Tally};
use crate::report::Report;
use crate::runner::{open_and_measure, run_threads, share, ServerCpu, Ticket};

/// How long a request may wait for its echo before it counts as lost.
const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

/// The header of each datagram: sequence number and socket index (`u64` big-endian each).
const HEADER: usize = 16;

/// Refuses `--udp` where it does not apply: with another mode than `rr`, with
/// `--reconnect`, with `--tls-ca` (no TLS over datagrams), with a Unix-domain `--addr`,
/// or with a size that cannot carry the header or is no datagram.
pub(crate) fn check_usage(mode: &Mode) -> Result<(), String> {
    match mode {
        Mode::Pingpong(a) if a.udp => Err("--udp goes with rr alone".into()),
        Mode::Rr(a) if a.udp && a.reconnect => Err("--udp has no connections to reopen: \
             drop --reconnect"
            .into()),
        Mode::Rr(a) if a.udp && a.common.tls_ca.is_some() => {
            Err("--udp speaks no TLS: drop --tls-ca (or --udp)".into())
        }
        Mode::Rr(a) if a.udp && a.addr.starts_with("unix:") => Err(format!(
            "--udp needs a HOST:PORT --addr, not the Unix-domain {}",
            a.addr
        )),
        Mode::Rr(EchoArgs {
            udp: true,
            size: Some(size),
            ..
        }) if !(HEADER as u64..=duo_net::udp::MAX_PAYLOAD as u64).contains(size) => Err(format!(
            "--size must be {HEADER}..={} with --udp",
            duo_net::udp::MAX_PAYLOAD
        )),
        _ => Ok(()),
    }
}

/// Runs `rr --udp`.
pub(crate) fn run(args: &EchoArgs, env: &Env) -> Result<Report, String> {
    let Some(target) = env.target.inet() else {
        return Err(format!(
            "rr --udp needs a HOST:PORT --addr, not the Unix-domain {}",
            env.target
        ));
    };
    let size = args.size.unwrap_or(64) as usize;
    let mut report = Report {
        mode: "udp-rr",
        unit: "requests",
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
    let loss = LOSS_TIMEOUT.min(env.timeout);
    let mut cpu = ServerCpu::default();
    let results = run_threads(
        threads,
        |t, ticket| {
            let mine: Vec<usize> = share(conns, threads, t).collect();
            worker(env, target, &mine, size, args.secs, loss, ticket)
        },
        |gate| {
            gate.wait_arrivals(threads, setup_deadline);
            cpu = open_and_measure(gate, env.server_pid, args.secs);
        },
    );
    let tally = finish(&mut report, cpu, results, true)?;
    report.established = Some(tally.established);
    Ok(report)
}

/// One socket and its outstanding request.
struct Client {
    sock: UdpSocket,
    /// The request in flight (its sequence number is in the first 8 bytes).
    request: Vec<u8>,
    seq: u64,
    sent_at: Instant,
    /// An error was counted for this request: its expiry is not counted as a loss too.
    failed: bool,
}

impl Client {
    fn new(index: usize, target: SocketAddr, size: usize, seed: u64) -> io::Result<Client> {
        let local: SocketAddr = if target.is_ipv4() {
            "127.0.0.1:0".parse().expect("constant address")
        } else {
            "[::1]:0".parse().expect("constant address")
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(target)?;
        sock.set_nonblocking(true)?;
        let mut request = duo_testkit::random_bytes(seed, size);
        request[8..HEADER].copy_from_slice(&(index as u64).to_be_bytes());
        Ok(Client {
            sock,
            request,
            seq: 0,
            sent_at: Instant::now(),
            failed: false,
        })
    }

    /// Sends the next request.
    fn send_next(&mut self, faults: &mut crate::fault::Faults) {
        self.seq += 1;
        self.request[..8].copy_from_slice(&self.seq.to_be_bytes());
        self.sent_at = Instant::now();
        self.failed = false;
        if let Err(e) = self.sock.send(&self.request) {
            faults.count(Fault::of(&e));
            self.failed = true;
        }
    }

    /// Whether `datagram` is the faithful echo of an earlier request of this socket (one
    /// counted as lost): the same bytes but for an older sequence number. Anything else
    /// that is not the echo of the request in flight (shorter, longer, other bytes, even
    /// in the header) is a mismatch.
    fn is_late_echo(&self, datagram: &[u8]) -> bool {
        datagram.len() == self.request.len()
            && datagram[8..] == self.request[8..]
            && datagram[..8]
                .try_into()
                .is_ok_and(|seq| u64::from_be_bytes(seq) < self.seq)
    }

    /// Reads every datagram waiting on the socket: the echo of the request in flight is
    /// checked and counted, and the next request sent; late echoes of requests already
    /// counted as lost are ignored.
    fn take_replies(&mut self, buf: &mut [u8], size: usize, tally: &mut Tally) {
        loop {
            match self.sock.recv(buf) {
                Ok(n) => {
                    tally.reached += 1;
                    if self.is_late_echo(&buf[..n]) {
                        continue; // the late echo of a request counted as lost
                    }
                    if buf[..n] != self.request[..] {
                        tally.faults.count(Fault::Mismatch);
                    } else {
                        tally.msgs += 1;
                        tally.bytes += size as u64;
                        tally.latency.record(self.sent_at.elapsed());
                    }
                    self.send_next(&mut tally.faults);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // An ICMP error (nothing listens): the request expires as usual.
                    tally.faults.count(Fault::of(&e));
                    self.failed = true;
                    break;
                }
            }
        }
    }
}

/// One thread: its sockets, one request outstanding each, until the measured phase ends.
fn worker(
    env: &Env,
    target: SocketAddr,
    mine: &[usize],
    size: usize,
    secs: Duration,
    loss: Duration,
    mut ticket: Ticket<'_>,
) -> io::Result<Tally> {
    let epoll = Epoll::new()?;
    let mut clients = Vec::with_capacity(mine.len());
    for &i in mine {
        let c = Client::new(i, target, size, env.seed_for(i))?;
        epoll.add(c.sock.as_fd(), Interest::READABLE, clients.len() as u64)?;
        clients.push(c);
    }
    ticket.arrive();
    let Some(go) = ticket.gate().wait_open() else {
        return Ok(Tally::default());
    };
    let end = go + secs;
    let mut tally = Tally {
        established: clients.len() as u64,
        ..Tally::default()
    };
    for c in &mut clients {
        c.send_next(&mut tally.faults);
    }
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; size + 1];
    let mut next_sweep = Instant::now() + loss / 4;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        epoll.wait(&mut events, Some(next_sweep.max(now).min(end) - now))?;
        for (token, _) in events.iter() {
            clients[token as usize].take_replies(&mut buf, size, &mut tally);
        }
        let now = Instant::now();
        if now >= next_sweep {
            for c in &mut clients {
                if now.duration_since(c.sent_at) < loss {
                    continue;
                }
                // An echo that has arrived is not lost, however late this thread looks:
                // read what is waiting first (descheduled past the deadline, the thread
                // may find the echo in the socket).
                let seq = c.seq;
                c.take_replies(&mut buf, size, &mut tally);
                if c.seq != seq {
                    continue; // answered: the next request is in flight
                }
                if !c.failed {
                    tally.faults.count(Fault::Lost);
                }
                c.send_next(&mut tally.faults);
            }
            next_sweep = now + loss / 4;
        }
    }
    let stopped = Instant::now();
    // A stall at the end of the phase: what the requests in flight have waited so far,
    // as `rr` over TCP records them (one that failed is a fault, not a wait).
    let waits = clients
        .iter()
        .filter(|c| !c.failed)
        .map(|c| stopped.saturating_duration_since(c.sent_at));
    tally.latency.record_unanswered(waits);
    tally.elapsed = stopped.saturating_duration_since(go);
    Ok(tally)
}
