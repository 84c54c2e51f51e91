//! The `stockline` binary: what a newcomer running it would see.

mod common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;

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
    let migrate = Command::new(env!("CARGO_BIN_EXE_stockline"))
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let create = |email: &str| {
        Command::new(env!("CARGO_BIN_EXE_stockline"))
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
    let output = Command::new(env!("CARGO_BIN_EXE_stockline"))
        .args(["serve", "--durability", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("durability"));
}
