//! [`TestCerts`]: a test CA and a certificate it signed for `localhost` and `127.0.0.1`,
//! as PEM files in a directory of their own, for tests of TLS servers and clients (the
//! feature `pki`).

use crate::TempDir;

/// A new test CA (`ca.pem`), a certificate for `localhost` and `127.0.0.1` it signed
/// (`cert.pem`) and that certificate's key (`key.pem`), written with `rcgen` to a
/// directory of their own under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    /// Makes the files; `label` goes into the directory's name (a [`TempDir`], of its
    /// own for every call).
    ///
    /// # Panics
    ///
    /// If the directory or the files cannot be written, or `rcgen` fails: a test cannot
    /// go on without them.
    pub fn new(label: &str) -> TestCerts {
        TestCerts::make(label, None)
    }

    /// As [`new`](TestCerts::new), with a certificate (`cert.pem`) valid only from the
    /// start of the day `from` to the start of the day `to` (year, month, day; UTC): one
    /// that has expired, or is not valid yet.
    ///
    /// # Panics
    ///
    /// As [`new`](TestCerts::new).
    pub fn valid_between(label: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> TestCerts {
        TestCerts::make(label, Some((from, to)))
    }

    /// Writes the files, with the certificate's validity if given (rcgen's default, 1975
    /// to 4096, if not).
    #[allow(clippy::type_complexity)]
    fn make(label: &str, validity: Option<((i32, u8, u8), (i32, u8, u8))>) -> TestCerts {
        let dir = TempDir::new(&format!("certs-{label}"));
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "duo test CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let key = rcgen::KeyPair::generate().expect("a key");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut leaf_params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            leaf_params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            leaf_params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let leaf = leaf_params
            .signed_by(&key, &ca, &ca_key)
            .expect("the certificate");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("cert.pem", leaf.pem()),
            ("key.pem", key.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), pem).expect("a PEM file");
        }
        TestCerts { dir }
    }

    /// The path of `name` (`ca.pem`, `cert.pem` or `key.pem`) as a string, for command
    /// lines and loaders alike.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}
