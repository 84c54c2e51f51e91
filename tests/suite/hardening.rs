//! What an attacker or an unlucky client meets: weak secrets refused at start, slow and
//! idle connections closed, a bound on connections that keeps `/healthz` answering, and a
//! per-account lockout against password guessing.

use std::process::{Command, Stdio};

use testkit::*;

#[test]
fn a_jwt_secret_under_32_bytes_is_refused_at_start_with_a_clear_message() {
    for secret in ["", "short", "31-bytes-is-still-one-too-short"] {
        let output = Command::new(testkit::binary())
            .arg("serve")
            .env("STOCKLINE_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", database_url("sltest_never_created"))
            .env("STOCKLINE_JWT_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!output.status.success(), "started with secret {secret:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("STOCKLINE_JWT_SECRET") && stderr.contains("at least 32"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "it never listened");
    }
}

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; answers what it sent. Panics if it is
/// still open after `limit`.
async fn read_until_closed(socket: &mut TcpStream, limit: Duration) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// True if the server has closed `socket` (without waiting).
async fn is_closed(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(50), socket.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn slow_header_silent_and_idle_connections_are_closed_after_their_timeouts() {
    let app = TestApp::spawn_with(&[
        "--header-read-timeout-ms",
        "300",
        "--idle-timeout-ms",
        "2000",
    ])
    .await;
    // Half a request head, then nothing.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    // A keep-alive client that makes a request, waits longer than the header timeout
    // (idle is not slow: it is still served), then goes quiet.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    idle.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    read_until_closed(&mut slow, Duration::from_secs(5)).await;
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    idle.write_all(request).await.unwrap();
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "an idle keep-alive connection outlives the header timeout"
    );
    read_until_closed(&mut idle, Duration::from_secs(10)).await;
    app.cleanup().await;
}

#[tokio::test]
async fn at_the_connection_bound_idle_connections_make_room_and_busy_ones_get_503() {
    let bound = 8;
    let app = TestApp::spawn_with(&[
        "--max-connections",
        "8",
        "--header-read-timeout-ms",
        "30000",
    ])
    .await;
    let mut silent = Vec::new();
    for _ in 0..bound {
        silent.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The bound is full of silent connections; /healthz still answers.
    for _ in 0..3 {
        let response = reqwest::Client::new()
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .expect("healthz answers at the bound");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut closed = 0;
    for socket in &mut silent {
        closed += usize::from(is_closed(socket).await);
    }
    assert!(closed >= 1, "an idle connection was closed to make room");
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Every place busy: requests whose body never finishes arriving.
    let mut busy = Vec::new();
    for _ in 0..bound {
        let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
        socket
            .write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(addr(&app)).await.unwrap();
    refused
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"overloaded""#), "{answer}");
    for socket in &mut busy {
        assert!(
            !is_closed(socket).await,
            "a busy connection is never evicted"
        );
    }
    drop(busy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = app.send(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "places free up when clients leave");
    app.cleanup().await;
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_the_account_whatever_the_address_with_an_honest_retry_after()
{
    let app = TestApp::spawn().await;
    app.customer("target@example.com").await;
    let login = |password: &'static str| {
        let (client, base) = (app.client.clone(), app.base.clone());
        async move {
            client
                .post(format!("{base}/api/v1/auth/login"))
                .json(&json!({ "login": "target@example.com", "password": password }))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        assert_eq!(
            login("wrong-guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Locked: even the right password waits, and the answer says how long.
    let locked = login("password-1").await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "the first lock is one second");
    let body: serde_json::Value = locked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another account is not locked.
    app.customer("other@example.com").await;
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        login("password-1").await.status(),
        StatusCode::OK,
        "the lock ends when it said"
    );
    // A success clears the count: five more failures are allowed before the next lock.
    for _ in 0..5 {
        assert_eq!(
            login("wrong-again").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login("wrong-again").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_413_says_connection_close_so_a_keep_alive_client_does_not_reuse_a_broken_connection() {
    let app = TestApp::spawn().await;
    let big = format!(
        r#"{{"sku":"S","name":"{}","price_cents":1}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let response = app
        .client
        .post(format!("{}/api/v1/products", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["connection"], "close");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // The same client's next requests go through (on a new connection).
    for _ in 0..5 {
        let (status, _) = app.get("/api/v1/products", &app.admin).await;
        assert_eq!(status, StatusCode::OK);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_that_trickles_in_slower_than_the_body_read_timeout_gets_408_and_the_connection_closes()
 {
    let app = TestApp::spawn_with(&["--body-read-timeout-ms", "300"]).await;
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    let (status, _) = app.send(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.cleanup().await;
}
