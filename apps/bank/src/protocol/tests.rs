//! Unit tests of the bank's protocol module.

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
