//! `bank serve --tls-cert PEM --metrics ADDR` publishes when its certificate chain stops
//! being valid (`duo_tls_certificate_expiry_timestamp_seconds{file}`), beside the bank's
//! own figures; a bank without TLS publishes none.

mod common;

use common::{scrape, Server, TempDir};
use duo_testkit::TestCerts;

const METRIC: &str = "duo_tls_certificate_expiry_timestamp_seconds";

#[test]
fn a_tls_bank_publishes_its_certificates_expiry() {
    let dir = TempDir::new("cert-expiry");
    // Valid until 2031-06-15 00:00:00 UTC (`date -u -d 2031-06-15 +%s`).
    let certs = TestCerts::valid_between("bank-expiry", (2020, 1, 1), (2031, 6, 15));
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut server = Server::start(
        &dir.join("bank.db"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let text = scrape(server.metrics_addr());
    assert!(
        text.contains(&format!("{METRIC}{{file=\"{cert}\"}} 1939248000\n")),
        "{text}"
    );
    assert!(
        text.contains("bank_"),
        "the bank's own figures are gone:\n{text}"
    );

    let plain_dir = TempDir::new("cert-expiry-plain");
    let mut plain = Server::start(&plain_dir.join("bank.db"), &["--metrics", "127.0.0.1:0"]);
    let text = scrape(plain.metrics_addr());
    assert!(!text.contains(METRIC), "{text}");
}
