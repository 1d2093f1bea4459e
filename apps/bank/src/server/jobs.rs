//! What runs on the worker threads (password checks, reads, writes handed to the store),
//! and how its result gets back to its connection's loop: a [`Responder`] queues a
//! [`Completion`] there, and answers `INTERNAL` if dropped unused (a job that panicked).

use crate::store::PasswordHash;
use std::fmt;
use std::sync::Arc;

use duo_net::{ConnCtx, SubmitError, TcpConnection};

use super::session::{auth_failed_line, Account};
use super::{complete, App};
use crate::metrics::BankMetrics;
use crate::protocol::{err_line, ok_line, ErrorCode};
use crate::store::{StoreError, WriteJob, WriteOp, WriteOutcome, WriteResults};

/// What a finished job asks the loop to do.
pub(super) struct Completion {
    pub(super) reply: String,
    pub(super) effect: Effect,
}

pub(super) enum Effect {
    None,
    LoggedIn(Account),
    LoginFailed,
}

impl Completion {
    pub(super) fn reply(reply: String) -> Completion {
        Completion {
            reply,
            effect: Effect::None,
        }
    }
}

pub(super) fn internal(e: &dyn fmt::Display) -> String {
    duo_net::log_limited!(log::Level::Error, "{e}");
    err_line(ErrorCode::Internal, "internal server error")
}

/// The reply to a command the database failed: `UNAVAILABLE` if it could not be reached,
/// else `INTERNAL`; counted in `metrics`.
pub(super) fn store_failed(metrics: &BankMetrics, e: &StoreError) -> String {
    metrics.db_error(e.code());
    match e.code() {
        ErrorCode::Unavailable => {
            duo_net::log_limited!(log::Level::Warn, "{e}");
            err_line(
                ErrorCode::Unavailable,
                "database unavailable; try again later",
            )
        }
        _ => internal(e),
    }
}

/// Hands a job's result back to its connection's loop. If the job panics before finishing
/// (or its write is dropped unanswered), dropping it answers `INTERNAL` once for each
/// command the job answers, so the connection is never left waiting and its replies stay
/// in step with its commands.
pub(super) struct Responder {
    target: Option<(TcpConnection, Arc<App>)>,
    /// How many commands the job answers (a batch of pipelined writes: one line each).
    owed: usize,
}

impl Responder {
    /// Whether the connection has closed: nobody will read the reply, so a read or a
    /// password check need not run (during a shutdown this keeps the queue drain short).
    /// Writes run regardless.
    pub(super) fn abandoned(&self) -> bool {
        self.target
            .as_ref()
            .is_none_or(|(conn, _)| conn.is_closed())
    }

    /// The job answers `owed` commands (1 unless said).
    pub(super) fn owing(mut self, owed: usize) -> Responder {
        self.owed = owed;
        self
    }

    pub(super) fn finish(mut self, c: Completion) {
        if let Some((conn, app)) = self.target.take() {
            // Fails only if the connection has closed meanwhile: then nobody is waiting.
            let _ = conn.queue_in_loop(move |ctx| complete(ctx, &app, c));
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.target.is_some() {
            let reply = err_line(ErrorCode::Internal, "internal server error").repeat(self.owed);
            Responder {
                target: self.target.take(),
                owed: self.owed,
            }
            .finish(Completion::reply(reply));
        }
    }
}

/// Runs `job` on a worker; an error if the pool refused it (the caller answers).
pub(super) fn spawn(
    ctx: &ConnCtx<'_>,
    app: &Arc<App>,
    job: impl FnOnce(&App, Responder) + Send + 'static,
) -> Result<(), SubmitError> {
    let conn = ctx.connection().clone();
    let shared = app.clone();
    app.pool.submit(move || {
        let r = Responder {
            target: Some((conn, shared.clone())),
            owed: 1,
        };
        job(&shared, r);
    })
}

/// On a worker: checks a password.
pub(super) fn login(app: &App, user: &str, password: &str) -> Completion {
    let row = match app.store.user(user) {
        Ok(row) => row,
        Err(e) => return Completion::reply(store_failed(&app.metrics, &e)),
    };
    // An unknown user costs a hash check too, against a dummy hash.
    match row {
        Some(row) if app.hasher.verify(password, Some(row.hash.as_str())) => Completion {
            reply: ok_line(format_args!("welcome {user}")),
            effect: Effect::LoggedIn(Account {
                id: row.id,
                name: user.to_owned(),
            }),
        },
        row => {
            if row.is_none() {
                app.hasher.verify(password, None);
            }
            Completion {
                reply: auth_failed_line(),
                effect: Effect::LoginFailed,
            }
        }
    }
}

/// On a worker: hashes the password, then queues the insert for the writer.
pub(super) fn register(app: &App, user: String, password: &str, r: Responder) {
    match app.store.user(&user) {
        Ok(Some(_)) => {
            return r.finish(Completion::reply(err_line(
                ErrorCode::UserExists,
                "user name is taken",
            )))
        }
        Ok(None) => {}
        Err(e) => return r.finish(Completion::reply(store_failed(&app.metrics, &e))),
    }
    let hash = match app.hasher.hash(password) {
        Ok(h) => h,
        Err(e) => return r.finish(Completion::reply(internal(&e))),
    };
    let metrics = app.metrics.clone();
    app.store.submit_write(WriteJob {
        ops: vec![WriteOp::Register {
            name: user,
            hash: PasswordHash(hash),
        }],
        done: Box::new(move |results| r.finish(write_replies(&metrics, results, 1))),
    });
}

/// The replies of `owed` write commands from the store's `results`: one line each, in
/// order. A store that returned another number of results (a bug) is logged, and the
/// replies stay one per command all the same (`INTERNAL` for those without a result), or
/// the connection's replies would go out of step with its commands.
pub(super) fn write_replies(
    metrics: &BankMetrics,
    results: WriteResults,
    owed: usize,
) -> Completion {
    if results.len() != owed {
        duo_net::log_limited!(
            log::Level::Error,
            "the store returned {} results for {owed} writes",
            results.len()
        );
    }
    let mut reply = String::new();
    let mut results = results.into_iter();
    for _ in 0..owed {
        reply.push_str(&match results.next() {
            Some(Ok(outcome)) => reply_line(outcome),
            Some(Err(e)) => store_failed(metrics, &e),
            None => err_line(ErrorCode::Internal, "internal server error"),
        });
    }
    Completion::reply(reply)
}

/// The reply line of a write's outcome (a replay's: the first one's).
fn reply_line(outcome: WriteOutcome) -> String {
    match outcome {
        WriteOutcome::Registered => ok_line("registered"),
        WriteOutcome::Balance(b) => ok_line(b),
        WriteOutcome::Rejected(code, message) => err_line(code, &message),
        WriteOutcome::Replayed(first) => reply_line(*first),
    }
}

#[cfg(test)]
mod tests {
    use super::write_replies;
    use crate::metrics::BankMetrics;
    use crate::store::{StoreError, WriteOutcome};

    fn lines(results: Vec<Result<WriteOutcome, StoreError>>, owed: usize) -> Vec<String> {
        let c = write_replies(&BankMetrics::default(), results, owed);
        c.reply.lines().map(str::to_owned).collect()
    }

    #[test]
    fn one_reply_per_write_whatever_the_store_returned() {
        let ok = || Ok(WriteOutcome::Balance(5));
        assert_eq!(lines(vec![ok(), ok()], 2), ["OK 5", "OK 5"]);
        // Fewer results than writes: the missing ones are answered INTERNAL, in place.
        let short = lines(vec![ok()], 3);
        assert_eq!(short.len(), 3, "{short:?}");
        assert_eq!(short[0], "OK 5");
        assert!(
            short[1..].iter().all(|l| l.starts_with("ERR INTERNAL")),
            "{short:?}"
        );
        // More results than writes: only as many replies as writes.
        assert_eq!(lines(vec![ok(), ok(), ok()], 2), ["OK 5", "OK 5"]);
        let failed = lines(vec![Err(StoreError::Unavailable("down".into()))], 1);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].starts_with("ERR UNAVAILABLE"), "{failed:?}");
    }
}
