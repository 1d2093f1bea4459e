//! Review round 9 of duo-http's request parsing and pipelining (the `Rescan` change: an
//! unfinished request is parsed again only when a line ends, the head passes
//! `max_head`, or the whole body is there). A request's answer must not depend on how
//! its bytes were cut into reads: a valid pipeline split anywhere gets the answers it
//! gets whole (empty lines, `HEAD`, `Expect: 100-continue`, bodies with a length and
//! chunked, through the backlog of a blocked or waiting connection), a malformed one
//! the same refusal, a head past the limit 431 whatever lies beyond the limit, and a
//! `HEAD` request refused at its header timeout gets no body however its method came.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use duo_http::{parse_request, HttpServerBuilder, Limits, Parsed};
use proptest::prelude::*;
use util::deferred::{deferred_builder, BIG};
use util::{start, test_builder, Client, Reply};

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4242))
}

/// Long enough for a separate read of each piece on loopback (the server reads what
/// came; a read that merges two pieces only tests fewer cuts, it cannot fail a test).
const PAUSE: Duration = Duration::from_millis(2);

/// What a test expects of one response: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl From<Reply> for Answer {
    fn from(r: Reply) -> Answer {
        Answer {
            status: r.status,
            body: r.body,
        }
    }
}

fn answer(status: u16, body: &[u8]) -> Answer {
    Answer {
        status,
        body: body.to_vec(),
    }
}

/// Sends `wire` cut at `cuts` (sorted positions inside it), a piece per write with a
/// pause between, then reads one response per entry of `head_only` (`true`: the answer
/// to a `HEAD` request), skipping `100 Continue`, and expects EOF after them.
fn exchange(addr: SocketAddr, wire: &[u8], cuts: &[usize], head_only: &[bool]) -> Vec<Answer> {
    let mut c = Client::connect(addr);
    c.stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut from = 0;
    for &at in cuts.iter().chain([&wire.len()]) {
        if at > from {
            c.send(&wire[from..at]);
            std::thread::sleep(PAUSE);
            from = at;
        }
    }
    let mut answers = Vec::new();
    for &head in head_only {
        let mut reply = c.read_reply(head);
        while reply.status == 100 {
            reply = c.read_reply(head);
        }
        answers.push(reply.into());
    }
    c.expect_eof();
    answers
}

/// A pipeline of valid requests, each answered: empty lines before requests, `HEAD`,
/// `Expect: 100-continue` with a length and with a chunked body (extensions, trailers),
/// a query, a 204; the last closes the connection.
fn valid_pipeline() -> (Vec<u8>, Vec<bool>, Vec<Answer>) {
    let parts: [(&str, bool, Answer); 7] = [
        (
            "\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            answer(200, b"hello"),
        ),
        (
            "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n",
            true,
            answer(200, b""),
        ),
        (
            "\nPOST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
            false,
            answer(200, b"hello"),
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
            false,
            answer(200, b"abcde"),
        ),
        (
            "\r\n\r\nGET /query?a=1 HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            answer(200, b"a=1"),
        ),
        (
            "GET /empty HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            answer(204, b""),
        ),
        (
            "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            false,
            answer(200, b"hello"),
        ),
    ];
    let mut wire = Vec::new();
    let (mut heads, mut answers) = (Vec::new(), Vec::new());
    for (text, head, answer) in parts {
        wire.extend_from_slice(text.as_bytes());
        heads.push(head);
        answers.push(answer);
    }
    (wire, heads, answers)
}

/// The valid pipeline, cut in two at every byte, gets the answers it gets whole.
#[test]
fn a_valid_pipeline_cut_at_any_byte_gets_the_same_answers() {
    let server = start(test_builder());
    let (wire, heads, expected) = valid_pipeline();
    assert_eq!(exchange(server.local_addr(), &wire, &[], &heads), expected);
    for at in 1..wire.len() {
        let got = exchange(server.local_addr(), &wire, &[at], &heads);
        assert_eq!(got, expected, "cut at {at}: {:?}", &wire[..at]);
    }
    server.stop().unwrap();
}

/// A valid request, then a malformed one (a bad header field name, its line ended):
/// the first answered, the second refused with 400, wherever the bytes are cut.
#[test]
fn a_malformed_request_cut_at_any_byte_gets_the_same_refusal() {
    let server = start(test_builder());
    let wire = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nBad\x01: x\r\n\r\nabc";
    let expected = vec![
        answer(200, b"hello"),
        answer(400, b"malformed header field\n"),
    ];
    for at in 0..wire.len() {
        let got = exchange(server.local_addr(), wire, &[at], &[false, false]);
        assert_eq!(got, expected, "cut at {at}");
    }
    server.stop().unwrap();
}

/// Heads at and one past the limit, cut at every byte: a head of exactly `max_head`
/// bytes is answered, one a byte longer refused with 431, and one that goes wrong only
/// past the limit is refused with 431 too: the server may have refused a prefix of it
/// for its length already (before, sent whole it was 400, or 505 for a version past the
/// limit, and cut past the limit 431).
#[test]
fn the_head_limit_reached_at_any_cut_gets_the_same_answer() {
    const MAX: usize = 64;
    let server = start(test_builder().max_head_bytes(MAX));
    let head = |pad: usize, tail: &str| {
        let mut h = format!("GET /hello HTTP/1.1\r\nHost: t\r\nX: {}", "a".repeat(pad));
        h.push_str(tail);
        h.into_bytes()
    };
    let fits = head(MAX - 37, "\r\n\r\n");
    assert_eq!(fits.len(), MAX);
    let over = head(MAX - 36, "\r\n\r\n");
    let bad_past = head(MAX - 30, "\x01\r\n\r\n");
    let version_past = format!("GET /{} HTTP/2.0\r\nHost: t\r\n\r\n", "a".repeat(MAX)).into_bytes();
    let too_large = answer(431, b"request head too large\n");
    for (wire, expected) in [
        (&fits, answer(200, b"hello")),
        (&over, too_large.clone()),
        (&bad_past, too_large.clone()),
        (&version_past, too_large.clone()),
    ] {
        for at in 0..wire.len() {
            // (A refused request closes; an answered one is followed by a close.)
            let mut sent = wire.clone();
            if expected.status == 200 {
                sent.extend_from_slice(
                    b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                );
                let got = exchange(server.local_addr(), &sent, &[at], &[false, false]);
                assert_eq!(got, vec![expected.clone(), expected.clone()], "cut at {at}");
            } else {
                let got = exchange(server.local_addr(), &sent, &[at], &[false]);
                assert_eq!(
                    got,
                    vec![expected.clone()],
                    "{:?} cut at {at}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }
    server.stop().unwrap();
}

/// A `HEAD` request whose method came whole only in a later read, and then no line end:
/// its 408 at the header timeout has no body, as it has when the method comes in the
/// first read. (The server parsed the request when it was `HEA` and not again, so it
/// took it for another method and sent the refusal's body.)
#[test]
fn a_head_request_whose_method_came_in_pieces_is_refused_without_a_body() {
    let server = start(test_builder().header_timeout(Duration::from_millis(300)));
    let mut c = Client::connect(server.local_addr());
    c.stream.set_nodelay(true).expect("TCP_NODELAY");
    // The answer to the first request shows that the server read (and parsed) `HEA`.
    c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\nHEA");
    assert_eq!(c.read_reply(false).text(), "hello");
    c.send(b"D /hello HTTP/1.1");
    let reply = c.read_reply(true);
    assert_eq!(reply.status, 408);
    // Nothing after the head: no body, then the close.
    c.expect_eof();
    server.stop().unwrap();
}

/// A server whose output bound is soon passed, with a large response and a deferred one
/// in the pipeline: the rest of the pipeline goes through the backlog (`Blocked`, then
/// `Waiting`), partial requests among it.
fn held_server() -> (HttpServerBuilder, Vec<u8>, Vec<bool>, Vec<Answer>) {
    let (builder, _, _) = deferred_builder();
    let builder = builder.max_pending_output(1);
    let (mut wire, mut heads, mut answers) = valid_pipeline();
    // Before the pipeline: a large response the client reads only after sending it all,
    // and a deferred one.
    let mut front =
        b"GET /big?b HTTP/1.1\r\nHost: t\r\n\r\nGET /later?x HTTP/1.1\r\nHost: t\r\n\r\n\r\n"
            .to_vec();
    front.append(&mut wire);
    heads.splice(0..0, [false, false]);
    answers.splice(0..0, [answer(200, &vec![b'b'; BIG]), answer(200, b"x")]);
    (builder, front, heads, answers)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The pipeline behind a blocked and a waiting connection, cut anywhere into a few
    /// pieces, gets the answers it gets whole.
    #[test]
    fn a_held_pipeline_cut_anywhere_gets_the_same_answers(
        cuts in prop::collection::btree_set(1usize..600, 1..6),
    ) {
        let (builder, wire, heads, expected) = held_server();
        let server = start(builder);
        let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < wire.len()).collect();
        let got = exchange(server.local_addr(), &wire, &cuts, &heads);
        prop_assert!(got == expected, "cuts {:?}", cuts);
        server.stop().unwrap();
    }
}

/// Lines a head is made of, some malformed, some long.
fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop::sample::select(vec![
        "GET / HTTP/1.1\r\n".to_owned(),
        "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/2.0\r\n".to_owned(),
        "POST /echo HTTP/1.1\r\n".to_owned(),
        "HEAD / HTTP/1.0\r\n".to_owned(),
        "GET / HTTP/1.1\n".to_owned(),
    ]);
    let field = prop::sample::select(vec![
        "Host: h\r\n".to_owned(),
        "Content-Length: 3\r\n".to_owned(),
        "Transfer-Encoding: chunked\r\n".to_owned(),
        format!("X-Long: {}\r\n", "v".repeat(40)),
        "Bad\x01: x\r\n".to_owned(),
        "A: \x7f\r\n".to_owned(),
        "\r\n".to_owned(),
    ]);
    (line, prop::collection::vec(field, 0..8), any::<bool>()).prop_map(|(line, fields, end)| {
        let mut buf = line.into_bytes();
        for f in fields {
            buf.extend_from_slice(f.as_bytes());
        }
        if end {
            buf.extend_from_slice(b"\r\n");
        }
        buf
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A server parses whatever prefix of a request has arrived; once a prefix is
    /// refused, the request is, whatever follows: so the whole must get the same
    /// status as its first refused prefix, or the answer depends on how it was cut.
    #[test]
    fn a_refused_prefix_refuses_the_whole_with_the_same_status(
        buf in head_bytes(),
        max_head in 16usize..128,
    ) {
        let limits = Limits { max_head, max_headers: 4, ..Limits::default() };
        let whole = parse_request(&buf, &limits, peer()).map_err(|e| e.status());
        for at in 1..=buf.len() {
            match parse_request(&buf[..at], &limits, peer()) {
                Err(e) => {
                    prop_assert_eq!(
                        whole.clone().err(),
                        Some(e.status()),
                        "{:?} refused at {} bytes: {}",
                        String::from_utf8_lossy(&buf),
                        at,
                        e.reason()
                    );
                    break;
                }
                Ok(Parsed::Partial(_)) => {}
                Ok(_) => break,
            }
        }
    }
}

/// The trailer section of a chunked body: refused with 431 once it passes `max_head`,
/// whatever is wrong beyond that, however it is fed.
#[test]
fn trailers_past_the_limit_are_refused_alike_whole_and_cut() {
    let limits = Limits {
        max_head: 64,
        ..Limits::default()
    };
    let head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let start = || match parse_request(head, &limits, peer()) {
        Ok(Parsed::Chunked(body, _)) => body,
        other => panic!("{other:?}"),
    };
    let mut wire = b"0\r\nT: ".to_vec();
    wire.extend_from_slice(&[b'a'; 70]);
    wire.extend_from_slice(b"\x01\r\n\r\n");
    let whole = start().feed(&wire).map_err(|e| e.status().as_u16());
    assert_eq!(whole, Err(431));
    for at in 1..wire.len() {
        let mut body = start();
        let status = match body.feed(&wire[..at]) {
            Err(e) => e.status().as_u16(),
            Ok(used) => body
                .feed(&wire[used..])
                .map_err(|e| e.status().as_u16())
                .unwrap_err(),
        };
        assert_eq!(status, 431, "cut at {at}");
    }
}
