//! Clients that hang up mid-request: commit, release, pay and cancel requests whose
//! connection is reset 0–2 ms after sending, while other clients keep the same lines busy.
//! Afterwards every reservation can be settled by a retry (none is stuck half-way), each
//! line's `reserved` is the sum of its pending holds, and `on_hand` is what was received
//! minus what committed reservations took.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::*;
use tokio::io::AsyncWriteExt;

const PRODUCTS: i64 = 4;
const RECEIVED: i64 = 10_000;

/// Sends `POST path` with the token and resets the connection after `after`.
async fn post_and_hang_up(base: &str, path: &str, token: &str, body: &str, after: Duration) {
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    // A reset, not a polite close: linger 0 sends RST as the socket drops.
    socket.set_zero_linger().unwrap();
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_hanging_up_mid_settlement_leave_no_reservation_stuck_and_the_books_balance() {
    let app = TestApp::spawn().await;
    let warehouse = app.warehouse("W", 1).await;
    let mut products = Vec::new();
    for p in 0..PRODUCTS {
        let product = app.product(&format!("P{p}"), 100).await;
        app.stock(warehouse, product, RECEIVED).await;
        products.push(product);
    }
    let (_, customer) = app.customer("buyer@example.com").await;
    let basket: Vec<Value> = products
        .iter()
        .map(|p| json!({ "product_id": p, "quantity": 1 }))
        .collect();
    // Reservations over every line, and orders over every line.
    let mut reservations = Vec::new();
    for _ in 0..200 {
        let (status, r) = app
            .post("/reservations", &app.admin, json!({ "items": basket }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        reservations.push(r["id"].as_str().unwrap().to_owned());
    }
    let mut orders = Vec::new();
    for _ in 0..100 {
        let (status, o) = app
            .post("/orders", &customer, json!({ "items": basket }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{o}");
        orders.push((
            o["id"].as_str().unwrap().to_owned(),
            o["total_cents"].as_i64().unwrap(),
        ));
    }

    // Other clients keep the same lines busy the whole time.
    let stop = tokio_util::sync::CancellationToken::new();
    let busy: Vec<_> = (0..6)
        .map(|_| {
            let (client, base, admin, stop, basket) = (
                app.client.clone(),
                app.base.clone(),
                app.admin.clone(),
                stop.clone(),
                basket.clone(),
            );
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let r: Value = client
                        .post(format!("{base}/api/v1/reservations"))
                        .bearer_auth(&admin)
                        .json(&json!({ "items": basket }))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if let Some(id) = r["id"].as_str() {
                        client
                            .post(format!("{base}/api/v1/reservations/{id}/release"))
                            .bearer_auth(&admin)
                            .send()
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();

    // Hundreds of settlements whose clients hang up 0–2 ms after sending.
    let mut hangups = Vec::new();
    for (i, id) in reservations.iter().enumerate() {
        let action = if i % 2 == 0 { "commit" } else { "release" };
        let (base, admin, path) = (
            app.base.clone(),
            app.admin.clone(),
            format!("/reservations/{id}/{action}"),
        );
        let after = Duration::from_millis((i % 3) as u64);
        hangups.push(tokio::spawn(async move {
            post_and_hang_up(&base, &path, &admin, "", after).await
        }));
    }
    for (i, (id, total)) in orders.iter().enumerate() {
        let (path, body) = if i % 2 == 0 {
            (
                format!("/orders/{id}/pay"),
                json!({ "method": "card", "amount_cents": total }).to_string(),
            )
        } else {
            (format!("/orders/{id}/cancel"), String::new())
        };
        let (base, token) = (app.base.clone(), customer.clone());
        let after = Duration::from_millis((i % 3) as u64);
        hangups.push(tokio::spawn(async move {
            post_and_hang_up(&base, &path, &token, &body, after).await
        }));
    }
    for hangup in hangups {
        hangup.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    for task in busy {
        task.await.unwrap();
    }

    // A retry finishes what was started, or finds it finished: never "pending" refusals.
    let mut committed: HashMap<i64, i64> = HashMap::new();
    for (i, id) in reservations.iter().enumerate() {
        let action = if i % 2 == 0 { "commit" } else { "release" };
        let status = retry_until_settled(
            &app,
            &format!("/reservations/{id}/{action}"),
            &app.admin,
            None,
        )
        .await;
        assert_eq!(
            status,
            if i % 2 == 0 { "committed" } else { "released" },
            "reservation {id}"
        );
        if i % 2 == 0 {
            for p in &products {
                *committed.entry(*p).or_default() += 1;
            }
        }
    }
    for (i, (id, total)) in orders.iter().enumerate() {
        let (path, body) = if i % 2 == 0 {
            (
                format!("/orders/{id}/pay"),
                Some(json!({ "method": "card", "amount_cents": total })),
            )
        } else {
            (format!("/orders/{id}/cancel"), None)
        };
        let status = retry_until_settled(&app, &path, &customer, body).await;
        assert_eq!(
            status,
            if i % 2 == 0 { "paid" } else { "cancelled" },
            "order {id}"
        );
        if i % 2 == 0 {
            for p in &products {
                *committed.entry(*p).or_default() += 1;
            }
        }
    }

    // The books: nothing is held any more, and on_hand is receipts minus what was taken.
    let (status, lines) = app
        .get(&format!("/warehouses/{warehouse}/stock"), &app.admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{lines}");
    let lines = lines["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(lines.len(), PRODUCTS as usize, "{lines:?}");
    for line in lines {
        let product = line["product_id"].as_i64().unwrap();
        assert_eq!(line["reserved"], 0, "nothing pending holds line {line}");
        assert_eq!(
            line["on_hand"].as_i64().unwrap(),
            RECEIVED - committed[&product],
            "line {line}"
        );
    }
    app.cleanup().await;
}

/// Sends the settlement again until it is answered for good; answers the final status.
/// 409 must name a settled state (the first, hung-up request finished it), never pending.
async fn retry_until_settled(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> String {
    for _ in 0..50 {
        let (status, answer) = app
            .send(
                reqwest::Method::POST,
                path,
                Some(token),
                Some(body.clone().unwrap_or(json!({}))),
            )
            .await;
        match status {
            StatusCode::OK => return answer["status"].as_str().unwrap().to_owned(),
            StatusCode::CONFLICT => {
                let settled = answer["error"]["details"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_ne!(settled, "pending", "{path}: stuck half-way: {answer}");
                return settled;
            }
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{path}: {other} {answer}"),
        }
    }
    panic!("{path} was never settled");
}
