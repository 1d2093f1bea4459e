//! The server on the caller's own loop with I/O threads, many clients at once; and the
//! background form stopping while connections are open.

mod util;

use std::thread;
use std::time::Duration;

use duo_net::EventLoop;
use duo_testkit::join_within;
use util::{init_log, test_builder, Client};

#[test]
fn on_the_callers_loop_with_io_threads_many_clients_at_once() {
    init_log();
    let mut lp = EventLoop::new().unwrap();
    let server = test_builder().io_threads(2).start(&mut lp).unwrap();
    let addr = server.local_addr();
    let clients = thread::spawn(move || {
        let workers: Vec<_> = (0..8)
            .map(|c| {
                thread::spawn(move || {
                    let mut conn = Client::connect(addr);
                    for i in 0..50 {
                        let r = conn.get(&format!("/query?{c}-{i}"));
                        assert_eq!(r.text(), format!("{c}-{i}"));
                    }
                })
            })
            .collect();
        for w in workers {
            join_within("a client", w);
        }
    });
    let handle = server.clone_handle();
    let quit_when_done = lp.run_every(Duration::from_millis(5), move |_| {
        if clients.is_finished() {
            handle.shutdown(Duration::from_secs(1), |lp| lp.quit());
        }
    });
    lp.run().unwrap();
    lp.cancel(quit_when_done);
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.active), (8, 0));
    server.stop(&mut lp);
}

#[test]
fn stopping_the_server_thread_closes_open_connections() {
    let server = util::start(test_builder());
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").status, 200);
    let stopper = thread::spawn(move || server.stop());
    join_within("the server thread to stop", stopper).unwrap();
    c.expect_eof();
}
