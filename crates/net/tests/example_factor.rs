//! Runs the `factor` example (`examples/factor.rs`) as a child process: answers computed on
//! its worker pool come back with their request ids (in any order), bad requests get a
//! clear error, an overlong line closes the connection alone, and SIGTERM stops it cleanly.
//! The process is killed by its guard if a test fails; every read has a deadline.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use duo_testkit::{example_binary, ChildServer, LIMIT};

fn start() -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-net", "factor"));
    cmd.args(["127.0.0.1:0", "2"]).env("RUST_LOG", "info");
    ChildServer::builder(cmd).startup(LIMIT).start()
}

/// A client with a line reader; every read waits at most `LIMIT`.
fn connect(server: &ChildServer) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let reader = BufReader::new(s.try_clone().unwrap());
    (s, reader)
}

/// Reads `n` answers `ID:TEXT`, by id.
fn answers(reader: &mut BufReader<TcpStream>, n: usize) -> HashMap<String, String> {
    let mut got = HashMap::new();
    for _ in 0..n {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "EOF after {got:?}"
        );
        let (id, text) = line.trim_end().split_once(':').expect("ID:TEXT");
        got.insert(id.to_owned(), text.to_owned());
    }
    got
}

#[test]
fn factor_answers_by_id_refuses_bad_requests_and_stops_on_sigterm() {
    let mut server = start();
    let (mut s, mut reader) = connect(&server);
    s.write_all(b"1:600851475143\n2:97\n3:1\n4:abc\nnocolon\n5:12\r\n")
        .unwrap();
    let got = answers(&mut reader, 6);
    assert_eq!(got["1"], "71*839*1471*6857");
    assert_eq!(got["2"], "97");
    assert!(got["3"].starts_with("error: N must be"), "{got:?}");
    assert!(got["4"].starts_with("error: N must be"), "{got:?}");
    assert_eq!(got["nocolon"], "error: expected ID:N");
    assert_eq!(got["5"], "2*2*3");

    // Many at once, from two clients: every answer is the factorisation of its request.
    let (mut t, mut other) = connect(&server);
    let numbers: Vec<u64> = (0..200u64).map(|i| i * 7919 + 2).collect();
    let mut batch = String::new();
    for (i, n) in numbers.iter().enumerate() {
        batch.push_str(&format!("{i}:{n}\n"));
    }
    s.write_all(batch.as_bytes()).unwrap();
    t.write_all(batch.as_bytes()).unwrap();
    for reader in [&mut reader, &mut other] {
        let got = answers(reader, numbers.len());
        for (i, n) in numbers.iter().enumerate() {
            let text = &got[&i.to_string()];
            let product: u64 = text.split('*').map(|f| f.parse::<u64>().unwrap()).product();
            assert_eq!(product, *n, "{i}:{n} answered {text}");
        }
    }

    // An overlong line: an error, then EOF for that client only.
    let (mut bad, mut bad_reader) = connect(&server);
    bad.write_all(&[b'7'; 100]).unwrap();
    let mut line = String::new();
    bad_reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("error: "), "{line:?}");
    line.clear();
    assert_eq!(bad_reader.read_line(&mut line).unwrap(), 0, "{line:?}");
    s.write_all(b"6:49\n").unwrap();
    assert_eq!(answers(&mut reader, 1)["6"], "7*7");

    drop((s, t));
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(
        status.success(),
        "exit: {status}; log:\n{}",
        server.stderr()
    );
}
