//! Review round 8 of the `echo` application as its users run it.
//!
//! - A worker of `echo serve --processes N` that is sent `SIGHUP` or `SIGUSR2` itself (as
//!   `pkill -HUP echo` or `killall -USR2 echo` do, to every echo process) died of the
//!   signal's default action: its connections were reset and the supervisor restarted it,
//!   where a reload promises that no connection is reset. Those signals are the
//!   supervisor's; a worker now logs and ignores them.
//! - `--stats-interval` with `--udp` logged `0 msg/s, in 0.00 MiB/s` however many
//!   datagrams were echoed (one process, and the supervisor's summed line): only the TCP
//!   server's counters were read. The UDP echo's are added.
//!
//! Every wait is bounded; every process is killed by PID (`Server`'s and `Sup`'s guards).

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use common::supervised::{Sup, ECHO};
use common::{round_trip, Server};
use duo_testkit::{is_running, send_signal, wait_until, wait_until_within};

/// `SIGHUP` and `SIGUSR2` sent to a worker (not to the supervisor) leave it serving: the
/// connection it holds still echoes, and it is not replaced. It used to die of the signal.
#[test]
fn a_worker_sent_sighup_or_sigusr2_itself_keeps_serving() {
    let sup = Sup::start(Path::new(ECHO), 1, &[]);
    sup.log_has("generation 1 is serving");
    let worker = *sup.workers().iter().next().unwrap();
    let mut held = sup.connect();
    round_trip(&mut held, b"before");
    for signal in ["HUP", "USR2"] {
        send_signal(worker, signal).unwrap();
        let handled = format!("worker {worker}: SIG{signal} ");
        wait_until("the worker to handle the signal or die of it", || {
            !is_running(worker) || sup.stderr().contains(&handled)
        });
        assert!(
            is_running(worker),
            "worker {worker} died of SIG{signal}:\n{}",
            sup.stderr()
        );
        round_trip(&mut held, format!("after SIG{signal}").as_bytes());
    }
    assert!(sup.workers().contains(&worker), "{}", sup.stderr());
    let log = sup.stderr();
    assert!(!log.contains("died"), "{log}");
    assert!(!log.contains("generation 2"), "no reload: {log}");
}

/// Sends `count` datagrams of `size` bytes to `addr` one at a time, each echoed.
fn udp_echoes(addr: std::net::SocketAddr, count: usize, size: usize) {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let payload = vec![7u8; size];
    let mut back = vec![0u8; size + 1];
    for _ in 0..count {
        client.send_to(&payload, addr).unwrap();
        let (n, _) = client.recv_from(&mut back).expect("an echoed datagram");
        assert_eq!(n, size);
    }
}

/// The `msg/s` figures of every `stats:` line in `log`.
fn msg_rates(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("stats: "))
        .filter_map(|l| {
            let i = l.find(" msg/s")?;
            l[..i].split_whitespace().last()?.parse().ok()
        })
        .collect()
}

/// Waits (bounded) until `log()` holds `more` stats lines beyond `before`; their rates.
fn rates_after(before: usize, more: usize, log: impl Fn() -> String) -> Vec<f64> {
    wait_until_within(Duration::from_secs(5), "more stats lines", || {
        msg_rates(&log()).len() >= before + more
    });
    msg_rates(&log())
}

/// One process: 300 datagrams echoed show in the `stats:` lines (the lines logged over
/// the traffic and two after it cover it all; their rates are per second of intervals of
/// a little more than one, hence the margin). It used to log 0 msg/s throughout.
#[test]
fn the_stats_line_counts_the_udp_echo() {
    let server = Server::start(&["--io-threads", "1", "--udp", "--stats-interval", "1"]);
    let udp_at = server.addr();
    udp_echoes(udp_at, 300, 1024);
    let seen = msg_rates(&server.stderr()).len();
    let rates = rates_after(seen, 2, || server.stderr());
    let counted: f64 = rates.iter().sum();
    assert!(
        counted >= 150.0,
        "300 datagrams echoed; the stats lines' rates {rates:?}:\n{}",
        server.stderr()
    );
}

/// The supervisor's summed line counts its workers' UDP echo too.
#[test]
fn the_supervisors_stats_line_counts_the_udp_echo() {
    let sup = Sup::start(Path::new(ECHO), 1, &["--udp", "--stats-interval", "1"]);
    sup.log_has("generation 1 is serving");
    udp_echoes(sup.addr(), 300, 1024);
    let seen = msg_rates(&sup.stderr()).len();
    let rates = rates_after(seen, 2, || sup.stderr());
    let counted: f64 = rates.iter().sum();
    assert!(
        counted >= 150.0,
        "300 datagrams echoed; the stats lines' rates {rates:?}:\n{}",
        sup.stderr()
    );
}
