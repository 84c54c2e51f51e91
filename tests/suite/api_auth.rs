//! Auth and users over HTTP: register, login, logout, me, TOTP, roles.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::*;

#[tokio::test]
async fn register_then_login_by_email_or_phone_and_read_me() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .send(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({ "email": "Ann@Example.com", "password": "long-enough", "name": "Ann", "phone": "+4915112345678" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let user = &body["user"];
    assert_eq!(
        (user["email"].as_str(), user["role"].as_str()),
        (Some("ann@example.com"), Some("customer"))
    );
    assert_eq!(user["totp_enabled"], false);
    assert!(user.get("password_hash").is_none() && user.get("totp_secret").is_none());

    for login in ["ann@example.com", "ANN@example.com", "+4915112345678"] {
        let (status, body) = app
            .send(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({ "login": login, "password": "long-enough" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{login}: {body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let (status, me) = app.get("/auth/me", body["token"].as_str().unwrap()).await;
        assert_eq!((status, me["name"].as_str()), (StatusCode::OK, Some("Ann")));
    }
    app.cleanup().await;
}

#[tokio::test]
async fn registration_refuses_duplicates_and_bad_values() {
    let app = TestApp::spawn().await;
    let register = |body| app.send(Method::POST, "/auth/register", None, Some(body));
    let ok = json!({ "email": "bo@example.com", "password": "long-enough", "name": "Bo", "phone": "+15550001111" });
    assert_eq!(register(ok).await.0, StatusCode::CREATED);
    let cases = [
        (
            json!({ "email": "BO@example.com", "password": "long-enough", "name": "B" }),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            json!({ "email": "b2@example.com", "password": "long-enough", "name": "B", "phone": "+15550001111" }),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            json!({ "email": "b3@example.com", "password": "short", "name": "B" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "email": "not-an-email", "password": "long-enough", "name": "B" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "email": "b4@example.com", "password": "long-enough", "name": "B", "phone": "call me" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "email": "b5@example.com", "password": "long-enough" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "email": 5, "password": "long-enough", "name": "B" }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = register(body.clone()).await;
        assert_eq!(error_code(got, &answer, status), code, "{body}");
    }
    let (status, answer) =
        register(json!({ "email": "b6@example.com", "password": "short", "name": "B" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["error"]["details"]["field"], "password");
    app.cleanup().await;
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_login_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.customer("cy@example.com").await;
    let wrong = app
        .send(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({ "login": "cy@example.com", "password": "not-it-at-all" })),
        )
        .await;
    let unknown = app
        .send(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({ "login": "nobody@example.com", "password": "not-it-at-all" })),
        )
        .await;
    assert_eq!(
        error_code(wrong.0, &wrong.1, StatusCode::UNAUTHORIZED),
        "invalid_credentials"
    );
    assert_eq!(wrong.1, unknown.1);
    assert_eq!(wrong.0, unknown.0);
    app.cleanup().await;
}

#[tokio::test]
async fn missing_malformed_and_logged_out_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("di@example.com").await;
    let (status, body) = app.send(Method::GET, "/auth/me", None, None).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    let (status, body) = app.get("/auth/me", "not.a.token").await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    let (status, _) = app
        .send(Method::POST, "/auth/logout", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/auth/me", &token).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_logout_survives_a_restart() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("ed@example.com").await;
    let (status, _) = app
        .send(Method::POST, "/auth/logout", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let app = app.restart().await;
    let (status, body) = app.get("/auth/me", &token).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    let (_, fresh) = (0, app.login("ed@example.com", "password-1").await);
    assert_eq!(
        app.get("/auth/me", &fresh).await.0,
        StatusCode::OK,
        "tokens issued before the restart stay valid"
    );
    app.cleanup().await;
}

fn totp_code(secret: &str) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new().with_secret(secret).build().unwrap();
    totp.generate_current().to_string()
}

#[tokio::test]
async fn once_totp_is_verified_login_needs_a_valid_code() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("fay@example.com").await;
    let (status, setup) = app.post("/auth/totp/setup", &token, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().unwrap();
    assert!(
        setup["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );

    let (status, body) = app
        .post("/auth/totp/verify", &token, json!({ "code": "000000" }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (status, body) = app
        .post(
            "/auth/totp/verify",
            &token,
            json!({ "code": totp_code(secret) }),
        )
        .await;
    assert_eq!(
        (status, body["totp_enabled"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    let login = |totp: Option<String>| {
        app.send(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({ "login": "fay@example.com", "password": "password-1", "totp": totp })),
        )
    };
    let (status, body) = login(None).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "totp_required"
    );
    let (status, body) = login(Some("123456".into())).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "totp_required"
    );
    let (status, body) = login(Some(totp_code(secret))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["totp_enabled"], true);
    app.cleanup().await;
}

async fn login(app: &TestApp, code: String) -> (StatusCode, serde_json::Value) {
    let body = json!({ "login": "tia@example.com", "password": "password-1", "totp": code });
    app.send(Method::POST, "/auth/login", None, Some(body))
        .await
}

/// RFC 6238, section 5.2: a code is accepted once. Before the fix the second login with
/// the same code within its step was 200.
#[tokio::test]
async fn a_totp_code_signs_in_once_also_after_a_restart() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("tia@example.com").await;
    let (_, setup) = app.post("/auth/totp/setup", &token, json!({})).await;
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            "/auth/totp/verify",
            &token,
            json!({ "code": totp_code(&secret) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let code = totp_code(&secret);
    let (status, body) = login(&app, code.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login(&app, code.clone()).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "totp_required",
        "the same code a second time"
    );
    let app = app.restart().await;
    let (status, body) = login(&app, code).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "totp_required",
        "the same code after a restart"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn only_an_admin_changes_roles_and_the_change_applies_at_once() {
    let app = TestApp::spawn().await;
    let (id, token) = app.customer("gus@example.com").await;
    let (status, body) = app
        .put(
            &format!("/users/{id}/role"),
            &token,
            json!({ "role": "admin" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    let (status, body) = app
        .post("/warehouses", &token, json!({ "code": "X", "name": "X" }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );

    let (status, body) = app
        .put(
            &format!("/users/{id}/role"),
            &app.admin,
            json!({ "role": "operator" }),
        )
        .await;
    assert_eq!(
        (status, body["role"].as_str()),
        (StatusCode::OK, Some("operator"))
    );
    // The same token now carries the new role.
    let (status, _) = app
        .post("/warehouses", &token, json!({ "code": "X", "name": "X" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = app
        .put(
            &format!("/users/{id}/role"),
            &app.admin,
            json!({ "role": "root" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (status, body) = app
        .put("/users/999999/role", &app.admin, json!({ "role": "admin" }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn login_and_register_are_rate_limited_per_address() {
    let app = TestApp::spawn_with(&["--auth-rate-per-minute", "3"]).await;
    // The admin's login at start used one of the three.
    let attempt = || {
        app.send(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({ "login": "nobody@example.com", "password": "whatever1" })),
        )
    };
    assert_eq!(attempt().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt().await.0, StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({ "login": "nobody@example.com", "password": "whatever1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        error_code(
            StatusCode::TOO_MANY_REQUESTS,
            &body,
            StatusCode::TOO_MANY_REQUESTS
        ),
        "rate_limited"
    );
    let (status, _) = app
        .send(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({ "email": "new@example.com", "password": "long-enough", "name": "N" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "register shares the limit"
    );
    // Other endpoints are not limited.
    assert_eq!(app.get("/auth/me", &app.admin).await.0, StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test]
async fn a_disabled_users_token_stops_working_at_once_and_it_cannot_sign_in() {
    let app = TestApp::spawn().await;
    let (id, token) = app.customer("leaver@example.com").await;
    assert_eq!(app.get("/auth/me", &token).await.0, StatusCode::OK);
    let (status, user) = app
        .put(
            &format!("/users/{id}/status"),
            &app.admin,
            json!({ "status": "disabled" }),
        )
        .await;
    assert_eq!(
        (status, user["status"].as_str()),
        (StatusCode::OK, Some("disabled")),
        "{user}"
    );
    let (status, body) = app.get("/auth/me", &token).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    let (status, body) = app
        .send(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({ "login": "leaver@example.com", "password": "password-1" })),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    // Enabled again, it signs in; only an admin may do either, and not to itself.
    let (status, _) = app
        .put(
            &format!("/users/{id}/status"),
            &app.admin,
            json!({ "status": "active" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = app.login("leaver@example.com", "password-1").await;
    let (status, body) = app
        .put(
            &format!("/users/{id}/status"),
            &token,
            json!({ "status": "disabled" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    let (status, me) = app.get("/auth/me", &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    let admin_id = me["id"].as_i64().unwrap();
    let (status, body) = app
        .put(
            &format!("/users/{admin_id}/status"),
            &app.admin,
            json!({ "status": "disabled" }),
        )
        .await;
    assert_eq!(error_code(status, &body, StatusCode::CONFLICT), "conflict");
    app.cleanup().await;
}

#[tokio::test]
async fn a_user_deleted_in_the_database_loses_its_token_within_the_role_cache_lifetime() {
    use sqlx::Connection;
    let app = TestApp::spawn().await;
    let (id, token) = app.customer("gone@example.com").await;
    assert_eq!(app.get("/auth/me", &token).await.0, StatusCode::OK);
    let mut db = sqlx::PgConnection::connect(&database_url(&app.database))
        .await
        .unwrap();
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
    tokio::time::sleep(stockline::auth::ROLE_FRESH_FOR).await;
    let (status, body) = app.get("/auth/me", &token).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn revocations_of_tokens_that_expired_anyway_are_swept_from_memory() {
    let database = fresh_database();
    let pool = stockline::store::connect_and_migrate(&database_url(&database))
        .await
        .unwrap();
    let auth = stockline::auth::Auth::load(&pool, None, std::time::Duration::from_secs(1), 4, 10)
        .await
        .unwrap();
    let user: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, name, password_hash) VALUES ('r@example.com', 'R', 'x') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for _ in 0..50 {
        let token = auth.issue(user).unwrap();
        let identity = auth.identify(&pool, &token).await.unwrap();
        auth.revoke(&pool, &identity).await.unwrap();
    }
    assert_eq!(auth.tracked().0, 50);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    auth.sweep();
    assert_eq!(auth.tracked().0, 0, "expired revocations are gone");
    pool.close().await;
    drop_database(&database).await;
}
