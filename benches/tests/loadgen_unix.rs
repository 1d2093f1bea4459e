//! `loadgen --addr unix:...`: rr, pingpong, churn and idle against a tiny in-process echo
//! server on a Unix-domain socket (one std thread per connection), about a second each,
//! checking the `--json` output.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;

use common::serve_unix_echo;
use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::run_within;

/// Starts an echo server on a fresh socket path; it lives as long as the test process.
fn echo_server(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("duo-loadgen-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    serve_unix_echo(listener);
    path
}

fn loadgen(args: &[&str]) -> (Option<i32>, LoadgenJson, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(args).arg("--json");
    let out = run_within(&mut cmd, Duration::from_secs(30)).expect("loadgen runs");
    let json = LoadgenJson::find_in(&out.stdout)
        .unwrap_or_else(|| panic!("no JSON line in {:?} ({})", out.stdout, out.stderr));
    (out.status.code(), json, out.stdout)
}

#[test]
fn every_echo_mode_runs_over_a_unix_socket() {
    let path = echo_server("modes");
    let addr = format!("unix:{}", path.display());
    for mode in [
        &["rr", "--conns", "4", "--secs", "0.5"][..],
        &[
            "pingpong", "--conns", "2", "--size", "16384", "--secs", "0.5",
        ],
        &["churn", "--conns", "2", "--secs", "0.5"],
        &["idle", "--conns", "50", "--hold", "0.2"],
    ] {
        let mut args = mode.to_vec();
        args.extend(["--addr", &addr]);
        let (code, json, stdout) = loadgen(&args);
        assert_eq!(code, Some(0), "{args:?}: {stdout}");
        assert_eq!(json.error_total, 0, "{args:?}: {stdout}");
        assert_eq!(json.addr.as_deref(), Some(addr.as_str()), "{stdout}");
        assert!(json.work().is_some_and(|w| w > 0), "{args:?}: {stdout}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_missing_socket_is_counted_as_errors() {
    let path = std::env::temp_dir().join(format!("duo-loadgen-{}-none.sock", std::process::id()));
    let addr = format!("unix:{}", path.display());
    let (_, json, stdout) = loadgen(&["rr", "--conns", "1", "--secs", "0.3", "--addr", &addr]);
    assert!(json.error_total > 0, "{stdout}");
}
