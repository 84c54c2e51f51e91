//! Bringing the core back after a start, and the store lines are loaded from afterwards.
//!
//! Start-up reads what must be live and nothing per idle line: the warehouses, the pending
//! reservations, and the lines that hold stock for someone (a pending hold, or a stored
//! `reserved` that is not 0, which a crash can leave and a load repairs). Those lines are
//! restored with their holds, so every line left in the store holds nothing: loaded later,
//! on first touch, it needs no holds. Reservations that ran out while the server was down
//! are expired at once, and journaled.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stockline_actors::{
    Core, LineKey, LineSeed, LineStore, Lsn, ProductId, Reservation, ReservationId,
    ReservationStatus, ReservedItem, StoreFuture, WarehouseInfo,
};
use uuid::Uuid;

/// Which products' lines a node may load (cluster mode: those of the shards it serves).
pub type Serves = Arc<dyn Fn(ProductId) -> bool + Send + Sync>;

/// Lines from PostgreSQL, many keys a query.
pub struct PgStore {
    pool: PgPool,
    serves: Option<Serves>,
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, serves: None }
    }

    /// A store that refuses to load the lines of products `serves` does not name: a
    /// cluster node never holds in memory a line another node may be changing.
    pub fn serving_only(pool: PgPool, serves: Serves) -> Self {
        Self {
            pool,
            serves: Some(serves),
        }
    }

    fn refuse_foreign(&self, products: impl Iterator<Item = ProductId>) -> Result<(), String> {
        let Some(serves) = &self.serves else {
            return Ok(());
        };
        for product in products {
            if !serves(product) {
                return Err(format!(
                    "the stock of product {product} is served by another node right now \
                     (its shard is moving); retry"
                ));
            }
        }
        Ok(())
    }
}

type LineRow = (i64, i64, i64, i64, i64, DateTime<Utc>, i64);

fn seed((_, _, on_hand, reserved, version, updated_at, safety_stock): &LineRow) -> LineSeed {
    LineSeed {
        safety_stock: *safety_stock as u64,
        on_hand: *on_hand as u64,
        reserved: *reserved as u64,
        version: *version as u64,
        updated_at: Some(*updated_at),
        holds: Vec::new(),
    }
}

fn keyed(rows: &[LineRow]) -> Vec<(LineKey, LineSeed)> {
    rows.iter()
        .map(|row| (LineKey::new(row.0, row.1), seed(row)))
        .collect()
}

impl LineStore for PgStore {
    fn load(&self, keys: Vec<LineKey>) -> StoreFuture<Vec<(LineKey, LineSeed)>> {
        let refused = self.refuse_foreign(keys.iter().map(|key| key.product_id));
        let pool = self.pool.clone();
        Box::pin(async move {
            refused?;
            let (warehouses, products): (Vec<i64>, Vec<i64>) = keys
                .iter()
                .map(|key| (key.warehouse_id, key.product_id))
                .unzip();
            let rows = sqlx::query_as::<_, LineRow>(
                "SELECT s.warehouse_id, s.product_id, s.on_hand, s.reserved, s.version, s.updated_at, s.safety_stock
                 FROM stock_lines s
                 JOIN UNNEST($1::bigint[], $2::bigint[]) AS k (warehouse_id, product_id)
                   ON s.warehouse_id = k.warehouse_id AND s.product_id = k.product_id",
            )
            .bind(warehouses)
            .bind(products)
            .fetch_all(&pool)
            .await
            .map_err(unreachable)?;
            Ok(keyed(&rows))
        })
    }

    fn lines_of_products(&self, products: Vec<ProductId>) -> StoreFuture<Vec<(LineKey, LineSeed)>> {
        let refused = self.refuse_foreign(products.iter().copied());
        let pool = self.pool.clone();
        Box::pin(async move {
            refused?;
            let rows = sqlx::query_as::<_, LineRow>(
                "SELECT warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock
                 FROM stock_lines WHERE product_id = ANY($1)",
            )
            .bind(products)
            .fetch_all(&pool)
            .await
            .map_err(unreachable)?;
            Ok(keyed(&rows))
        })
    }
}

/// What a client is told when a line cannot be read (the cause goes to the log).
fn unreachable(error: sqlx::Error) -> String {
    tracing::warn!(%error, "reading lines from the database failed");
    "the database cannot be read right now; retry".into()
}

/// What the store holds that must be live, read before the core starts.
pub struct Stored {
    /// The highest journal number written; new records continue after it.
    pub journal_lsn: Lsn,
    /// Lines that hold stock for someone, with their holds.
    lines: Vec<(LineKey, LineSeed)>,
    warehouses: Vec<(i64, WarehouseInfo)>,
    pending: Vec<Reservation>,
}

/// Where a cluster node's journal continues: after the highest number it has stored. At
/// its first start that is the start of its own numbers, stored now, since a batch commits
/// only after the number before it (the ordering fence).
pub async fn node_position(
    pool: &PgPool,
    member: &crate::cluster::Member,
) -> Result<Lsn, sqlx::Error> {
    let first = member.first_lsn().to_string();
    let stored = super::setting_or_insert(pool, &member.position_key(), &first).await?;
    Ok(stored.parse::<u64>().unwrap_or(0).max(member.first_lsn()))
}

#[tracing::instrument(skip_all)]
/// Reads what the store holds that must be live at start.
pub async fn read(pool: &PgPool) -> Result<Stored, sqlx::Error> {
    let journal_lsn = super::setting(pool, "journal_lsn")
        .await?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    read_live(pool, journal_lsn, &|_| true).await
}

/// What a cluster node restores when it claims `shards`: the warehouses as they are now,
/// the lines of those shards that hold stock for someone (with their holds), and their
/// pending reservations. (Lines holding nothing load on first use, as always.)
pub async fn read_shards(
    pool: &PgPool,
    shards: &[crate::cluster::Shard],
) -> Result<Stored, sqlx::Error> {
    let wanted: std::collections::HashSet<_> = shards.iter().copied().collect();
    read_live(pool, 0, &|product| {
        wanted.contains(&crate::cluster::shard_of(product))
    })
    .await
}

/// Every warehouse as the store has it now.
pub async fn read_warehouses(pool: &PgPool) -> Result<Vec<(i64, WarehouseInfo)>, sqlx::Error> {
    Ok(sqlx::query_as::<_, (i64, i32, String, Option<i64>)>(
        "SELECT id, priority, status, shop_id FROM warehouses",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, priority, status, shop_id)| {
        (
            id,
            WarehouseInfo {
                priority,
                active: status == "active",
                shop_id,
            },
        )
    })
    .collect())
}

/// The live part of the store for the products `keep` names.
async fn read_live(
    pool: &PgPool,
    journal_lsn: Lsn,
    keep: &(dyn Fn(ProductId) -> bool + Sync),
) -> Result<Stored, sqlx::Error> {
    let warehouses = read_warehouses(pool).await?;
    let mut pending = pending_reservations(pool).await?;
    pending.retain(|r| r.items.iter().any(|item| keep(item.product_id)));
    let mut holds: HashMap<LineKey, Vec<(ReservationId, u64)>> = HashMap::new();
    for r in &pending {
        for item in r.items.iter().filter(|item| item.held() > 0) {
            holds
                .entry(item.key())
                .or_default()
                .push((r.id, item.held()));
        }
    }
    let (warehouse_ids, product_ids): (Vec<i64>, Vec<i64>) = holds
        .keys()
        .map(|key| (key.warehouse_id, key.product_id))
        .unzip();
    let rows = sqlx::query_as::<_, LineRow>(
        "SELECT warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock
         FROM stock_lines WHERE reserved <> 0
         UNION
         SELECT s.warehouse_id, s.product_id, s.on_hand, s.reserved, s.version, s.updated_at, s.safety_stock
         FROM stock_lines s
         JOIN UNNEST($1::bigint[], $2::bigint[]) AS k (warehouse_id, product_id)
           ON s.warehouse_id = k.warehouse_id AND s.product_id = k.product_id",
    )
    .bind(warehouse_ids)
    .bind(product_ids)
    .fetch_all(pool)
    .await?;
    let lines = rows
        .iter()
        .filter(|row| keep(row.1))
        .map(|row| {
            let key = LineKey::new(row.0, row.1);
            let mut seed = seed(row);
            seed.holds = holds.remove(&key).unwrap_or_default();
            (key, seed)
        })
        .collect();
    Ok(Stored {
        journal_lsn,
        lines,
        warehouses,
        pending,
    })
}

type ReservationRow = (
    Uuid,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Every pending reservation the store holds, with its items.
pub async fn pending_reservations(pool: &PgPool) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ReservationRow>(
        "SELECT id, reference, expires_at, created_at, updated_at FROM reservations WHERE status = 'pending'",
    )
    .fetch_all(pool)
    .await?;
    let items = sqlx::query_as::<_, (Uuid, i64, i64, i64, i64, i64)>(
        "SELECT i.reservation_id, i.warehouse_id, i.product_id, i.quantity, i.committed, i.released
         FROM reservation_items i JOIN reservations r ON r.id = i.reservation_id
         WHERE r.status = 'pending'
         ORDER BY i.warehouse_id, i.product_id",
    )
    .fetch_all(pool)
    .await?;
    let mut by_id: HashMap<Uuid, Vec<ReservedItem>> = HashMap::new();
    for (id, warehouse_id, product_id, quantity, committed, released) in items {
        by_id.entry(id).or_default().push(ReservedItem {
            committed: committed as u64,
            released: released as u64,
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
    /// Hands what must be live to the core: warehouses, the lines that hold stock for
    /// someone (with their holds), then the pending reservations.
    pub async fn restore_into(self, core: &Core) -> Result<(), stockline_actors::CoreError> {
        for (id, info) in self.warehouses {
            core.upsert_warehouse(id, info).await?;
        }
        let restored = self.lines.len();
        for (key, seed) in self.lines {
            core.registry().restore(key, seed)?;
        }
        let count = self.pending.len();
        for reservation in self.pending {
            core.reservations().restore(reservation);
        }
        tracing::info!(
            lines_restored = restored,
            pending_reservations = count,
            "recovered"
        );
        Ok(())
    }
}
