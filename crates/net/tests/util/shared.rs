//! Helpers that more than one test file of a kind uses: the client tests' settling,
//! watching and a listener that never completes a connect; what a TLS test server saw;
//! pausing reads from a message callback; a UDP socket that echoes.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{CloseReason, ConnCtx, InputBuffer, LoopHandle, TcpConnection, UdpBuilder};
use duo_testkit::{wait_until, LIMIT};
use socket2::{Domain, Socket, Type};

use super::{barrier, localhost};

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// Two barriers: what was queued before (a stop, say) has run, and so has what that
/// queued in turn.
pub(crate) fn settle(lp: &LoopHandle) {
    barrier(lp);
    barrier(lp);
}

/// Watches for `window` (at least; the time is measured) and returns how long it was: a
/// negative check (no attempt, no callback) or a rate, where there is no event to wait on.
pub(crate) fn watch(window: Duration) -> Duration {
    let from = Instant::now();
    thread::sleep(window);
    from.elapsed()
}

/// Accepts one connection on a non-blocking listener, waiting at most [`LIMIT`].
pub(crate) fn accept_within(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(LIMIT)).unwrap();
                s.set_write_timeout(Some(LIMIT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Sockets of this machine in `SYN_SENT` towards port `remote` of IPv4 loopback (from
/// `/proc/net/tcp`): the connects a client still has in flight there.
pub(crate) fn syn_sent_to(remote: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let r = format!(":{remote:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&r) && f[3] == "02"
        })
        .count()
}

/// A listener whose accept queue is full (backlog 0, one connection never accepted):
/// Linux drops further SYNs, so a connect to it stays in flight (`SYN_SENT`).
pub(crate) struct Blackhole {
    pub(crate) listener: TcpListener,
    filler: Option<TcpStream>,
}

impl Blackhole {
    pub(crate) fn new() -> Blackhole {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.bind(&localhost().into()).unwrap();
        socket.listen(0).unwrap();
        let listener = TcpListener::from(socket);
        let addr = listener.local_addr().unwrap();
        let filler = TcpStream::connect_timeout(&addr, LIMIT).expect("the filler connects");
        Blackhole {
            listener,
            filler: Some(filler),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Takes the filler out of the accept queue: the next connect gets through.
    pub(crate) fn open_up(&mut self) {
        let accepted = accept_within(&self.listener);
        drop((accepted, self.filler.take()));
    }
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// What a test server saw: its connections' ups and close reasons, and whether its
/// high-water mark was reached.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) up: AtomicUsize,
    pub(crate) reasons: Mutex<Vec<CloseReason>>,
    pub(crate) high_water: AtomicBool,
}

impl Seen {
    /// From a connection callback: counts an up, or records the close reason of a down.
    pub(crate) fn record(&self, conn: &TcpConnection) {
        if conn.is_connected() {
            self.up.fetch_add(1, Ordering::SeqCst);
        } else if let Some(r) = conn.close_reason() {
            self.reasons.lock().unwrap().push(r);
        }
    }

    pub(crate) fn reasons(&self) -> Vec<CloseReason> {
        self.reasons.lock().unwrap().clone()
    }

    /// Waits for one close and expects its reason to be `want`.
    pub(crate) fn expect_close(&self, want: CloseReason) {
        wait_until("the server closes the connection", || {
            !self.reasons().is_empty()
        });
        assert_eq!(self.reasons(), [want]);
    }
}

/// From a message callback: stops reading on the connection and resumes it from a timer
/// after `delay`.
pub(crate) fn pause_reading_for(ctx: &mut ConnCtx<'_>, delay: Duration) {
    ctx.stop_reading();
    let conn = ctx.connection().clone();
    ctx.event_loop().run_after(delay, move |_| {
        let _ = conn.start_reading();
    });
}

/// `builder` with a datagram callback that sends every datagram back to its sender.
pub(crate) fn echoing(builder: UdpBuilder) -> UdpBuilder {
    builder.on_datagram(|ctx, payload, from| {
        ctx.send_to(payload, from).unwrap();
    })
}

/// A message callback that echoes whole lines until `QUIT\n`, answered `BYE\n` and
/// followed by a graceful close asked from the callback, with whatever came after it left
/// unread (the lingering close's case).
pub(crate) fn echo_lines_until_quit(ctx: &mut ConnCtx<'_>, input: &mut InputBuffer) {
    while let Some(end) = input.peek().iter().position(|&b| b == b'\n') {
        let line = input.peek()[..=end].to_vec();
        input.consume(end + 1);
        if line == b"QUIT\n" {
            ctx.send(b"BYE\n");
            ctx.close_after_flush();
            return;
        }
        ctx.send(&line);
    }
}

/// An `on_close` callback that sends the reason of every connection it sees close, and
/// the receiver of those reasons.
pub(crate) fn close_reasons() -> (
    impl Fn(&TcpConnection) + Send + Sync + 'static,
    mpsc::Receiver<CloseReason>,
) {
    let (tx, reasons) = mpsc::channel();
    let tx = Mutex::new(tx);
    let on_close = move |conn: &TcpConnection| {
        let reason = conn.close_reason().expect("closed");
        let _ = tx.lock().unwrap().send(reason);
    };
    (on_close, reasons)
}
