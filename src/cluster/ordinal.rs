//! Node ordinals: each node numbers its journal from its own, so the keys made of journal
//! numbers (the ledger's, the outbox's) never collide between nodes.

use std::time::Duration;

use sqlx::PgPool;

/// How many journal numbers each node has: node n numbers from `n << ORDINAL_SHIFT`.
pub const ORDINAL_SHIFT: u32 = 48;

/// The highest ordinal (they start at 1).
pub const MAX_ORDINAL: u16 = 1023;

/// The ordinal of `node` (1 to [`MAX_ORDINAL`]), assigned at its first start and kept for good: its
/// journal numbers start at `ordinal << ORDINAL_SHIFT`.
pub async fn assign(pool: &PgPool, node: &str) -> Result<u16, sqlx::Error> {
    for _ in 0..20 {
        let assigned = sqlx::query(
            "INSERT INTO node_ordinals (node_id, ordinal)
             SELECT $1, min(n) FROM generate_series(1, $2) AS n
             WHERE n NOT IN (SELECT ordinal FROM node_ordinals)
             ON CONFLICT (node_id) DO NOTHING",
        )
        .bind(node)
        .bind(i32::from(MAX_ORDINAL))
        .execute(pool)
        .await;
        match assigned {
            Ok(_) => {}
            // Another node took the same free ordinal at the same moment: look again.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => continue,
            // No ordinal left (the NULL of `min` over nothing).
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23502") => {
                return Err(sqlx::Error::Protocol(
                    "all 1023 node ordinals are taken; reuse a node id".into(),
                ));
            }
            Err(error) => return Err(error),
        }
        let found: Option<i16> =
            sqlx::query_scalar("SELECT ordinal FROM node_ordinals WHERE node_id = $1")
                .bind(node)
                .fetch_optional(pool)
                .await?;
        if let Some(ordinal) = found {
            return Ok(ordinal as u16);
        }
    }
    Err(sqlx::Error::Protocol(
        "no node ordinal could be assigned (too many nodes starting at once)".into(),
    ))
}

/// The advisory lock a node holds, exclusively, on its node id's ordinal for as long as it
/// runs (on the connection that holds the database): two live nodes under one id would
/// number the same journal and each end the other's writes.
const NODE_ID_LOCK: i32 = 0x736c_6e64;

/// How long a node waits for its id's lock at start: a predecessor that was stopped or
/// killed lets it go as soon as PostgreSQL sees its connection close.
const NODE_ID_WAIT: Duration = Duration::from_secs(3);

/// Takes `node`'s id for this process, on `held` (kept open for the node's life), or
/// refuses with a message that names the node holding it. A holder whose node has not
/// beaten its heart for two leases, though its connection has been open that long, is a
/// node whose machine is gone while PostgreSQL still keeps its connection: that connection
/// is ended and the id taken.
pub async fn hold_node_id(
    held: &mut sqlx::PgConnection,
    node: &str,
    ordinal: u16,
    lease: Duration,
) -> Result<(), String> {
    let silent_for = (lease * 2).as_secs_f64();
    let until = std::time::Instant::now() + NODE_ID_WAIT;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(NODE_ID_LOCK)
            .bind(i32::from(ordinal))
            .fetch_one(&mut *held)
            .await
            .map_err(|e| format!("taking node id {node}: {e}"))?;
        if taken {
            return Ok(());
        }
        // The holder, how long its connection has been open, and its node's heartbeat.
        let holder: Option<(i32, f64, Option<f64>, Option<String>)> = sqlx::query_as(
            "SELECT l.pid, extract(epoch FROM now() - a.backend_start)::float8,
                    extract(epoch FROM now() - n.heartbeat_at)::float8, n.http_addr
             FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             LEFT JOIN cluster_nodes n ON n.node_id = $3
             WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid
               AND l.objid = $2::int4::oid AND l.objsubid = 2 AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(NODE_ID_LOCK)
        .bind(i32::from(ordinal))
        .bind(node)
        .fetch_optional(&mut *held)
        .await
        .map_err(|e| format!("finding who holds node id {node}: {e}"))?;
        match holder {
            // Let go between the two statements: take it.
            None => continue,
            Some((pid, open_for, heartbeat, _))
                if open_for > silent_for && heartbeat.is_none_or(|age| age > silent_for) =>
            {
                tracing::warn!(
                    %node, pid,
                    "node id held by a connection whose node is silent; ending that connection"
                );
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut *held)
                    .await
                    .map_err(|e| format!("ending a dead node's connection: {e}"))?;
            }
            Some((_, _, heartbeat, addr)) if std::time::Instant::now() > until => {
                let address = addr.unwrap_or_else(|| "an address not yet known".into());
                let beat = heartbeat.map_or("it has not beaten its heart yet".into(), |age| {
                    format!("its last heartbeat {age:.1} s ago")
                });
                return Err(format!(
                    "node id {node} is in use by a live node (at {address}, {beat}): two \
                     nodes under one id would number the same journal; stop that node, or \
                     start this one under another STOCKLINE_NODE_ID"
                ));
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
