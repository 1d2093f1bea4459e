//! An aggregating endpoint for real: two endpoints standing in for workers, one port that
//! refuses and one peer that never answers, all on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{target, value, worker};
use duo_metrics::MetricsEndpoint;
use duo_testkit::{http_get, RefusedPort};
use parking_lot::Mutex;

#[test]
fn the_group_s_figures_are_merged_and_silent_members_marked_down() {
    let (a, b) = (worker(3), worker(5));
    let refused = RefusedPort::new();
    // Accepts (the kernel completes the handshake) but never answers.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let targets = Arc::new(Mutex::new(vec![
        target("a", a.local_addr()),
        target("b", b.local_addr()),
    ]));
    let mut group = MetricsEndpoint::new();
    let current = targets.clone();
    group
        .aggregate(vec![("worker".to_owned(), "self".to_owned())], move || {
            current.lock().clone()
        })
        .scrape_timeout(Duration::from_millis(500));
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();

    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "app_jobs_total{worker=\"a\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "app_jobs_total{worker=\"b\"}"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(value(&text, "duo_aggregate_up{worker=\"a\"}"), Some(1.0));
    assert_eq!(value(&text, "duo_aggregate_up{worker=\"b\"}"), Some(1.0));
    assert_eq!(text.matches("# TYPE app_jobs counter").count(), 1, "{text}");
    assert!(text.contains("duo_loop_iterations_total{worker=\"self\",loop="));
    assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
    assert_eq!(
        http_get(group.local_addr(), "/healthz"),
        (200, "ok\n".into())
    );

    targets.lock().push(target("gone", refused.addr()));
    targets
        .lock()
        .push(target("mute", mute.local_addr().unwrap()));
    let start = Instant::now();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"gone\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"mute\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "app_jobs_total{worker=\"a\"}"),
        Some(3.0),
        "{text}"
    );
    // The mute member is waited for in parallel with the others, once.
    assert!(took < Duration::from_secs(5), "{took:?}");

    let (status, body) = http_get(group.local_addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("{worker=\"gone\"} unreachable"), "{body}");
    assert!(body.contains("{worker=\"mute\"} unreachable"), "{body}");
    assert!(!body.contains("worker=\"a\""), "{body}");

    let (status, loops) = http_get(group.local_addr(), "/debug/loops");
    assert_eq!(status, 200);
    let loops: serde_json::Value = serde_json::from_str(&loops).unwrap();
    let members = loops["targets"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{loops}");
    assert!(members[0]["loops"].is_array(), "{loops}");
    assert!(members[2]["error"].is_string(), "{loops}");
    assert!(loops["self"]["loops"].is_array(), "{loops}");

    targets.lock().clear();
    let (status, body) = http_get(group.local_addr(), "/healthz");
    assert_eq!(status, 503, "no member: {body}");
    group.stop().unwrap();
    a.stop().unwrap();
    b.stop().unwrap();
}

/// A target that accepts, reads each request's head, and answers only when released:
/// counts the requests it holds.
struct HeldTarget {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<std::net::TcpStream>>>,
    accepting: std::thread::JoinHandle<()>,
}

impl HeldTarget {
    fn start(expect: usize) -> HeldTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        let accepting = std::thread::spawn(move || {
            for _ in 0..expect {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(duo_testkit::LIMIT)).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    assert_eq!(s.read(&mut byte).unwrap(), 1, "a whole request head");
                    head.push(byte[0]);
                }
                keep.lock().push(s);
            }
        });
        HeldTarget {
            addr,
            held,
            accepting,
        }
    }

    /// Answers every held request with a one-sample text.
    fn release(self) {
        duo_testkit::join_within("the held target's accepting thread", self.accepting);
        let body = "# TYPE held_up gauge\nheld_up 1\n# EOF\n";
        for mut s in self.held.lock().drain(..) {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).unwrap();
        }
    }
}

/// Scrapes wait for their targets off the endpoint's loop: two scrapes are at the target
/// at once, and a third request is answered while they wait.
#[test]
fn scrapes_wait_for_their_targets_in_parallel_and_the_endpoint_answers_meanwhile() {
    let slow = HeldTarget::start(2);
    let mut group = MetricsEndpoint::new();
    let addr = slow.addr;
    group
        .aggregate(vec![("worker".to_owned(), "self".to_owned())], move || {
            vec![target("slow", addr)]
        })
        .scrape_timeout(duo_testkit::LIMIT);
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let at = group.local_addr();
    let scrapes: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || http_get(at, "/metrics")))
        .collect();
    duo_testkit::wait_until("both scrapes at the target at once", || {
        slow.held.lock().len() == 2
    });
    assert_eq!(
        http_get(at, "/nope").0,
        404,
        "the endpoint answers meanwhile"
    );
    slow.release();
    for scrape in scrapes {
        let (status, text) = duo_testkit::join_within("a scrape", scrape);
        assert_eq!(status, 200);
        assert_eq!(
            value(&text, "held_up{worker=\"slow\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "duo_aggregate_up{worker=\"slow\"}"), Some(1.0));
    }
    group.stop().unwrap();
}
