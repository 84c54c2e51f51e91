//! Bringing the core back after a start: warehouses, every stored line with the holds of
//! its pending reservations, and the pending reservations themselves (their expiry re-armed;
//! those that ran out while the server was down are expired at once, and journaled).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stockline_actors::registry::LoadFuture;
use stockline_actors::{
    Core, LineKey, LineLoader, LineSeed, Lsn, Reservation, ReservationId, ReservationStatus,
    ReservedItem, WarehouseInfo,
};
use uuid::Uuid;

/// Serves each stored line's state once, at its spawn. Every stored line is spawned during
/// recovery, so a line asked for later was never stored: it starts empty.
pub struct PgLoader {
    seeds: Mutex<HashMap<LineKey, LineSeed>>,
}

impl LineLoader for PgLoader {
    fn load(&self, key: LineKey) -> LoadFuture {
        let seed = self
            .seeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        Box::pin(async move { Ok(seed) })
    }
}

/// What the store holds, read before the core starts.
pub struct Stored {
    /// The highest journal number written; new records continue after it.
    pub journal_lsn: Lsn,
    lines: Vec<LineKey>,
    warehouses: Vec<(i64, WarehouseInfo)>,
    pending: Vec<Reservation>,
}

#[tracing::instrument(skip_all)]
/// Reads what the store holds: the state to restore, and the loader the core starts with.
pub async fn read(pool: &PgPool) -> Result<(Stored, PgLoader), sqlx::Error> {
    let journal_lsn = super::setting(pool, "journal_lsn")
        .await?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let warehouses =
        sqlx::query_as::<_, (i64, i32, String)>("SELECT id, priority, status FROM warehouses")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id, priority, status)| {
                (
                    id,
                    WarehouseInfo {
                        priority,
                        active: status == "active",
                    },
                )
            })
            .collect();
    let pending = pending_reservations(pool).await?;
    let mut holds: HashMap<LineKey, Vec<(ReservationId, u64)>> = HashMap::new();
    for r in &pending {
        for item in &r.items {
            holds
                .entry(item.key())
                .or_default()
                .push((r.id, item.quantity));
        }
    }
    let rows = sqlx::query_as::<_, (i64, i64, i64, i64, i64, DateTime<Utc>)>(
        "SELECT warehouse_id, product_id, on_hand, reserved, version, updated_at FROM stock_lines",
    )
    .fetch_all(pool)
    .await?;
    let mut seeds = HashMap::with_capacity(rows.len());
    for (warehouse_id, product_id, on_hand, reserved, version, updated_at) in rows {
        let key = LineKey::new(warehouse_id, product_id);
        let seed = LineSeed {
            on_hand: on_hand as u64,
            reserved: reserved as u64,
            version: version as u64,
            updated_at: Some(updated_at),
            holds: holds.remove(&key).unwrap_or_default(),
        };
        seeds.insert(key, seed);
    }
    let stored = Stored {
        journal_lsn,
        lines: seeds.keys().copied().collect(),
        warehouses,
        pending,
    };
    let loader = PgLoader {
        seeds: Mutex::new(seeds),
    };
    Ok((stored, loader))
}

type ReservationRow = (
    Uuid,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
);

async fn pending_reservations(pool: &PgPool) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ReservationRow>(
        "SELECT id, reference, expires_at, created_at, updated_at FROM reservations WHERE status = 'pending'",
    )
    .fetch_all(pool)
    .await?;
    let items = sqlx::query_as::<_, (Uuid, i64, i64, i64)>(
        "SELECT i.reservation_id, i.warehouse_id, i.product_id, i.quantity
         FROM reservation_items i JOIN reservations r ON r.id = i.reservation_id
         WHERE r.status = 'pending'
         ORDER BY i.warehouse_id, i.product_id",
    )
    .fetch_all(pool)
    .await?;
    let mut by_id: HashMap<Uuid, Vec<ReservedItem>> = HashMap::new();
    for (id, warehouse_id, product_id, quantity) in items {
        by_id.entry(id).or_default().push(ReservedItem {
            product_id,
            warehouse_id,
            quantity: quantity as u64,
        });
    }
    Ok(rows
        .into_iter()
        .map(
            |(id, reference, expires_at, created_at, updated_at)| Reservation {
                id: ReservationId(id),
                status: ReservationStatus::Pending,
                items: by_id.remove(&id).unwrap_or_default(),
                reference,
                expires_at,
                created_at,
                updated_at,
            },
        )
        .collect())
}

impl Stored {
    /// Hands the stored state to a core started with this loader: warehouses, every line
    /// (spawned now, so allocation sees them), then the pending reservations.
    pub async fn restore_into(self, core: &Core) -> Result<(), stockline_actors::CoreError> {
        for (id, info) in self.warehouses {
            core.upsert_warehouse(id, info).await?;
        }
        for key in self.lines {
            core.registry().get_or_spawn(key).await?;
        }
        let count = self.pending.len();
        for reservation in self.pending {
            core.reservations().restore(reservation);
        }
        tracing::info!(
            lines = core.registry().len(),
            pending_reservations = count,
            "recovered"
        );
        Ok(())
    }
}
