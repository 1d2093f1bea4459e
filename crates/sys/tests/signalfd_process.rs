//! A process-directed signal read from a `SignalFd`.
//!
//! This test runs without the libtest harness (`harness = false`): the signal mask must be
//! set on the main thread before any other thread exists, or a `kill(getpid(), ...)` could
//! be delivered to a harness thread that does not block it and terminate the process.

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use duo_sys::{ignore_sigpipe, Epoll, Events, Interest, Signal, SignalFd};

fn main() {
    let signals = SignalFd::new(&[Signal::USR1, Signal::USR2]).expect("signalfd");
    assert!(signals.read().unwrap().is_none(), "nothing pending yet");

    let epoll = Epoll::new().unwrap();
    epoll.add(signals.as_fd(), Interest::READABLE, 1).unwrap();

    // Send the signals from another process, exactly as an operator's `kill` would.
    let pid = std::process::id().to_string();
    for sig in ["-USR1", "-USR2"] {
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    let mut got = Vec::new();
    let mut events = Events::with_capacity(4);
    while got.len() < 2 {
        let n = epoll
            .wait(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(n, 1, "signal not delivered within 5 s");
        while let Some(info) = signals.read().unwrap() {
            assert_ne!(info.sender_pid, 0, "sent by the kill process");
            got.push(info.signal);
        }
    }
    got.sort_by_key(|s| s.as_raw());
    assert_eq!(got, [Signal::USR1, Signal::USR2]);
    assert_eq!(Signal::USR1.to_string(), "SIGUSR1");
    assert_eq!(Signal::from_raw(9), None, "SIGKILL cannot be caught");
    assert_eq!(Signal::from_raw(15), Some(Signal::TERM));

    // SIGPIPE ignored: a write to a closed pipe fails instead of killing us.
    ignore_sigpipe().unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(b);
    let err = std::io::Write::write(&mut &a, b"x").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);

    println!("signalfd_process: ok");
}
