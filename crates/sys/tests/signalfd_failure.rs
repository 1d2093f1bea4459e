//! A `SignalFd` that cannot be made leaves the calling thread's signal mask as it was.
//!
//! `SignalFd::new` blocks its signals before it asks for the descriptor; when the kernel
//! then refuses one (no descriptor left: `EMFILE`), the signals must not stay blocked, or
//! a stop signal the caller would still have acted on (by its default action, say) would
//! wait unseen. A test binary of its own: it lowers the process's open-file limit.

use std::os::fd::OwnedFd;

use duo_sys::{fd_limit, set_fd_limit, Signal, SignalFd};

/// The `SigBlk` mask of the calling thread, from `/proc/thread-self/status`.
fn blocked_mask() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("thread status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .expect("a SigBlk line")
        .trim();
    u64::from_str_radix(hex, 16).expect("a hex mask")
}

#[test]
fn a_signalfd_refused_for_lack_of_descriptors_leaves_the_mask_as_it_was() {
    let usr2_bit = 1u64 << (Signal::USR2.as_raw() - 1);
    // A thread of its own: the mask is per thread, and this one ends with the test.
    std::thread::spawn(move || {
        let before = blocked_mask();
        assert_eq!(before & usr2_bit, 0, "SIGUSR2 is not blocked to begin with");
        // Use up every descriptor the limit allows, then ask for a signalfd.
        let (soft, _) = fd_limit().unwrap();
        set_fd_limit(64).unwrap();
        let mut held: Vec<OwnedFd> = Vec::new();
        let refused = loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f.into()),
                Err(_) => break SignalFd::new(&[Signal::USR2]),
            }
        };
        drop(held);
        set_fd_limit(soft).unwrap();
        let e = refused.expect_err("no descriptor was left for the signalfd");
        assert!(e.to_string().contains("Too many open files"), "EMFILE: {e}");
        assert_eq!(
            blocked_mask(),
            before,
            "the failed SignalFd::new left SIGUSR2 blocked"
        );
        // And one that can be made blocks it, as before.
        let fd = SignalFd::new(&[Signal::USR2]).unwrap();
        assert_ne!(blocked_mask() & usr2_bit, 0);
        drop(fd);
    })
    .join()
    .unwrap();
}
