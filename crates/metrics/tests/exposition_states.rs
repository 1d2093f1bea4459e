//! The `/metrics` exposition across a server restarted under its name, and `/healthz` for
//! a loop stuck before its first poll: each found by a review helper.
//!
//! A process that restarts a server (a reload, a listener moved to another port) under the
//! same name hands the new server to the endpoint with `MetricsServer::add_server` (there
//! is no way to take the old one out). The old handle stays in the collector, so every
//! `duo_server_*` family then holds two series with the same label set: invalid
//! exposition (OpenMetrics: a MetricFamily MUST NOT have two Metrics with the same
//! LabelSet). Prometheus keeps the first sample of a duplicated series in a scrape and
//! drops the rest as "duplicate sample for timestamp": the live server's figures are lost
//! behind the dead one's.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use duo_metrics::MetricsEndpoint;
use duo_net::{EventLoop, ServerHandle, TcpServer};
use duo_testkit::{http_get, wait_until, LIMIT};

/// Every sample's series (`name{labels}`, what comes before the value) that occurs more
/// than once, with its count.
fn duplicated_series(text: &str) -> Vec<(String, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        *seen.entry(series).or_default() += 1;
    }
    let mut dups: Vec<(String, usize)> = seen
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    dups.sort();
    dups
}

/// The values of every sample of `series` (exact label text), in order of appearance.
fn values(text: &str, series: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn start_echo(lp: &mut EventLoop, name: &str) -> TcpServer {
    TcpServer::builder(name, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .io_threads(1)
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
        .start(lp)
        .unwrap()
}

fn echo_once(addr: SocketAddr, n: usize) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(&vec![7u8; n]).unwrap();
    let mut back = vec![0u8; n];
    c.read_exact(&mut back).unwrap();
    c
}

#[test]
fn a_server_restarted_under_its_name_gives_each_series_once() {
    let mut lp = EventLoop::new().unwrap();
    let metrics = MetricsEndpoint::new()
        .spawn("127.0.0.1:0".parse().unwrap())
        .unwrap();

    // The first life of "svc": some traffic, then stopped.
    let old = start_echo(&mut lp, "svc");
    let old_handle: ServerHandle = old.clone_handle();
    metrics.add_server(old_handle.clone());
    drop(echo_once(old.local_addr(), 100));
    wait_until("the old server counted its bytes", || {
        old_handle.stats().bytes_out() == 100
    });
    old.stop(&mut lp);

    // Its successor, same name, added as the docs say; one connection open on it.
    let new = start_echo(&mut lp, "svc");
    let new_handle = new.clone_handle();
    metrics.add_server(new_handle.clone());
    let _client = echo_once(new.local_addr(), 5);
    wait_until("the new server counted its bytes", || {
        new_handle.stats().bytes_out() == 5 && new_handle.stats().active == 1
    });

    let (status, text) = http_get(metrics.local_addr(), "/metrics");
    assert_eq!(status, 200);
    let dups = duplicated_series(&text);
    // What a scraper keeps for the live server's open connections: the first sample.
    let open = values(&text, "duo_server_connections{server=\"svc\"}");
    assert!(
        dups.is_empty(),
        "{} series appear more than once (first: {:?}); \
         duo_server_connections{{server=\"svc\"}} = {open:?} (the first, which a scraper \
         keeps, is the stopped server's)",
        dups.len(),
        dups.first()
    );

    drop(_client);
    new.stop(&mut lp);
    metrics.stop().unwrap();
}

#[test]
fn two_live_servers_with_one_name_give_each_series_once() {
    let mut lp = EventLoop::new().unwrap();
    let a = start_echo(&mut lp, "twin");
    let b = start_echo(&mut lp, "twin");
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(a.clone_handle());
    endpoint.add_server(b.clone_handle());
    let text = endpoint.render();
    let dups = duplicated_series(&text);
    assert!(
        dups.is_empty(),
        "{} series appear more than once (first: {:?})",
        dups.len(),
        dups.first()
    );
    a.stop(&mut lp);
    b.stop(&mut lp);
}

/// `/healthz` must answer 503 for a loop stuck in a function queued before its `run`
/// (queued on its own thread before `run`, which the docs allow, or through its handle
/// before the loop's thread has reached `run`: `EventLoopThread` hands out the handle
/// before it calls `run`). The same function queued once the loop runs is reported (the
/// control below): only the functions `run` runs first, before its first poll, are
/// invisible.
#[test]
fn healthz_sees_a_loop_stuck_in_a_function_queued_before_run() {
    let mut endpoint = MetricsEndpoint::new();
    endpoint.health_limit(std::time::Duration::from_millis(50));
    let metrics = endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap();

    // Control: stuck in a function queued while the loop runs: 503.
    let (h_tx, h_rx) = std::sync::mpsc::channel();
    let running = std::thread::Builder::new()
        .name("states-running".into())
        .spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            h_tx.send(lp.handle()).unwrap();
            lp.run().unwrap();
        })
        .unwrap();
    let h = h_rx.recv_timeout(LIMIT).unwrap();
    let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
    h.queue_in_loop(move |_| {
        let _ = ran_tx.send(());
    })
    .unwrap();
    ran_rx.recv_timeout(LIMIT).expect("the loop runs");
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    h.queue_in_loop(move |lp| {
        let _ = release_rx.recv_timeout(LIMIT);
        lp.quit();
    })
    .unwrap();
    wait_until("503 for the loop stuck while running", || {
        let (status, body) = http_get(metrics.local_addr(), "/healthz");
        status == 503 && body.contains("states-running")
    });
    drop(release_tx);
    running.join().unwrap();
    wait_until("200 again", || {
        http_get(metrics.local_addr(), "/healthz").0 == 200
    });

    // The case: the same function, queued before `run`.
    let (stuck_tx, stuck_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let before = std::thread::Builder::new()
        .name("states-before-run".into())
        .spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            lp.queue_in_loop(move |lp| {
                let _ = stuck_tx.send(());
                let _ = release_rx.recv_timeout(LIMIT);
                lp.quit();
            });
            lp.run().unwrap();
        })
        .unwrap();
    stuck_rx.recv_timeout(LIMIT).expect("the function runs");
    let deadline = std::time::Instant::now() + LIMIT;
    let mut last = (0, String::new());
    while std::time::Instant::now() < deadline {
        last = http_get(metrics.local_addr(), "/healthz");
        if last.0 == 503 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(release_tx);
    before.join().unwrap();
    metrics.stop().unwrap();
    assert!(
        last.0 == 503 && last.1.contains("states-before-run"),
        "a loop stuck for {LIMIT:?} in a function queued before run: /healthz still {} {:?}",
        last.0,
        last.1
    );
}
