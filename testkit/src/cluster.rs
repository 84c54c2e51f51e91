//! Cluster parts for tests: a node's leases, and a node's journal and fenced flusher over
//! a shared database.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use sqlx::PgPool;
use stockline::cluster::{LeaseSettings, Leases, Member};
use stockline::http::ClusterView;
use stockline::store::flusher::{Flusher, Pacing};
use stockline::store::records::Buffer;

/// The leases of node `id`.
pub fn leases(pool: &PgPool, id: &str, lease: Duration) -> Arc<Leases> {
    Arc::new(Leases::new(
        pool.clone(),
        LeaseSettings {
            node: id.into(),
            http_addr: format!("127.0.0.1:0/{id}"),
            lease,
        },
    ))
}

/// One lease round, and the shards it claimed served at once (as the run loop does once
/// their state is restored).
pub async fn round(leases: &Leases) -> stockline::cluster::Round {
    let round = leases.round().await.unwrap();
    let claimed: Vec<_> = round.claimed.iter().map(|(s, _)| *s).collect();
    leases.start_serving(&claimed);
    round
}

/// Node `id`'s journal, numbered from its own ordinal, and its fenced flusher writing to
/// `url` (`sync` pacing).
pub async fn journal(
    pool: &PgPool,
    url: &str,
    id: &str,
    leases: &Arc<Leases>,
) -> (Arc<Buffer>, Flusher) {
    let member = Member {
        leases: leases.clone(),
        ordinal: stockline::cluster::ordinal::assign(pool, id).await.unwrap(),
    };
    let start = stockline::store::recovery::node_position(pool, &member)
        .await
        .unwrap();
    let buffer = Arc::new(Buffer::new(start, 10_000));
    let flusher = Flusher::spawn(
        stockline::store::flusher_pool(url, None, member.ordinal)
            .await
            .unwrap(),
        buffer.clone(),
        Pacing {
            gather: Duration::ZERO,
            pipelined: true,
        },
        None,
        Some(member),
        tokio_util::sync::CancellationToken::new(),
    );
    (buffer, flusher)
}

/// Sessions of the current database waiting for a lock now (a flush or a claim held up).
pub async fn waiting_on_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A node of a cluster: the real binary, its own process.
pub struct Node {
    pub id: String,
    pub child: std::process::Child,
    /// Killed by the test (and reaped).
    pub killed: bool,
    /// Signed in as the tests' admin.
    pub app: crate::TestApp,
}

/// How the nodes of a test cluster are started.
pub struct Nodes {
    pub database: String,
    pub cluster: String,
    pub lease: Duration,
    pub nodes: Vec<Node>,
}

impl Nodes {
    /// `count` nodes over a new database, one after the other (each joins a cluster that
    /// is already running), with a `lease` of whole seconds.
    pub async fn start(count: usize, lease: Duration) -> Self {
        let mut nodes = Self {
            database: crate::fresh_database(),
            cluster: format!("test{}", uuid::Uuid::now_v7().simple()),
            lease,
            nodes: Vec::new(),
        };
        for _ in 0..count {
            nodes.add().await;
        }
        nodes
    }

    /// Starts one more node; answers its index.
    pub async fn add(&mut self) -> usize {
        self.add_with(&[]).await
    }

    /// Starts one more node with environment variables set over the defaults (e.g. its
    /// database or NATS through a proxy); answers its index.
    pub async fn add_with(&mut self, overrides: &[(&str, &str)]) -> usize {
        self.start_node(format!("node{}", self.nodes.len()), overrides)
            .await
    }

    /// Starts node `node`, killed before, again under its node id; answers its new index.
    pub async fn restart(&mut self, node: usize) -> usize {
        assert!(
            self.nodes[node].killed,
            "{} still runs",
            self.nodes[node].id
        );
        self.start_node(self.nodes[node].id.clone(), &[]).await
    }

    async fn start_node(&mut self, id: String, overrides: &[(&str, &str)]) -> usize {
        let lease = self.lease.as_secs().to_string();
        let mut env = crate::ADMIN_ENV.to_vec();
        env.extend([
            ("STOCKLINE_CLUSTER_NATS_URL", "nats://127.0.0.1:4222"),
            ("STOCKLINE_CLUSTER_NAME", self.cluster.as_str()),
            ("STOCKLINE_NODE_ID", id.as_str()),
            ("STOCKLINE_SHARD_LEASE_SECS", lease.as_str()),
            // A request forwarded to an owner that died is answered 503 after this
            // (and 2 s), so that clients retry elsewhere soon.
            ("STOCKLINE_DURABLE_TIMEOUT_MS", "2000"),
        ]);
        // Each node's log goes to a file named in a failing test's output.
        let log =
            std::env::temp_dir().join(format!("{}-{id}-{}.log", self.cluster, self.nodes.len()));
        env.push(("RUST_LOG", "info"));
        env.extend_from_slice(overrides);
        let file = std::fs::File::create(&log).unwrap();
        let (child, url) = crate::start_binary_logging(&self.database, &env, file.into());
        let app = crate::TestApp::attach(&url, &self.database).await;
        self.nodes.push(Node {
            id,
            child,
            killed: false,
            app,
        });
        self.nodes.len() - 1
    }

    pub fn app(&self, node: usize) -> &crate::TestApp {
        &self.nodes[node].app
    }

    /// `GET /admin/cluster` through `node`.
    pub async fn view(&self, node: usize) -> ClusterView {
        let app = self.app(node);
        app.call(Method::GET, "/admin/cluster", &app.admin, None)
            .await
            .unwrap_or_else(|refusal| panic!("the cluster view was refused: {refusal:?}"))
    }

    /// Waits until the shards are shared out among the nodes `live` names, each serving
    /// what the database says it holds, none unowned; panics after `within`.
    pub async fn wait_shared(&self, live: &[usize], within: Duration) {
        let started = std::time::Instant::now();
        loop {
            if self.shared(live).await {
                return;
            }
            assert!(
                started.elapsed() < within,
                "shards not shared among {live:?} within {within:?}: {:?}",
                self.view(live[0]).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shared(&self, live: &[usize]) -> bool {
        let view = self.view(live[0]).await;
        if view.shards_unowned != 0 {
            return false;
        }
        let held = |id: &str| {
            view.nodes
                .iter()
                .find(|n| n.node_id == id)
                .map_or(0, |n| n.shards)
        };
        let mut total = 0;
        for &node in live {
            let holds = held(&self.nodes[node].id);
            if holds == 0 || self.view(node).await.served_here != holds {
                return false;
            }
            total += holds;
        }
        total == u32::from(stockline::cluster::SHARDS)
    }

    /// The index of the node that owns `product`'s shard, by the database; waits a while
    /// if the shard is between owners (a lease renewed late on a busy machine).
    pub async fn owner_of(&self, product: i64, asking: usize) -> usize {
        let shard = stockline::cluster::shard_of(product) as usize;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let view = self.view(asking).await;
            if let Some(owner) = &view.shards[shard].owner {
                return self.nodes.iter().position(|n| &n.id == owner).unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "shard {shard} has no owner"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The base URLs of the nodes, by index.
    pub fn bases(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.app.base.clone()).collect()
    }

    /// Sends `signal` to node `node`'s process.
    pub fn signal(&self, node: usize, signal: i32) {
        // SAFETY: a plain syscall on a child process this test started and has not reaped.
        let sent = unsafe { libc::kill(self.nodes[node].child.id() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} to {}", self.nodes[node].id);
    }

    /// Kills node `node` with SIGKILL and reaps it.
    pub fn kill(&mut self, node: usize) {
        self.signal(node, libc::SIGKILL);
        self.nodes[node].child.wait().unwrap();
        self.nodes[node].killed = true;
    }

    /// Stops every node still running with SIGTERM (a clean leave) and checks each ended
    /// well; then drops the database.
    pub async fn stop(mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.nodes[*i].killed)
            .collect();
        for &node in &running {
            self.signal(node, libc::SIGTERM);
        }
        for &node in &running {
            let node = &mut self.nodes[node];
            let status = node.child.wait().unwrap();
            node.killed = true;
            assert!(status.success(), "{} ended with {status}", node.id);
        }
        crate::drop_database(&self.database).await;
    }
}

/// A test that fails leaves no node running.
impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if !node.killed && matches!(node.child.try_wait(), Ok(None)) {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
    }
}
