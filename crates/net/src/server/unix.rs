//! Listening on a Unix-domain socket: the stale-file policy at bind, and removing the
//! socket file at stop.
//!
//! # A path that already exists
//!
//! A server that dies without removing its socket file leaves it behind, and `bind` then
//! fails with `EADDRINUSE` although nobody listens. Before binding, the path is looked at
//! (`lstat`, never following a symbolic link):
//!
//! | what is there | what happens |
//! |---|---|
//! | nothing | bind |
//! | a socket, and a connect to it succeeds (or would block: a full backlog) | refused: `AddrInUse`, naming the path; a live server owns it |
//! | a socket, and the connect is refused (no listener) | the stale file is removed, then bind |
//! | anything else (a file, a directory, a symbolic link) | refused: `AddrInUse`, and the path is left as it is |
//!
//! The probe is a real connection: a live server accepts it, counts it (accepted, then
//! closed) and its application sees a connection that opens and closes with no data (no
//! way to ask the kernel whether a path has a listener without connecting to it short
//! of `sock_diag`). A live server of this library logs nothing alarming for it; another
//! kind of server may log a client that went away.
//!
//! The probe and the removal are not atomic: two servers started at the same moment on
//! the same dead path may both find it stale, and the second to bind removes the first's
//! fresh file. Start one server per path.
//!
//! # At stop
//!
//! The server remembers the device and inode of the file its `bind` created, and removes
//! the path at stop only if it is still that file: a successor that already replaced it
//! keeps its own. (The inode cannot have been reused meanwhile: the bound socket holds
//! it, unlinked or not, until it closes, and the check comes first.) A relative path is remembered as absolute (against the working
//! directory at bind), so a change of directory meanwhile does not leave the file behind. Abstract names (`unix:@name`) have no file: the kernel frees the name
//! with the last socket. A server dropped while its main loop does not run keeps that
//! socket until the loop runs the queued stop; a server started on the same loop and name
//! meanwhile runs that stop first ([`release_held_name`]).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Weak};

use duo_reactor::EventLoop;
use parking_lot::Mutex;
use socket2::{Domain, Socket, Type};

use super::accept::BACKLOG;
use super::ServerShared;
use crate::endpoint::Endpoint;

/// The socket file a server created by binding; dropping it (at the server's stop, or
/// when starting fails) removes the file if it is still there.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: Arc<Path>,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    /// Removes the file if it is still the one the bind created (device and inode).
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("cannot remove socket file {}: {e}", self.path.display());
                }
            }
            Ok(_) => log::info!(
                "socket file {} was replaced by another; leaving it",
                self.path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("socket file {}: {e}", self.path.display()),
        }
    }
}

/// Binds and listens on a Unix-domain endpoint (path or abstract name), non-blocking and
/// close-on-exec, after clearing a stale socket file (see the module docs). Returns the
/// socket and, for a path, the file to remove at stop.
pub(super) fn listen_unix(endpoint: &Endpoint) -> io::Result<(Socket, Option<SocketFile>)> {
    let addr = endpoint.to_sock_addr()?;
    if let Some(path) = endpoint.as_path() {
        clear_stale(path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    socket
        .bind(&addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {endpoint}: {e}")))?;
    let file = match endpoint {
        Endpoint::Unix(path) => {
            let m = fs::symlink_metadata(path)?;
            // A relative path is made absolute now, against the directory it was bound
            // in: the process may change its working directory before the stop.
            let path = std::path::absolute(path).map_or_else(|_| path.clone(), Arc::from);
            Some(SocketFile {
                path,
                dev: m.dev(),
                ino: m.ino(),
            })
        }
        _ => None,
    };
    if let Err(e) = socket.listen(BACKLOG) {
        drop(file);
        return Err(io::Error::new(
            e.kind(),
            format!("cannot listen on {endpoint}: {e}"),
        ));
    }
    Ok((socket, file))
}

/// Makes way for a bind on `path`: nothing there, or a stale socket (removed). A live
/// server's socket and anything that is not a socket are refused with `AddrInUse`.
fn clear_stale(path: &Path) -> io::Result<()> {
    let in_use = |why: String| io::Error::new(io::ErrorKind::AddrInUse, why);
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("unix:{shown}: {e}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(in_use(format!(
            "unix:{shown} exists and is not a socket; not replacing it"
        )));
    }
    // Non-blocking, so that a live server with a full backlog answers `EAGAIN` at once
    // instead of holding us up.
    let probe = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    match probe.connect(&duo_sys::unix_addr(path.as_os_str().as_bytes())?) {
        Ok(()) => Err(in_use(format!(
            "unix:{shown} is in use: a server is listening on it"
        ))),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(in_use(format!(
            "unix:{shown} is in use: a server is listening on it (its backlog is full)"
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path)
                .map_err(|e| io::Error::new(e.kind(), format!("unix:{shown}: {e}")))?;
            log::info!("removed the stale socket file {shown} (nobody listened on it)");
            Ok(())
        }
        Err(e) => Err(in_use(format!(
            "unix:{shown} exists and cannot be probed ({e}); not replacing it"
        ))),
    }
}

/// Servers on an abstract name whose stop is queued to their main loop, which has not
/// run it yet: their listening socket (on that loop) still holds the name, and the
/// kernel frees an abstract name only with its last socket (a path's file is removed at
/// once). See [`release_held_name`].
static HELD_NAMES: Mutex<Vec<Weak<ServerShared>>> = Mutex::new(Vec::new());

/// Whether `shared` still holds its name on its main loop: alive, its acceptor not yet
/// removed.
fn holds_name(shared: &ServerShared) -> bool {
    !shared.acceptors.lock().is_empty()
}

/// Notes a server on an abstract name whose stop was just queued to its main loop (a
/// drop, or a stop given another loop), while that loop still holds its listener.
pub(super) fn note_held_name(shared: &Arc<ServerShared>) {
    if !matches!(shared.endpoint, Endpoint::Abstract(_)) {
        return;
    }
    let mut held = HELD_NAMES.lock();
    held.retain(|w| w.upgrade().is_some_and(|s| holds_name(&s)));
    held.push(Arc::downgrade(shared));
}

/// Before a server binds `endpoint` on `main`: runs now the queued stops of the servers
/// of this loop that still hold that abstract name, so that a server dropped and started
/// again on the same loop (without the loop running in between) can bind it, as it can a
/// path or a TCP port. The stop is the one queued anyway (idempotent); a server whose
/// main loop is another keeps the name until that loop runs.
pub(super) fn release_held_name(main: &mut EventLoop, endpoint: &Endpoint) {
    if !matches!(endpoint, Endpoint::Abstract(_)) {
        return;
    }
    let here = main.handle();
    let due: Vec<Arc<ServerShared>> = {
        let mut held = HELD_NAMES.lock();
        held.retain(|w| w.upgrade().is_some_and(|s| holds_name(&s)));
        held.iter()
            .filter_map(Weak::upgrade)
            .filter(|s| s.endpoint == *endpoint && s.main.same_loop(&here))
            .collect()
    };
    for shared in due {
        super::stop_on_main(main, &shared);
    }
}
