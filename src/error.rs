//! One error type for the whole edge, answering API.md's body and status codes:
//! `{"error": {"code", "message", "details"}}`. Database and unexpected errors are logged
//! with their cause and answered as an opaque 500; no SQL or stack trace leaves the server.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use stockline_actors::CoreError;

/// `Result` with [`AppError`] as the default error.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Every failure the edge answers.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body is not JSON, or has the wrong JSON types.
    #[error("{0}")]
    InvalidJson(String),
    /// 400: a query parameter has the wrong type or is out of range.
    #[error("{0}")]
    InvalidQuery(String),
    /// 401 with a specific code: `unauthorized`, `invalid_credentials`, `totp_required`.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: authenticated, but not allowed.
    #[error("you may not do this")]
    Forbidden,
    /// 404: unknown id or path.
    #[error("{0} not found")]
    NotFound(String),
    /// 409: the state forbids it.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 408: the body did not arrive within the body-read timeout.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// 431: too many request headers, or too large.
    #[error("the request headers are too many or too large")]
    HeadersTooLarge,
    /// 413: body over 1 MiB.
    #[error("the request body is larger than 1 MiB")]
    PayloadTooLarge,
    /// 422 with a code of its own (`idempotency_key_reused`, `amount_mismatch`).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 422 `validation_failed`, naming the field.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// 429 `rate_limited`: too many attempts from this address.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 503 `overloaded`: a bound was reached; retry after a moment.
    #[error("the server is overloaded; retry shortly")]
    Overloaded,
    /// 503 `unavailable`: not ready, or the store did not confirm in time.
    #[error("{0}")]
    Unavailable(String),
    /// 500, logged with its cause, answered without it.

    #[error("internal error: {0}")]
    Internal(String),
    /// Another node's refusal (the owner of some stock), passed on as it answered it.
    #[error("{message}")]
    Relayed {
        status: StatusCode,
        code: String,
        message: String,
        details: Value,
    },
}

impl AppError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized {
            code: "unauthorized",
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            code: "conflict",
            message: message.into(),
            details: json!({}),
        }
    }

    /// `error`, the contract's error object another node answered with `status`.
    pub fn relayed(status: StatusCode, error: &Value) -> Self {
        let text = |field: &str| error[field].as_str().unwrap_or_default().to_owned();
        let code = match text("code") {
            code if code.is_empty() => "unavailable".to_owned(),
            code => code,
        };
        Self::Relayed {
            status,
            code,
            message: text("message"),
            details: error.get("details").cloned().unwrap_or_else(|| json!({})),
        }
    }

    fn parts(&self) -> (StatusCode, &str, Value) {
        match self {
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json", json!({})),
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query", json!({})),
            Self::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code, json!({})),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", json!({})),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", json!({})),
            Self::Conflict { code, details, .. } => (StatusCode::CONFLICT, code, details.clone()),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout", json!({})),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                json!({}),
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                json!({}),
            ),
            Self::Validation { field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                json!({ "field": field }),
            ),
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code, json!({})),
            Self::RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                json!({ "retry_after_seconds": retry_after_secs }),
            ),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", json!({})),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", json!({})),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", json!({})),
            Self::Relayed {
                status,
                code,
                details,
                ..
            } => (*status, code, details.clone()),
        }
    }
}

impl AppError {
    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The error object of the contract: `{"code", "message", "details"}`.
    pub fn body(&self) -> Value {
        let (_, code, details) = self.parts();
        let message = match self {
            Self::Internal(_) => "something went wrong on our side".to_owned(),
            other => other.to_string(),
        };
        json!({ "code": code, "message": message, "details": details })
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(cause, "internal error");
        }
        let status = self.parts().0;
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

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(%error, "database unreachable");
                Self::Unavailable("the database is unreachable; retry shortly".into())
            }
            _ => Self::Internal(error.to_string()),
        }
    }
}

impl From<CoreError> for AppError {
    fn from(error: CoreError) -> Self {
        let message = error.to_string();
        match error {
            CoreError::InsufficientStock {
                product_id,
                requested,
                available,
            } => Self::Conflict {
                code: "insufficient_stock",
                message,
                details: json!({ "product_id": product_id, "requested": requested, "available": available }),
            },
            CoreError::WarehouseInactive { warehouse_id } => Self::Conflict {
                code: "warehouse_inactive",
                message,
                details: json!({ "warehouse_id": warehouse_id }),
            },
            CoreError::ReservationNotPending { status } => Self::Conflict {
                code: "reservation_not_pending",
                message,
                details: json!({ "status": status.as_str() }),
            },
            CoreError::VersionMismatch { expected, actual } => Self::Conflict {
                code: "version_mismatch",
                message,
                details: json!({ "current_version": actual, "expected_version": expected }),
            },
            CoreError::NotHeld => Self::conflict(message),
            CoreError::Backordered {
                product_id,
                backordered,
            } => Self::Conflict {
                code: "backordered",
                message,
                details: json!({ "product_id": product_id, "backordered": backordered }),
            },
            CoreError::NotInShop { .. } => Self::validation("warehouse_id", message),
            CoreError::PartNotHeld { .. } => Self::validation("items", message),
            CoreError::UnknownWarehouse { warehouse_id } => {
                Self::NotFound(format!("warehouse {warehouse_id}"))
            }
            CoreError::ReservationNotFound => Self::NotFound("reservation".into()),
            CoreError::InvalidQuantity(m) => Self::validation("quantity", m),
            CoreError::LevelOverflow => Self::validation("quantity", message),
            CoreError::SameWarehouse => Self::validation("to_warehouse_id", message),
            CoreError::Overloaded => Self::Overloaded,
            CoreError::Unavailable(m) => Self::Unavailable(m),
        }
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

/// Unique-key violations of `constraint` are answered as 409 `conflict`; anything else
/// is passed on.
pub fn on_constraint(error: sqlx::Error, constraint: &str, message: &str) -> AppError {
    match &error {
        sqlx::Error::Database(db) if db.constraint() == Some(constraint) => {
            AppError::conflict(message)
        }
        _ => error.into(),
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
