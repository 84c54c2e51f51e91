//! The `Idempotency-Key` of a request and its fingerprint (its method, path and JSON
//! body, keys sorted), read with the body ([`crate::idempotency`] keeps the answers).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::AppError;
use crate::idempotency::{Idempotent, Keyed, body_error};
use crate::state::AppState;

impl<T: DeserializeOwned> FromRequest<AppState> for Idempotent<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = match request.headers().get("idempotency-key") {
            None => None,
            Some(value) => {
                let key = value.to_str().unwrap_or_default();
                if key.is_empty() || key.len() > 255 {
                    return Err(AppError::validation(
                        "Idempotency-Key",
                        "must have 1 to 255 characters",
                    ));
                }
                Some(key.to_owned())
            }
        };
        let target = format!("{} {}", request.method(), request.uri().path());
        let has_body = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|length| length != "0");
        let value = if has_body {
            super::extract::Json::<Value>::from_request(request, state)
                .await?
                .0
        } else {
            Bytes::from_request(request, state)
                .await
                .map_err(|_| AppError::PayloadTooLarge)?;
            Value::Null
        };
        // serde_json's maps are sorted, so key order does not change the fingerprint.
        let fingerprint = format!("{:x}", Sha256::digest(format!("{target}\n{value}")));
        let body = serde_json::from_value(value).map_err(body_error)?;
        let keyed = key.map(|key| Keyed::new(key, fingerprint));
        Ok(Self::of(body, keyed))
    }
}
