//! What `cargo xtask bench` runs: the micro-benchmarks, the load scenarios and, per
//! scenario, the servers under test (listed in [`servers`]).

use std::path::{Path, PathBuf};

mod servers;

pub(super) use servers::{ECHO_SERVERS, TLS_SERVERS, UDP_SERVERS, UDS_SCENARIOS};

/// A criterion benchmark of `duo-benches` (`benches/benches/NAME.rs`).
pub(super) struct Micro {
    /// The bench target, also the name `--only` matches.
    pub(super) name: &'static str,
    /// The criterion groups it measures (directories under `target/criterion`).
    pub(super) groups: &'static [&'static str],
    pub(super) about: &'static str,
}

pub(super) const MICRO: &[Micro] = &[
    Micro {
        name: "bufpool",
        groups: &["bufpool"],
        about: "BufPool allocate+free against the system allocator, 1 and 2 threads",
    },
    Micro {
        name: "reactor",
        groups: &["reactor-wakeup", "reactor-timers", "reactor-queue"],
        about: "cross-thread wake-up latency, timer schedule/cancel/fire, queue_in_loop throughput",
    },
    Micro {
        name: "udp",
        groups: &["udp-send", "udp-recv"],
        about: "sendto against sendmmsg of 1 and 32, recvfrom against recvmmsg of 32 (64 B)",
    },
];

/// The scenario of the tail-latency comparison.
pub(super) const TAIL_SCENARIO: &str = "rr-100x64";

/// What a scenario runs against.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Target {
    Echo,
    /// The UDP echo servers ([`UDP_SERVERS`]).
    Udp,
    /// The echo servers over TLS ([`TLS_SERVERS`]); loadgen speaks TLS (`--tls-ca`).
    EchoTls,
    /// The bank server on SQLite; `true` = group commit.
    Bank(bool),
    /// The bank server on PostgreSQL (the harness's cluster, a fresh database per run).
    BankPg {
        /// Group commit (else `--no-group-commit`).
        group: bool,
        /// Front-end processes (`--processes`, when more than 1).
        processes: u32,
        /// Early lock release (else `--no-early-release`: every commit holds its locks
        /// until it is on disk). Without group commit the bank ignores it.
        early_release: bool,
    },
    /// PostgreSQL's own `pgbench` (TPC-B-like) on the same cluster: the baseline.
    PgBench,
}

impl Target {
    /// Whether it runs on the harness's PostgreSQL cluster.
    pub(super) fn on_postgres(self) -> bool {
        matches!(self, Target::BankPg { .. } | Target::PgBench)
    }
}

/// One load scenario: a `loadgen` mode and its options, against a kind of server.
pub(super) struct Scenario {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    pub(super) target: Target,
    /// `loadgen` mode.
    pub(super) mode: &'static str,
    /// `loadgen` arguments after the mode, without `--addr`, `--secs`, `--json`.
    pub(super) args: &'static [&'static str],
    /// Connections the load generator opens (for the descriptor check).
    pub(super) conns: u64,
}

impl Scenario {
    const fn new(
        name: &'static str,
        about: &'static str,
        target: Target,
        mode: &'static str,
        args: &'static [&'static str],
        conns: u64,
    ) -> Scenario {
        Scenario {
            name,
            about,
            target,
            mode,
            args,
            conns,
        }
    }
}

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario::new(
        "pingpong-1x16k",
        "pingpong, 1 connection x 16 KiB",
        Target::Echo,
        "pingpong",
        &["--conns", "1", "--size", "16384", "--threads", "1"],
        1,
    ),
    Scenario::new(
        "pingpong-100x16k",
        "pingpong, 100 connections x 16 KiB",
        Target::Echo,
        "pingpong",
        &["--conns", "100", "--size", "16384", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "pingpong-1000x64",
        "pingpong, 1 000 connections x 64 B",
        Target::Echo,
        "pingpong",
        &["--conns", "1000", "--size", "64", "--threads", "2"],
        1000,
    ),
    Scenario::new(
        "rr-100x64",
        "request/response latency, 100 connections x 64 B",
        Target::Echo,
        "rr",
        &["--conns", "100", "--size", "64", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "idle-10k",
        "10 000 idle connections: server RSS per connection",
        Target::Echo,
        "idle",
        &["--conns", "10000", "--threads", "2"],
        10_000,
    ),
    Scenario::new(
        "churn-50",
        "connect, 64 B round trip, close; 50 concurrent",
        Target::Echo,
        "churn",
        &["--conns", "50", "--threads", "2"],
        50,
    ),
    Scenario::new(
        "tls-pingpong-100x16k",
        "TLS pingpong, 100 connections x 16 KiB",
        Target::EchoTls,
        "pingpong",
        &["--conns", "100", "--size", "16384", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "tls-rr-100x64",
        "TLS request/response, 100 connections x 64 B",
        Target::EchoTls,
        "rr",
        &["--conns", "100", "--size", "64", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "tls-idle-2k",
        "2 000 idle TLS connections (handshake and one echo each): server RSS per connection",
        Target::EchoTls,
        "idle",
        &["--conns", "2000", "--threads", "2"],
        2000,
    ),
    Scenario::new(
        "tls-handshakes-50",
        "TLS connect, handshake, 64 B round trip, close; 50 concurrent (CPU per handshake)",
        Target::EchoTls,
        "churn",
        &["--conns", "50", "--threads", "2"],
        50,
    ),
    Scenario::new(
        "bank-group",
        "bank, 100 clients doing transfers, group commit",
        Target::Bank(true),
        "bank",
        &["--clients", "100", "--accounts", "50", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "bank-single",
        "bank, 100 clients doing transfers, one commit per transfer",
        Target::Bank(false),
        "bank",
        &["--clients", "100", "--accounts", "50", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "bank-pg-group",
        "bank on PostgreSQL, 100 clients doing transfers, group commit",
        Target::BankPg {
            group: true,
            processes: 1,
            early_release: true,
        },
        "bank",
        &["--clients", "100", "--accounts", "50", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "bank-pg-group-2",
        "bank on PostgreSQL, 2 front-end processes, 100 clients, group commit",
        Target::BankPg {
            group: true,
            processes: 2,
            early_release: true,
        },
        "bank",
        &["--clients", "100", "--accounts", "50", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "bank-pg-group-locked",
        "bank on PostgreSQL, 100 clients, group commit holding locks through the flush \
         (--no-early-release)",
        Target::BankPg {
            group: true,
            processes: 1,
            early_release: false,
        },
        "bank",
        &["--clients", "100", "--accounts", "50", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "bank-pg-single",
        "bank on PostgreSQL, 100 clients doing transfers, one transaction per transfer",
        Target::BankPg {
            group: false,
            processes: 1,
            early_release: true,
        },
        "bank",
        &["--clients", "100", "--accounts", "50", "--threads", "2"],
        100,
    ),
    Scenario::new(
        "udp-rr-100x64",
        "UDP request/response, 100 sockets x 64 B datagrams",
        Target::Udp,
        "rr",
        &["--udp", "--conns", "100", "--size", "64", "--threads", "2"],
        100,
    ),
    // Runs whenever a PostgreSQL bank scenario does (see `bench`).
    Scenario::new(
        "bank-pg-pgbench",
        "PostgreSQL's pgbench (TPC-B-like), 100 clients, same cluster: the baseline",
        Target::PgBench,
        "pgbench",
        &[],
        100,
    ),
];

/// The TLS scenarios' certificate chain, key and CA (PEM), made once per run directory
/// with rcgen under `target/bench/tls`: (cert, key, ca).
pub(super) fn tls_files() -> (PathBuf, PathBuf, PathBuf) {
    let dir = crate::target_dir().join("bench").join("tls");
    let files = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    if files.0.exists() && files.1.exists() && files.2.exists() {
        return files;
    }
    let made = (|| -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "duo bench CA");
        let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .and_then(|p| p.signed_by(&key, &ca, &ca_key))
            .map_err(|e| e.to_string())?;
        let write = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| e.to_string());
        write(&files.0, leaf.pem())?;
        write(&files.1, key.serialize_pem())?;
        write(&files.2, ca.pem())
    })();
    if let Err(e) = made {
        // The runs then fail with the server's own message about the missing file.
        eprintln!("bench: cannot make the TLS test certificate: {e}");
    }
    files
}

/// A server a scenario runs against: its name, whether it is duo, binary and arguments.
pub(super) struct Entrant {
    pub(super) name: &'static str,
    pub(super) duo: bool,
    pub(super) exe: PathBuf,
    pub(super) args: Vec<String>,
}

/// The servers of `sc`, binaries in `release`; for the bank on SQLite, its database lives
/// in `db_dir` (on PostgreSQL the runner adds `--db URL`).
pub(super) fn entrants(sc: &Scenario, release: &Path, db_dir: &Path) -> Vec<Entrant> {
    match sc.target {
        Target::Echo | Target::Udp => match sc.target {
            Target::Udp => UDP_SERVERS,
            _ => ECHO_SERVERS,
        }
        .iter()
        .filter(|srv| srv.only_in.is_empty() || srv.only_in.contains(&sc.name))
        .map(|srv| Entrant {
            name: srv.name,
            duo: srv.duo,
            exe: release.join(srv.bin),
            args: srv
                .args
                .iter()
                .map(|a| a.replace("{pid}", &std::process::id().to_string()))
                .collect(),
        })
        .collect(),
        Target::EchoTls => {
            let (cert, key, _) = tls_files();
            TLS_SERVERS
                .iter()
                .map(|srv| Entrant {
                    name: srv.name,
                    duo: srv.duo,
                    exe: release.join(srv.bin),
                    args: srv
                        .args
                        .iter()
                        .map(|a| a.to_string())
                        .chain([
                            "--tls-cert".into(),
                            cert.display().to_string(),
                            "--tls-key".into(),
                            key.display().to_string(),
                        ])
                        .collect(),
                })
                .collect()
        }
        Target::Bank(group) => {
            let db = db_dir.join("bank.db").display().to_string();
            let mut args = bank_args();
            args.extend(["--db".into(), db]);
            if !group {
                args.push("--no-group-commit".into());
            }
            vec![Entrant {
                name: "duo-bank",
                duo: true,
                exe: release.join("bank"),
                args,
            }]
        }
        Target::BankPg {
            group,
            processes,
            early_release,
        } => {
            let mut args = bank_args();
            if !group {
                args.push("--no-group-commit".into());
            }
            if !early_release {
                args.push("--no-early-release".into());
            }
            if processes > 1 {
                args.extend(["--processes".into(), processes.to_string()]);
            }
            vec![Entrant {
                name: "duo-bank",
                duo: true,
                exe: release.join("bank"),
                args,
            }]
        }
        Target::PgBench => vec![Entrant {
            name: "pgbench",
            duo: false,
            exe: PathBuf::from("pgbench"),
            args: Vec::new(),
        }],
    }
}

/// `bank serve`'s arguments in every bank scenario, without `--db`.
fn bank_args() -> Vec<String> {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "1",
        "--workers",
        "2",
        // Password hashing runs only while loadgen logs its clients in, before the
        // measured phase: a cheap cost keeps that set-up short and changes nothing that
        // is measured.
        "--hash-cost",
        "low",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}
