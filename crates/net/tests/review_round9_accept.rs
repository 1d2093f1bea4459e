//! Review round 9 of the accept path and the connection limits (`server/accept.rs`,
//! `server/mod.rs`, `server/builder.rs`): each test here failed on the code before the
//! fix it comes with.

mod util;

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::Duration;

use duo_net::{EventLoop, TcpServer};
use util::{connect, echo_once, init_log, TestServer};

/// `defer_accept` rounds its wait up to whole seconds; the longest wait there is
/// (`Duration::MAX`, "as long as the kernel allows") overflowed that rounding: a panic in
/// a debug build, and deferring turned *off* (the sum wrapped to zero) in a release
/// build. It now asks for the longest deferral the kernel keeps.
#[test]
fn the_longest_deferred_accept_is_on_not_an_overflow() {
    init_log();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = listener.try_clone().unwrap();
    let server = TestServer::start(move || {
        TcpServer::builder_on("deferred-max", listener)
            .unwrap()
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
            .defer_accept(Duration::MAX)
    });
    assert!(
        duo_sys::tcp_defer_accept(probe.as_fd()).unwrap() > 0,
        "deferred accepting is on"
    );
    let mut c = connect(server.addr());
    echo_once(&mut c, b"first bytes");
    drop(c);
    server.stop();
}

/// A server dropped while its main loop is not running (`lp.run()` returned, then the
/// server goes out of scope; or it is dropped on another thread) has stopped: its I/O
/// threads are joined, its connections are gone and nothing accepts any more. Yet
/// `ServerHandle::is_stopping` ("whether a shutdown or stop was requested") said `false`
/// until the main loop ran the queued part of the stop, that is, never if that loop does
/// not run again: a metrics endpoint, which counts a stopped server with no connection
/// left as done, kept exporting it as a live one.
#[test]
fn a_server_dropped_while_its_main_loop_is_not_running_says_it_is_stopping() {
    init_log();
    let mut lp = EventLoop::new().expect("main loop");
    let server = util::echo_builder("dropped", util::localhost())
        .io_threads(1)
        .start(&mut lp)
        .expect("server starts");
    let handle = server.clone_handle();
    let mut c = connect(server.local_addr());
    echo_once(&mut c, b"up");
    assert!(!handle.is_stopping());
    drop(server);
    assert_eq!(
        handle.stats().active,
        0,
        "its connection went with its loop"
    );
    assert!(handle.is_stopping(), "a dropped server is stopping");
    drop(c);
}
