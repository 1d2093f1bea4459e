//! Review, round 11 (duo-metrics: the endpoint, its figures, the aggregation): what a
//! Prometheus server refuses in a target's text, checked against the aggregating
//! endpoint's check of each target.
//!
//! The aggregated `/metrics` is served as OpenMetrics, so a Prometheus server reads it
//! with its OpenMetrics parser, which refuses the whole scrape for lines the Prometheus
//! text format allows (blanks inside a label set, a trailing comma, a tab or two blanks
//! before the value, `untyped`) and for samples and metadata no parser of either format
//! takes (a label named twice, a `__name__` label, a unit that is not the name's suffix,
//! `# HELP` without its text, an exemplar on a gauge). Each text below was scraped by a
//! real Prometheus server (2.42) as a target of its own: each was refused, with the
//! error quoted. A worker writing one must be left out (`duo_aggregate_up 0`), not merged
//! (which would fail the scrape of every process).
//!
//! Every wait has a deadline; every peer is a socket of the test's own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{canned, target, value, worker};
use duo_metrics::prometheus_client::metrics::{counter::Counter, family::Family};
use duo_metrics::{EscapedLabel, MetricsEndpoint};
use duo_testkit::{http_get, run_within, TempDir, LIMIT};

/// Texts a Prometheus server (2.42) refuses when served as OpenMetrics, with what it
/// said.
const REFUSED: [(&str, &str); 13] = [
    // label name "x" is not unique: invalid sample
    (
        "dup",
        "# TYPE a counter\na_total{x=\"1\",x=\"2\"} 1\n# EOF\n",
    ),
    // label name "__name__" is not unique: invalid sample
    ("dunder", "# TYPE l gauge\nl{__name__=\"x\"} 1\n# EOF\n"),
    // unit not a suffix of metric "b"
    ("unit", "# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n"),
    // unit not a suffix of metric "bseconds"
    (
        "unitnous",
        "# TYPE bseconds gauge\n# UNIT bseconds seconds\nbseconds 1\n# EOF\n",
    ),
    // expected text in HELP
    ("emptyhelp", "# HELP k\n# TYPE k gauge\nk 1\n# EOF\n"),
    // metric name h does not support exemplars
    ("exgauge", "# TYPE h gauge\nh 1 # {a=\"1\"} 2\n# EOF\n"),
    // expected label name or left brace, got "INVALID"
    ("blanks", "# TYPE o gauge\no{ a = \"1\" } 1\n# EOF\n"),
    // expected label name, got "BCLOSE"
    ("trailcomma", "# TYPE m gauge\nm{a=\"1\",} 1\n# EOF\n"),
    // expected value after metric, got "INVALID"
    ("tab", "# TYPE p gauge\np\t1\n# EOF\n"),
    // expected value after metric, got "INVALID"
    ("twospace", "# TYPE q gauge\nq  1\n# EOF\n"),
    // expected next entry after timestamp, got "INVALID"
    (
        "trailsp",
        "# TYPE y counter\ny_total 1 1700000000 \n# EOF\n",
    ),
    // invalid metric type "counter "
    ("typetrail", "# TYPE ai counter \nai_total 1\n# EOF\n"),
    // invalid metric type "untyped"
    ("untyped", "# TYPE am untyped\nam 1\n# EOF\n"),
];

/// Texts the same server took (the check must not leave their targets out).
const TAKEN: [(&str, &str); 6] = [
    ("emptyset", "# TYPE r gauge\nr{} 1\n# EOF\n"),
    ("helpblank", "# HELP s \n# TYPE s gauge\ns 1\n# EOF\n"),
    (
        "excounter",
        "# TYPE u counter\nu_total 1 # {a=\"1\"} 2\n# EOF\n",
    ),
    (
        "exhist",
        "# TYPE v histogram\nv_bucket{le=\"+Inf\"} 1 # {a=\"1\"} 2 1700000000\nv_count 1\nv_sum 1\n# EOF\n",
    ),
    (
        "unitok",
        "# TYPE b_seconds gauge\n# UNIT b_seconds seconds\nb_seconds 1\n# EOF\n",
    ),
    (
        "escapes",
        "# TYPE e gauge\ne{x=\"a\\\\b\\\"c\\nd\",y=\"c\rd\"} 1\n# EOF\n",
    ),
];

/// `promtool check metrics` on `text` (the Prometheus text format's parser, which refuses
/// a label named twice too): `None` without promtool, else whether it passed and what
/// it said.
fn promtool(text: &str) -> Option<(bool, String)> {
    let which = Command::new("promtool").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let dir = TempDir::new("round11-promtool");
    let file = dir.join("scrape.txt");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec promtool check metrics < \"$0\""])
        .arg(&file);
    let out = run_within(&mut cmd, LIMIT).unwrap();
    let said = format!("{}{}", out.stdout, out.stderr);
    // Lint warnings (a family without HELP, say) are not parse errors.
    Some((!said.contains("error while linting"), said))
}

#[test]
fn a_target_whose_text_prometheus_refuses_is_left_out() {
    let good = worker(7);
    let good_addr = good.local_addr();
    let mut peers = Vec::new();
    let mut targets = vec![target("good", good_addr)];
    for (name, body) in REFUSED.iter().chain(&TAKEN) {
        let (addr, peer) = canned(body, 1);
        targets.push(target(name, addr));
        peers.push(peer);
    }
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(vec![("worker".to_owned(), "self".to_owned())], move || {
            targets.clone()
        })
        .scrape_timeout(LIMIT);
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "app_jobs_total{worker=\"good\"}"),
        Some(7.0),
        "{text}"
    );
    for (name, _) in TAKEN {
        assert_eq!(
            value(&text, &format!("duo_aggregate_up{{worker=\"{name}\"}}")),
            Some(1.0),
            "{name} was taken by Prometheus: {text}"
        );
    }
    let merged_wrongly: Vec<&str> = REFUSED
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            value(&text, &format!("duo_aggregate_up{{worker=\"{name}\"}}")) != Some(0.0)
                || text.contains(&format!("{{worker=\"{name}\","))
        })
        .collect();
    assert!(
        merged_wrongly.is_empty(),
        "merged though Prometheus refuses them (and the scrape with them): \
         {merged_wrongly:?}\n{text}"
    );
    // promtool reads the Prometheus text format, which has no exemplars: they go.
    let plain: String = text
        .lines()
        .map(|l| match l.find(" # {") {
            Some(at) if !l.starts_with('#') => &l[..at],
            _ => l,
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    if let Some((passed, said)) = promtool(&plain) {
        assert!(passed, "promtool: {said}\n{text}");
    }
    for peer in peers {
        duo_testkit::join_within("a canned peer", peer);
    }
    group.stop().unwrap();
    good.stop().unwrap();
}

/// A row of a metric table of `docs/observability.md`: the type's first word, the label
/// names, and the values listed for a label (`reason` = `peer`, ...; `le` for a
/// histogram's buckets).
struct Row {
    kind: String,
    labels: BTreeSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
}

/// The backticked words of `text`, in order.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The page's rows for the families starting with `prefix`, by name as the page writes it.
fn documented_rows(prefix: &str) -> BTreeMap<String, Row> {
    let page = duo_testkit::observability_page();
    let mut rows = BTreeMap::new();
    for line in page.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(name) = cells.first().and_then(|c| c.strip_prefix("| `")) else {
            continue;
        };
        let name = name.trim_end_matches('`');
        if !name.starts_with(prefix) || cells.len() < 4 {
            continue;
        }
        let mut values = BTreeMap::new();
        let kind = cells[1].split([',', ' ']).next().unwrap_or("").to_owned();
        if let Some((_, buckets)) = cells[1].split_once("`le` = ") {
            let bounds = buckets.split(", ").map(str::to_owned).collect();
            values.insert("le".to_owned(), bounds);
        }
        // `a`, `b` = `x`, `y`: `a` and `b` are names, `x` and `y` the values of `b`.
        let mut labels = BTreeSet::new();
        for part in cells[2].split("; ") {
            let (names, listed) = part.split_once(" = ").unwrap_or((part, ""));
            let names = ticked(names);
            if let (Some(last), false) = (names.last(), listed.is_empty()) {
                values.insert(last.clone(), ticked(listed).into_iter().collect());
            }
            labels.extend(names);
        }
        rows.insert(
            name.to_owned(),
            Row {
                kind,
                labels,
                values,
            },
        );
    }
    rows
}

/// The label names and values of a sample line's label set (values as written).
fn sample_labels(line: &str) -> Vec<(String, String)> {
    let Some((_, inner)) = line.split_once('{') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = inner;
    while let Some((name, after)) = rest.split_once("=\"") {
        // The closing quote: the first one not escaped (another test's loop, in the same
        // process, may be named with quotes, backslashes, `=` and `,`).
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let close = !escaped && c == '"';
                escaped = !escaped && c == '\\';
                close
            })
            .map_or(after.len(), |(i, _)| i);
        out.push((name.to_owned(), after[..end].to_owned()));
        rest = after[end..].trim_start_matches('"').trim_start_matches(',');
        if rest.starts_with('}') {
            break;
        }
    }
    out
}

/// What the page's metric tables say of each `duo_*` family a single process exports
/// (its type, its labels, the values it lists for a label, a histogram's buckets) is what
/// the exposition holds. The doc-claims test compares the names only.
#[test]
fn the_page_s_types_labels_and_listed_values_are_what_is_exported() {
    // The server's loop is never run: its figures are read, not its connections.
    let mut main = duo_net::EventLoop::new().unwrap();
    let lp = duo_reactor::EventLoopThread::spawn("round11-doc", None).unwrap();
    let pool = duo_buffer::BufPool::new(duo_buffer::PoolConfig {
        memory_cap: Some(4 << 20),
        ..duo_buffer::PoolConfig::default()
    });
    let server = duo_net::TcpServer::builder(
        "doc",
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
    )
    .buffer_pool(pool)
    .on_message(|_, input| input.consume_all())
    .start(&mut main)
    .unwrap();
    let udp = duo_net::UdpSocket::builder("doc-udp", "127.0.0.1:0".parse().unwrap())
        .start(lp.handle())
        .unwrap();
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(server.clone_handle());
    endpoint.add_udp_socket(udp.clone());
    let not_after =
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
    endpoint.certificate_expiry(std::path::Path::new("/etc/duo/cert.pem"), not_after);
    let text = endpoint.render();

    let rows = documented_rows("duo_");
    let mut wrong = Vec::new();
    let mut kind = "";
    let mut family = "";
    let mut seen: BTreeMap<String, (String, BTreeMap<String, BTreeSet<String>>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            (family, kind) = typed.split_once(' ').unwrap();
            continue;
        }
        if line.starts_with('#') || !family.starts_with("duo_") {
            continue;
        }
        let listed = match kind {
            "counter" => format!("{family}_total"),
            _ => family.to_owned(),
        };
        let entry = seen
            .entry(listed)
            .or_insert_with(|| (kind.to_owned(), BTreeMap::new()));
        for (name, value) in sample_labels(line) {
            entry.1.entry(name).or_default().insert(value);
        }
    }
    for (name, (kind, labels)) in &seen {
        let Some(row) = rows.get(name) else {
            continue; // the doc-claims test's business
        };
        if row.kind != *kind {
            wrong.push(format!(
                "{name}: the page says {}, exported as {kind}",
                row.kind
            ));
        }
        let exported: BTreeSet<String> = labels.keys().filter(|l| *l != "le").cloned().collect();
        if row.labels != exported {
            wrong.push(format!(
                "{name}: the page lists labels {:?}, exported with {exported:?}",
                row.labels
            ));
        }
        for (label, values) in &row.values {
            let got = labels.get(label).cloned().unwrap_or_default();
            // Bucket bounds are numbers (`1` on the page is `1.0` in the text).
            let numbers = |set: &BTreeSet<String>| {
                let mut n: Vec<f64> = set.iter().filter_map(|v| v.parse().ok()).collect();
                n.sort_by(f64::total_cmp);
                n
            };
            let same = match label.as_str() {
                "le" => numbers(values) == numbers(&got) && values.len() == got.len(),
                _ => *values == got,
            };
            if !same {
                wrong.push(format!(
                    "{name}: the page lists {label} = {values:?}, exported {got:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{text}");
    udp.stop();
    server.stop(&mut main);
    lp.stop().unwrap();
}

/// A worker with every kind of duo family and names that need escapes everywhere (a
/// server, a UDP socket, a loop, a certificate file that is not even UTF-8, an
/// application label) passes the aggregating endpoint's check (duo's own text is what the
/// stricter check must never refuse), and the merged text passes promtool.
#[test]
fn a_worker_with_names_that_need_escapes_is_merged_and_the_scrape_parses() {
    use std::os::unix::ffi::OsStrExt;

    let odd = "a\"b\\c\nd{e}=f,g";
    let mut main = duo_net::EventLoop::new().unwrap();
    let lp = duo_reactor::EventLoopThread::spawn(odd, None).unwrap();
    let server =
        duo_net::TcpServer::builder(odd, "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .on_message(|_, input| input.consume_all())
            .start(&mut main)
            .unwrap();
    let udp = duo_net::UdpSocket::builder(odd, "127.0.0.1:0".parse().unwrap())
        .start(lp.handle())
        .unwrap();
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(server.clone_handle());
    endpoint.add_udp_socket(udp.clone());
    let file = std::ffi::OsStr::from_bytes(b"/etc/duo/\xff\"x\\y\nz.pem");
    let not_after =
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
    endpoint.certificate_expiry(std::path::Path::new(file), not_after);
    let hits = Family::<[(&'static str, EscapedLabel); 1], Counter>::default();
    endpoint
        .registry_mut()
        .register("app_hits", "Hits by path", hits.clone());
    hits.get_or_create(&[("path", EscapedLabel::from(odd))])
        .inc();
    let worker = endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = worker.local_addr();
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(vec![("worker".to_owned(), odd.to_owned())], move || {
            vec![target(odd, addr)]
        })
        .scrape_timeout(LIMIT);
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"a\\\"b\\\\c\\nd{e}=f,g\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains(
            "app_hits_total{worker=\"a\\\"b\\\\c\\nd{e}=f,g\",path=\"a\\\"b\\\\c\\nd{e}=f,g\"} 1\n"
        ),
        "{text}"
    );
    if let Some((passed, said)) = promtool(&text) {
        assert!(passed, "promtool: {said}\n{text}");
    }
    group.stop().unwrap();
    worker.stop().unwrap();
    udp.stop();
    server.stop(&mut main);
    lp.stop().unwrap();
}

/// Two certificate files whose paths differ only in bytes that are not UTF-8 are two
/// series: the `file` label wrote the path through `Path::display`, which turns every such
/// byte into U+FFFD, so the second file's expiry overwrote the first's.
#[test]
fn certificate_paths_that_differ_in_non_utf8_bytes_are_two_series() {
    use std::os::unix::ffi::OsStrExt;
    let a = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/etc/duo/\xff.pem"));
    let b = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/etc/duo/\xfe.pem"));
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    let mut endpoint = MetricsEndpoint::new();
    endpoint.certificate_expiry(a, epoch + std::time::Duration::from_secs(1_000));
    endpoint.certificate_expiry(b, epoch + std::time::Duration::from_secs(2_000));
    let text = endpoint.render();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("duo_tls_certificate_expiry_timestamp_seconds{"))
        .collect();
    assert_eq!(series.len(), 2, "{text}");
    assert!(series.iter().any(|l| l.ends_with(" 1000")), "{text}");
    assert!(series.iter().any(|l| l.ends_with(" 2000")), "{text}");
}

/// The test's own label reader takes a value with escapes whole (another test's loop, in
/// the same process, shows in a render with such a name: it failed the test above once).
#[test]
fn the_label_reader_takes_escaped_values_whole() {
    let line = r#"duo_loop_seconds_total{loop="a\"b\\c\nd{e}=f,g",phase="poll"} 1"#;
    let names: Vec<String> = sample_labels(line).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["loop", "phase"]);
}
