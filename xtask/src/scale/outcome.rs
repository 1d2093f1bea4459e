//! What `cargo xtask scale` measured, and how it is reported (human-readable or one JSON
//! line).

use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;

use super::memory::{KernelMem, TreeMem};
use super::Plan;

/// Everything measured.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) report: Option<LoadgenJson>,
    pub(super) loadgen_failure: Option<String>,
    pub(super) server_before: TreeMem,
    pub(super) server_hold: Option<TreeMem>,
    pub(super) kernel_before: KernelMem,
    pub(super) kernel_hold: Option<KernelMem>,
    pub(super) loadgen_hold: Option<TreeMem>,
    pub(super) sample_errors: Vec<String>,
    pub(super) stop: Result<(i32, Duration), String>,
    pub(super) wall: Duration,
}

impl Outcome {
    /// Bytes per connection of an increase from `before` to `after` KiB.
    fn per_conn(&self, before: u64, after: u64) -> Option<f64> {
        let n = self.established().filter(|&n| n > 0)?;
        Some((after as f64 - before as f64) * 1024.0 / n as f64)
    }

    fn established(&self) -> Option<u64> {
        self.report.as_ref().and_then(|r| r.established)
    }

    /// `(rss, pss)` bytes per connection of the server.
    fn server_per_conn(&self) -> (Option<f64>, Option<f64>) {
        let Some(h) = self.server_hold else {
            return (None, None);
        };
        let b = self.server_before;
        (
            self.per_conn(b.rss_kib, h.rss_kib),
            self.per_conn(b.pss_kib, h.pss_kib),
        )
    }

    /// Kernel: `(tcp mem, slab, sunreclaim)` bytes per connection, and sockets added.
    fn kernel_per_conn(&self) -> Option<(f64, f64, f64, i64)> {
        let h = self.kernel_hold?;
        let b = self.kernel_before;
        // `tcp_mem` counts pages (4 KiB here; 64 KiB on some arm64 kernels).
        let page_kib = duo_testkit::page_size().map_or(4, |bytes| bytes / 1024);
        Some((
            self.per_conn(b.tcp_mem_pages * page_kib, h.tcp_mem_pages * page_kib)?,
            self.per_conn(b.slab_kib, h.slab_kib)?,
            self.per_conn(b.sunreclaim_kib, h.sunreclaim_kib)?,
            h.tcp_inuse as i64 - b.tcp_inuse as i64,
        ))
    }

    /// What went wrong; empty if nothing did.
    pub(super) fn problems(&self, plan: &Plan) -> Vec<String> {
        let mut p = self.sample_errors.clone();
        p.extend(self.loadgen_failure.clone());
        match &self.report {
            None => p.push("loadgen printed no report".into()),
            Some(r) => {
                let est = r.established.unwrap_or(0);
                if est < plan.conns {
                    p.push(format!("{est} of {} connections established", plan.conns));
                }
                if r.verified_end.unwrap_or(0) < est {
                    p.push(format!(
                        "{} of {est} connections verified at the end",
                        r.verified_end.unwrap_or(0)
                    ));
                }
                if r.error_total > 0 {
                    p.push(format!("loadgen errors: {:?}", r.errors));
                }
                p.extend(r.failure.clone());
            }
        }
        match &self.stop {
            Ok((0, _)) => {}
            Ok((code, _)) => p.push(format!("the server exited with {code} after SIGTERM")),
            Err(e) => p.push(format!("stopping the server: {e}")),
        }
        p
    }

    /// The human-readable report.
    pub(super) fn to_human(&self, plan: &Plan) -> String {
        let mut s = String::new();
        let mut line = |label: &str, text: String| s.push_str(&format!("  {label:<16}{text}\n"));
        let r = self.report.clone().unwrap_or_default();
        line(
            "established",
            format!(
                "{} of {} (verified at start), {} verified at the end (in {:.2} s)",
                r.established.unwrap_or(0),
                plan.conns,
                r.verified_end.unwrap_or(0),
                r.verify_secs.unwrap_or(0.0)
            ),
        );
        line(
            "set-up rate",
            format!(
                "{:.0} connections/s (connect phase {:.2} s)",
                r.setup_per_sec.unwrap_or(0.0),
                r.connect_secs.unwrap_or(0.0)
            ),
        );
        let (rss, pss) = self.server_per_conn();
        if let Some(h) = self.server_hold {
            let b = self.server_before;
            line(
                "server memory",
                format!(
                    "{} process(es): RSS {} -> {} KiB ({} B/conn), PSS {} -> {} KiB ({} B/conn)",
                    h.procs,
                    b.rss_kib,
                    h.rss_kib,
                    fmt_b(rss),
                    b.pss_kib,
                    h.pss_kib,
                    fmt_b(pss)
                ),
            );
        }
        if let (Some((tcp, slab, unrecl, socks)), Some(h)) =
            (self.kernel_per_conn(), self.kernel_hold)
        {
            let b = self.kernel_before;
            line(
                "kernel memory",
                format!(
                    "TCP sockets +{socks}, TCP buffer pages {} -> {} ({} B/conn), Slab {} -> {} \
                     KiB ({} B/conn), SUnreclaim {} -> {} KiB ({} B/conn); both ends",
                    b.tcp_mem_pages,
                    h.tcp_mem_pages,
                    fmt_b(Some(tcp)),
                    b.slab_kib,
                    h.slab_kib,
                    fmt_b(Some(slab)),
                    b.sunreclaim_kib,
                    h.sunreclaim_kib,
                    fmt_b(Some(unrecl))
                ),
            );
        }
        if let Some(l) = self.loadgen_hold {
            line(
                "loadgen memory",
                format!(
                    "{} process(es): RSS {} KiB, PSS {} KiB ({} B/conn)",
                    l.procs,
                    l.rss_kib,
                    l.pss_kib,
                    fmt_b(
                        self.established()
                            .filter(|&n| n > 0)
                            .map(|n| l.pss_kib as f64 * 1024.0 / n as f64)
                    )
                ),
            );
        }
        line(
            "server stop",
            match &self.stop {
                Ok((code, took)) => {
                    format!("SIGTERM -> exit {code} in {:.2} s", took.as_secs_f64())
                }
                Err(e) => e.clone(),
            },
        );
        line(
            "errors",
            if r.error_total == 0 {
                "none".into()
            } else {
                format!("{} {:?}", r.error_total, r.errors)
            },
        );
        for n in &r.notes {
            line("note", n.clone());
        }
        line("wall time", format!("{:.1} s", self.wall.as_secs_f64()));
        let problems = self.problems(plan);
        line(
            "result",
            if problems.is_empty() {
                "PASS".into()
            } else {
                format!("FAIL: {}", problems.join("; "))
            },
        );
        s
    }

    /// The report as one JSON line.
    pub(super) fn to_json(&self, plan: &Plan) -> String {
        let r = self.report.clone().unwrap_or_default();
        let (rss, pss) = self.server_per_conn();
        let kernel = self.kernel_per_conn();
        let problems = self.problems(plan);
        serde_json::json!({
            "conns": plan.conns,
            "server_procs": plan.server_procs,
            "loadgen_procs": plan.loadgen_procs,
            "hold_secs": plan.hold,
            "established": r.established,
            "verified_end": r.verified_end,
            "setup_per_sec": r.setup_per_sec,
            "connect_secs": r.connect_secs,
            "verify_secs": r.verify_secs,
            "server_rss_before_kib": self.server_before.rss_kib,
            "server_pss_before_kib": self.server_before.pss_kib,
            "server_rss_hold_kib": self.server_hold.map(|m| m.rss_kib),
            "server_pss_hold_kib": self.server_hold.map(|m| m.pss_kib),
            "server_rss_per_conn_bytes": rss,
            "server_pss_per_conn_bytes": pss,
            "kernel_tcp_inuse_added": kernel.map(|k| k.3),
            "kernel_tcp_mem_per_conn_bytes": kernel.map(|k| k.0),
            "kernel_slab_per_conn_bytes": kernel.map(|k| k.1),
            "kernel_sunreclaim_per_conn_bytes": kernel.map(|k| k.2),
            "loadgen_rss_kib": self.loadgen_hold.map(|m| m.rss_kib),
            "loadgen_pss_kib": self.loadgen_hold.map(|m| m.pss_kib),
            "server_exit": self.stop.as_ref().ok().map(|s| s.0),
            "errors": r.errors,
            "error_total": r.error_total,
            "wall_secs": self.wall.as_secs_f64(),
            "ok": problems.is_empty(),
            "problems": problems,
        })
        .to_string()
    }
}

/// Bytes per connection, or `?`.
fn fmt_b(v: Option<f64>) -> String {
    v.map_or("?".into(), |b| format!("{b:.0}"))
}
