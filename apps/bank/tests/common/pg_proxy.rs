//! A TCP proxy between the bank and PostgreSQL that does one planned [`Fault`] to the
//! link carrying a marked call (bank to server): it cuts the link right after the call
//! went through, or once the server has answered it without passing the answer on; it
//! holds the answer until the server closes the link, then passes everything on in one
//! write; or it stalls the whole path, as a dead middlebox would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use duo_testkit::pg::PgCluster;
use duo_testkit::wait_until_within;

use super::psql;

/// What `ReadyForQuery` starts with: `Z`, then its length (5).
pub(crate) const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

/// Whether `needle` (not empty) is in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// What the proxy does to the link that carries the next message containing the marker
/// of [`Proxy::plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Cut the link right after passing the message on: the server gets the call, the
    /// bank no answer.
    CutAfterSend,
    /// Cut the link once the server has answered the call (its `ReadyForQuery`, so the
    /// statement's transaction has ended), without passing the answer on.
    CutAfterReply,
    /// Hold the answer to the call, and everything the server sends after it, until the
    /// server closes the link; then it all goes to the bank in one write
    /// ([`Proxy::delivered`]), and the link is closed. [`Proxy::wait_answered`] waits
    /// for the answer.
    HoldReply,
    /// Stall the path once the message has gone through: the links made until then
    /// forward nothing more (what they read is dropped) and keep their sockets open, as a
    /// dead middlebox, a NAT that lost its state, or a hung server host would (the bank's
    /// kernel sees its data acknowledged). The links made once the path is back
    /// ([`Proxy::recover`]) work.
    Stall,
}

#[derive(Default)]
struct State {
    /// The one fault planned: the bytes to look for (bank to server), and the fault.
    plan: Option<(Vec<u8>, Fault)>,
    /// Cuts made ([`Fault::CutAfterSend`], [`Fault::CutAfterReply`]).
    cuts: usize,
    /// The path is stalled ([`Fault::Stall`]).
    stalled: bool,
    /// Bumped at each stall and at each recovery: a link forwards only while the path is
    /// up and its epoch is the current one, so a link that saw a stall stays dead.
    epoch: u64,
    /// The held link's port on the server's side (`pg_stat_activity.client_port`).
    held_port: Option<u16>,
    /// The server has answered the held call completely.
    answered: bool,
    /// What went to the bank in one write once the server closed the held link.
    delivered: Vec<u8>,
    /// Every socket, to shut down when the proxy goes.
    sockets: Vec<TcpStream>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the path recovers and when the proxy goes.
    changed: Condvar,
}

/// A TCP proxy on 127.0.0.1 to a PostgreSQL port; every link is shut down on drop.
pub(crate) struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepter: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub(crate) fn start(server_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let accepter = {
            let shared = shared.clone();
            thread::spawn(move || {
                for bank in listener.incoming() {
                    if shared.state.lock().unwrap().stop {
                        return;
                    }
                    let Ok(bank) = bank else { continue };
                    let Ok(pg) = TcpStream::connect(("127.0.0.1", server_port)) else {
                        continue;
                    };
                    link(bank, pg, &shared);
                }
            })
        };
        Proxy {
            addr,
            shared,
            accepter: Some(accepter),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Database `db`'s URL through the proxy.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://bank@{}/{db}", self.addr)
    }

    /// [`Proxy::url`] for which a connection attempt gives up after `seconds`.
    pub(crate) fn url_with_connect_timeout(&self, db: &str, seconds: u32) -> String {
        format!("{}?connect_timeout={seconds}", self.url(db))
    }

    /// Does `fault` to the link that carries the next message containing `marker` (once).
    pub(crate) fn plan(&self, marker: &str, fault: Fault) {
        let mut s = self.state();
        s.plan = Some((marker.as_bytes().to_vec(), fault));
        s.held_port = None;
        s.answered = false;
        s.delivered.clear();
    }

    /// The cuts made.
    pub(crate) fn cuts(&self) -> usize {
        self.state().cuts
    }

    pub(crate) fn stalled(&self) -> bool {
        self.state().stalled
    }

    /// The path works again for new links.
    pub(crate) fn recover(&self) {
        let mut s = self.state();
        s.stalled = false;
        s.epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Waits until the server has answered the held call; the server process of its
    /// session.
    pub(crate) fn wait_answered(&self, cluster: &PgCluster) -> String {
        wait_until_within(Duration::from_secs(10), "the held call answered", || {
            self.state().answered
        });
        let port = self.state().held_port.expect("the held link");
        psql(
            cluster,
            &format!("SELECT pid FROM pg_stat_activity WHERE client_port = {port}"),
        )
    }

    /// What went to the bank in one write once the server closed the held link.
    pub(crate) fn delivered(&self) -> Vec<u8> {
        self.state().delivered.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut s = self.state();
            s.stop = true;
            for sock in s.sockets.drain(..) {
                let _ = sock.shutdown(Shutdown::Both);
            }
            self.shared.changed.notify_all();
        }
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

/// One link: what its two forwarding threads share.
struct Link {
    shared: Arc<Shared>,
    /// The epoch the link was made in.
    epoch: u64,
    /// The link's port on the server's side.
    port: u16,
    /// The fault to do to the answer of this link's marked call: set (bank to server)
    /// before the call goes on, so that its answer cannot overtake it (not even the
    /// answer to a call the link is cut after).
    fault: OnceLock<Fault>,
}

impl Link {
    /// Reads the next bytes from `from` into `buf`, then waits while the link is dead
    /// (the path stalled, or it saw a stall): how many, and the state; `None` at the end
    /// of the stream, on an error, or once the proxy goes.
    fn next(&self, from: &mut TcpStream, buf: &mut [u8]) -> Option<(usize, MutexGuard<'_, State>)> {
        let n = match from.read(buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let mut s = self.shared.state.lock().unwrap();
        while !s.stop && (s.stalled || s.epoch != self.epoch) {
            s = self.shared.changed.wait(s).unwrap();
        }
        (!s.stop).then_some((n, s))
    }

    /// Whether the link still forwards: a dead one keeps its sockets open.
    fn alive(&self) -> bool {
        let s = self.shared.state.lock().unwrap();
        !s.stop && !s.stalled && s.epoch == self.epoch
    }
}

fn cut(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Forwards between `bank` and `pg` on two threads, doing the planned fault.
fn link(bank: TcpStream, pg: TcpStream, shared: &Arc<Shared>) {
    let _ = bank.set_nodelay(true);
    let _ = pg.set_nodelay(true);
    let epoch = {
        let mut s = shared.state.lock().unwrap();
        for sock in [&bank, &pg] {
            if let Ok(sock) = sock.try_clone() {
                s.sockets.push(sock);
            }
        }
        s.epoch
    };
    let (Ok(bank2), Ok(pg2)) = (bank.try_clone(), pg.try_clone()) else {
        return;
    };
    let link = Arc::new(Link {
        shared: shared.clone(),
        epoch,
        port: pg.local_addr().map(|a| a.port()).unwrap_or(0),
        fault: OnceLock::new(),
    });
    {
        let link = link.clone();
        thread::spawn(move || bank_to_server(&link, bank, pg));
    }
    thread::spawn(move || server_to_bank(&link, pg2, bank2));
}

/// Forwards the bank's bytes, looking for the planned marker.
fn bank_to_server(link: &Link, mut from: TcpStream, mut to: TcpStream) {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some((n, mut s)) = link.next(&mut from, &mut buf) else {
            break;
        };
        // The marker may span two reads: look at the end of the previous one too.
        tail.extend_from_slice(&buf[..n]);
        let mut cut_now = false;
        if s.plan.as_ref().is_some_and(|(m, _)| contains(&tail, m)) {
            let (_, fault) = s.plan.take().unwrap();
            match fault {
                Fault::CutAfterSend => {
                    s.cuts += 1;
                    cut_now = true;
                    let _ = link.fault.set(fault);
                }
                Fault::CutAfterReply | Fault::HoldReply => {
                    s.held_port = Some(link.port);
                    let _ = link.fault.set(fault);
                }
                // This message (past the gate) still goes through; nothing after it.
                Fault::Stall => {
                    s.stalled = true;
                    s.epoch += 1;
                }
            }
        }
        drop(s);
        let keep = tail.len().saturating_sub(128);
        tail.drain(..keep);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if cut_now {
            cut(&from, &to);
            return;
        }
    }
    // The bank closed (or the proxy goes): so does the server's side, on a live link.
    if link.alive() {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// Forwards the server's bytes, keeping the answer to the marked call from the bank as
/// planned.
fn server_to_bank(link: &Link, mut from: TcpStream, mut to: TcpStream) {
    let mut held: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some((n, mut s)) = link.next(&mut from, &mut buf) else {
            break;
        };
        let Some(&fault) = link.fault.get() else {
            drop(s);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        };
        // The answer to the marked call: kept from the bank (dropped where the link is
        // being cut after the call).
        if fault == Fault::CutAfterSend {
            continue;
        }
        held.extend_from_slice(&buf[..n]);
        if contains(&held, READY_FOR_QUERY) {
            if fault == Fault::CutAfterReply {
                s.cuts += 1;
                drop(s);
                cut(&from, &to);
                return;
            }
            s.answered = true;
        }
    }
    // The server closed: what it said since the held call goes in one write (recorded
    // first: the test reads the record once the bank has answered, which this write
    // lets it do).
    if link.fault.get() == Some(&Fault::HoldReply) && !held.is_empty() {
        link.shared.state.lock().unwrap().delivered = held.clone();
        let _ = to.write_all(&held);
    }
    if link.alive() {
        cut(&from, &to);
    }
}
