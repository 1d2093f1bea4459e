//! Descriptors inherited across `exec`, for real: this test executes itself as a child,
//! hands it sockets with `pass_fds` and the systemd variables, and the child takes them
//! with `listen_fds` / `take_fds_from_env` (a `harness = false` test, so the child runs
//! exactly the check it is told to, on its main thread).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use duo_sys::{listen_fds, pass_fds, take_fd_from_env, take_fds_from_env, LISTEN_FDS_START};

const CASE: &str = "DUO_ACTIVATION_TEST_CASE";

fn main() -> ExitCode {
    match std::env::var(CASE) {
        Ok(case) => child(&case),
        Err(_) => {
            parent();
            println!("activation_process: ok");
            ExitCode::SUCCESS
        }
    }
}

/// Runs the child `case` with `fds` at 3.. and `env`; returns its stderr, panicking if it
/// failed or did not finish in time.
fn run_child(case: &str, fds: &[std::os::fd::BorrowedFd<'_>], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CASE, case)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pass_fds(&mut cmd, fds, LISTEN_FDS_START).unwrap();
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("child {case} did not finish");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "child {case}: {status}\n{err}");
    err
}

fn parent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // The child accepts one connection on the inherited socket and echoes a line.
    let client = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hi").unwrap();
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"hi");
        }
    });
    run_child(
        "listener",
        &[listener.as_fd()],
        &[("LISTEN_FDS", "1"), ("EXPECT_ADDR", &addr)],
    );
    client.join().unwrap();

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    run_child("udp", &[udp.as_fd()], &[("LISTEN_FDS", "1")]);
    run_child(
        "other_pid",
        &[listener.as_fd()],
        &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
    );
    // Descriptor 3 is gone (taken and closed through another variable): the error names
    // it, and 4 and 5, announced too, are closed, not left open for a child to inherit.
    run_child(
        "partial",
        &[listener.as_fd(), listener.as_fd(), listener.as_fd()],
        &[("LISTEN_FDS", "3"), ("Z_FD", "3")],
    );
    run_child(
        "env_protocol",
        &[listener.as_fd(), udp.as_fd(), listener.as_fd()],
        &[("X_FDS", "2"), ("X_FD", "5")],
    );
}

fn child(case: &str) -> ExitCode {
    // What a service manager does after its fork: announce the descriptors to this pid.
    if std::env::var_os("LISTEN_PID").is_none() {
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
    }
    let check = |ok: bool, what: &str| {
        if !ok {
            eprintln!("{case}: {what}");
        }
        ok
    };
    let ok = match case {
        "listener" => {
            let listeners = listen_fds().unwrap();
            let gone = std::env::var_os("LISTEN_FDS").is_none()
                && std::env::var_os("LISTEN_PID").is_none();
            let addr = listeners[0].local_addr().unwrap().to_string();
            let (mut s, _) = listeners[0].accept().unwrap();
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
            check(listeners.len() == 1, "one listener")
                && check(gone, "variables removed")
                && check(
                    addr == std::env::var("EXPECT_ADDR").unwrap(),
                    "the same socket",
                )
                && check(listen_fds().unwrap().is_empty(), "taken only once")
        }
        "udp" => {
            let e = listen_fds().unwrap_err().to_string();
            check(
                e.contains("descriptor 3 is not a listening TCP socket"),
                &format!("error names the descriptor: {e}"),
            )
        }
        "other_pid" => check(
            listen_fds().unwrap().is_empty() && std::env::var_os("LISTEN_FDS").is_none(),
            "meant for another process: ignored, variables removed",
        ),
        "partial" => {
            drop(take_fd_from_env("Z_FD").unwrap());
            let e = listen_fds().unwrap_err().to_string();
            let open = |fd: u32| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok();
            check(e.contains("descriptor 3"), &format!("error names 3: {e}"))
                && check(!open(4) && !open(5), "the descriptors after it are closed")
        }
        "env_protocol" => {
            let fds = take_fds_from_env("X_FDS", 3).unwrap().unwrap();
            let one = take_fd_from_env("X_FD").unwrap().unwrap();
            use std::os::fd::AsRawFd;
            // A variable set at run time announces nothing: the process may own that fd.
            std::env::set_var("Y_FD", "5");
            let forged = take_fd_from_env("Y_FD").unwrap_err().to_string();
            check(fds.len() == 2 && fds[1].as_raw_fd() == 4, "two from 3")
                && check(one.as_raw_fd() == 5, "the one at 5")
                && check(take_fd_from_env("X_FD").unwrap().is_none(), "taken once")
                && check(
                    forged.contains("only the parent may announce"),
                    &format!("a forged announcement is refused: {forged}"),
                )
        }
        _ => check(false, "unknown case"),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
