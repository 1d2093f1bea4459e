//! `echo serve --processes N --metrics ADDR`: one endpoint, served by the supervisor, that
//! gathers every worker's figures at each request, through reloads and crashes. Every
//! child is killed by PID (dropping a [`Server`]), every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use common::Server;
use duo_testkit::{children, http_get, is_running, run_within, wait_until, LIMIT};

const ECHO: &str = env!("CARGO_BIN_EXE_echo");

/// The value of every sample of `name` whose labels include all of `with`, by the value
/// of label `key`.
fn by_label(text: &str, name: &str, with: &[(&str, &str)], key: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if with.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            if let (Some(k), Ok(v)) = (labels.get(key), value.trim().parse::<f64>()) {
                *found.entry((*k).to_owned()).or_default() += v;
            }
        }
    }
    found
}

/// The structure Prometheus needs: every family's `# TYPE` once, its samples together,
/// one `# EOF` at the end.
fn assert_well_formed(text: &str) {
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split(' ').next().unwrap();
            assert!(seen.insert(family.to_owned()), "{family} twice:\n{text}");
        }
    }
}

fn pids(set: &BTreeSet<u32>) -> BTreeSet<String> {
    set.iter().map(u32::to_string).collect()
}

/// The workers' PIDs the `/metrics` page shows with `duo_aggregate_up 1`, by generation.
fn up_workers(metrics: SocketAddr) -> BTreeMap<String, String> {
    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_well_formed(&text);
    by_label(&text, "duo_aggregate_up", &[], "pid")
        .into_iter()
        .filter(|(_, up)| *up == 1.0)
        .map(|(pid, _)| {
            let generation = by_label(&text, "duo_aggregate_up", &[("pid", &pid)], "generation");
            (pid, generation.into_keys().next().unwrap_or_default())
        })
        .collect()
}

#[test]
fn one_address_gathers_every_worker_through_a_reload_and_a_crash() {
    let mut server = Server::start(&[
        "serve",
        "--processes",
        "2",
        "--io-threads",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics_addr(LIMIT);
    let sup = server.pid();
    wait_until("two workers", || children(sup).len() == 2);
    let first = children(sup);
    wait_until("both workers on the page", || {
        up_workers(metrics).keys().cloned().collect::<BTreeSet<_>>() == pids(&first)
    });

    // 6 connections of 1 000 bytes each, spread over the workers as the kernel likes.
    for i in 0..6u8 {
        let mut s = server.connect();
        s.write_all(&[i; 1000]).unwrap();
        let mut back = [0u8; 1000];
        s.read_exact(&mut back).unwrap();
    }
    let (_, text) = http_get(metrics, "/metrics");
    let bytes_in = by_label(
        &text,
        "duo_server_bytes_in_total",
        &[
            ("process", "worker"),
            ("generation", "1"),
            ("server", "echo"),
        ],
        "pid",
    );
    assert_eq!(
        bytes_in.keys().cloned().collect::<BTreeSet<_>>(),
        pids(&first),
        "{text}"
    );
    assert_eq!(bytes_in.values().sum::<f64>(), 6000.0, "{text}");
    // The supervisor's own loops are there too, under its PID.
    let sup_pid = sup.to_string();
    let own = by_label(
        &text,
        "duo_loop_iterations_total",
        &[("process", "supervisor"), ("pid", &sup_pid)],
        "loop",
    );
    assert!(!own.is_empty(), "{text}");
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".to_owned()));
    let (status, loops) = http_get(metrics, "/debug/loops");
    assert_eq!(status, 200);
    let loops: serde_json::Value = serde_json::from_str(&loops).unwrap();
    let targets = loops["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{loops}");
    assert!(targets.iter().all(|t| t["loops"].is_array()), "{loops}");
    assert_eq!(loops["self"]["labels"]["process"], "supervisor");

    // A reload: generation 2 replaces both, and the page follows.
    let done = run_within(
        Command::new(ECHO).args(["reload", "--pid", &sup.to_string()]),
        LIMIT,
    )
    .unwrap();
    assert!(done.status.success(), "{done:?}");
    server.wait_for_stderr("generation 2 is serving", LIMIT);
    wait_until("the old workers exit", || {
        first.iter().all(|p| !is_running(*p))
    });
    wait_until("two new workers", || {
        let now = children(sup);
        now.len() == 2 && now.is_disjoint(&first)
    });
    let second = children(sup);
    wait_until("generation 2 on the page", || {
        let up = up_workers(metrics);
        up.keys().cloned().collect::<BTreeSet<_>>() == pids(&second)
            && up.values().all(|g| g == "2")
    });

    // A worker killed: the page keeps answering, then shows its replacement.
    let victim = *second.iter().next().unwrap();
    duo_testkit::send_signal(victim, "KILL").unwrap();
    wait_until("a replacement", || {
        let now = children(sup);
        now.len() == 2 && !now.contains(&victim)
    });
    let third = children(sup);
    wait_until("the replacement on the page", || {
        up_workers(metrics).keys().cloned().collect::<BTreeSet<_>>() == pids(&third)
    });
    wait_until("healthy again", || http_get(metrics, "/healthz").0 == 200);

    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_metrics_address_in_use_fails_the_start_with_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let done = run_within(
        Command::new(ECHO).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--processes",
            "2",
            "--metrics",
            &addr,
        ]),
        LIMIT,
    )
    .unwrap();
    let err = &done.stderr;
    assert_eq!(done.status.code(), Some(1), "{err}");
    assert!(err.contains("metrics endpoint on"), "{err}");
}

/// What an upgraded image finds when its metrics address was taken during the `exec`
/// (the variable the previous image leaves, and the address in use): it must go on
/// supervising without the endpoint, not end the service for it.
#[test]
fn an_upgraded_image_that_cannot_reopen_its_metrics_address_goes_on_serving() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = Command::new(ECHO);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--processes", "1"])
        .args(["--io-threads", "1", "--metrics", &addr])
        .env("DUO_SUPERVISOR_METRICS_ADDR", &addr)
        .env("RUST_LOG", "info");
    let mut server = duo_testkit::ChildServer::start(cmd);
    server.wait_for_stderr("supervising without it", LIMIT);
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    drop(s);
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status:?}");
}
