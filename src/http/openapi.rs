//! The OpenAPI 3.1 document, generated from the handlers' own annotations (utoipa): every
//! API route is registered through `utoipa_axum`'s router, so a route cannot be served
//! without being documented. Served at `GET /openapi.json`.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
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
        (name = "reservations"), (name = "orders"), (name = "transfers"), (name = "shops"), (name = "carts"), (name = "events"),
        (name = "operations")
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

/// The answers that whole classes of operations can give, declared once here instead of
/// on every handler: a handler documents what it decides (201, 404, 409, ...), and this
/// adds what the edge answers around it, where it applies and is not already declared.
pub fn declare_common_answers(document: &mut utoipa::openapi::OpenApi) {
    for (path, item) in document.paths.paths.iter_mut() {
        let api = path.starts_with("/api/");
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (operation, changes) in operations {
            if let Some(operation) = operation {
                declare(operation, api, changes);
            }
        }
    }
}

fn declare(operation: &mut Operation, api: bool, changes: bool) {
    let query = operation.parameters.iter().flatten().any(|p| match p {
        RefOr::T(p) => p.parameter_in == ParameterIn::Query,
        RefOr::Ref(_) => false,
    });
    let secured = operation.security.is_some();
    let mut add = |status: &str, description: &str| {
        let answer = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(answer));
    };
    add(
        "431",
        "Too many request headers, or too large (headers_too_large)",
    );
    if operation.request_body.is_some() || changes && api {
        add(
            "400",
            "The body is missing, is not JSON, or has wrong types (invalid_json)",
        );
        add("413", "The body is over 1 MiB (payload_too_large)");
        add(
            "408",
            "The body did not arrive within the body-read timeout (request_timeout)",
        );
        add(
            "422",
            "A value is invalid, or text holds a NUL; details name the field (validation_failed)",
        );
    }
    if query {
        add(
            "400",
            "A query parameter has the wrong type (invalid_query)",
        );
        add(
            "422",
            "A query value is out of range or holds a NUL; details name the field (validation_failed)",
        );
    }
    if secured {
        add("401", "No, bad, expired or revoked token (unauthorized)");
    }
    if api && changes {
        add(
            "503",
            "overloaded, or not ready; retry after Retry-After seconds",
        );
    }
}
