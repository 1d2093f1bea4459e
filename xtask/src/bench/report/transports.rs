//! The report's tables of the transport scenarios: TLS against tokio-rustls, UDP against
//! the UDP peers, and a Unix-domain socket against TCP loopback.

use std::fmt::Write as _;

use super::super::outcome::{fmt_us, ratio, Outcome};
use super::super::scenarios::{Target, UDP_SERVERS, UDS_SCENARIOS};
use super::{server_cell, Results};
use crate::report::markdown;

/// duo over a Unix-domain socket against duo over TCP loopback: same binary, threads and
/// load, in the same run (`UDS_SCENARIOS`).
pub(super) fn uds_table(md: &mut String, results: &Results<'_>) {
    let rows: Vec<[String; 5]> = results
        .iter()
        .filter(|(sc, _)| UDS_SCENARIOS.contains(&sc.name))
        .filter_map(|(sc, outcomes)| {
            let get = |name: &str| outcomes.iter().find(|o| o.server == name);
            let (uds, tcp) = (get("duo-2-uds")?, get("duo-2")?);
            Some([
                sc.name.to_owned(),
                format!(
                    "{} / {}",
                    fmt_us(uds.cpu_per_op_us()),
                    fmt_us(tcp.cpu_per_op_us())
                ),
                ratio(uds.cpu_per_op_us(), tcp.cpu_per_op_us()),
                ratio(uds.rate(), tcp.rate()),
                get("tokio-uds").map_or("-".into(), |t| {
                    format!(
                        "{} / {}",
                        ratio(uds.cpu_per_op_us(), t.cpu_per_op_us()),
                        ratio(uds.rate(), t.rate())
                    )
                }),
            ])
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nUnix-domain socket against TCP loopback, the same duo server (`duo-2-uds` / \
         `duo-2`): server CPU per operation (< 1: UDS is cheaper), then throughput; and \
         duo against tokio on the same transport (`tokio-uds`, 2 workers).\n"
    );
    md.push_str(&markdown::table(
        &[
            "scenario",
            "CPU µs/op UDS / TCP",
            "CPU ratio UDS / TCP",
            "throughput ratio UDS / TCP",
            "duo-2-uds / tokio-uds (CPU / throughput)",
        ],
        rows,
    ));
}

/// The UDP scenarios: every server's headline, then duo's ratios against the peers and
/// batched against unbatched (CPU per datagram: < 1 favours the first).
pub(super) fn udp_table(md: &mut String, results: &Results<'_>) {
    let udp = || results.iter().filter(|(sc, _)| sc.target == Target::Udp);
    if udp().next().is_none() {
        return;
    }
    let servers: Vec<&str> = UDP_SERVERS.iter().map(|s| s.name).collect();
    let _ = writeln!(
        md,
        "\nUDP echo, one serving thread each: duo `echo --udp` (recvmmsg/sendmmsg batches \
         of 32, and `--udp-batch 1`: one recvfrom per datagram), tokio's UDP echo (one \
         task, current-thread runtime) and a blocking std recv_from/send_to loop. One \
         request is one datagram echoed.\n"
    );
    let header: Vec<&str> = ["scenario"]
        .into_iter()
        .chain(servers.iter().copied())
        .collect();
    md.push_str(&markdown::table(
        &header,
        udp().map(|(sc, outcomes)| {
            let cells = servers.iter().map(|name| server_cell(sc, outcomes, name));
            std::iter::once(sc.name.to_owned())
                .chain(cells)
                .collect::<Vec<_>>()
        }),
    ));
    let _ = writeln!(
        md,
        "\nCPU per datagram / throughput ratios (CPU < 1 and throughput > 1 favour the \
         first).\n"
    );
    let pairs = [
        ("duo-udp", "tokio-udp"),
        ("duo-udp", "std-udp"),
        ("duo-udp", "duo-udp-unbatched"),
    ];
    let header: Vec<String> = std::iter::once("scenario".to_owned())
        .chain(pairs.iter().map(|(a, b)| format!("{a} / {b}")))
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    md.push_str(&markdown::table(
        &header,
        udp().map(|(sc, outcomes)| {
            let get = |name: &str| outcomes.iter().find(|o| o.server == name);
            let cells = pairs.iter().map(|(a, b)| match (get(a), get(b)) {
                (Some(a), Some(b)) => format!(
                    "{} / {}",
                    ratio(a.cpu_per_op_us(), b.cpu_per_op_us()),
                    ratio(a.rate(), b.rate())
                ),
                _ => "-".into(),
            });
            std::iter::once(sc.name.to_owned())
                .chain(cells)
                .collect::<Vec<_>>()
        }),
    ));
}

/// The TLS echo scenarios: duo against the tokio-rustls peer, both on 2 threads.
pub(super) fn tls_table(md: &mut String, results: &Results<'_>) {
    let tls: Vec<_> = results
        .iter()
        .filter(|(sc, _)| sc.target == Target::EchoTls)
        .collect();
    if tls.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nTLS (rustls, same certificate and provider on both): duo-tls-2 against \
         tokio-rustls (2 threads each); duo / peer: CPU per operation (per handshake for \
         the handshake scenario; < 1 favours duo), then throughput (> 1 favours duo); for \
         idle, RSS per connection (< 1 favours duo).\n"
    );
    md.push_str(&markdown::table(
        &["scenario", "duo-tls-2", "tokio-rustls", "duo / peer"],
        tls.iter().map(|(sc, outcomes)| {
            let get = |name: &str| outcomes.iter().find(|o| o.server == name);
            let ratios = match (get("duo-tls-2"), get("tokio-rustls")) {
                (Some(d), Some(p)) if sc.mode == "idle" => {
                    let rss = |o: &Outcome| o.median(|j| j.rss_per_conn_bytes);
                    format!("RSS {}", ratio(rss(d), rss(p)))
                }
                (Some(d), Some(p)) => format!(
                    "{} / {}",
                    ratio(d.cpu_per_op_us(), p.cpu_per_op_us()),
                    ratio(d.rate(), p.rate())
                ),
                _ => "-".into(),
            };
            [
                sc.name.to_owned(),
                server_cell(sc, outcomes, "duo-tls-2"),
                server_cell(sc, outcomes, "tokio-rustls"),
                ratios,
            ]
        }),
    ));
}
