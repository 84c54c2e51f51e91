//! `stockline`: the server around the in-memory core of `stockline-actors`.
//!
//! # Layout
//! - [`config`]: one [`Config`](config::Config) from flags and the environment.
//! - [`startup`]: [`launch`](startup::launch) starts the core and serves HTTP on a given
//!   listener until a shutdown future resolves; `main.rs` and the tests both use it.
//! - [`http`]: the axum router, one file per resource.
//! - [`state`]: [`AppState`](state::AppState), what every handler and the service reach.
//! - [`idempotency`]: `Idempotency-Key`: the first answer again, journaled with its change.
//! - [`auth`]: passwords, tokens, roles, TOTP, and the `Caller` extractor.
//! - [`events`]: events out: the outbox the flusher writes, the live stream, signed
//!   webhooks, NATS.
//! - [`store`]: PostgreSQL: migrations, the write-behind flusher, recovery.
//! - [`inventory`]: the service handlers call to change and read stock lines: served by
//!   this node's core, or sent typed to the owner of the lines' shard.
//! - [`cluster`]: cluster mode's distribution: shards by product, their leases in
//!   PostgreSQL, the shard protocol between nodes. It imports nothing of `http`, the
//!   service or the store.
//! - [`node`]: a cluster node's side of its leases: restore, answer, forget.
//! - [`catalog`]: the in-memory copy of the products the hot path reads.
//! - [`shops`]: shop memberships and the access policy every warehouse-touching handler
//!   asks.
//! - [`carts`]: customers' carts in memory, each behind its own lock; a held cart's
//!   reservation follows its items.
//! - [`orders`]: open orders in memory, each behind its own lock; expiry with the
//!   reservation.
//! - [`telemetry`]: logging set-up, request metrics and the console's last minute.
//! - [`background`]: the server's background tasks, stopped and waited for at shutdown.
//! - [`error`]: the contract's refusals, which the domain returns; `http` alone turns
//!   them into responses.
//!
//! # The flow of a request
//! axum routes it to a handler of [`http`], which parses the body into the core's types
//! (`Quantity`, ids) and checks the caller. What touches stock lines it runs as an
//! [`inventory::Operation`], here or on the lines' owner; the rest it serves through
//! [`AppState`](state::AppState). Either way the answer or refusal is in the status codes
//! and error body of API.md.

pub mod auth;
pub mod background;
pub mod carts;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod inventory;
pub mod node;
pub mod orders;
pub mod shops;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
