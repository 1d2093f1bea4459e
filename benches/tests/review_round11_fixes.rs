//! Review round 11 of this round's own fixes (a review helper): a Unix-domain path may fill
//! all 108 bytes of `sun_path` (duo's endpoints, servers, clients and the bank take it
//! since `duo_sys::unix_addr`), but the load generator still built its target with
//! `socket2::SockAddr::unix`, which stops a path at 107 bytes: `loadgen --addr` refused
//! the address a duo server printed for such a socket. (The test failed before its fix.)

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::Duration;

mod common;

use common::serve_unix_echo;
use duo_sys::socket2::{Domain, Socket, Type};
use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::{run_within, TempDir};

#[test]
fn loadgen_connects_to_a_path_that_fills_sun_path() {
    let dir = TempDir::new("r11-loadgen-108");
    let mut path = dir.path().as_os_str().as_bytes().to_vec();
    path.push(b'/');
    assert!(path.len() < duo_sys::SUN_PATH_LEN, "temp dir too deep");
    path.resize(duo_sys::SUN_PATH_LEN, b's');
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
    socket
        .bind(&duo_sys::unix_addr(&path).expect("a 108-byte path"))
        .expect("Linux binds a 108-byte path");
    socket.listen(128).expect("listen");
    serve_unix_echo(UnixListener::from(socket));

    // As a duo server prints it.
    let endpoint = duo_net::Endpoint::unix(std::ffi::OsStr::from_bytes(&path)).expect("endpoint");
    let addr = endpoint.to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args([
        "rr", "--conns", "2", "--secs", "0.3", "--addr", &addr, "--json",
    ]);
    let out = run_within(&mut cmd, Duration::from_secs(30)).expect("loadgen runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{addr}: {} {}",
        out.stdout,
        out.stderr
    );
    let json = LoadgenJson::find_in(&out.stdout)
        .unwrap_or_else(|| panic!("no JSON line in {:?} ({})", out.stdout, out.stderr));
    assert_eq!(json.error_total, 0, "{addr}: {}", out.stdout);
    assert!(json.work().is_some_and(|w| w > 0), "{}", out.stdout);
}
