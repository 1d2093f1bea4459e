//! TLS for servers and clients (feature `tls`, on by default), through
//! [rustls](https://docs.rs/rustls) with the `ring` crypto provider.
//!
//! [`ServerBuilder::tls`](crate::ServerBuilder::tls) and
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls) turn it on; the application's
//! callbacks then see plaintext exactly as over plain TCP. This module has the helpers
//! that build the rustls configurations from PEM files ([`server_config_from_pem`],
//! [`client_config_from_pem`]) and re-exports [`rustls`] itself, so that an application
//! uses the same version as duo-net. How TLS runs inside a connection:
//! `crates/net/src/conn/tls.rs`, and `docs/architecture.md` (Transports).
//!
//! # Example: a TLS echo server and a client
//!
//! ```
//! use std::sync::Arc;
//! use duo_net::tls::{self, rustls};
//! use duo_net::{TcpClient, TcpServer};
//! use duo_reactor::EventLoop;
//!
//! // A certificate for "localhost" (made here; a server loads its own from PEM files
//! // with `tls::server_config_from_pem`).
//! let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
//! let cert_der = cert.cert.der().clone();
//! let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
//! let server_config = rustls::ServerConfig::builder_with_provider(tls::provider())
//!     .with_safe_default_protocol_versions()?
//!     .with_no_client_auth()
//!     .with_single_cert(vec![cert_der.clone()], key)?;
//! let mut roots = rustls::RootCertStore::empty();
//! roots.add(cert_der)?;
//! let client_config = tls::client_config(roots)?;
//!
//! let mut lp = EventLoop::new()?;
//! let server = TcpServer::builder("echo", "127.0.0.1:0".parse::<std::net::SocketAddr>()?)
//!     .tls(Arc::new(server_config))
//!     .on_message(|ctx, input| {
//!         ctx.send(input.peek());
//!         input.consume_all();
//!     })
//!     .start(&mut lp)?;
//! let client = TcpClient::builder("hello", server.local_addr())
//!     .tls(client_config, tls::server_name("localhost")?)
//!     .on_connection(|conn| {
//!         if conn.is_connected() {
//!             let _ = conn.send(&b"ping"[..]); // after the handshake
//!         }
//!     })
//!     .on_message(|ctx, input| {
//!         if input.peek() == b"ping" {
//!             ctx.event_loop().quit();
//!         }
//!     })
//!     .connect(&lp.handle());
//! lp.run()?;
//! client.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use crate::conn::TlsInfo;

/// Default of [`ServerBuilder::tls_handshake_timeout`](crate::ServerBuilder::tls_handshake_timeout)
/// and of the client's: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A PEM file is not valid PEM.
    #[error("{}: invalid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{}: no certificate (BEGIN CERTIFICATE) found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no private key.
    #[error("{}: no private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration (a key that does not match the certificate, an
    /// unusable CA certificate, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Not a valid DNS name or IP address to verify a server as.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// The crypto provider duo uses: rustls' `ring` provider (explicit, so that the process
/// default does not matter).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsConfigError {
    let path = path.to_owned();
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsConfigError::Read { path, source },
        source => TlsConfigError::Pem { path, source },
    }
}

/// Every certificate of a PEM file, in file order (a chain: end entity first).
///
/// # Errors
///
/// The file cannot be read, is not PEM, or holds no certificate.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let path = path.as_ref();
    // Read first: a missing file is a read error, not an empty PEM.
    let text = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
///
/// The file cannot be read, is not PEM, or holds no private key.
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let path = path.as_ref();
    let text = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPrivateKey {
            path: path.to_owned(),
        },
        e => pem_error(path, e),
    })
}

/// A server configuration from a certificate chain and its private key in PEM files
/// (no client authentication; TLS 1.3 and 1.2).
///
/// # Errors
///
/// See [`TlsConfigError`].
pub fn server_config_from_pem(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = load_certs(cert_chain)?;
    let key = load_private_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificates in `roots`.
///
/// # Errors
///
/// rustls refused the configuration.
pub fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that trusts the CA certificates of a PEM file.
///
/// # Errors
///
/// See [`TlsConfigError`].
pub fn client_config_from_pem(ca: impl AsRef<Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    client_config(roots)
}

/// `name` (a DNS name or an IP address) as the name a client verifies the server's
/// certificate against.
///
/// # Errors
///
/// [`TlsConfigError::ServerName`] if it is neither.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsConfigError::ServerName(name.to_owned()))
}
