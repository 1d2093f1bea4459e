//! What the loadgen tests share: running the binary under a time limit, and reading
//! fields of its JSON report.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one loadgen run may take before the test kills it and fails.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs loadgen with `args`; returns its exit code and stdout. Fails the test if it runs
/// longer than [`RUN_LIMIT`].
pub(crate) fn loadgen(args: &[&str]) -> (i32, String) {
    let (code, out, _) = run(args, false);
    (code, out)
}

/// [`loadgen`], returning its stderr as well (read once it has exited: a run writes far
/// less than a pipe holds).
pub(crate) fn loadgen_stderr(args: &[&str]) -> (i32, String, String) {
    run(args, true)
}

fn run(args: &[&str], capture_stderr: bool) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .expect("start loadgen");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for loadgen") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen {args:?} ran longer than {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let read = |pipe: Option<&mut dyn Read>| {
        let mut text = String::new();
        if let Some(pipe) = pipe {
            pipe.read_to_string(&mut text)
                .expect("read loadgen's output");
        }
        text
    };
    let out = read(child.stdout.as_mut().map(|p| p as &mut dyn Read));
    let err = read(child.stderr.as_mut().map(|p| p as &mut dyn Read));
    (status.code().unwrap_or(-1), out, err)
}

/// The raw text of a top-level field of a flat JSON object (numbers, `true`, `{...}`).
pub(crate) fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    let end = if rest.starts_with('{') {
        rest.find('}')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(&rest[..end])
}

/// A number field of the report; fails the test if there is none.
pub(crate) fn number(json: &str, key: &str) -> f64 {
    field(json, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number `{key}` in {json}"))
}

/// Echoes on every connection `listener` accepts (a std thread each), for as long as the
/// test process lives: the tiny Unix-domain server of the `unix:` tests.
pub(crate) fn serve_unix_echo(listener: std::os::unix::net::UnixListener) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || echo(stream));
        }
    });
}

fn echo(mut stream: std::os::unix::net::UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if std::io::Write::write_all(&mut stream, &buf[..n]).is_err() {
            return;
        }
    }
}
