//! RFC 9110 section 6.6.1: an origin server with a clock sends `Date` in its responses.
//! Every response duo-http makes carries exactly one, in the IMF-fixdate form, close to
//! now: a handler's answer, a 204, the answer to `HEAD`, a 404, and the server's own
//! refusals (400, 431). A handler that sets `Date` itself keeps its value, not doubled.

mod util;

use std::time::{Duration, SystemTime};

use duo_http::{Method, Response, StatusCode};
use util::{start, test_builder, Client, Reply};

/// The `Date` fields of `r`: exactly one, which parses, is returned.
fn date_of(r: &Reply, what: &str) -> SystemTime {
    let dates: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(dates.len(), 1, "{what}: Date fields {dates:?} in {r:?}");
    assert_eq!(
        dates[0].len(),
        29,
        "{what}: not IMF-fixdate: {:?}",
        dates[0]
    );
    httpdate::parse_http_date(dates[0]).unwrap_or_else(|e| panic!("{what}: {:?}: {e}", dates[0]))
}

fn near_now(t: SystemTime, what: &str) {
    let now = SystemTime::now();
    let off = now.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(off <= Duration::from_secs(5), "{what}: Date is {off:?} off");
}

#[test]
fn every_response_carries_one_date() {
    let server = start(test_builder().route(Method::Get, "/dated", |_| {
        Response::text(StatusCode::OK, "old").header("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
    }));
    let addr = server.local_addr();
    let mut c = Client::connect(addr);
    for (path, status) in [("/hello", 200), ("/empty", 204), ("/nowhere", 404)] {
        let r = c.get(path);
        assert_eq!(r.status, status, "{path}");
        near_now(date_of(&r, path), path);
    }
    c.send(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_reply(true);
    near_now(date_of(&r, "HEAD"), "HEAD");
    let r = c.get("/dated");
    assert_eq!(
        date_of(&r, "/dated"),
        httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap(),
        "the handler's own Date is kept"
    );
    // The server's own refusals.
    for (wire, status) in [
        ("GET /hello HTTP/1.1\r\n\r\n".to_owned(), 400),
        (
            format!(
                "GET /hello HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            431,
        ),
    ] {
        let mut c = Client::connect(addr);
        c.send(wire.as_bytes());
        let r = c.read_reply(false);
        assert_eq!(r.status, status);
        near_now(date_of(&r, "refusal"), "refusal");
    }
}
