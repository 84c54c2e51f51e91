//! A request and its answer as NATS messages: the method, the URI and the status in
//! headers of their own, the HTTP headers beside them, the body as the payload.

use std::sync::Arc;

use async_nats::HeaderMap;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use tower::ServiceExt;

use super::protocol::Operations;
use super::{FORWARDED, Forwarded, MAX_ANSWER, METHOD, NOT_OWNER, STATUS, URI, not_owner};
use crate::cluster::shard::Shard;
use crate::error::AppError;

/// Headers that describe the request itself, not one connection (hop-by-hop headers and
/// the length, which the body gives again, stay behind), and never a client's own claim
/// to be a node.
pub(super) fn relayed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-connection"
            | "content-length"
            | "host"
            | FORWARDED
            | NOT_OWNER
    )
}

pub(super) fn is_not_owner(answer: &async_nats::Message) -> bool {
    answer
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(NOT_OWNER).is_some())
}

/// Runs a forwarded request for `shard` through this node's router and replies with its
/// answer (with no router yet, the node cannot serve: the forwarder tries again).
pub(super) async fn answer(
    client: async_nats::Client,
    app: Option<Router>,
    shard: Shard,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let response = match (app, request_from(message)) {
        (Some(app), Some(request)) => match app.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        (None, _) => not_owner(shard),
        (_, None) => {
            AppError::InvalidQuery("a forwarded request could not be read".into()).into_response()
        }
    };
    let (parts, body) = response.into_parts();
    let (parts, body) = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(body) => (parts, body),
        Err(_) => {
            let (parts, body) =
                AppError::Internal("the answer is too large to forward between nodes".into())
                    .into_response()
                    .into_parts();
            let body = axum::body::to_bytes(body, MAX_ANSWER)
                .await
                .unwrap_or_default();
            (parts, body)
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(STATUS, parts.status.as_str());
    add_http_headers(&mut headers, &parts.headers);
    if parts.headers.contains_key(NOT_OWNER) {
        headers.insert(NOT_OWNER, "1");
    }
    if let Err(error) = client.publish_with_headers(reply, headers, body).await {
        tracing::warn!(%error, "the answer to a forwarded request was not sent");
    }
}

/// Serves a typed operation for `shard` and replies with its answer; a node with nothing
/// to serve operations with, or that does not serve the shard, says it is not the owner.
pub(super) async fn operate(
    client: async_nats::Client,
    operations: Option<Arc<dyn Operations>>,
    shard: Shard,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let answer = match operations {
        Some(operations) => operations.serve(shard, message.payload).await,
        None => None,
    };
    let sent = match answer {
        Some(answer) => client.publish(reply, answer.into()).await,
        None => {
            let mut headers = HeaderMap::new();
            headers.insert(NOT_OWNER, "1");
            client
                .publish_with_headers(reply, headers, Bytes::new())
                .await
        }
    };
    if let Err(error) = sent {
        tracing::warn!(%error, "the answer to an operation was not sent");
    }
}

/// The HTTP request a forwarded message carries, marked [`Forwarded`] (and, for the
/// logs, [`FORWARDED`]).
fn request_from(message: async_nats::Message) -> Option<Request<Body>> {
    let headers = message.headers?;
    let method = Method::from_bytes(headers.get(METHOD)?.as_str().as_bytes()).ok()?;
    let uri: Uri = headers.get(URI)?.as_str().parse().ok()?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(message.payload))
        .ok()?;
    *request.headers_mut() = http_headers(&headers, &[METHOD, URI]);
    request
        .headers_mut()
        .insert(FORWARDED, HeaderValue::from_static("1"));
    request.extensions_mut().insert(Forwarded);
    Some(request)
}

/// The HTTP answer a reply carries.
pub(super) fn relay(answer: async_nats::Message) -> Response<Body> {
    let Some(headers) = answer.headers else {
        return AppError::Internal("a node answered a forwarded request without a status".into())
            .into_response();
    };
    let status = headers
        .get(STATUS)
        .and_then(|s| s.as_str().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(answer.payload));
    *response.status_mut() = status;
    *response.headers_mut() = http_headers(&headers, &[STATUS]);
    response
        .headers_mut()
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    response
}

/// The HTTP headers a message carries: all but ours (`own`) and those never relayed.
fn http_headers(headers: &HeaderMap, own: &[&str]) -> axum::http::HeaderMap {
    let mut http = axum::http::HeaderMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if own.iter().any(|own| name.eq_ignore_ascii_case(own)) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if !relayed(&name) {
            continue;
        }
        for value in values {
            if let Ok(value) = HeaderValue::from_str(value.as_str()) {
                http.append(name.clone(), value);
            }
        }
    }
    http
}

/// Adds the relayed headers of `http` to a message's `headers` (a value that is not
/// text, which NATS headers cannot carry, stays behind).
pub(super) fn add_http_headers(headers: &mut HeaderMap, http: &axum::http::HeaderMap) {
    for (name, value) in http {
        if relayed(name)
            && let Ok(value) = value.to_str()
        {
            headers.append(name.as_str(), value);
        }
    }
}
