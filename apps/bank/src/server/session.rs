//! A connection's session: who is logged in, the commands waiting for their turn, and
//! what the next one needs ([`next_step`]). Plain data and decisions, no I/O: the server
//! (`super`) runs the steps.

use std::collections::VecDeque;

use crate::protocol::{
    err_line, ok_line, valid_password, valid_user, Command, ErrorCode, ProtoError, PONG,
};
use crate::store::messages::NO_SUCH_USER;
use crate::store::WriteOp;

/// Failed logins after which a connection is closed.
const MAX_FAILED_LOGINS: u32 = 5;
/// Most commands of one connection sent to the writer as one job.
const MAX_WRITES_PER_JOB: usize = 256;

/// An account a connection is logged in to.
#[derive(Debug, Clone)]
pub(super) struct Account {
    pub(super) id: i64,
    pub(super) name: String,
}

/// A line waiting for its turn.
#[derive(Debug)]
pub(super) enum Pending {
    /// A command.
    Command(Command),
    /// A line that failed to parse: answered with this error.
    Invalid {
        /// The reply.
        error: ProtoError,
        /// The line was a `LOGIN` (a malformed one): it ends the session all the same.
        logout: bool,
    },
    /// A line too long: answered with this error, then the connection closes.
    Fatal(ProtoError),
}

/// The per-connection state, kept in the connection's context.
#[derive(Debug, Default)]
pub(super) struct Session {
    pub(super) user: Option<Account>,
    pub(super) failed_logins: u32,
    pub(super) queue: VecDeque<Pending>,
    /// A job of this connection is on the workers.
    pub(super) busy: bool,
    /// The server is closing the connection: answer nothing more.
    pub(super) closing: bool,
    /// Input after a too-long line is discarded.
    pub(super) discard_input: bool,
    /// Reading paused because the queue is long.
    pub(super) paused: bool,
    /// The peer half-closed, or the server is shutting down: read nothing more, and close
    /// once every queued command is answered.
    pub(super) peer_done: bool,
    /// A timer watches the client take its replies (`activity::watch_drain`).
    pub(super) drain_watch: bool,
    /// A timer keeps the idle timeout off the connection while a job of it is on the
    /// workers (`activity::watch_busy`).
    pub(super) busy_watch: bool,
    /// That timer found the job in flight still running: its completion counts as
    /// activity (`activity::completed`).
    pub(super) slow_job: bool,
    /// The server half-closes once the output is written; then the peer has this long to
    /// close its side (`activity::linger`).
    pub(super) linger: Option<std::time::Duration>,
}

/// The next thing to do for a connection, decided under its context's lock.
pub(super) enum Step {
    /// Nothing (queue empty, a job outstanding, or closing).
    Idle,
    /// Send this.
    Reply(String),
    /// Send this, then close.
    Close(String),
    /// Check a password.
    Login { user: String, password: String },
    /// Create an account.
    Register { user: String, password: String },
    /// Read a balance.
    Balance(i64),
    /// Read a history.
    History(i64, usize),
    /// Apply these writes (replies in order).
    Writes(Vec<WriteOp>),
}

pub(super) fn is_write(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Deposit { .. } | Command::Withdraw { .. } | Command::Transfer { .. }
    )
}

/// Pops the next queued command and decides what to do with it. Sets `busy` when the
/// answer needs a worker, `closing` when the connection is to close.
pub(super) fn next_step(s: &mut Session, group_commit: bool) -> Step {
    if s.busy || s.closing {
        return Step::Idle;
    }
    let Some(item) = s.queue.pop_front() else {
        return Step::Idle;
    };
    let cmd = match item {
        Pending::Command(cmd) => cmd,
        Pending::Invalid { error, logout } => {
            // A LOGIN ends the session it finds whatever its outcome, also one the
            // parser refused: the commands pipelined behind it must not act on the
            // account before it.
            if logout {
                s.user = None;
            }
            return Step::Reply(error.line());
        }
        Pending::Fatal(e) => {
            s.closing = true;
            s.queue.clear();
            return Step::Close(e.line());
        }
    };
    let not_authenticated = || {
        Step::Reply(err_line(
            ErrorCode::NotAuthenticated,
            "log in first: LOGIN <user> <password>",
        ))
    };
    let step = match cmd {
        Command::Ping => return Step::Reply(PONG.to_owned()),
        Command::Quit => {
            s.closing = true;
            s.queue.clear();
            return Step::Close(ok_line("bye"));
        }
        Command::Register { user, password } => Step::Register { user, password },
        Command::Login { user, password } => {
            // A LOGIN ends the session it finds, whatever its outcome: the commands
            // pipelined behind a failed one must not act on the account before it.
            s.user = None;
            if !valid_user(&user) || !valid_password(&password) {
                // Cannot match any account: fail without a worker, counted all the same.
                return login_failed(s);
            }
            Step::Login { user, password }
        }
        Command::Balance => match &s.user {
            Some(u) => Step::Balance(u.id),
            None => return not_authenticated(),
        },
        Command::History { limit } => match &s.user {
            Some(u) => Step::History(u.id, limit),
            None => return not_authenticated(),
        },
        write => {
            let Some(user) = s.user.clone() else {
                return not_authenticated();
            };
            if impossible_payee(&write) {
                return Step::Reply(err_line(ErrorCode::NoSuchUser, NO_SUCH_USER));
            }
            let mut ops = vec![write_op(&user, write)];
            // Later writes queued right behind it join the same job (and commit).
            while group_commit && ops.len() < MAX_WRITES_PER_JOB {
                match s.queue.front() {
                    Some(Pending::Command(c)) if is_write(c) && !impossible_payee(c) => {}
                    _ => break,
                }
                if let Some(Pending::Command(c)) = s.queue.pop_front() {
                    ops.push(write_op(&user, c));
                }
            }
            Step::Writes(ops)
        }
    };
    s.busy = true;
    step
}

/// Whether `cmd` is a `TRANSFER` to a name no user can have (not a valid user name: a
/// NUL byte, which PostgreSQL cannot even take as text, so that the whole batch would
/// fail, `INTERNAL`; a space, a name too long). It is answered `NO_SUCH_USER` without the
/// database, like a refusal of the parser: nothing is recorded under its request id.
fn impossible_payee(cmd: &Command) -> bool {
    matches!(cmd, Command::Transfer { to, .. } if !valid_user(to))
}

pub(super) fn write_op(user: &Account, cmd: Command) -> WriteOp {
    match cmd {
        Command::Deposit { amount } => WriteOp::Deposit {
            user: user.id,
            amount,
        },
        Command::Withdraw { amount } => WriteOp::Withdraw {
            user: user.id,
            amount,
        },
        Command::Transfer {
            to,
            amount,
            request_id,
        } => WriteOp::Transfer {
            from: user.id,
            from_name: user.name.clone(),
            to,
            amount,
            request_id,
        },
        other => unreachable!("{other:?} is not a write"),
    }
}

pub(super) fn auth_failed_line() -> String {
    err_line(ErrorCode::AuthFailed, "wrong user name or password")
}

/// Counts a failed login; the step answers it, and closes after the last allowed one.
pub(super) fn login_failed(s: &mut Session) -> Step {
    s.failed_logins += 1;
    if s.failed_logins >= MAX_FAILED_LOGINS {
        s.closing = true;
        s.queue.clear();
        Step::Close(err_line(
            ErrorCode::AuthFailed,
            "wrong user name or password; too many failed logins, closing",
        ))
    } else {
        Step::Reply(auth_failed_line())
    }
}
