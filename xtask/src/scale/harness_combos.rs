//! Unit tests (the code under test is private to the `xtask` binary): the host's limits
//! in combination with the plan `cargo xtask scale` makes from them, and the `loadgen`
//! command that carries it out.

use std::path::PathBuf;

use super::limits::{binding, Host};
use super::one_run::loadgen_command;
use super::{Bins, Plan};

/// `loadgen idle`'s `--per-source` when not given.
const LOADGEN_PER_SOURCE: u64 = 10_000;

fn host(port_range: (u64, u64)) -> Host {
    Host {
        file_max: 2_466_116,
        nr_open: 1_048_576,
        files_in_use: 400,
        port_range,
        somaxconn: 4096,
        fd_hard: 20_000,
        mem_available_kib: 24 * 1024 * 1024,
        conntrack: None,
    }
}

/// The value of `--FLAG` in the `loadgen` command of `plan`.
fn loadgen_flag(plan: &Plan, flag: &str) -> Option<String> {
    let bins = Bins {
        echo: PathBuf::from("echo"),
        loadgen: PathBuf::from("loadgen"),
    };
    let cmd = loadgen_command(&bins, plan, "127.0.0.1:7".parse().expect("an address"));
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let i = args.iter().position(|a| *a == format!("--{flag}"))?;
    args.get(i + 1).cloned()
}

/// The connections `loadgen` opens from one source address under `plan`.
fn per_source(plan: &Plan) -> u64 {
    loadgen_flag(plan, "per-source").map_or(LOADGEN_PER_SOURCE, |v| {
        v.parse().unwrap_or_else(|_| panic!("--per-source {v}"))
    })
}

#[test]
fn a_narrow_local_port_range_is_not_overrun_per_source_address() {
    // 1 000 ephemeral ports: a source address holds no more than that many connections
    // (loadgen binds each socket to its source address, port 0, before connecting).
    let h = host((50_000, 50_999));
    let plan = Plan::new(100_000, 2.0, (None, None), &h);
    let ports = h.port_range.1 - h.port_range.0 + 1;
    assert!(
        per_source(&plan) <= ports,
        "{} connections per source address with {ports} local ports",
        per_source(&plan)
    );
    // No limit said the run was infeasible: it is not, with more source addresses.
    let limits = h.limits(Some(plan.server_procs));
    assert!(binding(&limits).is_some_and(|l| l.allows >= Some(plan.conns)));
}

#[test]
fn the_usual_range_keeps_loadgens_default() {
    let h = host((32_768, 60_999));
    let plan = Plan::new(100_000, 2.0, (None, None), &h);
    assert_eq!(per_source(&plan), LOADGEN_PER_SOURCE);
    assert_eq!(loadgen_flag(&plan, "conns").as_deref(), Some("100000"));
    assert_eq!(
        (plan.server_procs, plan.loadgen_procs),
        (7, 6),
        "the default processes follow the open-file limit"
    );
}
