//! Many customers at once over HTTP: nothing oversold, every paid order's stock left the
//! shelf exactly once, the ledger sums to each line's on_hand; transfers conserve stock.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;
use testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_customers_with_overlapping_baskets_never_oversell() {
    let app = Arc::new(TestApp::spawn().await);
    let products = [
        app.product("A", 100).await,
        app.product("B", 200).await,
        app.product("C", 300).await,
    ];
    let warehouses = [app.warehouse("W1", 1).await, app.warehouse("W2", 2).await];
    for product in products {
        for warehouse in warehouses {
            app.stock(warehouse, product, 40).await;
        }
    }
    let customers: Vec<String> = {
        let mut tokens = Vec::new();
        for i in 0..200 {
            tokens.push(app.customer(&format!("c{i}@example.com")).await.1);
        }
        tokens
    };
    let tasks: Vec<_> = customers
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let app = app.clone();
            tokio::spawn(async move {
                let items: Vec<_> = (0..3)
                    .map(|k| json!({ "product_id": products[(i + k) % 3], "quantity": 1 + (i + k) % 2 }))
                    .collect();
                let (status, order) = app.post("/orders", &token, json!({ "items": items })).await;
                if status != StatusCode::CREATED {
                    assert_eq!(status, StatusCode::CONFLICT, "{order}");
                    return (false, false);
                }
                let id = order["id"].as_str().unwrap();
                // Two of three pay; the rest cancel.
                if i % 3 == 2 {
                    let (status, _) = app.post(&format!("/orders/{id}/cancel"), &token, json!({})).await;
                    assert_eq!(status, StatusCode::OK);
                    return (true, false);
                }
                let payment = json!({ "method": "card", "amount_cents": order["total_cents"] });
                let (status, body) = app.post(&format!("/orders/{id}/pay"), &token, payment).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                (true, true)
            })
        })
        .collect();
    let (mut placed, mut paid) = (0, 0);
    for task in tasks {
        let (p, q) = task.await.unwrap();
        placed += p as usize;
        paid += q as usize;
    }
    assert!(placed > 20 && paid > 10, "{placed} placed, {paid} paid");

    let mut db = sqlx::PgConnection::connect(&database_url(&app.database))
        .await
        .unwrap();
    let sold: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT i.product_id, i.warehouse_id, sum(i.quantity)::bigint FROM order_items i
         JOIN orders o ON o.id = i.order_id WHERE o.status = 'paid' GROUP BY 1, 2",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let sold: HashMap<(i64, i64), i64> = sold.into_iter().map(|(p, w, q)| ((p, w), q)).collect();
    for product in products {
        let availability = app.availability(product).await;
        for line in &availability.warehouses {
            let warehouse = line.warehouse_id;
            let on_hand = line.on_hand as i64;
            assert_eq!(line.reserved, 0, "nothing is left reserved");
            assert!(on_hand >= 0);
            let taken = sold.get(&(product, warehouse)).copied().unwrap_or(0);
            assert_eq!(
                on_hand,
                40 - taken,
                "paid stock left the shelf exactly once (p{product} w{warehouse})"
            );
            let ledger: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(CASE kind WHEN 'adjust' THEN quantity WHEN 'transfer_in' THEN quantity
                                               WHEN 'commit' THEN -quantity WHEN 'transfer_out' THEN -quantity
                                               ELSE 0 END), 0)::bigint
                 FROM movements WHERE product_id = $1 AND warehouse_id = $2",
            )
            .bind(product)
            .bind(warehouse)
            .fetch_one(&mut db)
            .await
            .unwrap();
            assert_eq!(ledger, on_hand, "the ledger sums to on_hand");
        }
    }
    drop(db);
    Arc::into_inner(app).unwrap().cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_back_and_forth_over_http_conserve_stock() {
    let app = Arc::new(TestApp::spawn().await);
    let product = app.product("T", 100).await;
    let warehouses = [
        app.warehouse("W1", 1).await,
        app.warehouse("W2", 2).await,
        app.warehouse("W3", 3).await,
    ];
    for warehouse in warehouses {
        app.stock(warehouse, product, 500).await;
    }
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let (from, to) = (warehouses[i % 3], warehouses[(i + 1 + i / 3) % 3]);
                let to = if to == from { warehouses[(i + 2) % 3] } else { to };
                let body = json!({ "from_warehouse_id": from, "to_warehouse_id": to, "product_id": product, "quantity": 1 + i % 5 });
                app.post("/transfers", &app.admin, body).await.0
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let availability = app.availability(product).await;
    assert_eq!(availability.on_hand, 1_500);
    let (_, transfers) = app.get("/transfers", &app.admin).await;
    assert_eq!(transfers["total"], 150);
    Arc::into_inner(app).unwrap().cleanup().await;
}
