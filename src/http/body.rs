//! Every request body is read here once, before any handler: within the body-read
//! timeout (a client trickling its body is answered 408 and the connection closed, so a
//! slow upload cannot hold a connection for ever), at most 1 MiB (413), and with text
//! PostgreSQL can store.
//!
//! PostgreSQL's `text` and `jsonb` cannot hold the NUL character: one `\u0000` in any
//! client text written behind the actors used to make the whole flush batch fail (and so
//! stop all saving). This middleware refuses it once, for every route, before any handler
//! sees it: in a JSON body (values and keys, at any depth) and in the query string. The
//! answer is 422 `validation_failed` naming the field, as a handler would.
//!
//! JSON can carry a NUL only as the escape `\u0000` (raw control characters are not
//! allowed in JSON strings), so a body without those six bytes is passed on without a
//! second parse; one with them is parsed to find the field (and passed on if the escape
//! turns out to be literal text such as `\\u0000`).

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use crate::error::AppError;

/// Reads the request's body whole; the request to pass on, or the answer that refuses it.
pub async fn read_body(state: &AppState, request: Request) -> Result<Request, Response> {
    if let Some(field) = request.uri().query().and_then(nul_in_query) {
        return Err(
            AppError::validation(field, "must not contain the NUL character").into_response(),
        );
    }
    let (parts, body) = request.into_parts();
    let limit = std::time::Duration::from_millis(state.config.body_read_timeout_ms);
    let bytes = match tokio::time::timeout(limit, axum::body::to_bytes(body, super::MAX_BODY)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) if is_over_limit(&error) => {
            return Err(AppError::PayloadTooLarge.into_response());
        }
        Ok(Err(_)) => {
            return Err(AppError::InvalidJson("the body could not be read".into()).into_response());
        }
        Err(_) => return Err(AppError::BodyTimeout.into_response()),
    };
    if let Some(field) = nul_in_json(&bytes) {
        return Err(
            AppError::validation(field, "must not contain the NUL character").into_response(),
        );
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Whether reading stopped at the 1 MiB limit (rather than on a broken connection).
fn is_over_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The name of the first query parameter whose name or value holds a NUL.
fn nul_in_query(query: &str) -> Option<String> {
    if !query.contains("%00") {
        return None;
    }
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = |s: &str| percent_decode(s).contains(&0);
        (decoded(name) || decoded(value))
            .then(|| String::from_utf8_lossy(&percent_decode(name)).replace('\0', ""))
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    out
}

/// The path (`items[0].reference`, `shipping_address.street`) of the first JSON string or
/// key that holds a NUL; `None` when there is none or the body is not JSON.
pub fn nul_in_json(body: &[u8]) -> Option<String> {
    memchr::memmem::find(body, br"\u0000")?;
    let value: Value = serde_json::from_slice(body).ok()?;
    nul_in_value(&value, String::new())
}

fn nul_in_value(value: &Value, path: String) -> Option<String> {
    let join = |key: &str| {
        let key = key.replace('\0', "");
        if path.is_empty() {
            key
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => {
            Some(if path.is_empty() { "body".into() } else { path })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in_value(item, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(join(key))
            } else {
                nul_in_value(item, join(key))
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_found_at_any_depth_and_named_by_its_path() {
        let body = br#"{"items":[{"product_id":1}],"shipping_address":{"street":"a\u0000b"}}"#;
        assert_eq!(
            nul_in_json(body).as_deref(),
            Some("shipping_address.street")
        );
        let body = br#"{"items":[{"x":1},{"reference":"\u0000"}]}"#;
        assert_eq!(nul_in_json(body).as_deref(), Some("items[1].reference"));
        let body = br#"{"contact":{"na\u0000me":"x"}}"#;
        assert_eq!(nul_in_json(body).as_deref(), Some("contact.name"));
        assert_eq!(nul_in_json(br#""\u0000""#).as_deref(), Some("body"));
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_plain_text() {
        assert_eq!(nul_in_json(br#"{"name":"\\u0000"}"#), None);
        assert_eq!(nul_in_json(br#"{"name":"fine"}"#), None);
        assert_eq!(nul_in_json(b"not json \\u0000"), None);
    }

    #[test]
    fn a_nul_in_the_query_names_its_parameter() {
        assert_eq!(nul_in_query("q=a%00b&limit=5").as_deref(), Some("q"));
        assert_eq!(nul_in_query("limit=5&q%00=1").as_deref(), Some("q"));
        assert_eq!(nul_in_query("q=100%25"), None);
        assert_eq!(nul_in_query("q=plain"), None);
    }
}
