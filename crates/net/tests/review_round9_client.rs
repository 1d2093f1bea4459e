//! `TcpClient`, review round 9 of the client: combinations the other client tests leave
//! out. Each test here failed when the review helper wrote it (its doc says how).
//!
//! Every wait has a deadline; "no more attempts than" is watched over a measured window
//! (a timer never fires early, so such a bound cannot fail spuriously on a slow machine);
//! the one upper bound on a retry delay leaves 500 ms of slack.

mod util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duo_net::TcpClient;
use duo_reactor::EventLoopThread;
use duo_testkit::{wait_until, RefusedPort};
use util::init_log;

/// A reconnecting TLS client of a server that is slow to answer each handshake (longer
/// than the retry delay) and then drops the connection as soon as it is up: the
/// reconnects back off, as they do against a plain server that drops every connection at
/// once. Only the time a connection was *up* resets the back-off, and a TLS connection is
/// up once its handshake completes (`ClientBuilder::tls`).
///
/// Failed before the fix: the client counted the time up from the TCP connect, so the slow
/// handshake alone (300 ms, over the 50 ms initial delay) reset the delay after every
/// connection: one reconnect every 350 ms for ever, about four in the 1.2 s window.
#[cfg(feature = "tls")]
#[test]
fn a_slow_handshake_does_not_reset_the_back_off_of_a_tls_client() {
    use duo_net::tls::{self, rustls};
    use duo_testkit::{join_within, LIMIT};
    use rustls::ServerConnection;
    use std::io::ErrorKind;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::thread;
    use util::pki::pki;
    use util::shared::watch;
    init_log();
    const INITIAL: Duration = Duration::from_millis(50);
    // The server's deliberate slowness (not a wait for an event of the test).
    const HOLD: Duration = Duration::from_millis(300);
    let pki = pki();
    let config = pki.server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let server = thread::spawn(move || {
        while !d.load(Ordering::SeqCst) {
            let mut sock = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => {
                    log::debug!("accept: {e}");
                    continue;
                }
            };
            sock.set_nonblocking(false).unwrap();
            sock.set_read_timeout(Some(LIMIT)).unwrap();
            thread::sleep(HOLD);
            let mut conn = ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    break;
                }
            }
            // Up, and dropped at once.
        }
    });
    let lp = EventLoopThread::spawn("r9-slow-hs", None).unwrap();
    let ups = Arc::new(AtomicUsize::new(0));
    let u = ups.clone();
    let client = TcpClient::builder("r9-slow-hs", addr)
        .tls(pki.client_config(), tls::server_name("localhost").unwrap())
        .reconnect(true)
        .retry_backoff(INITIAL, Duration::from_secs(5))
        .on_connection(move |c| {
            if c.is_connected() {
                u.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_message(|_, input| input.consume_all())
        .connect(lp.handle());
    // Four connections up and dropped: the delay is at least 8 x INITIAL (400 ms) now.
    wait_until("four TLS connections up", || {
        ups.load(Ordering::SeqCst) >= 4
    });
    let before = client.attempts();
    let window = watch(Duration::from_millis(1200));
    let made = client.attempts() - before;
    // Backing off: the next attempt after 400 ms, the one after that 300 + 800 ms later.
    assert!(made <= 2, "{made} attempts in {window:?}: no back-off");
    client.stop();
    done.store(true, Ordering::SeqCst);
    join_within("the slow TLS server", server);
    drop(client);
    lp.stop().unwrap();
}

/// `connect()` called from `on_connect_failed` (an application that wants to try again at
/// once) begins a new run of attempts with the retry delay started over, as documented
/// ("at once, also when a retry was waiting (the retry delay starts over)"): the first
/// failure of the new run waits the initial delay, not twice as long.
///
/// Failed before the fix: the failure being reported still scheduled its own retry after
/// the callback returned, doubling the delay the `connect()` had just reset; that retry
/// was then cancelled by the new attempt, but the doubled delay stayed: the new run's
/// first retry waited twice the initial delay.
#[test]
fn connect_from_the_failure_callback_starts_the_delay_over() {
    init_log();
    const INITIAL: Duration = Duration::from_millis(1500);
    // A port nobody listens on, held for the whole test (no listener another test binds
    // meanwhile can get it): every attempt is refused at once.
    let port = RefusedPort::new();
    let addr = port.addr();
    let lp = EventLoopThread::spawn("r9-connect-in-cb", None).unwrap();
    let me: Arc<Mutex<Option<TcpClient>>> = Arc::new(Mutex::new(None));
    let seen: Arc<Mutex<Vec<(u32, bool, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let (m, s) = (me.clone(), seen.clone());
    // Held while the client is made and stored: its first failure waits for it.
    let mut slot = me.lock().unwrap();
    *slot = Some(
        TcpClient::builder("r9-connect-in-cb", addr)
            .retry_backoff(INITIAL, Duration::from_secs(60))
            .on_connect_failed(move |f| {
                let mut seen = s.lock().unwrap();
                seen.push((f.attempts, f.will_retry, Instant::now()));
                if seen.len() == 1 {
                    // Try again now, in a new run.
                    if let Some(c) = m.lock().unwrap().as_ref() {
                        c.connect();
                    }
                }
            })
            .connect(lp.handle()),
    );
    drop(slot);
    wait_until("three failures", || seen.lock().unwrap().len() >= 3);
    let client = me.lock().unwrap().take().unwrap();
    client.stop();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|&(a, w, _)| (a, w))
            .take(3)
            .collect::<Vec<_>>(),
        [(1, true), (1, true), (2, true)],
        "the connect() in the callback begins a new run"
    );
    let waited = seen[2].2 - seen[1].2;
    assert!(
        waited >= INITIAL,
        "retried after {waited:?}, before the delay"
    );
    // Twice the initial delay (3 s) before the fix; 1.4 s of slack for a busy machine.
    assert!(
        waited < INITIAL * 2 - Duration::from_millis(100),
        "the new run's first retry waited {waited:?}, not the initial {INITIAL:?}"
    );
    drop(client);
    lp.stop().unwrap();
}
