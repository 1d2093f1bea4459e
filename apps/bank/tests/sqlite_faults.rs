//! The SQLite backend when its files change under a running server: the database file
//! removed, renamed or replaced, the WAL file removed. A write the server can no longer
//! make durable where the next start will look for it must not be answered `OK`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Client, Server, TempDir};

/// `bank.db` plus `suffix` (`-wal`, `-shm`).
fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A server on a fresh database in `dir`, alice logged in with 100.
fn serve_alice(dir: &TempDir) -> (Server, Client) {
    let server = Server::start(&dir.join("bank.db"), &[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    Client::logged_in(server.addr, "bob");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    (server, alice)
}

/// After `fault` (on the database's path), writes are refused, not acknowledged into a
/// file the next start will not open. Returns the directory and the running server.
fn writes_are_refused_after(tag: &str, fault: impl FnOnce(&Path)) -> (TempDir, Server) {
    let dir = TempDir::new(tag);
    let (server, mut alice) = serve_alice(&dir);
    fault(&dir.join("bank.db"));
    for line in ["DEPOSIT 5", "WITHDRAW 5", "TRANSFER bob 5 r1"] {
        let reply = alice.cmd(line);
        assert!(
            reply.starts_with("ERR INTERNAL"),
            "{tag}: {line} got {reply:?}: acknowledged into a file that is gone"
        );
    }
    (dir, server)
}

/// Stops `server` with SIGTERM: a clean exit.
fn stop(mut server: Server) {
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

/// alice's balance in the database at `db`, read by a new server.
fn alice_balance(db: &Path) -> i64 {
    let server = Server::start(db, &[]);
    let mut alice = Client::connect(server.addr);
    let login = alice.cmd(&format!("LOGIN alice {}", common::PW));
    assert_eq!(login, "OK welcome alice", "{}", db.display());
    alice.balance()
}

#[test]
fn a_write_after_the_database_file_is_removed_is_refused() {
    let (_dir, server) = writes_are_refused_after("rm-db", |db| {
        for suffix in ["", "-wal", "-shm"] {
            std::fs::remove_file(with_suffix(db, suffix)).unwrap();
        }
    });
    stop(server);
}

/// What was acknowledged before the rename is in the renamed file even after a crash.
#[test]
fn a_write_after_the_database_file_is_renamed_is_refused() {
    let (dir, mut server) = writes_are_refused_after("mv-db", |db| {
        std::fs::rename(db, with_suffix(db, ".moved")).unwrap();
    });
    server.kill9();
    assert_eq!(
        alice_balance(&with_suffix(&dir.join("bank.db"), ".moved")),
        100
    );
}

#[test]
fn a_write_after_the_database_file_is_replaced_is_refused() {
    let (_dir, server) = writes_are_refused_after("replace-db", |db| {
        let copy = with_suffix(db, ".copy");
        std::fs::copy(db, &copy).unwrap();
        std::fs::rename(&copy, db).unwrap();
    });
    stop(server);
}

/// Commits go to the WAL file: one written into a removed WAL file would be lost at a
/// crash, and so would those acknowledged before, were they not copied into the database
/// file when the removal is seen.
#[test]
fn a_write_after_the_wal_file_is_removed_is_refused() {
    let (dir, mut server) = writes_are_refused_after("rm-wal", |db| {
        std::fs::remove_file(with_suffix(db, "-wal")).unwrap();
    });
    server.kill9();
    assert_eq!(alice_balance(&dir.join("bank.db")), 100);
}

/// A database reached through a symbolic link (SQLite keeps its WAL file beside the
/// link's target) is served, and its writes are acknowledged.
#[test]
fn a_database_behind_a_symbolic_link_is_served() {
    let dir = TempDir::new("symlink");
    let target = dir.path().join("real").join("bank.db");
    std::fs::create_dir(target.parent().unwrap()).unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for _ in 0..2 {
        let server = Server::start(&link, &[]);
        let mut alice = Client::logged_in(server.addr, "alice");
        let before = alice.balance();
        assert_eq!(alice.cmd("DEPOSIT 5"), format!("OK {}", before + 5));
        stop(server);
    }
    assert_eq!(alice_balance(&target), 10);
}
