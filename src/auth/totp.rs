//! TOTP (RFC 6238, SHA-1, 6 digits, 30 s steps, one step of skew) with totp-rs.

use totp_rs::{Builder, Secret, Totp};

use crate::error::{AppError, Result};

/// A new random secret, base32.
pub fn new_secret() -> String {
    Secret::generate().to_base32()
}

fn totp(secret: &str, account: &str) -> Result<Totp> {
    let secret = Secret::try_from_base32(secret)
        .map_err(|e| AppError::Internal(format!("stored TOTP secret: {e}")))?;
    Builder::new()
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some("stockline"))
        .build()
        .map_err(|e| AppError::Internal(format!("TOTP: {e}")))
}

/// The `otpauth://` URI an authenticator app scans.
pub fn uri(secret: &str, account: &str) -> Result<String> {
    totp(secret, account)?
        .to_url()
        .map_err(|e| AppError::Internal(format!("TOTP URI: {e}")))
}

/// Whether `code` is valid now for `secret`.
pub fn check(secret: &str, account: &str, code: &str) -> Result<bool> {
    Ok(totp(secret, account)?.check_current(code.trim()).is_some())
}
