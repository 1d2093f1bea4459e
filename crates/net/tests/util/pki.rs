//! The TLS tests' certificates: a test CA and a certificate for "localhost" it signed, the
//! rustls configurations built on them, and a rustls client driven by hand.

use std::sync::Arc;

use duo_net::tls::{self, rustls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConnection;

/// A test CA and a certificate for "localhost" it signed.
pub(crate) struct Pki {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) leaf: CertificateDer<'static>,
    pub(crate) leaf_key: Vec<u8>,
}

fn make_ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "duo test CA");
    (params.self_signed(&key).unwrap(), key)
}

/// A new CA (each call another) and its "localhost" certificate.
pub(crate) fn pki() -> Pki {
    let (ca, ca_key) = make_ca();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

impl Pki {
    /// A server configuration presenting the "localhost" certificate.
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(self.leaf_key.clone().into());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.leaf.clone()], key)
                .unwrap(),
        )
    }

    /// A client configuration that trusts the CA.
    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        tls::client_config(roots).unwrap()
    }

    /// A client configuration that trusts the CA and speaks TLS 1.2 only (where the
    /// server's `Finished` is the handshake's last message).
    pub(crate) fn tls12_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A rustls client connection (not connected) that trusts the CA and expects
    /// "localhost".
    pub(crate) fn client_conn(&self) -> ClientConnection {
        client_conn(self.client_config())
    }

    /// A rustls client connected to `addr` with its handshake done (reads bounded by
    /// [`LIMIT`](duo_testkit::LIMIT)), as a socket and a rustls connection to drive by
    /// hand.
    pub(crate) fn handshaken(
        &self,
        addr: std::net::SocketAddr,
    ) -> (std::net::TcpStream, ClientConnection) {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(duo_testkit::LIMIT)).unwrap();
        let mut conn = self.client_conn();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        (sock, conn)
    }
}

/// A rustls client connection (not connected) with `config`, expecting "localhost".
pub(crate) fn client_conn(config: Arc<rustls::ClientConfig>) -> ClientConnection {
    ClientConnection::new(config, tls::server_name("localhost").unwrap()).unwrap()
}

/// The TLS records `conn` has queued to send, taken out of it.
pub(crate) fn records(conn: &mut ClientConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    wire
}
