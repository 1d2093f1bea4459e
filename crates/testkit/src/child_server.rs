//! A server binary run as a child process, as a user would run it.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::process::{send_signal, wait_child_within};
use crate::ChildServerBuilder;

/// How long dropping a server waits for the killed process to be reaped.
const REAP: Duration = Duration::from_secs(10);

/// A running server process that announced its address with a `listening on ADDR` line on
/// stdout. Both pipes are drained by threads of their own, so the server never blocks on a
/// full pipe: its stderr is collected ([`stderr`](Self::stderr)), its later stdout lines
/// can be read with a deadline ([`line_starting`](Self::line_starting)). Dropping it kills the process by its PID (`SIGKILL`, harmless
/// if it has exited) and reaps it; if the test is failing, the collected stderr is printed.
#[derive(Debug)]
pub struct ChildServer {
    name: String,
    child: Child,
    addr: SocketAddr,
    /// The address as the `listening on` line gave it (also `unix:/path`, `unix:@name`).
    announced: String,
    stderr: Arc<Mutex<String>>,
    /// The thread collecting stderr; it ends when the pipe does.
    stderr_reader: Option<JoinHandle<()>>,
    /// Whether stderr is collected (not sent elsewhere by the builder).
    collects_stderr: bool,
    /// The stdout lines after the `listening on` one, as they come.
    lines: Mutex<mpsc::Receiver<String>>,
    stdin: Option<ChildStdin>,
}

impl ChildServer {
    /// Starts `command` (stdin empty, stdout and stderr piped) and waits, at most 20 s, for
    /// its `listening on ADDR` line (earlier lines, a test harness's say, are echoed to the
    /// test's stdout); panics if it does not come. The command carries the
    /// listening address to use (`--listen 127.0.0.1:0`, say): the server prints the real
    /// one.
    pub fn start(command: Command) -> ChildServer {
        ChildServer::builder(command).start()
    }

    /// Options for starting `command`: the startup deadline, where stderr goes.
    pub fn builder(command: Command) -> ChildServerBuilder {
        ChildServerBuilder::new(command)
    }

    pub(crate) fn launch(options: ChildServerBuilder) -> Result<ChildServer, String> {
        let ChildServerBuilder {
            mut command,
            startup,
            stderr,
            stdin,
            allow_preamble,
        } = options;
        let name = program_name(&command);
        let collect_stderr = stderr.is_none();
        let mut child = command
            .stdin(stdin.unwrap_or_else(Stdio::null))
            .stdout(Stdio::piped())
            .stderr(stderr.unwrap_or_else(Stdio::piped))
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = collect_stderr
            .then(|| collect(child.stderr.take().expect("piped stderr"), stderr.clone()));
        let lines = read_lines(child.stdout.take().expect("piped stdout"));
        let stdin = child.stdin.take();
        // The guard exists from here: a failure below still kills the child.
        let mut server = ChildServer {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            announced: String::new(),
            stderr,
            stderr_reader,
            collects_stderr: collect_stderr,
            lines: Mutex::new(lines),
            stdin,
        };
        let line = if allow_preamble {
            server.try_line_starting("listening on ", startup)?
        } else {
            server.next_line(Instant::now() + startup, startup, "a `listening on` line")?
        };
        let announced = line.strip_prefix("listening on ").map(str::trim);
        server.addr = match announced {
            Some(a) if a.starts_with("unix:") => SocketAddr::from(([0, 0, 0, 0], 0)),
            Some(a) => match a.parse() {
                Ok(addr) => addr,
                Err(_) => return Err(server.failed(&format!("printed {line:?}"))),
            },
            None => return Err(server.failed(&format!("printed {line:?}"))),
        };
        server.announced = announced.unwrap_or_default().to_owned();
        Ok(server)
    }

    /// The address from the `listening on` line (`0.0.0.0:0` when it was a Unix-domain
    /// one: see [`announced`](Self::announced)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address exactly as the `listening on` line gave it: `HOST:PORT`, or
    /// `unix:/path` / `unix:@name` for a Unix-domain server.
    pub fn announced(&self) -> &str {
        &self.announced
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has written to stderr so far (its log), unless the builder
    /// sent stderr elsewhere.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Everything the server wrote to stderr, once it has exited: waits (at most `limit`)
    /// for the pipe to reach its end, so the last lines written before the exit are there.
    pub fn stderr_to_end(&mut self, limit: Duration) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + limit;
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
        }
        self.stderr()
    }

    /// The next stdout line that starts with `prefix`, waiting at most `limit`; the lines
    /// before it are echoed to the test's stdout. Panics if none comes.
    pub fn line_starting(&mut self, prefix: &str, limit: Duration) -> String {
        self.try_line_starting(prefix, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The address of the next `metrics on ADDR` line (what duo's servers print after
    /// `listening on` when started with `--metrics HOST:0`), waiting at most `limit`.
    pub fn metrics_addr(&mut self, limit: Duration) -> SocketAddr {
        let line = self.line_starting("metrics on ", limit);
        line["metrics on ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: a bad metrics line {line:?}: {e}", self.name))
    }

    /// As [`line_starting`](Self::line_starting), but an error (the server is killed)
    /// instead of a panic.
    fn try_line_starting(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let line = self.next_line(deadline, limit, &format!("a `{prefix}` line"))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            println!("{}: {line}", self.name);
        }
    }

    /// The next stdout line, before `deadline` (the end of the wait of `limit` it is part
    /// of); an error (the server is killed) naming `what` was awaited if the server closes
    /// its stdout or stays silent.
    fn next_line(
        &mut self,
        deadline: Instant,
        limit: Duration,
        what: &str,
    ) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        // A `Mutex` only to keep the server `Sync`; `&mut self` needs no locking.
        let lines = self.lines.get_mut().unwrap_or_else(PoisonError::into_inner);
        match lines.recv_timeout(left) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(self.failed(&format!("closed its stdout before {what}")))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(self.failed(&format!("did not print {what} within {limit:?}")))
            }
        }
    }

    /// The server's stdin, if the builder piped it ([`ChildServerBuilder::stdin`]); panics
    /// otherwise. Dropping the server closes it.
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("the server's stdin is piped")
    }

    /// Waits until stderr contains `needle` anywhere in what was collected so far (a line
    /// written before the action you wait for matches too: to wait for a new occurrence,
    /// use [`stderr_mark`](Self::stderr_mark) and
    /// [`wait_for_stderr_after`](Self::wait_for_stderr_after)); panics with the log after
    /// `limit`.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{}: no log line with {needle:?} within {limit:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A mark at the end of the stderr collected so far, for
    /// [`wait_for_stderr_after`](Self::wait_for_stderr_after) and
    /// [`stderr_since`](Self::stderr_since): take it before the action whose log line you
    /// then wait for. (Bytes the server wrote before the mark but that the collecting
    /// thread has not read yet count as after it: wait for the previous line first.)
    pub fn stderr_mark(&self) -> StderrMark {
        StderrMark(lock(&self.stderr).len())
    }

    /// What the server wrote to stderr after `mark` (collected so far).
    pub fn stderr_since(&self, mark: StderrMark) -> String {
        let log = lock(&self.stderr);
        // The log only grows, and a mark is a length it had: a char boundary.
        log.get(mark.0..).unwrap_or_default().to_owned()
    }

    /// Waits until stderr written after `mark` contains `needle` (an occurrence before the
    /// mark does not count, unlike [`wait_for_stderr`](Self::wait_for_stderr)); returns a
    /// mark just past the match, to wait for the next occurrence. Panics with the log
    /// after `limit`.
    pub fn wait_for_stderr_after(
        &self,
        mark: StderrMark,
        needle: &str,
        limit: Duration,
    ) -> StderrMark {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.stderr_since(mark).find(needle) {
                return StderrMark(mark.0 + at + needle.len());
            }
            assert!(
                Instant::now() < deadline,
                "{}: no log line with {needle:?} after the mark (byte {}) within {limit:?}; \
                 stderr:\n{}",
                self.name,
                mark.0,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (a name for `kill -s`: `TERM`, `INT`, `HUP`) to the server through
    /// `kill(1)`; panics if that fails.
    pub fn signal(&self, signal: &str) {
        let status = self
            .try_signal(signal)
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(
            status.success(),
            "kill -s {signal} {}: {status}",
            self.pid()
        );
    }

    /// Sends `signal` through `kill(1)` and returns how `kill` exited; an error if `kill`
    /// cannot be run here.
    pub fn try_signal(&self, signal: &str) -> io::Result<ExitStatus> {
        send_signal(self.pid(), signal)
    }

    /// How the server ended, if it has (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on the server")
    }

    /// Waits for the server to exit until `limit` passes; `None` if it is still running.
    pub fn wait_exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child_within(&mut self.child, limit)
    }

    /// Waits for the server to exit; panics (with its stderr) if it is still running after
    /// `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.wait_exit_within(limit).unwrap_or_else(|| {
            panic!(
                "{} still running after {limit:?}; stderr:\n{}",
                self.name,
                self.stderr()
            )
        })
    }

    /// Sends `signal` and waits at most `limit` for the exit; returns the status and how
    /// long the exit took from the signal. Panics if the server does not exit in time.
    pub fn terminate(&mut self, signal: &str, limit: Duration) -> (ExitStatus, Duration) {
        self.try_terminate(signal, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`terminate`](Self::terminate), but an error instead of a panic; the server
    /// must still be running. Past `limit` it is killed, and that is an error.
    pub fn try_terminate(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> Result<(ExitStatus, Duration), String> {
        if let Some(status) = self.try_wait() {
            return Err(format!("{} had already exited: {status}", self.name));
        }
        let sent = Instant::now();
        match self.try_signal(signal) {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("kill -s {signal} {}: {status}", self.pid())),
            Err(e) => return Err(format!("cannot run kill: {e}")),
        }
        match self.wait_exit_within(limit) {
            Some(status) => Ok((status, sent.elapsed())),
            None => {
                self.kill();
                Err(format!(
                    "{} did not exit within {limit:?} of SIG{signal}; killed",
                    self.name
                ))
            }
        }
    }

    /// Kills the server (`SIGKILL` to its PID; harmless if it has exited) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_child_within(&mut self.child, REAP);
    }

    /// An error for a server that did not start: `what`, and its log.
    fn failed(&mut self, what: &str) -> String {
        self.kill();
        self.stdin = None;
        let log = self.stderr_to_end(Duration::from_secs(1));
        format!("{} {what}; stderr:\n{log}", self.name)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() && self.collects_stderr {
            let log = self.stderr_to_end(Duration::from_secs(1));
            eprintln!("--- {} log ---\n{log}--- end of log ---", self.name);
        }
    }
}

/// A position in a [`ChildServer`]'s collected stderr ([`ChildServer::stderr_mark`]): what
/// was written after it is what [`ChildServer::wait_for_stderr_after`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StderrMark(usize);

/// The file name of the program `command` runs, for messages.
fn program_name(command: &Command) -> String {
    let program = Path::new(command.get_program());
    program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Locks what a reading thread shares, even if it panicked.
fn lock<T>(out: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    out.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends everything `pipe` yields to `out`, on a thread of its own.
fn collect(mut pipe: impl Read + Send + 'static, out: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            lock(&out).push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// Reads `stdout` line by line on a thread of its own, sending each line to the receiver
/// (bytes that are not UTF-8 replaced, so one bad line never stops the reading).
fn read_lines(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    // Keep reading after the receiver is gone, so the server never blocks.
                    let _ = tx.send(text.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
    });
    rx
}
