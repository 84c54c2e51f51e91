//! Events out (API.md v1.1 "Events"): what changed, pushed to whoever listens.
//!
//! The flusher derives the events of each batch from its records (`store::derive`) and writes
//! them into the `events` table in the batch's own transaction (`store::outbox`), so an
//! event exists if and only if its change does. An event's id is made of the journal
//! number of the record it comes from, so ids increase in the order the changes were made
//! and a batch written twice writes its events once. Once a batch has committed, its
//! events go to the [`hub`](hub::EventHub): live to every open stream, and as a wake-up to
//! the readers that work from the table ([`webhooks`], [`nats`]). Every reader keeps its
//! own position in the table and reads on from it after a restart, so none of them can
//! miss an event, and a slow one holds up nobody else.
//!
//! - [`hub`]: the live fan-out (a bounded broadcast) and the newest event id.
//! - [`read`]: pages of the table for a caller (filters by type and shop).
//! - [`webhooks`]: signed deliveries with retries, state in PostgreSQL.
//! - [`nats`]: every event to `stockline.events.<type>`.
//! - [`retention`]: events older than the retention are pruned.
//! - [`sequence`]: in a cluster, every node's events numbered in one order.
//! - [`lead`]: in a cluster, the one node that delivers webhooks and publishes to NATS.

pub mod hub;
pub mod lead;
pub mod nats;
pub mod read;
pub mod retention;
pub mod sequence;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::background::Background;
use crate::config::Config;
use hub::EventHub;
use webhooks::Webhooks;

/// Everything of events a running server holds.
pub struct Events {
    /// Whether batches write events at all (`STOCKLINE_EVENTS`).
    pub enabled: bool,
    pub hub: Arc<EventHub>,
    pub webhooks: Arc<Webhooks>,
    /// One permit per open stream (`STOCKLINE_MAX_EVENT_STREAMS`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Open streams per caller (user), at most [`STREAMS_PER_CALLER`] each: one account
    /// cannot take every stream and leave the operators none.
    pub streams_by_caller: Arc<dashmap::DashMap<i64, usize>>,
    /// Events published to NATS since start.
    pub nats_published: Arc<AtomicU64>,
    /// Cancelled when the server starts shutting down: open streams end then (a stream
    /// never ends by itself, and shutdown waits for every request).
    pub closing: CancellationToken,
}

/// Streams one caller may have open at once.
pub const STREAMS_PER_CALLER: usize = 32;

/// One open stream of a caller, counted until dropped.
pub struct CallerStream {
    caller: i64,
    open: Arc<dashmap::DashMap<i64, usize>>,
}

impl Drop for CallerStream {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.caller, |_, open| {
            *open -= 1;
            *open == 0
        });
    }
}

impl Events {
    /// The hub, to hand to the flusher before anything is written.
    pub async fn hub(db: &PgPool, config: &Config) -> Result<Arc<EventHub>, sqlx::Error> {
        let newest = read::newest(db).await?;
        let ring = config.event_stream_buffer as usize;
        Ok(Arc::new(match config.cluster_nats_url {
            None => EventHub::new(newest, ring),
            Some(_) => EventHub::sequenced(newest, ring),
        }))
    }

    /// Starts the readers of the outbox (webhooks, NATS) and the pruning, and in a cluster
    /// the tail and the competition for the lead (whose node sequences); all are tasks of
    /// `background`.
    pub async fn start(
        db: &PgPool,
        config: &Config,
        hub: Arc<EventHub>,
        background: &Background,
    ) -> Result<Self, sqlx::Error> {
        let in_cluster = config.cluster_nats_url.is_some();
        let policy = webhooks::Policy {
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            retry_base: Duration::from_millis(config.webhook_retry_base_ms),
            retry_for: Duration::from_secs(config.webhook_retry_for_secs),
        };
        let targets = webhooks::Targets::system(config.webhook_allow_private);
        let webhooks = Webhooks::start(
            db.clone(),
            hub.clone(),
            policy,
            targets,
            background.clone(),
            in_cluster,
        )
        .await?;
        let retention = Duration::from_secs(config.event_retention_hours * 3600);
        retention::spawn(db.clone(), retention, background);
        let nats_published = Arc::new(AtomicU64::new(0));
        let nats = match (config.events, &config.nats_url) {
            (true, Some(url)) => Some((url.clone(), nats_published.clone())),
            _ => None,
        };
        if in_cluster {
            sequence::tail(db.clone(), hub.clone(), webhooks.clone(), background);
            lead::Lead {
                db: db.clone(),
                hub: hub.clone(),
                webhooks: webhooks.clone(),
                nats,
            }
            .spawn(background);
        } else if let Some((url, published)) = nats {
            let stop = background.stopping();
            background.spawn(nats::publish_until(
                db.clone(),
                url,
                hub.clone(),
                published,
                stop,
            ));
        }
        Ok(Self {
            enabled: config.events,
            hub,
            webhooks,
            streams: Arc::new(tokio::sync::Semaphore::new(
                config.max_event_streams as usize,
            )),
            streams_by_caller: Arc::default(),
            nats_published,
            closing: CancellationToken::new(),
        })
    }

    /// A place for one more stream of `caller`, held until dropped; `None` past
    /// [`STREAMS_PER_CALLER`].
    pub fn stream_of(&self, caller: i64) -> Option<CallerStream> {
        let mut open = self.streams_by_caller.entry(caller).or_default();
        if *open >= STREAMS_PER_CALLER {
            return None;
        }
        *open += 1;
        Some(CallerStream {
            caller,
            open: self.streams_by_caller.clone(),
        })
    }
}

/// The kinds of event (API.md "Events").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    StockChanged,
    StockLow,
    StockOut,
    StockBackIn,
    ReservationCreated,
    ReservationCommitted,
    ReservationReleased,
    ReservationExpired,
    OrderCreated,
    OrderPaid,
    OrderCancelled,
    OrderShipped,
    OrderDelivered,
    OrderExpired,
    TransferCompleted,
}

impl EventType {
    pub const ALL: [Self; 15] = [
        Self::StockChanged,
        Self::StockLow,
        Self::StockOut,
        Self::StockBackIn,
        Self::ReservationCreated,
        Self::ReservationCommitted,
        Self::ReservationReleased,
        Self::ReservationExpired,
        Self::OrderCreated,
        Self::OrderPaid,
        Self::OrderCancelled,
        Self::OrderShipped,
        Self::OrderDelivered,
        Self::OrderExpired,
        Self::TransferCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StockChanged => "stock.changed",
            Self::StockLow => "stock.low",
            Self::StockOut => "stock.out",
            Self::StockBackIn => "stock.back_in",
            Self::ReservationCreated => "reservation.created",
            Self::ReservationCommitted => "reservation.committed",
            Self::ReservationReleased => "reservation.released",
            Self::ReservationExpired => "reservation.expired",
            Self::OrderCreated => "order.created",
            Self::OrderPaid => "order.paid",
            Self::OrderCancelled => "order.cancelled",
            Self::OrderShipped => "order.shipped",
            Self::OrderDelivered => "order.delivered",
            Self::OrderExpired => "order.expired",
            Self::TransferCompleted => "transfer.completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Parses a client's list of types (`a,b` in a query, or a JSON array); the error names
/// the first unknown one.
pub fn parse_types<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<EventType>, String> {
    names
        .into_iter()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            EventType::parse(name).ok_or_else(|| {
                let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event type {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// One event, as written to the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `lsn * 8 + n` of the record it comes from (see the module's opening).
    pub id: i64,
    pub kind: EventType,
    pub at: DateTime<Utc>,
    /// JSON text.
    pub data: String,
    /// The shops whose warehouses it concerns; empty: the platform's only.
    pub shop_ids: Vec<i64>,
    /// Events with the same key keep their order in every delivery.
    pub ordering_key: String,
}

impl Event {
    /// The event as clients receive it: `{id, type, at, data}`.
    pub fn to_json(&self) -> String {
        wire(self.id, self.kind.as_str(), self.at, &self.data)
    }
}

/// `{id, type, at, data}` as JSON text (`data` already JSON), the one shape every reader
/// sends: the stream, webhooks, NATS and the list.
pub fn wire(id: i64, kind: &str, at: DateTime<Utc>, data: &str) -> String {
    format!(
        r#"{{"id":{id},"type":"{kind}","at":"{}","data":{data}}}"#,
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            parse_types("stock.low, order.paid".split(',')),
            Ok(vec![EventType::StockLow, EventType::OrderPaid])
        );
        assert!(parse_types(["stock.lo"]).unwrap_err().contains("stock.lo"));
    }
}
