//! The micro-benchmarks: criterion benches of `duo-benches`, run through `cargo bench`;
//! their estimates are read back from `target/criterion/GROUP/.../new/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use serde::Deserialize;

use super::scenarios::Micro;
use crate::report::markdown;
use crate::{cargo, root, run, target_dir, Failure};

/// Criterion options of a `--quick` run: a short warm-up and measurement, few samples.
const QUICK: &[&str] = &[
    "--warm-up-time",
    "0.5",
    "--measurement-time",
    "1",
    "--sample-size",
    "10",
];

/// One benchmark's result.
#[derive(Debug, serde::Serialize)]
pub(super) struct Estimate {
    /// Criterion's id, `group/function[/parameter]`.
    pub(super) id: String,
    /// Median time per iteration, ns, with its 95 % confidence interval.
    pub(super) median_ns: f64,
    pub(super) low_ns: f64,
    pub(super) high_ns: f64,
    /// Elements processed per iteration, when the bench declares a throughput.
    pub(super) elements: Option<u64>,
}

/// `benchmark.json` of a criterion result: what was measured.
#[derive(Deserialize)]
struct BenchmarkJson {
    full_id: String,
    /// `{"Elements": n}`, `{"Bytes": n}`, ... or null.
    throughput: Option<BTreeMap<String, u64>>,
}

/// `estimates.json` of a criterion result (only the median is read).
#[derive(Deserialize)]
struct EstimatesJson {
    median: EstimateJson,
}

#[derive(Deserialize)]
struct EstimateJson {
    point_estimate: f64,
    confidence_interval: IntervalJson,
}

#[derive(Deserialize)]
struct IntervalJson {
    lower_bound: f64,
    upper_bound: f64,
}

/// Runs the criterion bench `m` (short with `quick`) and returns the estimates it wrote.
pub(super) fn run_micro(m: &Micro, quick: bool) -> Result<Vec<Estimate>, Failure> {
    let started = SystemTime::now();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root())
        .args(["bench", "--quiet", "-p", "duo-benches", "--bench", m.name])
        .args(["--", "--noplot"]);
    if quick {
        cmd.args(QUICK);
    }
    run(&mut cmd)?;
    let dir = target_dir().join("criterion");
    let mut found = Vec::new();
    for group in m.groups {
        collect(&dir.join(group), started, &mut found);
    }
    if found.is_empty() {
        return Err(Failure::Run(format!(
            "the {} bench wrote no estimates under {}",
            m.name,
            dir.display()
        )));
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// The estimates under `dir` written since `since` (older ones are from earlier runs).
fn collect(dir: &Path, since: SystemTime, out: &mut Vec<Estimate>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some(e) = read_estimate(&path, since) {
                out.push(e);
            }
        } else if path.is_dir() && path.file_name().is_some_and(|n| n != "base") {
            collect(&path, since, out);
        }
    }
}

/// One result directory (`.../new`), if it is fresh and readable.
fn read_estimate(new: &Path, since: SystemTime) -> Option<Estimate> {
    let estimates = new.join("estimates.json");
    let fresh = std::fs::metadata(&estimates).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let bench: BenchmarkJson =
        serde_json::from_str(&std::fs::read_to_string(new.join("benchmark.json")).ok()?).ok()?;
    let est: EstimatesJson =
        serde_json::from_str(&std::fs::read_to_string(estimates).ok()?).ok()?;
    let elements = bench.throughput.and_then(|t| t.get("Elements").copied());
    Some(Estimate {
        id: bench.full_id,
        median_ns: est.median.point_estimate,
        low_ns: est.median.confidence_interval.lower_bound,
        high_ns: est.median.confidence_interval.upper_bound,
        elements,
    })
}

/// The estimates as a markdown table: median time per iteration with its confidence
/// interval, and the rate it amounts to.
pub(super) fn table(estimates: &[Estimate]) -> String {
    markdown::table(
        &["benchmark", "median per iteration (95 % CI)", "rate"],
        estimates.iter().map(|e| {
            [
                format!("`{}`", e.id),
                format!(
                    "{} ({}-{})",
                    fmt_ns(e.median_ns),
                    fmt_ns(e.low_ns),
                    fmt_ns(e.high_ns)
                ),
                e.elements.map_or("-".into(), |n| {
                    let per_sec = n as f64 * 1e9 / e.median_ns;
                    if per_sec >= 1e6 {
                        format!("{:.2} M/s", per_sec / 1e6)
                    } else {
                        format!("{:.1} k/s", per_sec / 1e3)
                    }
                }),
            ]
        }),
    )
}

/// Nanoseconds in the unit that suits them.
fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_criterion_result() {
        let dir = std::env::temp_dir().join(format!("duo-micro-test-{}", std::process::id()));
        let new = dir.join("g/f/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"g","function_id":"f","value_str":null,"throughput":{"Elements":1},
               "full_id":"g/f","directory_name":"g/f","title":"g/f"}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":3.0},"median":{"confidence_interval":
               {"confidence_level":0.95,"lower_bound":1.5,"upper_bound":2.5},
               "point_estimate":2.0,"standard_error":0.1}}"#,
        )
        .unwrap();
        let mut found = Vec::new();
        collect(&dir, SystemTime::UNIX_EPOCH, &mut found);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].id.as_str(), found[0].median_ns), ("g/f", 2.0));
        assert!(table(&found).contains("| `g/f` | 2.0 ns (1.5 ns-2.5 ns) | 500.00 M/s |"));
    }
}
