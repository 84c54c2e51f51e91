//! Request ids: every answer carries `x-request-id` (the client's, if sane, else a new
//! one), and the request's log lines carry it as a field (JSON logs of the real binary).

use testkit::*;

#[tokio::test]
async fn every_answer_carries_the_request_id_the_client_sent_or_a_new_one() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/products", app.base);
    let sent = client
        .get(&url)
        .bearer_auth(&app.admin)
        .header("x-request-id", "checkout-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.headers()["x-request-id"], "checkout-7f3a");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let fresh = client.get(&url).send().await.unwrap();
        assert_eq!(fresh.status(), 401, "errors carry it too");
        let id = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 3, "a new id per request");
    for insane in ["", &"x".repeat(129), "has space"] {
        let answer = client
            .get(&url)
            .header("x-request-id", insane)
            .send()
            .await
            .unwrap();
        let id = answer.headers()["x-request-id"].to_str().unwrap();
        assert!(
            uuid::Uuid::parse_str(id).is_ok(),
            "{insane:?} was replaced by {id}"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_request_id_is_a_field_of_the_requests_json_log_lines() {
    let database = fresh_database();
    let log_path = std::env::temp_dir().join(format!("{database}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut child, base) = start_binary_logging(
        &database,
        &[
            ("STOCKLINE_LOG_FORMAT", "json"),
            ("RUST_LOG", "warn,tower_http=debug"),
        ],
        std::process::Stdio::from(log),
    );
    let answer = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .header("x-request-id", "trace-me-0451")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["x-request-id"], "trace-me-0451");
    let mut carried = Vec::new();
    for _ in 0..50 {
        carried = std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["span"]["request_id"] == "trace-me-0451")
            .collect();
        if !carried.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !carried.is_empty(),
        "no JSON log line with the request id as a field"
    );
    assert_eq!(carried[0]["span"]["path"], "/healthz");
    let _ = std::fs::remove_file(&log_path);
    drop_database(&database).await;
}
