//! A server that accepts and never answers, in a run shorter than `--timeout`: no reply
//! times out before the measured phase ends, yet the run did no work at all. That is an
//! error (`unanswered`, one per connection still waiting), so `--strict` fails the run;
//! without `--strict` it is reported and the exit code stays 0. (Such a run used to report
//! no error at all.)

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{field, loadgen, number};

/// A loopback server that accepts connections and holds them, reading and answering
/// nothing, until dropped.
struct Silent {
    addr: SocketAddr,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            // Bounded: the test's own limit, whatever happens to the test thread.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            held.len()
        });
        Silent {
            addr,
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `mode` for one second against a silent server, with a 10 s reply timeout.
fn run(mode: &str, strict: bool) -> (i32, String) {
    let server = Silent::start();
    let addr = server.addr.to_string();
    let mut args = vec![
        mode,
        "--addr",
        &addr,
        "--conns",
        "2",
        "--secs",
        "1",
        "--timeout",
        "10",
        "--json",
    ];
    if strict {
        args.push("--strict");
    }
    loadgen(&args)
}

#[test]
fn a_strict_run_without_a_single_reply_fails() {
    for mode in ["rr", "pingpong", "churn"] {
        let (code, out) = run(mode, true);
        assert_eq!(code, 1, "{mode}: a strict run with no reply passed: {out}");
        assert_eq!(number(&out, "msgs"), 0.0, "{mode}: {out}");
        assert!(number(&out, "error_total") >= 1.0, "{mode}: {out}");
        let errors = field(&out, "errors").unwrap_or_default();
        assert!(errors.contains("\"unanswered\":2"), "{mode}: {out}");
    }
}

#[test]
fn without_strict_the_silence_is_reported_and_exits_zero() {
    let (code, out) = run("rr", false);
    assert_eq!(
        code, 0,
        "errors alone do not fail a run without --strict: {out}"
    );
    assert!(number(&out, "error_total") >= 1.0, "{out}");
}
