//! Node ordinals: each node numbers its journal from its own, so the keys made of journal
//! numbers (the ledger's, the outbox's) never collide between nodes.

use sqlx::PgPool;

/// How many journal numbers each node has: node n numbers from `n << ORDINAL_SHIFT`.
pub const ORDINAL_SHIFT: u32 = 48;

/// The ordinal of `node` (1 to 1023), assigned at its first start and kept for good: its
/// journal numbers start at `ordinal << ORDINAL_SHIFT`.
pub async fn assign(pool: &PgPool, node: &str) -> Result<u16, sqlx::Error> {
    for _ in 0..20 {
        let assigned = sqlx::query(
            "INSERT INTO node_ordinals (node_id, ordinal)
             SELECT $1, min(n) FROM generate_series(1, 1023) AS n
             WHERE n NOT IN (SELECT ordinal FROM node_ordinals)
             ON CONFLICT (node_id) DO NOTHING",
        )
        .bind(node)
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
