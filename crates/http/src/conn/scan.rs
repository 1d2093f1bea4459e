//! When an unfinished request is worth parsing again ([`Rescan`]).
//!
//! A request arrives in as many reads as its client likes: one byte each, if it wants. The
//! parser reads the whole unfinished request from its start every time, so parsing it
//! again after every read would cost the square of its size: a head of 8 KiB sent a byte
//! at a time would be parsed 8 000 times, 32 MB of parsing for one request. The answer can
//! only change when the new bytes complete a line (a head ends with an empty line; a
//! malformed line is refused once it ends) or pass the head size limit, or, once the head
//! is complete, when the whole body is there.
//!
//! And whether what waits at the front of the input has begun a request at all
//! ([`begun`]).

/// What the last parse of the unfinished request at the start of the input found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rescan {
    /// Its length then (0: not parsed yet).
    parsed: usize,
    /// The whole request's length, once its head was found complete.
    request_len: Option<usize>,
}

impl Rescan {
    /// Whether `buf`, the unfinished request grown by new bytes since the last parse, may
    /// parse to something else than `Partial` again: the first time, when a new byte ends
    /// a line, past `max_head` bytes of head, or when the whole request is there.
    pub(super) fn worth_parsing(&self, buf: &[u8], max_head: usize) -> bool {
        if self.parsed == 0 || buf.len() < self.parsed {
            return true;
        }
        match self.request_len {
            Some(len) => buf.len() >= len,
            None => buf.len() > max_head || buf[self.parsed..].contains(&b'\n'),
        }
    }

    /// The parse of `len` bytes found the request incomplete (`request_len`: its whole
    /// length, once the head is complete).
    pub(super) fn partial(&mut self, len: usize, request_len: Option<usize>) {
        *self = Rescan {
            parsed: len,
            request_len,
        };
    }
}

/// Whether `input`, past the empty lines before it, holds something of a request: not
/// when it is empty or a lone CR (an empty line cut after its CR, or a bare CR the parser
/// refuses once the next byte comes). A lone CR does not begin a request: the connection
/// stays idle, a graceful shutdown closes it at once, its timeout closes it without a 408.
pub(super) fn begun(input: &[u8]) -> bool {
    !input.is_empty() && input != b"\r"
}

/// Bytes of an unfinished request in `input` (the rest of it, after the empty lines
/// `serve` took), not counting a lone CR (see [`begun`]).
pub(super) fn unfinished(input: &[u8]) -> usize {
    if begun(input) {
        input.len()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparsed_request_is_worth_parsing() {
        assert!(Rescan::default().worth_parsing(b"G", 8192));
    }

    #[test]
    fn a_head_is_parsed_again_only_when_a_line_ends_or_it_passes_the_limit() {
        let mut r = Rescan::default();
        r.partial(3, None);
        assert!(!r.worth_parsing(b"GET / HT", 8192));
        assert!(r.worth_parsing(b"GET / HTTP/1.1\r\n", 8192));
        // A line end among the bytes parsed before does not count again.
        r.partial(16, None);
        assert!(!r.worth_parsing(b"GET / HTTP/1.1\r\nHost: x", 8192));
        assert!(r.worth_parsing(b"GET / HTTP/1.1\r\nHost: x", 20));
    }

    #[test]
    fn a_body_is_waited_for_whole() {
        let mut r = Rescan::default();
        r.partial(40, Some(50));
        assert!(!r.worth_parsing(&[b'x'; 49], 8192));
        assert!(r.worth_parsing(&[b'x'; 50], 8192));
    }

    #[test]
    fn input_that_shrank_is_another_request() {
        let mut r = Rescan::default();
        r.partial(40, Some(50));
        assert!(r.worth_parsing(&[b'x'; 10], 8192));
    }

    /// Review round 11: the scanner skips parses, never answers. However a request is
    /// cut, a parse skipped would have found what the last one found (or refused a line
    /// not ended yet: refused once it ends), and what the skipping scanner decides in the
    /// end (a refusal and its status, a whole request and its length, a chunked head) is
    /// what one parse of the whole bytes decides. The bytes end with an empty line, so a
    /// line refused late is still refused.
    mod props {
        use super::*;
        use crate::{parse_request, Limits, Parsed};
        use proptest::prelude::*;

        /// What a parse decided, comparable.
        #[derive(Debug, PartialEq, Eq)]
        enum Verdict {
            Partial(crate::Partial),
            Complete(usize),
            Chunked(usize),
            Refused(u16),
        }

        fn parse(buf: &[u8], limits: &Limits) -> Verdict {
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
            match parse_request(buf, limits, peer) {
                Ok(Parsed::Partial(p)) => Verdict::Partial(p),
                Ok(Parsed::Complete(_, used)) => Verdict::Complete(used),
                Ok(Parsed::Chunked(_, used)) => Verdict::Chunked(used),
                Err(e) => Verdict::Refused(e.status().as_u16()),
            }
        }

        fn fragment() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "GET / HTTP/1.1\r\n",
                "POST /e HTTP/1.1\r\n",
                "GET / HTTP/2",
                "GET / HTTP/1.",
                "Host: h\r\n",
                "Content-Length: 3\r\n",
                "Content-Length: 9\r\n",
                "Transfer-Encoding: chunked\r\n",
                "Expect: 100-continue\r\n",
                "X-Pad: 0123456789abcdef\r\n",
                "\r\n",
                "\n",
                "\r",
                " ",
                "abc",
                "\u{1}",
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn skipping_parses_never_changes_the_answer(
                head in prop::sample::select(vec![
                    "",
                    "GET / HTTP/1.1\r\nHost: h\r\n",
                    "POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n",
                    "PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n",
                ]),
                frags in prop::collection::vec(fragment(), 1..10),
                cuts in prop::collection::vec(1usize..8, 0..24),
                max_head in 32usize..128,
            ) {
                let limits = Limits { max_head, max_headers: 4, max_body: 8 };
                let mut buf: Vec<u8> = [head, &frags.concat()].concat().into_bytes();
                buf.extend_from_slice(b"\r\n\r\nabcdefghij");
                let mut ends: Vec<usize> = cuts
                    .iter()
                    .scan(0, |at, n| {
                        *at += n;
                        Some(*at)
                    })
                    .filter(|&end| end < buf.len())
                    .collect();
                ends.push(buf.len());
                let mut rescan = Rescan::default();
                let mut last = None;
                for end in ends {
                    let part = &buf[..end];
                    if !rescan.worth_parsing(part, limits.max_head) {
                        // A parse skipped finds what the last found, or refuses a line
                        // not ended yet within the head limit (refused once it ends).
                        let now = parse(part, &limits);
                        let since = &part[rescan.parsed..];
                        let late = matches!(now, Verdict::Refused(_))
                            && rescan.request_len.is_none()
                            && !since.contains(&b'\n')
                            && part.len() <= limits.max_head;
                        prop_assert!(Some(&now) == last.as_ref() || late, "{now:?} skipped");
                        continue;
                    }
                    let verdict = parse(part, &limits);
                    rescan = Rescan::default();
                    let Verdict::Partial(p) = verdict else {
                        last = Some(verdict);
                        break;
                    };
                    rescan.partial(end, p.request_len);
                    last = Some(verdict);
                }
                prop_assert_eq!(last, Some(parse(&buf, &limits)));
            }
        }
    }
}
