//! TOTP (RFC 6238, SHA-1, 6 digits, 30 s steps, one step of skew) with totp-rs.

use totp_rs::{Builder, Secret, Totp};

use super::error::{AuthError, Result};

/// A new random secret, base32.
pub fn new_secret() -> String {
    Secret::generate().to_base32()
}

fn totp(secret: &str, account: &str) -> Result<Totp> {
    let secret = Secret::try_from_base32(secret)
        .map_err(|e| AuthError::Internal(format!("stored TOTP secret: {e}")))?;
    Builder::new()
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some("stockline"))
        .build()
        .map_err(|e| AuthError::Internal(format!("TOTP: {e}")))
}

/// The `otpauth://` URI an authenticator app scans.
pub fn uri(secret: &str, account: &str) -> Result<String> {
    totp(secret, account)?
        .to_url()
        .map_err(|e| AuthError::Internal(format!("TOTP URI: {e}")))
}

/// The time step `code` is valid for now (within one step of skew), if it is valid.
/// A code must be accepted once only (RFC 6238, section 5.2): the caller keeps the step
/// a sign-in used and refuses that step and earlier ones ([`take_step`]).
pub fn check(secret: &str, account: &str, code: &str) -> Result<Option<u64>> {
    Ok(totp(secret, account)?.check_current(code.trim()))
}

/// Takes `step` as the user's last sign-in step, if it is past the one kept; answers
/// whether it did. One conditional statement, so two nodes (or two requests) accepting
/// the same code at once cannot both take it.
pub async fn take_step(pool: &sqlx::PgPool, user_id: i64, step: u64) -> Result<bool> {
    let taken = sqlx::query(
        "UPDATE users SET totp_last_step = $2
         WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
    )
    .bind(user_id)
    .bind(i64::try_from(step).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(taken.rows_affected() == 1)
}
