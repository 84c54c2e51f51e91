//! The outbox side of a flush: inside the batch's transaction, know what the store held
//! before it, derive the batch's events, and insert them with the batch's closing
//! statement, so an event commits exactly when its change does. Event ids are keys made
//! of journal numbers, so writing a batch again (after a commit whose answer was lost)
//! inserts nothing twice.
//!
//! What the store held is mostly known without asking: the flusher is the only writer of
//! `stock_lines`, so the [`StoreView`] states it wrote stay true. A product is read from the
//! database when first met and again after [`FRESH_FOR`] (its threshold, or a warehouse's
//! status, may have changed meanwhile); a hot product costs no query per batch.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use stockline_actors::{LineKey, Lsn, ProductId, Record, WarehouseId};

use super::derive::{self, Before, Place, StoredLine};
use super::records::StoreRecord;
use crate::events::Event;

/// How long a product's threshold and lines, and a warehouse's status, are trusted.
const FRESH_FOR: Duration = Duration::from_secs(5);
/// Products known at most; past it the memory starts over.
const MAX_PRODUCTS: usize = 100_000;

struct ProductView {
    threshold: u64,
    lines: HashMap<WarehouseId, StoredLine>,
    read_at: Instant,
}

/// What the flusher knows the store holds, including the batch still committing while the
/// next is prepared. Only the flusher uses it; it is forgotten whenever a batch fails.
#[derive(Default)]
pub struct StoreView {
    products: HashMap<ProductId, ProductView>,
    places: HashMap<WarehouseId, (Place, Instant)>,
}

impl StoreView {
    /// A batch's line states are what the store holds (or will, once it commits).
    pub fn written(&mut self, records: &[(Lsn, StoreRecord)]) {
        for (_, record) in records {
            if let StoreRecord::Core(Record::Line(line)) = record
                && let Some(product) = self.products.get_mut(&line.key.product_id)
            {
                let known = product.lines.entry(line.key.warehouse_id).or_default();
                if line.version > known.version {
                    *known = StoredLine {
                        on_hand: line.on_hand,
                        reserved: line.reserved,
                        safety_stock: line.safety_stock,
                        version: line.version,
                    };
                }
            }
        }
    }
}

/// Derives the events of `records`, reading what is not known (or no longer fresh).
pub(super) async fn derive(
    conn: &mut PgConnection,
    records: &[(Lsn, StoreRecord)],
    known: &mut StoreView,
) -> Result<Vec<Event>, sqlx::Error> {
    let (products, warehouses) = derive::touched(records);
    let now = Instant::now();
    if known.products.len() > MAX_PRODUCTS {
        known.products.clear();
        known.places.clear();
    }
    let stale: Vec<ProductId> = products
        .iter()
        .copied()
        .filter(|p| {
            known
                .products
                .get(p)
                .is_none_or(|k| now - k.read_at > FRESH_FOR)
        })
        .collect();
    if !stale.is_empty() {
        read_products(conn, &stale, known, now).await?;
    }
    let unknown: Vec<WarehouseId> = warehouses
        .iter()
        .copied()
        .filter(|w| {
            known
                .places
                .get(w)
                .is_none_or(|(_, at)| now - *at > FRESH_FOR)
        })
        .collect();
    if !unknown.is_empty() {
        let rows: Vec<(i64, bool, Option<i64>)> = sqlx::query_as(
            "SELECT id, status = 'active', shop_id FROM warehouses WHERE id = ANY($1)",
        )
        .bind(&unknown)
        .fetch_all(&mut *conn)
        .await?;
        for (id, active, shop_id) in rows {
            known.places.insert(id, (Place { active, shop_id }, now));
        }
    }
    let mut before = Before::default();
    for product in &products {
        if let Some(known) = known.products.get(product) {
            before.thresholds.insert(*product, known.threshold);
            for (warehouse, line) in &known.lines {
                before
                    .lines
                    .insert(LineKey::new(*warehouse, *product), *line);
            }
        }
    }
    let needed: HashSet<WarehouseId> = warehouses
        .iter()
        .copied()
        .chain(before.lines.keys().map(|k| k.warehouse_id))
        .collect();
    for warehouse in needed {
        if let Some((place, _)) = known.places.get(&warehouse) {
            before.places.insert(warehouse, *place);
        }
    }
    Ok(derive::derive(records, &before))
}

/// Thresholds and every stored line of `products` (and those lines' warehouses).
async fn read_products(
    conn: &mut PgConnection,
    products: &[ProductId],
    known: &mut StoreView,
    now: Instant,
) -> Result<(), sqlx::Error> {
    type Row = (
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<bool>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.id, p.low_stock_threshold, l.warehouse_id, l.on_hand, l.reserved,
                l.safety_stock, l.version, w.status = 'active', w.shop_id
         FROM products p
         LEFT JOIN stock_lines l ON l.product_id = p.id
         LEFT JOIN warehouses w ON w.id = l.warehouse_id
         WHERE p.id = ANY($1)",
    )
    .bind(products)
    .fetch_all(&mut *conn)
    .await?;
    let unsigned = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
    for (product, threshold, warehouse, on_hand, reserved, safety, version, active, shop) in rows {
        let entry = known
            .products
            .entry(product)
            .or_insert_with(|| ProductView {
                threshold: 0,
                lines: HashMap::new(),
                read_at: now,
            });
        entry.read_at = now;
        entry.threshold = threshold.max(0) as u64;
        let Some(warehouse) = warehouse else { continue };
        let stored = StoredLine {
            on_hand: unsigned(on_hand),
            reserved: unsigned(reserved),
            safety_stock: unsigned(safety),
            version: unsigned(version),
        };
        // A state newer than the table's is a batch's still committing (written to
        // `known` when it was prepared): it is what the store will hold.
        let line = entry.lines.entry(warehouse).or_insert(stored);
        if stored.version >= line.version {
            *line = stored;
        }
        known.places.insert(
            warehouse,
            (
                Place {
                    active: active.unwrap_or(false),
                    shop_id: shop,
                },
                now,
            ),
        );
    }
    Ok(())
}

/// The statement that closes a batch: moves the stored journal number and, in the same
/// statement (a data-modifying `WITH`), inserts the batch's events: no round trip of its
/// own on the hot path. Parameters `$1` to `$8` (see [`bind_close`]).
///
/// It is also the fence that keeps batches in order: unless the stored number has reached
/// the record before the batch (`$8`, its first less one), `stockline_journal_fence`
/// fails the statement as a serialization failure, and the batch is written again after
/// the one before it. A batch written again after it had committed (its answer lost)
/// finds the number at or past its own and passes, writing nothing twice.
pub(super) const CLOSE: &str = "WITH written AS (
           INSERT INTO events (id, type, at, data, shop_ids, ordering_key)
           SELECT id, type, at, data, shop_ids::bigint[], ordering_key
           FROM UNNEST($2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[])
                AS t(id, type, at, data, shop_ids, ordering_key)
           ON CONFLICT (id) DO NOTHING
         )
         INSERT INTO settings (key, value)
         SELECT 'journal_lsn', $1::text
         FROM (SELECT stockline_journal_fence(
                 coalesce((SELECT value::bigint FROM settings WHERE key = 'journal_lsn'), 0), $8)) AS fence
         ON CONFLICT (key) DO UPDATE
           SET value = GREATEST(settings.value::bigint, EXCLUDED.value::bigint)::text";

/// A cluster node's [`CLOSE`]: the stored journal number is the node's own (under `key`),
/// and the events go to `event_intake`, which the sequencer (`events::sequence`) numbers
/// into `events` in one order for every node. They are taken in only if the batch had not
/// committed before (a batch written again after its answer was lost): the sequencer may
/// have moved them already, and the intake would not know them any more.
pub(super) fn close_for(key: &str) -> String {
    let key = format!("'{}'", key.replace('\'', "''"));
    CLOSE
        .replace(
            "INSERT INTO events (id, type,",
            "INSERT INTO event_intake (key, type,",
        )
        .replace(
            "ON CONFLICT (id) DO NOTHING",
            &format!(
                "WHERE coalesce((SELECT value::bigint FROM settings WHERE key = {key}), 0) < $1
           ON CONFLICT (key) DO NOTHING"
            ),
        )
        .replace("'journal_lsn'", &key)
}

/// Binds [`CLOSE`]'s parameters.
pub(super) fn bind_close<'q>(
    query: super::Query<'q>,
    first: Lsn,
    last: Lsn,
    events: &'q [Event],
) -> super::Query<'q> {
    query
        .bind(last as i64)
        .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| pg_array(&e.shop_ids))
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.ordering_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(first as i64 - 1)
}

/// `{1,2}`: an array as PostgreSQL's text form (a row of arrays cannot be unnested).
fn pg_array(values: &[i64]) -> String {
    let values: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("{{{}}}", values.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_node_s_close_takes_its_events_into_the_intake_once() {
        let close = super::close_for("journal_lsn.3");
        assert!(
            close.contains("INSERT INTO event_intake (key, type,"),
            "{close}"
        );
        assert!(!close.contains("INSERT INTO events"), "{close}");
        assert!(
            close.contains("WHERE key = 'journal_lsn.3'), 0) < $1"),
            "{close}"
        );
        assert!(close.contains("ON CONFLICT (key) DO NOTHING"), "{close}");
        assert!(!close.contains("'journal_lsn'"), "{close}");
    }
}
