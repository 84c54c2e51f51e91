//! The baseline: the usual design, where an order is a database transaction that locks
//! the stock row (`SELECT ... FOR UPDATE`), as a typical service does. It serves the same
//! paths and bodies as stockline, so one client drives both; it ignores the token.

use crate::baseline::{Reserve, Transfer, availability as availability_of, conflict};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rl_stock (
    warehouse_id BIGINT NOT NULL, product_id BIGINT NOT NULL,
    on_hand BIGINT NOT NULL, reserved BIGINT NOT NULL,
    PRIMARY KEY (warehouse_id, product_id), CHECK (reserved >= 0 AND reserved <= on_hand));
CREATE TABLE IF NOT EXISTS rl_reservations (
    id UUID PRIMARY KEY, warehouse_id BIGINT NOT NULL, product_id BIGINT NOT NULL,
    quantity BIGINT NOT NULL, status TEXT NOT NULL);
";

/// Starts the baseline on a random port; answers its base URL.
pub async fn start(pool: PgPool) -> String {
    let router = Router::new()
        .route("/api/v1/reservations", post(reserve))
        .route("/api/v1/reservations/{id}/commit", post(commit))
        .route("/api/v1/reservations/{id}/release", post(release))
        .route("/api/v1/products/{id}/availability", get(availability))
        .route("/api/v1/transfers", post(transfer))
        .with_state(pool);
    crate::baseline::serve(router, "row-lock").await
}

fn fail(error: sqlx::Error) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
}

/// Locks the product's rows in warehouse order, takes from the first with enough.
async fn reserve(State(pool): State<PgPool>, axum::Json(body): axum::Json<Reserve>) -> Response {
    let item = &body.items[0];
    let result: Result<Response, sqlx::Error> = async {
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT warehouse_id, on_hand, reserved FROM rl_stock WHERE product_id = $1
             ORDER BY warehouse_id FOR UPDATE",
        )
        .bind(item.product_id)
        .fetch_all(&mut *tx)
        .await?;
        let Some((warehouse, _, _)) = rows.iter().find(|(_, on_hand, reserved)| on_hand - reserved >= item.quantity) else {
            tx.rollback().await?;
            return Ok(conflict("insufficient_stock"));
        };
        sqlx::query("UPDATE rl_stock SET reserved = reserved + $3 WHERE warehouse_id = $1 AND product_id = $2")
            .bind(warehouse)
            .bind(item.product_id)
            .bind(item.quantity)
            .execute(&mut *tx)
            .await?;
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO rl_reservations VALUES ($1, $2, $3, $4, 'pending')")
            .bind(id)
            .bind(warehouse)
            .bind(item.product_id)
            .bind(item.quantity)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((StatusCode::CREATED, axum::Json(json!({ "id": id, "status": "pending" }))).into_response())
    }
    .await;
    result.unwrap_or_else(fail)
}

async fn settle(pool: PgPool, id: Uuid, commit: bool) -> Response {
    let result: Result<Response, sqlx::Error> = async {
        let mut tx = pool.begin().await?;
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT warehouse_id, product_id, quantity FROM rl_reservations WHERE id = $1 AND status = 'pending' FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((warehouse, product, quantity)) = row else {
            tx.rollback().await?;
            return Ok(conflict("reservation_not_pending"));
        };
        let on_hand_change = if commit { quantity } else { 0 };
        sqlx::query(
            "UPDATE rl_stock SET reserved = reserved - $3, on_hand = on_hand - $4 WHERE warehouse_id = $1 AND product_id = $2",
        )
        .bind(warehouse)
        .bind(product)
        .bind(quantity)
        .bind(on_hand_change)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE rl_reservations SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(if commit { "committed" } else { "released" })
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((StatusCode::OK, axum::Json(json!({ "id": id }))).into_response())
    }
    .await;
    result.unwrap_or_else(fail)
}

async fn commit(State(pool): State<PgPool>, Path(id): Path<Uuid>) -> Response {
    settle(pool, id, true).await
}

async fn release(State(pool): State<PgPool>, Path(id): Path<Uuid>) -> Response {
    settle(pool, id, false).await
}

async fn availability(State(pool): State<PgPool>, Path(id): Path<i64>) -> Response {
    let row: Result<(Option<i64>, Option<i64>), sqlx::Error> = sqlx::query_as(
        "SELECT sum(on_hand)::bigint, sum(reserved)::bigint FROM rl_stock WHERE product_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await;
    match row {
        Ok((on_hand, reserved)) => {
            let (on_hand, reserved) = (on_hand.unwrap_or(0), reserved.unwrap_or(0));
            availability_of(id, on_hand, reserved)
        }
        Err(error) => fail(error),
    }
}

/// Locks both rows in key order (no deadlock), moves available stock.
async fn transfer(State(pool): State<PgPool>, axum::Json(body): axum::Json<Transfer>) -> Response {
    let result: Result<Response, sqlx::Error> = async {
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT warehouse_id, on_hand, reserved FROM rl_stock
             WHERE product_id = $1 AND warehouse_id IN ($2, $3) ORDER BY warehouse_id FOR UPDATE",
        )
        .bind(body.product_id)
        .bind(body.from_warehouse_id)
        .bind(body.to_warehouse_id)
        .fetch_all(&mut *tx)
        .await?;
        let source = rows.iter().find(|r| r.0 == body.from_warehouse_id);
        if rows.len() != 2 || source.is_none_or(|(_, on_hand, reserved)| on_hand - reserved < body.quantity) {
            tx.rollback().await?;
            return Ok(conflict("insufficient_stock"));
        }
        for (warehouse, delta) in [(body.from_warehouse_id, -body.quantity), (body.to_warehouse_id, body.quantity)] {
            sqlx::query("UPDATE rl_stock SET on_hand = on_hand + $3 WHERE warehouse_id = $1 AND product_id = $2")
                .bind(warehouse)
                .bind(body.product_id)
                .bind(delta)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((StatusCode::CREATED, axum::Json(json!({ "status": "completed" }))).into_response())
    }
    .await;
    result.unwrap_or_else(fail)
}
