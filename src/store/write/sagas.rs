//! Reservations across shards as their coordinator's batches write them: the row that ties
//! the parts together once all are held, and the last mark of a decision carried out. A
//! row's earlier marks (`committing`, `releasing`) are decisions other coordinators race
//! for: those are compare-and-set statements of their own, never batched.

use super::{SagaRecord, Tx};

pub(super) async fn write(tx: &mut Tx, sagas: &[&SagaRecord]) -> Result<(), sqlx::Error> {
    let (mut ids, mut parts, mut references, mut expiries, mut made) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut settled, mut froms, mut tos) = (Vec::new(), Vec::new(), Vec::new());
    for saga in sagas {
        match saga {
            SagaRecord::Held {
                id,
                parts: held,
                reference,
                expires_at,
                created_at,
            } => {
                ids.push(*id);
                // A list per row, as JSON text: UNNEST cannot take arrays of arrays of
                // lengths that differ.
                parts.push(serde_json::json!(held).to_string());
                references.push(reference.clone());
                expiries.push(*expires_at);
                made.push(*created_at);
            }
            SagaRecord::Settled { id, from, to } => {
                settled.push(*id);
                froms.push(*from);
                tos.push(*to);
            }
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO reservation_sagas (id, shards, parts, status, reference, expires_at, created_at, updated_at)
             SELECT id,
                    ARRAY(SELECT (p.v->>0)::smallint
                          FROM jsonb_array_elements(parts::jsonb) WITH ORDINALITY AS p(v, n) ORDER BY n),
                    ARRAY(SELECT (p.v->>1)::uuid
                          FROM jsonb_array_elements(parts::jsonb) WITH ORDINALITY AS p(v, n) ORDER BY n),
                    'pending', reference, expires_at, created_at, now()
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                  AS t(id, parts, reference, expires_at, created_at)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&parts)
        .bind(&references)
        .bind(&expiries)
        .bind(&made)
        .execute(&mut **tx)
        .await?;
    }
    if !settled.is_empty() {
        sqlx::query(
            "UPDATE reservation_sagas s SET status = t.to_status, updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS t(id, from_status, to_status)
             WHERE s.id = t.id AND s.status = t.from_status",
        )
        .bind(&settled)
        .bind(&froms)
        .bind(&tos)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
