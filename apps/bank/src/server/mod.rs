//! The network glue: a `duo_net::TcpServer` whose message callback parses command lines
//! and hands database work to a `duo_net::ThreadPool`.
//!
//! # Replies in request order
//!
//! Each connection carries a `Session` in its context: the logged-in account, the count
//! of failed logins, and a queue of parsed commands not yet answered. A connection has at
//! most **one job outstanding** on the workers; the other commands wait in its queue. All of
//! the session's state is touched only on the connection's I/O loop:
//!
//! 1. the message callback splits lines with a `LineCodec`, parses them, appends them to the
//!    queue and calls `pump`;
//! 2. `pump` asks `session::next_step` what the next queued command needs: it answers
//!    those that need no database (`PING`, `QUIT`, parse errors, `NOT_AUTHENTICATED`)
//!    right away, and stops at the first that does: it submits a job and marks the
//!    session busy. The replies it makes on the way are gathered and go out in one send
//!    when it stops (with the reply of the job that called it, if one did), so a burst of
//!    pipelined commands costs one system call, not one per reply;
//! 3. the job runs on a worker and finishes by queueing its reply onto the connection's
//!    loop (`TcpConnection::queue_in_loop`), which sends it, updates the session (a login),
//!    clears `busy` and calls `pump` again.
//!
//! So every reply is written by the loop, in queue order, and a command runs only after the
//! previous one of its connection has finished: `LOGIN` then `BALANCE`, or `DEPOSIT` then
//! `BALANCE`, pipelined in one packet, behave as if sent one by one. Consecutive `DEPOSIT`,
//! `WITHDRAW` and `TRANSFER` commands of one connection travel as one write job, so a
//! pipelining client shares commits too (see `store` for group commit across connections).
//!
//! A client that pipelines faster than its commands complete is paused (the server stops
//! reading its socket) once `QUEUE_HIGH` commands wait, and resumed below `QUEUE_LOW`.
//! A client that pipelines and does not read its replies is held the same way: `pump`
//! starts no command while `OUTPUT_HIGH` bytes of replies wait to be written, and resumes
//! when the output has drained (the write-complete callback), so the memory a connection
//! holds is bounded by the queue, one job's reply and that mark, whatever it sends.

use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use duo_metrics::MetricsServer;
use duo_net::codec::{CodecError, LineCodec};
use duo_net::process::{self, STOP_SIGNALS};
use duo_net::{
    ConnCtx, Endpoint, EventLoop, HealthConfig, InputBuffer, ServerBuilder, SubmitError,
    TcpConnection, TcpServer, ThreadPool, WhenFull,
};
use duo_supervisor::Worker;

use crate::auth::{HashCost, Hasher};
use crate::metrics::BankMetrics;
use crate::protocol::{
    err_line, history_reply, is_login_line, ok_line, parse_line, ErrorCode, ProtoError, MAX_LINE,
};
mod activity;
mod jobs;
mod session;

use crate::store::{Database, Store, StoreError, StoreOptions, WriteJob};
use jobs::{login, register, spawn, store_failed, write_replies, Completion, Effect};
use session::{login_failed, next_step, Pending, Session, Step};

/// Commands queued on one connection at which the server stops reading from it.
const QUEUE_HIGH: usize = 4096;
/// Queue length below which a paused connection is read again.
const QUEUE_LOW: usize = 1024;
/// Unwritten reply bytes at which a connection's queued commands stop being started.
const OUTPUT_HIGH: usize = 256 << 10;
/// How long a graceful shutdown waits for connections to finish before closing them (the
/// database work already queued is completed after that, within [`DRAIN_LIMIT`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a stopping server then waits for the database work already queued on its
/// workers (the writes of connections that have gone, committed all the same). A job that
/// does not finish in time (a database that stopped answering: a lock held elsewhere, a
/// server gone silent) is abandoned and the process exits with status 1: nobody got its
/// reply (its outcome is unknown, as for a write cut off by the grace period), so every
/// acknowledged write is still on disk. Without this bound a stuck job held the exit for
/// ever, deaf to further signals.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// Descriptors a worker process keeps for itself (loops, timers, signals, the acceptor's
/// spare descriptor, standard streams, the SQLite files) below its open-file limit, on top
/// of its database connections; the rest are for clients.
const WORKER_FD_RESERVE: u64 = 64;
/// Descriptors one PostgreSQL connection holds (its socket, and the epoll and eventfd of
/// the small runtime the client drives it with).
const FDS_PER_DB_CONNECTION: u64 = 3;

/// Settings of `bank serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on: TCP, or Unix-domain (`unix:/path`, `unix:@name`).
    pub listen: Endpoint,
    /// The database: an SQLite file or a PostgreSQL server.
    pub db: Database,
    /// Transactions that may commit at once on PostgreSQL (SQLite has one writer).
    pub db_writers: usize,
    /// I/O threads (sub reactors); 0 serves everything on the main loop.
    pub io_threads: usize,
    /// Loops shared by the I/O threads (`ServerBuilder::loops`); 0: one loop per thread.
    pub loops: usize,
    /// How the I/O threads share `loops` loops (`ServerBuilder::loop_sharing`).
    pub loop_sharing: duo_net::LoopSharing,
    /// Worker threads for database work and password hashing.
    pub workers: usize,
    /// Jobs the worker queue holds before commands are answered `BUSY`.
    pub queue_capacity: usize,
    /// Idle connections are closed after this long; zero disables.
    pub idle_timeout: Duration,
    /// Batch concurrent writes into shared commits.
    pub group_commit: bool,
    /// On PostgreSQL with group commit, release a batch's locks at its commit and hold
    /// its replies until a flush barrier says it is on disk (early lock release); off,
    /// every commit holds its locks until it is on disk. SQLite ignores it.
    pub early_release: bool,
    /// On PostgreSQL, how long one database call may wait for the server
    /// ([`StoreOptions::db_timeout`]); `None`: no limit. SQLite ignores it.
    pub db_timeout: Option<Duration>,
    /// Cost of new password hashes.
    pub hash_cost: HashCost,
    /// Serve the metrics endpoint here (and print `metrics on ADDR`).
    pub metrics: Option<SocketAddr>,
    /// The loops' stall threshold (`None`: the stall detector is off).
    pub stall_threshold: Option<Duration>,
    /// Serve TLS with this certificate chain and private key (PEM files).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening or creating the database.
    #[error("cannot open database {db}: {source}")]
    Database {
        /// The database.
        db: Database,
        /// Why.
        source: StoreError,
    },
    /// Any other start-up failure.
    #[error("{0}")]
    Startup(String),
    /// The database work queued at the stop did not finish within [`DRAIN_LIMIT`]; the
    /// process exits without it.
    #[error("{0}")]
    Unfinished(String),
}

fn startup<E: fmt::Display>(what: &str) -> impl FnOnce(E) -> ServeError + '_ {
    move |e| ServeError::Startup(format!("{what}: {e}"))
}

/// What every callback and job shares.
struct App {
    store: Store,
    hasher: Hasher,
    pool: ThreadPool,
    group_commit: bool,
    metrics: BankMetrics,
    /// `--idle-timeout` (zero: none).
    idle_timeout: Duration,
}

/// Runs the server on `cfg.listen` until SIGINT or SIGTERM; then stops accepting, lets
/// connections finish, completes the queued database work and returns. Prints `listening
/// on ADDR` on stdout once it accepts.
///
/// Call it from the main thread before starting any other thread.
///
/// # Errors
///
/// The database cannot be opened, the address cannot be bound, or another start-up step
/// (event loop, threads, stdout) failed.
pub fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    prepare()?;
    let builder = TcpServer::builder("bank", cfg.listen.clone());
    let listen = cfg.listen.clone();
    run(&cfg, builder, listen, None)
}

/// As [`serve`], on an already listening socket (systemd's socket activation) instead of
/// `cfg.listen`.
///
/// # Errors
///
/// As [`serve`]; also if `listener` is not a listening TCP socket.
pub fn serve_on(cfg: ServeConfig, listener: TcpListener) -> Result<(), ServeError> {
    prepare()?;
    let (builder, addr) = on_listener(listener)?;
    run(&cfg, builder, addr, None)
}

/// Runs the server as a worker process of a `duo_supervisor::Supervisor` (`bank serve
/// --processes N`): on the listening socket the supervisor handed over, telling it that
/// the worker is ready once it accepts, printing nothing on stdout. A full worker (at its
/// open-file limit) stops accepting and leaves new connections to the other workers.
/// SIGTERM drains it as in [`serve`].
///
/// # Errors
///
/// As [`serve`]; also if the supervisor handed over no listening socket.
pub fn serve_worker(cfg: ServeConfig, mut worker: Worker) -> Result<(), ServeError> {
    // Also the supervisor's own signals, sent to a worker by mistake: logged and ignored
    // (`run`), not the death of its connections.
    process::prepare_server(&duo_supervisor::WORKER_SIGNALS)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    let listener = worker.take_listeners().into_iter().next().ok_or_else(|| {
        ServeError::Startup("the supervisor handed over no listening socket".to_owned())
    })?;
    let (builder, addr) = on_listener(listener)?;
    run(&cfg, builder, addr, Some(worker))
}

/// Prepares the process; before any thread exists, since every thread inherits the signal
/// mask: so the stop signals reach the main loop's signalfd and nothing else.
fn prepare() -> Result<(), ServeError> {
    process::prepare_server(&STOP_SIGNALS).map_err(|e| ServeError::Startup(e.to_string()))
}

/// A server builder on `listener`, and its address.
fn on_listener(listener: TcpListener) -> Result<(ServerBuilder, Endpoint), ServeError> {
    let addr = listener
        .local_addr()
        .map_err(startup("the listening socket"))?;
    let builder = TcpServer::builder_on("bank", listener)
        .map_err(|e| ServeError::Startup(format!("cannot serve on {addr}: {e}")))?;
    Ok((builder, addr.into()))
}

/// Opens the database, starts the server from `builder` (bound to `listen`, or to be) and
/// serves until stopped; announces itself on stdout, or (as a `worker`) to its supervisor.
fn run(
    cfg: &ServeConfig,
    builder: ServerBuilder,
    listen: Endpoint,
    worker: Option<Worker>,
) -> Result<(), ServeError> {
    HealthConfig::set_process_default(HealthConfig {
        stall_threshold: cfg.stall_threshold,
        ..HealthConfig::process_default()
    });
    // Opening the database may wait (a lock held by another process, a server slow to
    // answer): a stop signal meanwhile ends the start at once, nothing served yet.
    let starting = process::stop_during_startup(&STOP_SIGNALS).map_err(startup("signals"))?;
    let metrics = BankMetrics::default();
    let options = StoreOptions {
        metrics: metrics.clone(),
        group_commit: cfg.group_commit,
        early_release: cfg.early_release,
        db_timeout: cfg.db_timeout,
        // Without group commit every worker runs its own transactions, as a classic
        // connection pool would (SQLite ignores it: it has one writer).
        writers: if cfg.group_commit {
            cfg.db_writers
        } else {
            cfg.workers
        },
    };
    let store = Store::open(&cfg.db, options).map_err(|source| ServeError::Database {
        db: cfg.db.clone(),
        source,
    })?;
    let hasher = Hasher::new(cfg.hash_cost).map_err(startup("password hasher"))?;
    let pool = ThreadPool::new("bank-worker", cfg.workers, cfg.queue_capacity)
        .map_err(startup("starting workers"))?;
    let app = Arc::new(App {
        store,
        hasher,
        pool,
        group_commit: cfg.group_commit,
        metrics: metrics.clone(),
        idle_timeout: cfg.idle_timeout,
    });

    let mut lp = EventLoop::new().map_err(startup("event loop"))?;
    let codec = LineCodec::new(MAX_LINE);
    let on_message = {
        let app = app.clone();
        move |ctx: &mut ConnCtx<'_>, input: &mut InputBuffer| on_message(ctx, input, &app, codec)
    };
    let mut builder = builder
        .io_threads(cfg.io_threads)
        .loops(cfg.loops)
        .loop_sharing(cfg.loop_sharing)
        .on_connection(|conn| {
            if conn.is_connected() {
                log::debug!("{} up", conn.name());
                conn.set_context(Session::default());
            } else {
                log::debug!("{} down", conn.name());
                // Frees the queued commands; jobs in flight find the connection closed.
                let _ = conn.take_context::<Session>();
            }
        })
        .on_message(on_message)
        .on_write_complete({
            // The replies were written: start the commands held back by `OUTPUT_HIGH`.
            let app = app.clone();
            move |ctx| {
                activity::drained(ctx);
                pump(ctx, &app)
            }
        })
        .on_peer_half_close(|ctx| {
            // `nc -N`, or a script that writes its commands and half-closes: answer
            // everything queued first (see `pump`), then close.
            let conn = ctx.connection().clone();
            let _ = conn.with_context(|s: &mut Session| s.peer_done = true);
            activity::close_if_done(ctx);
        })
        .on_shutdown(|ctx| {
            // SIGTERM: take no new commands, but answer those already read (their jobs may
            // be on the workers or committing), then close. The grace period bounds it.
            ctx.stop_reading();
            let conn = ctx.connection().clone();
            let _ = conn.with_context(|s: &mut Session| s.peer_done = true);
            activity::close_if_done(ctx);
        });
    // When the certificate chain stops being valid, for the metrics endpoint.
    let mut cert_expiry = None;
    if let Some((cert, key)) = &cfg.tls {
        let config = duo_net::tls::server_config_from_pem(cert, key).map_err(startup("TLS"))?;
        let expiry = duo_net::tls::chain_expiry(cert).map_err(startup("TLS"))?;
        cert_expiry = expiry.map(|not_after| (cert.as_path(), not_after));
        builder = builder.tls(config);
    }
    if !cfg.idle_timeout.is_zero() {
        builder = builder
            .idle_timeout(cfg.idle_timeout)
            .idle_refresh_on_read(false);
    }
    if worker.is_some() {
        // The other workers accept on the same socket: at its limit this one stops
        // accepting and leaves new connections queued for them.
        // At most: a reader per worker, and a writer per worker (without group commit)
        // or per `--db-writers`.
        let connections = (cfg.workers + cfg.workers.max(cfg.db_writers)) as u64;
        let reserve = WORKER_FD_RESERVE + FDS_PER_DB_CONNECTION * connections;
        let room = duo_supervisor::worker_connection_limit(reserve, None)
            .map_err(startup("worker connection limit"))?;
        builder = builder.max_connections(room).when_full(WhenFull::Pause);
    }
    // From here on the stop signals drain the server (or, before it serves, end it).
    starting.started();
    let server = builder
        .start(&mut lp)
        .map_err(|e| ServeError::Startup(format!("cannot listen on {listen}: {e}")))?;

    process::shutdown_on_signals(
        &mut lp,
        &STOP_SIGNALS,
        server.clone_handle(),
        SHUTDOWN_GRACE,
    )
    .map_err(startup("signalfd"))?;
    if worker.is_some() {
        duo_supervisor::ignore_supervisor_signals(&mut lp).map_err(startup("signalfd"))?;
    }

    let addr = server.endpoint().clone();
    log::info!(
        "bank serving {} on {addr}: {} I/O threads{}, {} workers, group commit {}",
        cfg.db,
        cfg.io_threads,
        if cfg.loops > 0 {
            format!(" running {} loops ({})", cfg.loops, cfg.loop_sharing)
        } else {
            String::new()
        },
        cfg.workers,
        if cfg.group_commit { "on" } else { "off" }
    );
    // Stopped (and its thread joined) when this function returns.
    let endpoint = match worker {
        Some(mut worker) => {
            if let Some(slot) = worker.stats() {
                // The bank publishes no counters, but the row carries this worker's PID
                // (an upgraded supervisor finds an adopted worker's row by it).
                slot.publish(&duo_supervisor::WorkerStats::default());
            }
            // Its own endpoint on loopback, which the supervisor's `--metrics` address
            // gathers.
            let endpoint = match cfg.metrics {
                Some(_) => duo_supervisor::metrics::serve_worker(
                    metrics.endpoint(&server, cert_expiry),
                    &worker,
                )
                .map_err(|e| ServeError::Startup(format!("worker metrics endpoint: {e}")))?,
                None => None,
            };
            // The server accepts from the moment it started: tell the supervisor.
            worker
                .notify_ready()
                .map_err(startup("telling the supervisor"))?;
            log::info!(
                "worker {} (generation {}) ready",
                std::process::id(),
                worker.generation()
            );
            endpoint
        }
        None => {
            // Bound before `listening on` is said: a server that cannot serve its metrics
            // exits without having announced itself.
            let endpoint = match cfg.metrics {
                Some(at) => Some(serve_metrics(at, metrics.endpoint(&server, cert_expiry))?),
                None => None,
            };
            // (Its error says what it could not print, and where.)
            process::announce_listening(&addr).map_err(|e| ServeError::Startup(e.to_string()))?;
            if let Some(running) = &endpoint {
                let mut out = std::io::stdout().lock();
                writeln!(out, "metrics on {}", running.local_addr())
                    .and_then(|()| out.flush())
                    .map_err(startup("stdout"))?;
            }
            endpoint
        }
    };

    let ran = lp.run();
    // Connections are closed (after a second signal: closed here, with their loops) and
    // the I/O threads joined; then the database work already queued is finished, for
    // `DRAIN_LIMIT` at most: its replies go nowhere, so the reads and password checks of
    // closed connections are skipped, and the writes complete. Workers still in a job
    // then are left behind: they end with the process.
    server.stop(&mut lp);
    let drained = app.pool.stop_within(DRAIN_LIMIT);
    let unfinished = (!drained).then(|| {
        format!(
            "the database work queued at the stop did not finish within {DRAIN_LIMIT:?} \
             (a job still running, {} queued): exiting without it; its clients got no reply",
            app.pool.queued()
        )
    });
    ran.map_err(startup("event loop"))?;
    drop(endpoint);
    if let Some(why) = unfinished {
        return Err(ServeError::Unfinished(why));
    }
    log::info!("bank stopped");
    Ok(())
}

/// Starts the metrics endpoint on `addr`.
fn serve_metrics(
    addr: SocketAddr,
    endpoint: duo_metrics::MetricsEndpoint,
) -> Result<MetricsServer, ServeError> {
    endpoint
        .spawn(addr)
        .map_err(|e| ServeError::Startup(format!("metrics endpoint on {addr}: {e}")))
}

fn on_message(ctx: &mut ConnCtx<'_>, input: &mut InputBuffer, app: &Arc<App>, codec: LineCodec) {
    let conn = ctx.connection().clone();
    let discard = conn
        .with_context(|s: &mut Session| s.closing || s.discard_input)
        .unwrap_or(true);
    if discard {
        input.consume_all();
        return;
    }
    let mut items = Vec::new();
    let decoded = codec.decode_all(input, |line| match parse_line(line) {
        Ok(Some(cmd)) => items.push(Pending::Command(cmd)),
        Ok(None) => {}
        Err(error) => items.push(Pending::Invalid {
            error,
            logout: is_login_line(line),
        }),
    });
    // Only whole commands count as activity for the idle timeout: a peer that trickles
    // bytes without finishing a line, or sends blank or invalid lines, is evicted like a
    // silent one (slowloris).
    if items.iter().any(|i| matches!(i, Pending::Command(_))) {
        ctx.refresh_idle();
    }
    let too_long = matches!(decoded, Err(CodecError::LineTooLong { .. }));
    if too_long {
        input.consume_all();
        items.push(Pending::Fatal(ProtoError::new(
            ErrorCode::LineTooLong,
            format!("line exceeds {MAX_LINE} bytes; closing"),
        )));
    }
    let pause = conn
        .with_context(|s: &mut Session| {
            s.discard_input |= too_long;
            s.queue.extend(items);
            let pause = s.queue.len() >= QUEUE_HIGH && !s.paused;
            s.paused |= pause;
            pause
        })
        .unwrap_or(false);
    if pause {
        duo_net::log_limited!(
            log::Level::Debug,
            "{}: {QUEUE_HIGH} commands queued; pausing",
            conn.name()
        );
        ctx.stop_reading();
    }
    pump(ctx, app);
}

/// Answers or dispatches queued commands until one needs a worker (see the module docs).
fn pump(ctx: &mut ConnCtx<'_>, app: &Arc<App>) {
    pump_after(ctx, app, String::new());
}

/// Sends the replies gathered in `out`, if any.
fn flush(ctx: &mut ConnCtx<'_>, out: &mut String) {
    if !out.is_empty() {
        ctx.send(out.as_bytes());
        out.clear();
    }
}

/// [`pump`], after the replies in `out` (made in this callback, not yet sent). The replies
/// made here without a worker join them and go out in one send when the pump stops: a
/// burst of pipelined commands costs one system call, not one per reply. (A worker's
/// reply comes back in a later callback, so the order stays the commands' order.)
fn pump_after(ctx: &mut ConnCtx<'_>, app: &Arc<App>, mut out: String) {
    let conn = ctx.connection().clone();
    loop {
        if ctx.output_len() + out.len() >= OUTPUT_HIGH {
            // The peer is not reading its replies: start nothing more until they drain
            // (`on_write_complete` calls us again). Reading stays paused by the queue. A
            // peer that takes them slowly is not idle meanwhile.
            flush(ctx, &mut out);
            activity::watch_drain(ctx, app);
            return;
        }
        let mut resume = false;
        let mut watch_busy = false;
        let step = conn
            .with_context(|s: &mut Session| {
                let failed_before = s.failed_logins;
                let step = next_step(s, app.group_commit);
                if s.failed_logins > failed_before {
                    app.metrics.login_failed();
                }
                if s.busy && !s.busy_watch && !app.idle_timeout.is_zero() {
                    // A job goes to the workers and no timer watches this connection's
                    // jobs yet (at most one per connection; see `activity::watch_busy`).
                    s.busy_watch = true;
                    watch_busy = true;
                }
                if s.paused && s.queue.len() < QUEUE_LOW {
                    s.paused = false;
                    resume = true;
                }
                step
            })
            .unwrap_or(Step::Idle);
        if resume && !matches!(step, Step::Close(_)) && !peer_done(&conn) {
            ctx.start_reading();
        }
        if watch_busy {
            // (Also if the pool refuses the job: the first look then ends the watch.)
            activity::watch_busy(ctx, app);
        }
        // How many commands the step answers: each gets a refusal if the pool is full.
        let mut answers = 1;
        let submitted = match step {
            Step::Idle => {
                flush(ctx, &mut out);
                activity::close_if_done(ctx);
                return;
            }
            Step::Reply(line) => {
                out.push_str(&line);
                continue;
            }
            Step::Close(line) => {
                out.push_str(&line);
                flush(ctx, &mut out);
                activity::close_gently(ctx);
                return;
            }
            Step::Login { user, password } => spawn(ctx, app, move |app, r| {
                if !r.abandoned() {
                    r.finish(login(app, &user, &password));
                }
            }),
            Step::Register { user, password } => spawn(ctx, app, move |app, r| {
                if !r.abandoned() {
                    register(app, user, &password, r);
                }
            }),
            Step::Balance(id) => spawn(ctx, app, move |app, r| {
                if r.abandoned() {
                    return;
                }
                let reply = match app.store.balance(id) {
                    Ok(b) => ok_line(b),
                    Err(e) => store_failed(&app.metrics, &e),
                };
                r.finish(Completion::reply(reply));
            }),
            Step::History(id, limit) => spawn(ctx, app, move |app, r| {
                if r.abandoned() {
                    return;
                }
                let reply = match app.store.history(id, limit) {
                    Ok(entries) => history_reply(&entries),
                    Err(e) => store_failed(&app.metrics, &e),
                };
                r.finish(Completion::reply(reply));
            }),
            Step::Writes(ops) => {
                answers = ops.len();
                spawn(ctx, app, move |app, r| {
                    let metrics = app.metrics.clone();
                    let owed = ops.len();
                    let r = r.owing(owed);
                    app.store.submit_write(WriteJob {
                        ops,
                        done: Box::new(move |results| {
                            r.finish(write_replies(&metrics, results, owed));
                        }),
                    });
                })
            }
        };
        match submitted {
            Ok(()) => {
                // `busy` was set by `next_step`.
                flush(ctx, &mut out);
                return;
            }
            Err(e) => {
                let _ = conn.with_context(|s: &mut Session| s.busy = false);
                let line = refusal(&e);
                for _ in 0..answers {
                    out.push_str(&line);
                }
            }
        }
    }
}

/// Whether the connection takes no more commands (see [`Session::peer_done`]).
fn peer_done(conn: &TcpConnection) -> bool {
    conn.with_context(|s: &mut Session| s.peer_done)
        .unwrap_or(true)
}

fn refusal(e: &SubmitError) -> String {
    match e {
        SubmitError::Full(_) => err_line(ErrorCode::Busy, "server busy; try again later"),
        SubmitError::Stopped(_) => err_line(ErrorCode::Internal, "server is shutting down"),
    }
}

/// On the loop: a job of this connection finished.
fn complete(ctx: &mut ConnCtx<'_>, app: &Arc<App>, c: Completion) {
    // A peer that never reads its replies is still evicted: `pump` starts no job past
    // `OUTPUT_HIGH`.
    let conn = ctx.connection().clone();
    let mut waiting = false;
    let mut slow = false;
    let close = conn
        .with_context(|s: &mut Session| {
            s.busy = false;
            waiting = !s.queue.is_empty();
            slow = std::mem::take(&mut s.slow_job);
            match c.effect {
                Effect::None => None,
                Effect::LoggedIn(account) => {
                    s.user = Some(account);
                    None
                }
                Effect::LoginFailed => {
                    app.metrics.login_failed();
                    match login_failed(s) {
                        Step::Close(line) => Some(line),
                        _ => None,
                    }
                }
            }
        })
        .ok()
        .flatten();
    activity::completed(ctx, waiting, slow);
    match close {
        Some(line) => {
            ctx.send(line.as_bytes());
            activity::close_gently(ctx);
        }
        None => pump_after(ctx, app, c.reply),
    }
}
