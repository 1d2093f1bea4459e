//! What `docs/observability.md` promises about the exported figures, checked against what
//! an endpoint really writes: every `duo_*` family the page lists is exported and every
//! exported one is listed, and the buffer pool a server was given (with its memory cap,
//! which the page says to watch `duo_buffer_pool_allocated_bytes` against) is exported
//! beside the global one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duo_buffer::{BufPool, PoolConfig};
use duo_metrics::{MetricsEndpoint, ScrapeTarget};
use duo_net::{EventLoop, TcpServer};
use duo_testkit::{assert_metrics_documented, http_get};
use parking_lot::Mutex;

/// The cap of the test's own pool.
const CAP: usize = 4 << 20;

/// A server named `name` on `lp` (never run: its figures are read, not its connections),
/// taking its buffers from `pool`.
fn server(lp: &mut EventLoop, name: &str, pool: BufPool) -> TcpServer {
    TcpServer::builder(name, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .buffer_pool(pool)
        .on_message(|_, input| input.consume_all())
        .start(lp)
        .unwrap()
}

/// The value of the sample written exactly as `series`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_server_s_own_pool_is_exported_with_its_cap() {
    let mut lp = EventLoop::new().unwrap();
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(CAP),
        ..PoolConfig::default()
    });
    let capped = server(&mut lp, "capped", pool);
    let plain = server(&mut lp, "plain", BufPool::global());
    let block = pool.alloc(3000).unwrap();
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(capped.clone_handle());
    endpoint.add_server(plain.clone_handle());
    let text = endpoint.render();

    // The page: "Against the cap (`PoolConfig::memory_cap`)".
    assert_eq!(
        value(&text, "duo_buffer_pool_memory_cap_bytes{pool=\"capped\"}"),
        Some(CAP as f64),
        "{text}"
    );
    assert_eq!(
        value(&text, "duo_buffer_pool_allocated_bytes{pool=\"capped\"}"),
        Some(4096.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "duo_buffer_pool_bytes{pool=\"capped\",class=\"4096\",state=\"in_use\"}"
        ),
        Some(4096.0),
        "{text}"
    );
    // The global pool (which `plain` uses) once, without a cap.
    assert!(
        text.contains("duo_buffer_pool_allocated_bytes{pool=\"global\"}"),
        "{text}"
    );
    assert!(!text.contains("pool=\"plain\""), "{text}");
    assert_eq!(text.matches("memory_cap_bytes{").count(), 1, "{text}");
    drop(block);
    capped.stop(&mut lp);
    plain.stop(&mut lp);
}

#[test]
fn every_listed_duo_metric_is_exported_and_every_exported_one_is_listed() {
    let mut lp = EventLoop::new().unwrap();
    // A capped pool, so that the cap's family has a sample too.
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(CAP),
        ..PoolConfig::default()
    });
    let capped = server(&mut lp, "listed", pool);
    let mut worker = MetricsEndpoint::new();
    worker.add_server(capped.clone_handle());
    // A TLS server's certificate chain, so that its family has a sample too.
    let not_after = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_939_248_000);
    worker.certificate_expiry(std::path::Path::new("/etc/duo/cert.pem"), not_after);
    // A UDP socket, so that the `duo_udp_*` families have samples too.
    let udp_loop = duo_reactor::EventLoopThread::spawn("doc-udp", None).unwrap();
    let udp = duo_net::UdpSocket::builder("listed-udp", "127.0.0.1:0".parse().unwrap())
        .start(udp_loop.handle())
        .unwrap();
    worker.add_udp_socket(udp.clone());
    let worker = worker.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    // An aggregating endpoint over it: the `duo_aggregate_*` families.
    let targets = Arc::new(Mutex::new(vec![ScrapeTarget {
        labels: vec![("process".to_owned(), "worker".to_owned())],
        addr: worker.local_addr(),
    }]));
    let mut group = MetricsEndpoint::new();
    let current = targets.clone();
    group
        .aggregate(
            vec![("process".to_owned(), "supervisor".to_owned())],
            move || current.lock().clone(),
        )
        .scrape_timeout(Duration::from_secs(5));
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();

    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_metrics_documented(&text, "duo_");
    group.stop().unwrap();
    worker.stop().unwrap();
    udp.stop();
    udp_loop.stop().unwrap();
    capped.stop(&mut lp);
}
