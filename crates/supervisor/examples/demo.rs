//! A tiny supervised server for the supervisor's tests: `demo WORKERS [MODE]`.
//!
//! The supervisor binds `127.0.0.1:0` (or takes a socket-activated listener), starts
//! `WORKERS` copies of itself and prints `listening on ADDR` when they are ready. A worker
//! (`DUO_WORKER` set) behaves by `DEMO_MODE`:
//!
//! - `echo` (default): reports ready, then answers each connection with its PID (`pid N\n`)
//!   and echoes what it reads; `SIGTERM` ends it (default action).
//! - `crash`: reports ready and exits with status 3 at once.
//! - `fail`: exits with status 4 without reporting ready.
//! - `silent`: never reports ready (and serves nothing).
//! - `stubborn`: as `echo`, but blocks SIGTERM and SIGINT (only SIGKILL ends it).
//!
//! `DEMO_MODE_FILE`, if set, names a file holding the mode, read at each worker's start.
//! `DEMO_READY_TIMEOUT_MS` sets the supervisor's ready timeout, `DEMO_STOP_TIMEOUT_MS` its
//! stop timeout. Exit status 2: bad
//! configuration; 1: the supervisor failed.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use duo_supervisor::{Supervisor, SupervisorConfig, Worker, WorkerCommand, WorkerStats};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Worker::inherit() {
        Ok(Some(worker)) => return work(worker),
        Ok(None) => {}
        Err(e) => {
            eprintln!("demo worker: {e}");
            return ExitCode::from(2);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(workers) = args.first().and_then(|n| n.parse::<usize>().ok()) else {
        eprintln!("usage: demo WORKERS [MODE]");
        return ExitCode::from(2);
    };
    let mode = args.get(1).cloned().unwrap_or_else(|| "echo".into());
    let listeners = match duo_sys::listen_fds() {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => vec![TcpListener::bind("127.0.0.1:0").expect("bind")],
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = listeners[0].local_addr().expect("local_addr");
    let me = std::env::current_exe().expect("current_exe");
    let mut cfg = SupervisorConfig::new(
        workers,
        WorkerCommand::new(me).args(&args).env("DEMO_MODE", &mode),
    );
    if let Some(ms) = std::env::var("DEMO_READY_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.ready_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = std::env::var("DEMO_STOP_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.stop_timeout = Duration::from_millis(ms);
    }
    cfg.stats_interval = Some(Duration::from_millis(200));
    let supervisor = match Supervisor::new(cfg, listeners) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    match supervisor.run(move || println!("listening on {addr}")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn work(mut worker: Worker) -> ExitCode {
    // A mode file, when given, is read at each worker's start: a test changes it to make
    // the next generation behave differently (a "new configuration").
    let mode = match std::env::var("DEMO_MODE_FILE") {
        Ok(path) => std::fs::read_to_string(path).unwrap_or_default(),
        Err(_) => std::env::var("DEMO_MODE").unwrap_or_default(),
    };
    match mode.trim() {
        "crash" => {
            worker.notify_ready().expect("ready");
            return ExitCode::from(3);
        }
        "fail" => return ExitCode::from(4),
        "silent" => loop {
            std::thread::park();
        },
        "stubborn" => {
            duo_sys::block_signals(&[duo_sys::Signal::TERM, duo_sys::Signal::INT])
                .expect("block signals");
        }
        _ => {}
    }
    let listener = worker.take_listeners().remove(0);
    let stats = worker.stats();
    if let Some(slot) = &stats {
        slot.publish(&WorkerStats::default());
    }
    worker.notify_ready().expect("ready");
    let mut accepted = 0;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        accepted += 1;
        if let Some(slot) = &stats {
            slot.publish(&WorkerStats {
                accepted,
                ..WorkerStats::default()
            });
        }
        std::thread::spawn(move || {
            let _ = writeln!(conn, "pid {}", std::process::id());
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    ExitCode::SUCCESS
}
