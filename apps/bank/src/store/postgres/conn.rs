//! A connection to PostgreSQL whose every call has a time limit.
//!
//! A server that stops answering without closing (a hung host, a middlebox or a NAT that
//! dropped the flow, a proxy that stalled) leaves the kernel nothing to time out when
//! something between acknowledges the bank's packets: a blocking call would wait for ever,
//! and so would its clients. Here each call runs on a small runtime of the connection's
//! own (`tokio-postgres`, the engine under the blocking `postgres` crate) against a
//! deadline ([`StoreOptions::db_timeout`](crate::store::StoreOptions)): past it the
//! connection is dropped (its socket closed) and the call fails as on a broken connection,
//! which the callers already treat as an unknown outcome (`UNAVAILABLE`, the lost session
//! ended, a new one made). Making a connection (resolving the host name, TCP, start-up,
//! authentication) is bounded by the URL's `connect_timeout` for each host and each
//! address of a host name, as libpq bounds it ([`super::hosts`]).

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, Error, Row, Statement, ToStatement};

use super::hosts;

/// How long dropping a connection may take to send the server its goodbye.
const CLOSE_LIMIT: Duration = Duration::from_millis(200);

/// Drives the connection's socket while a call runs; `None` once it has ended.
type Io = Option<Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>>;

/// Why a connection could not be made.
#[derive(Debug)]
pub(super) enum ConnectError {
    /// The server, or the way to it, said why.
    Db(Error),
    /// No connection within the limit, or no runtime to make it on.
    Other(String),
}

/// A connection; every call on it ends within its limit.
pub(super) struct Conn {
    // Dropped first: the connection then says goodbye as `Driver` drops.
    client: Client,
    driver: Driver,
}

/// The connection's runtime and the future that drives its socket.
struct Driver {
    runtime: Runtime,
    io: Io,
    /// How long one call may take (`None`: no limit).
    limit: Option<Duration>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The client is gone: its connection sends `Terminate` and closes, unless it is
        // stuck (a stalled link); then it is just dropped.
        if let Some(io) = self.io.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(CLOSE_LIMIT, io).await });
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.is_closed())
            .field("limit", &self.driver.limit)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects as `config` says, to the first of its hosts that answers, within its
    /// `connect_timeout` for each host and each address of a host name ([`hosts`]); each
    /// later call may take `limit` at most.
    pub(super) fn connect(config: &Config, limit: Option<Duration>) -> Result<Conn, ConnectError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Other(format!("cannot start a runtime: {e}")))?;
        // Each host's (and address's) attempt is bounded on its own (`hosts`). After a
        // failure nothing is waited for (as after a timeout).
        let (runtime, made) = connect_within(runtime, None, hosts::connect(config))?;
        let (client, connection) = match made {
            Ok(made) => made,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(Conn {
            client,
            driver: Driver {
                runtime,
                io: Some(Box::pin(connection)),
                limit,
            },
        })
    }

    /// Whether the connection has ended (the next call would fail).
    pub(super) fn is_closed(&self) -> bool {
        self.driver.io.is_none() || self.client.is_closed()
    }

    /// Runs `statement` with `params`: its rows.
    pub(super) fn query<T: ?Sized + ToStatement + Sync>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.driver.run(self.client.query(statement, params))
    }

    /// Runs `statement`: its one row (an error unless exactly one).
    pub(super) fn query_one<T: ?Sized + ToStatement + Sync>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        self.driver.run(self.client.query_one(statement, params))
    }

    /// Runs `statement`: its row, if any (an error if more than one).
    pub(super) fn query_opt<T: ?Sized + ToStatement + Sync>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.driver.run(self.client.query_opt(statement, params))
    }

    /// Runs `statement`: the rows it affected.
    pub(super) fn execute<T: ?Sized + ToStatement + Sync>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.driver.run(self.client.execute(statement, params))
    }

    /// Runs `sql` (statements separated by `;`, no parameters).
    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.driver.run(self.client.batch_execute(sql))
    }

    /// Prepares `sql`.
    pub(super) fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.driver.run(self.client.prepare(sql))
    }

    /// Prepares `sql` with its parameters' types.
    pub(super) fn prepare_typed(&mut self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        self.driver.run(self.client.prepare_typed(sql, types))
    }
}

/// Runs `connecting` on `runtime`, within `within` if given: its outcome and the runtime,
/// or an error past the limit.
///
/// A host name is resolved on the runtime's blocking pool (`getaddrinfo`, which nothing
/// can cut short). Dropping a runtime waits for its blocking tasks, so past the limit the
/// runtime is shut down in the background instead: a lookup that hangs (a DNS server that
/// does not answer) ends on its own thread, and the caller is not held past the limit.
fn connect_within<O>(
    runtime: Runtime,
    within: Option<Duration>,
    connecting: impl Future<Output = O>,
) -> Result<(Runtime, O), ConnectError> {
    let made = runtime.block_on(async {
        match within {
            Some(within) => tokio::time::timeout(within, connecting).await.map_err(|_| {
                ConnectError::Other(format!("no connection within {within:?} (connect_timeout)"))
            }),
            None => Ok(connecting.await),
        }
    });
    match made {
        Ok(made) => Ok((runtime, made)),
        Err(e) => {
            runtime.shutdown_background();
            Err(e)
        }
    }
}

impl Driver {
    /// Runs `call` while driving the socket. Past the limit the connection is dropped, and
    /// the call fails as on a closed connection. An error that ends the connection
    /// (a server that shuts down, a reset) is the call's error if the call was cut off by
    /// it, but not if the call's whole answer came before it (a session ended right after
    /// a commit: the commit stands), nor if the call's answer was an error of its own
    /// (57P01 in reply to the call: it rolled back, even if the close was read with it).
    fn run<T>(&mut self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let Driver { runtime, io, limit } = self;
        let limit = *limit;
        let mut call = pin!(call);
        let mut ended_with = None;
        runtime.block_on(async {
            let mut expiry = pin!(async {
                match limit {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            });
            poll_fn(|cx| {
                if let Some(driving) = io.as_mut() {
                    if let Poll::Ready(ended) = driving.as_mut().poll(cx) {
                        // Dropped: the call's channels close with it, so it ends now.
                        *io = None;
                        ended_with = ended.err();
                    }
                }
                if let Poll::Ready(done) = call.as_mut().poll(cx) {
                    return Poll::Ready(match (done, ended_with.take()) {
                        // Cut off by the end: why it ended. An answer of the server's
                        // own (57P01 as the call's reply: it rolled back) stays the
                        // call's, also when the end of the stream was read with it.
                        (Err(e), Some(why)) if e.is_closed() => Err(why),
                        (done, _) => done,
                    });
                }
                if io.is_some() && expiry.as_mut().poll(cx).is_ready() {
                    duo_net::log_limited!(
                        log::Level::Warn,
                        "no answer from the database within {:?} (--db-timeout); dropping \
                         the connection",
                        limit.unwrap_or_default()
                    );
                    // Closes the socket: the call's request and answer channels go with
                    // it, so the call ends at once (as on a connection that broke).
                    *io = None;
                    return call.as_mut().poll(cx);
                }
                Poll::Pending
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Review round 11 of the bank: a host name is resolved on the runtime's blocking
    /// pool (`getaddrinfo`, which nothing can cut short). A lookup that hangs (a DNS
    /// server that does not answer) outlived `connect_timeout`: the timeout fired, but
    /// dropping the runtime waited for the lookup to finish.
    #[test]
    fn a_hanging_lookup_does_not_outlive_the_connect_limit() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let lookup = async {
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(4))).await;
        };
        let started = Instant::now();
        let made = connect_within(runtime, Some(Duration::from_millis(100)), lookup);
        let took = started.elapsed();
        let Err(ConnectError::Other(why)) = made else {
            panic!("connected past the limit");
        };
        assert!(why.contains("connect_timeout"), "{why}");
        assert!(took < Duration::from_secs(2), "gave up after {took:?}");
    }
}
