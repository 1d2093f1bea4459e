//! A graceful close asked from the message callback, with input left behind it: a client
//! pipelined lines after a `QUIT` and is still sending when the server closes. Nothing is
//! waiting in the socket at that moment (the rest is on its way), so the close used to
//! happen at once, and the client's next bytes met a closed socket: the kernel answered
//! with a reset, the client's write failed with `EPIPE` and its read with
//! `ECONNRESET` (a reset can also discard the server's last reply). It now lingers when
//! the callback left input unread, so the client's stream ends cleanly; a close with
//! nothing left behind it is still immediate.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use duo_net::{CloseReason, TcpServer};
use duo_testkit::LIMIT;
use util::{localhost, TestServer};

/// A line server: `QUIT` answers `BYE` and closes after the flush (leaving any lines
/// behind it unread); any other line is echoed. Its closes go to the returned receiver.
fn quit_server() -> (TestServer, mpsc::Receiver<CloseReason>) {
    let (on_close, closes) = util::shared::close_reasons();
    let server = TestServer::start(move || {
        TcpServer::builder("quit", localhost())
            .io_threads(1)
            .close_linger(LIMIT)
            .on_message(util::shared::echo_lines_until_quit)
            .on_close(on_close)
    });
    (server, closes)
}

fn connect(server: &TestServer) -> TcpStream {
    let c = TcpStream::connect(server.addr()).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c
}

/// Reads `expected` exactly.
fn expect(c: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn a_client_still_sending_behind_a_quit_gets_a_clean_end_of_stream() {
    let (server, closes) = quit_server();
    let mut c = connect(&server);
    // The lines behind QUIT are in the server's buffer when it closes; the socket's
    // queue is empty.
    c.write_all(b"first\nQUIT\nafter-1\nafter-2\n").unwrap();
    expect(&mut c, b"first\nBYE\n");
    // The client goes on (it has not seen the end of the stream yet): more than the
    // socket buffers hold, so its write blocks until the server has taken it, and ends
    // in EPIPE if the server answers with a reset instead.
    let more = vec![b'x'; 16 << 20];
    if let Err(e) = c.write_all(&more) {
        panic!("the server's close reset the stream under the client's writes: {e}");
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing after BYE: {rest:?}"),
        Err(e) => panic!(
            "the stream ended with {e}, not a clean end (kind {:?})",
            e.kind()
        ),
    }
    assert_eq!(
        closes.recv_timeout(LIMIT).unwrap(),
        CloseReason::User,
        "the close keeps its reason"
    );
    server.stop();
}

#[test]
fn a_quit_with_nothing_behind_it_still_closes_at_once() {
    let (server, closes) = quit_server();
    let mut c = connect(&server);
    c.write_all(b"first\nQUIT\n").unwrap();
    expect(&mut c, b"first\nBYE\n");
    // The server closes without waiting for this client (which sends nothing more and
    // keeps its socket open): its close is seen well before the linger bound.
    assert_eq!(
        closes.recv_timeout(Duration::from_secs(3)).unwrap(),
        CloseReason::User
    );
    let mut rest = Vec::new();
    let n = c.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0);
    server.stop();
}
