//! Where a request is served in cluster mode: which shard's owner changes the stock it
//! names, read from its path and, for writes, the product ids in its JSON body.
//!
//! Only what touches stock lines is routed; everything else (catalog, users, shops, the
//! ledger's reads, operators' views) is served by the node the request reached, from the
//! shared database. A body that cannot be read is served where it arrived, so the handler
//! answers its validation error in the contract's format.

use axum::http::Method;
use serde::Deserialize;
use stockline_actors::{Home, ProductId, ReservationId};
use uuid::Uuid;

use super::shard::{Shard, shard_of};

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Served by the node it reached.
    Here,
    /// Served by the owner of this shard.
    Shard(Shard),
    /// Changes stock in several shards (a multi-product reservation across shards, a bulk
    /// adjustment): the parts go to each owner.
    Shards(Vec<Shard>),
    /// Names a reservation across shards (its id says so): coordinated by the node the
    /// request reached.
    Saga(Uuid),
    /// Names a reservation whose id says nothing of where it is (made before ids carried
    /// their shard): served by the owner of the shard its stock is in, as the store says.
    Reservation(Uuid),
}

#[derive(Deserialize)]
struct Product {
    product_id: ProductId,
}

#[derive(Deserialize)]
struct Items {
    items: Vec<Product>,
}

/// Where `method path` with `body` is served (the path without the query, with or without
/// the `/api/v1` prefix).
pub fn route_of(method: &Method, path: &str, body: &[u8]) -> Route {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let product_in_body = || match serde_json::from_slice::<Product>(body) {
        Ok(item) => Route::Shard(shard_of(item.product_id)),
        Err(_) => Route::Here,
    };
    match (method, parts.as_slice()) {
        (&Method::GET, ["products", id, "availability"])
        | (&Method::DELETE, ["products", id])
        | (&Method::GET, ["shops", _, "products", id, "availability"]) => id
            .parse()
            .map_or(Route::Here, |id| Route::Shard(shard_of(id))),
        (&Method::POST, ["stock", "adjustments"])
        | (&Method::PUT, ["stock", "levels"])
        | (&Method::PUT, ["stock", "safety"])
        | (&Method::POST, ["transfers"]) => product_in_body(),
        (&Method::POST, ["stock", "adjustments", "bulk"]) => {
            match serde_json::from_slice::<Vec<Product>>(body) {
                Ok(items) => spread(items.iter().map(|i| i.product_id)),
                Err(_) => Route::Here,
            }
        }
        (&Method::POST, ["reservations"]) => match serde_json::from_slice::<Items>(body) {
            Ok(request) => spread(request.items.iter().map(|i| i.product_id)),
            Err(_) => Route::Here,
        },
        (&Method::GET | &Method::PATCH, ["reservations", id])
        | (&Method::POST, ["reservations", id, "commit" | "release"]) => {
            id.parse().map_or(Route::Here, reservation)
        }
        _ => Route::Here,
    }
}

/// Where reservation `id` is served, from the home its id names (the shard of its first
/// product, or several), with no lookup.
fn reservation(id: Uuid) -> Route {
    match ReservationId(id).home() {
        Some(Home::One(shard)) => Route::Shard(shard),
        Some(Home::Spans) => Route::Saga(id),
        None => Route::Reservation(id),
    }
}

/// One shard, or the several the products are in (none: served here, to be refused).
fn spread(products: impl Iterator<Item = ProductId>) -> Route {
    let mut shards: Vec<Shard> = products.map(shard_of).collect();
    shards.sort_unstable();
    shards.dedup();
    match shards.as_slice() {
        [] => Route::Here,
        [one] => Route::Shard(*one),
        _ => Route::Shards(shards),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other_shard_than(product: ProductId) -> ProductId {
        (product + 1..)
            .find(|p| shard_of(*p) != shard_of(product))
            .unwrap()
    }

    #[test]
    fn stock_changes_go_to_the_owner_of_the_products_shard() {
        let shard = Route::Shard(shard_of(42));
        let line = br#"{"warehouse_id": 1, "product_id": 42, "delta": 5, "reason": "receipt"}"#;
        for (method, path) in [
            (Method::POST, "/api/v1/stock/adjustments"),
            (Method::PUT, "/api/v1/stock/levels"),
            (Method::PUT, "/api/v1/stock/safety"),
            (Method::POST, "/api/v1/transfers"),
        ] {
            assert_eq!(route_of(&method, path, line), shard, "{method} {path}");
        }
        assert_eq!(
            route_of(&Method::GET, "/api/v1/products/42/availability", b""),
            shard
        );
        assert_eq!(
            route_of(
                &Method::GET,
                "/api/v1/shops/3/products/42/availability",
                b""
            ),
            shard
        );
    }

    #[test]
    fn a_reservation_goes_to_its_shard_or_to_several() {
        let one =
            br#"{"items": [{"product_id": 42, "quantity": 1}, {"product_id": 42, "quantity": 2}]}"#;
        assert_eq!(
            route_of(&Method::POST, "/api/v1/reservations", one),
            Route::Shard(shard_of(42))
        );
        let other = other_shard_than(42);
        let two = format!(
            r#"{{"items": [{{"product_id": 42, "quantity": 1}}, {{"product_id": {other}, "quantity": 1}}]}}"#
        );
        let mut both = vec![shard_of(42), shard_of(other)];
        both.sort_unstable();
        assert_eq!(
            route_of(&Method::POST, "/api/v1/reservations", two.as_bytes()),
            Route::Shards(both)
        );
        let homed = ReservationId::homed(Home::One(shard_of(42))).0;
        let spans = ReservationId::homed(Home::Spans).0;
        // An id made before ids carried their shard is looked up.
        let legacy = Uuid::now_v7();
        for (id, route) in [
            (homed, Route::Shard(shard_of(42))),
            (spans, Route::Saga(spans)),
            (legacy, Route::Reservation(legacy)),
        ] {
            for (method, path) in [
                (Method::POST, format!("/api/v1/reservations/{id}/commit")),
                (Method::POST, format!("/api/v1/reservations/{id}/release")),
                (Method::GET, format!("/api/v1/reservations/{id}")),
                (Method::PATCH, format!("/api/v1/reservations/{id}")),
            ] {
                assert_eq!(route_of(&method, &path, b""), route, "{method} {path}");
            }
        }
    }

    #[test]
    fn everything_else_and_anything_unreadable_is_served_where_it_arrived() {
        for (method, path, body) in [
            (Method::GET, "/api/v1/products", &b""[..]),
            (Method::POST, "/api/v1/products", br#"{"sku": "A"}"#),
            (Method::GET, "/api/v1/reservations", b""),
            (Method::GET, "/api/v1/stock/movements", b""),
            (Method::POST, "/api/v1/orders", br#"{"items": []}"#),
            (Method::POST, "/api/v1/stock/adjustments", b"not json"),
            (
                Method::POST,
                "/api/v1/stock/adjustments",
                br#"{"product_id": "x"}"#,
            ),
            (Method::POST, "/api/v1/reservations", br#"{"items": []}"#),
            (Method::GET, "/api/v1/products/abc/availability", b""),
            (Method::POST, "/api/v1/reservations/not-a-uuid/commit", b""),
            (Method::GET, "/healthz", b""),
        ] {
            assert_eq!(
                route_of(&method, path, body),
                Route::Here,
                "{method} {path}"
            );
        }
    }
}
