//! A line-by-line syntax check of a target's exposition, before it is merged: a line a
//! Prometheus server cannot parse (an HTML page, a cut line, metadata written with other
//! blanks than [`merge`](crate::aggregate::merge) reads) makes it refuse the whole merged
//! scrape, every other process's samples with it.
//!
//! The merged text is served as OpenMetrics, which a Prometheus server reads with its
//! OpenMetrics parser: stricter than the Prometheus text format (one blank between the
//! parts of a sample and none inside a label set, no trailing comma, no `untyped`), and
//! it refuses a sample whose label set names a label twice (`__name__` included: the
//! metric name is that label), a `# UNIT` that is not the name's suffix, a `# HELP`
//! without its text, an exemplar on anything but a counter's `_total` or a histogram's
//! `_bucket`. Each rule here was checked against a Prometheus server (2.42).

/// Metric types a `# TYPE` line may give (OpenMetrics').
const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "stateset",
    "info",
    "unknown",
];

/// `Ok` if every line of `text` is blank, a comment (metadata written as `merge` reads
/// it and OpenMetrics wants it: `# KIND NAME ...` with single blanks) or a sample (`name`,
/// an optional label set, a blank and a number, optionally a blank and a timestamp, and
/// optionally ` # ` and an exemplar); else the first line that is not, and why.
pub(crate) fn check(text: &str) -> Result<(), String> {
    // The type the last `# TYPE` line gave (whether a sample may carry an exemplar).
    let mut kind_now = "";
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| {
            let shown: String = line.chars().take(60).collect();
            Err(format!("line {}: {why}: {shown:?}", i + 1))
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let kind = words.next().unwrap_or("");
            if !matches!(kind, "HELP" | "TYPE" | "UNIT") {
                continue; // `# EOF` or a comment: dropped by `merge`
            }
            if !comment.starts_with(' ') || comment.starts_with("  ") {
                return bad("metadata not written `# KIND NAME`");
            }
            let name = words.next().unwrap_or("");
            if !is_name(name) {
                return bad("metadata without a valid metric name");
            }
            // HELP and UNIT: a blank after the name, then the text (which may be empty).
            let Some(value) = words.next() else {
                return bad("metadata without its text");
            };
            match kind {
                "TYPE" if !TYPES.contains(&value) => return bad("an unknown metric type"),
                "TYPE" => kind_now = value,
                "UNIT" if !value.is_empty() && !name.ends_with(&format!("_{value}")) => {
                    return bad("a unit that is not the metric name's suffix")
                }
                _ => {}
            }
            continue;
        }
        if let Err(why) = sample(line, kind_now) {
            return bad(why);
        }
    }
    Ok(())
}

/// A metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// A number as a Prometheus server reads one (Go's `strconv.ParseFloat`): what Rust
/// parses, but for a sign before `nan`, which Go refuses (`-nan` is what C's printf
/// writes for a negative NaN).
fn is_number(word: &str) -> bool {
    let unsigned = word.strip_prefix(['+', '-']);
    word.parse::<f64>().is_ok() && !unsigned.is_some_and(|w| w.eq_ignore_ascii_case("nan"))
}

/// Checks a sample line, `kind` the type of the family it is under.
fn sample(line: &str, kind: &str) -> Result<(), &'static str> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    if !is_name(name) {
        return Err("not a sample: no metric name");
    }
    let mut rest = &line[end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = label_set(inner, true)?;
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("not one blank before the value")?;
    let (number, after) = split_word(value);
    if !is_number(number) {
        return Err("no number for the value");
    }
    // Then a timestamp, an exemplar, both or neither (`merge` keeps them as they are).
    if after.is_empty() {
        return Ok(());
    }
    let (word, rest) = split_word(
        after
            .strip_prefix(' ')
            .ok_or("not one blank after the value")?,
    );
    let rest = match word {
        "#" => Some(rest),
        timestamp if is_number(timestamp) && rest.is_empty() => None,
        timestamp if is_number(timestamp) => match rest.strip_prefix(' ').map(split_word) {
            Some(("#", rest)) => Some(rest),
            _ => return Err("more after the timestamp than an exemplar"),
        },
        _ => return Err("more after the value than a timestamp and an exemplar"),
    };
    match rest {
        None => Ok(()),
        Some(_) if !exemplar_allowed(name, kind) => {
            Err("an exemplar on other than a counter's _total or a histogram's _bucket")
        }
        Some(rest) => exemplar(
            rest.strip_prefix(' ')
                .ok_or("an exemplar without a label set")?,
        ),
    }
}

/// Whether a sample `name` of a family of type `kind` may carry an exemplar.
fn exemplar_allowed(name: &str, kind: &str) -> bool {
    match kind {
        "counter" => name.ends_with("_total"),
        "histogram" | "gaugehistogram" => name.ends_with("_bucket"),
        _ => false,
    }
}

/// The text up to the first blank (a space, or a tab: not one blank), and what follows.
fn split_word(text: &str) -> (&str, &str) {
    text.split_at(text.find([' ', '\t']).unwrap_or(text.len()))
}

/// Checks an exemplar after its `# `: a label set, a value, an optional timestamp, each
/// after one blank.
fn exemplar(text: &str) -> Result<(), &'static str> {
    let inner = text
        .strip_prefix('{')
        .ok_or("an exemplar without a label set")?;
    let rest = label_set(inner, false)?;
    let (value, rest) = split_word(
        rest.strip_prefix(' ')
            .ok_or("an exemplar without a value")?,
    );
    if !is_number(value) {
        return Err("an exemplar without a value");
    }
    if rest.is_empty() {
        return Ok(());
    }
    match rest.strip_prefix(' ').map(split_word) {
        Some((timestamp, "")) if is_number(timestamp) => Ok(()),
        _ => Err("more after an exemplar than its value and timestamp"),
    }
}

/// Checks a label set after its `{` (`name="value"` pairs separated by commas, with no
/// blanks and no trailing comma, values with the escapes `\\`, `\"` and `\n`, each name
/// once and, in a sample's (`sample`), none `__name__`); returns what follows its `}`.
fn label_set(mut inner: &str, sample: bool) -> Result<&str, &'static str> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(rest) = inner.strip_prefix('}') {
        return Ok(rest);
    }
    loop {
        let eq = inner.find('=').ok_or("a label without a value")?;
        let name = &inner[..eq];
        if !is_name(name) {
            return Err("a label without a valid name (or blanks in the label set)");
        }
        if names.contains(&name) || (sample && name == "__name__") {
            return Err("a label named twice");
        }
        names.push(name);
        let quoted = inner[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value not quoted")?;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in quoted.char_indices() {
            if escaped && !matches!(c, '\\' | '"' | 'n') {
                return Err("an escape other than \\\\, \\\" and \\n in a label value");
            }
            if !escaped && c == '"' {
                close = Some(i);
                break;
            }
            escaped = !escaped && c == '\\';
        }
        inner = &quoted[close.ok_or("a label value not closed")? + 1..];
        if let Some(rest) = inner.strip_prefix('}') {
            return Ok(rest);
        }
        inner = inner
            .strip_prefix(',')
            .ok_or("labels not separated by commas")?;
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn what_prometheus_client_writes_passes() {
        let text = "# HELP a_total A \"quoted\" help.\n# TYPE a counter\n\
                    a_total{loop=\"x\\\"y\\\\z\\n\",le=\"+Inf\"} 1 # {trace_id=\"a\"} 1 17\n\
                    # TYPE b_seconds gauge\n# UNIT b_seconds seconds\n# HELP b_seconds \n\
                    b_seconds 1.5e-3\nb_seconds{} -Inf\nb_seconds{x=\"1\"} NaN 1700000000\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 3 # {trace_id=\"a\"} 0.5\n\
                    # a comment\n\n# EOF\n";
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn garbage_cut_lines_and_odd_metadata_are_found() {
        for bad in [
            "<html>hi</html>",
            "a_total{loop=\"x",
            "a_total{loop=\"x\"}",
            "a_total{loop=\"x\"} ",
            "a_total{loop=\"x\"}1",
            "a_total one",
            "a_total{loop} 1",
            "a_total{1x=\"a\"} 1",
            "a_total{a=\"1\" b=\"2\"} 1",
            " a_total 1",
            "# TYPE  a counter",
            "#TYPE a counter",
            "# TYPE a widget",
            "# HELP 1a help",
            // Anything after the value but a timestamp and an exemplar: Prometheus
            // refuses the whole scrape for it.
            "a_total 1 garbage",
            "a_total 1 1700000000 more",
            "a_total 1 # trace",
            "a_total 1 # {trace_id=\"a\"}",
            "a_total 1 # {trace_id=\"a\"} 0.5 1 2",
            // A sign before NaN: Go's ParseFloat refuses it.
            "a_total -nan",
            "a_total 1 +NaN",
            // What the Prometheus text format allows and OpenMetrics does not (a
            // Prometheus server refuses the merged scrape, served as OpenMetrics).
            "a_total{ loop=\"x\"} 1",
            "a_total{loop = \"x\"} 1",
            "a_total{loop=\"x\",} 1",
            "a_total\t1",
            "a_total  1",
            "a_total 1\t17",
            "a_total 1 17 ",
            "a_total 1 #  {trace_id=\"a\"} 1",
            "# TYPE a untyped",
            "# TYPE a counter ",
            // What no parser takes: a label named twice, `__name__` as a label, an
            // escape the format does not have, a unit that is not the name's suffix,
            // HELP without its text, an exemplar on other than a counter's `_total`.
            "a_total{x=\"1\",x=\"2\"} 1",
            "a_total{__name__=\"x\"} 1",
            "a_total{x=\"\\q\"} 1",
            "# UNIT a seconds",
            "# UNIT a_xseconds seconds",
            "# HELP a",
            "a_created 1 # {trace_id=\"a\"} 1",
        ] {
            assert!(
                check(&format!("# TYPE a counter\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }
}
