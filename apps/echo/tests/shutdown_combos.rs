//! Stopping `echo serve` (SIGTERM, SIGINT) in combinations the other suites do not make:
//! a TLS handshake half done, a client paused by backpressure with megabytes queued, a
//! client that half-closed while its echo is still going out, a metrics scrape half sent,
//! a second signal on a Unix-domain socket while a client holds the drain, a supervisor
//! whose workers have not started yet, and a reload (SIGHUP) with a stop 10 ms behind it.
//! After each: the exit status, the time the exit took, that what a client got back is
//! what it sent (all of it where the server had read it all), and that no process is left
//! behind.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::supervised::{large_request_pending, spawned, Sup, ECHO};
use common::{read_to_eof, Server};
use duo_testkit::{
    children, http_get, is_running, join_within, send_signal, tcp_queues, wait_child_within,
    wait_until, ChildServer, TestCerts, LIMIT,
};

/// `len` bytes of a pattern no shift of which matches itself.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn sigterm_with_a_tls_handshake_half_done_and_a_scrape_half_sent_exits_at_once() {
    let certs = TestCerts::new("echo-shutdown");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut server = Server::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics_addr(LIMIT);
    let mut tls = server.connect();
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
        .unwrap();
    let mut scrape = TcpStream::connect(metrics).unwrap();
    scrape.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let (srv, cli) = (server.addr().port(), tls.local_addr().unwrap().port());
    wait_until("the server read the hello", || {
        tcp_queues(srv, cli).is_some_and(|(_, rx)| rx == 0)
    });
    // Neither holds the drain (4 s).
    let (status, took) = server.terminate("TERM", LIMIT);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(
        read_to_eof(&mut tls),
        b"",
        "no handshake reply after the stop"
    );
}

#[test]
fn sigterm_while_a_client_is_paused_by_backpressure_sends_a_clean_prefix() {
    let mut server = Server::start(&["--io-threads", "1", "--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr(LIMIT);
    let mut s = server.connect();
    let sent = data(24 << 20);
    let mut writer = s.try_clone().unwrap();
    let payload = sent.clone();
    // Writes until the server stops reading (it pauses past its high-water mark) and
    // the kernel's buffers are full; ends with an error once the connection is gone.
    let writing = thread::spawn(move || {
        let _ = writer.write_all(&payload);
    });
    // (The server's receive queue need not grow large: its buffer may stay small.)
    wait_until("the server stopped reading (backpressure)", || {
        let (_, text) = http_get(metrics, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("duo_server_backpressured_connections{"))
            .any(|l| l.ends_with(" 1"))
    });
    send_signal(server.pid(), "TERM").unwrap();
    let started = Instant::now();
    let got = read_to_eof(&mut s);
    s.shutdown(Shutdown::Both).unwrap();
    let status = server.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(got.len() > 1 << 20, "only {} bytes came back", got.len());
    assert!(
        got == sent[..got.len()],
        "the echo is not a prefix of the input"
    );
    join_within("the writer", writing);
}

#[test]
fn sigterm_after_a_client_half_closed_still_sends_its_whole_echo() {
    let mut server = Server::start(&["--io-threads", "1"]);
    let sup_like = |s: &TcpStream| (server.addr().port(), s.local_addr().unwrap().port());
    let mut s = server.connect();
    let sent = data(3 << 20);
    let mut writer = s.try_clone().unwrap();
    let payload = sent.clone();
    join_within(
        "writing",
        thread::spawn(move || writer.write_all(&payload).unwrap()),
    );
    s.shutdown(Shutdown::Write).unwrap();
    let (srv, cli) = sup_like(&s);
    wait_until("the server read everything", || {
        tcp_queues(srv, cli).is_some_and(|(_, rx)| rx == 0)
            && tcp_queues(cli, srv).is_some_and(|(tx, _)| tx == 0)
    });
    send_signal(server.pid(), "INT").unwrap();
    let got = read_to_eof(&mut s);
    assert!(got == sent, "got {} of {} bytes", got.len(), sent.len());
    let status = server.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn a_second_sigterm_on_a_unix_socket_quits_and_removes_the_file() {
    let dir = std::env::temp_dir().join(format!("echo-quit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("echo.sock");
    let mut cmd = Command::new(ECHO);
    cmd.args(["--listen", &format!("unix:{}", sock.display())])
        .env("RUST_LOG", "info");
    let mut server = ChildServer::start(cmd);
    // A client that writes and never reads: its echo fills the buffers, and the drain
    // waits for it (up to the 4 s drain timeout).
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_write_timeout(Some(LIMIT)).unwrap();
    let mut writer = c.try_clone().unwrap();
    let writing = thread::spawn(move || {
        let _ = writer.write_all(&data(16 << 20));
    });
    wait_until("an echo is waiting for the client", || {
        duo_sys::bytes_available(c.as_fd()).is_ok_and(|n| n > 0)
    });
    server.signal("TERM");
    server.wait_for_stderr("shutting down", LIMIT);
    let (status, took) = server.terminate("TERM", LIMIT);
    let log = server.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(1), "{took:?}\n{log}");
    assert!(!sock.exists(), "the socket file is left behind");
    let mut rest = Vec::new();
    let _ = c.set_read_timeout(Some(LIMIT));
    let _ = c.read_to_end(&mut rest);
    let _ = c.shutdown(Shutdown::Both);
    join_within("the writer", writing);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while the first workers are still starting. They are held before they can be
/// ready by their TLS certificate: a FIFO, which the supervisor reads once (the test
/// writes the certificate into it) and each worker then waits to open, as no one writes
/// again. (A `Gate` closed before the start would not hold them: the supervisor runs
/// its workers from its own binary, which the gate's script execs.)
#[test]
fn sigterm_before_the_workers_are_ready_exits_0_and_leaves_none() {
    let certs = TestCerts::new("stop-before-ready");
    let fifo = certs.path("held-cert.pem");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo {fifo}");
    let mut sup = Command::new(ECHO)
        .args(["serve", "--listen", "127.0.0.1:0", "--processes", "2"])
        .args(["--tls-cert", &fifo, "--tls-key", &certs.path("key.pem")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = sup.id();
    // The supervisor's one read (opening the FIFO for writing waits for it to open it).
    let pem = std::fs::read(certs.path("cert.pem")).unwrap();
    let feeding = {
        let fifo = fifo.clone();
        thread::spawn(move || std::fs::write(&fifo, pem))
    };
    join_within("the certificate fed to the supervisor", feeding)
        .expect("the supervisor read the certificate");
    let mut workers = Default::default();
    wait_until("both workers started", || {
        workers = children(pid);
        workers.len() == 2
    });
    send_signal(pid, "TERM").unwrap();
    let status = wait_child_within(&mut sup, LIMIT);
    let mut out = String::new();
    let _ = sup.stdout.take().unwrap().read_to_string(&mut out);
    for w in &workers {
        if is_running(*w) {
            let _ = send_signal(*w, "KILL");
        }
    }
    let Some(status) = status else {
        let _ = sup.kill();
        panic!("the supervisor did not exit");
    };
    assert_eq!(status.code(), Some(0));
    assert!(!out.contains("listening on"), "{out}");
    for w in workers {
        assert!(!is_running(w), "worker {w} outlived the supervisor");
    }
}

/// SIGHUP, then `second` 10 ms later; with `big`, a client whose 3 MiB echo is pending in
/// a worker of the serving generation reads it all meanwhile.
fn reload_then_stop(second: &str, big: bool) {
    let mut sup = Sup::start(std::path::Path::new(ECHO), 2, &[]);
    let mut s = sup.connect();
    let sent = if big {
        large_request_pending(&sup, &s)
    } else {
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        Vec::new()
    };
    sup.signal("HUP");
    thread::sleep(Duration::from_millis(10)); // the combination under test, not a wait
    let started = Instant::now();
    sup.signal(second);
    if big {
        assert!(read_to_eof(&mut s) == sent, "the pending echo was cut");
    }
    drop(s);
    let log = sup.exited_0();
    // Well within the drain timeout (4 s): nothing holds the workers.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}\n{log}",
        started.elapsed()
    );
    for pid in spawned(&log) {
        assert!(!is_running(pid), "{pid} left behind\n{log}");
    }
}

#[test]
fn a_sigterm_10_ms_after_a_reload_exits_0_and_leaves_no_worker() {
    reload_then_stop("TERM", false);
}

#[test]
fn a_sigint_10_ms_after_a_reload_delivers_the_pending_echo_and_exits_0() {
    reload_then_stop("INT", true);
}
