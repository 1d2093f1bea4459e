//! Small operator-facing gaps of `echo serve` (written by a review helper: each test
//! failed before its fix): an `--io-threads` beyond reason is a usage error at once (not
//! thousands of threads and `Too many open files` seconds later), and a TLS certificate
//! outside its validity period is served with a warning that names the file and the
//! dates (clients refuse its handshakes).

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;
use duo_testkit::{run_within, TestCerts};

/// How long a refusal may take (a server that starts instead is killed then).
const STARTUP: Duration = Duration::from_secs(8);

/// `--io-threads` above the bound (4096, as `--loops`) is refused with status 2 and a
/// message naming the option and the value, before any thread starts.
#[test]
fn io_threads_beyond_reason_are_a_usage_error() {
    for n in ["4097", "100000", "18446744073709551615"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", n])
            .env("RUST_LOG", "info");
        let done = run_within(&mut cmd, STARTUP)
            .unwrap_or_else(|e| panic!("--io-threads {n} was not refused at start: {e}"));
        assert_eq!(
            done.status.code(),
            Some(2),
            "--io-threads {n}: {}\nstderr:\n{}",
            done.status,
            done.stderr
        );
        assert!(
            done.stderr.contains("--io-threads") && done.stderr.contains(n),
            "--io-threads {n}: the message names neither:\n{}",
            done.stderr
        );
        assert!(done.stdout.is_empty(), "it announced: {}", done.stdout);
        assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    }
    // The bound itself is accepted: what refuses this is `--processes 0`, a later check
    // (so no 4096 threads are started here).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "4096"])
        .args(["--processes", "0"]);
    let done = run_within(&mut cmd, STARTUP).expect("refused at start");
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains("--processes must be at least 1"),
        "{}",
        done.stderr
    );
}

/// More I/O threads than the open-file limit leaves room for: a start-up error (status 1)
/// that says which loop could not start, of how many, and why; not a bare "Too many open
/// files".
#[test]
fn io_threads_past_the_open_file_limit_say_which_loop_failed() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" serve --listen 127.0.0.1:0 --io-threads 200")
        .arg(env!("CARGO_BIN_EXE_echo"));
    let done = run_within(&mut cmd, STARTUP).expect("refused at start");
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("Too many open files") && last.contains("of 200"),
        "the error names neither the loop nor the cause: {last:?}\n{}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "it announced: {}", done.stdout);
}

/// Starts a TLS echo on `certs`, and once it is listening (it started: a warning is no
/// refusal) stops it with SIGTERM; its whole log.
fn tls_server_log(certs: &TestCerts) -> String {
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut server = Server::start(&["--tls-cert", &cert, "--tls-key", &key, "--io-threads", "1"]);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status}");
    server.stderr_to_end(Duration::from_secs(5))
}

/// An expired certificate: the server starts (a refusal would take a service down over a
/// late renewal), and the log says which file, that it expired, and the dates.
#[test]
fn an_expired_certificate_is_served_with_a_warning_naming_file_and_dates() {
    let certs = TestCerts::valid_between("echo-expired", (2020, 1, 1), (2021, 6, 30));
    let log = tls_server_log(&certs);
    let cert = certs.path("cert.pem");
    let line = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&cert))
        .unwrap_or_else(|| panic!("no warning naming {cert}:\n{log}"));
    for needle in [
        "expired on 2021-06-30 00:00:00 UTC",
        "from 2020-01-01 00:00:00 UTC to 2021-06-30 00:00:00 UTC",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
    // Warned once, although main and the server each load the file.
    assert_eq!(log.matches("expired on").count(), 1, "{log}");
}

/// A certificate not valid yet (a clock behind, or a certificate made for later): the
/// same warning, saying from when; a valid certificate gets none.
#[test]
fn a_certificate_not_valid_yet_is_warned_about_and_a_valid_one_is_not() {
    let certs = TestCerts::valid_between("echo-future", (2090, 3, 1), (2091, 3, 1));
    let log = tls_server_log(&certs);
    let cert = certs.path("cert.pem");
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&cert)
            && l.contains("not valid yet (until 2090-03-01 00:00:00 UTC)")),
        "no warning naming {cert} and its start:\n{log}"
    );

    let certs = TestCerts::new("echo-valid");
    let log = tls_server_log(&certs);
    assert!(!log.contains("certificate 1 of"), "{log}");
}
