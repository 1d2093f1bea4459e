//! `echo serve --tls-cert PEM --metrics ADDR` publishes when its certificate chain stops
//! being valid (`duo_tls_certificate_expiry_timestamp_seconds{file}`), so an operator can
//! alert before clients refuse the handshake: in one process, and from every worker of
//! `--processes N` through the supervisor's endpoint. Every child is killed by PID
//! (dropping a [`Server`]), every wait is bounded.

mod common;

use std::collections::BTreeSet;

use common::Server;
use duo_testkit::{children, http_get, wait_until, TestCerts, LIMIT};

const METRIC: &str = "duo_tls_certificate_expiry_timestamp_seconds";

/// `2031-06-15 00:00:00 UTC`, the end of the test certificate's validity
/// (`date -u -d 2031-06-15 +%s`).
const NOT_AFTER: &str = "1939248000";

/// The `file` label and value of every sample of [`METRIC`], with the labels before
/// `file` (a worker's) kept.
fn expiry_samples(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{METRIC}{{")))
        .map(str::to_owned)
        .collect()
}

fn certs(label: &str) -> TestCerts {
    TestCerts::valid_between(label, (2020, 1, 1), (2031, 6, 15))
}

/// `echo serve` with `certs`, a metrics endpoint and `extra`.
fn start_tls(certs: &TestCerts, extra: &[&str]) -> Server {
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut args = vec!["serve", "--metrics", "127.0.0.1:0"];
    args.extend_from_slice(&["--tls-cert", &cert, "--tls-key", &key]);
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn one_process_publishes_its_certificates_expiry() {
    let certs = certs("echo-expiry");
    let cert = certs.path("cert.pem");
    let mut server = start_tls(&certs, &[]);
    let (status, text) = http_get(server.metrics_addr(LIMIT), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        expiry_samples(&text),
        [format!("{METRIC}{{file=\"{cert}\"}} {NOT_AFTER}")],
        "{text}"
    );
    assert!(text.contains(&format!("# TYPE {METRIC} gauge")), "{text}");
}

#[test]
fn a_plain_server_publishes_no_certificate() {
    let mut server = Server::start(&["serve", "--metrics", "127.0.0.1:0"]);
    let (_, text) = http_get(server.metrics_addr(LIMIT), "/metrics");
    assert!(!text.contains(METRIC), "{text}");
}

#[test]
fn every_worker_publishes_its_certificates_expiry() {
    let certs = certs("echo-expiry-workers");
    let cert = certs.path("cert.pem");
    let mut server = start_tls(&certs, &["--processes", "2", "--io-threads", "1"]);
    let metrics = server.metrics_addr(LIMIT);
    let sup = server.pid();
    wait_until("two workers", || children(sup).len() == 2);
    let workers: BTreeSet<String> = children(sup).iter().map(u32::to_string).collect();
    // Each worker's sample, labelled with its PID, all with the certificate's date.
    let mut text = String::new();
    wait_until("both workers' samples", || {
        text = http_get(metrics, "/metrics").1;
        let samples = expiry_samples(&text);
        samples.len() == 2
            && workers.iter().all(|pid| {
                samples
                    .iter()
                    .any(|s| s.contains(&format!("pid=\"{pid}\"")))
            })
    });
    for sample in expiry_samples(&text) {
        assert!(sample.ends_with(&format!(" {NOT_AFTER}")), "{sample}");
        assert!(sample.contains(&format!("file=\"{cert}\"")), "{sample}");
    }
}
