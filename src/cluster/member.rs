//! A running node's part in its cluster ([`Cluster`]): who it is, its leases, its routes,
//! and the lease loop, from joining at start to leaving at shutdown.
//!
//! Joining takes the node's ordinal (its own journal numbers) and connects to NATS; the
//! loop starts once the core, the flusher and the router exist ([`Cluster::start`]). At
//! shutdown, after HTTP has stopped, [`Cluster::leave`] hands every shard over (waiting
//! until this node's changes are durable) and removes the node, so the others take its
//! shards at their next round instead of after its leases run out.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Member;
use super::leases::Membership;
use super::leases::{LeaseSettings, Leases};
use super::ordinal;
use super::routing::{RouteSettings, Routes};
use crate::config::{Config, Durability};

/// How long connecting to NATS may take at start before the node gives up.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// This node's part in its cluster.
pub struct Cluster {
    /// `STOCKLINE_CLUSTER_NAME`.
    pub name: String,
    /// `STOCKLINE_NODE_ID` (or the host name and port).
    pub node: String,
    pub member: Member,
    pub routes: Arc<Routes>,
    /// Reference data changes (catalog, warehouses, shops) are announced through it.
    pub nats: async_nats::Client,
    /// How the reservations across shards this node coordinated ended up.
    pub sagas: super::saga::Outcomes,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Joins the cluster `config` names: checks the settings, takes this node's ordinal and
    /// connects to NATS. Serves nothing yet.
    pub async fn join(db: &PgPool, config: &Config, addr: SocketAddr) -> Result<Self, String> {
        let Some(url) = &config.cluster_nats_url else {
            return Err("STOCKLINE_CLUSTER_NATS_URL is not set".into());
        };
        if config.durability != Durability::Sync {
            return Err(
                "cluster mode is sync only: a node answers a change once it is \
                 durable, so the next owner of its shard finds it (unset \
                 STOCKLINE_DURABILITY or set it to sync)"
                    .into(),
            );
        }
        let node = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name(), addr.port()));
        let ordinal = ordinal::assign(db, &node)
            .await
            .map_err(|e| format!("taking this node's journal numbers: {e}"))?;
        let leases = Arc::new(Leases::new(
            db.clone(),
            LeaseSettings {
                node: node.clone(),
                http_addr: addr.to_string(),
                lease: config.shard_lease(),
            },
        ));
        let nats = tokio::time::timeout(
            CONNECT_WITHIN,
            async_nats::ConnectOptions::new()
                .name(format!("stockline {node}"))
                .connect(url.as_str()),
        )
        .await
        .map_err(|_| format!("NATS at {url} did not answer within {CONNECT_WITHIN:?}"))?
        .map_err(|e| format!("connecting to NATS at {url}: {e}"))?;
        let routes = Arc::new(Routes::new(
            nats.clone(),
            RouteSettings {
                cluster: config.cluster_name.clone(),
                node: ordinal,
                // A shard has no owner for at most two leases after its node died; a
                // request waits a part of that, then the client is told to retry.
                retry_for: (config.shard_lease() / 2)
                    .clamp(Duration::from_secs(1), Duration::from_secs(5)),
                // The owner answers a change once it is durable, or 503 after
                // `STOCKLINE_DURABLE_TIMEOUT_MS`: that, with room for the hop.
                answer_within: Duration::from_millis(config.durable_timeout_ms)
                    + Duration::from_secs(2),
            },
        ));
        tracing::info!(%node, ordinal, cluster = %config.cluster_name, "joined the cluster");
        Ok(Self {
            name: config.cluster_name.clone(),
            node,
            member: Member { leases, ordinal },
            routes,
            nats,
            sagas: super::saga::Outcomes::default(),
            stop: CancellationToken::new(),
            task: Mutex::default(),
        })
    }

    pub fn leases(&self) -> &Arc<Leases> {
        &self.member.leases
    }

    /// Starts the lease loop: claims, renewals, hand-offs, with `node` acting on them.
    pub fn start(&self, node: impl Membership) {
        let leases = self.leases().clone();
        let stop = self.stop.clone();
        let task = tokio::spawn(async move { leases.run(&node, stop).await });
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Hands every shard over and leaves (see the module's notes); returns once done.
    pub async fn leave(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.routes.stop_all().await;
    }
}

/// This machine's name (a container's is its pod's or its own id).
fn host_name() -> String {
    if let Ok(name) = std::env::var("HOSTNAME")
        && !name.is_empty()
    {
        return name;
    }
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let done = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    match (done, std::str::from_utf8(&buffer[..end])) {
        (0, Ok(name)) if !name.is_empty() => name.to_owned(),
        _ => "stockline".to_owned(),
    }
}
