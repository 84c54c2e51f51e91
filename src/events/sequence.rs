//! One order of events for every node of a cluster, without skips (API.md v1.2 "Cluster
//! map"), as PgQ gets one from many writers: the order is made by one serialized step, not
//! by the writers.
//!
//! Each node's flusher writes its batches' events to `event_intake`, in the batch's own
//! transaction (so an event exists if and only if its change does), keyed by the node's
//! journal numbers. The [`sequencer`] of any node then moves what the intake holds into
//! `events`, numbering it on from the highest id ever given, in a transaction that first
//! takes one advisory lock: such transactions run one at a time, each commits before the
//! next one reads the highest id, so ids are given in commit order. A reader that has seen
//! id `n` committed has every id below `n` committed too, and `id > cursor` skips nothing.
//! One node runs the sequencer, the one that leads (`events::lead`), and it moves
//! everything waiting, a dead node's events included; the lock keeps two from overlapping
//! while the lead changes hands.
//!
//! The [`tail`] of each node reads the table on from the newest id it has seen, whenever a
//! sequencer says it moved something (`NOTIFY stockline_events`), and hands the events to
//! the node's hub: its streams and its readers (webhooks, NATS) see every node's events.
//! The same connection hears the webhook commands of other nodes (`webhooks::Webhooks`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::hub::EventHub;
use super::read::{self, Filter};
use super::webhooks::{WEBHOOK_COMMANDS, Webhooks};
use crate::background::Background;

/// The advisory lock every sequencing transaction takes first.
const SEQUENCING: i64 = 0x5354_4b4c_4e45_5631;
/// What a sequencer moves at most in one transaction.
const MOVE_AT_MOST: i64 = 5_000;
/// The channel a sequencer notifies once it moved events.
pub const MOVED: &str = "stockline_events";
/// Without a notice, the table is read this often by the tail; after a failure, the
/// sequencer tries again after this long.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long the sequencer waits for more batches before it moves what there is, while
/// events come.
const GATHER: Duration = Duration::from_millis(10);
/// How long it waits after finding the intake empty.
const IDLE: Duration = Duration::from_millis(50);
/// Events read from the table per page by the tail.
const PAGE: i64 = 1_000;

/// Numbers the intake's events into `events`: takes the lock, moves at most
/// [`MOVE_AT_MOST`] (by key, through its index: the intake's dead rows are not read again),
/// numbers them by time (a line's events keep their order also when its shard moved
/// between nodes), moves the stored highest id, and notifies [`MOVED`], all in one
/// transaction. Answers how many it moved.
pub async fn sequence(db: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    // A node paused inside this transaction (a zombie) would hold every node's sequencer
    // up: PostgreSQL ends the transaction, and the lock with it, once it idles this long.
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEQUENCING)
        .execute(&mut *tx)
        .await?;
    let (top, moved): (Option<i64>, i64) = sqlx::query_as(
        "WITH moved AS (
             DELETE FROM event_intake
             WHERE key IN (SELECT key FROM event_intake ORDER BY key LIMIT $1)
             RETURNING key, type, at, data, shop_ids, ordering_key
         ), base AS (
             SELECT GREATEST(
                 coalesce((SELECT value::bigint FROM settings WHERE key = 'event_sequence'), 0),
                 coalesce((SELECT max(id) FROM events), 0)) AS top
         ), inserted AS (
             INSERT INTO events (id, type, at, data, shop_ids, ordering_key)
             SELECT base.top + row_number() OVER (ORDER BY m.at, m.key),
                    m.type, m.at, m.data, m.shop_ids, m.ordering_key
             FROM moved m CROSS JOIN base
             RETURNING id
         ), stored AS (
             INSERT INTO settings (key, value)
             SELECT 'event_sequence', max(id)::text FROM inserted HAVING count(*) > 0
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
         )
         SELECT max(id), count(*) FROM inserted",
    )
    .bind(MOVE_AT_MOST)
    .fetch_one(&mut *tx)
    .await?;
    let Some(top) = top else {
        tx.rollback().await?;
        return Ok(0);
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(MOVED)
        .bind(top.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved as u64)
}

/// Runs the cluster's sequencer until `stop`; only the node that leads runs it
/// (`events::lead`), so sequencing transactions never queue on each other's lock. It moves
/// what the intake holds every [`GATHER`] while there is some, so one transaction takes
/// every batch the nodes committed meanwhile; with nothing there it looks again after
/// [`IDLE`], or at once when this node's own flusher commits events.
pub fn sequencer(db: PgPool, hub: &EventHub, stop: CancellationToken) -> Option<JoinHandle<()>> {
    let intake = hub.intake()?;
    Some(tokio::spawn(async move {
        let mut pause = IDLE;
        loop {
            tokio::select! {
                _ = intake.notified() => tokio::time::sleep(GATHER).await,
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            pause = match sequence(&db).await {
                Ok(moved) if moved >= MOVE_AT_MOST as u64 => Duration::ZERO,
                Ok(0) => IDLE,
                Ok(_) => GATHER,
                Err(error) => {
                    tracing::warn!(%error, "numbering events failed; retrying");
                    LOOK_EVERY
                }
            };
        }
    }))
}

/// Runs this node's tail until `stop`: events numbered by any node's sequencer go to
/// `hub`, and webhook commands to `webhooks`.
pub fn tail(db: PgPool, hub: Arc<EventHub>, webhooks: Arc<Webhooks>, background: &Background) {
    let stop = background.stopping();
    background.spawn(async move {
        tokio::select! {
            _ = follow(&db, &hub, &webhooks) => {}
            _ = stop.cancelled() => {}
        }
    });
}

async fn follow(db: &PgPool, hub: &EventHub, webhooks: &Webhooks) {
    loop {
        let mut listener = match listen(db).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "listening for events failed; retrying");
                tokio::time::sleep(LOOK_EVERY).await;
                continue;
            }
        };
        // Whatever was said while nobody here listened is read from the table.
        catch_up(db, hub).await;
        loop {
            let heard = tokio::time::timeout(LOOK_EVERY, listener.try_recv()).await;
            match heard {
                Ok(Ok(Some(notice))) if notice.channel() == WEBHOOK_COMMANDS => {
                    webhooks.command(notice.payload()).await;
                }
                Ok(Ok(Some(_))) | Err(_) => catch_up(db, hub).await,
                // Connected again after losing the connection: notices may be lost.
                Ok(Ok(None)) => catch_up(db, hub).await,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the events listener failed; listening again");
                    break;
                }
            }
        }
    }
}

async fn listen(db: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen_all([MOVED, WEBHOOK_COMMANDS]).await?;
    Ok(listener)
}

/// Hands `hub` every event after the newest it has.
async fn catch_up(db: &PgPool, hub: &EventHub) {
    loop {
        let page = match read::page(db, hub.newest_id(), &Filter::default(), PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "reading numbered events failed");
                return;
            }
        };
        let events: Vec<_> = page.iter().filter_map(read::Stored::event).collect();
        hub.fan_out(&events);
        if (page.len() as i64) < PAGE {
            return;
        }
    }
}
