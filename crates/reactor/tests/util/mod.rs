//! Helpers shared by the reactor's integration tests.
#![allow(dead_code)]

pub(crate) mod group;

use std::sync::mpsc;
use std::thread::JoinHandle;

use duo_reactor::{EventLoop, LoopHandle};
use duo_testkit::LIMIT;

/// Runs a loop on a new thread; returns its handle and the thread (which ends when the loop
/// quits).
pub(crate) fn spawn_loop() -> (LoopHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        tx.send(lp.handle()).unwrap();
        lp.run().unwrap();
    });
    (rx.recv_timeout(LIMIT).expect("loop thread started"), t)
}
