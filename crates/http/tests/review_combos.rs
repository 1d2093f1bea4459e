//! Review: Host values and absolute-form targets real clients send, through the public
//! parser.

use duo_http::{parse_request, Limits, Parsed};

fn parse(raw: &[u8]) -> Result<Option<String>, u16> {
    let peer = "127.0.0.1:1".parse().unwrap();
    match parse_request(raw, &Limits::default(), peer) {
        Ok(Parsed::Complete(r, _)) => Ok(r.header("host").map(str::to_owned)),
        Ok(_) => Ok(Some("<partial>".into())),
        Err(e) => Err(e.status().as_u16()),
    }
}

#[test]
fn host_values_clients_send_are_accepted() {
    let mut refused = Vec::new();
    for host in [
        "localhost",
        "LOCALHOST:8080",
        "example.com.",
        "example.com.:443",
        "127.0.0.1:9100",
        "[::1]",
        "[::1]:8080",
        "[fe80::1%25eth0]:80",
        "[FE80::1%25EN0]",
        "localhost:",
        "my_host.internal",
        "xn--bcher-kva.example",
        // Field-value OWS around the value (RFC 9112 section 5: not part of the value).
        "example.com ",
        "example.com\t",
    ] {
        let raw = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if let Err(s) = parse(raw.as_bytes()) {
            refused.push(format!("{host:?} -> {s}"));
        }
    }
    assert!(refused.is_empty(), "refused: {refused:?}");
}

#[test]
fn absolute_form_with_port_or_ipv6_sets_host() {
    for (target, want) in [
        ("http://example.com:8080/x", "example.com:8080"),
        ("http://[::1]:8080/x?y", "[::1]:8080"),
        ("HTTP://[fe80::1%25eth0]/", "[fe80::1%25eth0]"),
        ("http://h:1?q=/a@b", "h:1"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(parse(raw.as_bytes()), Ok(Some(want.to_owned())), "{target}");
    }
}

#[test]
fn prometheus_scrape_is_accepted() {
    let raw = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nUser-Agent: Prometheus/2.53.0\r\n\
Accept: application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n\
Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";
    assert!(parse(raw).is_ok());
}
