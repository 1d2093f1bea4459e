//! A database the server cannot use: a path in a missing directory, a directory, a file that
//! is not SQLite, a truncated bank database, another program's SQLite database, a schema
//! from the future, a read-only file or directory. Each time `bank serve` must exit with
//! status 1 (2 is for usage errors) and a message on stderr that says why, before it prints
//! `listening on`: never start an empty bank on a database it could not really open, and
//! never change a file that is not its own.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, Server, TempDir, BANK, PW};
use duo_testkit::{run_within, Rng};

/// How a `bank serve` run ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `[wrapper..] bank serve --db <db>` to its exit (at most 10 s; a server that is still
/// running then has started, which fails the test).
fn serve(wrapper: &[&str], db: &Path) -> Run {
    let (program, pre) = match wrapper.split_first() {
        Some((p, rest)) => (*p, rest),
        None => (BANK, &[][..]),
    };
    let mut cmd = Command::new(program);
    cmd.args(pre);
    if !wrapper.is_empty() {
        cmd.arg(BANK);
    }
    common::serve_args(&mut cmd, db).env("RUST_LOG", "warn");
    let done = run_within(&mut cmd, Duration::from_secs(10)).unwrap_or_else(|e| {
        panic!(
            "bank serve --db {} (it started on a bad database): {e}",
            db.display()
        )
    });
    Run {
        code: done.status.code(),
        stdout: done.stdout,
        stderr: done.stderr,
    }
}

/// Asserts a clean refusal: status 1, no `listening on`, `bank: error: cannot open
/// database <db>` on stderr with `why` in it.
fn assert_refused(run: &Run, db: &Path, why: &str) {
    let ctx = format!(
        "db {}: status {:?}\nstdout: {}\nstderr: {}",
        db.display(),
        run.code,
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, Some(1), "runtime error status expected; {ctx}");
    assert!(!run.stdout.contains("listening on"), "it started; {ctx}");
    let expected = format!("bank: error: cannot open database {}", db.display());
    assert!(
        run.stderr.contains(&expected),
        "no {expected:?} on stderr; {ctx}"
    );
    assert!(run.stderr.contains(why), "no {why:?} on stderr; {ctx}");
}

/// A real bank database with two users and some money in it, written by the server.
fn make_bank_db(db: &Path) {
    let mut server = Server::start(db, &[]);
    let mut a = Client::logged_in(server.addr, "alice");
    Client::logged_in(server.addr, "bob");
    assert_eq!(a.cmd("DEPOSIT 1000"), "OK 1000");
    assert_eq!(a.cmd("TRANSFER bob 250"), "OK 750");
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());
}

/// Builds a SQLite file the way another program would.
fn foreign_db(db: &Path, sql: &str) {
    let c = rusqlite::Connection::open(db).expect("create a SQLite file");
    c.execute_batch(sql).expect("foreign schema");
}

/// The names and `user_version` of a SQLite file, read without changing it.
fn describe(db: &Path) -> (Vec<String>, i64, String) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open read-only");
    let names = c
        .prepare("SELECT name FROM sqlite_master ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    let version = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mode = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    (names, version, mode)
}

#[test]
fn a_new_database_is_created_and_served() {
    // The control: the runner above does see a good start (and the bank does create a
    // database where there is none, or in an empty file).
    let dir = TempDir::new("baddb-ok");
    make_bank_db(&dir.join("bank.db"));
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    make_bank_db(&empty);
    let (names, version, mode) = describe(&empty);
    assert!(names.contains(&"users".to_owned()), "{names:?}");
    assert_eq!((version, mode.as_str()), (1, "wal"));
}

#[test]
fn a_missing_directory_is_not_created() {
    let dir = TempDir::new("baddb-nodir");
    let db = dir.path().join("no").join("such").join("bank.db");
    let run = serve(&[], &db);
    assert_refused(&run, &db, "unable to open database file");
    assert!(!dir.path().join("no").exists(), "directories were created");
}

#[test]
fn a_directory_is_not_a_database() {
    let dir = TempDir::new("baddb-dir");
    let db = dir.path().join("bank.db");
    std::fs::create_dir(&db).unwrap();
    let run = serve(&[], &db);
    assert_refused(&run, &db, "unable to open database file");
    assert_eq!(std::fs::read_dir(&db).unwrap().count(), 0);
}

#[test]
fn random_bytes_are_refused_and_left_alone() {
    let dir = TempDir::new("baddb-random");
    let db = dir.join("bank.db");
    let mut rng = Rng::new(7);
    let bytes: Vec<u8> = (0..8192).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(&db, &bytes).unwrap();
    let run = serve(&[], &db);
    assert_refused(&run, &db, "file is not a database");
    assert!(std::fs::read(&db).unwrap() == bytes, "the file was changed");
    // A text file that happens to be called bank.db.
    std::fs::write(&db, "accounts:\n  alice: 100\n").unwrap();
    let run = serve(&[], &db);
    assert_refused(&run, &db, "file is not a database");
}

#[test]
fn a_sqlite_header_with_garbage_behind_it_is_refused() {
    let dir = TempDir::new("baddb-header");
    let db = dir.join("bank.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    let mut rng = Rng::new(11);
    bytes.extend((0..200).map(|_| rng.next_u64() as u8));
    std::fs::write(&db, &bytes).unwrap();
    let run = serve(&[], &db);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(!run.stdout.contains("listening on"));
    assert!(
        run.stderr.contains("bank: error: cannot open database"),
        "{}",
        run.stderr
    );
    assert!(std::fs::read(&db).unwrap() == bytes, "the file was changed");
}

#[test]
fn a_truncated_bank_database_is_refused() {
    let dir = TempDir::new("baddb-trunc");
    let db = dir.join("bank.db");
    make_bank_db(&db);
    let full = std::fs::read(&db).unwrap();
    assert!(full.len() >= 4 * 4096, "{} bytes", full.len());
    // Cut inside the first page, and after it (the schema points at missing pages).
    for len in [100, 2048, 4096, full.len() - 4096] {
        std::fs::write(&db, &full[..len]).unwrap();
        let run = serve(&[], &db);
        assert_refused(&run, &db, "database disk image is malformed");
    }
}

#[test]
fn another_programs_database_is_refused_and_not_changed() {
    let dir = TempDir::new("baddb-foreign");
    // A database with an `accounts` table: the bank must not add its tables to it (nor
    // switch it to WAL mode) and serve an empty bank from it.
    let db = dir.path().join("shop.db");
    foreign_db(
        &db,
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, cents INTEGER);
         INSERT INTO accounts VALUES (1, 'alice', 500);",
    );
    let before = describe(&db);
    let run = serve(&[], &db);
    assert_refused(&run, &db, "not a bank database");
    assert_eq!(describe(&db), before, "the foreign database was changed");

    // Its own `users` table, and the same `user_version` as the bank's: the bank's
    // `CREATE TABLE IF NOT EXISTS users` would keep it, and every command would fail.
    let db = dir.path().join("crm.db");
    foreign_db(
        &db,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
         INSERT INTO users (email) VALUES ('a@example.com');
         PRAGMA user_version = 1;",
    );
    let before = describe(&db);
    let run = serve(&[], &db);
    assert_refused(&run, &db, "not a bank database");
    assert_eq!(describe(&db), before, "the foreign database was changed");
}

#[test]
fn a_schema_from_a_newer_version_is_refused() {
    let dir = TempDir::new("baddb-newer");
    let db = dir.join("bank.db");
    make_bank_db(&db);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA user_version = 2;").unwrap();
    }
    let run = serve(&[], &db);
    assert_refused(&run, &db, "schema version 2 is newer");
}

/// How to run the server so that file permissions apply to it: directly when the tests
/// run as an ordinary user; as `nobody` through `setpriv` when they run as root (root
/// ignores permission bits, so a `chmod 444` file is writable to it). `None` if neither is
/// possible.
fn unprivileged() -> Option<(Vec<&'static str>, Option<u32>)> {
    let uid = std::fs::metadata("/proc/self").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    })?;
    if uid != 0 {
        return Some((Vec::new(), None));
    }
    const NOBODY: u32 = 65534;
    let wrapper = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    // setpriv must exist, and `nobody` must be able to run the binary where it lies.
    let ok = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .args([BANK, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some((wrapper, Some(NOBODY)))
}

#[test]
fn a_read_only_database_is_refused() {
    let Some((wrapper, owner)) = unprivileged() else {
        eprintln!(
            "SKIPPED a_read_only_database_is_refused: running as root (which ignores file \
             permissions) and cannot run the server as `nobody` with setpriv"
        );
        return;
    };
    let dir = TempDir::new("baddb-ro");
    let chown = |p: &Path| {
        if let Some(uid) = owner {
            std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
        }
    };
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chown(dir.path());

    // A bank database the server may read but not write.
    let db = dir.path().join("ro-file.db");
    make_bank_db(&db);
    chown(&db);
    chmod(&db, 0o444);
    let before = std::fs::read(&db).unwrap();
    let run = serve(&wrapper, &db);
    assert_refused(&run, &db, "readonly database");
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the file was changed"
    );
    chmod(&db, 0o644);

    // A writable bank database in a directory where its WAL cannot be created.
    let sub = dir.path().join("ro-dir");
    std::fs::create_dir(&sub).unwrap();
    let db = sub.join("bank.db");
    make_bank_db(&db);
    chown(&sub);
    chown(&db);
    chmod(&sub, 0o555);
    let run = serve(&wrapper, &db);
    chmod(&sub, 0o755); // before any assertion, so the temp dir can be removed
    assert_refused(&run, &db, "readonly database");

    // No database yet, and a directory where it cannot be created.
    let db = sub.join("new.db");
    chmod(&sub, 0o555);
    let run = serve(&wrapper, &db);
    chmod(&sub, 0o755);
    assert_refused(&run, &db, "unable to open database file");
    assert!(!db.exists());

    // The database is intact for a server that may write it.
    let db = dir.path().join("ro-file.db");
    let server = Server::start(&db, &[]);
    let mut a = Client::connect(server.addr);
    assert_eq!(a.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
    assert_eq!(a.balance(), 750);
}
