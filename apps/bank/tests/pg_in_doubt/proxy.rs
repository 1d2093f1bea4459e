//! A TCP proxy between the bank and PostgreSQL that can drop a link at a chosen moment:
//! right after a call went through, or once the server has answered it (and so ended
//! its transaction) without passing the answer on.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// When the proxy cuts the link that carries the next message containing the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Right after passing the message on: the server gets the call, the bank no answer.
    AfterSend,
    /// Once the server has answered the call (its `ReadyForQuery`, so the statement's
    /// transaction has committed), without passing the answer on.
    AfterReply,
}

#[derive(Default)]
struct ProxyState {
    /// The one cut planned: the bytes to look for (bank to server), and when to cut.
    plan: Option<(Vec<u8>, Cut)>,
    /// Cuts made.
    cuts: usize,
    /// Every socket, to shut down when the proxy goes.
    sockets: Vec<TcpStream>,
}

/// A TCP proxy on 127.0.0.1 to a PostgreSQL port; shut down (every link cut) on drop.
pub(crate) struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
    accepter: Option<thread::JoinHandle<()>>,
}

/// What `ReadyForQuery` starts with: `Z`, then its length (5).
const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Proxy {
    pub(crate) fn start(server_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepter = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                for bank in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(bank) = bank else { continue };
                    let Ok(pg) = TcpStream::connect(("127.0.0.1", server_port)) else {
                        continue;
                    };
                    link(bank, pg, &state);
                }
            })
        };
        Proxy {
            addr,
            state,
            stop,
            accepter: Some(accepter),
        }
    }

    /// Database `db`'s URL through the proxy.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://bank@{}/{db}", self.addr)
    }

    /// Cuts the link that carries the next message containing `marker` (once).
    pub(crate) fn plan(&self, marker: &str, cut: Cut) {
        self.state.lock().unwrap().plan = Some((marker.as_bytes().to_vec(), cut));
    }

    pub(crate) fn cuts(&self) -> usize {
        self.state.lock().unwrap().cuts
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.addr);
        for s in self.state.lock().unwrap().sockets.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

/// Forwards between `bank` and `pg` on two threads, cutting as planned.
fn link(bank: TcpStream, pg: TcpStream, state: &Arc<Mutex<ProxyState>>) {
    let _ = bank.set_nodelay(true);
    let _ = pg.set_nodelay(true);
    let (Ok(bank2), Ok(pg2)) = (bank.try_clone(), pg.try_clone()) else {
        return;
    };
    {
        let mut s = state.lock().unwrap();
        s.sockets.push(bank.try_clone().unwrap());
        s.sockets.push(pg.try_clone().unwrap());
    }
    // Set (by the bank-to-server side) when this link is to be cut after the answer.
    let doomed = Arc::new(AtomicBool::new(false));
    let cut = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    {
        let (state, doomed) = (state.clone(), doomed.clone());
        let (mut from, mut to) = (bank, pg);
        thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // The marker may span two reads: look at the end of the previous one too.
                tail.extend_from_slice(&buf[..n]);
                let mut cut_now = false;
                {
                    let mut s = state.lock().unwrap();
                    if let Some((marker, when)) = s.plan.clone() {
                        if contains(&tail, &marker) {
                            s.plan = None;
                            match when {
                                Cut::AfterSend => {
                                    s.cuts += 1;
                                    cut_now = true;
                                }
                                // Before the call goes on: its answer cannot overtake this.
                                Cut::AfterReply => doomed.store(true, Ordering::SeqCst),
                            }
                        }
                    }
                }
                let keep = tail.len().saturating_sub(128);
                tail.drain(..keep);
                if to.write_all(&buf[..n]).is_err() || cut_now {
                    break;
                }
            }
            cut(&from, &to);
        });
    }
    {
        let state = state.clone();
        let (mut from, mut to) = (pg2, bank2);
        thread::spawn(move || {
            let mut held: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if doomed.load(Ordering::SeqCst) {
                    // The answer to the doomed call: kept from the bank until it is
                    // complete (the statement's transaction has ended), then the cut.
                    held.extend_from_slice(&buf[..n]);
                    if contains(&held, READY_FOR_QUERY) {
                        state.lock().unwrap().cuts += 1;
                        break;
                    }
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            cut(&from, &to);
        });
    }
}
