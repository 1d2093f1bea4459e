//! Review round 10 of the process helpers: `bank serve --processes` whose stdout nobody
//! reads. Its `listening on` line could not be written: it logged that and served on
//! (exit status 0 at the next stop), where `bank serve` without `--processes` fails at
//! once. Nobody can learn the address (a script waiting for the line waits for ever): the
//! supervisor stops its worker and exits 1 now.

mod common;

use std::process::Command;

use common::{serve_args, TempDir, BANK};
use duo_testkit::{run_with_gone, Gone, LIMIT};

#[test]
fn processes_with_stdout_gone_exit_1() {
    let dir = TempDir::new("bank-stdout-gone");
    let mut cmd = Command::new(BANK);
    serve_args(&mut cmd, dir.join("bank.db"))
        .args(["--processes", "1"])
        .env("RUST_LOG", "info");
    let out = run_with_gone(&mut cmd, Gone::Stdout, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stderr.contains("listening on"), "{out:?}");
}

/// The forms a peer's address reads back as, but nothing listens on or connects to
/// (`unix:(unnamed)`, `unix:@(empty)`), are usage errors (2) for `serve --listen` and
/// `client --connect`, as `unix:@` is, not a failed start or connect (1).
#[test]
fn peer_only_forms_are_usage_errors() {
    let dir = TempDir::new("bank-peer-forms");
    for form in ["unix:(unnamed)", "unix:@(empty)"] {
        let mut serve = Command::new(BANK);
        serve.args(["serve", "--hash-cost", "low", "--listen", form, "--db"]);
        serve.arg(dir.join("bank.db"));
        let mut client = Command::new(BANK);
        client.args(["client", "--connect", form, "PING"]);
        for cmd in [&mut serve, &mut client] {
            let out = duo_testkit::run_within(cmd, LIMIT).unwrap();
            assert_eq!(out.status.code(), Some(2), "{form}: {out:?}");
            assert!(out.stderr.contains("not an address"), "{form}: {out:?}");
        }
    }
}
