//! A line-by-line syntax check of a target's exposition, before it is merged: a line a
//! Prometheus server cannot parse (an HTML page, a cut line, metadata written with other
//! blanks than [`merge`](crate::aggregate::merge) reads) makes it refuse the whole merged
//! scrape, every other process's samples with it.

/// Metric types a `# TYPE` line may give (OpenMetrics', and the Prometheus text format's
/// `untyped`).
const TYPES: [&str; 9] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "stateset",
    "info",
    "unknown",
    "untyped",
];

/// `Ok` if every line of `text` is blank, a comment (metadata written as `merge` reads
/// it: `# KIND NAME ...` with single spaces) or a sample (`name`, an optional label set,
/// blanks, a number, and optionally more after a blank: a timestamp, an exemplar); else
/// the first line that is not, and why.
pub(crate) fn check(text: &str) -> Result<(), String> {
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
            if kind == "TYPE" && !TYPES.contains(&words.next().unwrap_or("").trim()) {
                return bad("an unknown metric type");
            }
            continue;
        }
        if let Err(why) = sample(line) {
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

/// Checks a sample line.
fn sample(line: &str) -> Result<(), &'static str> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if !is_name(&line[..end]) {
        return Err("not a sample: no metric name");
    }
    let mut rest = &line[end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = label_set(inner)?;
    }
    let value = rest.trim_start_matches([' ', '\t']);
    if value.len() == rest.len() {
        return Err("no blank before the value");
    }
    let (number, after) = split_word(value);
    if !is_number(number) {
        return Err("no number for the value");
    }
    // Then a timestamp, an exemplar, both or neither (`merge` keeps them as they are).
    let (word, rest) = split_word(after);
    match word {
        "" => Ok(()),
        "#" => exemplar(rest),
        timestamp if is_number(timestamp) => match split_word(rest) {
            ("", _) => Ok(()),
            ("#", rest) => exemplar(rest),
            _ => Err("more after the timestamp than an exemplar"),
        },
        _ => Err("more after the value than a timestamp and an exemplar"),
    }
}

/// The first blank-separated word of `text` (after its blanks) and what follows it.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    text.split_at(text.find([' ', '\t']).unwrap_or(text.len()))
}

/// Checks an exemplar after its `#`: a label set, a value, an optional timestamp.
fn exemplar(text: &str) -> Result<(), &'static str> {
    let labels = text.trim_start_matches([' ', '\t']);
    let inner = labels
        .strip_prefix('{')
        .ok_or("an exemplar without a label set")?;
    let (value, rest) = split_word(label_set(inner)?);
    if !is_number(value) {
        return Err("an exemplar without a value");
    }
    match split_word(rest) {
        ("", _) => Ok(()),
        (timestamp, rest) if is_number(timestamp) && split_word(rest).0.is_empty() => Ok(()),
        _ => Err("more after an exemplar than its value and timestamp"),
    }
}

/// Checks a label set after its `{` (`name="value"` pairs separated by commas, blanks
/// around the parts, a trailing comma, values with backslash escapes); returns what
/// follows its `}`.
fn label_set(mut inner: &str) -> Result<&str, &'static str> {
    loop {
        inner = inner.trim_start_matches([' ', '\t']);
        if let Some(rest) = inner.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = inner.find('=').ok_or("a label without a value")?;
        if !is_name(inner[..eq].trim_end_matches([' ', '\t'])) {
            return Err("a label without a valid name");
        }
        let value = inner[eq + 1..].trim_start_matches([' ', '\t']);
        let quoted = value.strip_prefix('"').ok_or("a label value not quoted")?;
        let mut escaped = false;
        let close = quoted
            .char_indices()
            .find_map(|(i, c)| {
                let end = !escaped && c == '"';
                escaped = !escaped && c == '\\';
                end.then_some(i)
            })
            .ok_or("a label value not closed")?;
        inner = quoted[close + 1..].trim_start_matches([' ', '\t']);
        match inner.strip_prefix(',') {
            Some(more) => inner = more,
            None if inner.starts_with('}') => {}
            None => return Err("labels not separated by commas"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn what_prometheus_client_writes_passes() {
        let text = "# HELP a_total A \"quoted\" help.\n# TYPE a counter\n\
                    a_total{loop=\"x\\\"y\\\\z\\n\",le=\"+Inf\"} 1\n# TYPE b gauge\n# UNIT b seconds\n\
                    b 1.5e-3\nb{} -Inf\nb{x=\"1\",} NaN 1700000000\n\
                    h_bucket{le=\"1\"} 3 # {trace_id=\"a\"} 0.5\n# a comment\n\n# EOF\n";
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
        ] {
            assert!(
                check(&format!("# TYPE a counter\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }
}
