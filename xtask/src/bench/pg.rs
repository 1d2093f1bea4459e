//! The PostgreSQL side of `cargo xtask bench`: the cluster the `bank-pg-*` scenarios run
//! on, a fresh database and a `CHECKPOINT` before every run, PostgreSQL's own `pgbench` as the baseline, and the CPU
//! time of process trees (the front-end's processes, the postmaster and its backends)
//! over the measured phase.
//!
//! One cluster serves every PostgreSQL scenario of a run ([`PgCluster`] of the test kit:
//! `fsync` on and `synchronous_commit` at its default, so every commit is durable;
//! `max_connections` room for pgbench's clients plus the front-ends). Each bank run gets a
//! database of its own (`CREATE DATABASE bank_run_N`, dropped after the run).
//!
//! `pgbench`'s tables are made once per cluster (`pgbench -i`, scale [`PGBENCH_SCALE`],
//! 10 with `--quick`); each run is `pgbench -c 100 -j 2 -T SECS -M prepared -n`, the
//! TPC-B-like script a user would run to see what the server does with 100 clients.
//!
//! **CPU over the measured phase.** `loadgen --server-pid` samples the front-end's
//! process tree (a supervisor and its workers with `--processes`), not the database's: a
//! postmaster with a backend per connection. So a [`Sampler`] thread reads, every
//! [`SAMPLE_EVERY`], the CPU time of both trees: for every process of a tree `utime +
//! stime` and also `cutime + cstime` (children that exited and were reaped, so a backend
//! that ends mid-run keeps its share) from `/proc/PID/stat`. The measured phase is then
//! the window, as long as the phase `loadgen` (or `pgbench`) reports, in which the
//! database used the most CPU: set-up (registering, logging in, pgbench's connections)
//! and the final balance check are light on the database next to the transfers, so they
//! fall outside it. Both trees' CPU is taken over that one window and scaled to the
//! reported phase length (the window is within one sampling period of it).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::pg::{bin_dir, PgCluster};

use super::outcome::Run;
use super::runner::Setting;
use super::steal::StealMeter;
use crate::process::run_bounded;
use crate::Failure;

/// `pgbench`'s clients: as many as the bank scenarios' `loadgen --clients`.
pub(super) const PGBENCH_CLIENTS: u32 = 100;
/// `pgbench -i -s`: pgbench's documentation asks for a scale at least the number of
/// clients (one `pgbench_branches` row per scale unit; every TPC-B transaction updates
/// one, so fewer rows mostly measure row-lock waits). 100 is 10 million accounts, about
/// 20 s to make (server-side generation, `-I dtGvp`), once per run of the harness.
const PGBENCH_SCALE: u32 = 100;
/// The scale of a `--quick` run: 1 million accounts, about 2 s (10 clients per branch
/// row, so its figures are a rougher baseline).
const PGBENCH_SCALE_QUICK: u32 = 10;
/// The database pgbench's tables live in.
const PGBENCH_DB: &str = "pgbench";
/// How often the [`Sampler`] reads the process trees' CPU time.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long `pgbench -i` may take.
const INIT_LIMIT: Duration = Duration::from_secs(600);

/// Numbers the bank runs' databases.
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The cluster of the PostgreSQL scenarios, or why there is none: `Ok(None)` (after
/// printing one line) where PostgreSQL is not installed, an error if it is missing under
/// CI (where `.ci/run` installs it) or the cluster cannot be started or set up.
pub(super) fn start_cluster(names: &[&str], quick: bool) -> Result<Option<PgCluster>, Failure> {
    if bin_dir().is_none() {
        let what = format!(
            "{}: PostgreSQL not found (set DUO_PG_BIN or install postgresql)",
            names.join(", ")
        );
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            return Err(Failure::Run(format!(
                "{what}; CI is set, so this fails instead of skipping (.ci/run installs \
                 postgresql)"
            )));
        }
        println!("\nskipped {what}");
        return Ok(None);
    }
    println!("\nstarting a PostgreSQL cluster (fsync on, synchronous_commit on)...");
    let pg = PgCluster::builder()
        // pgbench's clients, the front-ends' connections, and some to spare.
        .max_connections(PGBENCH_CLIENTS + 100)
        .setting("fsync", "on")
        .setting("synchronous_commit", "on")
        .start()
        .map_err(|e| Failure::Run(format!("cannot start a PostgreSQL cluster: {e}")))?;
    let scale = if quick {
        PGBENCH_SCALE_QUICK
    } else {
        PGBENCH_SCALE
    };
    println!("pgbench -i -s {scale} (the baseline's tables, once)...");
    let started = Instant::now();
    psql(&pg, &format!("CREATE DATABASE {PGBENCH_DB}"))?;
    let mut init = pg.command("pgbench");
    init.env("PGDATABASE", PGBENCH_DB)
        .args(["-i", "-q", "-I", "dtGvp", "-s", &scale.to_string()]);
    let done = duo_testkit::run_within(&mut init, INIT_LIMIT)
        .map_err(|e| Failure::Run(format!("pgbench -i: {e}")))?;
    if !done.status.success() {
        return Err(Failure::Run(format!(
            "pgbench -i failed ({}): {}",
            done.status,
            done.stderr.trim()
        )));
    }
    println!("   done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(Some(pg))
}

/// `CHECKPOINT`: flushes what earlier runs (and `pgbench -i`'s gigabyte) left dirty, so
/// that no run pays for a checkpoint it did not cause (a checkpoint under way also makes
/// every first change of a page log the whole page). Run before every measured run.
fn checkpoint(pg: &PgCluster) -> Result<(), String> {
    pg.psql("CHECKPOINT")
        .map(drop)
        .map_err(|e| format!("CHECKPOINT: {e}"))
}

/// Runs `sql` on the cluster's `bank` database.
fn psql(pg: &PgCluster, sql: &str) -> Result<String, Failure> {
    pg.psql(sql)
        .map_err(|e| Failure::Run(format!("psql `{sql}`: {e}")))
}

/// A database made for one bank run, dropped (with its connections ended) when this is.
pub(super) struct RunDatabase<'a> {
    pg: &'a PgCluster,
    name: String,
}

impl<'a> RunDatabase<'a> {
    /// `CREATE DATABASE bank_run_N`.
    pub(super) fn create(pg: &'a PgCluster) -> Result<RunDatabase<'a>, String> {
        let name = format!("bank_run_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        pg.psql(&format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        checkpoint(pg)?;
        Ok(RunDatabase { pg, name })
    }

    /// The database's URL over TCP, as `bank serve --db` takes it.
    pub(super) fn url(&self) -> String {
        let url = self.pg.url();
        let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
    }
}

impl Drop for RunDatabase<'_> {
    fn drop(&mut self) {
        // The server is gone, but its backends may still be ending.
        if let Err(e) = self.pg.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("warning: cannot drop database {}: {e}", self.name);
        }
    }
}

/// The CPU time of a process tree so far (see [`duo_testkit::tree_cpu_time`]: the
/// process, every descendant, and the children they reaped); `None` if `root` is gone.
pub(super) fn tree_cpu(root: u32) -> Option<Duration> {
    duo_testkit::tree_cpu_time(root).ok()
}

/// One reading of the [`Sampler`]: when, and the two trees' CPU time so far.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    front: Option<Duration>,
    db: Duration,
}

/// A thread reading the CPU time of a front-end's process tree (if any) and of the
/// database server's every [`SAMPLE_EVERY`] until [`finish`](Sampler::finish)ed.
pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling the trees of `front` (the bank server) and `postmaster`.
    pub(super) fn start(front: Option<u32>, postmaster: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            loop {
                let at = Instant::now();
                if let Some(db) = tree_cpu(postmaster) {
                    samples.push(Sample {
                        at,
                        front: front.and_then(tree_cpu),
                        db,
                    });
                }
                if flag.load(Ordering::Relaxed) {
                    return samples;
                }
                next += SAMPLE_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Sampler { stop, thread }
    }

    /// Stops sampling (after one last reading) and returns the CPU time of the front-end
    /// and of the database over the `phase`-long window in which the database used the
    /// most (see the [module documentation](self)), scaled to `phase`; `None` without a
    /// phase (the run failed).
    pub(super) fn finish(self, phase: Option<Duration>) -> Option<PhaseCpu> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().ok()?;
        busiest_window(&samples, phase?)
    }
}

/// CPU time over the measured phase.
#[derive(Debug, Clone, Copy)]
pub(super) struct PhaseCpu {
    /// The front-end's processes (none for pgbench).
    pub(super) front: Option<Duration>,
    /// The postmaster and its backends.
    pub(super) db: Duration,
}

/// The window of `samples` at least `phase` long (the shortest such from each start) in
/// which the database's CPU time grew most; both trees' growth over it, scaled to `phase`.
fn busiest_window(samples: &[Sample], phase: Duration) -> Option<PhaseCpu> {
    let mut best: Option<(f64, &Sample, &Sample)> = None;
    let mut j = 0;
    for (i, a) in samples.iter().enumerate() {
        j = j.max(i + 1);
        while j < samples.len() && samples[j].at.duration_since(a.at) < phase {
            j += 1;
        }
        let Some(b) = samples.get(j) else { break };
        let rate =
            b.db.saturating_sub(a.db).as_secs_f64() / b.at.duration_since(a.at).as_secs_f64();
        if best.is_none_or(|(r, _, _)| rate > r) {
            best = Some((rate, a, b));
        }
    }
    let (_, a, b) = best.or_else(|| {
        // Shorter than the phase (a run cut short): all of it.
        let (a, b) = (samples.first()?, samples.last()?);
        (b.at > a.at).then_some((0.0, a, b))
    })?;
    let scale = phase.as_secs_f64() / b.at.duration_since(a.at).as_secs_f64();
    let grew = |x: Duration, y: Duration| {
        Duration::from_secs_f64(y.saturating_sub(x).as_secs_f64() * scale)
    };
    Some(PhaseCpu {
        front: match (a.front, b.front) {
            (Some(x), Some(y)) => Some(grew(x, y)),
            _ => None,
        },
        db: grew(a.db, b.db),
    })
}

/// Whether this `bank` binary has `serve --processes` (several front-end processes).
pub(super) fn bank_has_processes(release: &Path) -> bool {
    Command::new(release.join("bank"))
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--processes"))
}

/// One `pgbench` run of `set.secs` against the cluster's pgbench tables, with the
/// database's CPU time over its measured phase; `tag` names the log.
pub(super) fn run_pgbench(pg: &PgCluster, tag: &str, set: &Setting<'_>) -> Run {
    let Some(postmaster) = pg.postmaster_pid() else {
        return Run::failed("the PostgreSQL server is not running".into());
    };
    if let Err(e) = checkpoint(pg) {
        return Run::failed(e);
    }
    let mut cmd = pg.command("pgbench");
    cmd.env("PGDATABASE", PGBENCH_DB).args([
        "-c",
        &PGBENCH_CLIENTS.to_string(),
        "-j",
        "2",
        "-T",
        &set.secs.to_string(),
        "-M",
        "prepared",
        "-n",
    ]);
    let log = set.logs.join(format!("{tag}.pgbench.log"));
    let sampler = Sampler::start(None, postmaster);
    let steal = StealMeter::start();
    let ran = run_bounded(&mut cmd, Duration::from_secs(set.secs + 120), &log);
    let steal_pct = steal.finish();
    let result = ran.and_then(|(ok, out)| {
        if !ok {
            return Err(format!("pgbench failed (see {})", log.display()));
        }
        parse_pgbench(&out).ok_or_else(|| format!("no tps in pgbench's output: {out}"))
    });
    let phase = result
        .as_ref()
        .ok()
        .and_then(|j| j.elapsed_secs)
        .map(Duration::from_secs_f64);
    let cpu = sampler.finish(phase);
    Run {
        result,
        cpu: None,
        db_cpu: cpu.map(|c| c.db),
        steal_pct,
        attempts: 1,
        steal_high: false,
        server_exited: false,
    }
}

/// pgbench's report as a [`LoadgenJson`]: transactions as transfers, `tps = X (without
/// initial connection time)` as their rate, the average latency.
pub(super) fn parse_pgbench(out: &str) -> Option<LoadgenJson> {
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    // Before PostgreSQL 14, two lines: `tps = X (including connections establishing)`
    // first, then the rate without the set-up (`excluding`), the one wanted.
    let tps = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tps = "))
        .filter(|v| !v.contains("including"))
        .find_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())?;
    let done = after("number of transactions actually processed:")? as u64;
    let failed = after("number of failed transactions:").unwrap_or(0.0) as u64;
    let mut j = LoadgenJson {
        mode: "pgbench".into(),
        conns: Some(u64::from(PGBENCH_CLIENTS)),
        transfers: Some(done),
        transfers_per_sec: Some(tps),
        elapsed_secs: (tps > 0.0).then(|| done as f64 / tps),
        mean_us: after("latency average =").map(|ms| ms * 1e3),
        ..LoadgenJson::default()
    };
    if failed > 0 {
        j.errors.insert("failed".into(), failed);
        j.error_total = failed;
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "transaction type: <builtin: TPC-B (sort of)>\n\
                   number of transactions actually processed: 14488\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 34.835 ms\n\
                   initial connection time = 176.089 ms\n\
                   tps = 2870.654316 (without initial connection time)\n";
        let j = parse_pgbench(out).unwrap();
        assert_eq!(j.transfers, Some(14488));
        assert_eq!(j.transfers_per_sec, Some(2870.654316));
        assert_eq!(j.mean_us, Some(34835.0));
        assert_eq!(j.error_total, 0);
        assert!(parse_pgbench("no such line").is_none());
    }

    #[test]
    fn the_busiest_window_is_taken_and_scaled() {
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        // Idle for 100 ms, 1 CPU-second per second from 100 to 300 ms, idle after.
        let db = [0, 0, 0, 50, 100, 150, 200, 200, 200];
        let samples: Vec<Sample> = db
            .iter()
            .enumerate()
            .map(|(i, d)| Sample {
                at: t0 + ms(50 * i as u64),
                front: Some(ms(d / 2)),
                db: ms(*d),
            })
            .collect();
        let near = |d: Duration, want: u64| d.abs_diff(ms(want)) < Duration::from_micros(1);
        let cpu = busiest_window(&samples, ms(200)).unwrap();
        assert!(near(cpu.db, 200), "{cpu:?}");
        assert!(cpu.front.is_some_and(|f| near(f, 100)), "{cpu:?}");
        // Longer than the samples: all of them, scaled.
        let cpu = busiest_window(&samples, ms(800)).unwrap();
        assert!(near(cpu.db, 400), "{cpu:?}");
    }
}
