//! The result of a run: a human-readable summary, or one JSON object line (`--json`).
//!
//! The JSON is a [`LoadgenJson`] (serde): a flat object whose fields are those of
//! [`Report`] that apply to the mode; `errors` is an object of counts by kind, empty when
//! nothing failed.

use std::fmt::Write as _;

use duo_testkit::loadgen_json::{round3, LoadgenJson};

use crate::fault::Faults;
use crate::latency::Summary;

/// Everything a run measured. `None` fields do not apply to the mode and are left out.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// `pingpong`, `rr`, `idle`, `churn` or `bank`.
    pub(crate) mode: &'static str,
    /// What one unit of `msgs` is, for the human summary ("messages", "requests", ...).
    pub(crate) unit: &'static str,
    /// The server.
    pub(crate) addr: Option<String>,
    /// Worker threads.
    pub(crate) threads: usize,
    /// Connections (or churn workers, or bank clients) used.
    pub(crate) conns: Option<u64>,
    /// Connections asked for, when the open-file limit forced fewer.
    pub(crate) requested_conns: Option<u64>,
    /// Message size in bytes.
    pub(crate) size: Option<u64>,
    /// The measured phase's length as asked (`--secs`).
    pub(crate) secs: Option<f64>,
    /// The measured phase's length as it ran.
    pub(crate) elapsed_secs: Option<f64>,
    /// Completed units of work (echoed messages, requests, connect cycles).
    pub(crate) msgs: Option<u64>,
    /// Payload bytes echoed back (each was also sent).
    pub(crate) bytes: Option<u64>,
    /// `msgs` per second of `elapsed_secs`.
    pub(crate) msgs_per_sec: Option<f64>,
    /// `bytes` per second, in MiB.
    pub(crate) mib_per_sec: Option<f64>,
    /// Latency of one unit of work (`rr --rate`: from each request's intended send time).
    pub(crate) latency: Option<Summary>,
    /// `rr --rate`: the requests per second asked for.
    pub(crate) target_rate: Option<f64>,
    /// `rr --rate`: requests sent per second of `elapsed_secs`.
    pub(crate) achieved_rate: Option<f64>,
    /// `rr --rate`: requests sent.
    pub(crate) sent: Option<u64>,
    /// `rr --rate`: requests sent more than one interval after their intended time.
    pub(crate) late: Option<u64>,
    /// `rr --rate`: requests due in the measured phase, never sent.
    pub(crate) unsent: Option<u64>,
    /// Failures by kind.
    pub(crate) errors: Faults,
    /// Connections established (idle: confirmed with an echo; bank: clients logged in).
    pub(crate) established: Option<u64>,
    /// Seconds the idle connections took to open and confirm.
    pub(crate) connect_secs: Option<f64>,
    /// Seconds the idle connections were held.
    pub(crate) hold_secs: Option<f64>,
    /// Server RSS before connecting, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// Server RSS while holding the connections, KiB.
    pub(crate) rss_hold_kib: Option<u64>,
    /// `(rss_hold - rss_before) / established`, bytes.
    pub(crate) rss_per_conn_bytes: Option<f64>,
    /// `idle`: connections that echoed a second probe at the end of the hold.
    pub(crate) verified_end: Option<u64>,
    /// `idle`: seconds the verification at the end of the hold took.
    pub(crate) verify_secs: Option<f64>,
    /// `idle`: confirmed connections per second of the connect phase.
    pub(crate) setup_per_sec: Option<f64>,
    /// `idle --procs`: processes the connections were spread over.
    pub(crate) procs: Option<u64>,
    /// `idle --procs`: the load generator's summed VmRSS while holding, KiB.
    pub(crate) loadgen_rss_kib: Option<u64>,
    /// `--reconnect`: connections the server closed in an orderly way (then reopened).
    pub(crate) server_closed: Option<u64>,
    /// `--reconnect`: requests outstanding on those connections when their end came.
    pub(crate) unanswered_on_close: Option<u64>,
    /// Bank accounts.
    pub(crate) accounts: Option<u64>,
    /// Successful transfers.
    pub(crate) transfers: Option<u64>,
    /// Successful transfers per second.
    pub(crate) transfers_per_sec: Option<f64>,
    /// Transfers refused with `INSUFFICIENT_FUNDS` (normal, not an error).
    pub(crate) insufficient: Option<u64>,
    /// Sum of the balances after the deposits, cents.
    pub(crate) total_deposited: Option<i64>,
    /// Sum of the balances read at the end, cents.
    pub(crate) total_final: Option<i64>,
    /// Whether the final sum equals the deposited sum (and every account was read).
    pub(crate) total_ok: Option<bool>,
    /// The server's CPU time (user + system) during the measured phase, with
    /// `--server-pid`: that process and every process below it.
    pub(crate) server_cpu_secs: Option<f64>,
    /// Soft open-file limit.
    pub(crate) fd_limit: Option<u64>,
    /// Remarks for the reader (limits hit, phases cut short).
    pub(crate) notes: Vec<String>,
    /// Why the run could not do its job (for example the bank's set-up failed): the run
    /// fails (exit code 1).
    pub(crate) failure: Option<String>,
}

impl Report {
    /// Whether the server returned wrong data or lost money: the run fails (exit code 1).
    pub(crate) fn verification_failed(&self) -> bool {
        self.errors.verification_failed() || self.total_ok == Some(false)
    }

    /// Whether the run failed: verification failed, or the run could not do its job.
    pub(crate) fn failed(&self) -> bool {
        self.verification_failed() || self.failure.is_some()
    }

    /// One unit of work, for "per ..." figures.
    fn unit_singular(&self) -> &'static str {
        if self.transfers.is_some() {
            return "transfer";
        }
        match self.unit {
            "messages" => "message",
            "requests" => "request",
            "connections" => "connection",
            other => other,
        }
    }

    /// The report as `--json` prints it (see [`LoadgenJson`]).
    pub(crate) fn to_json(&self) -> LoadgenJson {
        let f = |v: Option<f64>| v.map(round3);
        let l = self.latency.as_ref();
        LoadgenJson {
            mode: self.mode.to_owned(),
            addr: self.addr.clone(),
            threads: Some(self.threads as u64),
            conns: self.conns,
            requested_conns: self.requested_conns,
            size: self.size,
            secs: f(self.secs),
            elapsed_secs: f(self.elapsed_secs),
            msgs: self.msgs,
            bytes: self.bytes,
            msgs_per_sec: f(self.msgs_per_sec),
            mib_per_sec: f(self.mib_per_sec),
            server_cpu_secs: f(self.server_cpu_secs),
            latency_samples: l.map(|l| l.count),
            mean_us: f(l.map(|l| l.mean_us)),
            p50_us: f(l.map(|l| l.p50_us)),
            p99_us: f(l.map(|l| l.p99_us)),
            p999_us: f(l.map(|l| l.p999_us)),
            max_us: f(l.map(|l| l.max_us)),
            target_rate: f(self.target_rate),
            achieved_rate: f(self.achieved_rate),
            sent: self.sent,
            late: self.late,
            unsent: self.unsent,
            errors: self.errors.iter().map(|(k, n)| (k.to_owned(), n)).collect(),
            error_total: self.errors.total(),
            established: self.established,
            connect_secs: f(self.connect_secs),
            hold_secs: f(self.hold_secs),
            rss_before_kib: self.rss_before_kib,
            rss_hold_kib: self.rss_hold_kib,
            rss_per_conn_bytes: f(self.rss_per_conn_bytes),
            verified_end: self.verified_end,
            verify_secs: f(self.verify_secs),
            setup_per_sec: f(self.setup_per_sec),
            procs: self.procs,
            loadgen_rss_kib: self.loadgen_rss_kib,
            server_closed: self.server_closed,
            unanswered_on_close: self.unanswered_on_close,
            accounts: self.accounts,
            transfers: self.transfers,
            transfers_per_sec: f(self.transfers_per_sec),
            insufficient: self.insufficient,
            total_deposited: self.total_deposited,
            total_final: self.total_final,
            total_ok: self.total_ok,
            fd_limit: self.fd_limit,
            verification_failed: self.verification_failed(),
            failure: self.failure.clone(),
            notes: self.notes.clone(),
        }
    }

    /// The human-readable summary, several lines.
    pub(crate) fn to_human(&self) -> String {
        let mut s = String::new();
        let mut head = format!("loadgen {}", self.mode);
        if let Some(a) = &self.addr {
            let _ = write!(head, " -> {a}");
        }
        if let Some(c) = self.conns {
            let what = match self.mode {
                "bank" => "clients",
                "churn" => "workers",
                _ => "conns",
            };
            let _ = write!(head, ", {c} {what}");
        }
        if let Some(b) = self.size {
            let _ = write!(head, " x {b} B");
        }
        let _ = write!(head, ", {} thread(s)", self.threads);
        if let Some(p) = self.procs {
            let _ = write!(head, " in each of {p} processes");
        }
        if let Some(t) = self.elapsed_secs {
            let _ = write!(head, ", {t:.2} s");
        }
        let _ = writeln!(s, "{head}");
        let line = |s: &mut String, label: &str, text: String| {
            let _ = writeln!(s, "  {label:<13}{text}");
        };
        if let Some(n) = self.established {
            line(&mut s, "established", n.to_string());
        }
        if let (Some(n), Some(rate)) = (self.msgs, self.msgs_per_sec) {
            line(&mut s, self.unit, format!("{n} ({} /s)", group(rate)));
        }
        if let (Some(b), Some(mib)) = (self.bytes, self.mib_per_sec) {
            line(&mut s, "bytes echoed", format!("{b} ({mib:.1} MiB/s)"));
        }
        if let (Some(t), Some(rate)) = (self.transfers, self.transfers_per_sec) {
            line(&mut s, "transfers", format!("{t} ({} /s)", group(rate)));
        }
        if let Some(n) = self.insufficient {
            line(
                &mut s,
                "insufficient",
                format!("{n} (INSUFFICIENT_FUNDS, normal)"),
            );
        }
        if let Some(l) = &self.latency {
            line(
                &mut s,
                "latency (µs)",
                format!(
                    "p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
                    l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
                ),
            );
        }
        if let (Some(target), Some(sent)) = (self.target_rate, self.sent) {
            let achieved = self.achieved_rate.map_or("-".to_owned(), group);
            let (late, unsent) = (self.late.unwrap_or(0), self.unsent.unwrap_or(0));
            line(
                &mut s,
                "open loop",
                format!(
                    "target {} /s, achieved {achieved} /s ({sent} sent, {late} late, {unsent} \
                     never sent); latency from the intended send times",
                    group(target)
                ),
            );
        }
        if let Some(cpu) = self.server_cpu_secs {
            let ops = self.transfers.or(self.msgs).filter(|&n| n > 0);
            let per = ops.map_or(String::new(), |n| {
                format!(
                    " = {:.2} µs per {}",
                    cpu * 1e6 / n as f64,
                    self.unit_singular()
                )
            });
            line(&mut s, "server CPU", format!("{cpu:.2} s{per}"));
        }
        if let Some(t) = self.connect_secs {
            let rate = self
                .setup_per_sec
                .map_or(String::new(), |r| format!(" ({} connections/s)", group(r)));
            line(&mut s, "connect time", format!("{t:.2} s{rate}"));
        }
        if let Some(t) = self.hold_secs {
            line(&mut s, "held for", format!("{t:.2} s"));
        }
        if let Some(n) = self.verified_end {
            let took = self
                .verify_secs
                .map_or(String::new(), |t| format!(" (in {t:.2} s)"));
            line(
                &mut s,
                "verified end",
                format!("{n} still echo after the hold{took}"),
            );
        }
        if let Some(kib) = self.loadgen_rss_kib {
            line(&mut s, "loadgen RSS", format!("{kib} KiB (all processes)"));
        }
        if let Some(n) = self.server_closed {
            let unanswered = self.unanswered_on_close.unwrap_or(0);
            line(
                &mut s,
                "server FIN",
                format!("{n} connections (reopened; {unanswered} requests unanswered on them)"),
            );
        }
        if let (Some(before), Some(hold)) = (self.rss_before_kib, self.rss_hold_kib) {
            let per = self
                .rss_per_conn_bytes
                .map_or(String::new(), |b| format!(" = {b:.0} B per connection"));
            line(
                &mut s,
                "server RSS",
                format!("{before} KiB before, {hold} KiB holding{per}"),
            );
        }
        if let (Some(dep), Some(ok)) = (self.total_deposited, self.total_ok) {
            let fin = self
                .total_final
                .map_or("unknown".to_owned(), |f| f.to_string());
            line(
                &mut s,
                "bank total",
                format!(
                    "deposited {dep}, final {fin}: {}",
                    if ok { "PASS" } else { "FAIL" }
                ),
            );
        }
        if self.errors.total() == 0 {
            line(&mut s, "errors", "none".into());
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            line(
                &mut s,
                "ERRORS",
                format!("{} ({})", self.errors.total(), kinds.join(", ")),
            );
        }
        for note in &self.notes {
            line(&mut s, "note", note.clone());
        }
        if let Some(f) = &self.failure {
            line(&mut s, "FAILED", f.clone());
        }
        if self.verification_failed() {
            line(
                &mut s,
                "VERIFICATION",
                "FAILED (wrong bytes echoed or money not conserved)".into(),
            );
        }
        s
    }
}

/// `1234567.8` as `1 234 568`.
fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Fault;

    #[test]
    fn json_is_one_flat_line() {
        let mut r = Report {
            mode: "rr",
            threads: 2,
            msgs: Some(10),
            msgs_per_sec: Some(12.34567),
            notes: vec!["a \"quoted\" note".into()],
            ..Report::default()
        };
        r.errors.count(Fault::Reset);
        let j = r.to_json().to_line();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"mode\":\"rr\""));
        assert!(j.contains("\"msgs_per_sec\":12.346"));
        assert!(j.contains("\"errors\":{\"reset\":1}"));
        assert!(j.contains("\"error_total\":1"));
        assert!(j.contains("a \\\"quoted\\\" note"));
        assert!(!j.contains("p50_us"));
        assert!(!j.contains("target_rate"));
        assert!(!r.to_human().contains("open loop"));
    }

    #[test]
    fn open_loop_figures_are_reported() {
        let r = Report {
            mode: "rr",
            elapsed_secs: Some(2.0),
            target_rate: Some(1000.0),
            achieved_rate: Some(998.7),
            sent: Some(1999),
            late: Some(3),
            unsent: Some(1),
            ..Report::default()
        };
        let j = r.to_json();
        assert_eq!(j.target_rate, Some(1000.0));
        assert_eq!(j.achieved_rate, Some(998.7));
        assert_eq!((j.sent, j.late, j.unsent), (Some(1999), Some(3), Some(1)));
        let human = r.to_human();
        assert!(
            human.contains("target 1 000 /s, achieved 999 /s"),
            "{human}"
        );
        assert!(human.contains("1999 sent, 3 late, 1 never sent"), "{human}");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(1234567.4), "1 234 567");
        assert_eq!(group(999.0), "999");
    }
}
