//! What every server program built on the supervisor needs besides it: what the process
//! inherited from its parent ([`inherit_at_start`]), the listening socket the supervisor
//! binds for its workers ([`bind_listener`]), a supervisor whose workers are the program
//! itself ([`supervise_this_program`]), and how many connections one worker may hold
//! ([`worker_connection_limit`]).

use std::io;
use std::net::{SocketAddr, TcpListener};

use duo_sys::socket2::{Domain, Socket, Type};

use crate::{Supervisor, SupervisorConfig, SupervisorError, Worker, WorkerCommand};

/// What a server process inherited from its parent ([`inherit_at_start`]).
#[derive(Debug)]
pub struct Inherited<L> {
    /// The [worker protocol](crate::protocol) of a supervisor: this process is one of its
    /// workers ([`Worker::inherit`]).
    pub worker: Option<Worker>,
    /// The listening socket systemd's socket activation passed (`LISTEN_FDS`), if any;
    /// or why what it passed cannot be served (its variables or descriptors are
    /// malformed, or there are several sockets): a message for the user, who should get
    /// a usage error when the program is to serve, and only then (`--help` works all the
    /// same).
    pub listener: Result<Option<L>, String>,
}

/// Takes what this process inherited, first thing in `main`, before another thread could
/// read the environment: the worker protocol of a supervisor ([`Worker::inherit`]), then
/// systemd's socket activation through `listen_fds` (`duo_sys::listen_fds` for a TCP
/// socket, `duo_sys::listen_fds_any` for TCP or Unix-domain), of which a server takes
/// exactly one socket. `program` names the program in the messages.
///
/// What socket activation passed is taken (its variables removed) either way, but a
/// refusal of it is left in [`Inherited::listener`], for the program to report when it
/// is about to serve: before the command line is parsed, it would fail `--help` too.
///
/// # Errors
///
/// A message for the user, who should get a usage error: the worker protocol's variables
/// or descriptors are malformed (a supervisor started this process).
///
/// # Example
///
/// ```
/// // Neither a worker nor socket-activated: nothing inherited.
/// let inherited = duo_supervisor::inherit_at_start("demo", duo_sys::listen_fds)?;
/// assert!(inherited.worker.is_none() && inherited.listener?.is_none());
/// # Ok::<(), String>(())
/// ```
pub fn inherit_at_start<L, E: std::fmt::Display>(
    program: &str,
    listen_fds: impl FnOnce() -> Result<Vec<L>, E>,
) -> Result<Inherited<L>, String> {
    let worker = Worker::inherit().map_err(|e| format!("{program} worker: {e}"))?;
    let listener = match listen_fds() {
        Err(e) => Err(format!("{program}: socket activation: {e}")),
        Ok(sockets) if sockets.len() > 1 => Err(format!(
            "{program}: socket activation passed {} sockets; {program} serves exactly one",
            sockets.len()
        )),
        Ok(mut sockets) => Ok(sockets.pop()),
    };
    Ok(Inherited { worker, listener })
}

/// Backlog of a socket from [`bind_listener`]: connections queue there while workers are
/// replaced (a reload, a crashed worker), so it is deeper than a single server's.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds `addr` for a supervisor's workers: `SO_REUSEADDR` (a restarted supervisor binds
/// again at once), a backlog of [`LISTEN_BACKLOG`], close-on-exec (the supervisor hands
/// the socket to its workers itself, by the [worker protocol](crate::protocol)). Port 0
/// picks a free port: read it with [`TcpListener::local_addr`].
///
/// In the check an upgrade runs before it executes the new binary
/// ([`is_upgrade_check`](crate::is_upgrade_check)) the socket is created but neither bound
/// nor listening: the serving image holds `addr`, and the check must never take a
/// connection.
///
/// # Errors
///
/// The address is in use or not ours to bind (the message names `addr`), or the socket
/// could not be created.
///
/// # Example
///
/// ```
/// let listener = duo_supervisor::bind_listener("127.0.0.1:0".parse().unwrap())?;
/// assert_ne!(listener.local_addr()?.port(), 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    socket.set_reuse_address(true)?;
    if crate::is_upgrade_check() {
        return Ok(socket.into());
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The listening socket a supervisor hands its workers, and its address: `inherited` (from
/// socket activation) if there is one, else `addr` bound by [`bind_listener`].
///
/// # Errors
///
/// Binding fails (the message names the address), or the socket's address cannot be read.
pub fn inherited_or_bound(
    inherited: Option<TcpListener>,
    addr: SocketAddr,
) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = match inherited {
        Some(l) => l,
        None => bind_listener(addr)?,
    };
    let local = listener
        .local_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("the listening socket's address: {e}")))?;
    Ok((listener, local))
}

/// A supervisor of `workers` workers that run this program again
/// ([`WorkerCommand::this_program`], with this process's arguments: the worker finds the
/// [worker protocol](crate::protocol) in its environment) on `listener`, with `configure`'s
/// changes to the default [`SupervisorConfig`]. First raises this process's open-file
/// limit to its hard limit, which the workers inherit (a failure is logged: the workers
/// then hold fewer connections).
///
/// # Errors
///
/// [`SupervisorError::Config`] for a refused configuration (0 workers, more than the
/// descriptor budget allows), or [`SupervisorError::Io`] if the path of this program is
/// unknown.
pub fn supervise_this_program(
    workers: usize,
    listener: TcpListener,
    configure: impl FnOnce(&mut SupervisorConfig),
) -> Result<Supervisor, SupervisorError> {
    let command = WorkerCommand::this_program().map_err(|source| SupervisorError::Io {
        what: "finding this program's binary",
        source,
    })?;
    let mut config = SupervisorConfig::new(workers, command);
    configure(&mut config);
    if let Err(e) = duo_sys::raise_fd_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    Supervisor::new(config, vec![listener])
}

/// How many connections a worker may hold at once: its soft open-file limit less
/// `reserve` descriptors it keeps for itself (loops, timers, signals, files, database
/// connections, standard streams). Capped by `wanted` (a `--max-conns`) if given.
///
/// A worker shares its listening socket with the others, so at this limit it should stop
/// accepting (`duo_net::WhenFull::Pause`) and leave new connections to them, rather than
/// accept and close them. If the limit cannot be read, `wanted` (or no limit) is returned
/// and a warning logged.
///
/// # Errors
///
/// `InvalidInput` if the limit leaves no room beyond `reserve` (the message says to raise
/// `ulimit -n`).
pub fn worker_connection_limit(reserve: u64, wanted: Option<usize>) -> io::Result<usize> {
    let room = match duo_sys::fd_limit() {
        Ok((soft, _)) => room_below(soft, reserve)?,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}");
            usize::MAX
        }
    };
    Ok(wanted.map_or(room, |n| n.min(room)))
}

/// The descriptors below `soft` beyond `reserve`.
fn room_below(soft: u64, reserve: u64) -> io::Result<usize> {
    if soft <= reserve {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the open-file limit ({soft}) leaves a worker no room for connections \
                 ({reserve} descriptors are its own): raise `ulimit -n`"
            ),
        ));
    }
    Ok(usize::try_from(soft - reserve).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_a_free_port_listening_and_close_on_exec() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let socket = Socket::from(listener);
        assert!(socket.reuse_address().unwrap());
        assert!(socket.is_listener().unwrap());
        assert!(close_on_exec(&socket), "close-on-exec");
        let listener: TcpListener = socket.into();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
    }

    /// Whether `fd` has `O_CLOEXEC` (`02000000`), from the octal `flags` of its fdinfo.
    fn close_on_exec(fd: &impl std::os::fd::AsRawFd) -> bool {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u64::from_str_radix(f.trim(), 8).ok())
            .expect("flags in fdinfo");
        flags & 0o2_000_000 != 0
    }

    #[test]
    fn an_address_in_use_is_named_in_the_error() {
        let first = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_listener(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn connection_room_is_the_limit_less_the_reserve() {
        assert_eq!(room_below(1024, 64).unwrap(), 960);
        let err = room_below(64, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("ulimit -n"), "{err}");
        assert_eq!(
            room_below(10, 64).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_wanted_limit_caps_the_room() {
        assert_eq!(worker_connection_limit(0, Some(3)).unwrap(), 3);
        let room = worker_connection_limit(0, None).unwrap();
        assert!(room >= 3);
    }
}
