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
    /// The database server cannot be reached (down, restarting). Reads and logins did not
    /// happen; a write did not happen either, unless the connection broke while it was
    /// committing: a `TRANSFER` retried with the same request id then answers what did.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for tests and parsing.
    pub const ALL: [ErrorCode; 12] = [
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
        ErrorCode::Unavailable,
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
            ErrorCode::Unavailable => "UNAVAILABLE",
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
        if !valid_password(password) {
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

/// Whether `line` (without its line end) is a `LOGIN`, well-formed or not: its first word
/// is `LOGIN` in any case, whatever follows (the wrong number of words, bytes that are not
/// UTF-8). Such a line ends the connection's session even when [`parse_line`] refuses it.
pub fn is_login_line(line: &[u8]) -> bool {
    line.split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())
        .is_some_and(|w| w.eq_ignore_ascii_case(b"LOGIN"))
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
mod tests;
