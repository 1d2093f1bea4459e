//! What `cargo xtask bench` runs: the micro-benchmarks, the servers under test and the
//! load scenarios.

use std::path::{Path, PathBuf};

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

/// An echo server under test.
pub(super) struct EchoServer {
    pub(super) name: &'static str,
    /// Binary in `target/release`.
    bin: &'static str,
    args: &'static [&'static str],
    /// Whether this is duo (the others are baselines).
    duo: bool,
    /// The scenarios it runs in (empty: all).
    only_in: &'static [&'static str],
}

impl EchoServer {
    /// duo's `echo serve` with the given arguments.
    const fn duo(name: &'static str, args: &'static [&'static str]) -> EchoServer {
        EchoServer {
            name,
            bin: "echo",
            args,
            duo: true,
            only_in: &[],
        }
    }

    /// duo's `echo serve` with the given arguments, in the named scenarios only (the
    /// accept modes other than the default: they differ where connections come and go,
    /// or where many are spread over the loops).
    const fn duo_in(
        name: &'static str,
        args: &'static [&'static str],
        only_in: &'static [&'static str],
    ) -> EchoServer {
        EchoServer {
            name,
            bin: "echo",
            args,
            duo: true,
            only_in,
        }
    }

    /// A peer baseline.
    const fn peer(
        name: &'static str,
        bin: &'static str,
        args: &'static [&'static str],
    ) -> EchoServer {
        EchoServer {
            name,
            bin,
            args,
            duo: false,
            only_in: &[],
        }
    }

    /// A peer baseline, in the named scenarios only.
    const fn peer_in(
        name: &'static str,
        bin: &'static str,
        args: &'static [&'static str],
        only_in: &'static [&'static str],
    ) -> EchoServer {
        EchoServer {
            name,
            bin,
            args,
            duo: false,
            only_in,
        }
    }
}

pub(super) const ECHO_SERVERS: &[EchoServer] = &[
    EchoServer::duo(
        "duo-0",
        &["serve", "--listen", "127.0.0.1:0", "--io-threads", "0"],
    ),
    EchoServer::duo(
        "duo-1",
        &["serve", "--listen", "127.0.0.1:0", "--io-threads", "1"],
    ),
    EchoServer::duo(
        "duo-2",
        &["serve", "--listen", "127.0.0.1:0", "--io-threads", "2"],
    ),
    EchoServer::duo_in(
        "duo-2-main",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "2",
            "--accept",
            "main",
        ],
        ACCEPT_MODE_SCENARIOS,
    ),
    EchoServer::duo_in(
        "duo-2-reuseport",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "2",
            "--accept",
            "reuseport",
        ],
        ACCEPT_MODE_SCENARIOS,
    ),
    // Deferred accepting (opt-in, `--defer-accept`): the kernel hands a connection over
    // with its first bytes, in one wake-up instead of two (`raw-epoll-defer` is the same
    // socket option on the raw server, the like-for-like baseline).
    EchoServer::duo_in(
        "duo-0-defer",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "0",
            "--defer-accept",
            "5",
        ],
        DEFER_SCENARIOS,
    ),
    EchoServer::duo_in(
        "duo-2-defer",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "2",
            "--defer-accept",
            "5",
        ],
        DEFER_SCENARIOS,
    ),
    // Busy polling (opt-in, `--busy-poll-us`): the two-thread tail with loops that stay
    // awake 20 µs after finding work instead of sleeping at once.
    EchoServer::duo_in(
        "duo-2-busy",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "2",
            "--busy-poll-us",
            "20",
        ],
        BUSY_POLL_SCENARIOS,
    ),
    // A loop group (`ServerBuilder::loops`): the two I/O threads run 16 loops, each owned
    // by one thread and run by the other when its owner makes no progress; and 64 loops,
    // any free thread running any ready loop's turn (`--loop-sharing any`): the two-thread
    // tail without a lock per connection.
    EchoServer::duo_in(
        "duo-2-loops",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "2",
            "--loops",
            "16",
        ],
        LOOPS_SCENARIOS,
    ),
    EchoServer::duo_in(
        "duo-2-loops64",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "2",
            "--loops",
            "64",
            "--loop-sharing",
            "any",
        ],
        MODEL_SCENARIOS,
    ),
    // Unix-domain sockets: the same binary and threads as `duo-2`, over an abstract name
    // (`{pid}`: the harness's process id, so that two harnesses never collide).
    EchoServer::duo_in(
        "duo-2-uds",
        &[
            "serve",
            "--listen",
            "unix:@duo-bench-echo-{pid}",
            "--io-threads",
            "2",
        ],
        UDS_SCENARIOS,
    ),
    EchoServer::peer_in(
        "tokio-uds",
        "tokio_echo",
        &["--listen", "unix:@duo-bench-tokio-{pid}", "--threads", "2"],
        UDS_SCENARIOS,
    ),
    EchoServer::peer("raw-epoll", "raw_epoll_echo", &["--listen", "127.0.0.1:0"]),
    EchoServer::peer_in(
        "raw-epoll-defer",
        "raw_epoll_echo",
        &["--listen", "127.0.0.1:0", "--defer-accept", "5"],
        DEFER_SCENARIOS,
    ),
    // Four threading models at two threads, without duo's code in the way: a connection
    // per thread (duo's and muduo's model), work sharing over one epoll set (tokio's), a
    // connection per reactor with reactors shared by the threads, and reactors owned by
    // the threads but helped, in one flat epoll set per thread: the tail comparison's
    // control experiment.
    EchoServer::peer_in(
        "raw-epoll-2",
        "raw_epoll_echo",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--spread",
            "reuseport",
        ],
        MODEL_SCENARIOS,
    ),
    EchoServer::peer_in(
        "raw-epoll-2-shared",
        "raw_epoll_echo",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--spread",
            "shared",
        ],
        MODEL_SCENARIOS,
    ),
    EchoServer::peer_in(
        "raw-epoll-2-loops",
        "raw_epoll_echo",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--spread",
            "loops",
            "--loops",
            "16",
        ],
        MODEL_SCENARIOS,
    ),
    EchoServer::peer_in(
        "raw-epoll-2-flat",
        "raw_epoll_echo",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--spread",
            "flat",
            "--loops",
            "64",
        ],
        MODEL_SCENARIOS,
    ),
    EchoServer::peer_in(
        "tokio-1",
        "tokio_echo",
        &["--listen", "127.0.0.1:0", "--threads", "1"],
        ONE_THREAD_SCENARIOS,
    ),
    EchoServer::peer(
        "tokio",
        "tokio_echo",
        &["--listen", "127.0.0.1:0", "--threads", "2"],
    ),
    EchoServer::peer_in(
        "tokio-defer",
        "tokio_echo",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--defer-accept",
            "5",
        ],
        DEFER_SCENARIOS,
    ),
];

/// The UDP echo servers (scenarios with [`Target::Udp`]): duo's `echo --udp` with
/// `recvmmsg`/`sendmmsg` batches and with one `recvfrom` per datagram (what batching
/// saves), tokio's idiomatic UDP echo and a blocking std loop (`udp_echo_peer`). Each
/// serves UDP on one thread.
pub(super) const UDP_SERVERS: &[EchoServer] = &[
    EchoServer::duo(
        "duo-udp",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "0",
            "--udp",
        ],
    ),
    EchoServer::duo(
        "duo-udp-unbatched",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--io-threads",
            "0",
            "--udp",
            "--udp-batch",
            "1",
        ],
    ),
    EchoServer::peer("tokio-udp", "udp_echo_peer", &["--runtime", "tokio"]),
    EchoServer::peer("std-udp", "udp_echo_peer", &["--runtime", "blocking"]),
];

/// Where the accept modes other than the default (`duo-2` accepts on every I/O loop with
/// `EPOLLEXCLUSIVE`) are measured too.
const ACCEPT_MODE_SCENARIOS: &[&str] = &["churn-50", "pingpong-1000x64"];

/// Where duo over a Unix-domain socket (`duo-2-uds`) is measured beside `duo-2` on TCP
/// loopback (the ratio UDS / TCP of CPU per message, in the same run) and beside tokio on
/// the same transport (`tokio-uds`, 2 workers).
pub(super) const UDS_SCENARIOS: &[&str] = &["rr-100x64", "pingpong-100x16k"];

/// Where tokio is measured with one worker as well as two, to compare duo's tail latency
/// with it at one thread (`duo-0`) as at two (`duo-2` against `tokio`).
pub(super) const ONE_THREAD_SCENARIOS: &[&str] = &["rr-100x64", "pingpong-100x16k"];

/// Where deferred accepting (`duo-0-defer`, `duo-2-defer`, `raw-epoll-defer`,
/// `tokio-defer`:
/// `TCP_DEFER_ACCEPT`) is measured: short-lived connections, where it saves a wake-up per
/// connection.
pub(super) const DEFER_SCENARIOS: &[&str] = &["churn-50"];

/// Where duo with busy polling (`duo-2-busy`, `--busy-poll-us 20`) is measured beside
/// `duo-2`: the tail comparison at two threads.
pub(super) const BUSY_POLL_SCENARIOS: &[&str] = &["rr-100x64"];

/// Where duo with a loop group (`duo-2-loops`: 16 loops on the 2 I/O threads) is measured
/// beside `duo-2`: the tail, bulk transfer, and short connections (each loop accepts on a
/// `SO_REUSEPORT` listener of its own).
pub(super) const LOOPS_SCENARIOS: &[&str] = &["rr-100x64", "pingpong-100x16k", "churn-50"];

/// Where the raw epoll server runs at two threads in both threading models
/// (`raw-epoll-2`: a connection per thread; `raw-epoll-2-shared`: work sharing;
/// `raw-epoll-2-loops`: 16 reactors, each run by whichever thread is free;
/// `raw-epoll-2-flat`: 64 reactors owned by the threads, in one epoll set per thread,
/// served by the other thread when their owner stalls), and duo with
/// 64 loops on its two threads (`duo-2-loops64`).
pub(super) const MODEL_SCENARIOS: &[&str] = &["rr-100x64"];

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

/// The TLS echo servers: duo's echo and the tokio-rustls peer, with the same certificate
/// (files from [`tls_files`], appended by [`entrants`]).
pub(super) const TLS_SERVERS: &[EchoServer] = &[
    EchoServer::duo(
        "duo-tls-2",
        &["serve", "--listen", "127.0.0.1:0", "--io-threads", "2"],
    ),
    EchoServer::peer(
        "tokio-rustls",
        "tokio_tls_echo",
        &["--listen", "127.0.0.1:0", "--threads", "2"],
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
