//! A request line's refusal does not depend on how much of it has arrived: a version that
//! is still incomplete (`HTTP/2`, `HTTP/1.` at the end of what was read) waits for the
//! rest of the line, and a version that can no longer become `HTTP/d.d` (`HTTP/1.'`) is a
//! malformed line (400) at once. So every prefix of a request line either waits or gets
//! the refusal the whole line gets. (Found by the `http_request` fuzz target: `HTTP/1.'`
//! was refused 505 when read in pieces, 400 when read whole.)

use std::net::SocketAddr;

use duo_http::{parse_request, Limits, Parsed};

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4242))
}

/// The status `buf` is refused with, or 0 if it parses or waits for more.
fn status(buf: &[u8]) -> u16 {
    match parse_request(buf, &Limits::default(), peer()) {
        Err(e) => e.status().as_u16(),
        Ok(_) => 0,
    }
}

#[test]
fn every_prefix_of_a_request_line_waits_or_gets_the_whole_lines_refusal() {
    let cases: [(&[u8], u16); 9] = [
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/2.x\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.00\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.'\r\nHost: a\r\n\r\n", 400),
        (b"PUT /u HTTP/1.'\r*Host: h\r\n\r\n", 400),
        (b"GET / HTTP/22.0\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0 x\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTQ/1.1\r\nHost: a\r\n\r\n", 400),
    ];
    for (line, want) in cases {
        assert_eq!(
            status(line),
            want,
            "{:?} whole",
            String::from_utf8_lossy(line)
        );
        for cut in 0..line.len() {
            let got = status(&line[..cut]);
            assert!(
                got == 0 || got == want,
                "{:?} cut at {cut} is refused {got}, the whole line {want}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

#[test]
fn a_complete_request_still_parses_after_a_wait_on_its_version() {
    let whole = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    for cut in 0..whole.len() {
        assert!(
            matches!(
                parse_request(&whole[..cut], &Limits::default(), peer()),
                Ok(Parsed::Partial(_))
            ),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        parse_request(whole, &Limits::default(), peer()),
        Ok(Parsed::Complete(_, n)) if n == whole.len()
    ));
}
