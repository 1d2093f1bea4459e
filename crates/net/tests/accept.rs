//! How a server gets its connections: on a listening socket it binds itself or on one it
//! inherits (`TcpServer::builder_on`), accepted by the main loop or by every I/O loop.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

use duo_net::TcpServer;
use duo_testkit::LIMIT;
use util::{init_log, TestServer};

fn echo_on(name: &str, listener: TcpListener) -> duo_net::ServerBuilder {
    TcpServer::builder_on(name, listener)
        .expect("a listening socket")
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
}

fn round_trip(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).expect("echo");
    back
}

#[test]
fn serves_on_an_inherited_listener_without_binding() {
    init_log();
    // Bound and listening before the server exists, as a supervisor or systemd would.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start(move || echo_on("inherited", listener).io_threads(1));
    assert_eq!(
        server.addr(),
        addr,
        "the server's address is the listener's"
    );
    assert_eq!(round_trip(addr, b"inherited"), b"inherited");
    server.stop();
}

#[test]
fn a_socket_that_is_not_listening_is_refused_with_a_clear_error() {
    init_log();
    let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    bound
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let err = TcpServer::builder_on("not-listening", TcpListener::from(bound)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not listening"), "{err}");
}
