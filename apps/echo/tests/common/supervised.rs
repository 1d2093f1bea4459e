//! `echo serve --processes N` under test: a supervisor ([`Sup`]) whose workers are all
//! killed by PID when it is dropped, and a [`Gate`] that holds new workers at their start
//! without guessing at timing. A test file adds the `Sup` methods it alone needs in an
//! `impl Sup` block of its own.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use duo_testkit::{
    children, is_running, join_within, send_signal, tcp_queues, wait_until, ChildServer, LIMIT,
};

use super::IO_TIMEOUT;

/// The `echo` binary.
pub(crate) const ECHO: &str = env!("CARGO_BIN_EXE_echo");

/// Process ids, in order.
pub(crate) type Pids = BTreeSet<u32>;

/// The PIDs in the `[a, b]` list after `key` on the last log line that has `key`.
pub(crate) fn list_after(log: &str, key: &str) -> Pids {
    let line = log.lines().rev().find(|l| l.contains(key)).unwrap_or("");
    let list = line
        .split(key)
        .nth(1)
        .and_then(|r| r.split(['[', ']']).nth(1));
    list.unwrap_or("")
        .split(", ")
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The number right after `key` in `line`.
pub(crate) fn number_after(line: &str, key: &str) -> Option<u32> {
    let rest = line.split(key).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Every worker the log says was started (by any image of the supervisor).
pub(crate) fn spawned(log: &str) -> Pids {
    log.lines()
        .filter_map(|l| number_after(l, "started worker "))
        .collect()
}

/// A supervisor under test. Dropped (a failing test too), it is SIGKILLed and reaped, then
/// every worker its log names that still runs is SIGKILLed by PID.
pub(crate) struct Sup(pub(crate) ChildServer);

impl Deref for Sup {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.0
    }
}

impl DerefMut for Sup {
    fn deref_mut(&mut self) -> &mut ChildServer {
        &mut self.0
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        self.0.kill();
        for pid in spawned(&self.0.stderr()) {
            if is_running(pid) {
                let _ = send_signal(pid, "KILL");
            }
        }
    }
}

impl Sup {
    /// `exe serve --processes N --io-threads 1 EXTRA..` on a free port, once its first
    /// workers are all children.
    pub(crate) fn start(exe: &Path, processes: usize, extra: &[&str]) -> Sup {
        Sup::start_with(exe, processes, extra, |_| {})
    }

    /// As [`start`](Self::start), with `adjust` applied to the command first.
    pub(crate) fn start_with(
        exe: &Path,
        processes: usize,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Sup {
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "1"])
            .args(["--processes", &processes.to_string()])
            .args(extra)
            .env("RUST_LOG", "info");
        adjust(&mut cmd);
        let sup = Sup(ChildServer::start(cmd));
        wait_until("the first workers", || sup.workers().len() == processes);
        sup
    }

    /// The supervisor's live children.
    pub(crate) fn workers(&self) -> Pids {
        children(self.pid())
    }

    /// Waits (at most [`LIMIT`]) for `needle` in the log.
    pub(crate) fn log_has(&self, needle: &str) {
        self.wait_for_stderr(needle, LIMIT);
    }

    /// A connection to the served address, every operation bounded.
    pub(crate) fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// Waits for the exit (a stop is under way), checks status 0 and that every worker it
    /// started is gone (exited and reaped); the whole log.
    pub(crate) fn exited_0(&mut self) -> String {
        let status = self.wait_exit(LIMIT);
        let log = self.stderr_to_end(LIMIT);
        assert_eq!(status.code(), Some(0), "stderr:\n{log}");
        assert!(log.contains("all workers have exited"), "{log}");
        for pid in spawned(&log) {
            assert!(
                !is_running(pid),
                "worker {pid} outlived the supervisor:\n{log}"
            );
        }
        log
    }
}

/// The state letter of process `pid` (`/proc/PID/stat`: "pid (comm) state ..."): `T`
/// stopped, `S` sleeping, `R` running, `Z` a zombie; `None` if there is no such process.
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A directory with `echo` (what the supervisor runs, and its workers: a hard link of the
/// real binary until [`close`](Gate::close)) and `echo-real`. Once closed, `echo` is a
/// script under which a new worker runs the gate's worker part first (by default: exit
/// with status 7 if the file `fail` exists, else wait until `open` or `open-PID`
/// exists); anything else (the supervisor re-executing itself) runs `echo-real` at once.
/// [`Gate::of_program`] does the same for another supervisor program than `echo`.
pub(crate) struct Gate {
    dir: PathBuf,
    /// The file name of the program (`echo`).
    name: String,
}

impl Gate {
    /// A gate with the default worker part.
    pub(crate) fn new(name: &str) -> Gate {
        Gate::with_worker_part(name, |d| {
            format!(
                "if [ -e '{d}/fail' ]; then exit 7; fi\n\
                 while [ ! -e '{d}/open' ] && [ ! -e '{d}/open-'$$ ]; do sleep 0.02; done\n"
            )
        })
    }

    /// A gate whose closed script runs `part(dir)` (shell) in a new worker before the
    /// real binary.
    pub(crate) fn with_worker_part(name: &str, part: impl FnOnce(&str) -> String) -> Gate {
        Gate::of_program(Path::new(ECHO), name, part)
    }

    /// As [`with_worker_part`](Self::with_worker_part), for the supervisor program
    /// `program` (any program of the worker protocol): [`exe`](Self::exe) is then
    /// `DIR/NAME`, `NAME` the file name of `program`.
    pub(crate) fn of_program(
        program: &Path,
        name: &str,
        part: impl FnOnce(&str) -> String,
    ) -> Gate {
        let program_name = program.file_name().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("gate-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let real = format!("{program_name}-real");
        for name in [program_name.as_str(), real.as_str()] {
            // A hard link is never open for writing, so no `exec` of it meets ETXTBSY.
            if fs::hard_link(program, dir.join(name)).is_err() {
                fs::copy(program, dir.join(name)).unwrap();
            }
        }
        let d = dir.display().to_string();
        let script = format!(
            "#!/bin/sh\nif [ -n \"$DUO_WORKER\" ]; then\n{}fi\nexec '{d}/{real}' \"$@\"\n",
            part(&d)
        );
        // Written now, put in place much later (by `rename`): no descriptor open for
        // writing is left anywhere by then.
        fs::write(dir.join("gate.sh"), script).unwrap();
        fs::set_permissions(dir.join("gate.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        Gate {
            dir,
            name: program_name,
        }
    }

    /// The gate's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the supervisor runs.
    pub(crate) fn exe(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// From now on, a new worker runs the gate's worker part. Only for a supervisor
    /// started before: one started through the closed gate runs `echo-real`, and its
    /// workers with it (a supervisor runs its workers from its own binary).
    pub(crate) fn close(&self) {
        fs::rename(self.dir.join("gate.sh"), self.exe()).unwrap();
    }

    /// Every worker waiting (and every later one) goes on.
    pub(crate) fn open(&self) {
        fs::write(self.dir.join("open"), "").unwrap();
    }

    /// Worker `pid` goes on.
    pub(crate) fn open_for(&self, pid: u32) {
        fs::write(self.dir.join(format!("open-{pid}")), "").unwrap();
    }

    /// Every new worker exits at once (status 7) at the closed gate, or no longer does.
    pub(crate) fn fail(&self, on: bool) {
        let path = self.dir.join("fail");
        if on {
            fs::write(path, "").unwrap();
        } else {
            fs::remove_file(path).unwrap();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A 3 MiB request written on `s` without reading; returns once the server has read all
/// of it, so that its whole reply is pending (in the kernel and the worker's buffer).
pub(crate) fn large_request_pending(sup: &Sup, s: &TcpStream) -> Vec<u8> {
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut writer = s.try_clone().unwrap();
    let payload = data.clone();
    join_within(
        "writing the request",
        thread::spawn(move || writer.write_all(&payload).unwrap()),
    );
    let (client, srv) = (s.local_addr().unwrap().port(), sup.addr().port());
    wait_until("the worker read the whole request", || {
        tcp_queues(srv, client).is_some_and(|(_, rx)| rx == 0)
            && tcp_queues(client, srv).is_some_and(|(tx, _)| tx == 0)
    });
    data
}
