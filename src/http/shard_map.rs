//! `GET /cluster/shards`: the shard function and who owns each shard now, so that a
//! shard-aware client or load balancer sends a product's requests to its owner (API.md
//! v1.2 "Cluster map"). A request that reaches another node is still served: forwarded.

use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use super::caller::Caller;
use super::extract::Json;
use super::openapi::ErrorBody;
use crate::cluster::{SHARD_FUNCTION, SHARDS};
use crate::error::Result;
use axum::extract::State;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(shards))
}

/// The cluster map.
#[derive(Serialize, ToSchema)]
pub struct ShardMap {
    /// `single` (one process serves every shard: `shards` is empty) or `cluster`.
    mode: &'static str,
    shard_count: u16,
    /// The function from a product id to its shard, stated exactly.
    function: &'static str,
    /// Every shard, in order; `node_id` and `address` are `null` while a shard has no
    /// owner (its lease ran out and no node has claimed it yet).
    shards: Vec<ShardOwner>,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct ShardOwner {
    shard: i16,
    node_id: Option<String>,
    /// The owner's HTTP address (`host:port`, as it listens).
    address: Option<String>,
    /// The owner's fencing token: grows by one at every claim, so a client that cached
    /// the map can tell it is stale.
    epoch: i64,
}

#[utoipa::path(get, path = "/cluster/shards", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "The shard function and every shard's owner", body = ShardMap),
              (status = 401, description = "No valid token", body = ErrorBody)))]
async fn shards(State(state): State<AppState>, Caller(_caller): Caller) -> Result<Json<ShardMap>> {
    let shards = match &state.cluster {
        None => Vec::new(),
        Some(_) => {
            sqlx::query_as(
                "SELECT l.shard, n.node_id, n.http_addr AS address, l.epoch
                 FROM shard_leases l
                 LEFT JOIN cluster_nodes n ON n.node_id = l.owner AND l.expires_at > now()
                 ORDER BY l.shard",
            )
            .fetch_all(&state.db)
            .await?
        }
    };
    Ok(Json(ShardMap {
        mode: if state.cluster.is_some() {
            "cluster"
        } else {
            "single"
        },
        shard_count: SHARDS,
        function: SHARD_FUNCTION,
        shards,
    }))
}
