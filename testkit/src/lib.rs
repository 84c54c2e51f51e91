//! What stockline's tests and benches share, so that each starts the server, its database
//! and its clients one way: the server in-process on port 0 over a database of its own
//! ([`TestApp`]), the real binary as a child ([`binary`]), a cluster of real nodes
//! ([`cluster`]), a headless browser ([`browser`]), a TCP proxy that can cut a connection
//! ([`proxy`]), and a typed client that answers the API's own types ([`api`]).
//!
//! A dev-dependency of the server crate: its integration tests and benches link it.

pub mod api;
mod app;
mod binary;
pub mod browser;
pub mod carts;
pub mod cluster;
mod database;
pub mod proxy;

pub use app::{TestApp, Tuning, config, tuned_config};
pub use binary::{ADMIN_ENV, binary, start_binary, start_binary_app, start_binary_logging};
pub use database::{
    database_base, database_url, drop_database, drop_database_on, empty_database_on,
    fresh_database, fresh_pool, fresh_pool_on,
};

use reqwest::StatusCode;
use serde_json::Value;

/// The admin every kit server creates at start.
pub const ADMIN_EMAIL: &str = "admin@stockline.test";
pub const ADMIN_PASSWORD: &str = "admin-password";

/// Held by every test whose servers publish events to the shared NATS server: they all
/// publish on `stockline.events.*`, and event ids of two databases can be equal, so two
/// such tests at once (in this one test binary) would take each other's events for theirs.
pub static EVENTS_ON_NATS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A ledger entry receiving `quantity` on the line `key`, as the journal holds it.
pub fn movement(key: stockline_actors::LineKey, quantity: i64) -> stockline_actors::Record {
    use stockline_actors::journal::{MovementKind, MovementRecord, Reference};
    stockline_actors::Record::Movement(MovementRecord {
        safety_stock_after: 0,
        key,
        kind: MovementKind::Adjust,
        quantity,
        on_hand_after: quantity as u64,
        reserved_after: 0,
        reference: Reference::Reason("receipt".into()),
        note: None,
        at: chrono::Utc::now(),
    })
}

/// Asserts the contract's error body and answers its code.
pub fn error_code(status: StatusCode, body: &Value, expected: StatusCode) -> String {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].is_string() && error["details"].is_object(),
        "not the contract's error body: {body}"
    );
    error["code"].as_str().unwrap().to_owned()
}
