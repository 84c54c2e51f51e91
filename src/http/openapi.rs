//! The OpenAPI 3.1 document, generated from the handlers' own annotations (utoipa): every
//! API route is registered through `utoipa_axum`'s router, so a route cannot be served
//! without being documented. Served at `GET /openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error body of every failure: `{"error": {"code", "message", "details"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorObject,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorObject {
    /// A snake_case code: `invalid_json`, `unauthorized`, `forbidden`, `not_found`,
    /// `insufficient_stock`, `validation_failed`, `rate_limited`, `overloaded`, ...
    code: String,
    /// A human sentence.
    message: String,
    /// Machine-readable specifics, e.g. the field, or product, requested and available.
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stockline",
        description = "Inventory core: one in-memory actor per stock line, write-behind to PostgreSQL.",
        version = "1"
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth"), (name = "users"), (name = "catalog"), (name = "stock"),
        (name = "reservations"), (name = "orders"), (name = "transfers"), (name = "operations")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
