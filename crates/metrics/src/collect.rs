//! [`DuoCollector`]: every loop of the process, the servers and UDP sockets it was given,
//! and the buffer pool, encoded at each scrape from the snapshots duo keeps anyway (nothing is counted
//! twice, nothing is locked on the hot path).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use duo_buffer::BufPool;
use duo_net::{CloseCounts, ServerHandle, UdpSocket};
use duo_reactor::health::{EVENT_BUCKET_BOUNDS, LATENCY_BUCKET_BOUNDS};
use duo_reactor::{LatencyHistogram, LoopHandle, LoopMetrics};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use crate::udp::{encode_udp, ExportedUdp};

/// A family written from a snapshot of type `T`: name, help, and how to read its value.
pub(crate) type Field<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// A phase of a loop's time: its label and where the snapshot keeps it.
type Phase = (&'static str, fn(&LoopMetrics) -> Duration);

/// A label value written with the exposition format's escapes (`\\`, `\"`, `\n`):
/// server and loop names are the user's, and `prometheus_client` writes values as they
/// are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl EncodeLabelValue for Esc<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

/// A label value for the application's own metrics ([`MetricsEndpoint::registry_mut`])
/// that is written with the exposition format's escapes (`\\`, `\"`, `\n`).
///
/// `prometheus_client` writes a `String` or `&str` label value as it is, so a value that
/// holds a quote, a backslash or a newline (a name a user chose, a path a peer sent)
/// breaks the whole scrape: Prometheus refuses every sample of it. Use this type for any
/// value you do not control.
///
/// ```
/// use duo_metrics::{EscapedLabel, MetricsEndpoint};
/// use prometheus_client::metrics::{counter::Counter, family::Family};
///
/// let mut endpoint = MetricsEndpoint::new();
/// let hits = Family::<[(&'static str, EscapedLabel); 1], Counter>::default();
/// endpoint.registry_mut().register("myapp_hits", "Hits by path", hits.clone());
/// hits.get_or_create(&[("path", EscapedLabel::from("/a\"b"))]).inc();
/// ```
///
/// [`MetricsEndpoint::registry_mut`]: crate::MetricsEndpoint::registry_mut
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EscapedLabel(pub String);

impl From<&str> for EscapedLabel {
    fn from(value: &str) -> EscapedLabel {
        EscapedLabel(value.to_owned())
    }
}

impl From<String> for EscapedLabel {
    fn from(value: String) -> EscapedLabel {
        EscapedLabel(value)
    }
}

impl EncodeLabelValue for EscapedLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        Esc(&self.0).encode(encoder)
    }
}

/// A value of one series.
pub(crate) enum Value {
    Count(u64),
    Seconds(f64),
    Gauge(i64),
    /// Non-cumulative bucket counts with their upper bounds (`f64::MAX` = `+Inf`).
    Histogram {
        sum: f64,
        buckets: Vec<(f64, u64)>,
    },
}

/// Writes one metric family: its descriptor, then one series per row.
pub(crate) fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: impl IntoIterator<Item = (L, Value)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, value) in rows {
        let mut series = metric.encode_family(&labels)?;
        match value {
            Value::Count(v) => series.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
            Value::Seconds(v) => match ty {
                MetricType::Counter => series.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                _ => series.encode_gauge(&v)?,
            },
            Value::Gauge(v) => series.encode_gauge(&v)?,
            Value::Histogram { sum, buckets } => {
                let count = buckets.iter().map(|b| b.1).sum();
                series.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?
            }
        }
    }
    Ok(())
}

pub(crate) fn gauge(n: u64) -> Value {
    Value::Gauge(i64::try_from(n).unwrap_or(i64::MAX))
}

fn latency(h: &LatencyHistogram) -> Value {
    let bounds = LATENCY_BUCKET_BOUNDS
        .iter()
        .map(Duration::as_secs_f64)
        .chain([f64::MAX]);
    Value::Histogram {
        sum: h.sum.as_secs_f64(),
        buckets: bounds.zip(h.counts).collect(),
    }
}

/// The loop figures, one series per loop (label `loop`).
pub(crate) fn encode_loops(
    enc: &mut DescriptorEncoder<'_>,
    loops: &[(String, LoopMetrics)],
) -> fmt::Result {
    use MetricType::{Counter, Gauge, Histogram};
    let rows = |f: &dyn Fn(&LoopMetrics) -> Value| {
        loops
            .iter()
            .map(|(name, m)| ([("loop", Esc(name))], f(m)))
            .collect::<Vec<_>>()
    };
    let counters: [Field<LoopMetrics, u64>; 8] = [
        ("duo_loop_iterations", "Returns from epoll_wait.", |m| {
            m.iterations
        }),
        (
            "duo_loop_io_events",
            "I/O events dispatched to channels.",
            |m| m.io_events,
        ),
        ("duo_loop_tasks", "Queued functions run.", |m| m.tasks_run),
        ("duo_loop_timers", "Timer callbacks run.", |m| {
            m.timers_fired
        }),
        (
            "duo_loop_helped_turns",
            "Turns run by a thread other than the loop's owner, which had stalled.",
            |m| m.helped_turns,
        ),
        (
            "duo_loop_empty_wakeups",
            "Iterations that found nothing to do.",
            |m| m.empty_wakeups,
        ),
        (
            "duo_loop_stalls",
            "Callbacks that ran longer than the stall threshold.",
            |m| m.stalls,
        ),
        (
            "duo_loop_spins",
            "Spins: a channel dispatched again and again without progress, or a run of empty wake-ups.",
            |m| m.spins,
        ),
    ];
    for (name, help, f) in counters {
        family(enc, name, help, Counter, rows(&|m| Value::Count(f(m))))?;
    }
    let phases: [Phase; 4] = [
        ("poll", |m| m.poll_time),
        ("io", |m| m.io_time),
        ("timers", |m| m.timer_time),
        ("tasks", |m| m.task_time),
    ];
    family(
        enc,
        "duo_loop_seconds",
        "Wall-clock time of the loop thread by what it did: waiting in epoll_wait (poll), \
         running I/O handlers (io), timer callbacks (timers), queued functions (tasks).",
        Counter,
        loops.iter().flat_map(|(name, m)| {
            phases.iter().map(move |(phase, f)| {
                (
                    [("loop", Esc(name)), ("phase", Esc(phase))],
                    Value::Seconds(f(m).as_secs_f64()),
                )
            })
        }),
    )?;
    family(
        enc,
        "duo_loop_events_per_iteration",
        "Iterations by the number of I/O events they dispatched.",
        Histogram,
        rows(&|m| {
            let bounds = EVENT_BUCKET_BOUNDS
                .iter()
                .map(|&b| b as f64)
                .chain([f64::MAX]);
            Value::Histogram {
                sum: m.io_events as f64,
                buckets: bounds.zip(m.events_per_iteration).collect(),
            }
        }),
    )?;
    family(
        enc,
        "duo_loop_timer_lateness_seconds",
        "How late timers fired, from their deadline to their callback: the loop's lag.",
        Histogram,
        rows(&|m| latency(&m.timer_lateness)),
    )?;
    family(
        enc,
        "duo_loop_tasks_queued",
        "Functions queued to the loop and not yet run.",
        Gauge,
        rows(&|m| gauge(m.tasks_queued)),
    )?;
    family(
        enc,
        "duo_loop_largest_task_batch",
        "The most queued functions one iteration has run.",
        Gauge,
        rows(&|m| gauge(m.largest_task_batch)),
    )?;
    family(
        enc,
        "duo_loop_longest_callback_seconds",
        "The longest single callback so far.",
        Gauge,
        rows(&|m| Value::Seconds(m.longest_callback.as_secs_f64())),
    )
}

/// The close reasons, as label values, with their counts.
fn close_rows(c: &CloseCounts) -> [(&'static str, u64); 10] {
    [
        ("peer", c.peer),
        ("error", c.error),
        ("idle", c.idle),
        ("user", c.user),
        ("shutdown", c.shutdown),
        ("input_too_large", c.input_too_large),
        ("output_limit", c.output_limit),
        ("out_of_memory", c.out_of_memory),
        ("panic", c.panic),
        ("tls", c.tls),
    ]
}

/// A server whose figures are exported, with the labels it got when it was added: a
/// label stays with its server for the server's life, so that a counter series never
/// passes from one server to another (which a scraper would read as the counter going
/// backwards).
#[derive(Clone)]
pub(crate) struct Exported {
    server: ServerHandle,
    /// The `server` label: the name, or for a name a server still exported has (two
    /// servers with one name: a reload whose predecessor still drains) the name with
    /// `#2`, `#3`... (as loop names do), else a family would hold two series with one
    /// label set, which scrapers refuse or drop.
    label: String,
    /// The `pool` label of the server's buffer pool, if it has one of its own (see
    /// [`pools`]).
    pool_label: Option<String>,
}

impl Exported {
    /// `server`, labelled apart from the servers of `others` (and their pools).
    fn new(server: ServerHandle, others: &[Exported]) -> Exported {
        let label = unique(server.name(), |l| others.iter().any(|e| e.label == l));
        let pool = server.buffer_pool();
        let pool_label = (pool != BufPool::global()).then(|| {
            match others.iter().find(|e| e.server.buffer_pool() == pool) {
                Some(e) => e.pool_label.clone().unwrap_or_default(),
                None => unique(&label, |l| {
                    l == "global" || others.iter().any(|e| e.pool_label.as_deref() == Some(l))
                }),
            }
        });
        Exported {
            server,
            label,
            pool_label,
        }
    }

    /// A server stopped with no connection left: its figures are final, and its
    /// successor (often under the same name) is the one to export.
    fn is_done(&self) -> bool {
        self.server.is_stopping() && self.server.stats().active == 0
    }
}

/// `name`, or `name#2`, `name#3`... the first that is not `taken`.
pub(crate) fn unique(name: &str, taken: impl Fn(&str) -> bool) -> String {
    let (mut label, mut n) = (name.to_owned(), 1);
    while taken(&label) {
        n += 1;
        label = format!("{name}#{n}");
    }
    label
}

/// The server figures (label `server`, and `loop` for what each loop counts).
pub(crate) fn encode_servers(enc: &mut DescriptorEncoder<'_>, servers: &[Exported]) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let stats: Vec<_> = servers
        .iter()
        .map(|e| (e.label.as_str(), e.server.stats()))
        .collect();
    let per_server = |f: &dyn Fn(&duo_net::ServerStats) -> Value| {
        stats
            .iter()
            .map(|(name, s)| ([("server", Esc(name))], f(s)))
            .collect::<Vec<_>>()
    };
    family(
        enc,
        "duo_server_connections_accepted",
        "Connections accepted and served.",
        Counter,
        per_server(&|s| Value::Count(s.accepted)),
    )?;
    family(
        enc,
        "duo_server_connections_closed",
        "Connections closed.",
        Counter,
        per_server(&|s| Value::Count(s.closed)),
    )?;
    family(
        enc,
        "duo_server_connections_rejected",
        "Connections accepted and closed at once because the server was full.",
        Counter,
        per_server(&|s| Value::Count(s.rejected)),
    )?;
    family(
        enc,
        "duo_server_fd_exhausted",
        "Times accept failed for lack of file descriptors (EMFILE/ENFILE).",
        Counter,
        per_server(&|s| Value::Count(s.fd_exhausted)),
    )?;
    family(
        enc,
        "duo_server_connections",
        "Connections open now.",
        Gauge,
        per_server(&|s| gauge(s.active)),
    )?;
    family(
        enc,
        "duo_server_closes",
        "Connections closed, by reason.",
        Counter,
        stats.iter().flat_map(|(name, s)| {
            close_rows(&s.closes()).map(|(reason, n)| {
                (
                    [("server", Esc(name)), ("reason", Esc(reason))],
                    Value::Count(n),
                )
            })
        }),
    )?;
    family(
        enc,
        "duo_server_accept_errors",
        "accept errors other than running out of descriptors: a connection lost before it \
         was accepted (accepting goes on), or a failure of the listener (that acceptor \
         pauses briefly).",
        Counter,
        per_server(&|s| Value::Count(s.accept_errors)),
    )?;
    family(
        enc,
        "duo_server_handed_over",
        "Connections accepted on one loop and handed to another to be served (every one \
         when the main loop accepts; in the shared mode, those accepted by a loop that \
         held clearly more connections than the least loaded one).",
        Counter,
        per_server(&|s| Value::Count(s.handed_over)),
    )?;
    family(
        enc,
        "duo_server_full_pauses",
        "Times the server stopped accepting because it was full (WhenFull::Pause).",
        Counter,
        per_server(&|s| Value::Count(s.full_pauses)),
    )?;
    let per_loop = |f: fn(&duo_net::LoopStats) -> Value| {
        stats
            .iter()
            .flat_map(|(name, s)| {
                s.per_loop
                    .iter()
                    .map(move |l| ([("server", Esc(name)), ("loop", Esc(&l.loop_name))], f(l)))
            })
            .collect::<Vec<_>>()
    };
    let loop_counters: [Field<duo_net::LoopStats, Value>; 5] = [
        (
            "duo_server_loop_connections_opened",
            "Connections established on the loop.",
            |l| Value::Count(l.opened),
        ),
        ("duo_server_bytes_in", "Bytes read from connections.", |l| {
            Value::Count(l.bytes_in)
        }),
        (
            "duo_server_bytes_out",
            "Bytes written to connections.",
            |l| Value::Count(l.bytes_out),
        ),
        (
            "duo_server_messages_in",
            "Input deliveries (calls of the message callback).",
            |l| Value::Count(l.messages_in),
        ),
        (
            "duo_server_messages_out",
            "Sends accepted (calls of send and its variants).",
            |l| Value::Count(l.messages_out),
        ),
    ];
    for (name, help, f) in loop_counters {
        family(enc, name, help, Counter, per_loop(f))?;
    }
    family(
        enc,
        "duo_server_loop_connections",
        "Connections open on the loop now.",
        Gauge,
        per_loop(|l| gauge(l.open())),
    )?;
    family(
        enc,
        "duo_server_output_queued_bytes",
        "Bytes queued in output buffers, waiting for the peers to take them.",
        Gauge,
        per_loop(|l| gauge(l.output_queued)),
    )?;
    family(
        enc,
        "duo_server_backpressured_connections",
        "Connections whose reading is paused because their output passed the high-water \
         mark.",
        Gauge,
        per_loop(|l| gauge(l.backpressured)),
    )
}

/// The buffer pools to export, each with its `pool` label: the global pool (`global`),
/// then the pool of each of `servers` that has one of its own
/// ([`buffer_pool`](duo_net::ServerBuilder::buffer_pool)), under the `server` label the
/// first server using it had when it was added (kept while any server using the pool is
/// exported). A server's own pool is where its memory cap is, and where its connections'
/// `out_of_memory` closes come from. A label another pool has (a server named `global`)
/// gets `#2`, `#3`... as a repeated server name does: each pool's series are told apart.
pub(crate) fn pools(servers: &[Exported]) -> Vec<(String, BufPool)> {
    let mut pools = vec![("global".to_owned(), BufPool::global())];
    for e in servers {
        let pool = e.server.buffer_pool();
        if let (Some(label), true) = (&e.pool_label, pools.iter().all(|(_, p)| *p != pool)) {
            pools.push((label.clone(), pool));
        }
    }
    pools
}

/// The buffer pools' figures (label `pool`, see [`pools`]), per size class (label
/// `class`, the block size in bytes).
pub(crate) fn encode_pools(
    enc: &mut DescriptorEncoder<'_>,
    pools: &[(String, BufPool)],
) -> fmt::Result {
    let stats: Vec<_> = pools.iter().map(|(l, p)| (l.as_str(), p.stats())).collect();
    // One row per pool and class: its labels' values, and the class's figures.
    let classes: Vec<_> = stats
        .iter()
        .flat_map(|(pool, s)| s.classes.iter().map(|c| (*pool, c.size.to_string(), c)))
        .collect();
    family(
        enc,
        "duo_buffer_pool_bytes",
        "Bytes of pooled I/O buffer blocks by size class and state: held by live buffers \
         (in_use) or free in the pool's lists and thread caches (cached).",
        MetricType::Gauge,
        classes.iter().flat_map(|(pool, class, c)| {
            [("in_use", c.in_use), ("cached", c.free)].map(|(state, blocks)| {
                (
                    [
                        ("pool", Esc(pool)),
                        ("class", Esc(class)),
                        ("state", Esc(state)),
                    ],
                    gauge((blocks * c.size) as u64),
                )
            })
        }),
    )?;
    family(
        enc,
        "duo_buffer_pool_released_blocks",
        "Blocks returned to the system (trimmed, or released to stay under the cap), by \
         size class.",
        MetricType::Counter,
        classes.iter().map(|(pool, class, c)| {
            (
                [("pool", Esc(pool)), ("class", Esc(class))],
                Value::Count(c.released),
            )
        }),
    )?;
    family(
        enc,
        "duo_buffer_pool_allocated_bytes",
        "Bytes of blocks obtained from the system and not released.",
        MetricType::Gauge,
        stats
            .iter()
            .map(|(pool, s)| ([("pool", Esc(pool))], gauge(s.allocated_bytes as u64))),
    )?;
    family(
        enc,
        "duo_buffer_pool_refused",
        "Block requests the pool refused for its memory cap: a read waits for room, other \
         requests close their connection (out_of_memory).",
        MetricType::Counter,
        stats
            .iter()
            .map(|(pool, s)| ([("pool", Esc(pool))], Value::Count(s.refused))),
    )?;
    family(
        enc,
        "duo_buffer_pool_memory_cap_bytes",
        "The pool's memory cap (allocations beyond it fail); absent when unbounded.",
        MetricType::Gauge,
        stats.iter().filter_map(|(pool, s)| {
            s.memory_cap
                .map(|cap| ([("pool", Esc(pool))], gauge(cap as u64)))
        }),
    )
}

/// A [`Collector`] of duo's figures for a `prometheus_client` [`Registry`]: every loop of
/// the process ([`duo_reactor::loops`]), the servers added with
/// [`add_server`](DuoCollector::add_server), and the global buffer pool, read at each
/// scrape. Clones share the server list.
///
/// [`Registry`]: prometheus_client::registry::Registry
#[derive(Clone, Default)]
pub struct DuoCollector {
    servers: Arc<Mutex<Vec<Exported>>>,
    udp: Arc<Mutex<Vec<ExportedUdp>>>,
}

impl DuoCollector {
    /// A collector with no server yet.
    pub fn new() -> DuoCollector {
        DuoCollector::default()
    }

    /// Adds a server whose figures are exported (label `server`: its name, or `NAME#2`,
    /// `NAME#3`... while another server of that name is still exported, such as a
    /// predecessor still draining; a server keeps the label it got here). A server
    /// stopped with no connection left is no longer exported.
    pub fn add_server(&self, server: ServerHandle) {
        let mut servers = self.servers.lock();
        servers.retain(|e| !e.is_done());
        let added = Exported::new(server, &servers);
        servers.push(added);
    }

    /// Adds a UDP socket whose figures are exported (`duo_udp_*`, label `socket`: its
    /// name, or `NAME#2`, `NAME#3`... while another socket of that name is still
    /// exported). A socket that has closed is no longer exported.
    pub fn add_udp_socket(&self, socket: UdpSocket) {
        let mut sockets = self.udp.lock();
        sockets.retain(|e| !e.is_done());
        let added = ExportedUdp::new(socket, &sockets);
        sockets.push(added);
    }

    /// The loops' names and metrics, oldest loop first.
    pub fn loop_snapshots() -> Vec<(String, LoopMetrics)> {
        duo_reactor::loops()
            .iter()
            .map(|h: &LoopHandle| (h.name().to_owned(), h.metrics()))
            .collect()
    }
}

impl fmt::Debug for DuoCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DuoCollector")
            .field("servers", &self.servers.lock().len())
            .field("udp_sockets", &self.udp.lock().len())
            .finish()
    }
}

impl Collector for DuoCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode_loops(&mut encoder, &DuoCollector::loop_snapshots())?;
        let servers = {
            let mut servers = self.servers.lock();
            servers.retain(|e| !e.is_done());
            servers.clone()
        };
        encode_servers(&mut encoder, &servers)?;
        let udp = {
            let mut sockets = self.udp.lock();
            sockets.retain(|e| !e.is_done());
            sockets.clone()
        };
        encode_udp(&mut encoder, &udp)?;
        encode_pools(&mut encoder, &pools(&servers))
    }
}
