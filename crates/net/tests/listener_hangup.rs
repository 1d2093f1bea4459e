//! A listening socket shared with another holder (a sibling process, a supervisor: what
//! `TcpServer::builder_on` serves) that the other holder shuts down. The kernel then
//! reports the listener hung up (`EPOLLHUP`) without "readable", level-triggered, at
//! every poll; an acceptor that ignored the hang-up left its loop spinning at full CPU
//! (a suspicion from review, confirmed here). It now treats the hang-up as a failed
//! accept: counted, logged (rate-limited), retried every 100 ms.

use std::net::{Shutdown, TcpListener};
use std::time::Duration;

use duo_net::TcpServer;
use duo_reactor::EventLoop;

#[test]
fn a_listener_shut_down_by_another_holder_does_not_spin_the_loop() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_holder = listener.try_clone().unwrap();
    let mut lp = EventLoop::new().unwrap();
    let server = TcpServer::builder_on("hup", listener)
        .unwrap()
        .io_threads(0)
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
        .start(&mut lp)
        .unwrap();
    // The other holder shuts the socket down once the loop runs: the listen queue is
    // torn down for every holder.
    lp.run_after(Duration::from_millis(20), move |_| {
        socket2::SockRef::from(&other_holder)
            .shutdown(Shutdown::Read)
            .unwrap();
    });
    let start = lp.handle().metrics().iterations;
    lp.run_after(Duration::from_millis(40), move |lp| {
        let at_hangup = lp.handle().metrics().iterations;
        // Half a second later: a loop that sleeps until its timers wakes it a few times;
        // one that is told of the hang-up at every poll turns hundreds of thousands.
        lp.run_after(Duration::from_millis(500), move |lp| {
            let turns = lp.handle().metrics().iterations - at_hangup;
            assert!(
                turns < 100,
                "{turns} iterations in 500 ms after the listener hung up (from {start})"
            );
            lp.quit();
        });
    });
    lp.run().unwrap();
    // Each retry (every 100 ms) fails and is counted; nothing else happens to the server.
    let errors = server.stats().accept_errors;
    assert!((1..=10).contains(&errors), "{errors} accept errors");
    server.stop(&mut lp);
}
