//! `loadgen --tls-ca` against a server that accepts and never answers the TLS handshake:
//! each stalled handshake is failed as a timeout after `--timeout`, like a stalled connect
//! or an unanswered request, rather than holding the run until its hard limit.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{field, loadgen};

#[test]
fn a_stalled_tls_handshake_times_out() {
    let dir = std::env::temp_dir().join(format!("duo-loadgen-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();

    // Accepts, keeps every connection open and never writes: the client's hello goes
    // unanswered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });

    let started = Instant::now();
    let (code, out) = loadgen(&[
        "rr",
        "--addr",
        &addr,
        "--json",
        "--conns",
        "2",
        "--secs",
        "1",
        "--timeout",
        "1",
        "--tls-ca",
        ca.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let json = out.trim();
    // Exit 1: no connection was ever established (see `review_round6.rs`), so the run
    // measured nothing; it reports its errors all the same.
    assert_eq!(code, 1, "{json}");
    assert!(
        field(json, "failure").is_some_and(|f| f.contains("ever established")),
        "{json}"
    );
    assert_eq!(
        field(json, "errors"),
        Some("{\"timeout\":2}"),
        "each stalled handshake fails as a timeout (before: no error at all, a run with \
         no message reported as clean): {json}"
    );
    assert_eq!(
        field(json, "established"),
        Some("0"),
        "a connection whose handshake never completed was never established: {json}"
    );
    // The hard limit would be --secs + --timeout + 5 s.
    assert!(took < Duration::from_secs(6), "took {took:?}: {json}");
}
