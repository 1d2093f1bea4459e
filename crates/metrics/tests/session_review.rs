//! Findings of the review of this session's library changes: the `pool` label of the
//! buffer-pool figures. A server named `global` with a pool of its own was exported
//! under the global pool's label, so every `duo_buffer_pool_*` family held two series
//! with one label set (which scrapers refuse or drop), and its cap could not be told
//! from the global pool's.

use std::collections::HashSet;
use std::net::SocketAddr;

use duo_buffer::{BufPool, PoolConfig};
use duo_metrics::MetricsEndpoint;
use duo_net::{EventLoop, TcpServer};

/// A server named `name` on `lp` (never run: its figures are read), taking its buffers
/// from `pool`.
fn server(lp: &mut EventLoop, name: &str, pool: BufPool) -> TcpServer {
    TcpServer::builder(name, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .buffer_pool(pool)
        .on_message(|_, input| input.consume_all())
        .start(lp)
        .unwrap()
}

#[test]
fn a_server_named_global_does_not_share_the_global_pool_s_label() {
    let mut lp = EventLoop::new().unwrap();
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(1 << 20),
        ..PoolConfig::default()
    });
    let own = server(&mut lp, "global", pool);
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(own.clone_handle());
    let text = endpoint.render();

    // Every sample's series (name and labels) once.
    let mut seen = HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("duo_buffer_pool")) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        assert!(seen.insert(series.to_owned()), "{series} twice in\n{text}");
    }
    // Both pools, the server's with its cap.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("duo_buffer_pool_allocated_bytes{"))
            .count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("memory_cap_bytes{").count(), 1, "{text}");
    own.stop(&mut lp);
}
