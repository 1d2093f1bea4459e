//! When an unfinished request is worth parsing again ([`Rescan`]).
//!
//! A request arrives in as many reads as its client likes: one byte each, if it wants. The
//! parser reads the whole unfinished request from its start every time, so parsing it
//! again after every read would cost the square of its size: a head of 8 KiB sent a byte
//! at a time would be parsed 8 000 times, 32 MB of parsing for one request. The answer can
//! only change when the new bytes complete a line (a head ends with an empty line; a
//! malformed line is refused once it ends) or pass the head size limit, or, once the head
//! is complete, when the whole body is there.

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
}
