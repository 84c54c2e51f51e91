//! `GET /console`: the operator console, a page and a small script over this API, built
//! into the binary (nothing is fetched at run time; it works offline). Sign-in and every
//! refusal are the API's own: the console holds no data and no rights of its own.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::AppState;

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(style))
}

#[utoipa::path(get, path = "/console", tag = "operations",
    responses((status = 200, description = "The operator console (HTML); sign in with an operator's, admin's or shop member's account", content_type = "text/html")))]
async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

#[utoipa::path(get, path = "/console/console.js", tag = "operations",
    responses((status = 200, description = "The console's script", content_type = "text/javascript")))]
async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[utoipa::path(get, path = "/console/console.css", tag = "operations",
    responses((status = 200, description = "The console's style sheet", content_type = "text/css")))]
async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// An embedded file, with headers that keep it to itself: only this server's script and
/// style run in it, no framing, no sniffing, no referrer.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Small files, revalidated each time, so a new binary's console is seen at once.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
