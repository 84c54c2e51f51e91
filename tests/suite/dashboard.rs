//! The Grafana dashboard in the repository (`deploy/monitoring/`) asks only for metrics the
//! server exports: every metric named in a panel's query is in a live `/metrics` scrape.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use testkit::*;

/// The metric names a PromQL expression uses (`stockline_*` and `process_*`), histogram
/// series reduced to their family.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            current.push(c);
        } else {
            if current.starts_with("stockline_") || current.starts_with("process_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| current.strip_suffix(s))
                    .unwrap_or(&current);
                names.push(family.to_owned());
            }
            current.clear();
        }
    }
    names
}

#[tokio::test]
async fn every_query_of_the_dashboard_names_a_metric_the_server_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../deploy/monitoring/grafana/dashboards/stockline.json"
    ))
    .unwrap();
    let mut wanted = BTreeSet::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let named = metrics_in(expr);
            assert!(!named.is_empty(), "{expr} names no metric");
            wanted.extend(named);
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");

    // A server that did a little of everything the panels show.
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(5).await;
    let (status, _) = app.reserve(product, 1).await;
    assert_eq!(status, StatusCode::CREATED);
    let text = app.metrics().await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<_> = wanted
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for {missing:?}, not exported"
    );
    app.cleanup().await;
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metrics_in(
            "histogram_quantile(0.99, sum by (le) (rate(stockline_flush_duration_seconds_bucket[1m])))"
        ),
        vec!["stockline_flush_duration_seconds"]
    );
    assert_eq!(
        metrics_in("sum by (status) (rate(stockline_http_requests_total[1m]))"),
        vec!["stockline_http_requests_total"]
    );
}
