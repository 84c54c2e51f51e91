//! The contract's refusals (API.md "Errors"): each variant is one of its codes, with the
//! status it answers and the body `{"code", "message", "details"}`, which the domain
//! services return and stored answers replay. Database and unexpected errors become an
//! opaque `internal`; no SQL or stack trace leaves the server. Turning a refusal into an
//! HTTP response, and axum's rejections into refusals, is `http/refusals.rs`'s.

use axum::http::StatusCode;
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
