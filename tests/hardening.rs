//! What an attacker or an unlucky client meets: weak secrets refused at start, slow and
//! idle connections closed, a bound on connections that keeps `/healthz` answering, and a
//! per-account lockout against password guessing.

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn a_jwt_secret_under_32_bytes_is_refused_at_start_with_a_clear_message() {
    for secret in ["", "short", "31-bytes-is-still-one-too-short"] {
        let output = Command::new(env!("CARGO_BIN_EXE_stockline"))
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
