//! The edge in cluster mode, and `GET /admin/cluster`.
//!
//! [`edge`] decides where each request is served (`cluster::route`): a request that
//! changes or reads stock lines goes to the owner of their shard, served here if that is
//! this node, forwarded over NATS otherwise; anything else is served here from the shared
//! database. A forwarded request is never forwarded again: a node that does not serve its
//! shard (any more) says so, and the forwarder retries. Before serving a routed request,
//! the owner reads the products and warehouses it names from the database if it has not
//! seen them (created through another node a moment ago). After a change to products,
//! warehouses or shops, the node that made it announces it to the others
//! (`cluster::reference`), and [`listen`] applies what the others announce.
//!
//! A reservation whose products are in different shards is coordinated by the node it
//! reached, one part per shard (`http::saga`). A bulk adjustment over several shards is
//! split by shard, each part served by its owner.
//!
//! Orders are served by the owner of the shard their id names (`inventory::orders`), a
//! customer's carts by the owner of the customer's shard (`inventory::carts`). Events and
//! webhooks work on every node (`events::sequence`, `events::lead`): every endpoint works
//! through every node.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::caller::Caller;
use super::extract::Json;
use super::openapi::ErrorBody;
use crate::auth::Role;
use crate::background::Background;
use crate::cluster::SHARDS;
use crate::cluster::reference::{self, Change};
use crate::cluster::route::{Route, route_of};
use crate::error::{AppError, Result};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cluster))
}

/// Where a request is served (nothing to decide in single-process mode).
pub async fn edge(state: AppState, request: Request, next: Next) -> Response {
    if state.cluster.is_none() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // Read whole already (`body::read_body`, called first): this takes no time.
    let Ok(bytes) = axum::body::to_bytes(body, super::MAX_BODY).await else {
        return AppError::PayloadTooLarge.into_response();
    };
    // A request that changes or reads stock lines is served here all the same: its handler
    // runs the operation through `inventory`, which serves it from this node's core, sends
    // it typed to its shard's owner, or coordinates it over several shards. The products
    // and warehouses it names must be known here first, for the handler to check them.
    if route_of(&parts.method, parts.uri.path(), &bytes) != Route::Here
        && let Err(error) = load_unseen_references(&state, parts.uri.path(), &bytes).await
    {
        return error.into_response();
    }
    serve_here(&state, Request::from_parts(parts, Body::from(bytes)), next).await
}

/// Serves `request` on this node; a change to reference data is announced to the others
/// before the answer goes out.
async fn serve_here(state: &AppState, request: Request, next: Next) -> Response {
    let change = announced(request.method(), request.uri().path());
    let response = next.run(request).await;
    if let (Some(change), Some(cluster)) = (change, &state.cluster)
        && response.status().is_success()
    {
        reference::announce(&cluster.nats, &cluster.name, &change).await;
    }
    response
}

/// What a request's path says it changes among the reference data other nodes copy.
fn announced(method: &Method, path: &str) -> Option<Change> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let path = path.strip_prefix("/api/v1")?;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        // A new product is read by the others when first named (see `load_unseen_references`).
        ["products", id, ..] => id.parse().ok().map(|id| Change::Product { id }),
        ["warehouses", ..] => Some(Change::Warehouses),
        ["shops", ..] => Some(Change::Shops),
        _ => None,
    }
}

/// Reads from the store the products and warehouses a routed request names that this
/// node has not seen: made through another node a moment ago, their announcement may not
/// have arrived yet.
pub(super) async fn load_unseen_references(
    state: &AppState,
    path: &str,
    body: &[u8],
) -> Result<()> {
    let (products, warehouses) = named(path, body);
    crate::inventory::know(state, &products, &warehouses).await
}

/// The product and warehouse ids a request names in its path and its JSON body (at the
/// top, in `items`, or in a top-level array).
fn named(path: &str, body: &[u8]) -> (Vec<i64>, Vec<i64>) {
    let (mut products, mut warehouses) = (Vec::new(), Vec::new());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(i) = parts.iter().position(|p| *p == "products")
        && let Some(id) = parts.get(i + 1).and_then(|id| id.parse().ok())
    {
        products.push(id);
    }
    let mut collect = |object: &Value| {
        if let Some(id) = object.get("product_id").and_then(Value::as_i64) {
            products.push(id);
        }
        for field in ["warehouse_id", "from_warehouse_id", "to_warehouse_id"] {
            if let Some(id) = object.get(field).and_then(Value::as_i64) {
                warehouses.push(id);
            }
        }
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.iter().for_each(&mut collect),
        Ok(object @ Value::Object(_)) => {
            collect(&object);
            if let Some(Value::Array(items)) = object.get("items") {
                items.iter().for_each(&mut collect);
            }
        }
        _ => {}
    }
    (products, warehouses)
}

/// Applies what the other nodes announce, until the server stops.
pub fn listen(state: AppState, background: &Background) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let stop = background.stopping();
    background.spawn(async move {
        let mut changes = match cluster
            .nats
            .subscribe(reference::subject(&cluster.name))
            .await
        {
            Ok(changes) => changes,
            Err(error) => {
                tracing::error!(%error, "cannot hear other nodes' changes to reference data");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                message = changes.next() => message,
                _ = stop.cancelled() => return,
            };
            let Some(message) = message else { return };
            let Some(change) = reference::parse(&message.payload) else {
                continue;
            };
            if let Err(error) = apply(&state, &change).await {
                tracing::warn!(%error, ?change, "applying another node's change failed");
            }
        }
    });
}

async fn apply(state: &AppState, change: &Change) -> Result<()> {
    match change {
        Change::Product { id } => {
            state.catalog.refresh(&state.db, *id).await?;
        }
        Change::Warehouses => crate::inventory::reload_warehouses(state).await?,
        Change::Shops => state.shops.refresh(&state.db).await?,
        Change::Revoked { jti, expires_at } => state.auth.revoked_elsewhere(*jti, *expires_at),
    }
    Ok(())
}

/// Announces that `identity`'s token was logged out (cluster mode).
pub async fn announce_revoked(state: &AppState, jti: Uuid, expires_at: DateTime<Utc>) {
    if let Some(cluster) = &state.cluster {
        let change = Change::Revoked { jti, expires_at };
        reference::announce(&cluster.nats, &cluster.name, &change).await;
    }
}

/// How the answering server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// One process, no NATS.
    Single,
    /// Nodes sharing the shards by leases.
    Cluster,
}

/// The cluster as the database has it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// `single` (one process, no NATS) or `cluster`.
    pub mode: ClusterMode,
    /// `STOCKLINE_CLUSTER_NAME` (cluster mode).
    pub cluster: Option<String>,
    /// The node that answered.
    pub node_id: Option<String>,
    pub shard_lease_secs: Option<u64>,
    /// Shards the answering node serves now by its own clock (it stops a fifth of a
    /// lease before its lease in the database runs out).
    pub served_here: u32,
    pub shards_total: u32,
    /// Shards whose lease has run out or was never taken: their stock cannot be changed
    /// until a node claims them.
    pub shards_unowned: u32,
    /// Reservations across shards whose commit or release is still reaching their parts
    /// (the nodes finish them; one that stays here says a shard cannot be served).
    pub reservations_unfinished: i64,
    pub nodes: Vec<NodeView>,
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct NodeView {
    pub node_id: String,
    pub http_addr: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Its heartbeat is newer than one lease.
    pub live: bool,
    /// Its range of journal numbers.
    pub ordinal: Option<i16>,
    /// Shards whose unexpired lease it holds.
    #[sqlx(skip)]
    pub shards: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ShardView {
    pub shard: i16,
    /// The node whose lease is unexpired; `null` if none.
    pub owner: Option<String>,
    /// Grows by one at every claim (the fencing token).
    pub epoch: i64,
    /// When its lease runs out unless renewed; `null` if never claimed or released.
    pub expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/admin/cluster", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "The nodes, how many shards each holds, and every shard's owner and epoch; `mode: single` with no nodes for a single-process server", body = ClusterView),
              (status = 403, description = "The role may not do this", body = ErrorBody)))]
async fn cluster(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<ClusterView>> {
    caller.require(Role::Operator)?;
    let Some(cluster) = &state.cluster else {
        return Ok(Json(ClusterView {
            mode: ClusterMode::Single,
            cluster: None,
            node_id: None,
            shard_lease_secs: None,
            served_here: 0,
            shards_total: SHARDS as u32,
            shards_unowned: 0,
            reservations_unfinished: 0,
            nodes: Vec::new(),
            shards: Vec::new(),
        }));
    };
    let lease = state.config.shard_lease_secs;
    let shards: Vec<ShardView> = sqlx::query_as(
        // An expired lease has no owner; a shard never claimed, or released, expires at
        // '-infinity' (no timestamp).
        "SELECT shard, CASE WHEN expires_at > now() THEN owner END AS owner, epoch,
                CASE WHEN isfinite(expires_at) THEN expires_at END AS expires_at
         FROM shard_leases ORDER BY shard",
    )
    .fetch_all(&state.db)
    .await?;
    let mut nodes: Vec<NodeView> = sqlx::query_as(
        "SELECT n.node_id, n.http_addr, n.started_at, n.heartbeat_at,
                n.heartbeat_at > now() - make_interval(secs => $1) AS live, o.ordinal
         FROM cluster_nodes n LEFT JOIN node_ordinals o USING (node_id)
         ORDER BY n.node_id",
    )
    .bind(lease as f64)
    .fetch_all(&state.db)
    .await?;
    let reservations_unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservation_sagas WHERE status IN ('committing', 'releasing')",
    )
    .fetch_one(&state.db)
    .await?;
    for node in &mut nodes {
        node.shards = shards
            .iter()
            .filter(|s| s.owner.as_deref() == Some(node.node_id.as_str()))
            .count() as u32;
    }
    Ok(Json(ClusterView {
        mode: ClusterMode::Cluster,
        cluster: Some(cluster.name.clone()),
        node_id: Some(cluster.node.clone()),
        shard_lease_secs: Some(lease),
        served_here: cluster.leases().served().len() as u32,
        shards_total: SHARDS as u32,
        shards_unowned: shards.iter().filter(|s| s.owner.is_none()).count() as u32,
        reservations_unfinished,
        nodes,
        shards,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_to_reference_data_are_announced_by_path() {
        let post = Method::POST;
        assert_eq!(
            announced(&Method::PATCH, "/api/v1/products/12"),
            Some(Change::Product { id: 12 })
        );
        assert_eq!(announced(&post, "/api/v1/products"), None);
        assert_eq!(
            announced(&Method::PUT, "/api/v1/warehouses/3/status"),
            Some(Change::Warehouses)
        );
        assert_eq!(
            announced(&Method::DELETE, "/api/v1/shops/2/members/9"),
            Some(Change::Shops)
        );
        assert_eq!(announced(&Method::GET, "/api/v1/warehouses"), None);
        assert_eq!(announced(&post, "/api/v1/stock/adjustments"), None);
    }

    #[test]
    fn the_ids_a_request_names_are_found_in_path_and_body() {
        let (products, warehouses) = named(
            "/api/v1/reservations",
            br#"{"items":[{"product_id":4,"quantity":1},{"product_id":5,"warehouse_id":2}]}"#,
        );
        assert_eq!((products, warehouses), (vec![4, 5], vec![2]));
        let (products, warehouses) = named(
            "/api/v1/transfers",
            br#"{"product_id":7,"from_warehouse_id":1,"to_warehouse_id":3,"quantity":2}"#,
        );
        assert_eq!((products, warehouses), (vec![7], vec![1, 3]));
        let (products, _) = named("/api/v1/products/9/availability", b"");
        assert_eq!(products, vec![9]);
        let (products, warehouses) = named("/api/v1/stock/adjustments/bulk", b"not json");
        assert!(products.is_empty() && warehouses.is_empty());
    }
}
