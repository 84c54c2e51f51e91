//! How the domain's refusals answer over HTTP: each domain module says why it refuses in
//! its own terms, and only here does that become a status and a code of the contract, and
//! a refusal an HTTP response (with `Retry-After` and `Connection: close` where due).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::error::AppError;
use crate::shops::ShopError;

impl From<AuthError> for AppError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Forbidden => Self::Forbidden,
            AuthError::Unauthenticated(why) => Self::unauthorized(why),
            AuthError::Store(error) => error.into(),
            AuthError::Internal(what) => Self::Internal(what),
        }
    }
}

impl From<ShopError> for AppError {
    fn from(error: ShopError) -> Self {
        match error {
            ShopError::Forbidden => Self::Forbidden,
            ShopError::UnknownShop(id) => Self::NotFound(format!("shop {id}")),
            ShopError::UnknownWarehouse(id) => Self::NotFound(format!("warehouse {id}")),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(cause, "internal error");
        }
        let status = self.status();
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs.to_string()),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some("1".to_owned()),
            _ => None,
        };
        let mut response = (status, axum::Json(json!({ "error": self.body() }))).into_response();
        if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if matches!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body is left unread, so the connection cannot carry another
            // request: say so, or a keep-alive client's next request on it fails.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::InvalidJson("expected a JSON body with Content-Type: application/json".into())
            }
            _ => {
                let text = rejection.body_text();
                match missing_field(&text) {
                    Some(field) => Self::validation(field, "is required"),
                    None => Self::InvalidJson(text),
                }
            }
        }
    }
}

/// serde's "missing field `x`" names the field a well-formed body lacks.
fn missing_field(text: &str) -> Option<String> {
    let rest = &text[text.find("missing field `")? + "missing field `".len()..];
    Some(rest[..rest.find('`')?].to_owned())
}

impl From<PathRejection> for AppError {
    fn from(_: PathRejection) -> Self {
        Self::NotFound("resource".into())
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidQuery(format!("query: {}", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(
            missing_field(
                "Failed to deserialize the JSON body into the target type: missing field `sku` at line 1 column 2"
            ),
            Some("sku".into())
        );
        assert_eq!(missing_field("invalid type: string"), None);
    }
}
