//! Review round 10, follow-up: a sceptical second look at the fixes of review round 10
//! (today's diff) from duo-net's side. Each test here failed on the code before the fix
//! it comes with, unless its doc says otherwise:
//!
//! - a dropped Unix-domain server whose main loop does not run left the clients already
//!   queued on its (shut down) listener connected to nobody, for ever;
//! - `unix:@(empty)`, now parsed, could be listened on, though documented as not
//!   something to listen on or connect to;
//! - a `Handler::label()` that panics in a stall or spin report was caught without
//!   telling the panic hook, which then reported it as a panic nobody catches;
//! - (a pin, no fix) a paused application's own shutdown followed by the peer's FIN.

mod util;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use duo_net::{Endpoint, EventLoop};
use duo_testkit::{TempDir, LIMIT};
use util::{echo_builder, init_log};

/// How long a read waits at most for the end that must come at once.
const PROMPT: Duration = Duration::from_secs(5);

/// Whether the client `c` learns within [`PROMPT`] that its connection is over (end of
/// stream or a reset), rather than waiting for an accept that never comes.
fn ended_promptly(c: &mut UnixStream) -> Result<(), String> {
    c.set_read_timeout(Some(PROMPT)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Ok(n) => Err(format!("got {n} bytes")),
        Err(e) => Err(format!("{e} after {:?}", start.elapsed())),
    }
}

/// A unique abstract name for this test process.
fn abstract_name(tag: &str) -> Endpoint {
    Endpoint::abstract_name(format!("duo-r10f-{tag}-{}", std::process::id())).unwrap()
}

/// Round 10 made a server that accepts on its main loop shut its own listening socket
/// down when dropped, so that it stops listening at once even if that loop does not run
/// again, and "the connection that was waiting in the queue is not left hanging either".
/// That holds for TCP (the kernel resets what a shut-down listener held), not for a
/// Unix-domain listener: `shutdown` only refuses new connects, and the connections
/// already queued stayed there, their clients connected to nobody and waiting for ever.
/// They now see the end at once, on a path and on an abstract name.
#[test]
fn a_dropped_unix_server_does_not_leave_its_queued_clients_hanging() {
    init_log();
    let dir = TempDir::new("r10f-unix-queue");
    let endpoints = [
        Endpoint::unix(dir.join("queued.sock")).unwrap(),
        abstract_name("queued"),
    ];
    for at in endpoints {
        let mut lp = EventLoop::new().unwrap();
        let server = echo_builder("unix-dropped-idle", at.clone())
            .io_threads(0)
            .start(&mut lp)
            .unwrap();
        let endpoint = server.endpoint().clone();
        let handle = server.clone_handle();
        // Queued: the loop never runs to accept it.
        let mut queued = match &endpoint {
            Endpoint::Unix(path) => UnixStream::connect(path).unwrap(),
            Endpoint::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
                UnixStream::connect_addr(&addr).unwrap()
            }
            other => panic!("unexpected endpoint {other}"),
        };
        drop(server);
        if let Err(e) = ended_promptly(&mut queued) {
            panic!("{endpoint}: the queued client was left hanging ({e})");
        }
        // The loop, run later, finds nothing to count.
        lp.handle().queue_in_loop(|lp| lp.quit()).unwrap();
        lp.run().unwrap();
        assert_eq!(handle.stats().accept_errors, 0, "{endpoint}");
        assert_eq!(
            lp.channel_count(),
            0,
            "{endpoint}: the listener's channel is gone"
        );
    }
}

/// `unix:@(empty)` is how round 10 displays a peer bound to the empty abstract name, and
/// the parser now reads it back; the docs say it is, like `unix:(unnamed)`, "not something
/// to listen on or connect to" (the parser refuses `unix:@` itself, and
/// [`Endpoint::abstract_name`] the empty name, as likely mistakes). But a server started
/// on the parsed endpoint bound the empty abstract name and served there. It is refused
/// now, as the unnamed endpoint is (`InvalidInput`), for a server and a client alike.
#[test]
fn the_empty_abstract_name_is_not_something_to_listen_on() {
    init_log();
    let empty: Endpoint = "unix:@(empty)".parse().unwrap();
    assert!(Endpoint::abstract_name("").is_err());
    let mut lp = EventLoop::new().unwrap();
    match echo_builder("empty-abstract", empty.clone())
        .io_threads(0)
        .start(&mut lp)
    {
        Ok(server) => panic!(
            "a server listens on {} (parsed from unix:@(empty))",
            server.endpoint()
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
    }
    // As the unnamed endpoint.
    let unnamed: Endpoint = "unix:(unnamed)".parse().unwrap();
    let e = echo_builder("unnamed", unnamed)
        .io_threads(0)
        .start(&mut lp)
        .expect_err("no server on the unnamed endpoint");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

/// A handler whose `label()` panics, and that never reads what is readable: the loop
/// sees it spin, and its spin report asks for the label.
struct BadLabel {
    dispatched: usize,
}

impl duo_reactor::Handler for BadLabel {
    fn handle_read(&mut self, lp: &mut EventLoop, _: &mut duo_reactor::Channel) {
        self.dispatched += 1;
        if self.dispatched >= 12 {
            lp.quit();
        }
    }
    fn label(&self) -> Option<String> {
        panic!("{LABEL_PANIC}");
    }
}

const LABEL_PANIC: &str = "r10 follow-up: a label that panics";

/// Round 10 made the loop catch a `Handler::label()` that panics while a stall or spin
/// report is written, with a bare `catch_unwind`: a panic hook could not tell that the
/// panic was caught ([`duo_reactor::panic_will_be_caught`] was false), so
/// `duo_net::process::install_panic_hook` handed it to the hook before it, as a panic that
/// ends its thread: a full report on stderr at every report, never rate-limited (with
/// `RUST_BACKTRACE`, a backtrace each time), for a loop that goes on. Caught through
/// [`duo_reactor::catch_panic`], it is reported as the panics of callbacks are: through
/// the log, rate-limited.
#[test]
fn a_panicking_label_is_reported_as_a_caught_panic() {
    init_log();
    let uncaught_reports = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let default = std::panic::take_hook();
    let seen = uncaught_reports.clone();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains(LABEL_PANIC) {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        default(info);
    }));
    duo_net::process::install_panic_hook();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(duo_reactor::HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(4),
    });
    let (mut a, b) = duo_testkit::nonblocking_pair();
    std::io::Write::write_all(&mut a, b"x").unwrap();
    let token = lp
        .add_channel(
            b,
            duo_reactor::Interest::READABLE,
            BadLabel { dispatched: 0 },
        )
        .unwrap();
    // Bounded: the handler quits after twelve dispatches; a guard quits at the limit.
    let handle = lp.handle();
    let guard = std::thread::spawn(move || {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(50));
            if handle.queue_in_loop(|_| {}).is_err() {
                return;
            }
        }
        handle.quit();
    });
    lp.run().unwrap();
    assert!(lp.metrics().spins >= 1, "the spin was not reported");
    assert!(lp.remove_channel(token));
    drop(lp);
    guard.join().unwrap();
    assert_eq!(
        uncaught_reports.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the label's panic, caught, was reported as one nobody catches"
    );
}

/// Round 10's fix for a paused application's own shutdown, in the other order: the
/// application (reading paused) shuts its side down first, and only then does the peer
/// half-close. Its FIN meets ours in one event (the hang-up with the FIN): the
/// application is told of it once (not once for the FIN and again for the hang-up), and
/// resuming reading closes with `Peer`. (`is_connected()` is false when it is told: the
/// application's own shutdown ended that already; having shut down, it has no answer left
/// to send, so a FIN and a reset call for the same thing.)
///
/// No fix comes with it: it passed on the code before, and pins this combination down.
fn own_shutdown_then_peer_half_close(edge: bool, name: &'static str) {
    use std::io::Write;
    use std::net::Shutdown;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};

    use duo_net::{CloseReason, TcpConnection, TcpServer};

    init_log();
    let told = Arc::new(AtomicUsize::new(0));
    let (conn_tx, conn_rx) = mpsc::channel::<TcpConnection>();
    let (close_tx, closed) = mpsc::channel::<CloseReason>();
    let (conn_tx, close_tx) = (Mutex::new(conn_tx), Mutex::new(close_tx));
    let t = told.clone();
    let server = util::TestServer::start(move || {
        TcpServer::builder(name, util::localhost())
            .io_threads(1)
            .edge_triggered(edge)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    let _ = conn.stop_reading();
                    let _ = conn.shutdown();
                    let _ = conn_tx.lock().unwrap().send(conn.clone());
                }
            })
            .on_message(|_, input| input.consume_all())
            .on_peer_half_close_while_paused(move |_| {
                t.fetch_add(1, Ordering::SeqCst);
            })
            .on_close(move |conn| {
                let _ = close_tx.lock().unwrap().send(conn.close_reason().unwrap());
            })
    });
    let mut client = util::connect(server.addr());
    let conn = conn_rx.recv_timeout(LIMIT).expect("the connection up");
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the server's FIN");
    client.write_all(b"unread").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    duo_testkit::wait_until("the FIN told", || told.load(Ordering::SeqCst) >= 1);
    util::barrier(conn.loop_handle());
    util::barrier(conn.loop_handle());
    assert_eq!(
        told.load(Ordering::SeqCst),
        1,
        "{name}: told more than once"
    );
    assert!(closed.try_recv().is_err(), "{name}: closed while paused");
    conn.start_reading().unwrap();
    assert_eq!(closed.recv_timeout(LIMIT).unwrap(), CloseReason::Peer);
    drop(client);
    server.stop();
}

#[test]
fn own_shutdown_then_the_peers_half_close_is_told_once_edge() {
    own_shutdown_then_peer_half_close(true, "r10f-shut-first-et");
}

#[test]
fn own_shutdown_then_the_peers_half_close_is_told_once_level() {
    own_shutdown_then_peer_half_close(false, "r10f-shut-first-lt");
}
