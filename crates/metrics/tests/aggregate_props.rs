//! Property tests of [`duo_metrics::aggregate::merge`]: whatever the workers send (valid
//! expositions, garbage, conflicting types), the merged text keeps the structure a
//! Prometheus scrape needs, and no valid sample is lost.

use std::collections::BTreeSet;

use duo_metrics::aggregate::{merge, Labels};
use proptest::prelude::*;

/// A line of a worker's text: mostly well-formed, sometimes not.
fn line() -> impl Strategy<Value = String> {
    let family = prop::sample::select(vec!["a", "b", "c_seconds", "d"]);
    let kind = prop::sample::select(vec!["counter", "gauge", "histogram"]);
    prop_oneof![
        (family.clone(), kind).prop_map(|(f, k)| format!("# TYPE {f} {k}")),
        family
            .clone()
            .prop_map(|f| format!("# HELP {f} Some help.")),
        family.clone().prop_map(|f| format!("# UNIT {f} seconds")),
        (family.clone(), 0u32..100).prop_map(|(f, v)| format!("{f}_total {v}")),
        (family.clone(), 0u32..100).prop_map(|(f, v)| format!("{f}{{loop=\"x\"}} {v}")),
        (family, 0u32..100).prop_map(|(f, v)| format!("{f}{{}} {v}")),
        Just("# EOF".to_owned()),
        Just(String::new()),
        "[ -~]{0,30}",
    ]
}

fn part() -> impl Strategy<Value = (Labels, String)> {
    (
        prop::collection::vec(("[a-z]{1,5}", "[ -~]{0,8}"), 0..3),
        prop::collection::vec(line(), 0..25),
    )
        .prop_map(|(labels, lines)| (labels, lines.join("\n")))
}

/// Lines that are samples (what `merge` keeps from a part unless its type conflicts).
fn samples(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

proptest! {
    #[test]
    fn the_merged_text_is_well_formed(parts in prop::collection::vec(part(), 0..5)) {
        let merged = merge(&parts);
        let text = &merged.text;
        prop_assert!(text.ends_with("# EOF\n"));
        prop_assert_eq!(text.matches("\n# EOF").count() + usize::from(text.starts_with("# EOF")), 1);
        let mut types = BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let family = rest.split(' ').next().unwrap_or_default().to_owned();
                prop_assert!(types.insert(family), "a family typed twice:\n{}", text);
            }
        }
        let given: usize = parts.iter().map(|(_, t)| samples(t)).sum();
        let kept = samples(text);
        prop_assert!(kept <= given);
        if merged.conflicts == 0 {
            prop_assert_eq!(kept, given, "a sample was lost:\n{}", text);
        }
    }
}
