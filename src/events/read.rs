//! Pages of the outbox, in id order, for a caller: the list, a stream catching up, the
//! webhook dispatcher and the NATS publisher all read the table the same way.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::EventType;

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Empty: every type.
    pub types: Vec<EventType>,
    /// `None`: every event; `Some`: those concerning these shops' warehouses only.
    pub shops: Option<Vec<i64>>,
}

impl Filter {
    /// Whether a live event passes.
    pub fn allows(&self, kind: EventType, shop_ids: &[i64]) -> bool {
        (self.types.is_empty() || self.types.contains(&kind))
            && self
                .shops
                .as_ref()
                .is_none_or(|shops| shop_ids.iter().any(|s| shops.contains(s)))
    }

    /// An event (`wire`: `{id, type, at, data}`) as this reader may see it. A shop's reader
    /// of an event that also concerns other shops (a reservation or an order allocated
    /// over several shops' warehouses) gets its own shops' items only, and no total; every
    /// other reader gets the event as it is.
    pub fn shown<'a>(&self, shop_ids: &[i64], wire: &'a str) -> Cow<'a, str> {
        let Some(shops) = &self.shops else {
            return Cow::Borrowed(wire);
        };
        if shop_ids.iter().all(|shop| shops.contains(shop)) {
            return Cow::Borrowed(wire);
        }
        let Ok(mut event) = serde_json::from_str::<Value>(wire) else {
            return Cow::Borrowed(wire);
        };
        if let Some(data) = event.get_mut("data").and_then(Value::as_object_mut) {
            if let Some(Value::Array(items)) = data.get_mut("items") {
                // An item without its shop (stored before items carried one) is withheld.
                items.retain(|item| {
                    let shop = item.get("shop_id").and_then(Value::as_i64);
                    shop.is_some_and(|shop| shops.contains(&shop))
                });
            }
            data.remove("total_cents");
        }
        Cow::Owned(event.to_string())
    }

    fn type_names(&self) -> Option<Vec<&'static str>> {
        (!self.types.is_empty()).then(|| self.types.iter().map(|t| t.as_str()).collect())
    }
}

/// An event as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Stored {
    pub id: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub at: DateTime<Utc>,
    /// JSON text.
    pub data: String,
    pub shop_ids: Vec<i64>,
    pub ordering_key: String,
}

impl Stored {
    /// `{id, type, at, data}`, as every reader sends it.
    pub fn to_json(&self) -> String {
        super::wire(self.id, &self.kind, self.at, &self.data)
    }

    /// The event as the flusher made it (`None` for a type this server does not know).
    pub fn event(&self) -> Option<super::Event> {
        Some(super::Event {
            id: self.id,
            kind: EventType::parse(&self.kind)?,
            at: self.at,
            data: self.data.clone(),
            shop_ids: self.shop_ids.clone(),
            ordering_key: self.ordering_key.clone(),
        })
    }
}

/// Up to `limit` events after `after`, oldest first.
#[tracing::instrument(skip_all)]
pub async fn page(
    db: &PgPool,
    after: i64,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Stored>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, type, at, data, shop_ids, ordering_key FROM events
         WHERE id > $1 AND ($2::text[] IS NULL OR type = ANY($2))
           AND ($3::bigint[] IS NULL OR shop_ids && $3)
         ORDER BY id LIMIT $4",
    )
    .bind(after)
    .bind(filter.type_names())
    .bind(filter.shops.as_deref())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many events after `after` pass the filter, counting at most `cap` (a count over
/// a week of events is not made for each page).
pub async fn count(db: &PgPool, after: i64, filter: &Filter, cap: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM events
         WHERE id > $1 AND ($2::text[] IS NULL OR type = ANY($2))
           AND ($3::bigint[] IS NULL OR shop_ids && $3)
         LIMIT $4) AS upto",
    )
    .bind(after)
    .bind(filter.type_names())
    .bind(filter.shops.as_deref())
    .bind(cap)
    .fetch_one(db)
    .await
}

/// The highest event id stored (0: none).
pub async fn newest(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM events")
        .fetch_one(db)
        .await
}
