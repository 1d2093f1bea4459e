//! The report `loadgen --json` prints: one JSON object on one line. `loadgen` writes it
//! and `cargo xtask bench` and `soak` read it back, both through [`LoadgenJson`], so the
//! field names are written down once.
//!
//! Fields that do not apply to a mode are left out (`None`); `errors` is an object of
//! counts by kind, empty when nothing failed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `loadgen` run's figures, as printed with `--json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadgenJson {
    /// `pingpong`, `rr`, `idle`, `churn` or `bank`.
    pub mode: String,
    /// The server's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Worker threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
    /// Connections (or churn workers, or bank clients) used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conns: Option<u64>,
    /// Connections asked for, when the open-file limit forced fewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_conns: Option<u64>,
    /// Message size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The measured phase's length as asked (`--secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
    /// The measured phase's length as it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_secs: Option<f64>,
    /// Completed units of work (echoed messages, requests, connect cycles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs: Option<u64>,
    /// Payload bytes echoed back (each was also sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `msgs` per second of `elapsed_secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<f64>,
    /// `bytes` per second, in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_sec: Option<f64>,
    /// The server's CPU time (user + system) during the measured phase, with
    /// `--server-pid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
    /// Latency samples taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_samples: Option<u64>,
    /// Mean latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_us: Option<f64>,
    /// Median latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    /// 99th percentile of latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    /// 99.9th percentile of latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<f64>,
    /// Largest latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_us: Option<f64>,
    /// `rr --rate` (open loop): the requests per second asked for, in all. The latency
    /// figures then count from each request's intended send time (corrected for
    /// coordinated omission); without `--rate` this and the four fields below are absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// `rr --rate`: requests sent per second of `elapsed_secs` (the offered load achieved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achieved_rate: Option<f64>,
    /// `rr --rate`: requests sent in the measured phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// `rr --rate`: of `sent`, those sent more than one interval (`conns / target_rate`
    /// seconds) after their intended send time: the schedule was not kept. Above 1 % of
    /// `sent`, `loadgen` says so on stderr and in `notes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<u64>,
    /// `rr --rate`: requests whose intended send time fell in the measured phase but were
    /// never sent (their connection still awaited an earlier reply at the end, or was not
    /// open: never opened, lost, or reopening).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsent: Option<u64>,
    /// Failures by kind (`refused`, `reset`, `timeout`, `mismatch`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The sum of `errors`.
    pub error_total: u64,
    /// Connections established (idle: confirmed with an echo; bank: clients logged in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<u64>,
    /// Seconds the idle connections took to open and confirm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_secs: Option<f64>,
    /// Seconds the idle connections were held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    /// Server RSS before connecting, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    /// Server RSS while holding the connections, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_hold_kib: Option<u64>,
    /// `(rss_hold - rss_before) / established`, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_bytes: Option<f64>,
    /// `idle`: connections that echoed a second probe at the end of the hold (every
    /// connection still works after being held).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_end: Option<u64>,
    /// `idle`: seconds the verification at the end of the hold took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_secs: Option<f64>,
    /// `idle`: connections established and confirmed per second of the connect phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_per_sec: Option<f64>,
    /// `idle --procs P`: the load generator processes the connections were spread over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procs: Option<u64>,
    /// `idle --procs P`: the summed VmRSS of the load generator's processes while holding,
    /// KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_rss_kib: Option<u64>,
    /// `--reconnect`: connections the server closed in an orderly way (end of stream), each
    /// replaced by a new one; not errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_closed: Option<u64>,
    /// `--reconnect`: requests that were outstanding on those connections when the end of
    /// stream came (sent, never answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanswered_on_close: Option<u64>,
    /// Bank accounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<u64>,
    /// Successful transfers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers: Option<u64>,
    /// Successful transfers per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers_per_sec: Option<f64>,
    /// Transfers refused with `INSUFFICIENT_FUNDS` (normal, not an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insufficient: Option<u64>,
    /// Sum of the balances after the deposits, cents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_deposited: Option<i64>,
    /// Sum of the balances read at the end, cents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_final: Option<i64>,
    /// Whether the final sum equals the deposited sum (and every account was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ok: Option<bool>,
    /// Soft open-file limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_limit: Option<u64>,
    /// Wrong bytes echoed or money not conserved (`cargo xtask` also sets it when
    /// `loadgen` exited non-zero).
    pub verification_failed: bool,
    /// Why the run could not do its job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Remarks for the reader (limits hit, phases cut short).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl LoadgenJson {
    /// The report as one line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a LoadgenJson always serializes")
    }

    /// The last line of `stdout` that is a `loadgen` report, if any.
    pub fn find_in(stdout: &str) -> Option<LoadgenJson> {
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
    }

    /// Completed units of work: transfers for the bank, `msgs` for the other modes.
    pub fn work(&self) -> Option<u64> {
        self.transfers.or(self.msgs)
    }

    /// Units of work per second: transfers for the bank, `msgs` for the other modes.
    pub fn rate(&self) -> Option<f64> {
        self.transfers_per_sec.or(self.msgs_per_sec)
    }
}

/// `v` rounded to three decimals (plenty for rates, seconds and microseconds).
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_leaves_out_what_does_not_apply() {
        let r = LoadgenJson {
            mode: "rr".into(),
            threads: Some(2),
            msgs: Some(10),
            msgs_per_sec: Some(12.346),
            errors: BTreeMap::from([("reset".to_owned(), 1)]),
            error_total: 1,
            notes: vec!["a \"quoted\" note".into()],
            ..LoadgenJson::default()
        };
        let line = r.to_line();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("{\"mode\":\"rr\""), "{line}");
        assert!(line.contains("\"errors\":{\"reset\":1}"));
        assert!(line.contains("a \\\"quoted\\\" note"));
        assert!(!line.contains("p50_us"));
        let back = LoadgenJson::find_in(&format!("noise\n{line}\n")).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.work(), Some(10));
    }

    #[test]
    fn parses_the_reconnect_and_multi_process_fields() {
        let line = r#"{"mode":"rr","errors":{},"error_total":0,"verification_failed":false,"server_closed":7,"unanswered_on_close":3,"procs":4,"verified_end":398,"verify_secs":0.25,"setup_per_sec":1234.5,"loadgen_rss_kib":8192}"#;
        let r = LoadgenJson::find_in(line).unwrap();
        assert_eq!(r.server_closed, Some(7));
        assert_eq!(r.unanswered_on_close, Some(3));
        assert_eq!(r.procs, Some(4));
        assert_eq!(r.verified_end, Some(398));
        assert_eq!(r.verify_secs, Some(0.25));
        assert_eq!(r.setup_per_sec, Some(1234.5));
        assert_eq!(r.loadgen_rss_kib, Some(8192));
        // Absent without --reconnect, and not printed then.
        let plain = LoadgenJson {
            mode: "rr".into(),
            ..LoadgenJson::default()
        };
        assert_eq!(plain.server_closed, None);
        assert!(!plain.to_line().contains("server_closed"));
        assert_eq!(LoadgenJson::find_in(&plain.to_line()).unwrap(), plain);
    }

    #[test]
    fn parses_the_open_loop_fields() {
        let line = r#"{"mode":"rr","errors":{},"error_total":0,"verification_failed":false,"target_rate":1000.0,"achieved_rate":998.5,"sent":1997,"late":4,"unsent":2}"#;
        let r = LoadgenJson::find_in(line).unwrap();
        assert_eq!(r.target_rate, Some(1000.0));
        assert_eq!(r.achieved_rate, Some(998.5));
        assert_eq!((r.sent, r.late, r.unsent), (Some(1997), Some(4), Some(2)));
        assert_eq!(LoadgenJson::find_in(&r.to_line()).unwrap(), r);
        // Absent (closed loop), not printed.
        let plain = LoadgenJson::default().to_line();
        assert!(!plain.contains("target_rate") && !plain.contains("\"late\""));
    }

    #[test]
    fn a_not_finite_figure_is_null() {
        let r = LoadgenJson {
            mib_per_sec: Some(f64::NAN),
            ..LoadgenJson::default()
        };
        assert!(r.to_line().contains("\"mib_per_sec\":null"));
        assert_eq!(round3(1.23456), 1.235);
    }
}
