//! What went wrong, by kind, counted: errors are reported, never hidden.

use std::collections::BTreeMap;
use std::io;

/// One kind of failure. Each has a stable snake-case name used in the report's `errors`
/// object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// `connect` was refused (`ECONNREFUSED`): nothing listens, or the backlog overflowed.
    Refused,
    /// The connection was reset or aborted (`ECONNRESET`, `ECONNABORTED`, `EPIPE`).
    Reset,
    /// The peer closed the connection (end of stream) when a reply was still due.
    Closed,
    /// A connect or a reply took longer than `--timeout`.
    Timeout,
    /// The echoed bytes differ from the bytes sent, or more came back than were sent.
    /// This is a verification failure: the run exits with code 1.
    Mismatch,
    /// No local address or port left (`EADDRNOTAVAIL`, `EADDRINUSE`).
    AddrUnavailable,
    /// The open-file limit was reached (`EMFILE`, `ENFILE`): a connection not opened.
    FdLimit,
    /// The bank answered `ERR BUSY` (its work queue is full).
    Busy,
    /// `LOGIN` was refused.
    LoginFailed,
    /// A bank reply that the protocol does not allow at this point.
    BadReply,
    /// Any other I/O error.
    Io,
    /// A process gave up at its hard time limit (`idle --procs`: a child's watchdog).
    HardTimeout,
    /// `rr --udp`: a datagram (or its echo) was lost: no echo within the loss timeout.
    Lost,
    /// The measured phase ended with no unit of work done and a reply (or a connect, or a
    /// TLS handshake) still awaited: one per connection waiting so. A server that accepts
    /// and never answers, in a run shorter than `--timeout` (which would count `timeout`).
    Unanswered,
}

impl Fault {
    /// The name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Refused => "refused",
            Fault::Reset => "reset",
            Fault::Closed => "closed",
            Fault::Timeout => "timeout",
            Fault::Mismatch => "mismatch",
            Fault::AddrUnavailable => "addr_unavailable",
            Fault::FdLimit => "fd_limit",
            Fault::Busy => "busy",
            Fault::LoginFailed => "login_failed",
            Fault::BadReply => "bad_reply",
            Fault::Io => "io",
            Fault::HardTimeout => "hard_timeout",
            Fault::Lost => "lost",
            Fault::Unanswered => "unanswered",
        }
    }

    /// Every kind.
    const ALL: [Fault; 14] = [
        Fault::Refused,
        Fault::Reset,
        Fault::Closed,
        Fault::Timeout,
        Fault::Mismatch,
        Fault::AddrUnavailable,
        Fault::FdLimit,
        Fault::Busy,
        Fault::LoginFailed,
        Fault::BadReply,
        Fault::Io,
        Fault::HardTimeout,
        Fault::Lost,
        Fault::Unanswered,
    ];

    /// The kind named `name` in reports (the inverse of [`Fault::name`]).
    pub(crate) fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether this failure means the server returned wrong data (the run then fails its
    /// verification), rather than an operational error such as a reset.
    pub(crate) fn is_verification(self) -> bool {
        matches!(self, Fault::Mismatch)
    }

    /// The kind of an I/O error from `connect`, `read` or `write`.
    pub(crate) fn of(err: &io::Error) -> Fault {
        if duo_sys::is_fd_exhaustion(err) {
            return Fault::FdLimit;
        }
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Fault::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Fault::Reset,
            io::ErrorKind::TimedOut => Fault::Timeout,
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => Fault::AddrUnavailable,
            io::ErrorKind::UnexpectedEof => Fault::Closed,
            _ => Fault::Io,
        }
    }
}

/// Failures counted by kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    counts: BTreeMap<Fault, u64>,
}

impl Faults {
    /// Counts one failure of `kind`.
    pub(crate) fn count(&mut self, kind: Fault) {
        self.add(kind, 1);
    }

    /// Counts `n` failures of `kind`.
    pub(crate) fn add(&mut self, kind: Fault, n: u64) {
        if n > 0 {
            *self.counts.entry(kind).or_default() += n;
        }
    }

    /// Adds another set of counts (from another thread).
    pub(crate) fn merge(&mut self, other: &Faults) {
        for (&kind, &n) in &other.counts {
            self.add(kind, n);
        }
    }

    /// All failures.
    pub(crate) fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Whether any failure is a verification failure.
    pub(crate) fn verification_failed(&self) -> bool {
        self.counts.keys().any(|k| k.is_verification())
    }

    /// `(name, count)` in a stable order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts.iter().map(|(k, &n)| (k.name(), n))
    }
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
        assert_eq!(Fault::from_name("no_such_kind"), None);
    }
}
