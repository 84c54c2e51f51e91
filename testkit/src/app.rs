//! The real server in this process, on port 0 over a database of its own, and a client
//! signed in as its admin; the untyped requests (status and JSON) of tests that look at
//! the wire itself. The typed requests are in [`crate::api`].

use std::time::Duration;

use clap::Parser;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use stockline::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, database_url, drop_database, fresh_database};

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    config: Config,
}

/// What a server of the kit starts with beside port 0, its database and the admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// Tests: cheap bcrypt, a 2 ms flush interval, no practical sign-in limit, webhooks to
    /// this machine allowed (the limit and the rule have tests of their own).
    Test,
    /// Benches: cheap bcrypt (signing in is not what they time), the server's defaults
    /// otherwise.
    Bench,
}

/// The configuration of a kit server over `database`: [`Tuning::Test`], then `extra`.
pub fn config(database: &str, extra: &[&str]) -> Config {
    tuned_config(database, extra, Tuning::Test)
}

/// The configuration of a kit server over `database`, tuned so, then `extra`.
pub fn tuned_config(database: &str, extra: &[&str], tuning: Tuning) -> Config {
    let url = match extra.iter().position(|f| *f == "--database-base") {
        Some(i) => format!("{}/{database}", extra[i + 1]),
        None => database_url(database),
    };
    let extra: Vec<&str> = match extra.iter().position(|f| *f == "--database-base") {
        Some(i) => extra
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i && *j != i + 1)
            .map(|(_, f)| *f)
            .collect(),
        None => extra.to_vec(),
    };
    let mut args = vec![
        "test",
        "--addr",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--bcrypt-cost",
        "4",
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
    ];
    if tuning == Tuning::Bench {
        args.extend_from_slice(&extra);
        return Wrap::parse_from(args).config;
    }
    if !extra.contains(&"--flush-interval-ms") {
        args.extend(["--flush-interval-ms", "2"]);
    }
    if !extra.contains(&"--auth-rate-per-minute") {
        // Tests log in often from one address; the limit has a test of its own.
        args.extend(["--auth-rate-per-minute", "100000"]);
    }
    if !extra.contains(&"--webhook-allow-private") {
        // Webhook tests deliver to receivers on this machine; the rule has a test of its own.
        args.extend(["--webhook-allow-private", "true"]);
    }
    args.extend_from_slice(&extra);
    Wrap::parse_from(args).config
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub database: String,
    pub client: Client,
    pub admin: String,
    extra: Vec<String>,
    tuning: Tuning,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// With extra flags, e.g. `["--durability", "async"]`.
    pub async fn spawn_with(extra: &[&str]) -> Self {
        Self::start(fresh_database(), strings(extra), Tuning::Test).await
    }

    /// For a bench: [`Tuning::Bench`], then `extra`.
    pub async fn spawn_bench(extra: &[&str]) -> Self {
        Self::start(fresh_database(), strings(extra), Tuning::Bench).await
    }

    /// A client for a server running elsewhere (a child process), logged in as the admin.
    pub async fn attach(base: &str, database: &str) -> Self {
        let mut app = Self {
            base: base.to_owned(),
            database: database.to_owned(),
            client: Client::new(),
            admin: String::new(),
            extra: Vec::new(),
            tuning: Tuning::Test,
            stop: None,
            server: None,
        };
        app.admin = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        app
    }

    /// On an existing database (prepared by the test).
    pub async fn start_on(database: &str) -> Self {
        Self::start(database.to_owned(), Vec::new(), Tuning::Test).await
    }

    /// On an existing database, with extra flags.
    pub async fn start_on_with(database: &str, extra: &[&str]) -> Self {
        Self::start(database.to_owned(), strings(extra), Tuning::Test).await
    }

    /// On an existing database (a bench's, seeded), tuned so, with extra flags.
    pub async fn start_tuned_on(database: &str, extra: &[&str], tuning: Tuning) -> Self {
        Self::start(database.to_owned(), strings(extra), tuning).await
    }

    async fn start(database: String, extra: Vec<String>, tuning: Tuning) -> Self {
        let flags: Vec<&str> = extra.iter().map(String::as_str).collect();
        let config = tuned_config(&database, &flags, tuning);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, server) = stockline::startup::launch(listener, config, async {
            let _ = stopped.await;
        })
        .await
        .expect("the server starts");
        let mut app = Self {
            base: format!("http://{addr}"),
            database,
            client: Client::new(),
            admin: String::new(),
            extra,
            tuning,
            stop: Some(stop),
            server: Some(server),
        };
        app.admin = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        app
    }

    /// Stops the server cleanly (drain, flush) and checks that it ended well.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("stops in time")
                .unwrap()
                .expect("stops cleanly");
        }
    }

    /// Stops cleanly and starts again on the same database.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let extra = std::mem::take(&mut self.extra);
        Self::start(self.database.clone(), extra, self.tuning).await
    }

    /// The URL of `path`: under `/api/v1` unless it is a top-level path.
    pub fn url(&self, path: &str) -> String {
        let top_level = [
            "/api",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/metrics",
            "/console",
        ];
        if top_level.iter().any(|p| path.starts_with(p)) {
            format!("{}{path}", self.base)
        } else {
            format!("{}/api/v1{path}", self.base)
        }
    }

    /// Sends a request; answers the status and the JSON body (`null` when empty).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(Method::DELETE, path, Some(token), None).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::PUT, path, Some(token), Some(body)).await
    }

    /// A scrape of `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("the server answers")
            .text()
            .await
            .unwrap()
    }

    pub async fn login(&self, login: &str, password: &str) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({ "login": login, "password": password })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login of {login}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Registers a customer and answers (user id, token).
    pub async fn customer(&self, email: &str) -> (i64, String) {
        let (status, body) = self
            .send(
                Method::POST,
                "/auth/register",
                None,
                Some(json!({ "email": email, "password": "password-1", "name": "Test" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["user"]["id"].as_i64().unwrap(),
            self.login(email, "password-1").await,
        )
    }

    /// Registers a user and makes it an operator; answers its token.
    pub async fn operator(&self, email: &str) -> String {
        let (id, _) = self.customer(email).await;
        let (status, body) = self
            .put(
                &format!("/users/{id}/role"),
                &self.admin,
                json!({ "role": "operator" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.login(email, "password-1").await
    }

    /// Product `sku` at `price_cents`, made by the admin: its id.
    pub async fn product(&self, sku: &str, price_cents: i64) -> i64 {
        let body =
            json!({ "sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents });
        let made: crate::api::Product = self
            .create("/products", &self.admin, body)
            .await
            .unwrap_or_else(|refusal| panic!("product {sku}: {refusal:?}"));
        made.id
    }

    /// Warehouse `code` of `priority`, made by the admin: its id.
    pub async fn warehouse(&self, code: &str, priority: i64) -> i64 {
        let body =
            json!({ "code": code, "name": format!("Warehouse {code}"), "priority": priority });
        let made: crate::api::Warehouse = self
            .create("/warehouses", &self.admin, body)
            .await
            .unwrap_or_else(|refusal| panic!("warehouse {code}: {refusal:?}"));
        made.id
    }

    /// Product "P" in warehouse "W" with `units` on hand; answers (product, warehouse).
    pub async fn stocked_product(&self, units: i64) -> (i64, i64) {
        let (product, warehouse) = (self.product("P", 100).await, self.warehouse("W", 1).await);
        self.stock(warehouse, product, units).await;
        (product, warehouse)
    }

    /// Reserves `quantity` of a product (any warehouse) and answers the reservation.
    pub async fn reserve(&self, product_id: i64, quantity: i64) -> (StatusCode, Value) {
        self.post(
            "/reservations",
            &self.admin,
            json!({ "items": [{ "product_id": product_id, "quantity": quantity }] }),
        )
        .await
    }

    /// `clients` tasks at once each reserve `quantity` of the product, then commit (even
    /// ones) or release (odd ones) it; answers how many reservations were made (a refused
    /// one is skipped). The tasks join before it answers.
    pub async fn reserve_and_settle_concurrently(
        &self,
        product_id: i64,
        clients: usize,
        quantity: i64,
    ) -> usize {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (client, base, token) =
                (self.client.clone(), self.base.clone(), self.admin.clone());
            tasks.push(tokio::spawn(async move {
                let url = format!("{base}/api/v1/reservations");
                let body = json!({ "items": [{ "product_id": product_id, "quantity": quantity }] });
                let answer = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if answer.status() != StatusCode::CREATED {
                    return false;
                }
                let reservation: Value = answer.json().await.unwrap();
                let id = reservation["id"].as_str().unwrap();
                let step = if i % 2 == 0 { "commit" } else { "release" };
                let done = client
                    .post(format!("{url}/{id}/{step}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(done.status(), StatusCode::OK);
                true
            }));
        }
        let mut made = 0;
        for task in tasks {
            made += usize::from(task.await.unwrap());
        }
        made
    }

    /// Stops the server and drops its database.
    pub async fn cleanup(mut self) {
        self.stop().await;
        drop_database(&self.database).await;
    }
}

fn strings(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| s.to_string()).collect()
}
