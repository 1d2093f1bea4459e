//! One endpoint for several processes: a supervisor's `/metrics`, `/healthz` and
//! `/debug/loops` gather its workers' at each request ([`MetricsEndpoint::aggregate`]).
//!
//! Each worker serves its own endpoint on loopback; the aggregating endpoint fetches them
//! in parallel (with a deadline), and merges the OpenMetrics texts family by family, each
//! sample labelled with where it came from (a worker's `pid` and `generation`, say). A
//! worker that does not answer in time, or answers with a text that is not an exposition
//! (a line a Prometheus server could not parse, which would fail the whole scrape), is
//! left out of that scrape and shows as `duo_aggregate_up 0`; nothing a worker sends can
//! break the merged text's structure (one block per metric family, one `# EOF`).
//!
//! [`MetricsEndpoint::aggregate`]: crate::MetricsEndpoint::aggregate

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Label names and values, in order.
pub type Labels = Vec<(String, String)>;

/// Where one process of the group serves its metrics endpoint, and the labels its samples
/// get in the merged text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// Added to every sample of this target (for example `process="worker"`, `pid`,
    /// `generation`). They must not be label names the target uses itself.
    pub labels: Labels,
    /// The target's endpoint (an address on loopback, normally).
    pub addr: SocketAddr,
}

/// The current targets, asked at every request (workers come and go).
pub(crate) type Targets = Arc<dyn Fn() -> Vec<ScrapeTarget> + Send + Sync>;

/// What an aggregating endpoint needs besides its own process's figures.
#[derive(Clone)]
pub(crate) struct Aggregation {
    /// Labels of this process's own samples.
    pub(crate) own_labels: Labels,
    pub(crate) targets: Targets,
    /// The deadline for fetching every target, in parallel.
    pub(crate) timeout: Duration,
}

impl fmt::Debug for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregation")
            .field("own_labels", &self.own_labels)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The largest response taken from a target.
const MAX_RESPONSE: usize = 64 << 20;

/// A fetched response: status code and body.
type Fetched = (u16, Vec<u8>);

/// Whether the answer is still wanted (its client still connected): asked while a fetch
/// waits, so that the work of a client that left ends at once, not at the deadline.
pub(crate) type Wanted<'a> = &'a (dyn Fn() -> bool + Sync);

/// How often a fetch waiting for its target asks whether the answer is still wanted.
const WANTED_POLL: Duration = Duration::from_millis(50);

impl Aggregation {
    /// Fetches `path` from every current target in parallel, all within the scrape
    /// timeout or `budget` (what the scraper allows), whichever is shorter.
    fn fetch_all(
        &self,
        path: &str,
        budget: Option<Duration>,
        wanted: Wanted<'_>,
    ) -> Vec<(ScrapeTarget, io::Result<Fetched>, Duration)> {
        let targets = (self.targets)();
        let timeout = budget.map_or(self.timeout, |b| b.min(self.timeout));
        let deadline = Instant::now() + timeout;
        std::thread::scope(|scope| {
            let running: Vec<_> = targets
                .into_iter()
                .map(|target| {
                    let addr = target.addr;
                    let fetch = std::thread::Builder::new()
                        .name("metrics-fetch".into())
                        .spawn_scoped(scope, move || {
                            let start = Instant::now();
                            let got = fetch(addr, path, deadline, wanted);
                            (got, start.elapsed())
                        });
                    (target, fetch)
                })
                .collect();
            running
                .into_iter()
                .map(|(target, fetch)| {
                    let (got, took) = match fetch {
                        Ok(fetch) => fetch.join().unwrap_or_else(|_| {
                            (Err(io::Error::other("the fetch panicked")), Duration::ZERO)
                        }),
                        Err(e) => (Err(e), Duration::ZERO),
                    };
                    (target, got, took)
                })
                .collect()
        })
    }

    /// `/metrics`: this process's `own` text and every target's, merged, with
    /// `duo_aggregate_up` and `duo_aggregate_scrape_seconds` per target.
    ///
    /// `budget`: how long the scraper waits (Prometheus sends its scrape timeout as
    /// `X-Prometheus-Scrape-Timeout-Seconds`): a slow target must be left out before the
    /// scraper gives up on the whole answer.
    pub(crate) fn metrics(
        &self,
        own: &str,
        budget: Option<Duration>,
        wanted: Wanted<'_>,
    ) -> String {
        let fetched = self.fetch_all("/metrics", budget, wanted);
        let mut parts: Vec<(Labels, String)> = vec![(self.own_labels.clone(), own.to_owned())];
        let mut up = String::from(
            "# HELP duo_aggregate_up Whether this scrape got the target's metrics (1) or not (0).\n\
             # TYPE duo_aggregate_up gauge\n",
        );
        let mut took_text = String::from(
            "# HELP duo_aggregate_scrape_seconds How long fetching the target's metrics took.\n\
             # TYPE duo_aggregate_scrape_seconds gauge\n\
             # UNIT duo_aggregate_scrape_seconds seconds\n",
        );
        for (target, got, took) in fetched {
            let labels = render_labels(&target.labels);
            let ok = match got {
                Ok((200, body)) => match String::from_utf8(body) {
                    // A line Prometheus cannot parse would fail the whole scrape.
                    Ok(text) => match crate::exposition::check(&text) {
                        Ok(()) => {
                            parts.push((target.labels.clone(), text));
                            true
                        }
                        Err(why) => {
                            duo_reactor::log_limited!(
                                log::Level::Warn,
                                "metrics of {}: not an exposition ({why}); left out",
                                target.addr
                            );
                            false
                        }
                    },
                    Err(_) => {
                        duo_reactor::log_limited!(
                            log::Level::Warn,
                            "metrics of {}: not UTF-8",
                            target.addr
                        );
                        false
                    }
                },
                Ok((status, _)) => {
                    duo_reactor::log_limited!(
                        log::Level::Warn,
                        "metrics of {}: status {status}",
                        target.addr
                    );
                    false
                }
                Err(e) => {
                    duo_reactor::log_limited!(log::Level::Warn, "metrics of {}: {e}", target.addr);
                    false
                }
            };
            let _ = writeln!(up, "duo_aggregate_up{{{labels}}} {}", u8::from(ok));
            let _ = writeln!(
                took_text,
                "duo_aggregate_scrape_seconds{{{labels}}} {}",
                took.as_secs_f64()
            );
        }
        parts.push((Vec::new(), up));
        parts.push((Vec::new(), took_text));
        let merged = merge(&parts);
        if merged.conflicts > 0 {
            duo_reactor::log_limited!(
                log::Level::Warn,
                "metrics: {} metric families left out of a target's text: their type differs \
                 from another process's",
                merged.conflicts
            );
        }
        merged.text
    }

    /// `/healthz`: `own` (this process's verdict: `None` if healthy, else why) and every
    /// target's; `200 ok` if all are healthy and there is at least one target.
    pub(crate) fn healthz(&self, own: Option<String>, wanted: Wanted<'_>) -> (bool, String) {
        let mut problems: Vec<String> = own.into_iter().collect();
        let fetched = self.fetch_all("/healthz", None, wanted);
        if fetched.is_empty() {
            problems.push("no process to aggregate serves an endpoint".into());
        }
        for (target, got, _) in fetched {
            let who = render_labels(&target.labels);
            match got {
                Ok((200, _)) => {}
                Ok((status, body)) => problems.push(format!(
                    "{{{who}}} {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                )),
                Err(e) => problems.push(format!("{{{who}}} unreachable: {e}")),
            }
        }
        if problems.is_empty() {
            (true, "ok\n".into())
        } else {
            (false, format!("{}\n", problems.join("\n")))
        }
    }

    /// `/debug/loops`: `{"self": {labels, loops}, "targets": [{labels, loops | error}]}`.
    pub(crate) fn loops(&self, own: Value, wanted: Wanted<'_>) -> String {
        let labels_json = |labels: &Labels| -> Value {
            Value::Object(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        let targets: Vec<Value> =
            self.fetch_all("/debug/loops", None, wanted)
                .into_iter()
                .map(|(target, got, _)| {
                    let labels = labels_json(&target.labels);
                    let loops = match got {
                        Ok((200, body)) => serde_json::from_slice::<Value>(&body)
                            .map_err(|e| format!("not JSON: {e}")),
                        Ok((status, _)) => Err(format!("status {status}")),
                        Err(e) => Err(e.to_string()),
                    };
                    match loops {
                        Ok(loops) => json!({ "labels": labels, "loops": loops }),
                        Err(error) => json!({ "labels": labels, "error": error }),
                    }
                })
                .collect();
        let all = json!({
            "self": { "labels": labels_json(&self.own_labels), "loops": own },
            "targets": targets,
        });
        let mut text = serde_json::to_string_pretty(&all).unwrap_or_else(|e| {
            log::error!("encoding /debug/loops failed: {e}");
            "{}".into()
        });
        text.push('\n');
        text
    }
}

/// `GET path` from `addr` over HTTP/1.1 with `Connection: close`, all before `deadline`,
/// given up as soon as the answer is no longer `wanted`.
fn fetch(
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
    wanted: Wanted<'_>,
) -> io::Result<Fetched> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(left()?.min(WANTED_POLL)))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Nothing within the poll: on unless the client left (or the deadline passed,
            // `left` at the top).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !wanted() {
                    return Err(io::Error::other("the client left"));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        if got.len() + n > MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response larger than {MAX_RESPONSE} bytes"),
            ));
        }
        got.extend_from_slice(&chunk[..n]);
    }
    parse_response(&got)
}

/// A whole response (read to the end of the stream): status and body.
fn parse_response(bytes: &[u8]) -> io::Result<Fetched> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(invalid("the response ended early".into())),
        Err(e) => return Err(invalid(format!("bad response: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    if response
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(invalid("a Transfer-Encoding is not supported".into()));
    }
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| invalid("bad Content-Length".into()))
        })
        .transpose()?;
    let body = &bytes[head..];
    let body = match length {
        Some(n) if body.len() < n => {
            return Err(invalid(format!(
                "the body ended after {} of {n} bytes",
                body.len()
            )))
        }
        Some(n) => &body[..n],
        None => body,
    };
    Ok((status, body.to_vec()))
}

/// `k="v",...`, values escaped as the text format wants.
pub(crate) fn render_labels(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// The merged exposition, and how many families of a part were left out because their
/// type differed from the first part's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The OpenMetrics text: one block per family (its metadata once, then the samples
    /// of every part in order), ended by one `# EOF`.
    pub text: String,
    /// Families of a part left out (their `# TYPE` differs from the first part's).
    pub conflicts: usize,
}

/// A metric family being merged.
#[derive(Default)]
struct Family {
    /// `# HELP`, `# TYPE` and `# UNIT` lines, from the first part that had the family.
    meta: Vec<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges OpenMetrics (or Prometheus) texts: every sample of a part gets the part's
/// labels; samples of the same family from different parts end up in one block, under
/// the metadata the first of them gave. A part's family whose type differs from the
/// merged one is left out (counted in [`Merged::conflicts`]). `# EOF` lines, blank lines
/// and other comments are dropped; one `# EOF` ends the result.
///
/// ```
/// use duo_metrics::aggregate::merge;
///
/// let worker = "# TYPE jobs counter\njobs_total 3\n# EOF\n";
/// let parts = vec![
///     (vec![("pid".to_owned(), "7".to_owned())], worker.to_owned()),
///     (vec![("pid".to_owned(), "8".to_owned())], worker.replace('3', "4")),
/// ];
/// let merged = merge(&parts);
/// assert_eq!(
///     merged.text,
///     "# TYPE jobs counter\njobs_total{pid=\"7\"} 3\njobs_total{pid=\"8\"} 4\n# EOF\n"
/// );
/// ```
pub fn merge(parts: &[(Labels, String)]) -> Merged {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut conflicts = 0;
    for (labels, text) in parts {
        let names: Vec<&str> = labels.iter().map(|(name, _)| name.as_str()).collect();
        let labels = render_labels(labels);
        // Families this part created (its metadata is kept), and those it may not add to.
        let mut created: HashSet<String> = HashSet::new();
        let mut refused: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(meta) = line.strip_prefix('#') {
                let mut words = meta.trim_start().splitn(3, ' ');
                let (kind, name) = (words.next().unwrap_or(""), words.next());
                let (Some(name), true) = (name, matches!(kind, "HELP" | "TYPE" | "UNIT")) else {
                    continue; // `# EOF` or a comment
                };
                if current.as_deref() != Some(name) {
                    current = Some(name.to_owned());
                    if !families.contains_key(name) {
                        order.push(name.to_owned());
                        families.insert(name.to_owned(), Family::default());
                        created.insert(name.to_owned());
                    }
                }
                let family = families.get_mut(name).expect("inserted above");
                if kind == "TYPE" {
                    let value = words.next().unwrap_or("").trim().to_owned();
                    match &family.kind {
                        Some(k) if *k != value => {
                            if refused.insert(name.to_owned()) {
                                conflicts += 1;
                            }
                        }
                        Some(_) => {}
                        None => family.kind = Some(value),
                    }
                }
                // Each kind of metadata once, from the part that created the family.
                let repeated = family
                    .meta
                    .iter()
                    .any(|m| m.trim_start_matches('#').trim_start().starts_with(kind));
                if created.contains(name) && !repeated {
                    family.meta.push(line.to_owned());
                }
                continue;
            }
            let name = match &current {
                Some(name) => name.clone(),
                // A sample before any metadata: a family of its own, untyped.
                None => {
                    let name = sample_name(line).to_owned();
                    if !families.contains_key(&name) {
                        order.push(name.clone());
                        families.insert(name.clone(), Family::default());
                    }
                    name
                }
            };
            if refused.contains(&name) {
                continue;
            }
            if let Some(family) = families.get_mut(&name) {
                family.samples.push(with_labels(line, &labels, &names));
            }
        }
    }
    let mut text = String::new();
    for name in &order {
        let family = &families[name];
        for line in family.meta.iter().chain(&family.samples) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str("# EOF\n");
    Merged { text, conflicts }
}

/// The metric name a sample line starts with.
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    &line[..end]
}

/// `line` (a sample) with `labels` (rendered) first in its label set. A label of the
/// sample's own whose name is one of `names` (the added labels' names) is renamed
/// `exported_NAME`, as Prometheus does with a target's labels that clash with its own: a
/// label set must not name a label twice, or the whole scrape is refused.
fn with_labels(line: &str, labels: &str, names: &[&str]) -> String {
    if labels.is_empty() {
        return line.to_owned();
    }
    let name = sample_name(line);
    let rest = &line[name.len()..];
    match rest.strip_prefix('{') {
        Some(inner) if inner.starts_with('}') => format!("{name}{{{labels}{inner}"),
        Some(inner) => format!("{name}{{{labels},{}", rename_taken(inner, names)),
        None => format!("{name}{{{labels}}}{rest}"),
    }
}

/// `inner` (a label set after its `{`, and the rest of the line) with each label named
/// in `taken` renamed `exported_NAME` (`exported_exported_NAME` if that is taken too, and
/// so on). Text it cannot parse as labels is kept as it is.
fn rename_taken(inner: &str, taken: &[&str]) -> String {
    let names = label_names(inner);
    let present: Vec<&str> = names.iter().map(|r| &inner[r.clone()]).collect();
    let mut out = String::with_capacity(inner.len() + 16);
    let mut copied = 0;
    for range in &names {
        let name = &inner[range.clone()];
        if !taken.contains(&name) {
            continue;
        }
        let mut renamed = format!("exported_{name}");
        while taken.contains(&renamed.as_str()) || present.contains(&renamed.as_str()) {
            renamed.insert_str(0, "exported_");
        }
        out.push_str(&inner[copied..range.start]);
        out.push_str(&renamed);
        copied = range.end;
    }
    out.push_str(&inner[copied..]);
    out
}

/// Where the label names of `inner` (a label set after its `{`) are, as far as it parses:
/// `name = "value"` pairs separated by commas (blanks allowed around each part), values
/// with backslash escapes, up to the closing `}`.
fn label_names(inner: &str) -> Vec<std::ops::Range<usize>> {
    let mut names = Vec::new();
    let mut at = 0;
    loop {
        let rest = &inner[at..];
        let start = at + (rest.len() - rest.trim_start().len());
        let Some(eq) = inner[start..].find('=') else {
            break;
        };
        let name = inner[start..start + eq].trim_end();
        if name.is_empty() || name.contains(['}', ',', '"']) {
            break;
        }
        names.push(start..start + name.len());
        let value = &inner[start + eq + 1..];
        let open = start + eq + 1 + (value.len() - value.trim_start().len());
        if !inner[open..].starts_with('"') {
            break;
        }
        // The closing quote: the first `"` not escaped by a backslash.
        let mut escaped = false;
        let close = inner[open + 1..].char_indices().find_map(|(i, c)| {
            let end = !escaped && c == '"';
            escaped = !escaped && c == '\\';
            end.then_some(open + 1 + i)
        });
        let Some(close) = close else {
            break;
        };
        let after = &inner[close + 1..];
        let sep = close + 1 + (after.len() - after.trim_start().len());
        if !inner[sep..].starts_with(',') {
            break;
        }
        at = sep + 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn samples_get_the_labels_of_their_part() {
        let p = &["p"][..];
        assert_eq!(with_labels("a 1", "p=\"1\"", p), "a{p=\"1\"} 1");
        assert_eq!(with_labels("a{} 1", "p=\"1\"", p), "a{p=\"1\"} 1");
        assert_eq!(
            with_labels("a_bucket{le=\"0.5\"} 2", "p=\"1\"", p),
            "a_bucket{p=\"1\",le=\"0.5\"} 2"
        );
        assert_eq!(with_labels("a 1", "", &[]), "a 1");
    }

    #[test]
    fn a_label_of_the_sample_s_own_with_an_added_name_is_renamed() {
        let p = &["p", "q"][..];
        assert_eq!(
            with_labels("a{x=\"1\",p=\"7\"} 1", "p=\"1\",q=\"2\"", p),
            "a{p=\"1\",q=\"2\",x=\"1\",exported_p=\"7\"} 1"
        );
        // Quotes, commas and braces inside values are not label boundaries.
        assert_eq!(
            with_labels("a{x=\"a\\\",p=}\",q=\"\"} 1", "p=\"1\"", p),
            "a{p=\"1\",x=\"a\\\",p=}\",exported_q=\"\"} 1"
        );
        // What does not parse is kept.
        assert_eq!(with_labels("a{p 1", "p=\"1\"", p), "a{p=\"1\",p 1");
        // Blanks around the parts; a tab before the value; a renamed label taken too.
        assert_eq!(
            with_labels("a{ p = \"1\" , x=\"2\" } 1", "q=\"0\"", &["p"]),
            "a{q=\"0\", exported_p = \"1\" , x=\"2\" } 1"
        );
        assert_eq!(with_labels("a\t1", "p=\"1\"", p), "a{p=\"1\"}\t1");
        assert_eq!(
            with_labels("a{exported_p=\"1\",p=\"2\"} 1", "p=\"0\"", &["p"]),
            "a{p=\"0\",exported_p=\"1\",exported_exported_p=\"2\"} 1"
        );
    }

    #[test]
    fn families_stay_whole_and_keep_the_first_metadata() {
        let one = "# HELP x X.\n# TYPE x counter\nx_total{loop=\"a\"} 1\n\
                   # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# EOF\n";
        let two = "# HELP h Other help.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 3\nh_sum 1\nh_count 3\n\
                   # HELP y Y.\n# TYPE y gauge\ny 4\n# EOF\n";
        let merged = merge(&[
            (labels(&[("pid", "1")]), one.to_owned()),
            (labels(&[("pid", "2")]), two.to_owned()),
        ]);
        assert_eq!(merged.conflicts, 0);
        assert_eq!(
            merged.text,
            "# HELP x X.\n# TYPE x counter\nx_total{pid=\"1\",loop=\"a\"} 1\n\
             # HELP h H.\n# TYPE h histogram\nh_bucket{pid=\"1\",le=\"+Inf\"} 2\nh_sum{pid=\"1\"} 0.5\n\
             h_count{pid=\"1\"} 2\nh_bucket{pid=\"2\",le=\"+Inf\"} 3\nh_sum{pid=\"2\"} 1\nh_count{pid=\"2\"} 3\n\
             # HELP y Y.\n# TYPE y gauge\ny{pid=\"2\"} 4\n# EOF\n"
        );
    }

    #[test]
    fn a_family_of_another_type_is_left_out() {
        let merged = merge(&[
            (labels(&[("pid", "1")]), "# TYPE x gauge\nx 1\n".to_owned()),
            (
                labels(&[("pid", "2")]),
                "# TYPE x counter\nx_total 1\n# TYPE z gauge\nz 1\n".to_owned(),
            ),
        ]);
        assert_eq!(merged.conflicts, 1);
        assert_eq!(
            merged.text,
            "# TYPE x gauge\nx{pid=\"1\"} 1\n# TYPE z gauge\nz{pid=\"2\"} 1\n# EOF\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            render_labels(&labels(&[("a", "x\"y\\z\n"), ("b", "1")])),
            "a=\"x\\\"y\\\\z\\n\",b=\"1\""
        );
    }

    #[test]
    fn responses_are_read_by_their_length() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(parse_response(ok).unwrap(), (200, b"abc".to_vec()));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc";
        assert!(parse_response(short).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nConte").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert!(parse_response(chunked).is_err());
        let closed = b"HTTP/1.1 503 Service Unavailable\r\n\r\nstuck";
        assert_eq!(parse_response(closed).unwrap(), (503, b"stuck".to_vec()));
    }
}
