//! Review round 11 of this round's own fixes (a review helper): each test here failed on
//! the code before the fix it comes with.

mod util;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::time::Duration;

use duo_net::{Endpoint, EventLoop, WhenFull};
use util::{echo_builder, init_log};

/// Runs `lp` until a timer due at once has fired: what is queued on it, and at least one
/// poll with the events it reports.
fn one_pass(lp: &mut EventLoop) {
    lp.run_after(Duration::ZERO, |lp| lp.quit());
    lp.run().expect("the loop runs");
}

/// `max_connections(0)` under `WhenFull::Pause` now admits none (this round's fix), but
/// the pause it makes was not counted: `full_pauses` ("times the server stopped
/// accepting because it was full") said 0 of a server that takes no connection at all
/// (before the fix it said 1, with one connection let in). The pause counts once, as a
/// server that fills up pauses once however many loops find it full.
#[test]
fn a_maximum_of_zero_under_pause_counts_its_pause_once() {
    init_log();
    let name = format!("duo-r11-fixes-zero-{}", std::process::id());
    let endpoint = Endpoint::abstract_name(name.as_bytes()).expect("a valid name");
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("a valid name");
    let mut lp = EventLoop::new().expect("loop");
    let server = echo_builder("r11-fixes-zero", endpoint)
        .max_connections(0)
        .when_full(WhenFull::Pause)
        .start(&mut lp)
        .expect("server starts");
    let _a = UnixStream::connect_addr(&addr).expect("queued");
    one_pass(&mut lp);
    let _b = UnixStream::connect_addr(&addr).expect("queued");
    one_pass(&mut lp);
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.active), (0, 0), "{stats:?}");
    assert_eq!(stats.full_pauses, 1, "the pause is counted once: {stats:?}");
    server.stop(&mut lp);
}
