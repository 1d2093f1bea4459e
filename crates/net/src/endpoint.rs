//! [`Endpoint`]: where a server listens or a client connects: a TCP address, a
//! Unix-domain socket path, or a Linux abstract Unix-domain name.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use socket2::SockAddr;

/// How the empty abstract name displays (and parses): `unix:@` alone is refused.
const EMPTY_ABSTRACT: &str = "(empty)";

/// How an unnamed socket displays (and parses).
const UNNAMED: &str = "(unnamed)";

/// The longest path a Unix-domain address holds: all of `sun_path` (108 bytes; Linux
/// takes a path that fills it with no terminating NUL, so a peer may show up with one).
const PATH_MAX: usize = duo_sys::SUN_PATH_LEN;

/// The longest abstract name a Unix-domain address holds (`sun_path` less the leading NUL).
const ABSTRACT_MAX: usize = duo_sys::SUN_PATH_LEN - 1;

/// A stream endpoint: an IPv4/IPv6 address (TCP), a Unix-domain socket path, or an
/// abstract Unix-domain name (Linux only: no file, gone with the last socket).
///
/// Parsed from and displayed as `127.0.0.1:7000`, `[::1]:7000`, `unix:/run/echo.sock`,
/// `unix:@echo` (bytes of a path or name that are not printable ASCII, the backslash, and
/// a space that ends it, as `\xNN`, which the parser reads back). Two forms that are not
/// something to listen on or connect to read back too: `unix:(unnamed)`, a socket with
/// no address, and `unix:@(empty)`, the empty abstract name (Linux lets a socket bind
/// it, so a peer may show up with it; `unix:@` itself is refused, as a likely mistake).
/// A server or client given either fails to start (`InvalidInput`).
/// A path `(unnamed)` or a name `(empty)` shows with its `(` as `\x28`. Every server and client
/// builder takes one (`impl Into<Endpoint>`; a [`SocketAddr`] converts), and connections
/// report theirs ([`TcpConnection::peer_endpoint`](crate::TcpConnection::peer_endpoint)).
///
/// Cloning is cheap: names are reference-counted, so a server hands its path to every
/// connection without copying it.
///
/// # Example
///
/// ```
/// use duo_net::Endpoint;
///
/// let tcp: Endpoint = "127.0.0.1:7000".parse()?;
/// assert_eq!(tcp.as_inet(), Some("127.0.0.1:7000".parse()?));
///
/// let path: Endpoint = "unix:/tmp/echo.sock".parse()?;
/// assert!(path.is_unix());
/// assert_eq!(path.to_string(), "unix:/tmp/echo.sock");
///
/// let name: Endpoint = "unix:@echo".parse()?;
/// assert_eq!(name, Endpoint::abstract_name("echo")?);
/// assert_eq!(name.to_string(), "unix:@echo");
///
/// assert!("unix:".parse::<Endpoint>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address (IPv4 or IPv6).
    Inet(SocketAddr),
    /// A Unix-domain socket bound to a path in the file system.
    Unix(Arc<Path>),
    /// A Linux abstract Unix-domain name (the bytes after the leading NUL; no file).
    Abstract(Arc<[u8]>),
    /// A Unix-domain socket with no address: the usual peer of a server's connection (a
    /// client that connects without binding first). Displays as `unix:(unnamed)`, which
    /// reads back as this; not something to listen on or connect to.
    UnixUnnamed,
}

/// Why a string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseEndpointError {
    /// Neither `unix:...` nor an IP address with a port (`127.0.0.1:7000`, `[::1]:7000`).
    #[error("{0:?} is not an address (expected HOST:PORT, [IPv6]:PORT, unix:/path or unix:@name)")]
    NotAnAddress(String),
    /// `unix:` or `unix:@` with nothing after it.
    #[error("{0:?}: the Unix-domain address is empty")]
    Empty(String),
    /// A path or name longer than a Unix-domain address holds (a path 108 bytes, an
    /// abstract name 107).
    #[error("{0:?}: a Unix-domain address holds a path of at most {PATH_MAX} bytes, an abstract name of at most {ABSTRACT_MAX}")]
    TooLong(String),
    /// A path with a NUL byte.
    #[error("{0:?}: a Unix-domain path cannot contain a NUL byte")]
    Nul(String),
    /// A path that ends in `/`: it names a directory, where no socket can be bound or
    /// reached (`bind` fails with `ENOENT`, `connect` with `ENOTDIR`).
    #[error("{0:?}: a Unix-domain socket path ends in '/' (a socket is a file, not a directory)")]
    TrailingSlash(String),
    /// A form only a peer shows up with (`unix:(unnamed)`, `unix:@(empty)`), given where
    /// an address to listen on or connect to is wanted
    /// ([`Endpoint::parse_address`]).
    #[error("{0:?} is not an address to listen on or connect to (a peer's, read back)")]
    PeerOnly(String),
}

/// Why a string does not resolve to an address ([`Endpoint::resolve`], [`resolve_inet`]).
#[derive(Debug, thiserror::Error)]
pub enum ResolveEndpointError {
    /// A `unix:...` address that does not parse.
    #[error(transparent)]
    Parse(#[from] ParseEndpointError),
    /// An IPv6 address with a port but no brackets (`::1:7000` is itself an address:
    /// `[::1]:7000` is meant).
    #[error("`{0}` is not a HOST:PORT address: an IPv6 address goes in brackets before its port, as [::1]:7000")]
    Unbracketed(String),
    /// Not `HOST:PORT`, or the host name did not resolve (the lookup's error).
    #[error("`{addr}` is not a HOST:PORT address: {source}")]
    Lookup {
        /// The string given.
        addr: String,
        /// What the lookup said.
        source: io::Error,
    },
    /// The host name resolved to no address.
    #[error("`{0}` resolves to no address")]
    NoAddress(String),
}

/// `HOST:PORT` as an IP address and port (`127.0.0.1:7000`, `[::1]:7000`), or a host name
/// and port (`localhost:7000`) resolved to its first address (`getaddrinfo`, through
/// [`ToSocketAddrs`](std::net::ToSocketAddrs): it blocks, so call it at start-up, not on
/// a loop). An IPv6 address goes in brackets before its port: `::1:7000` is refused with
/// [`ResolveEndpointError::Unbracketed`] rather than looked up.
///
/// # Errors
///
/// [`ResolveEndpointError`]: `Unbracketed`, `Lookup` (no port, a bad port, a name that
/// does not resolve), `NoAddress`.
pub fn resolve_inet(s: &str) -> Result<SocketAddr, ResolveEndpointError> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if s.matches(':').count() > 1 && !s.starts_with('[') {
        return Err(ResolveEndpointError::Unbracketed(s.to_owned()));
    }
    std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|source| ResolveEndpointError::Lookup {
            addr: s.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| ResolveEndpointError::NoAddress(s.to_owned()))
}

impl Endpoint {
    /// A Unix-domain socket path (checked: not empty, no NUL, at most 108 bytes, not
    /// ending in `/`).
    pub fn unix(path: impl AsRef<Path>) -> Result<Endpoint, ParseEndpointError> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        let shown = || path.display().to_string();
        if bytes.is_empty() {
            return Err(ParseEndpointError::Empty(shown()));
        }
        if bytes.contains(&0) {
            return Err(ParseEndpointError::Nul(shown()));
        }
        if bytes.len() > PATH_MAX {
            return Err(ParseEndpointError::TooLong(shown()));
        }
        if bytes.ends_with(b"/") {
            return Err(ParseEndpointError::TrailingSlash(shown()));
        }
        Ok(Endpoint::Unix(Arc::from(path)))
    }

    /// An abstract Unix-domain name (checked: not empty, at most 107 bytes).
    pub fn abstract_name(name: impl AsRef<[u8]>) -> Result<Endpoint, ParseEndpointError> {
        let name = name.as_ref();
        let shown = || String::from_utf8_lossy(name).into_owned();
        if name.is_empty() {
            return Err(ParseEndpointError::Empty(shown()));
        }
        if name.len() > ABSTRACT_MAX {
            return Err(ParseEndpointError::TooLong(shown()));
        }
        Ok(Endpoint::Abstract(Arc::from(name)))
    }

    /// The TCP address, if this is one.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Inet(addr) => Some(*addr),
            _ => None,
        }
    }

    /// The socket file's path, for a path-bound Unix-domain endpoint.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Endpoint::Unix(path) => Some(path),
            _ => None,
        }
    }

    /// Parses `s` as [`FromStr`] does, refusing the forms that are not an
    /// [address](Endpoint::is_address) (`unix:(unnamed)`, `unix:@(empty)`:
    /// [`ParseEndpointError::PeerOnly`]): for a command line's `--listen` or `--connect`.
    ///
    /// # Errors
    ///
    /// As [`FromStr`], and `PeerOnly`.
    pub fn parse_address(s: &str) -> Result<Endpoint, ParseEndpointError> {
        let endpoint: Endpoint = s.parse()?;
        if !endpoint.is_address() {
            return Err(ParseEndpointError::PeerOnly(s.to_owned()));
        }
        Ok(endpoint)
    }

    /// Parses an address to listen on or connect to as
    /// [`parse_address`](Endpoint::parse_address) does, and also `HOST:PORT` with a host
    /// name (`localhost:7000`), resolved to its first address ([`resolve_inet`]): for a
    /// command line's `--listen`. The lookup blocks: call it at start-up, not on a loop.
    ///
    /// ```
    /// use duo_net::Endpoint;
    ///
    /// assert_eq!(Endpoint::resolve("127.0.0.1:7000")?.to_string(), "127.0.0.1:7000");
    /// assert!(Endpoint::resolve("localhost:7000")?.as_inet().is_some());
    /// assert!(Endpoint::resolve("::1:7000").is_err()); // brackets: [::1]:7000
    /// # Ok::<(), duo_net::ResolveEndpointError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`parse_address`](Endpoint::parse_address) for `unix:...`; as [`resolve_inet`]
    /// for the rest.
    pub fn resolve(s: &str) -> Result<Endpoint, ResolveEndpointError> {
        if s.starts_with("unix:") {
            return Ok(Endpoint::parse_address(s)?);
        }
        resolve_inet(s).map(Endpoint::Inet)
    }

    /// Whether a server can listen on this endpoint or a client connect to it: every
    /// IP address and port, a path, a non-empty abstract name; not the forms only a peer
    /// shows up with, [`Endpoint::UnixUnnamed`] and the empty abstract name
    /// (`unix:(unnamed)`, `unix:@(empty)`), which binding or connecting refuses
    /// (`InvalidInput`). For a command line that should refuse them as a usage error.
    ///
    /// ```
    /// use duo_net::Endpoint;
    ///
    /// assert!("unix:@echo".parse::<Endpoint>()?.is_address());
    /// assert!(!"unix:(unnamed)".parse::<Endpoint>()?.is_address());
    /// # Ok::<(), duo_net::ParseEndpointError>(())
    /// ```
    pub fn is_address(&self) -> bool {
        match self {
            Endpoint::Inet(_) | Endpoint::Unix(_) => true,
            Endpoint::Abstract(name) => !name.is_empty(),
            Endpoint::UnixUnnamed => false,
        }
    }

    /// Whether this is a Unix-domain endpoint (path, abstract or unnamed).
    pub fn is_unix(&self) -> bool {
        !matches!(self, Endpoint::Inet(_))
    }

    /// The address in the form the socket calls take.
    pub(crate) fn to_sock_addr(&self) -> io::Result<SockAddr> {
        match self {
            Endpoint::Inet(addr) => Ok(SockAddr::from(*addr)),
            // Not `SockAddr::unix`, which stops a path at 107 bytes.
            Endpoint::Unix(path) => duo_sys::unix_addr(path.as_os_str().as_bytes()),
            // `unix:@(empty)`, a peer's address read back: refused as `unix:@` is (and
            // `abstract_name("")`), a likely mistake rather than the one system-wide name.
            Endpoint::Abstract(name) if name.is_empty() => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the empty abstract name (unix:@(empty)) is not an address to bind or connect to",
            )),
            Endpoint::Abstract(name) => {
                // A leading NUL byte makes it abstract (Linux's convention).
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name);
                duo_sys::unix_addr(&bytes)
            }
            Endpoint::UnixUnnamed => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unnamed Unix-domain socket has no address to bind or connect to",
            )),
        }
    }

    /// The endpoint of a socket address the kernel returned (`accept`, `getsockname`);
    /// `None` for families other than IPv4, IPv6 and Unix.
    pub(crate) fn from_sock_addr(addr: &SockAddr) -> Option<Endpoint> {
        if let Some(inet) = addr.as_socket() {
            return Some(Endpoint::Inet(inet));
        }
        if addr.domain() != socket2::Domain::UNIX {
            return None;
        }
        if let Some(path) = addr.as_pathname() {
            return Some(Endpoint::Unix(Arc::from(path)));
        }
        if let Some(name) = addr.as_abstract_namespace() {
            return Some(Endpoint::Abstract(Arc::from(name)));
        }
        Some(Endpoint::UnixUnnamed)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Inet(addr)
    }
}

impl From<SocketAddrV4> for Endpoint {
    fn from(addr: SocketAddrV4) -> Endpoint {
        Endpoint::Inet(addr.into())
    }
}

impl From<SocketAddrV6> for Endpoint {
    fn from(addr: SocketAddrV6) -> Endpoint {
        Endpoint::Inet(addr.into())
    }
}

impl PartialEq<SocketAddr> for Endpoint {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.as_inet() == Some(*other)
    }
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    /// `HOST:PORT` with an IP address (`127.0.0.1:7000`, `[::1]:7000`), `unix:/path`
    /// (a relative path is allowed: `unix:echo.sock`; not one that ends in `/`) or
    /// `unix:@name`. In a path or name, `\xNN` (two hex digits) is the byte `NN`, as
    /// [`Display`](fmt::Display) writes the bytes that are not printable ASCII; any other
    /// backslash is itself. Exactly `unix:(unnamed)` is [`Endpoint::UnixUnnamed`] and
    /// exactly `unix:@(empty)` the empty abstract name, as they display.
    fn from_str(s: &str) -> Result<Endpoint, ParseEndpointError> {
        let with_context = |e: ParseEndpointError| match e {
            ParseEndpointError::Empty(_) => ParseEndpointError::Empty(s.to_owned()),
            ParseEndpointError::TooLong(_) => ParseEndpointError::TooLong(s.to_owned()),
            ParseEndpointError::Nul(_) => ParseEndpointError::Nul(s.to_owned()),
            ParseEndpointError::TrailingSlash(_) => ParseEndpointError::TrailingSlash(s.to_owned()),
            other => other,
        };
        match s.strip_prefix("unix:") {
            Some(UNNAMED) => Ok(Endpoint::UnixUnnamed),
            Some(rest) if rest.strip_prefix('@') == Some(EMPTY_ABSTRACT) => {
                Ok(Endpoint::Abstract(Arc::from(&b""[..])))
            }
            Some(rest) => match rest.strip_prefix('@') {
                Some(name) => Endpoint::abstract_name(unescape(name)).map_err(with_context),
                None => Endpoint::unix(PathBuf::from(std::ffi::OsString::from_vec(unescape(rest))))
                    .map_err(with_context),
            },
            None => s
                .parse::<SocketAddr>()
                .map(Endpoint::Inet)
                .map_err(|_| ParseEndpointError::NotAnAddress(s.to_owned())),
        }
    }
}

impl fmt::Display for Endpoint {
    /// The form [`FromStr`] reads back: `127.0.0.1:7000`, `[::1]:7000`, `unix:/path`,
    /// `unix:@name`; an unnamed socket shows as `unix:(unnamed)` and the empty abstract
    /// name as `unix:@(empty)` (and a path `(unnamed)` or a name `(empty)` with its `(`
    /// as `\x28`, so as to read back as itself). The bytes of a path or
    /// name that are not printable ASCII (a newline, UTF-8, bytes that are not UTF-8), and
    /// the backslash, are written as `\xNN` (and the `@` that begins a relative path, not
    /// an abstract name, and a space that ends the path or name): the display is one line
    /// of printable ASCII that does not end in a blank (a server's `listening on` line
    /// stays one line, and a reader that trims it keeps the whole address) and reads back
    /// as the same bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => {
                f.write_str("unix:")?;
                match path.as_os_str().as_bytes() {
                    // A relative path `@x` is not the abstract name `x`.
                    [b'@', rest @ ..] => {
                        f.write_str("\\x40")?;
                        write_escaped(f, rest)
                    }
                    // The path `(unnamed)` is not the unnamed socket.
                    bytes if bytes == UNNAMED.as_bytes() => {
                        f.write_str("\\x28")?;
                        write_escaped(f, &bytes[1..])
                    }
                    bytes => write_escaped(f, bytes),
                }
            }
            Endpoint::Abstract(name) => {
                f.write_str("unix:@")?;
                match &name[..] {
                    [] => f.write_str(EMPTY_ABSTRACT),
                    // The name `(empty)` is not the empty name.
                    bytes if bytes == EMPTY_ABSTRACT.as_bytes() => {
                        f.write_str("\\x28")?;
                        write_escaped(f, &bytes[1..])
                    }
                    bytes => write_escaped(f, bytes),
                }
            }
            Endpoint::UnixUnnamed => write!(f, "unix:{UNNAMED}"),
        }
    }
}

/// Writes the bytes of a path or name as [`unescape`] reads them back: printable ASCII
/// (and the space) as is, any other byte and the backslash as `\xNN`. A space that ends
/// the bytes is written `\x20` too: the address often ends a line (`listening on ADDR`),
/// and line readers drop the blanks there (the shell's `read`, `str::trim`).
fn write_escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for (i, &b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        if (b.is_ascii_graphic() && b != b'\\') || (b == b' ' && !last) {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// The bytes of a path or name as written: `\xNN` (two hex digits, either case) is the
/// byte `NN`; everything else, a backslash not followed by such digits too, is itself.
fn unescape(s: &str) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let (Some(hi), Some(lo)) = (hex(bytes.get(i + 2)), hex(bytes.get(i + 3))) {
                out.push((hi * 16 + lo) as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_reads_back_from_its_display() {
        for s in [
            "127.0.0.1:7000",
            "[::1]:7000",
            "0.0.0.0:0",
            "unix:/tmp/echo.sock",
            "unix:relative.sock",
            "unix:@echo",
            "unix:@with space",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
        }
    }

    #[test]
    fn bad_forms_are_refused_with_the_input_named() {
        for (s, want) in [
            ("localhost:7000", "not an address"),
            ("7000", "not an address"),
            ("unix:", "empty"),
            ("unix:@", "empty"),
        ] {
            let err = s.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(s), "{s}: {err}");
        }
        let long = format!("unix:/{}", "x".repeat(108));
        let err = long.parse::<Endpoint>().unwrap_err().to_string();
        assert!(err.contains("at most 108 bytes"), "{err}");
        assert!(format!("unix:/{}", "x".repeat(107))
            .parse::<Endpoint>()
            .is_ok());
        assert!(format!("unix:@{}", "x".repeat(107))
            .parse::<Endpoint>()
            .is_ok());
    }

    #[test]
    fn socket_addresses_round_trip() {
        for s in ["127.0.0.1:7000", "unix:/tmp/x.sock", "unix:@duo-x"] {
            let e: Endpoint = s.parse().unwrap();
            let back = Endpoint::from_sock_addr(&e.to_sock_addr().unwrap()).unwrap();
            assert_eq!(back, e);
        }
        assert!(Endpoint::UnixUnnamed.to_sock_addr().is_err());
        assert!(Endpoint::Abstract(Arc::from(&b""[..]))
            .to_sock_addr()
            .is_err());
    }

    #[test]
    fn non_printable_abstract_bytes_are_escaped() {
        let e = Endpoint::abstract_name(b"a\x01\n").unwrap();
        assert_eq!(e.to_string(), "unix:@a\\x01\\x0a");
    }
}
