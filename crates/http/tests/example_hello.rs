//! Runs the `hello` example (`examples/hello.rs`) as a child process: its routes answer
//! over loopback, a bad address is a usage error (exit 2), and SIGTERM stops it cleanly.
//! The process is killed by its guard if a test fails.

mod util;

use std::process::Command;
use std::time::Duration;

use duo_testkit::{example_binary, run_within, ChildServer, LIMIT};
use util::Client;

#[test]
fn hello_serves_its_routes_and_stops_on_sigterm() {
    let mut cmd = Command::new(example_binary("duo-http", "hello"));
    cmd.arg("127.0.0.1:0").env("RUST_LOG", "info");
    let mut server = ChildServer::builder(cmd).startup(LIMIT).start();
    let mut c = Client::connect(server.addr());
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("visitor number 1\n"), "{}", r.text());
    assert_eq!(c.get("/healthz").text(), "ok\n");
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(c.read_reply(false).text(), "hi");
    assert_eq!(c.get("/").status, 200);
    // The deferred route, answered by the example's worker pool.
    assert_eq!(c.get("/primes?below=100").text(), "25 primes below 100\n");
    assert_eq!(c.get("/primes?below=2").text(), "0 primes below 2\n");
    assert_eq!(c.get("/primes?below=x").status, 400);
    assert_eq!(c.get("/healthz").text(), "ok\n");
    drop(c);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(
        status.success(),
        "exit: {status}; log:\n{}",
        server.stderr()
    );
    server.wait_for_stderr("served 2 greetings", LIMIT);
}

#[test]
fn hello_rejects_a_bad_address_with_usage() {
    let out = run_within(
        Command::new(example_binary("duo-http", "hello")).arg("not-an-address"),
        LIMIT,
    )
    .expect("run hello");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("usage: hello"), "{}", out.stderr);
}
