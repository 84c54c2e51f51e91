-- Events in cluster mode (API.md v1.2 "Cluster map": one order across nodes that never
-- skips). Each node's flusher writes its batch's events here, in the batch's transaction,
-- keyed by the node's own journal numbers (`lsn * 8 + n`, unique across nodes: each node
-- numbers from its ordinal). The sequencer (`events::sequence`) moves them into `events`,
-- numbered from one counter, in transactions that hold one advisory lock and so commit one
-- after the other: every id a reader sees committed has every smaller id committed before
-- it, and `id > cursor` skips nothing.
CREATE TABLE event_intake (
    key          BIGINT PRIMARY KEY,
    type         TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    data         TEXT NOT NULL,
    shop_ids     BIGINT[] NOT NULL DEFAULT '{}',
    ordering_key TEXT NOT NULL
);
