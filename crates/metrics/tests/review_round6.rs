//! Review, round 6: the `server` label across a reload. A process that restarts a server
//! under its name while the old one drains (a graceful shutdown with connections still
//! open) adds the successor to the endpoint, which labels it `NAME#2` beside the old
//! `NAME`. When the old server's last connection closed, the label was computed again
//! and the successor became `NAME`: the series `NAME` jumped from the old server's
//! counters to the successor's (a counter going backwards, which Prometheus reads as a
//! reset and so counts the successor's whole history a second time), and the series
//! `NAME#2` ended while its server lived on.
//!
//! Every wait has a deadline; connections are closed by the test, never waited out.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use duo_metrics::MetricsEndpoint;
use duo_net::{EventLoop, TcpServer};
use duo_testkit::{wait_until, LIMIT};

/// Every counter sample (`..._total`) of `text`: series (name and labels) to value.
fn counters(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series
                .split('{')
                .next()
                .is_some_and(|n| n.ends_with("_total"))
        })
        .filter_map(|(series, v)| Some((series.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

fn echo_once(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    c
}

#[test]
fn a_server_s_counter_series_never_move_to_another_server() {
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let main = thread::Builder::new()
        .name("reload-main".into())
        .spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            let start = |lp: &mut EventLoop| {
                TcpServer::builder("svc", "127.0.0.1:0".parse::<SocketAddr>().unwrap())
                    .io_threads(1)
                    .on_message(|ctx, input| {
                        ctx.send(input.peek());
                        input.consume_all();
                    })
                    .start(lp)
                    .unwrap()
            };
            let (old, new) = (start(&mut lp), start(&mut lp));
            tx.send((old.clone_handle(), new.clone_handle())).unwrap();
            lp.run_every(Duration::from_millis(5), move |lp| {
                if stop_rx.try_recv().is_ok() {
                    lp.quit();
                }
            });
            lp.run().unwrap();
            old.stop(&mut lp);
            new.stop(&mut lp);
        })
        .unwrap();
    let (old, new) = rx.recv_timeout(LIMIT).unwrap();

    // The old server: three connections, one still open when its shutdown begins.
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(old.clone());
    drop(echo_once(old.local_addr()));
    drop(echo_once(old.local_addr()));
    let mut last = echo_once(old.local_addr());
    // The reload: the successor is added, the old server drains.
    endpoint.add_server(new.clone());
    drop(echo_once(new.local_addr()));
    wait_until("every connection counted", || {
        old.stats().accepted == 3 && old.stats().active == 1 && new.stats().closed == 1
    });
    old.shutdown(LIMIT, |_| {});
    wait_until("the old server stopping", || old.is_stopping());
    let before = counters(&endpoint.render());

    // The old server's last client leaves: it is done.
    let mut rest = Vec::new();
    let _ = last.read_to_end(&mut rest); // the server half-closed it
    drop(last);
    wait_until("the old server empty", || old.stats().active == 0);
    let after = counters(&endpoint.render());

    let backwards: Vec<String> = before
        .iter()
        .filter_map(|(series, &v)| {
            let now = *after.get(series)?;
            (now < v).then(|| format!("{series}: {v} then {now}"))
        })
        .collect();
    assert!(
        backwards.is_empty(),
        "counters went backwards: {backwards:#?}"
    );
    // The successor's series go on under the label they had.
    let accepted = |text: &HashMap<String, f64>| {
        text.iter()
            .filter(|(s, &v)| s.starts_with("duo_server_connections_accepted_total{") && v == 1.0)
            .map(|(s, _)| s.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        accepted(&before),
        accepted(&after),
        "{before:#?}\n{after:#?}"
    );

    stop_tx.send(()).unwrap();
    main.join().unwrap();
}
