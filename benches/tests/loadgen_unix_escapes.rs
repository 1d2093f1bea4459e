//! `loadgen --addr unix:...` takes a Unix-domain address in the form duo's servers print
//! it (`listening on unix:...`, [`duo_net::Endpoint`]'s display): a byte of the path or
//! abstract name that is not printable ASCII, or a backslash, is `\xNN` there. It used to
//! take the text literally, so such an address, pasted as printed, named another socket.
//! (Written by a review helper: the test failed before its fix.)

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;

use common::serve_unix_echo;
use duo_net::Endpoint;
use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::run_within;

/// Runs `loadgen rr` for a moment against `addr`: its exit code, JSON and stdout.
fn rr(addr: &str) -> (Option<i32>, LoadgenJson, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args([
        "rr", "--conns", "2", "--secs", "0.3", "--addr", addr, "--json",
    ]);
    let out = run_within(&mut cmd, Duration::from_secs(30)).expect("loadgen runs");
    let json = LoadgenJson::find_in(&out.stdout)
        .unwrap_or_else(|| panic!("no JSON line in {:?} ({})", out.stdout, out.stderr));
    (out.status.code(), json, out.stdout)
}

/// Asserts that `loadgen rr --addr printed` ran without an error.
fn assert_served(printed: &str) {
    assert!(printed.contains("\\x"), "not escaped: {printed}");
    let (code, json, stdout) = rr(printed);
    assert_eq!(code, Some(0), "{printed}: {stdout}");
    assert_eq!(
        json.error_total, 0,
        "{printed}: the socket was not found: {stdout}"
    );
    assert!(json.work().is_some_and(|w| w > 0), "{printed}: {stdout}");
    assert_eq!(json.addr.as_deref(), Some(printed), "{stdout}");
}

/// A socket file whose name has a newline, a backslash and UTF-8 in it, addressed as a
/// server prints it.
#[test]
fn a_printed_path_with_escapes_reaches_its_socket() {
    let name = format!("duo-lg-{}-a\nb\\c-é.sock", std::process::id());
    let path: PathBuf = std::env::temp_dir().join(name);
    let _ = std::fs::remove_file(&path);
    serve_unix_echo(UnixListener::bind(&path).expect("bind"));
    let printed = Endpoint::unix(&path).expect("a short path").to_string();
    assert_served(&printed);
    let _ = std::fs::remove_file(&path);
}

/// An abstract name with bytes that are not printable (and not UTF-8), addressed as a
/// server prints it (`unix:@...`).
#[test]
fn a_printed_abstract_name_with_escapes_reaches_its_socket() {
    let mut name = format!("duo-lg-{}-", std::process::id()).into_bytes();
    name.extend_from_slice(b"\x01\xff tab\t");
    let addr = SocketAddr::from_abstract_name(&name).expect("an abstract name");
    serve_unix_echo(UnixListener::bind_addr(&addr).expect("bind"));
    let printed = Endpoint::abstract_name(&name)
        .expect("a short name")
        .to_string();
    assert!(printed.starts_with("unix:@"), "{printed}");
    assert_served(&printed);
}

/// What the parser refuses is a usage error naming the address (status 2), as before.
#[test]
fn an_empty_unix_address_is_a_usage_error() {
    for addr in ["unix:", "unix:@"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
        cmd.args(["rr", "--conns", "1", "--secs", "0.1", "--addr", addr]);
        let out = run_within(&mut cmd, Duration::from_secs(30)).expect("loadgen runs");
        assert_eq!(out.status.code(), Some(2), "{addr}: {}", out.stderr);
        assert!(
            out.stderr.contains("empty") && out.stderr.contains(addr),
            "{addr}: {}",
            out.stderr
        );
    }
}
