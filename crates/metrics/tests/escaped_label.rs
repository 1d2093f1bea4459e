//! The application's own label values through `EscapedLabel`: a quote, a backslash or a
//! newline in a value is written escaped, so the scrape stays one well-formed text (with a
//! plain `String` value `prometheus_client` writes it as it is and the line breaks).

use duo_metrics::prometheus_client::metrics::{counter::Counter, family::Family};
use duo_metrics::{EscapedLabel, MetricsEndpoint};
use duo_testkit::http_get;

type Labels = [(&'static str, EscapedLabel); 1];

#[test]
fn label_values_a_user_controls_are_escaped_in_the_scrape() {
    let mut endpoint = MetricsEndpoint::new();
    let hits = Family::<Labels, Counter>::default();
    endpoint
        .registry_mut()
        .register("myapp_hits", "Hits by path", hits.clone());
    let raw = Family::<[(&'static str, String); 1], Counter>::default();
    endpoint
        .registry_mut()
        .register("myapp_raw", "Hits by path, unescaped", raw.clone());
    let hostile = "/a\"b\\c\nd";
    hits.get_or_create(&[("path", EscapedLabel::from(hostile))])
        .inc();
    hits.get_or_create(&[("path", EscapedLabel::from("/plain"))])
        .inc_by(2);
    raw.get_or_create(&[("path", hostile.to_owned())]).inc();
    let server = endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(server.local_addr(), "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.lines()
            .any(|l| l == r#"myapp_hits_total{path="/a\"b\\c\nd"} 1"#),
        "the escaped series:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"myapp_hits_total{path="/plain"} 2"#),
        "a value without anything to escape is as it was:\n{text}"
    );
    // What the type is for: the same value as a `String` is written raw, and splits its
    // sample over two lines (Prometheus would refuse the whole scrape).
    assert!(
        text.lines().any(|l| l == "myapp_raw_total{path=\"/a\"b\\c"),
        "prometheus_client writes a String value as it is:\n{text}"
    );
    server.stop().unwrap();
}
