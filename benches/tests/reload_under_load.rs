//! Zero-downtime reloads under load: `loadgen rr` and `loadgen churn` run against
//! `echo serve --processes 2` while its supervisor reloads five times (a new generation of
//! workers on the same listening socket, the old one drains). Not one connect is refused,
//! not one connection is reset, not one reply is lost or altered on a connection the
//! server did not close; the server's orderly closes of old-generation connections (after
//! their replies were written) are counted apart, and the clients reconnect.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::{children, package_binary, run_within, send_signal, wait_until, ChildServer};

/// Reloads under load.
const RELOADS: usize = 5;
/// How long each load generator runs: long enough for every reload, which the test checks.
const LOAD_SECS: u64 = 30;

/// Starts `loadgen MODE ... --reconnect --json` on a thread; `done` is set when it ends.
fn load(
    mode: &'static str,
    addr: String,
    args: &'static [&'static str],
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<LoadgenJson> {
    thread::spawn(move || {
        let ran = run_within(
            Command::new(env!("CARGO_BIN_EXE_loadgen"))
                .arg(mode)
                .args(["--addr", &addr, "--secs", &LOAD_SECS.to_string()])
                .args(args)
                .args(["--reconnect", "--timeout", "10", "--json"]),
            Duration::from_secs(LOAD_SECS + 60),
        );
        done.store(true, Ordering::SeqCst);
        let ran = ran.unwrap_or_else(|e| panic!("loadgen {mode}: {e}"));
        assert!(ran.status.success(), "loadgen {mode}: {ran:?}");
        LoadgenJson::find_in(&ran.stdout).unwrap_or_else(|| panic!("loadgen {mode}: {ran:?}"))
    })
}

#[test]
fn five_reloads_under_rr_and_churn_refuse_reset_and_lose_nothing() {
    let mut echo = Command::new(package_binary("echo", "echo"));
    echo.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--processes",
        "2",
        "--io-threads",
        "1",
        "--drain-timeout",
        "5",
    ]);
    let mut server = ChildServer::start(echo);
    let sup = server.pid();
    wait_until("two workers", || children(sup).len() == 2);
    let addr = server.addr().to_string();

    let (rr_done, churn_done) = (Arc::default(), Arc::default());
    let rr = load(
        "rr",
        addr.clone(),
        &["--conns", "40", "--size", "64", "--threads", "1"],
        Arc::clone(&rr_done),
    );
    let churn = load(
        "churn",
        addr,
        &["--conns", "8", "--threads", "1"],
        Arc::clone(&churn_done),
    );

    for i in 1..=RELOADS {
        let old = children(sup);
        send_signal(sup, "HUP").expect("kill -HUP");
        // Done when the new generation serves and the old one has drained and exited.
        wait_until(
            &format!("reload {i}: a new generation, the old one gone"),
            || {
                let now = children(sup);
                now.len() == 2 && now.is_disjoint(&old)
            },
        );
        assert!(
            !rr_done.load(Ordering::SeqCst) && !churn_done.load(Ordering::SeqCst),
            "the load ended before reload {i}: it must run through every reload"
        );
    }

    let (rr, churn) = (rr.join().expect("rr"), churn.join().expect("churn"));
    for (name, r) in [("rr", &rr), ("churn", &churn)] {
        println!(
            "{name}: {} replies, server_closed {:?}, unanswered_on_close {:?}, errors {:?}",
            r.msgs.unwrap_or(0),
            r.server_closed,
            r.unanswered_on_close,
            r.errors
        );
        assert_eq!(
            r.error_total, 0,
            "{name}: refused, reset, timeout or mismatch: {r:?}"
        );
        assert!(
            !r.verification_failed && r.failure.is_none(),
            "{name}: {r:?}"
        );
        assert!(r.msgs.is_some_and(|m| m > 0), "{name}: {r:?}");
    }
    assert!(
        server.stderr().matches("reload").count() >= RELOADS,
        "the supervisor logged each reload: {}",
        server.stderr()
    );
    let (status, _) = server.terminate("TERM", Duration::from_secs(15));
    assert!(status.success(), "echo exited with {status}");
}
