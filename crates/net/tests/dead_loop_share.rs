//! An I/O loop that died (a panic out of a function queued on it through its handle, which
//! nothing catches) gets no more connections: the acceptor skips it, and the loops left
//! serve every new connection. It used to keep its share: round robin (`AcceptMode::MainLoop`)
//! handed it every third connection, and the load-aware placement of `AcceptMode::Shared`
//! took it for the least loaded loop (it holds none) and handed it nearly every new one;
//! each was dropped at once, the client reset.
//!
//! Every wait is bounded (blocking sockets with `LIMIT` timeouts).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;

use duo_net::{AcceptMode, TcpServer};
use util::{connect, init_log, is_peer_close, localhost, TestServer};

/// Sends `msg`; whether exactly `msg` came back (rather than a close or a reset).
fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).is_ok() && back == msg
}

/// Reads until the server closes (end of stream or reset).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return is_peer_close(&e),
        }
    }
}

/// The name of the loop serving `s`.
fn loop_of(s: &mut TcpStream) -> String {
    s.write_all(b"loop?").unwrap();
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).expect("the loop's name");
        name.push(b[0]);
    }
    name.pop();
    String::from_utf8(name).unwrap()
}

#[test]
fn a_dead_loop_gets_no_more_connections() {
    init_log();
    for mode in [AcceptMode::MainLoop, AcceptMode::Shared] {
        let server = TestServer::start(move || {
            TcpServer::builder("dead-share", localhost())
                .io_threads(3)
                .accept_mode(mode)
                .on_message(|ctx, input| {
                    if input.peek() == b"loop?" {
                        input.consume_all();
                        let name = ctx.connection().loop_handle().name().to_owned();
                        ctx.send(format!("{name}\n").as_bytes());
                    } else if input.peek() == b"panic" {
                        input.consume_all();
                        let _ = ctx
                            .connection()
                            .loop_handle()
                            .queue_in_loop(|_| panic!("a function queued on the loop"));
                    } else {
                        ctx.send(input.peek());
                        input.consume_all();
                    }
                })
        });
        let mut first: Vec<TcpStream> = (0..3).map(|_| connect(server.addr())).collect();
        let loops: Vec<String> = first.iter_mut().map(loop_of).collect();
        first[0].write_all(b"panic").unwrap();
        // Its loop is gone once it has dropped its connections.
        for (s, name) in first.iter_mut().zip(&loops) {
            if *name == loops[0] {
                assert!(closed_by_server(s), "{mode:?}: dropped with its loop");
            }
        }

        let mut dropped = 0;
        let mut later: Vec<TcpStream> = Vec::new();
        for i in 0..9u8 {
            let mut s = connect(server.addr());
            if !echoes(&mut s, &[b'a' + i; 16]) {
                dropped += 1;
            }
            later.push(s);
        }
        assert_eq!(dropped, 0, "{mode:?}: connections given to the dead loop");
        for (s, name) in first.iter_mut().zip(&loops) {
            if *name != loops[0] {
                assert!(echoes(s, b"still served"), "{mode:?}");
            }
        }
        let stats = server.stats();
        assert_eq!(stats.accepted, 12, "{mode:?}: {stats:?}");
        drop(later);
        drop(first);
        server.stop();
    }
}
