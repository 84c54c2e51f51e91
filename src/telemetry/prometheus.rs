//! The Prometheus recorder of one server and the `# HELP` of every series it exports
//! (`GET /metrics` renders it, `http::operations`).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// A recorder of this server's own (not a process-global one, so several servers in one
/// process, as in the tests, each report their own).
pub fn recorder() -> PrometheusRecorder {
    let recorder = PrometheusBuilder::new()
        // The busiest lines' series come and go; a gauge not set for a minute is dropped
        // (every other gauge is set at each scrape).
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(60)),
        )
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .expect("the buckets are not empty")
        .build_recorder();
    metrics::with_local_recorder(&recorder, describe);
    recorder
}

/// The `# HELP` of every series this server exports (Prometheus conventions: counters end
/// in `_total`, durations are histograms in seconds).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "stockline_http_requests_total",
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(
        "stockline_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a request once its body was read, by method and route template."
    );
    describe_gauge!("stockline_lines", "Stock lines in memory.");
    describe_gauge!(
        "stockline_lines_active",
        "Stock lines in memory with a running actor."
    );
    describe_counter!(
        "stockline_line_loads_total",
        "Stock lines loaded from the store on first touch."
    );
    describe_counter!(
        "stockline_line_load_queries_total",
        "Queries that loaded stock lines (many first touches share one)."
    );
    describe_counter!(
        "stockline_line_evictions_total",
        "Stock lines that left memory (idle, holding nothing, written)."
    );
    describe_counter!(
        "stockline_line_activations_total",
        "Times a stock line was given an actor (on demand, or restarted)."
    );
    describe_counter!(
        "stockline_line_passivations_total",
        "Times a stock line gave up its actor for being idle."
    );
    describe_gauge!(
        "stockline_products_indexed",
        "Products whose warehouses are known in memory."
    );
    describe_gauge!(
        "stockline_line_calls_in_flight",
        "Calls to stock lines sent and not yet answered (all mailboxes together)."
    );
    describe_gauge!(
        "stockline_line_messages_handled",
        "Messages handled by the stock lines now in memory (falls as lines leave memory)."
    );
    describe_gauge!(
        "stockline_line_restarts",
        "Restarts by their supervisor of the stock lines now in memory."
    );
    describe_gauge!(
        "stockline_reservations_pending",
        "Reservations holding stock now."
    );
    describe_gauge!(
        "stockline_journal_pending_records",
        "Journal records appended and not yet written to PostgreSQL (the backlog)."
    );
    describe_counter!(
        "stockline_flush_batches_total",
        "Write-behind batches written to PostgreSQL."
    );
    describe_counter!(
        "stockline_flush_records_total",
        "Journal records written to PostgreSQL."
    );
    describe_counter!(
        "stockline_flush_failures_total",
        "Write-behind batches that failed (retried)."
    );
    describe_counter!(
        "stockline_flush_refused_batches_total",
        "Write-behind batches the cluster fence refused whole (another node owns their shards)."
    );
    describe_counter!(
        "stockline_cluster_reservations_total",
        "Reservations across shards this node coordinated, by outcome (cluster mode)."
    );
    describe_counter!(
        "stockline_cluster_hop_operations_total",
        "Operations this node sent to a shard's owner over NATS (cluster mode)."
    );
    describe_counter!(
        "stockline_cluster_hop_messages_total",
        "NATS messages that carried them: fewer once operations for one node travel together."
    );
    describe_gauge!(
        "stockline_cluster_shards_served",
        "Shards this node serves now (cluster mode; 0 for a single process)."
    );
    describe_counter!(
        "stockline_dead_letters_total",
        "Records PostgreSQL refused for their data, kept in the dead_letters table."
    );
    describe_gauge!(
        "stockline_store_healthy",
        "1 while the last write to PostgreSQL succeeded, else 0."
    );
    describe_counter!(
        "stockline_reservations_total",
        "Reservations by outcome: created, refused (for stock or load), committed, released, expired."
    );
    describe_histogram!(
        "stockline_flush_duration_seconds",
        Unit::Seconds,
        "Time to write one write-behind batch to PostgreSQL."
    );
    describe_histogram!(
        "stockline_durable_wait_seconds",
        Unit::Seconds,
        "Time a sync-mode request waited for its change to be durable."
    );
    describe_gauge!(
        "stockline_line_mailbox_depth",
        "Calls in flight now to each of the ten lines that handled the most messages (by warehouse and product)."
    );
    describe_gauge!(
        "stockline_event_streams",
        "Event streams (GET /events/stream) open now."
    );
    describe_gauge!(
        "stockline_events_newest_id",
        "The id of the newest event written to the outbox."
    );
    describe_counter!(
        "stockline_nats_events_published_total",
        "Events published to NATS and confirmed by its server (a page sent again counts again)."
    );
    metrics_process::Collector::default().describe();
}
