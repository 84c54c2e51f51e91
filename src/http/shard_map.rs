//! `GET /cluster/shards`: the shard function and who owns each shard now, so that a
//! shard-aware client or load balancer sends a product's requests to its owner (API.md
//! v1.2 "Cluster map"). A request that reaches another node is still served: forwarded.

use std::borrow::Cow;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use super::caller::Caller;
use super::cluster::ClusterMode;
use super::extract::Json;
use super::openapi::ErrorBody;
use crate::cluster::{SHARD_FUNCTION, SHARDS};
use crate::error::Result;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(shards))
}

/// The cluster map.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShardMap {
    /// `single`: one process serves every shard, and `shards` is empty.
    pub mode: ClusterMode,
    pub shard_count: u16,
    /// The function from a product id to its shard, stated exactly.
    #[schema(value_type = String)]
    pub function: Cow<'static, str>,
    /// Every shard, in order; `node_id` and `address` are `null` while a shard has no
    /// owner (its lease ran out and no node has claimed it yet).
    pub shards: Vec<ShardOwner>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ShardOwner {
    pub shard: i16,
    pub node_id: Option<String>,
    /// The owner's HTTP address (`host:port`, as it listens).
    pub address: Option<String>,
    /// The owner's fencing token: grows by one at every claim, so a client that cached
    /// the map can tell it is stale.
    pub epoch: i64,
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
            ClusterMode::Cluster
        } else {
            ClusterMode::Single
        },
        shard_count: SHARDS,
        function: Cow::Borrowed(SHARD_FUNCTION),
        shards,
    }))
}
