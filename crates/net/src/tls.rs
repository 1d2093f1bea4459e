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
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};

pub use crate::conn::TlsInfo;
pub use validity::Validity;

mod validity;

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
    /// A PEM file holds a private key encrypted with a passphrase (`BEGIN ENCRYPTED
    /// PRIVATE KEY`, or `Proc-Type: 4,ENCRYPTED`): only unencrypted keys are read.
    #[error(
        "{}: the private key is encrypted (with a passphrase); give an unencrypted one \
         (`openssl pkey -in KEY -out PLAIN-KEY` asks for the passphrase and writes it)",
        path.display()
    )]
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds a private key of a kind the crypto provider cannot sign with (DSA,
    /// Ed448, an ECDSA curve other than P-256 and P-384, an OpenSSH key file, ...).
    #[error(
        "{}: unsupported private key ({kind}): use an RSA, ECDSA (P-256 or P-384) or \
         Ed25519 key in PEM (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What kind of key, or why it could not be used.
        kind: String,
    },
    /// The private key does not belong to the first certificate of the chain (the wrong
    /// key, or a chain whose first certificate is not the server's own).
    #[error(
        "the private key in {} does not match the first certificate in {} (the server's \
         own certificate must come first, followed by the certificates that issued it)",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate chain's file.
        cert: PathBuf,
        /// The private key's file.
        key: PathBuf,
    },
    /// A certificate of a PEM file cannot be used (it does not parse, or cannot be a
    /// trust anchor).
    #[error("{}: certificate {index} of {count} cannot be used: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Which certificate of the file (from 1).
        index: usize,
        /// How many the file holds.
        count: usize,
        /// Why.
        source: rustls::Error,
    },
    /// rustls refused the configuration.
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
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        // No key read: say why when the file holds one of a form that is not read.
        let path = path.to_owned();
        let holds = |label: &str| text.windows(label.len()).any(|w| w == label.as_bytes());
        if holds("-----BEGIN ENCRYPTED PRIVATE KEY-----") || holds("Proc-Type: 4,ENCRYPTED") {
            return TlsConfigError::EncryptedKey { path };
        }
        for (label, kind) in [
            ("-----BEGIN DSA PRIVATE KEY-----", "DSA"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "an OpenSSH key file"),
        ] {
            if holds(label) {
                let kind = kind.to_owned();
                return TlsConfigError::UnsupportedKey { path, kind };
            }
        }
        match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPrivateKey { path },
            e => pem_error(&path, e),
        }
    })
}

/// When the certificate chain in the PEM file `cert_chain` stops being valid: the
/// earliest `not_after` ([`Validity`]) of its certificates, or `None` if no certificate
/// of it has dates that can be read. For an operator's alert (duo-metrics publishes it
/// with `MetricsEndpoint::certificate_expiry`): clients refuse the handshake from then on.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("duo-chain-expiry-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
/// let path = dir.join("cert.pem");
/// std::fs::write(&path, cert.cert.pem())?;
/// let not_after = duo_net::tls::chain_expiry(&path)?.expect("dates");
/// assert_eq!(Some(not_after), duo_net::tls::Validity::of(cert.cert.der()).map(|v| v.not_after));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// As [`load_certs`].
pub fn chain_expiry(
    cert_chain: impl AsRef<Path>,
) -> Result<Option<std::time::SystemTime>, TlsConfigError> {
    let certs = load_certs(cert_chain)?;
    Ok(certs
        .iter()
        .filter_map(Validity::of)
        .map(|v| v.not_after)
        .min())
}

/// A server configuration from a certificate chain and its private key in PEM files
/// (no client authentication; TLS 1.3 and 1.2).
///
/// A certificate of the chain that has expired or is not valid yet is not refused (the
/// server may start before its renewed certificate arrives), but logged as a warning
/// naming the file and the dates ([`Validity`]), once per process for the same file and
/// dates: clients will refuse the handshake until it is replaced.
///
/// # Errors
///
/// See [`TlsConfigError`].
pub fn server_config_from_pem(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
    let certs = load_certs(cert_path)?;
    let key = load_private_key(key_path)?;
    validity::warn_if_not_valid(cert_path, &certs, std::time::SystemTime::now());
    // Checked here, where the files are known, for messages that name them (rustls checks
    // the same in `with_single_cert`, naming neither).
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsConfigError::UnsupportedKey {
            path: key_path.to_owned(),
            kind: match e {
                rustls::Error::General(why) => why,
                e => e.to_string(),
            },
        })?;
    match CertifiedKey::new(certs.clone(), signing_key).keys_match() {
        // A key that cannot tell its public key is not refused (as rustls does).
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsConfigError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(source) => {
            return Err(TlsConfigError::BadCertificate {
                path: cert_path.to_owned(),
                index: 1,
                count: certs.len(),
                source,
            })
        }
    }
    let config = ServerConfig::builder_with_provider(provider)
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
    let path = ca.as_ref();
    let certs = load_certs(path)?;
    let count = certs.len();
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| TlsConfigError::BadCertificate {
                path: path.to_owned(),
                index: i + 1,
                count,
                source,
            })?;
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
