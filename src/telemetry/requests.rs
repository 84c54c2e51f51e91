//! Per-request metrics (the HTTP middleware that records them is `http::operations`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use dashmap::DashMap;
use metrics_exporter_prometheus::PrometheusRecorder;

/// Per-request metrics: the Prometheus counter and histogram of each (method, route
/// template, status), registered once and kept, and the console's last minute.
pub struct RequestMetrics {
    recorder: Arc<PrometheusRecorder>,
    pub traffic: super::traffic::Traffic,
    /// Bounded: routes are the router's templates (or `unmatched`), methods the standard
    /// ones (or `OTHER`), statuses at most a few hundred.
    handles: DashMap<(&'static str, String, u16), (metrics::Counter, metrics::Histogram)>,
}

impl RequestMetrics {
    pub fn new(recorder: Arc<PrometheusRecorder>) -> Self {
        Self {
            recorder,
            traffic: Default::default(),
            handles: DashMap::new(),
        }
    }

    pub fn record(&self, method: &'static str, route: &str, status: StatusCode, elapsed: Duration) {
        self.traffic.record(elapsed, status.is_server_error());
        let key = (method, route.to_owned(), status.as_u16());
        let handles = match self.handles.get(&key) {
            Some(handles) => handles.clone(),
            None => {
                let handles = metrics::with_local_recorder(&*self.recorder, || {
                    let route = key.1.clone();
                    (
                        metrics::counter!("stockline_http_requests_total",
                            "method" => method, "route" => route.clone(), "status" => key.2.to_string()),
                        metrics::histogram!("stockline_http_request_duration_seconds",
                            "method" => method, "route" => route),
                    )
                });
                self.handles.entry(key).or_insert(handles).clone()
            }
        };
        handles.0.increment(1);
        handles.1.record(elapsed.as_secs_f64());
    }
}
