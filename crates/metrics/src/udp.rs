//! The UDP sockets' figures (label `socket`), from each socket's
//! [`stats`](duo_net::UdpSocket::stats) snapshot at the scrape.

use std::fmt;

use duo_net::{UdpSocket, UdpStats};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::collect::{family, gauge, unique, Esc, Field, Value};

/// A UDP socket whose figures are exported, with its `socket` label.
#[derive(Clone)]
pub(crate) struct ExportedUdp {
    socket: UdpSocket,
    label: String,
}

impl ExportedUdp {
    /// `socket`, labelled with its name apart from the sockets of `others` (`NAME#2`...).
    pub(crate) fn new(socket: UdpSocket, others: &[ExportedUdp]) -> ExportedUdp {
        let label = unique(socket.name(), |l| others.iter().any(|e| e.label == l));
        ExportedUdp { socket, label }
    }

    /// A socket closed for good: its figures are final, and a successor (often of the
    /// same name) is the one to export.
    pub(crate) fn is_done(&self) -> bool {
        self.socket.is_closed()
    }
}

/// The counters of [`UdpStats`], with their family names and help.
const COUNTERS: [Field<UdpStats, u64>; 12] = [
    (
        "duo_udp_datagrams_in",
        "Datagrams received and delivered to the datagram callback.",
        |s| s.datagrams_in,
    ),
    (
        "duo_udp_bytes_in",
        "Payload bytes of the datagrams delivered.",
        |s| s.bytes_in,
    ),
    (
        "duo_udp_datagrams_out",
        "Datagrams the kernel accepted for sending.",
        |s| s.datagrams_out,
    ),
    (
        "duo_udp_bytes_out",
        "Payload bytes of the datagrams sent.",
        |s| s.bytes_out,
    ),
    (
        "duo_udp_truncated",
        "Datagrams larger than the receive slot: cut by the kernel and not delivered.",
        |s| s.truncated,
    ),
    (
        "duo_udp_send_errors",
        "Datagrams the kernel refused to send (EMSGSIZE, ENETUNREACH...): dropped.",
        |s| s.send_errors,
    ),
    (
        "duo_udp_dropped",
        "Datagrams not sent for want of room in the send queue, or because the socket \
         stopped.",
        |s| s.dropped,
    ),
    (
        "duo_udp_send_buffer_full",
        "Times the socket's send buffer was found full and the queue waited for \
         writability.",
        |s| s.send_buffer_full,
    ),
    (
        "duo_udp_refused",
        "ICMP errors reported by the kernel (ECONNREFUSED: port unreachable); a lower \
         bound.",
        |s| s.refused,
    ),
    (
        "duo_udp_receive_errors",
        "Receive errors other than refusals (the socket goes on).",
        |s| s.recv_errors,
    ),
    (
        "duo_udp_receive_calls",
        "Receive system calls that returned datagrams (recvmmsg, or recvfrom unbatched).",
        |s| s.recv_calls,
    ),
    (
        "duo_udp_send_calls",
        "sendto/sendmmsg calls that sent datagrams.",
        |s| s.send_calls,
    ),
];

/// Writes the figures of `sockets`.
pub(crate) fn encode_udp(enc: &mut DescriptorEncoder<'_>, sockets: &[ExportedUdp]) -> fmt::Result {
    if sockets.is_empty() {
        return Ok(());
    }
    let stats: Vec<(&str, UdpStats)> = sockets
        .iter()
        .map(|e| (e.label.as_str(), e.socket.stats()))
        .collect();
    let rows = |f: &dyn Fn(&UdpStats) -> Value| {
        stats
            .iter()
            .map(|(label, s)| ([("socket", Esc(label))], f(s)))
            .collect::<Vec<_>>()
    };
    for (name, help, f) in COUNTERS {
        family(
            enc,
            name,
            help,
            MetricType::Counter,
            rows(&|s| Value::Count(f(s))),
        )?;
    }
    family(
        enc,
        "duo_udp_queued_bytes",
        "The send queue's size now: payload bytes plus 64 per datagram queued.",
        MetricType::Gauge,
        rows(&|s| gauge(s.queued_bytes)),
    )
}
