//! The aggregating endpoint with targets no other test combines: one that answers `200`
//! with an HTML page, one whose text has a line cut short, one whose metadata is written
//! with other blanks than the merge reads, next to a good one; and a scrape timeout of
//! `Duration::MAX`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{canned, target, value, worker};
use duo_metrics::MetricsEndpoint;
use duo_testkit::{http_get, LIMIT};

/// The families the text types more than once, its metadata read the way a Prometheus
/// server does (blanks of any length between the words).
fn typed_twice(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 3 && words[0] == "#" && words[1] == "TYPE" {
            *seen.entry(words[2].to_owned()).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(name, _)| name)
        .collect()
}

/// A `200` whose body is no exposition (an HTML page: another program took the worker's
/// port, say; a line cut short; `# TYPE` with two blanks) was merged as it was: the
/// merged text then held `<html>...{worker="html"}` or a second `# TYPE` of a family,
/// either of which makes Prometheus refuse the whole scrape, every good worker's samples
/// with it, while `duo_aggregate_up` said 1 for the culprit. Such a target is left out
/// and marked down, like one that does not answer.
#[test]
fn a_target_that_answers_with_no_exposition_is_left_out_and_marked_down() {
    let good = worker(7);
    let (html, html_peer) = canned("<html><body>It works!</body></html>\n", 1);
    let (cut, cut_peer) = canned("# TYPE app_jobs counter\napp_jobs_total{queue=\"a", 1);
    let (odd, odd_peer) = canned(
        "# HELP  app_jobs Jobs done.\n# TYPE  app_jobs counter\napp_jobs_total 1\n# EOF\n",
        1,
    );
    let good_addr = good.local_addr();
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(vec![("worker".to_owned(), "self".to_owned())], move || {
            vec![
                target("good", good_addr),
                target("html", html),
                target("cut", cut),
                target("odd", odd),
            ]
        })
        .scrape_timeout(LIMIT);
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "app_jobs_total{worker=\"good\"}"),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"good\"}"),
        Some(1.0),
        "{text}"
    );
    for bad in ["html", "cut", "odd"] {
        assert_eq!(
            value(&text, &format!("duo_aggregate_up{{worker=\"{bad}\"}}")),
            Some(0.0),
            "{bad}: {text}"
        );
        assert!(
            !text.contains(&format!("worker=\"{bad}\",")),
            "{bad}: {text}"
        );
    }
    assert!(!text.contains("<html>"), "{text}");
    assert!(typed_twice(&text).is_empty(), "{:?}", typed_twice(&text));
    assert!(text.ends_with("# EOF\n"));
    for peer in [html_peer, cut_peer, odd_peer] {
        duo_testkit::join_within("a canned peer", peer);
    }
    group.stop().unwrap();
    good.stop().unwrap();
}

/// `scrape_timeout(Duration::MAX)` ("wait as long as it takes") panicked in `spawn` on
/// an overflowing addition (the response timeout is the scrape timeout plus a slack),
/// and the deadline of each scrape (`Instant::now() + timeout`) would have too.
#[test]
fn a_scrape_timeout_of_duration_max_neither_panics_nor_hangs() {
    let good = worker(3);
    let addr = good.local_addr();
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(vec![("worker".to_owned(), "self".to_owned())], move || {
            vec![target("good", addr)]
        })
        .scrape_timeout(Duration::MAX);
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        value(&text, "app_jobs_total{worker=\"good\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        http_get(group.local_addr(), "/healthz"),
        (200, "ok\n".into())
    );
    group.stop().unwrap();
    good.stop().unwrap();
}

/// The check that keeps a garbage text out takes what duo writes, user-named series
/// included: a worker exporting a server (and its I/O loop, named after it) whose name
/// holds a quote, a backslash, a newline, `#`, braces, a comma and `=` is merged, its
/// label escaped, and counted up.
#[test]
fn a_worker_with_oddly_named_servers_and_loops_is_merged() {
    use duo_net::{EventLoop, TcpServer};
    use std::sync::mpsc;
    const NAME: &str = "we\"ird\\name\n#2 {x=\"1\"},";
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        let server = TcpServer::builder(NAME, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .io_threads(1)
            .start(&mut lp)
            .unwrap();
        tx.send(server.clone_handle()).unwrap();
        lp.run_every(Duration::from_millis(5), move |lp| {
            if stop_rx.try_recv().is_ok() {
                lp.quit();
            }
        });
        lp.run().unwrap();
        server.stop(&mut lp);
    });
    let handle = rx.recv_timeout(LIMIT).unwrap();
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(handle);
    let worker = endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = worker.local_addr();
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(vec![("worker".to_owned(), "self".to_owned())], move || {
            vec![target("w", addr)]
        })
        .scrape_timeout(LIMIT);
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"w\"}"),
        Some(1.0),
        "{text}"
    );
    let escaped = r#"we\"ird\\name\n#2 {x=\"1\"},"#;
    assert_eq!(
        value(
            &text,
            &format!("duo_server_connections{{worker=\"w\",server=\"{escaped}\"}}")
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "duo_server_bytes_in_total{{worker=\"w\",server=\"{escaped}\",loop=\"{escaped}-0\"}}"
        )),
        "{text}"
    );
    group.stop().unwrap();
    worker.stop().unwrap();
    stop_tx.send(()).unwrap();
    duo_testkit::join_within("the server's thread", server_thread);
}
