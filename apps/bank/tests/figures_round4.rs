//! `bank_writes_total` counts write operations committed (or refused) by kind and outcome
//! (`docs/observability.md`). A `TRANSFER` retried with its request id commits nothing and
//! refuses nothing anew: the database answers the recorded outcome. It is counted as
//! `outcome="replayed"`, not as a second transfer that moved money (or was refused).

#[macro_use]
mod common;

use std::time::Duration;

use common::{scrape, Backend, Client, TestDb, PW};

on_both_backends!(a_transfer_replayed_by_request_id_is_no_new_write);

fn a_transfer_replayed_by_request_id_is_no_new_write(backend: Backend) {
    let Some(db) = TestDb::new(backend, "replay_figures") else {
        return;
    };
    let mut server = db.start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut alice = Client::connect(server.addr);
    assert!(alice.cmd(&format!("REGISTER alice {PW}")).starts_with("OK"));
    assert!(alice.cmd(&format!("REGISTER bob {PW}")).starts_with("OK"));
    assert!(alice.cmd(&format!("LOGIN alice {PW}")).starts_with("OK"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    // Applied once, then retried twice: the same answer, no money moved again.
    assert_eq!(alice.cmd("TRANSFER bob 100 rent-1"), "OK 900");
    assert_eq!(alice.cmd("TRANSFER bob 100 rent-1"), "OK 900");
    assert_eq!(alice.cmd("TRANSFER bob 100 rent-1"), "OK 900");
    // Refused once (recorded), then retried: the same refusal.
    let refused = alice.cmd("TRANSFER bob 5000 big-1");
    assert!(refused.starts_with("ERR INSUFFICIENT_FUNDS"), "{refused}");
    assert_eq!(alice.cmd("TRANSFER bob 5000 big-1"), refused);
    // The id reused for another transfer: refused (a bad request), not a replay.
    let reused = alice.cmd("TRANSFER bob 7 rent-1");
    assert!(reused.starts_with("ERR BAD_REQUEST"), "{reused}");
    assert_eq!(alice.balance(), 900);

    let text = scrape(metrics);
    let writes = |outcome: &str| {
        duo_testkit::sample(
            &text,
            &format!("bank_writes_total{{kind=\"transfer\",outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(writes("ok"), 1.0, "one transfer moved money:\n{text}");
    assert_eq!(writes("rejected"), 2.0, "two were refused:\n{text}");
    assert_eq!(
        writes("replayed"),
        3.0,
        "three were answered from the record:\n{text}"
    );
    drop(alice);
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
