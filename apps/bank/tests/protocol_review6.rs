//! A review of the bank's line protocol against `docs/bank-protocol.md` (round 6): the
//! statements about sessions, malformed lines and pipelining that the other suites did
//! not check. On SQLite, against the real binary over TCP.

mod common;

use common::{Client, Server, TempDir, PW};

/// A server on a fresh SQLite database in `dir`.
fn server(dir: &TempDir) -> Server {
    Server::start(&dir.join("bank.db"), &[])
}

/// The error code of `reply` (`ERR <CODE> ...`), or the whole reply if it is no error.
fn code(reply: &str) -> &str {
    reply
        .strip_prefix("ERR ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or(reply)
}

/// Sends `wire` in one write and returns the next `n` reply lines.
fn pipeline(c: &mut Client, wire: &[u8], n: usize) -> Vec<String> {
    c.send(wire);
    (0..n).map(|_| c.line()).collect()
}

/// "A `LOGIN` ends the session it finds whatever its outcome: after one that fails the
/// connection is logged out, so commands pipelined behind it get `NOT_AUTHENTICATED` and
/// never act on the account before it." That includes a `LOGIN` the parser refuses: the
/// wrong number of words (a password with a space in it, or none), or bytes that are not
/// UTF-8. Each used to answer `BAD_REQUEST` and leave the previous account logged in, so
/// the `WITHDRAW` a client pipelined behind its switch to bob took alice's money.
#[test]
fn a_malformed_login_logs_the_connection_out() {
    let dir = TempDir::new("malformed-login");
    let srv = server(&dir);
    drop(Client::logged_in(srv.addr, "bob"));
    let mut c = Client::logged_in(srv.addr, "alice");
    assert_eq!(c.cmd("DEPOSIT 1000"), "OK 1000");
    let relogin = format!("LOGIN alice {PW}\n");
    let malformed: [&[u8]; 4] = [
        b"LOGIN bob pass word\n",
        b"login bob\n",
        b"LOGIN\t\n",
        b"LOGIN bob pass\xffword\n",
    ];
    for bad in malformed {
        let mut wire = Vec::new();
        wire.extend_from_slice(relogin.as_bytes());
        wire.extend_from_slice(bad);
        wire.extend_from_slice(b"WITHDRAW 100\nBALANCE\n");
        let replies = pipeline(&mut c, &wire, 4);
        let codes: Vec<&str> = replies.iter().map(|r| code(r)).collect();
        assert_eq!(
            codes,
            [
                "OK welcome alice",
                "BAD_REQUEST",
                "NOT_AUTHENTICATED",
                "NOT_AUTHENTICATED"
            ],
            "after {:?}: {replies:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut alice = Client::logged_in(srv.addr, "alice");
    assert_eq!(
        alice.balance(),
        1000,
        "a malformed LOGIN let a write through"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// `is_login_line` agrees with the parser on every line the parser reads as a
    /// `LOGIN`, and with the first word on any other line, well-formed or not (so the
    /// server logs out exactly on the lines whose first word is `LOGIN`).
    #[test]
    fn login_lines_are_recognised_whatever_follows(
        lead in "[ \t]{0,3}",
        word in "(?i)login|logins|log|x",
        rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        sep in "[ \t]{1,2}",
    ) {
        let mut line = Vec::new();
        line.extend_from_slice(lead.as_bytes());
        line.extend_from_slice(word.as_bytes());
        line.extend_from_slice(sep.as_bytes());
        line.extend(rest.iter().copied().filter(|&b| b != b'\n'));
        let first_is_login = word.eq_ignore_ascii_case("LOGIN");
        proptest::prop_assert_eq!(bank::protocol::is_login_line(&line), first_is_login);
        if let Ok(Some(cmd)) = bank::protocol::parse_line(&line) {
            proptest::prop_assert_eq!(cmd.name() == "LOGIN", first_is_login);
        }
    }
}
