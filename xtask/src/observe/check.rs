//! What `observe` asks Prometheus, through its HTTP query API, and what it expects.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::query;
use super::prometheus::JOB;

/// Counters that must grow under load, scrape after scrape.
pub(super) const GROWING: [&str; 2] = ["duo_server_bytes_in_total", "duo_loop_iterations_total"];
/// The accepted-connections counter: it must reach the load's connection count.
pub(super) const ACCEPTED: &str = "duo_server_connections_accepted_total";
/// The range every counter and `up` is read over: longer than any run, and Prometheus'
/// database is fresh, so it holds every sample of the run.
const WINDOW: &str = "10m";
/// How often Prometheus is asked again while the expectations do not hold yet.
const POLL: Duration = Duration::from_millis(250);

/// What must hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expect {
    /// Successful scrapes (samples of `up` equal to 1).
    pub(super) scrapes: usize,
    /// The least `sum(duo_server_connections_accepted_total)` at the last scrape.
    pub(super) accepted: f64,
    /// Echo runs this many worker processes behind its supervisor's metrics address.
    pub(super) workers: Option<usize>,
}

/// One counter's samples over the run, summed over its series.
#[derive(Debug, Clone, Default)]
pub(super) struct Counter {
    pub(super) name: &'static str,
    /// Series (label sets) of the counter.
    pub(super) series: usize,
    /// Samples of the series with the most.
    pub(super) samples: usize,
    /// The sum of each series' first sample.
    pub(super) first: f64,
    /// The sum of each series' last sample.
    pub(super) last: f64,
    /// Times a series went down from one sample to the next (a counter never should; the
    /// server did not restart).
    pub(super) decreases: usize,
}

impl Counter {
    pub(super) fn increase(&self) -> f64 {
        self.last - self.first
    }
}

/// What Prometheus says.
#[derive(Debug, Clone, Default)]
pub(super) struct Findings {
    /// Scrapes of the target (samples of `up{job="echo"}`) and how many succeeded.
    pub(super) scrapes: usize,
    pub(super) scrapes_up: usize,
    /// The last sample of `up{job="echo"}`.
    pub(super) up: Option<f64>,
    /// `count({__name__=~"duo_.+"})`.
    pub(super) duo_series: u64,
    /// Series per `duo_` metric name, sorted by name.
    pub(super) names: Vec<(String, u64)>,
    /// [`GROWING`], then [`ACCEPTED`].
    pub(super) counters: Vec<Counter>,
    /// `sum(duo_loop_spins_total)` and `sum(duo_loop_stalls_total)` now: the detectors
    /// must stay silent under normal load (spins are judged; stalls, wall-clock time that
    /// a preempted thread on a loaded 2-core machine can run up, are only reported).
    pub(super) spins: f64,
    pub(super) stalls: f64,
    /// Workers with `duo_aggregate_up` 1 at the last scrape, and the distinct `pid`s of
    /// `duo_server_bytes_in_total{process="worker"}` (worker processes only).
    pub(super) workers_up: f64,
    pub(super) worker_pids: f64,
}

impl Findings {
    /// Asks Prometheus at `addr`.
    pub(super) fn read(addr: SocketAddr) -> Result<Findings, String> {
        let up = samples(&query(addr, &format!("up{{job=\"{JOB}\"}}[{WINDOW}]"))?)?;
        let up_values: Vec<f64> = up.first().cloned().unwrap_or_default();
        let duo_series = scalar_or_zero(&query(addr, "count({__name__=~\"duo_.+\"})")?)?;
        let by_name = query(addr, "count by (__name__) ({__name__=~\"duo_.+\"})")?;
        let mut names = Vec::new();
        for item in result(&by_name)? {
            let name = item["metric"]["__name__"].as_str().unwrap_or_default();
            names.push((name.to_owned(), value(&item["value"])? as u64));
        }
        names.sort();
        let mut counters = Vec::new();
        for name in GROWING.into_iter().chain([ACCEPTED]) {
            let series = samples(&query(addr, &format!("{name}{{job=\"{JOB}\"}}[{WINDOW}]"))?)?;
            counters.push(Counter {
                name,
                series: series.len(),
                samples: series.iter().map(Vec::len).max().unwrap_or(0),
                first: series
                    .iter()
                    .filter_map(|s| s.first())
                    .fold(0.0, |a, b| a + b),
                last: series
                    .iter()
                    .filter_map(|s| s.last())
                    .fold(0.0, |a, b| a + b),
                decreases: series
                    .iter()
                    .map(|s| s.windows(2).filter(|w| w[1] < w[0]).count())
                    .sum(),
            });
        }
        let spins = scalar_or_zero(&query(addr, "sum(duo_loop_spins_total)")?)?;
        let stalls = scalar_or_zero(&query(addr, "sum(duo_loop_stalls_total)")?)?;
        let workers_up = scalar_or_zero(&query(addr, "sum(duo_aggregate_up)")?)?;
        let worker_pids = scalar_or_zero(&query(
            addr,
            "count(count by (pid) (duo_server_bytes_in_total{process=\"worker\"}))",
        )?)?;
        Ok(Findings {
            workers_up,
            worker_pids,
            spins,
            stalls,
            scrapes: up_values.len(),
            scrapes_up: up_values.iter().filter(|v| **v == 1.0).count(),
            up: up_values.last().copied(),
            duo_series: duo_series as u64,
            names,
            counters,
        })
    }

    /// What does not hold yet of `expect`; empty when everything does.
    pub(super) fn problems(&self, expect: &Expect) -> Vec<String> {
        let mut out = Vec::new();
        if self.scrapes_up < expect.scrapes {
            out.push(format!(
                "{} successful scrapes of {} (want at least {})",
                self.scrapes_up, self.scrapes, expect.scrapes
            ));
        }
        if self.up != Some(1.0) {
            out.push(format!(
                "up{{job=\"{JOB}\"}} is {}, not 1",
                self.up.map_or("absent".into(), |v| v.to_string())
            ));
        }
        if self.duo_series == 0 {
            out.push("count({__name__=~\"duo_.+\"}) found no series".into());
        }
        if self.spins > 0.0 {
            out.push(format!(
                "the spin detector fired {} times under normal load (duo_loop_spins_total)",
                self.spins
            ));
        }
        if let Some(n) = expect.workers {
            let n = n as f64;
            if self.workers_up != n {
                out.push(format!(
                    "sum(duo_aggregate_up) is {}, not the {n} worker processes",
                    self.workers_up
                ));
            }
            if self.worker_pids != n {
                out.push(format!(
                    "duo_server_bytes_in_total{{process=\"worker\"}} has series of {} pids, \
                     not {n}",
                    self.worker_pids
                ));
            }
        }
        for c in &self.counters {
            if c.series == 0 {
                out.push(format!("no {} series", c.name));
                continue;
            }
            if c.decreases > 0 {
                out.push(format!(
                    "{} went down {} times between scrapes (a counter never does)",
                    c.name, c.decreases
                ));
            }
            if GROWING.contains(&c.name) && !(c.samples >= 2 && c.increase() > 0.0) {
                out.push(format!(
                    "{} did not increase between scrapes ({} -> {} over {} samples)",
                    c.name, c.first, c.last, c.samples
                ));
            }
            if c.name == ACCEPTED && c.last < expect.accepted {
                out.push(format!(
                    "{} is {} at the last scrape, fewer than the {} connections of the load",
                    c.name, c.last, expect.accepted
                ));
            }
        }
        out
    }

    /// A few lines for the report.
    pub(super) fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  scrapes of job \"{JOB}\": {} ({} up), last up = {}",
            self.scrapes,
            self.scrapes_up,
            self.up.map_or("absent".into(), |v| v.to_string())
        );
        let names: Vec<String> = self.names.iter().map(|(n, k)| format!("{n} {k}")).collect();
        let _ = writeln!(
            s,
            "  duo_ series: {} ({})",
            self.duo_series,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "  loop detectors under load: {} spins, {} stalls",
            self.spins, self.stalls
        );
        if self.worker_pids > 0.0 {
            let _ = writeln!(
                s,
                "  worker processes: {} up, {} pids with traffic figures",
                self.workers_up, self.worker_pids
            );
        }
        for c in &self.counters {
            let _ = writeln!(
                s,
                "  {}: {} series, {} -> {} (+{}) over {} scrapes",
                c.name,
                c.series,
                c.first,
                c.last,
                c.increase(),
                c.samples
            );
        }
        s
    }
}

/// Asks Prometheus every [`POLL`] until `expect` holds (the findings) or `deadline`
/// passes (an error listing what did not hold). `alive` is called before each poll: an
/// error from it (a process of the run exited) ends the wait at once.
pub(super) fn wait_for(
    addr: SocketAddr,
    expect: &Expect,
    deadline: Instant,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<Findings, String> {
    loop {
        alive()?;
        let (findings, problems) = match Findings::read(addr) {
            Ok(f) => {
                let p = f.problems(expect);
                (Some(f), p)
            }
            Err(e) => (None, vec![e]),
        };
        if let (Some(f), true) = (&findings, problems.is_empty()) {
            return Ok(f.clone());
        }
        if Instant::now() >= deadline {
            let mut msg = String::from("the checks did not pass in time:\n");
            for p in &problems {
                let _ = writeln!(msg, "  - {p}");
            }
            if let Some(f) = findings {
                msg.push_str("what Prometheus had:\n");
                msg.push_str(&f.describe());
            }
            return Err(msg.trim_end().to_owned());
        }
        std::thread::sleep(POLL);
    }
}

/// The `result` array of a query's `data`.
fn result(data: &Value) -> Result<&Vec<Value>, String> {
    data["result"]
        .as_array()
        .ok_or_else(|| format!("a query answer without a result array: {data}"))
}

/// The values of each series of a range-vector (`matrix`) answer, in time order.
fn samples(data: &Value) -> Result<Vec<Vec<f64>>, String> {
    if data["resultType"] != "matrix" {
        return Err(format!("a matrix was due, not {}", data["resultType"]));
    }
    result(data)?
        .iter()
        .map(|series| {
            series["values"]
                .as_array()
                .ok_or_else(|| format!("a series without values: {series}"))?
                .iter()
                .map(value)
                .collect()
        })
        .collect()
}

/// The value of an instant-vector answer with at most one element (0 when empty: `count`
/// of nothing is an empty vector).
fn scalar_or_zero(data: &Value) -> Result<f64, String> {
    match result(data)?.first() {
        Some(item) => value(&item["value"]),
        None => Ok(0.0),
    }
}

/// A sample, `[timestamp, "value"]`.
fn value(sample: &Value) -> Result<f64, String> {
    sample[1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("a bad sample {sample}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{samples, scalar_or_zero, Counter, Expect, Findings, ACCEPTED, GROWING};

    #[test]
    fn reads_matrix_and_vector_answers() {
        let m = json!({"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1.0, "1"], [2.0, "5"]]},
            {"metric": {}, "values": [[2.0, "7"]]}]});
        assert_eq!(
            samples(&m).expect("samples"),
            vec![vec![1.0, 5.0], vec![7.0]]
        );
        assert!(samples(&json!({"resultType": "vector", "result": []})).is_err());
        let v = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "3"]}]});
        assert_eq!(scalar_or_zero(&v).expect("a value"), 3.0);
        let empty = json!({"resultType": "vector", "result": []});
        assert_eq!(scalar_or_zero(&empty).expect("zero"), 0.0);
    }

    fn counter(name: &'static str, first: f64, last: f64) -> Counter {
        Counter {
            name,
            series: 1,
            samples: 3,
            first,
            last,
            decreases: 0,
        }
    }

    #[test]
    fn judges_findings() {
        let expect = Expect {
            scrapes: 2,
            accepted: 20.0,
            workers: None,
        };
        let good = Findings {
            scrapes: 3,
            scrapes_up: 3,
            up: Some(1.0),
            duo_series: 4,
            names: Vec::new(),
            counters: vec![
                counter(GROWING[0], 10.0, 900.0),
                counter(GROWING[1], 5.0, 50.0),
                counter(ACCEPTED, 20.0, 20.0),
            ],
            spins: 0.0,
            stalls: 2.0,
            workers_up: 0.0,
            worker_pids: 0.0,
        };
        assert!(
            good.problems(&expect).is_empty(),
            "stalls are only reported"
        );
        let two = Expect {
            workers: Some(2),
            ..expect
        };
        let mut workers = good.clone();
        (workers.workers_up, workers.worker_pids) = (2.0, 2.0);
        assert!(workers.problems(&two).is_empty());
        workers.workers_up = 1.0;
        workers.worker_pids = 1.0;
        let problems = workers.problems(&two).join("\n");
        assert!(
            problems.contains("sum(duo_aggregate_up) is 1"),
            "{problems}"
        );
        assert!(problems.contains("series of 1 pids"), "{problems}");
        let mut spinning = good.clone();
        spinning.spins = 1.0;
        assert!(spinning.problems(&expect)[0].contains("spin detector fired 1 times"));
        let mut flat = good.clone();
        flat.counters[0].last = 10.0;
        flat.counters[2].last = 3.0;
        flat.up = Some(0.0);
        let problems = flat.problems(&expect).join("\n");
        assert!(problems.contains("duo_server_bytes_in_total did not increase"));
        assert!(problems.contains("fewer than the 20 connections"));
        assert!(problems.contains("up{job=\"echo\"} is 0"));
        let mut absent = good;
        absent.counters[1].series = 0;
        absent.duo_series = 0;
        absent.scrapes_up = 1;
        let problems = absent.problems(&expect).join("\n");
        assert!(problems.contains("no duo_loop_iterations_total series"));
        assert!(problems.contains("found no series"));
        assert!(problems.contains("1 successful scrapes of 3"));
    }
}
