//! `cargo xtask bench`: every scenario against every server, one table, with ratios.
//!
//! Servers: duo's `echo` as a single reactor and with 1 and 2 I/O threads, and the two peers built in the same
//! workspace, `raw_epoll_echo` (one thread, level-triggered, libc epoll: "close to the
//! limit") and `tokio_echo` (the idiomatic Rust peer). Each scenario starts a fresh server,
//! runs `loadgen` against it, which samples the server's CPU time (`utime + stime` from
//! `/proc/PID/stat`) over the measured phase alone (connecting and logging in excluded),
//! and stops it. Throughput on this kind of shared
//! machine swings 30-50 % between runs; CPU time per message holds within about 10 %, so
//! the report gives both and ranks by the latter.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::process::{run_bounded, Server};
use crate::{build_release_bins, root, run, target_dir, Failure};

/// Micro-benchmarks: plain binaries of `duo-benches` that print their own tables.
struct Micro {
    name: &'static str,
    bin: &'static str,
    about: &'static str,
}

const MICRO: &[Micro] = &[
    Micro {
        name: "bufpool",
        bin: "bufpool",
        about: "BufPool allocate+free against the system allocator, 1 and 2 threads",
    },
    Micro {
        name: "reactor",
        bin: "reactor",
        about: "cross-thread wake-up latency, timer schedule/cancel/fire, queue_in_loop throughput",
    },
];

/// An echo server under test.
struct EchoServer {
    name: &'static str,
    /// Binary in `target/release`.
    bin: &'static str,
    args: &'static [&'static str],
    /// Whether this is duo (the others are baselines).
    duo: bool,
}

const ECHO_SERVERS: &[EchoServer] = &[
    EchoServer {
        name: "duo-0",
        bin: "echo",
        args: &["serve", "--listen", "127.0.0.1:0", "--io-threads", "0"],
        duo: true,
    },
    EchoServer {
        name: "duo-1",
        bin: "echo",
        args: &["serve", "--listen", "127.0.0.1:0", "--io-threads", "1"],
        duo: true,
    },
    EchoServer {
        name: "duo-2",
        bin: "echo",
        args: &["serve", "--listen", "127.0.0.1:0", "--io-threads", "2"],
        duo: true,
    },
    EchoServer {
        name: "raw-epoll",
        bin: "raw_epoll_echo",
        args: &["--listen", "127.0.0.1:0"],
        duo: false,
    },
    EchoServer {
        name: "tokio",
        bin: "tokio_echo",
        args: &["--listen", "127.0.0.1:0", "--threads", "2"],
        duo: false,
    },
];

/// What a scenario runs against.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Echo,
    /// The bank server; `true` = group commit.
    Bank(bool),
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    target: Target,
    /// `loadgen` arguments after the mode, without `--addr`, `--secs`, `--json`.
    mode: &'static str,
    args: &'static [&'static str],
    /// Connections the load generator opens (for the descriptor check).
    conns: u64,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pingpong-1x16k",
        about: "pingpong, 1 connection x 16 KiB",
        target: Target::Echo,
        mode: "pingpong",
        args: &["--conns", "1", "--size", "16384", "--threads", "1"],
        conns: 1,
    },
    Scenario {
        name: "pingpong-100x16k",
        about: "pingpong, 100 connections x 16 KiB",
        target: Target::Echo,
        mode: "pingpong",
        args: &["--conns", "100", "--size", "16384", "--threads", "2"],
        conns: 100,
    },
    Scenario {
        name: "pingpong-1000x64",
        about: "pingpong, 1 000 connections x 64 B",
        target: Target::Echo,
        mode: "pingpong",
        args: &["--conns", "1000", "--size", "64", "--threads", "2"],
        conns: 1000,
    },
    Scenario {
        name: "rr-100x64",
        about: "request/response latency, 100 connections x 64 B",
        target: Target::Echo,
        mode: "rr",
        args: &["--conns", "100", "--size", "64", "--threads", "2"],
        conns: 100,
    },
    Scenario {
        name: "idle-10k",
        about: "10 000 idle connections: server RSS per connection",
        target: Target::Echo,
        mode: "idle",
        args: &["--conns", "10000", "--threads", "2"],
        conns: 10_000,
    },
    Scenario {
        name: "churn-50",
        about: "connect, 64 B round trip, close; 50 concurrent",
        target: Target::Echo,
        mode: "churn",
        args: &["--conns", "50", "--threads", "2"],
        conns: 50,
    },
    Scenario {
        name: "bank-group",
        about: "bank, 100 clients doing transfers, group commit",
        target: Target::Bank(true),
        mode: "bank",
        args: &["--clients", "100", "--accounts", "50", "--threads", "2"],
        conns: 100,
    },
    Scenario {
        name: "bank-single",
        about: "bank, 100 clients doing transfers, one commit per transfer",
        target: Target::Bank(false),
        mode: "bank",
        args: &["--clients", "100", "--accounts", "50", "--threads", "2"],
        conns: 100,
    },
];

struct Options {
    quick: bool,
    only: Option<String>,
    secs: Option<u64>,
    reps: Option<usize>,
}

fn parse(args: Vec<String>) -> Result<Options, Failure> {
    let mut o = Options {
        quick: false,
        only: None,
        secs: None,
        reps: None,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--only" => {
                o.only = Some(
                    it.next()
                        .ok_or_else(|| Failure::Usage("--only needs a name".into()))?,
                )
            }
            "--secs" => {
                let v = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--secs needs a number".into()))?;
                o.secs = Some(
                    v.parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| Failure::Usage(format!("--secs: bad number `{v}`")))?,
                );
            }
            "--reps" => {
                let v = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--reps needs a number".into()))?;
                o.reps = Some(
                    v.parse()
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or_else(|| Failure::Usage(format!("--reps: bad number `{v}`")))?,
                );
            }
            other => return Err(Failure::Usage(format!("unknown bench option `{other}`"))),
        }
    }
    Ok(o)
}

/// One run of one server in one scenario.
struct Run {
    /// `loadgen --json` output, or the error that prevented it.
    result: Result<Value, String>,
    /// Server CPU time (user + system) during the run.
    cpu: Duration,
}

impl Run {
    fn num(&self, key: &str) -> Option<f64> {
        self.result.as_ref().ok()?.get(key)?.as_f64()
    }

    fn rate(&self) -> Option<f64> {
        self.num("transfers_per_sec")
            .or_else(|| self.num("msgs_per_sec"))
    }

    fn cpu_per_op_us(&self) -> Option<f64> {
        let ops = self.num("transfers").or_else(|| self.num("msgs"))?;
        (ops > 0.0).then(|| self.cpu.as_secs_f64() * 1e6 / ops)
    }

    fn errors(&self) -> u64 {
        match &self.result {
            Ok(v) => v
                .get("errors")
                .and_then(Value::as_object)
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()),
            Err(_) => 1,
        }
    }

    fn verification_failed(&self) -> bool {
        self.result
            .as_ref()
            .is_ok_and(|v| v.get("verification_failed") == Some(&Value::Bool(true)))
    }
}

/// One server's runs in one scenario (one per repetition), summarised by medians.
struct Outcome {
    server: String,
    duo: bool,
    runs: Vec<Run>,
}

/// Median, minimum and maximum of the values present.
fn stats(values: impl Iterator<Item = Option<f64>>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

impl Outcome {
    /// The median of a `loadgen` field over the runs.
    fn num(&self, key: &str) -> Option<f64> {
        stats(self.runs.iter().map(|r| r.num(key))).map(|s| s.0)
    }

    /// The scenario's throughput figure (messages, requests, connections or transfers
    /// per second): median, min, max.
    fn rate_stats(&self) -> Option<(f64, f64, f64)> {
        stats(self.runs.iter().map(Run::rate))
    }

    fn rate(&self) -> Option<f64> {
        self.rate_stats().map(|s| s.0)
    }

    /// Server CPU time per unit of work, in microseconds: median, min, max.
    fn cpu_stats(&self) -> Option<(f64, f64, f64)> {
        stats(self.runs.iter().map(Run::cpu_per_op_us))
    }

    fn cpu_per_op_us(&self) -> Option<f64> {
        self.cpu_stats().map(|s| s.0)
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(Run::errors).sum()
    }

    /// The first run that could not be made at all.
    fn failure(&self) -> Option<&str> {
        self.runs
            .iter()
            .find_map(|r| r.result.as_ref().err().map(String::as_str))
    }

    fn failed(&self) -> bool {
        self.runs.is_empty() || self.runs.iter().all(|r| r.result.is_err())
    }

    fn verification_failed(&self) -> bool {
        self.runs.iter().any(Run::verification_failed)
    }
}

pub(crate) fn bench(args: Vec<String>) -> Result<(), Failure> {
    let opts = parse(args)?;
    let known: Vec<&str> = MICRO
        .iter()
        .map(|m| m.name)
        .chain(SCENARIOS.iter().map(|s| s.name))
        .collect();
    if let Some(only) = &opts.only {
        if !known.iter().any(|k| k.starts_with(only.as_str())) {
            return Err(Failure::Usage(format!(
                "no benchmark or scenario named `{only}` (known: {})",
                known.join(", ")
            )));
        }
    }
    let selected = |name: &str| opts.only.as_deref().is_none_or(|o| name.starts_with(o));

    let release = build_release_bins()?;
    let out_dir = target_dir().join("bench");
    let logs = out_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Failure::Run(format!("{}: {e}", logs.display())))?;

    for m in MICRO.iter().filter(|m| selected(m.name)) {
        println!("\n## {} — {}\n", m.name, m.about);
        let mut cmd = Command::new(release.join(m.bin));
        if opts.quick {
            cmd.arg("--quick");
        }
        run(&mut cmd)?;
    }

    let scenarios: Vec<&Scenario> = SCENARIOS.iter().filter(|s| selected(s.name)).collect();
    if scenarios.is_empty() {
        return Ok(());
    }
    let fd_limit = match duo_sys::raise_fd_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            duo_sys::fd_limit().map(|l| l.0).unwrap_or(1024)
        }
    };
    println!("\nopen-file limit for the servers and the load generator: {fd_limit}");
    let secs = opts.secs.unwrap_or(if opts.quick { 1 } else { 10 });
    let reps = opts.reps.unwrap_or(if opts.quick { 1 } else { 3 });
    let mut results: Vec<(&Scenario, Vec<Outcome>)> = Vec::new();
    for sc in scenarios {
        println!("\n== {} ({})", sc.name, sc.about);
        if sc.conns + 64 > fd_limit {
            println!(
                "   note: needs about {} descriptors per process, limit is {fd_limit}; \
                 the load generator reports how many it got",
                sc.conns + 64
            );
        }
        // The servers of this scenario, each with its binary and arguments.
        let mut entrants: Vec<(&str, bool, PathBuf, Vec<String>)> = Vec::new();
        let mut db_dir = None;
        match sc.target {
            Target::Echo => {
                for srv in ECHO_SERVERS {
                    let args = srv.args.iter().map(|a| a.to_string()).collect();
                    entrants.push((srv.name, srv.duo, release.join(srv.bin), args));
                }
            }
            Target::Bank(group) => {
                let dir = out_dir.join(format!("bank-{}-{}", sc.name, unix_now()));
                let mut args: Vec<String> = [
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--io-threads",
                    "1",
                    "--workers",
                    "2",
                    "--db",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect();
                args.push(dir.join("bank.db").display().to_string());
                // Password hashing runs only while loadgen logs its clients in, before the
                // measured phase: a cheap cost keeps that set-up short and changes nothing
                // that is measured.
                args.extend(["--hash-cost".into(), "low".into()]);
                if !group {
                    args.push("--no-group-commit".into());
                }
                entrants.push(("duo-bank", true, release.join("bank"), args));
                db_dir = Some(dir);
            }
        }
        let mut outcomes: Vec<Outcome> = entrants
            .iter()
            .map(|(name, duo, _, _)| Outcome {
                server: name.to_string(),
                duo: *duo,
                runs: Vec::new(),
            })
            .collect();
        // Interleaved: each repetition runs every server in turn, so a slow spell of the
        // machine hits all of them rather than one.
        for rep in 0..reps {
            for ((name, _, exe, args), outcome) in entrants.iter().zip(&mut outcomes) {
                if let Some(dir) = &db_dir {
                    // A fresh database per run.
                    let _ = std::fs::remove_dir_all(dir);
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Failure::Run(format!("{}: {e}", dir.display())))?;
                }
                let tag = format!("{}-{name}-{rep}", sc.name);
                let run = run_one(sc, &tag, exe, args, secs, opts.quick, &release, &logs);
                print_run(name, rep, &run);
                outcome.runs.push(run);
            }
        }
        if let Some(dir) = &db_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if reps > 1 {
            for o in &outcomes {
                print_outcome(o);
            }
        }
        results.push((sc, outcomes));
    }

    let machine = machine();
    let command = format!(
        "cargo xtask bench{}{}{}{}",
        if opts.quick { " --quick" } else { "" },
        opts.reps
            .map(|r| format!(" --reps {r}"))
            .unwrap_or_default(),
        opts.only
            .as_ref()
            .map(|o| format!(" --only {o}"))
            .unwrap_or_default(),
        opts.secs
            .map(|s| format!(" --secs {s}"))
            .unwrap_or_default(),
    );
    let md = report_md(&results, &machine, &command, secs, reps);
    let json = report_json(&results, &machine, &command, secs);
    write(&out_dir.join("report.md"), &md)?;
    write(
        &out_dir.join("report.json"),
        &serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    write(
        &out_dir.join("throughput.svg"),
        &svg_bars(
            &results,
            "throughput relative to the best server (higher is better)",
            |o| o.rate(),
            false,
        ),
    )?;
    write(
        &out_dir.join("cpu.svg"),
        &svg_bars(
            &results,
            "server CPU per operation relative to the best (lower is better)",
            |o| o.cpu_per_op_us(),
            true,
        ),
    )?;
    write(&out_dir.join("latency.svg"), &svg_latency(&results))?;
    println!("\n{md}");
    println!("report: {}", out_dir.join("report.md").display());
    let full = !opts.quick && opts.only.is_none() && opts.secs.is_none() && opts.reps.is_none();
    if full {
        update_docs(&md)?;
        println!("docs/benchmarks.md updated with this run");
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(sc, os)| {
            os.iter()
                .filter(|o| o.failure().is_some())
                .map(move |o| format!("{} on {}", sc.name, o.server))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Run(format!(
            "runs that failed: {}",
            failed.join(", ")
        )))
    }
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    sc: &Scenario,
    tag: &str,
    exe: &Path,
    args: &[String],
    secs: u64,
    quick: bool,
    release: &Path,
    logs: &Path,
) -> Run {
    let mut run = Run {
        result: Err(String::new()),
        cpu: Duration::ZERO,
    };
    let server = match Server::start(tag, exe, args, &logs.join(format!("{tag}.server.log"))) {
        Ok(s) => s,
        Err(e) => {
            run.result = Err(e);
            return run;
        }
    };
    let mut cmd = Command::new(release.join("loadgen"));
    cmd.arg(sc.mode)
        .args(["--addr", &server.addr().to_string()])
        .args(sc.args)
        .arg("--json");
    if sc.mode == "idle" {
        let hold = if quick { 1 } else { secs.min(5) };
        cmd.args([
            "--hold",
            &hold.to_string(),
            "--pid",
            &server.pid().to_string(),
        ]);
        if quick {
            // A short version: fewer connections.
            cmd.args(["--conns", "2000"]);
        }
    } else {
        // loadgen samples the server's CPU over the measured phase alone: set-up
        // (connecting, the bank's argon2 logins) would otherwise be charged to it.
        cmd.args(["--secs", &secs.to_string()])
            .args(["--server-pid", &server.pid().to_string()]);
    }
    let before = server.cpu_time();
    let ran = run_bounded(
        &mut cmd,
        Duration::from_secs(secs + 120),
        &logs.join(format!("{tag}.loadgen.log")),
    );
    let after = server.cpu_time();
    if let (Ok(a), Ok(b)) = (after, before) {
        run.cpu = a.saturating_sub(b);
    }
    run.result = match ran {
        Ok((ok, out)) => match out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            Some(v) if ok => {
                if let Some(cpu) = v["server_cpu_secs"].as_f64() {
                    run.cpu = Duration::from_secs_f64(cpu);
                }
                Ok(v)
            }
            Some(mut v) => {
                v["verification_failed"] = json!(true);
                Ok(v)
            }
            None => Err(format!(
                "loadgen printed no JSON (see logs/{tag}.loadgen.log)"
            )),
        },
        Err(e) => Err(e),
    };
    drop(server);
    run
}

fn print_run(server: &str, rep: usize, r: &Run) {
    match &r.result {
        Ok(_) => println!(
            "   {server:<10} #{rep}  rate {:>12}  server CPU/op {:>9}  errors {}{}",
            fmt_rate(r.rate()),
            fmt_us(r.cpu_per_op_us()),
            r.errors(),
            if r.verification_failed() {
                "  VERIFICATION FAILED"
            } else {
                ""
            }
        ),
        Err(e) => println!("   {server:<10} #{rep}  FAILED: {e}"),
    }
}

fn print_outcome(o: &Outcome) {
    println!(
        "   {:<10} median  rate {:>12}  server CPU/op {:>9}  errors {}",
        o.server,
        fmt_rate(o.rate()),
        fmt_us(o.cpu_per_op_us()),
        o.errors()
    );
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        Some(v) => format!("{v:.0} /s"),
        None => "-".into(),
    }
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} µs"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// "median (min-max)" of a figure, formatted by `f`.
fn spread(st: Option<(f64, f64, f64)>, runs: usize, f: impl Fn(f64) -> String) -> String {
    match st {
        Some((m, lo, hi)) if runs > 1 => format!("{} ({}-{})", f(m), f(lo), f(hi)),
        Some((m, _, _)) => f(m),
        None => "-".into(),
    }
}

/// The scenario's main figures for one server, as table text: CPU per operation (the
/// ranking figure), throughput, and p99 where latency is measured.
fn headline(sc: &Scenario, o: &Outcome) -> String {
    if o.failed() {
        return "failed".into();
    }
    let n = o.runs.len();
    let mut s = if sc.mode == "idle" {
        spread(
            stats(o.runs.iter().map(|r| r.num("rss_per_conn_bytes"))),
            n,
            |b| format!("{b:.0}"),
        ) + &format!(" B/conn ({:.0} conns)", o.num("established").unwrap_or(0.0))
    } else {
        let mut s = format!(
            "CPU {} µs/op; {}",
            spread(o.cpu_stats(), n, |v| format!("{v:.2}")),
            fmt_rate(o.rate())
        );
        if let Some(m) = o.num("mib_per_sec").filter(|m| *m >= 1.0) {
            let _ = write!(s, " ({m:.0} MiB/s)");
        }
        if matches!(sc.mode, "rr" | "bank") {
            let _ = write!(
                s,
                ", p99 {}",
                o.num("p99_us").map_or("-".into(), |v| format!("{v:.0} µs"))
            );
        }
        s
    };
    if o.errors() > 0 {
        let _ = write!(s, "; **{} errors**", o.errors());
    }
    if o.verification_failed() {
        s.push_str("; **verification failed**");
    }
    s
}

/// Servers of a scenario from best to worst by CPU per operation (RSS per connection
/// for the idle scenario).
fn ranking(sc: &Scenario, outcomes: &[Outcome]) -> String {
    let key = |o: &Outcome| {
        if sc.mode == "idle" {
            o.num("rss_per_conn_bytes")
        } else {
            o.cpu_per_op_us()
        }
    };
    let mut ranked: Vec<(&str, f64)> = outcomes
        .iter()
        .filter_map(|o| Some((o.server.as_str(), key(o)?)))
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    ranked
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" < ")
}

fn report_md(
    results: &[(&Scenario, Vec<Outcome>)],
    machine: &str,
    command: &str,
    secs: u64,
    reps: usize,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `{command}` ({secs} s per run, {reps} interleaved repetition(s), medians \
         with min-max). Machine: {machine}.\n"
    );
    let _ = writeln!(
        md,
        "Servers: `duo-0` is duo's echo as a single reactor (one thread, like \
         `raw-epoll`), `duo-1` and `duo-2` add 1 and 2 I/O threads to the acceptor's loop, \
         `tokio` runs 2 workers. Each cell: the server's CPU time (user + system, from \
         `/proc/PID/stat`, over the measured phase only: set-up such as connecting or the \
         bank's logins is excluded) per operation, the ranking figure because it holds within about \
         10 % on this machine while throughput swings 30-50 %; then throughput (messages, \
         requests or connections per second). Idle: server RSS per held connection.\n"
    );
    let servers: Vec<&str> = ECHO_SERVERS.iter().map(|s| s.name).collect();
    let _ = writeln!(md, "| scenario | {} | ranking |", servers.join(" | "));
    let _ = writeln!(md, "|---|{}---|", "---|".repeat(servers.len()));
    for (sc, outcomes) in results.iter().filter(|(sc, _)| sc.target == Target::Echo) {
        let cells: Vec<String> = servers
            .iter()
            .map(|name| {
                outcomes
                    .iter()
                    .find(|o| o.server == *name)
                    .map_or("-".into(), |o| headline(sc, o))
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            sc.name,
            cells.join(" | "),
            ranking(sc, outcomes)
        );
    }
    let _ = writeln!(
        md,
        "\nRatios at equal thread counts, duo / peer: CPU per operation (< 1 favours duo), \
         then throughput (> 1 favours duo); for idle, RSS per connection.\n"
    );
    let _ = writeln!(md, "| scenario | duo-0 / raw-epoll | duo-2 / tokio |");
    let _ = writeln!(md, "|---|---|---|");
    for (sc, outcomes) in results.iter().filter(|(sc, _)| sc.target == Target::Echo) {
        let get = |name: &str| outcomes.iter().find(|o| o.server == name);
        let cell = |duo: &str, peer: &str| -> String {
            let (Some(d), Some(p)) = (get(duo), get(peer)) else {
                return "-".into();
            };
            if sc.mode == "idle" {
                ratio(d.num("rss_per_conn_bytes"), p.num("rss_per_conn_bytes"))
            } else {
                format!(
                    "{} / {}",
                    ratio(d.cpu_per_op_us(), p.cpu_per_op_us()),
                    ratio(d.rate(), p.rate())
                )
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            sc.name,
            cell("duo-0", "raw-epoll"),
            cell("duo-2", "tokio")
        );
    }
    let bank: Vec<_> = results
        .iter()
        .filter(|(sc, _)| sc.target != Target::Echo)
        .collect();
    if !bank.is_empty() {
        let _ = writeln!(md, "\nBank (durable transfers: every `OK` is on disk):\n");
        let _ = writeln!(
            md,
            "| scenario | transfers/s | p50 | p99 | server CPU/transfer | totals |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for (sc, outcomes) in bank {
            for o in outcomes {
                let conserved: Vec<Option<bool>> = o
                    .runs
                    .iter()
                    .map(|r| {
                        r.result
                            .as_ref()
                            .ok()
                            .and_then(|v| v.get("total_ok"))
                            .and_then(Value::as_bool)
                    })
                    .collect();
                let totals = if conserved.contains(&Some(false)) {
                    "**NOT conserved**"
                } else if !conserved.is_empty() && conserved.iter().all(|c| *c == Some(true)) {
                    "conserved"
                } else {
                    "-"
                };
                let n = o.runs.len();
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    sc.name,
                    if o.failed() {
                        "failed".into()
                    } else {
                        spread(o.rate_stats(), n, |v| format!("{:.1} k", v / 1e3))
                    },
                    o.num("p50_us").map_or("-".into(), |v| format!("{v:.0} µs")),
                    o.num("p99_us").map_or("-".into(), |v| format!("{v:.0} µs")),
                    spread(o.cpu_stats(), n, |v| format!("{v:.0} µs")),
                    totals
                );
            }
        }
        let group = results
            .iter()
            .find(|(sc, _)| sc.target == Target::Bank(true));
        let single = results
            .iter()
            .find(|(sc, _)| sc.target == Target::Bank(false));
        if let (Some((_, g)), Some((_, s))) = (group, single) {
            let _ = writeln!(
                md,
                "\nGroup commit / one commit per transfer: {}x the transfers per second.",
                ratio(
                    g.first().and_then(Outcome::rate),
                    s.first().and_then(Outcome::rate)
                )
            );
        }
    }
    let errors: Vec<String> = results
        .iter()
        .flat_map(|(sc, os)| {
            os.iter().filter_map(move |o| {
                if let Some(e) = o.failure() {
                    Some(format!("- {} on {}: {e}", sc.name, o.server))
                } else if o.errors() > 0 || o.verification_failed() {
                    let kinds: Vec<String> = o
                        .runs
                        .iter()
                        .filter_map(|r| r.result.as_ref().ok()?.get("errors").map(Value::to_string))
                        .collect();
                    Some(format!(
                        "- {} on {}: {} errors{}: {}",
                        sc.name,
                        o.server,
                        o.errors(),
                        if o.verification_failed() {
                            ", verification failed"
                        } else {
                            ""
                        },
                        kinds.join(" ")
                    ))
                } else {
                    None
                }
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            md,
            "\n**Runs with errors** (not hidden; see `target/bench/logs/`):\n"
        );
        for e in errors {
            let _ = writeln!(md, "{e}");
        }
    }
    let _ = writeln!(
        md,
        "\nCharts: `target/bench/throughput.svg`, `cpu.svg`, `latency.svg`."
    );
    md
}

fn report_json(
    results: &[(&Scenario, Vec<Outcome>)],
    machine: &str,
    command: &str,
    secs: u64,
) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|(sc, outcomes)| {
            json!({
                "scenario": sc.name,
                "about": sc.about,
                "servers": outcomes.iter().map(|o| json!({
                    "server": o.server,
                    "duo": o.duo,
                    "median_rate": o.rate(),
                    "median_server_cpu_per_op_us": o.cpu_per_op_us(),
                    "runs": o.runs.iter().map(|r| json!({
                        "server_cpu_secs": r.cpu.as_secs_f64(),
                        "server_cpu_per_op_us": r.cpu_per_op_us(),
                        "loadgen": r.result.as_ref().ok(),
                        "error": r.result.as_ref().err(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "command": command,
        "machine": machine,
        "secs": secs,
        "unix_time": unix_now(),
        "scenarios": scenarios,
    })
}

const COLORS: &[&str] = &["#1f77b4", "#6baed6", "#d62728", "#2ca02c", "#9467bd"];

/// Grouped bars, one group per scenario, each bar relative to the best server of its
/// group (100 %), since scenarios' units differ.
fn svg_bars(
    results: &[(&Scenario, Vec<Outcome>)],
    title: &str,
    value: impl Fn(&Outcome) -> Option<f64>,
    lower_is_better: bool,
) -> String {
    type Bars = Vec<(String, Option<f64>)>;
    let groups: Vec<(&str, Bars)> = results
        .iter()
        .filter(|(sc, _)| sc.target == Target::Echo && sc.mode != "idle")
        .map(|(sc, os)| {
            (
                sc.name,
                os.iter().map(|o| (o.server.clone(), value(o))).collect(),
            )
        })
        .collect();
    let (w, h, left, top, bottom) = (900.0, 360.0, 50.0, 40.0, 60.0);
    let plot_h = h - top - bottom;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        w / 2.0
    );
    for pct in [0, 50, 100] {
        let y = top + plot_h * (1.0 - pct as f64 / 100.0);
        let _ = writeln!(svg, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{pct}%</text>", w - 10.0, left - 4.0, y + 4.0);
    }
    let n = groups.len().max(1) as f64;
    let group_w = (w - left - 10.0) / n;
    for (gi, (name, bars)) in groups.iter().enumerate() {
        let present: Vec<f64> = bars.iter().filter_map(|b| b.1).collect();
        let best = if lower_is_better {
            present.iter().cloned().fold(f64::INFINITY, f64::min)
        } else {
            present.iter().cloned().fold(0.0, f64::max)
        };
        let bar_w = group_w * 0.8 / bars.len().max(1) as f64;
        for (bi, (server, v)) in bars.iter().enumerate() {
            let rel = match v {
                Some(v) if *v > 0.0 && best.is_finite() && best > 0.0 => {
                    if lower_is_better {
                        best / v
                    } else {
                        v / best
                    }
                }
                _ => 0.0,
            };
            let x = left + gi as f64 * group_w + group_w * 0.1 + bi as f64 * bar_w;
            let bh = plot_h * rel;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{server}: {:.0}%</title></rect>",
                top + plot_h - bh,
                bar_w * 0.9,
                COLORS[bi % COLORS.len()],
                rel * 100.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            left + gi as f64 * group_w + group_w / 2.0,
            h - bottom + 16.0
        );
    }
    for (i, s) in ECHO_SERVERS.iter().enumerate() {
        let x = left + i as f64 * 120.0;
        let _ = writeln!(svg, "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>", h - 22.0, COLORS[i % COLORS.len()], x + 14.0, h - 13.0, s.name);
    }
    svg.push_str("</svg>\n");
    svg
}

/// p50 and p99 of the request/response scenario per server, in µs.
fn svg_latency(results: &[(&Scenario, Vec<Outcome>)]) -> String {
    let rows: Vec<(String, f64, f64)> = results
        .iter()
        .filter(|(sc, _)| sc.mode == "rr")
        .flat_map(|(_, os)| os.iter())
        .filter_map(|o| Some((o.server.clone(), o.num("p50_us")?, o.num("p99_us")?)))
        .collect();
    let max = rows.iter().map(|r| r.2).fold(1.0, f64::max);
    let (w, row_h, left) = (700.0, 28.0, 90.0);
    let h = 50.0 + rows.len() as f64 * row_h + 20.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">rr-100x64 latency: p50 (dark) and p99 (light), µs</text>\n",
        w / 2.0
    );
    for (i, (server, p50, p99)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * row_h;
        let scale = (w - left - 80.0) / max;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{server}</text>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"20\" fill=\"#9ecae1\"/>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"20\" fill=\"#3182bd\"/>\
             <text x=\"{:.1}\" y=\"{}\">{p50:.0} / {p99:.0}</text>",
            left - 6.0,
            y + 14.0,
            p99 * scale,
            p50 * scale,
            left + p99 * scale + 6.0,
            y + 14.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| Failure::Run(format!("{}: {e}", path.display())))
}

const DOCS_BEGIN: &str = "<!-- bench:begin -->";
const DOCS_END: &str = "<!-- bench:end -->";

/// Replaces the end-to-end section of `docs/benchmarks.md` (between the markers) with
/// this run's report.
fn update_docs(md: &str) -> Result<(), Failure> {
    let path: PathBuf = root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path)
        .map_err(|e| Failure::Run(format!("{}: {e}", path.display())))?;
    let (Some(b), Some(e)) = (doc.find(DOCS_BEGIN), doc.find(DOCS_END)) else {
        return Err(Failure::Run(format!(
            "{} lacks the {DOCS_BEGIN} ... {DOCS_END} markers",
            path.display()
        )));
    };
    let new = format!("{}{DOCS_BEGIN}\n{md}{}", &doc[..b], &doc[e..]);
    write(&path, &new)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores ({cpu}), Linux {kernel}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
