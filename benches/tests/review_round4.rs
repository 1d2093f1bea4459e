//! Review of round 4: `loadgen rr --rate` at a rate the generator cannot keep.
//!
//! Every request whose intended send time falls in the measured phase is either sent or
//! counted `unsent`; none due after the phase ends is either. The phase ends at `go +
//! --secs`, but the worker notices it a little later (its last wait wakes up late): the
//! requests due in that overshoot were counted `unsent` too, and recorded as waits.

mod common;

use std::process::Command;
use std::time::Duration;

use common::loadgen;
use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::ChildServer;

#[test]
fn requests_due_after_the_phase_are_not_counted_unsent() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raw_epoll_echo"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    let server = ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .start();
    let addr = server.addr().to_string();
    // One request per nanosecond on one connection: 300 000 000 due in 0.3 s, of which
    // the connection sends a few thousand; the rest are unsent.
    let (code, out) = loadgen(&[
        "rr",
        "--addr",
        &addr,
        "--json",
        "--conns",
        "1",
        "--secs",
        "0.3",
        "--rate",
        "1e9",
        "--timeout",
        "5",
    ]);
    assert_eq!(code, 0, "{out}");
    let json = LoadgenJson::find_in(&out).unwrap_or_else(|| panic!("no report: {out}"));
    assert_eq!(json.established, Some(1), "{json:?}");
    assert_eq!(json.error_total, 0, "{json:?}");
    let (sent, unsent) = (json.sent.unwrap(), json.unsent.unwrap());
    assert!(sent > 0 && unsent > 0, "{json:?}");
    let due = 300_000_000;
    assert!(
        sent + unsent <= due,
        "{sent} sent + {unsent} unsent: {} more than were due in the phase",
        sent + unsent - due
    );
    // And the schedule was not lost: nearly all of those due are accounted for.
    assert!(sent + unsent >= due - due / 100, "{json:?}");
}
