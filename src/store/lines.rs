//! Reads over every line, in memory or not, for listings too big to load: a warehouse's
//! lines, page by page, and the low-stock alert.
//!
//! A line out of memory has its newest state in PostgreSQL (the registry evicts a line
//! only once that is so), so these reads take each line from memory if it is there, and
//! from the table otherwise. The lines in memory are sent along as arrays and override
//! their rows; the database does the ordering, paging and totals. Nothing waits on the
//! write-behind.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgPool, Postgres};
use stockline_actors::{LineKey, LineSnapshot, WarehouseId};

/// The lines in memory, as columns to bind.
#[derive(Default)]
struct Columns {
    warehouse_ids: Vec<i64>,
    product_ids: Vec<i64>,
    on_hand: Vec<i64>,
    reserved: Vec<i64>,
    versions: Vec<i64>,
    updated_at: Vec<DateTime<Utc>>,
    safety_stock: Vec<i64>,
}

impl Columns {
    fn of(lines: &[LineSnapshot]) -> Self {
        let mut columns = Self::default();
        for line in lines {
            columns.warehouse_ids.push(line.key.warehouse_id);
            columns.product_ids.push(line.key.product_id);
            columns.on_hand.push(line.on_hand as i64);
            columns.reserved.push(line.reserved as i64);
            columns.versions.push(line.version as i64);
            columns.updated_at.push(line.updated_at);
            columns.safety_stock.push(line.safety_stock as i64);
        }
        columns
    }

    /// Binds the columns as `$1..$7` (what [`LINES`] reads).
    fn bind<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(&self.warehouse_ids)
            .bind(&self.product_ids)
            .bind(&self.on_hand)
            .bind(&self.reserved)
            .bind(&self.versions)
            .bind(&self.updated_at)
            .bind(&self.safety_stock)
    }
}

/// Every line, memory first: `$1..$7` are the columns of the lines in memory.
const LINES: &str = "
    mem AS (
        SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                             $5::bigint[], $6::timestamptz[], $7::bigint[])
            AS m (warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock)
    ),
    lines AS (
        SELECT s.warehouse_id, s.product_id, s.on_hand, s.reserved, s.version, s.updated_at,
               s.safety_stock
        FROM stock_lines s
        WHERE NOT EXISTS (SELECT 1 FROM mem
                          WHERE mem.warehouse_id = s.warehouse_id
                            AND mem.product_id = s.product_id)
        UNION ALL SELECT * FROM mem
    )";

type Row = (i64, i64, i64, i64, i64, DateTime<Utc>, i64);

fn snapshot(
    (warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock): Row,
) -> LineSnapshot {
    LineSnapshot {
        safety_stock: safety_stock as u64,
        key: LineKey::new(warehouse_id, product_id),
        on_hand: on_hand as u64,
        reserved: reserved as u64,
        version: version as u64,
        active: true,
        updated_at,
    }
}

/// One page of a warehouse's lines by product id, and how many it has in all.
/// `resident` are the warehouse's lines in memory now.
pub async fn warehouse_page(
    db: &PgPool,
    warehouse_id: WarehouseId,
    resident: &[LineSnapshot],
    limit: i64,
    offset: i64,
) -> Result<(Vec<LineSnapshot>, i64), sqlx::Error> {
    let mem = Columns::of(resident);
    let count = format!("WITH {LINES} SELECT count(*) FROM lines WHERE warehouse_id = $8");
    let (total,): (i64,) = mem
        .bind(sqlx::query_as(&count))
        .bind(warehouse_id)
        .fetch_one(db)
        .await?;
    let page = format!(
        "WITH {LINES}
         SELECT warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock
         FROM lines WHERE warehouse_id = $8 ORDER BY product_id LIMIT $9 OFFSET $10"
    );
    let rows: Vec<Row> = mem
        .bind(sqlx::query_as(&page))
        .bind(warehouse_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(db)
        .await?;
    Ok((rows.into_iter().map(snapshot).collect(), total))
}

/// A line of a product whose available stock, over the active warehouses, is under its
/// low-stock threshold.
pub struct LowLine {
    pub line: LineSnapshot,
    pub product_available: u64,
    pub low_stock_threshold: i64,
}

#[derive(sqlx::FromRow)]
struct LowRow {
    warehouse_id: i64,
    product_id: i64,
    on_hand: i64,
    reserved: i64,
    version: i64,
    updated_at: DateTime<Utc>,
    safety_stock: i64,
    product_available: i64,
    low_stock_threshold: i64,
}

/// The lines of active warehouses (`active`) of live products whose total available there
/// is under their threshold, by product then warehouse. `resident` are the lines in memory.
pub async fn low_stock(
    db: &PgPool,
    resident: &[LineSnapshot],
    active: &[WarehouseId],
) -> Result<Vec<LowLine>, sqlx::Error> {
    let mem = Columns::of(resident);
    let query = format!(
        "WITH {LINES},
         watched AS (
            SELECT l.*, p.low_stock_threshold,
                   (sum(GREATEST(l.on_hand - l.reserved - l.safety_stock, 0))
                        OVER (PARTITION BY l.product_id))::bigint
                       AS product_available
            FROM lines l JOIN products p ON p.id = l.product_id
            WHERE p.deleted_at IS NULL AND p.low_stock_threshold > 0
              AND l.warehouse_id = ANY($8)
         )
         SELECT warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock,
                product_available, low_stock_threshold
         FROM watched WHERE product_available < low_stock_threshold
         ORDER BY product_id, warehouse_id"
    );
    let rows: Vec<LowRow> = mem
        .bind(sqlx::query_as(&query))
        .bind(active)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| LowLine {
            line: snapshot((
                row.warehouse_id,
                row.product_id,
                row.on_hand,
                row.reserved,
                row.version,
                row.updated_at,
                row.safety_stock,
            )),
            product_available: row.product_available as u64,
            low_stock_threshold: row.low_stock_threshold,
        })
        .collect())
}

/// How many lines the store holds (the lines in memory not yet written are not counted),
/// of the given warehouses only when `within` is set.
pub async fn stored_count(
    db: &PgPool,
    within: Option<Vec<WarehouseId>>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM stock_lines WHERE $1::bigint[] IS NULL OR warehouse_id = ANY($1)",
    )
    .bind(within)
    .fetch_one(db)
    .await
}
