//! `echo --udp --metrics ADDR`: the UDP echo's figures are on the metrics page
//! (`duo_udp_*`, label `socket`), in one process and gathered from every worker of a
//! supervisor.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Server, IO_TIMEOUT};
use duo_testkit::{assert_metrics_documented, http_get, wait_until_within};

const LIMIT: Duration = Duration::from_secs(20);

/// Starts `echo ARGS.. --udp --metrics 127.0.0.1:0`; the metrics and UDP addresses.
fn start(args: &[&str]) -> (Server, SocketAddr, SocketAddr) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--udp", "--metrics", "127.0.0.1:0"]);
    let mut server = Server::start(&all);
    let metrics = server.metrics_addr(LIMIT);
    let line = server.line_starting("udp on ", LIMIT);
    let udp = line["udp on ".len()..].trim().parse().unwrap();
    (server, metrics, udp)
}

/// Sends `n` datagrams of `size` bytes and takes each echo back.
fn echo_datagrams(udp: SocketAddr, n: usize, size: usize) {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![0u8; size + 1];
    for i in 0..n {
        let msg = vec![i as u8; size];
        c.send_to(&msg, udp).unwrap();
        let got = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], &msg[..]);
    }
}

/// The sum of the samples of `name` (every label set) on `text`.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The metrics page once `ready` holds for it, or the last one read after [`LIMIT`]
/// (the caller's assertions then say what is missing).
fn wait_for_page(metrics: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, text) = http_get(metrics, "/metrics");
        if (status == 200 && ready(&text)) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_process_exports_its_udp_socket() {
    let (mut server, metrics, udp) = start(&["--io-threads", "1"]);
    echo_datagrams(udp, 10, 100);
    let expected = [
        ("duo_udp_datagrams_in_total{socket=\"echo-udp\"} 10", "in"),
        (
            "duo_udp_bytes_in_total{socket=\"echo-udp\"} 1000",
            "bytes in",
        ),
        ("duo_udp_datagrams_out_total{socket=\"echo-udp\"} 10", "out"),
        (
            "duo_udp_bytes_out_total{socket=\"echo-udp\"} 1000",
            "bytes out",
        ),
        (
            "duo_udp_truncated_total{socket=\"echo-udp\"} 0",
            "truncated",
        ),
        ("duo_udp_queued_bytes{socket=\"echo-udp\"} 0", "queued"),
    ];
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    // The loop counts a batch's sends once `sendmmsg` returned: the last echo may reach
    // the client (and its scrape the endpoint) just before that.
    let text = wait_for_page(metrics, |text| {
        expected.iter().all(|(line, _)| has(text, line))
    });
    for (line, what) in expected {
        assert!(has(&text, line), "{what}: no `{line}` in\n{text}");
    }
    assert_metrics_documented(&text, "duo_udp_");
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status:?}");
}

/// Under a supervisor each worker has its own socket (`SO_REUSEPORT`): the page gathers
/// them, and their datagrams add up to what was sent.
#[test]
fn a_supervisor_gathers_every_workers_udp_socket() {
    let (mut server, metrics, udp) = start(&["serve", "--processes", "2", "--io-threads", "1"]);
    echo_datagrams(udp, 20, 10);
    // A worker publishes what it counted at once (the figures are read at the scrape),
    // but both workers must be on the page first.
    wait_until_within(LIMIT, "both workers' sockets on the page", || {
        let (_, text) = http_get(metrics, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("duo_udp_datagrams_in_total{"))
            .count()
            == 2
    });
    // (The sends are counted once `sendmmsg` returned: just after the echoes left.)
    let text = wait_for_page(metrics, |text| {
        total(text, "duo_udp_datagrams_out_total") == 20.0
            && total(text, "duo_udp_bytes_out_total") == 200.0
    });
    assert_eq!(total(&text, "duo_udp_datagrams_in_total"), 20.0, "{text}");
    assert_eq!(total(&text, "duo_udp_datagrams_out_total"), 20.0, "{text}");
    assert_eq!(total(&text, "duo_udp_bytes_out_total"), 200.0, "{text}");
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status:?}");
}
