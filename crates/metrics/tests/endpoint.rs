//! The endpoint for real: an echo server under a little traffic, its figures scraped over
//! HTTP, `/healthz` and `/debug/loops`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duo_metrics::MetricsEndpoint;
use duo_net::{EventLoop, TcpServer};
use duo_testkit::{http_get, LIMIT};

/// The value of the series `name{labels}` (labels as written, in order) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn an_echo_server_s_figures_are_scraped_over_http() {
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server_thread = thread::Builder::new()
        .name("scraped-main".into())
        .spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            let server = TcpServer::builder(
                "scraped",
                "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
            )
            .io_threads(1)
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
            .start(&mut lp)
            .unwrap();
            tx.send((server.local_addr(), server.clone_handle()))
                .unwrap();
            lp.run_every(Duration::from_millis(5), move |lp| {
                if stop_rx.try_recv().is_ok() {
                    lp.quit();
                }
            });
            lp.run().unwrap();
            server.stop(&mut lp);
        })
        .unwrap();
    let (addr, handle) = rx.recv_timeout(LIMIT).unwrap();
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(handle.clone());
    let metrics = endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap();

    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    for _ in 0..10 {
        client.write_all(&[1u8; 1000]).unwrap();
        let mut back = [0u8; 1000];
        client.read_exact(&mut back).unwrap();
    }
    let deadline = Instant::now() + LIMIT;
    while handle.stats().bytes_out() < 10_000 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(2));
    }

    let (status, text) = http_get(metrics.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    assert_eq!(
        value(
            &text,
            "duo_server_bytes_in_total{server=\"scraped\",loop=\"scraped-0\"}"
        ),
        Some(10_000.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "duo_server_connections{server=\"scraped\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "duo_server_loop_connections{server=\"scraped\",loop=\"scraped-0\"}"
        ),
        Some(1.0)
    );
    assert!(
        value(&text, "duo_loop_io_events_total{loop=\"scraped-0\"}").unwrap() >= 10.0,
        "{text}"
    );
    for family in [
        "# TYPE duo_loop_seconds counter",
        "# TYPE duo_loop_events_per_iteration histogram",
        "# TYPE duo_loop_timer_lateness_seconds histogram",
        "# TYPE duo_loop_stalls counter",
        "# TYPE duo_loop_spins counter",
        "# TYPE duo_server_closes counter",
        "# TYPE duo_server_output_queued_bytes gauge",
        "# TYPE duo_server_backpressured_connections gauge",
        "# TYPE duo_buffer_pool_bytes gauge",
        "# TYPE duo_buffer_pool_released_blocks counter",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    // The endpoint's own loop and server are there too: it is a duo server.
    assert!(
        text.contains("duo_loop_iterations_total{loop=\"metrics\"}"),
        "{text}"
    );

    let (status, body) = http_get(metrics.local_addr(), "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let (status, body) = http_get(metrics.local_addr(), "/debug/loops");
    assert_eq!(status, 200);
    let loops: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = loops
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert!(
        names.contains(&"scraped-0") && names.contains(&"scraped-main"),
        "{names:?}"
    );

    assert_eq!(http_get(metrics.local_addr(), "/nope").0, 404);
    drop(client);
    metrics.stop().unwrap();
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}

#[test]
fn names_are_escaped_and_loops_of_same_named_servers_kept_apart() {
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server_thread = thread::Builder::new()
        .name("odd-main".into())
        .spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            let start = |lp: &mut EventLoop| {
                TcpServer::builder(
                    "we\"ird\\name\n",
                    "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
                )
                .io_threads(1)
                .start(lp)
                .unwrap()
            };
            let (a, b) = (start(&mut lp), start(&mut lp));
            tx.send((a.clone_handle(), b.clone_handle())).unwrap();
            lp.run_every(Duration::from_millis(5), move |lp| {
                if stop_rx.try_recv().is_ok() {
                    lp.quit();
                }
            });
            lp.run().unwrap();
            a.stop(&mut lp);
            b.stop(&mut lp);
        })
        .unwrap();
    let (a, b) = rx.recv_timeout(LIMIT).unwrap();
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(a.clone());
    endpoint.add_server(b.clone());
    let text = endpoint.render();
    assert!(
        text.contains(r#"duo_server_connections{server="we\"ird\\name\n"} 0"#),
        "{text}"
    );
    let (la, lb) = (a.stats().per_loop, b.stats().per_loop);
    assert_ne!(la[0].loop_name, lb[0].loop_name, "two loops, two names");
    for line in text
        .lines()
        .filter(|l| l.starts_with("duo_loop_iterations_total{"))
    {
        let series = line.rsplit_once(' ').unwrap().0;
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
                .count(),
            1,
            "{series} appears once"
        );
    }
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}
