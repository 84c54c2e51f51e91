-- Cluster mode (DESIGN.md "Growing past one machine"): stock lines are sharded by product
-- into 1024 shards, and PostgreSQL is the authority on who owns each one.

-- The nodes of the cluster and when each last said it was alive. A node whose heartbeat
-- is older than one lease is left out when shards are shared out; a node that stops
-- cleanly deletes its row.
CREATE TABLE cluster_nodes (
    node_id      TEXT PRIMARY KEY,
    -- Where its HTTP edge listens (for operators; requests between nodes go over NATS).
    http_addr    TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One lease per shard. `epoch` grows by one at every claim: a node writes a shard's
-- changes only in a transaction that first finds (FOR SHARE) its own epoch still there,
-- so an owner that was paused or cut off past its lease can never write after another
-- took over (a fencing token). The times are the database's clock, never a node's.
CREATE TABLE shard_leases (
    shard      SMALLINT PRIMARY KEY CHECK (shard >= 0 AND shard < 1024),
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO shard_leases (shard) SELECT generate_series(0, 1023);

-- Each node's journal numbers (Lsn) are its own: node n numbers from n * 2^48, so the
-- ledger's and the outbox's keys, made of them, never collide between nodes, and each
-- node keeps its own stored position (`settings.journal_lsn.<n>`). The ordinal of a node
-- id never changes and is never given to another (a zombie keeps its numbers). Ordinal 0
-- is the single-process server's.
CREATE TABLE node_ordinals (
    node_id TEXT PRIMARY KEY,
    ordinal SMALLINT NOT NULL UNIQUE CHECK (ordinal BETWEEN 1 AND 1023)
);
