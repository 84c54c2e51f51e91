//! Extractors whose rejections are [`AppError`]s, and the parsing of request values into
//! types that cannot hold bad ones.

use std::ops::RangeInclusive;

use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::error::{AppError, Result};

/// `axum::Json`, rejecting with the contract's error body.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body that may be left out (no bytes at all): `None` then. A body that is sent
/// must be valid JSON of `T`, rejected like [`Json`].
pub struct OptionalJson<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = AppError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| AppError::InvalidJson(e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(Some(value)))
    }
}

/// `axum::extract::Path`; an id that does not parse names no resource: 404.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query`; a parameter of the wrong type is a 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

/// `?limit=` (default 50, at most 500) and `?offset=`.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl Page {
    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Self {
        Self { limit, offset }
    }

    pub fn limit(&self) -> Result<i64> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(AppError::validation("limit", "must be between 1 and 500"));
        }
        Ok(limit)
    }

    pub fn offset(&self) -> Result<i64> {
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(AppError::validation("offset", "must not be negative"));
        }
        Ok(offset)
    }
}

/// A page of a list: `{"items": [...], "total": N}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct List<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// A JSON number that must be a whole number within `range`; anything else (a fraction,
/// a number too large for any integer type) is a 422 naming `field`.
pub fn int_in(value: &Number, field: &str, range: RangeInclusive<i64>) -> Result<i64> {
    value.as_i64().filter(|v| range.contains(v)).ok_or_else(|| {
        AppError::validation(
            field,
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )
    })
}

/// A quantity that moves stock: 1 to 1,000,000,000.
pub fn quantity(value: &Number, field: &str) -> Result<stockline_actors::Quantity> {
    let q = int_in(
        value,
        field,
        1..=stockline_actors::types::MAX_QUANTITY as i64,
    )?;
    stockline_actors::Quantity::try_from(q).map_err(|e| AppError::validation(field, e.to_string()))
}

/// A quantity that sets stock (a level, a safety stock, a cart's count): 0 to
/// 1,000,000,000.
pub fn level(value: &Number, field: &str) -> Result<i64> {
    int_in(
        value,
        field,
        0..=stockline_actors::types::MAX_QUANTITY as i64,
    )
}

/// A required text field: trimmed, non-empty, at most `max` characters.
pub fn text(value: &str, field: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(AppError::validation(
            field,
            format!("must have 1 to {max} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// An optional text field (PATCH bodies): checked like [`text`] when present.
pub fn text_opt(value: Option<&str>, field: &str, max: usize) -> Result<Option<String>> {
    value.map(|v| text(v, field, max)).transpose()
}

/// An optional whole number within `range`: checked like [`int_in`] when present.
pub fn int_opt(
    value: Option<&Number>,
    field: &str,
    range: RangeInclusive<i64>,
) -> Result<Option<i64>> {
    value.map(|v| int_in(v, field, range)).transpose()
}
