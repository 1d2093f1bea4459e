//! How a [`ChildServer`] is started.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ChildServer;

/// The default time a server may take to print its `listening on` line: generous, since a
/// loaded machine may be slow to start a fresh binary.
pub(crate) const STARTUP: Duration = Duration::from_secs(20);

/// Options for starting a [`ChildServer`]; made by [`ChildServer::builder`].
#[derive(Debug)]
pub struct ChildServerBuilder {
    pub(crate) command: Command,
    pub(crate) startup: Duration,
    pub(crate) stderr: Option<Stdio>,
    pub(crate) stdin: Option<Stdio>,
    pub(crate) allow_preamble: bool,
}

impl ChildServerBuilder {
    pub(crate) fn new(command: Command) -> ChildServerBuilder {
        ChildServerBuilder {
            command,
            startup: STARTUP,
            stderr: None,
            stdin: None,
            allow_preamble: false,
        }
    }

    /// How long the server may take to print its `listening on` line (default 20 s).
    pub fn startup(mut self, limit: Duration) -> ChildServerBuilder {
        self.startup = limit;
        self
    }

    /// Sends the server's stderr to `to` (a log file, the test's own stderr) instead of
    /// collecting it; [`ChildServer::stderr`] is then empty.
    pub fn stderr(mut self, to: impl Into<Stdio>) -> ChildServerBuilder {
        self.stderr = Some(to.into());
        self
    }

    /// Gives the server `from` as its stdin (`Stdio::piped()` for a control channel the test
    /// writes to, [`ChildServer::stdin`]) instead of an empty one.
    pub fn stdin(mut self, from: impl Into<Stdio>) -> ChildServerBuilder {
        self.stdin = Some(from.into());
        self
    }

    /// Accepts stdout lines before `listening on` (echoed to the test's stdout) instead of
    /// failing on them: for a child that is itself a test harness, which prints its own
    /// lines first. By default the `listening on` line must be the first, so a server that
    /// starts printing something else on stdout fails the test.
    pub fn allow_preamble(mut self) -> ChildServerBuilder {
        self.allow_preamble = true;
        self
    }

    /// Starts the server and waits for its `listening on ADDR` line; panics (with what the
    /// server wrote to stderr) if it does not come in time.
    pub fn start(self) -> ChildServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`start`](ChildServerBuilder::start), but an error (naming the program, with
    /// its collected stderr) instead of a panic: for harnesses that report and go on.
    pub fn try_start(self) -> Result<ChildServer, String> {
        ChildServer::launch(self)
    }

    /// As [`start`](ChildServerBuilder::start) for a program the test has just written
    /// (a copy of a binary in a directory of its own), with the builder `make` gives,
    /// made again for each attempt: another test thread that forks while the file is
    /// being written gives its child the writing descriptor until that child's `exec`,
    /// and starting the program meanwhile fails with `ETXTBSY`. Such failures are tried
    /// again, every 10 ms, for a second at most.
    pub fn start_written(mut make: impl FnMut() -> ChildServerBuilder) -> ChildServer {
        let mut attempts = 0;
        loop {
            match make().try_start() {
                Ok(server) => return server,
                Err(e) if e.contains("Text file busy") && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
