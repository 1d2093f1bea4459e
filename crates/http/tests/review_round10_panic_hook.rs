//! Review round 10 (follow-up of the event loop's `Handler::label` fix): a handler's panic,
//! which a peer's request can trigger, is caught by the server (a 500, the connection
//! closed), and a panic hook must be able to tell it is caught, or
//! `duo_net::process::install_panic_hook` takes it for one nobody catches and hands it to
//! the hook before it: a full report on stderr for every such request, never
//! rate-limited. duo-http catches it with a bare `catch_unwind`, but inside duo-net's
//! message callback, which runs within `duo_reactor::catch_panic`: the hook sees the
//! thread catching. This passed before the round too; it guards that nesting.
//!
//! Its own test binary: a panic hook is one per process.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use duo_http::{Method, Responder};
use util::{init_log, start, test_builder, Client};

/// Counts the panics with `marker` in their message that reach the hook installed
/// before `install_panic_hook` (those it takes for uncaught).
fn count_uncaught(marker: &'static str) -> Arc<AtomicUsize> {
    let uncaught = Arc::new(AtomicUsize::new(0));
    let seen = uncaught.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains(marker) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        default(info);
    }));
    duo_net::process::install_panic_hook();
    uncaught
}

#[test]
fn a_handlers_panic_is_reported_as_caught() {
    init_log();
    let uncaught = count_uncaught("a handler that panics");
    let server = start(test_builder().route_deferred(
        Method::Get,
        "/panic-deferred",
        |_, _: Responder| panic!("a handler that panics, deferred"),
    ));
    for path in ["/panic", "/panic-deferred"] {
        let mut c = Client::connect(server.local_addr());
        let r = c.get(path);
        assert_eq!(r.status, 500, "{path}");
        c.expect_eof();
    }
    server.stop().unwrap();
    assert_eq!(
        uncaught.load(Ordering::SeqCst),
        0,
        "a handler's panic, caught by the server, was reported as one nobody catches"
    );
}
