//! `GET /metrics` in the Prometheus text format, and the middleware that counts and times
//! every request for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::Method;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::AppState;
use crate::telemetry::requests::RequestMetrics;

/// `GET /metrics`, outside `/api/v1`.
pub fn metrics_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// The lines whose mailbox depth is exported, the busiest first: a bounded label set.
const BUSIEST_LINES: usize = 10;

/// A method's label: the standard ones by name, any other as `OTHER` (clients choose
/// methods; the label set must stay bounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Counts and times every answered request by its route template (bounded: a path no
/// route matched counts as `unmatched`), outside any handler.
pub async fn track(
    State(requests): State<Arc<RequestMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    requests.record(method, route, response.status(), started.elapsed());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.core.registry();
    let survey = registry.survey(BUSIEST_LINES);
    let counts = registry.stats();
    let flush = &state.store.flush;
    metrics::with_local_recorder(&*state.metrics, || {
        metrics::gauge!("stockline_lines").set(survey.lines as f64);
        metrics::gauge!("stockline_lines_active").set(survey.active as f64);
        metrics::counter!("stockline_line_loads_total").absolute(counts.lines_loaded);
        metrics::counter!("stockline_line_load_queries_total").absolute(counts.load_queries);
        metrics::counter!("stockline_line_evictions_total").absolute(counts.evictions);
        metrics::counter!("stockline_line_activations_total").absolute(counts.activations);
        metrics::counter!("stockline_line_passivations_total").absolute(counts.passivations);
        metrics::gauge!("stockline_products_indexed").set(counts.products_indexed as f64);
        metrics::gauge!("stockline_line_calls_in_flight").set(registry.in_flight() as f64);
        // Sums over the lines in memory: they fall when lines leave memory, so gauges.
        metrics::gauge!("stockline_line_messages_handled").set(survey.messages_handled as f64);
        metrics::gauge!("stockline_line_restarts").set(survey.restarts as f64);
        metrics::gauge!("stockline_reservations_pending")
            .set(state.core.reservations().pending_count() as f64);
        metrics::gauge!("stockline_journal_pending_records")
            .set(state.store.buffer.backlog() as f64);
        metrics::counter!("stockline_flush_batches_total")
            .absolute(flush.batches_flushed.load(Ordering::Relaxed));
        metrics::counter!("stockline_flush_records_total")
            .absolute(flush.records_flushed.load(Ordering::Relaxed));
        metrics::counter!("stockline_flush_failures_total")
            .absolute(flush.flush_failures.load(Ordering::Relaxed));
        metrics::counter!("stockline_dead_letters_total")
            .absolute(flush.dead_letters.load(Ordering::Relaxed));
        metrics::counter!("stockline_flush_refused_batches_total")
            .absolute(flush.refused_batches.load(Ordering::Relaxed));
        let served = state
            .cluster
            .as_ref()
            .map_or(0, |c| c.leases().served().len());
        metrics::gauge!("stockline_cluster_shards_served").set(served as f64);
        if let Some(cluster) = &state.cluster {
            let (operations, messages) = cluster.routes.hop_counts();
            metrics::counter!("stockline_cluster_hop_operations_total").absolute(operations);
            metrics::counter!("stockline_cluster_hop_messages_total").absolute(messages);
            for (outcome, count) in cluster.sagas.counts() {
                metrics::counter!("stockline_cluster_reservations_total", "outcome" => outcome.as_str())
                    .absolute(count);
            }
        }
        metrics::gauge!("stockline_store_healthy").set(if flush.healthy.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
        let outcomes = state.core.reservations().outcomes();
        for (outcome, count) in [
            ("created", outcomes.created),
            ("refused", outcomes.refused),
            ("committed", outcomes.committed),
            ("released", outcomes.released),
            ("expired", outcomes.expired),
        ] {
            metrics::counter!("stockline_reservations_total", "outcome" => outcome).absolute(count);
        }
        // The busiest lines by messages handled (a stable set), with their depth now.
        for (key, depth) in &survey.busiest {
            metrics::gauge!("stockline_line_mailbox_depth",
                "warehouse_id" => key.warehouse_id.to_string(), "product_id" => key.product_id.to_string())
            .set(*depth as f64);
        }
        let events = &state.events;
        metrics::gauge!("stockline_event_streams").set(events.hub.streams() as f64);
        metrics::gauge!("stockline_events_newest_id").set(*events.hub.newest().borrow() as f64);
        metrics::counter!("stockline_nats_events_published_total")
            .absolute(events.nats_published.load(Ordering::Relaxed));
        metrics_process::Collector::default().collect();
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.handle().render(),
    )
}
