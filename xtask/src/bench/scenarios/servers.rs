//! The servers under test: duo's echo in its configurations and the peers (tokio, the raw
//! epoll server in its threading models, the UDP and TLS peers), and which scenarios each
//! runs in.

/// An echo server under test.
pub(in crate::bench) struct EchoServer {
    pub(in crate::bench) name: &'static str,
    /// Binary in `target/release`.
    pub(super) bin: &'static str,
    pub(super) args: &'static [&'static str],
    /// Whether this is duo (the others are baselines).
    pub(super) duo: bool,
    /// The scenarios it runs in (empty: all).
    pub(super) only_in: &'static [&'static str],
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

/// duo's echo on two I/O threads, the default mode (`duo-2`; `duo-tls-2` adds the
/// certificate).
const DUO_2: &[&str] = &["serve", "--listen", "127.0.0.1:0", "--io-threads", "2"];

pub(in crate::bench) const ECHO_SERVERS: &[EchoServer] = &[
    EchoServer::duo(
        "duo-0",
        &["serve", "--listen", "127.0.0.1:0", "--io-threads", "0"],
    ),
    EchoServer::duo(
        "duo-1",
        &["serve", "--listen", "127.0.0.1:0", "--io-threads", "1"],
    ),
    EchoServer::duo("duo-2", DUO_2),
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

/// The UDP echo servers (scenarios with [`Target::Udp`](super::Target::Udp)): duo's `echo --udp` with
/// `recvmmsg`/`sendmmsg` batches and with one `recvfrom` per datagram (what batching
/// saves), tokio's idiomatic UDP echo and a blocking std loop (`udp_echo_peer`). Each
/// serves UDP on one thread.
pub(in crate::bench) const UDP_SERVERS: &[EchoServer] = &[
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
pub(in crate::bench) const UDS_SCENARIOS: &[&str] = &["rr-100x64", "pingpong-100x16k"];

/// Where tokio is measured with one worker as well as two, to compare duo's tail latency
/// with it at one thread (`duo-0`) as at two (`duo-2` against `tokio`).
pub(in crate::bench) const ONE_THREAD_SCENARIOS: &[&str] = &["rr-100x64", "pingpong-100x16k"];

/// Where deferred accepting (`duo-0-defer`, `duo-2-defer`, `raw-epoll-defer`,
/// `tokio-defer`:
/// `TCP_DEFER_ACCEPT`) is measured: short-lived connections, where it saves a wake-up per
/// connection.
pub(in crate::bench) const DEFER_SCENARIOS: &[&str] = &["churn-50"];

/// Where duo with busy polling (`duo-2-busy`, `--busy-poll-us 20`) is measured beside
/// `duo-2`: the tail comparison at two threads.
pub(in crate::bench) const BUSY_POLL_SCENARIOS: &[&str] = &["rr-100x64"];

/// Where duo with a loop group (`duo-2-loops`: 16 loops on the 2 I/O threads) is measured
/// beside `duo-2`: the tail, bulk transfer, and short connections (each loop accepts on a
/// `SO_REUSEPORT` listener of its own).
pub(in crate::bench) const LOOPS_SCENARIOS: &[&str] =
    &["rr-100x64", "pingpong-100x16k", "churn-50"];

/// Where the raw epoll server runs at two threads in both threading models
/// (`raw-epoll-2`: a connection per thread; `raw-epoll-2-shared`: work sharing;
/// `raw-epoll-2-loops`: 16 reactors, each run by whichever thread is free;
/// `raw-epoll-2-flat`: 64 reactors owned by the threads, in one epoll set per thread,
/// served by the other thread when their owner stalls), and duo with
/// 64 loops on its two threads (`duo-2-loops64`).
pub(in crate::bench) const MODEL_SCENARIOS: &[&str] = &["rr-100x64"];

/// The TLS echo servers: duo's echo and the tokio-rustls peer, with the same certificate
/// (files from [`tls_files`](super::tls_files), appended by [`entrants`](super::entrants)).
pub(in crate::bench) const TLS_SERVERS: &[EchoServer] = &[
    EchoServer::duo("duo-tls-2", DUO_2),
    EchoServer::peer(
        "tokio-rustls",
        "tokio_tls_echo",
        &["--listen", "127.0.0.1:0", "--threads", "2"],
    ),
];
