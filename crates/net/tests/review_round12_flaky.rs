//! Review round 12 of the tests that failed under load (a loaded 2-core CI machine): what
//! the fixed tests now rely on, shown to hold.
//!
//! `review_round9_client::connect_from_the_failure_callback_starts_the_delay_over` timed
//! out waiting for refused connects: its "port nobody listens on" was bound by a listener
//! and dropped, and so free again for the seconds the test connects to it; a listener that
//! another test (or another process) bound to port 0 meanwhile could get it, and the
//! connects then succeeded. It holds a [`RefusedPort`] instead, as the other client tests
//! do.

mod util;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};

use duo_testkit::RefusedPort;
use util::init_log;

/// What the old way left open: a port a dropped listener had is anyone's at once, and a
/// connect to it then succeeds.
#[test]
fn a_port_whose_listener_was_dropped_can_be_listened_on_again_at_once() {
    init_log();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    match TcpListener::bind(addr) {
        Ok(other) => {
            TcpStream::connect(addr).expect("the connect meant to be refused succeeds");
            drop(other);
        }
        // Another process took it first: the same hazard.
        Err(e) => assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}"),
    }
}

/// A [`RefusedPort`] refuses every connect, and no other socket can listen on its port
/// while it lives (std's listeners set `SO_REUSEADDR`, which does not help them).
#[test]
fn a_refused_port_refuses_connects_and_cannot_be_taken() {
    init_log();
    let port = RefusedPort::new();
    let addr = port.addr();
    for _ in 0..3 {
        let e = TcpStream::connect(addr).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
    let e = TcpListener::bind(addr).expect_err("the port is held");
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
}
