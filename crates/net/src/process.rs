//! Process set-up for a server binary: what every duo server does before it serves and
//! when it is told to stop.
//!
//! 1. [`prepare_server`], first thing on the main thread, before any thread starts:
//!    blocks the stop signals (threads inherit the mask, so the signals can only be taken
//!    from the main loop's signalfd, never by their default action on another thread),
//!    ignores `SIGPIPE` (a write to a closed connection is an `EPIPE` error, not death),
//!    and raises the open-file limit (a server holds a descriptor per connection).
//! 2. [`shutdown_on_signals`], on the main loop: the first stop signal shuts the server
//!    down gracefully and quits the loop when it is done; a second one quits at once.
//! 3. [`announce_listening`]: prints `listening on ADDR` on stdout and flushes it, so a
//!    script or test that started the server on port 0 learns the real port.
//!
//! [`say`] writes a usage message or a last error on stderr without panicking when
//! nobody reads stderr.
//!
//! [`run_until_stopped`] does 2 and 3, runs the loop and stops the server.
//!
//! Between 1 and 2 the stop signals are blocked and nothing reads them: a server whose
//! start takes long (opening a database that another process has locked, say) would not
//! react to Ctrl-C or `SIGTERM` until it serves. [`stop_during_startup`] covers such a
//! stretch: a stop signal then ends the process at once, as its default action would
//! (nothing was served yet, so there is nothing to drain).
//!
//! [`install_panic_hook`], right after the logger is set up, routes panics through the
//! log with a rate limit, so that a peer who can make a callback panic (duo catches
//! those and closes the connection) cannot also flood stderr with panic messages and
//! backtraces.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use duo_net::process::{self, STOP_SIGNALS};
//! use duo_net::{EventLoop, TcpServer};
//!
//! // Before any thread exists (the server's I/O threads inherit the signal mask).
//! process::prepare_server(&STOP_SIGNALS)?;
//! // (After the logger is initialised.)
//! process::install_panic_hook();
//! let mut main_loop = EventLoop::new()?;
//! let server = TcpServer::builder("echo", "127.0.0.1:0".parse::<duo_net::Endpoint>()?)
//!     .io_threads(2)
//!     .on_message(|conn, input| {
//!         conn.send(input.peek());
//!         input.consume_all();
//!     })
//!     .start(&mut main_loop)?;
//! // Until SIGINT or SIGTERM, and the graceful shutdown they start, are through.
//! process::run_until_stopped(&mut main_loop, server, Duration::from_secs(4))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::backtrace::Backtrace;
use std::fmt;
use std::io::{self, Write};
use std::panic::PanicHookInfo;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use duo_reactor::{EventLoopThread, LogLimiter, ThreadInit};

use crate::{EventLoop, ServerHandle, Signal, TcpServer};

pub use duo_sys::{fd_limit, raise_fd_limit};

/// The signals a server stops on: `SIGINT` (Ctrl-C) and `SIGTERM` (`kill`, service
/// managers).
pub const STOP_SIGNALS: [Signal; 2] = [Signal::INT, Signal::TERM];

/// Prepares this process to serve: blocks `stop_signals` in the calling thread, ignores
/// `SIGPIPE`, and raises the soft open-file limit to the hard one.
///
/// Call it on the main thread before starting any thread: threads inherit the signal
/// mask, so a stop signal then reaches only the signalfd of [`shutdown_on_signals`] (or of
/// [`EventLoop::watch_signals`]). Failing to raise the open-file limit is logged as a
/// warning, not returned: the server still runs, with fewer connections at most.
///
/// # Errors
///
/// Blocking the signals or ignoring `SIGPIPE` failed (the message says which).
pub fn prepare_server(stop_signals: &[Signal]) -> io::Result<()> {
    duo_sys::block_signals(stop_signals).map_err(context("blocking the stop signals"))?;
    duo_sys::ignore_sigpipe().map_err(context("ignoring SIGPIPE"))?;
    match raise_fd_limit() {
        Ok(n) => log::debug!("open-file limit: {n}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    Ok(())
}

/// Stops `server` when one of `signals` arrives, "first signal drains, second quits":
/// the first starts a graceful [`shutdown`](ServerHandle::shutdown) with `grace`, which
/// quits `main_loop` once every connection has closed; any later one quits `main_loop` at
/// once (connections still open are then dropped by [`TcpServer::stop`](crate::TcpServer::stop)).
///
/// `main_loop` is the loop the server was started on. The signals are read from a
/// signalfd on it (see [`EventLoop::watch_signals`]); block them first with
/// [`prepare_server`], before any thread starts.
///
/// # Errors
///
/// The signalfd could not be created or registered.
pub fn shutdown_on_signals(
    main_loop: &mut EventLoop,
    signals: &[Signal],
    server: ServerHandle,
    grace: Duration,
) -> io::Result<()> {
    let drain = move |_: &mut EventLoop, sig: Signal| {
        log::info!("{sig}: shutting down (grace {grace:?}; again to quit at once)");
        server.shutdown(grace, |lp| lp.quit());
    };
    let quit = |lp: &mut EventLoop, sig: Signal| {
        log::warn!("{sig} again: quitting now");
        lp.quit();
    };
    main_loop.watch_signals(signals, drain_then_quit(drain, quit))?;
    Ok(())
}

/// Until [`started`](StartupStop::started) (or dropped), a stop signal ends the process:
/// made by [`stop_during_startup`].
#[derive(Debug)]
pub struct StartupStop {
    /// Reads the signals; stopped by `started`.
    watcher: Option<EventLoopThread>,
    /// Whether the start is still under way, and what the watcher read after it ended.
    phase: Arc<Mutex<Phase>>,
}

/// The start-up watcher's view of the start, shared with [`StartupStop`].
#[derive(Debug)]
struct Phase {
    /// The start is still under way (a signal then ends the process); set false, under the
    /// lock, by `started`.
    starting: bool,
    /// Signals the watcher read once `starting` was false: sent to the process again by
    /// `started` once the watcher is gone. (Sent from the watcher itself, each would be
    /// pending again at once, and read again by the same read loop, for ever.)
    handed_over: Vec<Signal>,
}

/// Makes a stop signal among `signals` end the process at once, as its default action
/// would ([`duo_sys::terminate_by`]), until the returned guard's
/// [`started`](StartupStop::started): for the slow part of a server's start (opening a
/// database, which may wait for a lock held by another process), between
/// [`prepare_server`] (which blocked the signals, so nothing else takes them) and
/// [`shutdown_on_signals`]. Without it, such a signal waits unread until the server
/// serves, and only then drains it. The process has served nothing yet, so there is
/// nothing to drain; the guard should not cover the creation of anything that outlives
/// the process (a Unix-domain socket's file, say).
///
/// The signals are read on a thread of their own. A signal it reads after `started`
/// began is sent to the process again once that thread is gone, for the server's own
/// signalfd.
///
/// # Errors
///
/// The thread or its signalfd could not be set up.
pub fn stop_during_startup(signals: &[Signal]) -> io::Result<StartupStop> {
    let phase = Arc::new(Mutex::new(Phase {
        starting: true,
        handed_over: Vec::new(),
    }));
    let failed = Arc::new(Mutex::new(None::<io::Error>));
    let init: ThreadInit = {
        let (signals, phase, failed) = (signals.to_vec(), phase.clone(), failed.clone());
        Arc::new(move |lp: &mut EventLoop| {
            let phase = phase.clone();
            let watched = lp.watch_signals(&signals, move |_, sig| {
                let mut phase = phase.lock().unwrap_or_else(PoisonError::into_inner);
                if phase.starting {
                    log::warn!("{sig} before the server started: stopping");
                    let e = duo_sys::terminate_by(sig);
                    log::error!("{e}; exiting");
                    std::process::exit(1);
                }
                // The server's own signalfd takes over: `started` passes it on.
                phase.handed_over.push(sig);
            });
            if let Err(e) = watched {
                *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            }
        })
    };
    let watcher = EventLoopThread::spawn("startup-signals", Some(init))?;
    if let Some(e) = failed.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(context("watching the stop signals during the start")(e));
    }
    Ok(StartupStop {
        watcher: Some(watcher),
        phase,
    })
}

impl StartupStop {
    /// The start is over: stop signals are left (pending) for the server's own handling
    /// ([`shutdown_on_signals`]). Joins the thread that read them.
    pub fn started(mut self) {
        self.hand_over();
    }

    fn hand_over(&mut self) {
        self.phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .starting = false;
        let Some(watcher) = self.watcher.take() else {
            return;
        };
        if let Err(e) = watcher.stop() {
            log::warn!("the start-up signal thread: {e}");
        }
        // The watcher is gone: nothing but the server's own signalfd reads these now.
        let handed_over = std::mem::take(
            &mut self
                .phase
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .handed_over,
        );
        for sig in handed_over {
            if let Err(e) = duo_sys::signal_process(std::process::id(), sig) {
                log::error!("passing {sig} on to the server: {e}");
            }
        }
    }
}

impl Drop for StartupStop {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Prints `listening on ADDR` to stdout and flushes it (`ADDR` as `HOST:PORT`, `unix:/path`
/// or `unix:@name`: see [`Endpoint`](crate::Endpoint)): the line a script or test that
/// started the server (on port 0, say) waits for to learn that it is ready, and where.
///
/// # Errors
///
/// Writing to stdout failed (a pipe whose reader is gone, say); the message says so.
pub fn announce_listening(addr: impl std::fmt::Display) -> io::Result<()> {
    let line = format!("listening on {addr}");
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| io::Error::new(e.kind(), format!("printing `{line}` on stdout: {e}")))
}

/// Writes `message` and a newline on stderr if it can, and drops it if it cannot: for a
/// server's usage message or its last word before it exits. Not `eprintln!`, which panics
/// (exit status 101) when stderr is a pipe or socket whose reader is gone (`SIGPIPE`
/// ignored, as [`prepare_server`] does, makes the write fail with `EPIPE`), turning a
/// usage error (2) or a failure (1) into a crash. (Logging through `env_logger` drops
/// failed writes already.)
pub fn say(message: impl std::fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// Serves a started `server` until it is stopped by [`STOP_SIGNALS`]: installs
/// [`shutdown_on_signals`] with `grace`, prints the [`announce_listening`] line, runs
/// `main_loop` (the loop the server was started on), then stops the server
/// ([`TcpServer::stop`]). Call [`prepare_server`] with [`STOP_SIGNALS`] first, before any
/// thread starts. For a server that has more to do between the loop's end and the stop
/// (the bank finishes its database work), use the three steps separately.
///
/// # Errors
///
/// The signalfd could not be set up, stdout could not be written, or the loop failed (the
/// server is stopped in that case too).
pub fn run_until_stopped(
    main_loop: &mut EventLoop,
    server: TcpServer,
    grace: Duration,
) -> io::Result<()> {
    shutdown_on_signals(main_loop, &STOP_SIGNALS, server.clone_handle(), grace)?;
    announce_listening(server.endpoint())?;
    let ran = main_loop.run();
    server.stop(main_loop);
    ran
}

/// Budget of the panic reports [`install_panic_hook`] lets through: the default burst
/// (10 per 10 s); the rest are counted, and the count is logged with the next report or
/// by [`report_suppressed`](crate::report_suppressed) (a running server calls it
/// periodically and when it stops).
static PANIC_REPORTS: LogLimiter = LogLimiter::new("panics");

/// Replaces the process's panic hook with one that reports the panics duo catches (of
/// application callbacks, of worker-pool jobs: those inside [`duo_reactor::catch_panic`])
/// through the log (`error` level, target `duo_net::process`), rate-limited: the first of
/// a burst (10 per 10 s) are logged in full (thread, location, message, and a backtrace
/// if `RUST_BACKTRACE` asks for one, as the default hook would), later ones are only
/// counted and the count is logged with the next report let through, or by
/// [`report_suppressed`](crate::report_suppressed).
///
/// Why: duo catches a panic of an application callback and closes that connection, but
/// Rust's panic hook runs before any `catch_unwind`, so without this every caught panic
/// still writes its message (and, under `RUST_BACKTRACE=1`, a whole backtrace) to
/// stderr. A peer that can make a callback panic once can do so a hundred thousand times.
///
/// Every other panic goes to the hook that was installed before (by default Rust's, on
/// stderr), every time, never rate-limited: a panic nobody catches ends its thread or the
/// process, and its report is all there is. So do a second panic during the unwinding of
/// a first (it aborts), every panic when the panic strategy is `abort`, and every panic
/// while no logger takes `error` records for `duo_net::process` (there would be nowhere to
/// report it).
///
/// Install it once, after the logger is set up: later calls do nothing.
///
/// # Example
///
/// ```
/// // The logger first: the hook reports through it.
/// env_logger::init();
/// duo_net::process::install_panic_hook();
///
/// // A panic duo catches is now one `error` line (rate-limited), not a stderr dump.
/// let caught = duo_reactor::catch_panic(|| panic!("a callback's bug"));
/// assert!(caught.is_err());
/// ```
pub fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let backtraces = BacktraceStyle::from_env(std::env::var_os("RUST_BACKTRACE").as_deref());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            // A panic that nobody catches ends its thread or the process: its report is
            // all there is, in full, never rate-limited. Only those duo catches (user
            // callbacks, worker jobs) are.
            if !duo_reactor::panic_will_be_caught()
                || cfg!(panic = "abort")
                || !logger_takes_panic_reports()
            {
                return previous(info);
            }
            let Some(permit) = PANIC_REPORTS.admit(log::Level::Error, module_path!()) else {
                return;
            };
            let backtrace = match backtraces {
                BacktraceStyle::Off => None,
                style => Some((style, Backtrace::force_capture())),
            };
            log::error!(
                "{}{permit}",
                PanicReport {
                    thread: thread.name().unwrap_or("<unnamed>"),
                    info,
                    backtrace: backtrace.as_ref().map(|(s, b)| (*s, b)),
                }
            );
        }));
    });
}

/// Whether the logger would take an `error` record of this module (false when no logger
/// is set, or it filters these out).
fn logger_takes_panic_reports() -> bool {
    log::log_enabled!(log::Level::Error)
}

/// What `RUST_BACKTRACE` asks the panic hook for, like the default hook reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BacktraceStyle {
    /// Unset or `0`: no backtrace.
    Off,
    /// `full`: every frame.
    Full,
    /// Any other value (`1`): the usual backtrace.
    Short,
}

impl BacktraceStyle {
    fn from_env(value: Option<&std::ffi::OsStr>) -> Self {
        match value.and_then(|v| v.to_str()) {
            None | Some("0") => Self::Off,
            Some("full") => Self::Full,
            Some(_) => Self::Short,
        }
    }
}

/// A panic as the hook logs it: the default hook's text, on one record.
struct PanicReport<'a> {
    thread: &'a str,
    info: &'a PanicHookInfo<'a>,
    backtrace: Option<(BacktraceStyle, &'a Backtrace)>,
}

impl fmt::Display for PanicReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let payload = self.info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        write!(f, "thread '{}' panicked", self.thread)?;
        if let Some(at) = self.info.location() {
            write!(f, " at {at}")?;
        }
        write!(f, ": {message}")?;
        match self.backtrace {
            Some((BacktraceStyle::Full, bt)) => write!(f, "\nstack backtrace:\n{bt:#}"),
            Some((_, bt)) => write!(f, "\nstack backtrace:\n{bt}"),
            None => Ok(()),
        }
    }
}

/// The "first signal drains, second quits" rule: a signal handler that calls `drain` on
/// the first signal and `quit` on every later one. Generic over the loop so the rule is
/// tested without signals.
fn drain_then_quit<L, S>(
    drain: impl FnOnce(&mut L, S),
    mut quit: impl FnMut(&mut L, S),
) -> impl FnMut(&mut L, S) {
    let mut drain = Some(drain);
    move |lp, sig| match drain.take() {
        Some(drain) => drain(lp, sig),
        None => quit(lp, sig),
    }
}

/// Prefixes an error with what was being done.
fn context(what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_drains_later_ones_quit() {
        let mut handler = drain_then_quit(
            |log: &mut Vec<String>, sig: Signal| log.push(format!("drain {sig}")),
            |log: &mut Vec<String>, sig: Signal| log.push(format!("quit {sig}")),
        );
        let mut log = Vec::new();
        handler(&mut log, Signal::TERM);
        assert_eq!(log, ["drain SIGTERM"]);
        handler(&mut log, Signal::INT);
        handler(&mut log, Signal::TERM);
        assert_eq!(log, ["drain SIGTERM", "quit SIGINT", "quit SIGTERM"]);
    }

    #[test]
    fn rust_backtrace_is_read_like_the_default_hook() {
        use std::ffi::OsStr;
        assert_eq!(BacktraceStyle::from_env(None), BacktraceStyle::Off);
        assert_eq!(
            BacktraceStyle::from_env(Some(OsStr::new("0"))),
            BacktraceStyle::Off
        );
        assert_eq!(
            BacktraceStyle::from_env(Some(OsStr::new("1"))),
            BacktraceStyle::Short
        );
        assert_eq!(
            BacktraceStyle::from_env(Some(OsStr::new("full"))),
            BacktraceStyle::Full
        );
    }

    #[test]
    fn errors_say_what_failed() {
        let e = context("ignoring SIGPIPE")(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().starts_with("ignoring SIGPIPE: "), "{e}");
    }
}
