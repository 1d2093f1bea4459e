//! Review, round 6 (UDP and Unix-domain sockets): a server on a relative socket path
//! (`unix:echo.sock`, which `Endpoint` takes) removed its socket file at stop by that
//! relative path, so a process that changed its working directory after the start (a
//! daemon that moves to `/`, say) left the file behind, and would have looked up the
//! name in the wrong directory.
//!
//! This binary changes the process's working directory: every other path its tests use
//! is absolute. Every wait has a deadline.

mod util;

use std::path::{Path, PathBuf};

use duo_net::{Endpoint, TcpServer};
use duo_testkit::wait_until;
use util::{init_log, TempDir, TestServer};

/// Puts the working directory back when dropped (also when the test fails).
struct Cwd(PathBuf);

impl Cwd {
    fn change_to(dir: &Path) -> Cwd {
        let was = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir).unwrap();
        Cwd(was)
    }
}

impl Drop for Cwd {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}

#[test]
fn a_relative_socket_path_is_removed_at_stop_after_a_change_of_directory() {
    init_log();
    let (started_in, moved_to) = (TempDir::new("start"), TempDir::new("later"));
    let file = started_in.join("rel.sock");
    let cwd = Cwd::change_to(started_in.path());
    let at = Endpoint::unix("rel.sock").unwrap();
    let server = TestServer::start(move || {
        TcpServer::builder("uds-relative", at).on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
    });
    wait_until("the socket file bound", || file.exists());
    std::env::set_current_dir(moved_to.path()).unwrap();
    server.stop();
    assert!(
        !file.exists(),
        "{} left behind after the working directory changed",
        file.display()
    );
    assert!(!moved_to.join("rel.sock").exists());
    drop(cwd);
}
