//! The bank's line protocol: commands parsed from lines, replies formatted as lines.
//!
//! Everything here is a pure function (no I/O, no database), shared by the server, the
//! client and the tests. The protocol itself is described in `docs/bank-protocol.md`:
//!
//! - one command per line (`\n` or `\r\n`), UTF-8, at most [`MAX_LINE`] bytes;
//! - words are separated by spaces or tabs; the command word is case-insensitive;
//! - a blank line is ignored (no reply);
//! - every other line gets exactly one reply line, `OK ...`, `PONG` or `ERR <CODE> <message>`,
//!   except a successful `HISTORY`, whose `OK <count>` line is followed by `<count>` lines.

use std::fmt;

/// The longest command line accepted, line end not counted.
pub const MAX_LINE: usize = 1024;
/// The largest amount of one deposit, withdrawal or transfer, in cents.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Longest user name.
pub const USER_MAX: usize = 32;
/// Shortest password, in bytes.
pub const PASSWORD_MIN: usize = 8;
/// Longest password, in bytes.
pub const PASSWORD_MAX: usize = 128;
/// Longest transfer request id.
pub const REQUEST_ID_MAX: usize = 64;
/// Entries `HISTORY` returns when no count is given.
pub const HISTORY_DEFAULT: usize = 10;
/// Most entries one `HISTORY` returns.
pub const HISTORY_MAX: usize = 1000;

/// The error codes of `ERR` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed command: wrong arguments, invalid UTF-8, bad user name or password format.
    BadRequest,
    /// The command word is not known.
    UnknownCommand,
    /// The command needs a `LOGIN` first.
    NotAuthenticated,
    /// Wrong user name or password.
    AuthFailed,
    /// `REGISTER` of a name that is taken.
    UserExists,
    /// `TRANSFER` to a user that does not exist.
    NoSuchUser,
    /// The balance does not cover the withdrawal or transfer.
    InsufficientFunds,
    /// An amount outside `1..=10^12` cents, or a balance that would overflow.
    InvalidAmount,
    /// A line longer than [`MAX_LINE`]; the server closes the connection.
    LineTooLong,
    /// The server's work queue is full; try again later.
    Busy,
    /// A server-side failure (database error); the command may or may not have happened
    /// only if it was cut off by a crash, never otherwise.
    Internal,
}

impl ErrorCode {
    /// Every code, for tests and parsing.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::NotAuthenticated,
        ErrorCode::AuthFailed,
        ErrorCode::UserExists,
        ErrorCode::NoSuchUser,
        ErrorCode::InsufficientFunds,
        ErrorCode::InvalidAmount,
        ErrorCode::LineTooLong,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::NotAuthenticated => "NOT_AUTHENTICATED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::UserExists => "USER_EXISTS",
            ErrorCode::NoSuchUser => "NO_SUCH_USER",
            ErrorCode::InsufficientFunds => "INSUFFICIENT_FUNDS",
            ErrorCode::InvalidAmount => "INVALID_AMOUNT",
            ErrorCode::LineTooLong => "LINE_TOO_LONG",
            ErrorCode::Busy => "BUSY",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The code written as `s`, if any.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply: a code and a human-readable message (one line, no line end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// The code.
    pub code: ErrorCode,
    /// The message; line ends are replaced by spaces when formatted.
    pub message: String,
}

impl ProtoError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
        }
    }

    /// The reply line, `ERR <CODE> <message>\n`.
    pub fn line(&self) -> String {
        err_line(self.code, &self.message)
    }
}

/// A parsed command.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `REGISTER <user> <password>`.
    Register {
        /// The new user's name (validated).
        user: String,
        /// The password (validated length).
        password: String,
    },
    /// `LOGIN <user> <password>`; not validated beyond arity: a malformed name or password
    /// simply fails to log in (and counts as a failed login).
    Login {
        /// The user name as given.
        user: String,
        /// The password as given.
        password: String,
    },
    /// `BALANCE`.
    Balance,
    /// `DEPOSIT <cents>`.
    Deposit {
        /// The amount, in `1..=MAX_AMOUNT`.
        amount: i64,
    },
    /// `WITHDRAW <cents>`.
    Withdraw {
        /// The amount, in `1..=MAX_AMOUNT`.
        amount: i64,
    },
    /// `TRANSFER <to-user> <cents> [<request-id>]`.
    Transfer {
        /// The recipient's name as given (not validated: an invalid name is no user).
        to: String,
        /// The amount, in `1..=MAX_AMOUNT`.
        amount: i64,
        /// The idempotency key, if any (validated).
        request_id: Option<String>,
    },
    /// `HISTORY [<n>]`.
    History {
        /// How many entries, `1..=HISTORY_MAX`.
        limit: usize,
    },
    /// `PING`.
    Ping,
    /// `QUIT`.
    Quit,
}

impl Command {
    /// The command word, upper case.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "REGISTER",
            Command::Login { .. } => "LOGIN",
            Command::Balance => "BALANCE",
            Command::Deposit { .. } => "DEPOSIT",
            Command::Withdraw { .. } => "WITHDRAW",
            Command::Transfer { .. } => "TRANSFER",
            Command::History { .. } => "HISTORY",
            Command::Ping => "PING",
            Command::Quit => "QUIT",
        }
    }
}

/// Passwords never reach a log through `Debug`.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Register { user, .. } | Command::Login { user, .. } => {
                write!(f, "{} {user} <password>", self.name())
            }
            Command::Deposit { amount } | Command::Withdraw { amount } => {
                write!(f, "{} {amount}", self.name())
            }
            Command::Transfer {
                to,
                amount,
                request_id,
            } => {
                write!(f, "TRANSFER {to} {amount}")?;
                if let Some(id) = request_id {
                    write!(f, " {id}")?;
                }
                Ok(())
            }
            Command::History { limit } => write!(f, "HISTORY {limit}"),
            _ => f.write_str(self.name()),
        }
    }
}

fn bad(message: impl Into<String>) -> ProtoError {
    ProtoError::new(ErrorCode::BadRequest, message)
}

/// Parses one line (without its line end). `Ok(None)` for a blank line.
pub fn parse_line(line: &[u8]) -> Result<Option<Command>, ProtoError> {
    let text = std::str::from_utf8(line).map_err(|_| bad("line is not valid UTF-8"))?;
    let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
    let Some(word) = words.next() else {
        return Ok(None);
    };
    let args: Vec<&str> = words.collect();
    let is = |name: &str| word.eq_ignore_ascii_case(name);
    let arity = |n: std::ops::RangeInclusive<usize>, usage: &str| {
        if n.contains(&args.len()) {
            Ok(())
        } else {
            Err(bad(format!("usage: {usage}")))
        }
    };
    let cmd = if is("REGISTER") {
        arity(2..=2, "REGISTER <user> <password>")?;
        let (user, password) = (args[0], args[1]);
        if !valid_user(user) {
            return Err(bad(format!(
                "user name must be 1-{USER_MAX} characters of A-Z a-z 0-9 _"
            )));
        }
        if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&password.len()) {
            return Err(bad(format!(
                "password must be {PASSWORD_MIN}-{PASSWORD_MAX} bytes"
            )));
        }
        Command::Register {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    } else if is("LOGIN") {
        arity(2..=2, "LOGIN <user> <password>")?;
        Command::Login {
            user: args[0].to_owned(),
            password: args[1].to_owned(),
        }
    } else if is("BALANCE") {
        arity(0..=0, "BALANCE")?;
        Command::Balance
    } else if is("DEPOSIT") {
        arity(1..=1, "DEPOSIT <cents>")?;
        Command::Deposit {
            amount: parse_amount(args[0])?,
        }
    } else if is("WITHDRAW") {
        arity(1..=1, "WITHDRAW <cents>")?;
        Command::Withdraw {
            amount: parse_amount(args[0])?,
        }
    } else if is("TRANSFER") {
        arity(2..=3, "TRANSFER <to-user> <cents> [<request-id>]")?;
        let amount = parse_amount(args[1])?;
        let request_id = match args.get(2) {
            Some(id) if valid_request_id(id) => Some((*id).to_owned()),
            Some(_) => {
                return Err(bad(format!(
                    "request id must be 1-{REQUEST_ID_MAX} characters of A-Z a-z 0-9 _ -"
                )))
            }
            None => None,
        };
        Command::Transfer {
            to: args[0].to_owned(),
            amount,
            request_id,
        }
    } else if is("HISTORY") {
        arity(0..=1, "HISTORY [<n>]")?;
        let limit = match args.first() {
            None => HISTORY_DEFAULT,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if (1..=HISTORY_MAX).contains(&n) => n,
                _ => return Err(bad(format!("HISTORY count must be 1-{HISTORY_MAX}"))),
            },
        };
        Command::History { limit }
    } else if is("PING") {
        arity(0..=0, "PING")?;
        Command::Ping
    } else if is("QUIT") {
        arity(0..=0, "QUIT")?;
        Command::Quit
    } else {
        return Err(ProtoError::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {}", printable(word, 32)),
        ));
    };
    Ok(Some(cmd))
}

/// An amount in cents: decimal digits only (an optional leading `+`), value in
/// `1..=MAX_AMOUNT`; anything else is `INVALID_AMOUNT`.
pub fn parse_amount(s: &str) -> Result<i64, ProtoError> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    let valid = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    match digits.parse::<i64>() {
        Ok(v) if valid && (1..=MAX_AMOUNT).contains(&v) => Ok(v),
        _ => Err(ProtoError::new(
            ErrorCode::InvalidAmount,
            format!("amount must be a whole number of cents from 1 to {MAX_AMOUNT}"),
        )),
    }
}

/// Whether `s` is a valid user name: 1-32 of `[A-Za-z0-9_]`.
pub fn valid_user(s: &str) -> bool {
    (1..=USER_MAX).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `s` is a valid request id: 1-64 of `[A-Za-z0-9_-]`.
pub fn valid_request_id(s: &str) -> bool {
    (1..=REQUEST_ID_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `password` has an acceptable length.
pub fn valid_password(password: &str) -> bool {
    (PASSWORD_MIN..=PASSWORD_MAX).contains(&password.len())
}

/// At most `max` characters of `s`, non-printable ones shown as `?`: safe to echo in a
/// reply or a log line.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// `OK <text>\n`.
pub fn ok_line(text: impl fmt::Display) -> String {
    format!("OK {text}\n")
}

/// `ERR <CODE> <message>\n`, with any line end in `message` replaced by a space.
pub fn err_line(code: ErrorCode, message: &str) -> String {
    let message: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("ERR {code} {message}\n")
}

/// The reply to `PING`.
pub const PONG: &str = "PONG\n";

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Money paid in.
    Deposit,
    /// Money paid out.
    Withdraw,
    /// Money sent to another user.
    TransferOut,
    /// Money received from another user.
    TransferIn,
}

impl EntryKind {
    /// The kind as written in history lines and stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deposit => "deposit",
            EntryKind::Withdraw => "withdraw",
            EntryKind::TransferOut => "transfer_out",
            EntryKind::TransferIn => "transfer_in",
        }
    }

    /// The kind written as `s`.
    pub fn parse(s: &str) -> Option<EntryKind> {
        [
            EntryKind::Deposit,
            EntryKind::Withdraw,
            EntryKind::TransferOut,
            EntryKind::TransferIn,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One line of a `HISTORY` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ledger entry's id (increasing with time).
    pub id: i64,
    /// What happened.
    pub kind: EntryKind,
    /// The other user of a transfer.
    pub counterparty: Option<String>,
    /// Signed change of the balance, in cents.
    pub amount: i64,
    /// The balance right after this entry.
    pub balance_after: i64,
    /// When, in seconds since the Unix epoch.
    pub time: i64,
}

impl HistoryEntry {
    /// `<id> <kind> <counterparty or -> <signed cents> <balance after> <unix seconds>`
    /// (no line end). Positive amounts carry a `+`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {:+} {} {}",
            self.id,
            self.kind.as_str(),
            self.counterparty.as_deref().unwrap_or("-"),
            self.amount,
            self.balance_after,
            self.time
        )
    }

    /// Parses a line written by [`HistoryEntry::line`].
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn parse(line: &str) -> Option<HistoryEntry> {
        let mut w = line.split(' ');
        let entry = HistoryEntry {
            id: w.next()?.parse().ok()?,
            kind: EntryKind::parse(w.next()?)?,
            counterparty: match w.next()? {
                "-" => None,
                name if valid_user(name) => Some(name.to_owned()),
                _ => return None,
            },
            amount: w.next()?.parse().ok()?,
            balance_after: w.next()?.parse().ok()?,
            time: w.next()?.parse().ok()?,
        };
        w.next().is_none().then_some(entry)
    }
}

/// The whole reply to `HISTORY`: `OK <count>` and one line per entry.
pub fn history_reply(entries: &[HistoryEntry]) -> String {
    let mut out = ok_line(entries.len());
    for e in entries {
        out.push_str(&e.line());
        out.push('\n');
    }
    out
}

/// For a client: how many more lines follow the first reply line `first` to the command
/// line `sent` (the entries of a successful `HISTORY`, else 0).
pub fn extra_reply_lines(sent: &str, first: &str) -> usize {
    let is_history = sent
        .split([' ', '\t'])
        .find(|w| !w.is_empty())
        .is_some_and(|w| w.eq_ignore_ascii_case("HISTORY"));
    if !is_history {
        return 0;
    }
    first
        .strip_prefix("OK ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Option<Command>, ProtoError> {
        parse_line(s.as_bytes())
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).expect_err(s).code
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse("REGISTER alice secret123").unwrap(),
            Some(Command::Register {
                user: "alice".into(),
                password: "secret123".into()
            })
        );
        assert_eq!(
            parse("login Bob_1 pw").unwrap(),
            Some(Command::Login {
                user: "Bob_1".into(),
                password: "pw".into()
            })
        );
        assert_eq!(parse("BALANCE").unwrap(), Some(Command::Balance));
        assert_eq!(
            parse("Deposit 100").unwrap(),
            Some(Command::Deposit { amount: 100 })
        );
        assert_eq!(
            parse("WITHDRAW +7").unwrap(),
            Some(Command::Withdraw { amount: 7 })
        );
        assert_eq!(
            parse("TRANSFER bob 5").unwrap(),
            Some(Command::Transfer {
                to: "bob".into(),
                amount: 5,
                request_id: None
            })
        );
        assert_eq!(
            parse("TRANSFER bob 5 req-1_x").unwrap(),
            Some(Command::Transfer {
                to: "bob".into(),
                amount: 5,
                request_id: Some("req-1_x".into())
            })
        );
        assert_eq!(
            parse("HISTORY").unwrap(),
            Some(Command::History {
                limit: HISTORY_DEFAULT
            })
        );
        assert_eq!(
            parse("HISTORY 3").unwrap(),
            Some(Command::History { limit: 3 })
        );
        assert_eq!(parse("PING").unwrap(), Some(Command::Ping));
        assert_eq!(parse(" \tquit  ").unwrap(), Some(Command::Quit));
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("  \t ").unwrap(), None);
    }

    #[test]
    fn errors_have_the_right_codes() {
        use ErrorCode::{BadRequest, InvalidAmount, UnknownCommand};
        let long_user = format!("REGISTER {} secret123", "a".repeat(33));
        let long_password = format!("REGISTER alice {}", "p".repeat(129));
        let cases = [
            ("FROB", UnknownCommand),
            ("BALANCE now", BadRequest),
            ("REGISTER alice", BadRequest),
            ("REGISTER al-ice secret123", BadRequest),
            ("REGISTER alice short", BadRequest),
            (&long_user, BadRequest),
            (&long_password, BadRequest),
            ("LOGIN alice", BadRequest),
            ("DEPOSIT", BadRequest),
            ("DEPOSIT 0", InvalidAmount),
            ("DEPOSIT -5", InvalidAmount),
            ("DEPOSIT 1.5", InvalidAmount),
            ("DEPOSIT abc", InvalidAmount),
            ("DEPOSIT 1000000000001", InvalidAmount),
            ("WITHDRAW 99999999999999999999", InvalidAmount),
            ("TRANSFER bob", BadRequest),
            ("TRANSFER bob 0", InvalidAmount),
            ("TRANSFER bob 5 bad/id", BadRequest),
            ("TRANSFER bob 5 id extra", BadRequest),
            ("HISTORY 0", BadRequest),
            ("HISTORY 1001", BadRequest),
            ("HISTORY x", BadRequest),
            ("PING PONG", BadRequest),
        ];
        for (line, expected) in cases {
            assert_eq!(code(line), expected, "{line:?}");
        }
        assert_eq!(parse_line(b"PING \xff\xfe").unwrap_err().code, BadRequest);
    }

    #[test]
    fn amounts_at_the_limits() {
        assert_eq!(parse_amount("1").unwrap(), 1);
        assert_eq!(parse_amount("1000000000000").unwrap(), MAX_AMOUNT);
        assert_eq!(parse_amount("0001").unwrap(), 1);
        for bad in ["", "+", "-1", "0", "1000000000001", "1e3", " 1", "++1", "١"] {
            assert_eq!(
                parse_amount(bad).unwrap_err().code,
                ErrorCode::InvalidAmount,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_command_echo_is_sanitised() {
        let e = parse("FR\u{7}OB\u{e9}").unwrap_err();
        assert_eq!(e.message, "unknown command FR?OB?");
        let long = "X".repeat(500);
        assert!(parse(&long).unwrap_err().message.len() < 60);
    }

    #[test]
    fn replies_are_single_lines() {
        assert_eq!(ok_line(42), "OK 42\n");
        assert_eq!(
            err_line(ErrorCode::NoSuchUser, "no\nsuch\r user"),
            "ERR NO_SUCH_USER no such  user\n"
        );
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(PONG, "PONG\n");
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let c = parse("LOGIN alice hunter2hunter2").unwrap().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn history_lines() {
        let e = HistoryEntry {
            id: 7,
            kind: EntryKind::TransferOut,
            counterparty: Some("bob".into()),
            amount: -250,
            balance_after: 750,
            time: 1_700_000_000,
        };
        assert_eq!(e.line(), "7 transfer_out bob -250 750 1700000000");
        let d = HistoryEntry {
            kind: EntryKind::Deposit,
            counterparty: None,
            amount: 1000,
            ..e.clone()
        };
        assert_eq!(d.line(), "7 deposit - +1000 750 1700000000");
        assert_eq!(
            history_reply(&[e.clone(), d.clone()]),
            format!("OK 2\n{}\n{}\n", e.line(), d.line())
        );
        assert_eq!(history_reply(&[]), "OK 0\n");
    }

    #[test]
    fn extra_lines_only_after_history() {
        assert_eq!(extra_reply_lines("HISTORY 5", "OK 3"), 3);
        assert_eq!(extra_reply_lines("history", "OK 0"), 0);
        assert_eq!(extra_reply_lines("HISTORY", "ERR NOT_AUTHENTICATED x"), 0);
        assert_eq!(extra_reply_lines("BALANCE", "OK 3"), 0);
    }

    fn entry() -> impl Strategy<Value = HistoryEntry> {
        (
            0i64..i64::MAX,
            0usize..4,
            proptest::option::of("[A-Za-z0-9_]{1,32}"),
            -MAX_AMOUNT..=MAX_AMOUNT,
            0i64..i64::MAX,
            0i64..i64::MAX,
        )
            .prop_map(
                |(id, k, counterparty, amount, balance_after, time)| HistoryEntry {
                    id,
                    kind: [
                        EntryKind::Deposit,
                        EntryKind::Withdraw,
                        EntryKind::TransferOut,
                        EntryKind::TransferIn,
                    ][k],
                    counterparty,
                    amount,
                    balance_after,
                    time,
                },
            )
    }

    proptest! {
        #[test]
        fn parsing_never_panics(line in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = parse_line(&line);
        }

        #[test]
        fn invalid_utf8_is_bad_request(
            prefix in "[A-Z ]{0,10}",
            junk in proptest::collection::vec(0x80u8..=0xff, 1..8),
        ) {
            let mut line = prefix.into_bytes();
            line.extend_from_slice(&junk);
            if std::str::from_utf8(&line).is_err() {
                prop_assert_eq!(parse_line(&line).unwrap_err().code, ErrorCode::BadRequest);
            }
        }

        #[test]
        fn valid_amounts_round_trip(v in 1..=MAX_AMOUNT) {
            prop_assert_eq!(parse_amount(&v.to_string()).unwrap(), v);
            let cmd = parse(&format!("DEPOSIT {v}")).unwrap().unwrap();
            prop_assert_eq!(cmd, Command::Deposit { amount: v });
        }

        #[test]
        fn out_of_range_amounts_are_invalid(v in prop_oneof![i64::MIN..=0, MAX_AMOUNT + 1..=i64::MAX]) {
            prop_assert_eq!(parse_amount(&v.to_string()).unwrap_err().code, ErrorCode::InvalidAmount);
        }

        #[test]
        fn user_names(name in "[A-Za-z0-9_]{1,32}", bad in "[A-Za-z0-9_]{0,5}[^A-Za-z0-9_ \t][A-Za-z0-9_]{0,5}") {
            prop_assert!(valid_user(&name));
            prop_assert!(!valid_user(&bad));
            let reg = format!("REGISTER {bad} password1");
            if let Ok(r) = parse(&reg) {
                // `bad` may have been split by whitespace-like characters: never accepted as a name.
                let accepted = matches!(r, Some(Command::Register { ref user, .. }) if user == &bad);
                prop_assert!(!accepted);
            }
        }

        #[test]
        fn error_lines_are_one_line(msg in ".{0,80}", c in 0usize..11) {
            let line = err_line(ErrorCode::ALL[c], &msg);
            prop_assert!(line.ends_with('\n'));
            prop_assert_eq!(line.matches('\n').count(), 1);
            prop_assert!(!line.contains('\r'));
            let prefix = format!("ERR {} ", ErrorCode::ALL[c]);
            prop_assert!(line.starts_with(&prefix));
        }

        #[test]
        fn history_lines_round_trip(e in entry()) {
            prop_assert_eq!(HistoryEntry::parse(&e.line()), Some(e));
        }

        #[test]
        fn command_words_are_case_insensitive(word in "(?i)ping|balance|quit") {
            prop_assert!(parse(&word).unwrap().is_some());
        }
    }

    // The properties of the `bank_protocol` fuzz target (fuzz/src/lib.rs).

    /// The canonical line of a command: upper-case word, arguments separated by one space.
    fn canonical(cmd: &Command) -> String {
        match cmd {
            Command::Register { user, password } => format!("REGISTER {user} {password}"),
            Command::Login { user, password } => format!("LOGIN {user} {password}"),
            Command::Deposit { amount } => format!("DEPOSIT {amount}"),
            Command::Withdraw { amount } => format!("WITHDRAW {amount}"),
            Command::Transfer {
                to,
                amount,
                request_id: Some(id),
            } => format!("TRANSFER {to} {amount} {id}"),
            Command::Transfer { to, amount, .. } => format!("TRANSFER {to} {amount}"),
            Command::History { limit } => format!("HISTORY {limit}"),
            Command::Balance | Command::Ping | Command::Quit => cmd.name().to_owned(),
        }
    }

    /// What a parsed command promises about its fields.
    fn valid_command(cmd: &Command) -> bool {
        let word = |w: &str| !w.is_empty() && !w.contains([' ', '\t']);
        let amount = |a: &i64| (1..=MAX_AMOUNT).contains(a);
        match cmd {
            Command::Register { user, password } => {
                valid_user(user) && valid_password(password) && word(password)
            }
            Command::Login { user, password } => word(user) && word(password),
            Command::Deposit { amount: a } | Command::Withdraw { amount: a } => amount(a),
            Command::Transfer {
                to,
                amount: a,
                request_id,
            } => word(to) && amount(a) && request_id.as_deref().is_none_or(valid_request_id),
            Command::History { limit } => (1..=HISTORY_MAX).contains(limit),
            Command::Balance | Command::Ping | Command::Quit => true,
        }
    }

    /// Any valid command.
    fn command() -> impl Strategy<Value = Command> {
        let user = "[A-Za-z0-9_]{1,32}";
        let password = "[!-~]{8,128}";
        let amount = 1..=MAX_AMOUNT;
        prop_oneof![
            (user, password).prop_map(|(user, password)| Command::Register { user, password }),
            ("[!-~]{1,40}", "[!-~]{1,40}")
                .prop_map(|(user, password)| Command::Login { user, password }),
            amount
                .clone()
                .prop_map(|amount| Command::Deposit { amount }),
            amount
                .clone()
                .prop_map(|amount| Command::Withdraw { amount }),
            (
                "[!-~]{1,40}",
                amount,
                proptest::option::of("[A-Za-z0-9_-]{1,64}")
            )
                .prop_map(|(to, amount, request_id)| Command::Transfer {
                    to,
                    amount,
                    request_id
                }),
            (1..=HISTORY_MAX).prop_map(|limit| Command::History { limit }),
            Just(Command::Balance),
            Just(Command::Ping),
            Just(Command::Quit),
        ]
    }

    /// A line of words likely to mean something: command words in any case, amounts,
    /// names, junk; separated by runs of spaces and tabs.
    fn wordy_line() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            "(?i)register|login|balance|deposit|withdraw|transfer|history|ping|quit",
            "[+]?[0-9]{1,14}",
            "[A-Za-z0-9_-]{1,70}",
            "[^ \t\n]{1,12}",
        ];
        (
            proptest::collection::vec((word, "[ \t]{1,3}"), 0..5),
            "[ \t]{0,2}",
        )
            .prop_map(|(words, lead)| {
                let mut line = lead;
                for (w, sep) in words {
                    line.push_str(&w);
                    line.push_str(&sep);
                }
                line
            })
    }

    proptest! {
        /// Command -> canonical line -> the same command.
        #[test]
        fn commands_round_trip(cmd in command()) {
            prop_assert!(valid_command(&cmd));
            prop_assert_eq!(parse(&canonical(&cmd)), Ok(Some(cmd)));
        }

        /// Any line: an accepted command is valid and its canonical line parses back to it;
        /// the result depends on the words, not the spacing, nor the case of the command
        /// word; an error reply is one line.
        #[test]
        fn parsing_depends_on_the_words_only(line in wordy_line()) {
            let parsed = parse(&line);
            match &parsed {
                Ok(Some(cmd)) => {
                    prop_assert!(valid_command(cmd), "{:?}", cmd);
                    prop_assert_eq!(parse(&canonical(cmd)), Ok(Some(cmd.clone())));
                }
                Ok(None) => prop_assert!(line.trim_matches([' ', '\t']).is_empty()),
                Err(e) => prop_assert_eq!(e.line().matches(['\n', '\r']).count(), 1),
            }
            let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            prop_assert_eq!(&parse(&words.join(" ")), &parsed);
            if let Some((first, args)) = words.split_first() {
                let flipped: String = first
                    .chars()
                    .map(|c| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
                    .collect();
                let other = parse(&[flipped.as_str()].iter().chain(args).copied().collect::<Vec<_>>().join(" "));
                match (&parsed, &other) {
                    // The unknown-command message echoes the word.
                    (Err(a), Err(b)) => prop_assert_eq!(a.code, b.code),
                    _ => prop_assert_eq!(&other, &parsed),
                }
            }
        }

        /// The server's pipeline (`LineCodec` at `MAX_LINE`, then `parse_line`) gives the
        /// same results whether the stream arrives at once or in random pieces.
        #[test]
        fn split_stream_parses_the_same(
            lines in proptest::collection::vec((wordy_line(), any::<bool>()), 0..8),
            junk in proptest::collection::vec(any::<u8>(), 0..16),
            pieces in proptest::collection::vec(1usize..32, 1..6),
        ) {
            use duo_net::InputBuffer;
            use duo_net::codec::LineCodec;
            let mut wire = Vec::new();
            for (l, crlf) in &lines {
                wire.extend_from_slice(l.as_bytes());
                wire.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
            wire.extend_from_slice(&junk);
            let codec = LineCodec::new(MAX_LINE);
            let run = |sizes: &[usize]| {
                let mut input = InputBuffer::new();
                let mut got = Vec::new();
                let mut rest = &wire[..];
                let mut sizes = sizes.iter().copied().cycle();
                while !rest.is_empty() {
                    let n = sizes.next().unwrap_or(usize::MAX).min(rest.len());
                    input.append(&rest[..n]).unwrap();
                    rest = &rest[n..];
                    codec.decode_all(&mut input, |l| got.push(parse_line(l))).unwrap();
                }
                (got, input.peek().to_vec())
            };
            let (one, one_left) = run(&[usize::MAX]);
            let (split, split_left) = run(&pieces);
            prop_assert_eq!(one.len(), lines.len() + junk.iter().filter(|&&b| b == b'\n').count());
            prop_assert_eq!(one, split);
            prop_assert_eq!(one_left, split_left);
        }
    }
}
