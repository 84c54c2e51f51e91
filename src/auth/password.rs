//! bcrypt hashing, run on the blocking pool: a hash at cost 12 takes ~250 ms of CPU.

use super::error::{AuthError, Result};

pub async fn hash(password: String, cost: u32) -> Result<String> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
        .map_err(|e| AuthError::Internal(e.to_string()))
}

/// Whether `password` matches `hash`. With no hash (an unknown login) it checks `dummy`, a
/// hash of the same cost that matches nothing, so that an unknown login and a wrong
/// password take the same time, and answers false.
pub async fn verify(password: String, hash: Option<String>, dummy: &str) -> Result<bool> {
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| dummy.to_owned());
    let matches =
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
    Ok(known && matches)
}
