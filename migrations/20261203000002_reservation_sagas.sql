-- Reservations across shards (cluster mode, DESIGN.md "Growing past one machine"). Such a
-- reservation is a saga: one part per shard, each an ordinary reservation held by the
-- shard's owner under an id of its own (derived from the reservation's id and the shard),
-- with the reservation's expiry. This row is what ties them together, written once every
-- part is held. The parts' rows stay the truth of what is held; `status` here records the
-- decision while it is carried out.
CREATE TABLE reservation_sagas (
    id         UUID PRIMARY KEY,
    -- The parts, shard by shard (the same order in both).
    shards     SMALLINT[] NOT NULL,
    parts      UUID[] NOT NULL,
    -- 'pending' until a commit or release is decided; 'committing' and 'releasing' while
    -- the decision reaches every part (a node that finds one stale finishes it).
    status     TEXT NOT NULL CHECK (status IN ('pending', 'committing', 'releasing', 'committed', 'released', 'expired')),
    reference  TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CHECK (cardinality(shards) = cardinality(parts) AND cardinality(parts) >= 2)
);
CREATE INDEX reservation_sagas_parts ON reservation_sagas USING gin (parts);
CREATE INDEX reservation_sagas_unfinished ON reservation_sagas (updated_at)
    WHERE status IN ('committing', 'releasing');
