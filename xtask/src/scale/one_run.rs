//! One run of `cargo xtask scale`: the server, the load generator, the samples.

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use duo_testkit::loadgen_json::LoadgenJson;

use super::memory::{KernelMem, TreeMem};
use super::outcome::Outcome;
use super::{say, Bins, Plan, LOADGEN_TIMEOUT, SETTLE, STOP_GRACE};
use crate::process::Server;
use crate::Failure;

/// Starts the server, runs the load generator, samples, stops the server.
pub(super) fn run_scale(
    bins: &Bins,
    plan: &Plan,
    logs: &Path,
    json: bool,
) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let mut server_args: Vec<String> = ["serve", "--io-threads", "0", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    if plan.server_procs > 1 {
        server_args.extend(["--processes".into(), plan.server_procs.to_string()]);
    }
    let mut server = Server::start("echo", &bins.echo, &server_args, &logs.join("server.log"))
        .map_err(Failure::Run)?;
    let server_before = TreeMem::of(server.pid()).map_err(Failure::Run)?;
    let kernel_before = KernelMem::now().map_err(Failure::Run)?;
    say(
        json,
        &format!(
            "server {} (pid {}, {} process(es)); connecting...",
            server.addr(),
            server.pid(),
            server_before.procs
        ),
    );

    let mut cmd = loadgen_command(bins, plan, server.addr());
    let log = logs.join("loadgen.log");
    let log_file =
        File::create(&log).map_err(|e| Failure::Run(format!("{}: {e}", log.display())))?;
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Run(format!("cannot start loadgen: {e}")))?;
    let loadgen_pid = child.id();
    let holding = forward_stderr(&mut child, log_file);
    // Connecting takes at most loadgen's connect phase; it says when it holds.
    let setup = Duration::from_secs(LOADGEN_TIMEOUT + 30) + Duration::from_secs(plan.conns / 5_000);
    let mut sample_errors = Vec::new();
    let (mut server_hold, mut kernel_hold, mut loadgen_hold) = (None, None, None);
    match holding.recv_timeout(setup) {
        Ok(line) => {
            say(json, &line);
            std::thread::sleep(SETTLE);
            server_hold = keep(TreeMem::of(server.pid()), &mut sample_errors);
            kernel_hold = keep(KernelMem::now(), &mut sample_errors);
            loadgen_hold = keep(TreeMem::of(loadgen_pid), &mut sample_errors);
        }
        Err(_) => sample_errors.push(format!(
            "loadgen never said it was holding its connections (see {})",
            log.display()
        )),
    }
    let bound = setup * 2 + Duration::from_secs_f64(plan.hold) + Duration::from_secs(60);
    let (report, loadgen_failure) = match duo_testkit::finish_within(child, bound) {
        Ok(done) => {
            let report = LoadgenJson::find_in(&done.stdout);
            let failure =
                (!done.status.success()).then(|| format!("loadgen exited with {}", done.status));
            (report, failure)
        }
        Err(e) => (None, Some(format!("loadgen {e}"))),
    };
    let stop = match server.terminate(STOP_GRACE) {
        Ok((status, took)) => Ok((status.code().unwrap_or(-1), took)),
        Err(e) => Err(e),
    };
    Ok(Outcome {
        report,
        loadgen_failure,
        server_before,
        server_hold,
        kernel_before,
        kernel_hold,
        loadgen_hold,
        sample_errors,
        stop,
        wall: started.elapsed(),
    })
}

/// The `loadgen idle` command of `plan` against the server at `addr`.
pub(super) fn loadgen_command(bins: &Bins, plan: &Plan, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(&bins.loadgen);
    cmd.args(["idle", "--addr", &addr.to_string()])
        .args(["--conns", &plan.conns.to_string()])
        .args(["--procs", &plan.loadgen_procs.to_string()])
        .args(["--per-source", &plan.per_source.to_string()])
        .args(["--hold", &plan.hold.to_string()])
        .args(["--timeout", &LOADGEN_TIMEOUT.to_string()])
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::process::ends_with_harness(&mut cmd);
    cmd
}

/// The value of `r`, or `None` with its error kept in `errors`.
fn keep<T>(r: Result<T, String>, errors: &mut Vec<String>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// Copies the child's stderr to `file` on a thread; the receiver gets the line saying
/// that the connections are held.
fn forward_stderr(child: &mut std::process::Child, mut file: File) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let Some(stderr) = child.stderr.take() else {
        return rx; // not piped: the sender is gone, so nobody waits for the line
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if line.contains("holding") {
                let _ = tx.send(line);
            }
        }
    });
    rx
}
