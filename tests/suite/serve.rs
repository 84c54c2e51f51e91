//! The `stockline` binary: what a newcomer running it would see.

use std::process::Command;

use reqwest::StatusCode;
use testkit::*;

#[tokio::test]
async fn the_binary_creates_its_database_prints_its_address_and_exits_zero_on_sigterm() {
    let database = fresh_database();
    let (mut child, url) = start_binary(&database, &[]);
    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(format!("{url}{path}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "exits 0 after SIGTERM"
    );
    drop_database(&database).await;
}

#[tokio::test]
async fn migrate_and_user_create_prepare_a_database_an_admin_can_log_in_to() {
    let database = fresh_database();
    let url = database_url(&database);
    let migrate = Command::new(testkit::binary())
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let create = |email: &str| {
        Command::new(testkit::binary())
            .args([
                "user",
                "create",
                "--email",
                email,
                "--password",
                "s3cret-pass",
                "--role",
                "admin",
            ])
            .args(["--database-url", &url, "--bcrypt-cost", "4"])
            .output()
            .unwrap()
    };
    let created = create("Boss@Example.com");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let duplicate = create("boss@example.com");
    assert_eq!(
        duplicate.status.code(),
        Some(1),
        "a second user with the same email is refused"
    );

    let app = TestApp::start_on(&database).await;
    let token = app.login("boss@example.com", "s3cret-pass").await;
    let (status, me) = app.get("/auth/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["role"], "admin");
    app.cleanup().await;
}

#[test]
fn a_bad_flag_is_refused_before_anything_starts() {
    let output = Command::new(testkit::binary())
        .args(["serve", "--durability", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("durability"));
}

/// SIGTERM while clients reserve: the binary finishes what it took, stops every background
/// task and waits until each has ended, writes what is left, and exits 0. Every
/// reservation it acknowledged is in the database. In `async` mode, with a long flush
/// interval, so that what it acknowledged last is written only by the final drain.
#[tokio::test]
async fn sigterm_under_load_exits_zero_after_every_background_task_ended_losing_nothing() {
    use sqlx::Connection;
    use std::sync::{Arc, Mutex};

    let database = fresh_database();
    let log_path = std::env::temp_dir().join(format!("{database}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut env = ADMIN_ENV.to_vec();
    env.extend([
        ("STOCKLINE_LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
        ("STOCKLINE_DURABILITY", "async"),
        ("STOCKLINE_FLUSH_INTERVAL_MS", "1000"),
    ]);
    let (mut child, base) = start_binary_logging(&database, &env, std::process::Stdio::from(log));
    let app = TestApp::attach(&base, &database).await;
    let (product, _) = app.stocked_product(1_000_000).await;

    let acknowledged: Arc<Mutex<Vec<uuid::Uuid>>> = Arc::default();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, token) = (app.client.clone(), base.clone(), app.admin.clone());
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let body =
                    serde_json::json!({ "items": [{ "product_id": product, "quantity": 1 }] });
                loop {
                    let sent = client
                        .post(format!("{url}/api/v1/reservations"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    // Refused or cut off once the server stops: nothing more to count.
                    let Ok(answer) = sent else { return };
                    if answer.status() != StatusCode::CREATED {
                        return;
                    }
                    let Ok(made) = answer.json::<serde_json::Value>().await else {
                        return;
                    };
                    let id = made["id"].as_str().unwrap().parse().unwrap();
                    acknowledged.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(status.code(), Some(0), "exits 0 after SIGTERM under load");

    let said: Vec<String> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned))
        .collect();
    let ended = said.iter().position(|m| m == "every background task ended");
    let stopped = said.iter().position(|m| m == "stopped");
    assert!(
        matches!((ended, stopped), (Some(e), Some(s)) if e < s),
        "the background tasks ended before the last flush: {said:?}"
    );

    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut db = sqlx::PgConnection::connect(&database_url(&database))
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE id = ANY($1)")
        .bind(&acknowledged)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        stored as usize,
        acknowledged.len(),
        "an acknowledged reservation was lost"
    );
    let _ = db.close().await;
    let _ = std::fs::remove_file(&log_path);
    drop_database(&database).await;
}
