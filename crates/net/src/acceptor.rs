//! [`Acceptor`]: the listening socket of a server, on its main loop.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use duo_reactor::{Channel, EventLoop, Handler};
use socket2::{Domain, SockAddr, Socket, Type};

/// The backlog passed to `listen`; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// How long accepting pauses when the spare-descriptor trick is not available.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the acceptor does with each accepted socket.
pub(crate) type NewConnection = Box<dyn FnMut(&mut EventLoop, Socket, SocketAddr)>;

/// Options for the listening socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenOptions {
    pub(crate) reuse_port: bool,
}

/// Binds and listens on `addr` (IPv4 or IPv6) with `SO_REUSEADDR` (and `SO_REUSEPORT` if
/// asked), non-blocking and close-on-exec.
pub(crate) fn listen(addr: SocketAddr, opts: ListenOptions) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// The handler of a listening socket: level-triggered, accepts until `EAGAIN` on every
/// event (seed 004's bug of accepting one connection per event, and losing the rest under
/// edge triggering, cannot happen), and survives descriptor exhaustion.
///
/// # `EMFILE`
///
/// When `accept4` fails with `EMFILE`/`ENFILE`, the pending connection stays in the backlog
/// and a level-triggered listener would wake the loop again at once, forever: a busy spin.
/// The acceptor keeps one spare descriptor (`/dev/null`); on exhaustion it closes the spare,
/// accepts the connection, closes it (the peer sees an orderly close instead of hanging),
/// and reopens the spare. If even that fails, it stops listening for a short pause.
pub(crate) struct Acceptor {
    spare: Option<File>,
    on_new: NewConnection,
    /// Called once per exhaustion event (for counting).
    on_exhausted: Box<dyn FnMut()>,
    local: SocketAddr,
}

impl Acceptor {
    pub(crate) fn new(
        local: SocketAddr,
        on_new: NewConnection,
        on_exhausted: Box<dyn FnMut()>,
    ) -> Acceptor {
        Acceptor {
            spare: open_spare(),
            on_new,
            on_exhausted,
            local,
        }
    }

    fn exhausted(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        match self.spare.take() {
            Some(spare) => {
                drop(spare);
                // Linux allocates the descriptor before it looks at the backlog, so
                // EMFILE comes even when nobody is waiting: only go on accepting if a
                // connection was really there to shed, or the loop never ends.
                let shed = match duo_sys::accept4(ch.fd()) {
                    Ok((fd, _)) => {
                        drop(fd);
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => {
                        // Another thread took the freed descriptor, say: pause.
                        (self.on_exhausted)();
                        log::warn!(
                            "accept on {} with the spare freed: {e}; pausing",
                            self.local
                        );
                        self.spare = open_spare();
                        pause(lp, ch);
                        return false;
                    }
                };
                self.spare = open_spare();
                if shed {
                    (self.on_exhausted)();
                    log::warn!(
                        "accept on {}: out of file descriptors; shed one connection",
                        self.local
                    );
                }
                shed
            }
            None => {
                (self.on_exhausted)();
                log::warn!(
                    "accept on {}: out of file descriptors and no spare; pausing",
                    self.local
                );
                self.spare = open_spare();
                pause(lp, ch);
                false
            }
        }
    }
}

/// Stops accepting for [`ACCEPT_PAUSE`] so that a persistent error cannot spin the loop.
fn pause(lp: &mut EventLoop, ch: &mut Channel) {
    ch.disable_reading();
    let token = ch.token();
    lp.run_after(ACCEPT_PAUSE, move |lp| {
        lp.with_channel(token, |_, ch, _| ch.enable_reading());
    });
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

impl Handler for Acceptor {
    fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        loop {
            match duo_sys::accept4(ch.fd()) {
                Ok((fd, peer)) => {
                    let Some(peer) = peer.as_socket() else {
                        continue;
                    };
                    (self.on_new)(lp, Socket::from(fd), peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if duo_sys::is_fd_exhaustion(&e) => {
                    if !self.exhausted(lp, ch) {
                        return;
                    }
                }
                Err(e) => {
                    log::error!("accept on {}: {e}; pausing", self.local);
                    pause(lp, ch);
                    return;
                }
            }
            if ch.is_removed() {
                return;
            }
        }
    }
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("local", &self.local)
            .field("spare", &self.spare.is_some())
            .finish()
    }
}
