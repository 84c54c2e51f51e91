//! Every test of the server, in one binary: one module per area, over `testkit`, the kit
//! tests and benches share (the app on port 0 over a database of its own, the real binary,
//! the cluster of real nodes, the browser, the TCP proxy, a typed client). One binary
//! links the server once, where a binary per file linked it 32 times.
//!
//! `cargo test --test suite cluster_nodes::` runs one area.

mod api_auth;
mod api_catalog;
mod api_concurrency;
mod api_idempotency;
mod api_operations;
mod api_orders;
mod api_reservations;
mod api_stock;
mod bad_input;
mod carts;
mod cluster_fence;
mod cluster_leases;
mod cluster_node;
mod cluster_nodes;
mod cluster_routing;
mod console;
mod crash_cycles;
mod dashboard;
mod deploy;
mod durability;
mod events;
mod hangup;
mod hardening;
mod nats;
mod openapi;
mod pipeline;
mod poison;
mod request_ids;
mod serve;
mod shops;
mod virtual_lines;
mod webhooks;
