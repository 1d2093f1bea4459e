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
//! - `slow`: as `echo`, but reports ready only 1 s after it started (a slow start-up).
//! - `slowfail`: exits with status 5 without reporting ready, 300 ms after it started (a
//!   worker whose start-up takes a while and then fails).
//! - `silent`: never reports ready (and serves nothing).
//! - `stubborn`: as `echo`, but blocks SIGTERM and SIGINT (only SIGKILL ends it).
//! - `letgo`: waits for a file `go` beside the mode file (`DEMO_MODE_FILE`), then closes
//!   its readiness pipe without the byte and serves as `echo`: what a worker does whose
//!   "ready" byte met `EPIPE` (nobody read the pipe during an upgrade's `exec`).
//!
//! `DEMO_MODE_FILE`, if set, names a file holding the mode, read at each worker's start (a
//! worker given a mode it does not know exits with status 2 before it is ready).
//! `DEMO_READY_TIMEOUT_MS` sets the supervisor's ready timeout, `DEMO_STOP_TIMEOUT_MS` its
//! stop timeout, `DEMO_STABLE_AFTER_MS` its `stable_after`. `DEMO_CHECK_BREAKS_BINARY`, if set, makes an upgrade's check replace the
//! binary at its own path with a script whose interpreter does not exist, and pass: the
//! `exec` of the upgrade that follows then fails (a binary replaced between the check and
//! the `exec`). Exit status 2: bad arguments or configuration (an unknown mode, an
//! argument too many, a timeout that is not a number of milliseconds); 1: the supervisor
//! failed, or the `listening on` line could not be written (nobody reads stdout: the
//! workers are stopped first). Messages to a stderr nobody reads are dropped, never a
//! panic.
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use duo_supervisor::{Supervisor, SupervisorConfig, Worker, WorkerCommand, WorkerStats};

/// Writes a line to stderr if it can: not `eprintln!`, which panics (exit status 101) when
/// stderr is a pipe whose reader is gone.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// How long a worker waits before it accepts again after `accept` failed (out of
/// descriptors, say): retrying at once would spin on the error as long as a connection
/// waits in the backlog.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a worker does (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Crash,
    Fail,
    Slow,
    SlowFail,
    Silent,
    Stubborn,
    LetGo,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s.trim() {
            // An empty mode file is the default.
            "echo" | "" => Mode::Echo,
            "crash" => Mode::Crash,
            "fail" => Mode::Fail,
            "slow" => Mode::Slow,
            "slowfail" => Mode::SlowFail,
            "silent" => Mode::Silent,
            "stubborn" => Mode::Stubborn,
            "letgo" => Mode::LetGo,
            other => {
                return Err(format!(
                    "unknown MODE {other:?} (echo, crash, fail, slow, slowfail, silent, \
                     stubborn or letgo)"
                ))
            }
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Worker::inherit() {
        Ok(Some(worker)) => return work(worker),
        Ok(None) => {}
        Err(e) => {
            say!("demo worker: {e}");
            return ExitCode::from(2);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match configure(&args) {
        Ok(cfg) => cfg,
        Err(problem) => {
            say!("demo: {problem}\nusage: demo WORKERS [MODE]");
            return ExitCode::from(2);
        }
    };
    match supervise(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            say!("demo: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            say!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line and the environment ask for.
struct Config {
    workers: usize,
    /// The mode as given (checked): the workers read it from `DEMO_MODE`.
    mode: String,
    args: Vec<String>,
    ready_timeout: Option<Duration>,
    stop_timeout: Option<Duration>,
    stable_after: Option<Duration>,
}

/// Reads `WORKERS [MODE]` and the `DEMO_*_MS` variables.
fn configure(args: &[String]) -> Result<Config, String> {
    if let Some(extra) = args.get(2) {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let workers = match args.first() {
        None => return Err("WORKERS is missing".into()),
        Some(n) => n
            .parse()
            .map_err(|_| format!("WORKERS {n:?}: expected a whole number"))?,
    };
    let mode = args.get(1).map_or("echo", String::as_str);
    mode.parse::<Mode>()?;
    Ok(Config {
        workers,
        mode: mode.to_owned(),
        args: args.to_vec(),
        ready_timeout: millis_from_env("DEMO_READY_TIMEOUT_MS")?,
        stop_timeout: millis_from_env("DEMO_STOP_TIMEOUT_MS")?,
        stable_after: millis_from_env("DEMO_STABLE_AFTER_MS")?,
    })
}

/// The duration in milliseconds in variable `name`, if it is set.
fn millis_from_env(name: &str) -> Result<Option<Duration>, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(format!("{name}: {e}")),
        Ok(v) => v
            .trim()
            .parse()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| format!("{name}={v:?}: expected a whole number of milliseconds")),
    }
}

/// Why the supervisor did not run to its end.
enum Failure {
    /// A configuration the supervisor refused (exit status 2).
    Config(Box<dyn std::error::Error>),
    /// Anything else (exit status 1).
    Run(Box<dyn std::error::Error>),
}

fn supervise(cfg: Config) -> Result<(), Failure> {
    let run = |e: io::Error| Failure::Run(e.into());
    let listeners = match duo_sys::listen_fds() {
        Ok(l) if !l.is_empty() => l,
        // (`bind_listener` binds nothing in an upgrade's check, which must take no
        // connection.)
        Ok(_) => vec![duo_supervisor::bind_listener(([127, 0, 0, 1], 0).into()).map_err(run)?],
        Err(e) => return Err(Failure::Config(e.into())),
    };
    let addr = listeners[0].local_addr().map_err(run)?;
    let me = std::env::current_exe().map_err(run)?;
    let mode = cfg.args.get(1).map_or("echo", String::as_str);
    let mut sup = SupervisorConfig::new(
        cfg.workers,
        WorkerCommand::new(me)
            .args(&cfg.args)
            .env("DEMO_MODE", mode),
    );
    debug_assert_eq!(mode.parse(), Ok(cfg.mode));
    if let Some(t) = cfg.ready_timeout {
        sup.ready_timeout = t;
    }
    if let Some(t) = cfg.stop_timeout {
        sup.stop_timeout = t;
    }
    if let Some(t) = cfg.stable_after {
        sup.stable_after = t;
    }
    sup.stats_interval = Some(Duration::from_millis(200));
    // (After the paths above were read: the running binary's path then names the
    // replacement.)
    if duo_supervisor::is_upgrade_check() && std::env::var_os("DEMO_CHECK_BREAKS_BINARY").is_some()
    {
        break_binary(sup.command.program()).map_err(run)?;
    }
    let supervisor = Supervisor::new(sup, listeners).map_err(|e| Failure::Config(e.into()))?;
    // If the line cannot be written, nobody learns the address: the supervisor stops its
    // workers and fails.
    supervisor
        .run(move || {
            let line = format!("listening on {addr}");
            let mut out = io::stdout().lock();
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| io::Error::new(e.kind(), format!("printing `{line}`: {e}")))
        })
        .map_err(|e| Failure::Run(e.into()))
}

/// Replaces this binary on disk (a new file renamed over its path: the running image is
/// untouched) with an executable script whose interpreter does not exist, so that
/// executing the path fails (`ENOENT`) while it still looks like a program.
fn break_binary(me: &std::path::Path) -> io::Result<()> {
    let tmp = me.with_extension("broken");
    std::fs::write(&tmp, "#!/nonexistent/duo-demo-interpreter\n")?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&tmp, me)
}

fn work(mut worker: Worker) -> ExitCode {
    // A mode file, when given, is read at each worker's start: a test changes it to make
    // the next generation behave differently (a "new configuration").
    let mode = match std::env::var("DEMO_MODE_FILE") {
        Ok(path) => std::fs::read_to_string(path).unwrap_or_default(),
        Err(_) => std::env::var("DEMO_MODE").unwrap_or_default(),
    };
    let mode = match mode.parse() {
        Ok(mode) => {
            // (A test waits for this line to know which mode a worker took.)
            log::info!("demo worker {}: mode {mode:?}", std::process::id());
            mode
        }
        Err(e) => {
            say!("demo worker: {e}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Crash => {
            return match worker.notify_ready() {
                Ok(()) => ExitCode::from(3),
                Err(e) => gone(&e),
            }
        }
        Mode::Fail => return ExitCode::from(4),
        Mode::Slow => std::thread::sleep(Duration::from_secs(1)),
        Mode::SlowFail => {
            std::thread::sleep(Duration::from_millis(300));
            return ExitCode::from(5);
        }
        Mode::Silent => loop {
            std::thread::park();
        },
        Mode::Stubborn => {
            if let Err(e) = duo_sys::block_signals(&[duo_sys::Signal::TERM, duo_sys::Signal::INT]) {
                say!("demo worker: blocking the stop signals: {e}");
                return ExitCode::FAILURE;
            }
        }
        Mode::LetGo => {
            let go = std::env::var_os("DEMO_MODE_FILE")
                .map(std::path::PathBuf::from)
                .and_then(|f| Some(f.parent()?.join("go")));
            while !go.as_ref().is_some_and(|go| go.exists()) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Mode::Echo => {}
    }
    let listener = worker.take_listeners().remove(0);
    let stats = worker.stats();
    if let Some(slot) = &stats {
        slot.publish(&WorkerStats::default());
    }
    if mode == Mode::LetGo {
        // The readiness pipe closes without the byte (as after `EPIPE`).
        drop(worker);
    } else if let Err(e) = worker.notify_ready() {
        return gone(&e);
    }
    let me = std::process::id();
    let mut accepted = 0;
    let mut failing = false;
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors (EMFILE) or memory: the connection waits in the
                // backlog, and `accept` would fail again at once. Wait for a client to
                // leave instead of spinning; say so once per streak.
                if !failing {
                    log::warn!("demo worker {me}: accept: {e}; retrying every {ACCEPT_BACKOFF:?}");
                    failing = true;
                }
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        failing = false;
        accepted += 1;
        if let Some(slot) = &stats {
            slot.publish(&WorkerStats {
                accepted,
                ..WorkerStats::default()
            });
        }
        // A thread per connection; one that cannot be started (the system's thread
        // limit) costs that connection, not the worker.
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = writeln!(conn, "pid {me}");
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("demo worker {me}: cannot start a thread for a connection: {e}");
        }
    }
    ExitCode::SUCCESS
}

/// A worker whose supervisor is gone (its readiness pipe closed): nothing to serve for.
fn gone(e: &io::Error) -> ExitCode {
    say!("demo worker: cannot report ready: {e}");
    ExitCode::FAILURE
}
