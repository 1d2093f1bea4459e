//! An aggregating endpoint for real: two endpoints standing in for workers, one port that
//! refuses and one peer that never answers, all on loopback.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_metrics::prometheus_client::metrics::counter::Counter;
use duo_metrics::{MetricsEndpoint, MetricsServer, ScrapeTarget};
use duo_testkit::{http_get, RefusedPort};
use parking_lot::Mutex;

/// An endpoint whose `app_jobs` counter stands at `jobs`.
fn worker(jobs: u64) -> MetricsServer {
    let mut endpoint = MetricsEndpoint::new();
    let counter: Counter = Counter::default();
    counter.inc_by(jobs);
    endpoint
        .registry_mut()
        .register("app_jobs", "Jobs done", counter);
    endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn target(name: &str, addr: SocketAddr) -> ScrapeTarget {
    ScrapeTarget {
        labels: vec![("worker".to_owned(), name.to_owned())],
        addr,
    }
}

/// The value of the sample written exactly as `series`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

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
