//! The metric names `docs/observability.md` lists and the ones a scrape exports, for the
//! tests that hold the page and the endpoints to each other.

use std::collections::BTreeSet;
use std::path::Path;

/// The text of `docs/observability.md`.
///
/// # Panics
///
/// If the page cannot be read (a test helper: the repository is not complete).
pub fn observability_page() -> String {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/observability.md");
    std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()))
}

/// The metric names of the page's tables (rows starting with a backticked name) that
/// start with `prefix`.
pub fn documented_metrics(page: &str, prefix: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// The names, as the page writes them (a counter `x` as `x_total`, a histogram by its
/// family name), of the families in the exposition `text` that start with `prefix` and
/// have at least one sample.
pub fn exported_metrics(text: &str, prefix: &str) -> BTreeSet<String> {
    let has_sample = |name: &str| {
        text.lines().any(|l| {
            !l.starts_with('#')
                && l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| name.starts_with(prefix))
        .filter_map(|(name, ty)| {
            let (listed, sample) = match ty {
                "counter" => (format!("{name}_total"), format!("{name}_total")),
                "histogram" => (name.to_owned(), format!("{name}_count")),
                _ => (name.to_owned(), name.to_owned()),
            };
            has_sample(&sample).then_some(listed)
        })
        .collect()
}

/// Asserts that the families of the exposition `text` starting with `prefix` that have a
/// sample are exactly the ones `docs/observability.md` lists with that prefix.
///
/// # Panics
///
/// When they differ (a test's failure), naming both differences, with the scrape.
pub fn assert_metrics_documented(text: &str, prefix: &str) {
    let exported = exported_metrics(text, prefix);
    let documented = documented_metrics(&observability_page(), prefix);
    let unlisted: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "exported but not in docs/observability.md: {unlisted:?}; listed there but not \
         exported: {missing:?}\n{text}"
    );
}

/// The value of the sample written exactly as `series` (the name, then the labels as the
/// exposition writes them, if any) in the exposition `text`; `None` if there is none.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The sum of every sample of the family `name` in the exposition `text`, whatever its
/// labels (0 without one).
pub fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once("} ").map(|(_, v)| v),
            None => rest.strip_prefix(' '),
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}
