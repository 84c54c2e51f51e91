-- Events out (API.md v1.1 "Events"): the outbox, webhook subscriptions and their deliveries.

-- The outbox. Written by the flusher in the same transaction as the changes the events
-- tell of, so an event exists if and only if its change does. `id` is made of the journal
-- number of the record the event comes from (`lsn * 8 + n`, n < 8): it increases in the
-- order the changes were made, and writing a batch twice writes its events once.
CREATE TABLE events (
    id           BIGINT PRIMARY KEY,
    type         TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    -- JSON text as the flusher made it (never queried inside, so not parsed again).
    data         TEXT NOT NULL,
    -- The shops whose warehouses the event concerns (a member sees only those); empty for
    -- the platform's own warehouses and for platform-wide figures.
    shop_ids     BIGINT[] NOT NULL DEFAULT '{}',
    -- Events with the same key are delivered in id order (a line, a reservation, an order).
    ordering_key TEXT NOT NULL
);
-- Pruning by age: `at` grows with `id`, which a BRIN index serves at almost no write cost.
CREATE INDEX events_at ON events USING brin (at);

CREATE TABLE webhooks (
    id         UUID PRIMARY KEY,
    url        TEXT NOT NULL,
    types      TEXT[] NOT NULL,
    secret     TEXT NOT NULL,
    -- Set: only that shop's events (a shop owner's subscription).
    shop_id    BIGINT REFERENCES shops (id),
    created_by BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Every event up to this id has been taken into `webhook_deliveries` (or skipped as
    -- not wanted): the dispatcher resumes after it.
    cursor     BIGINT NOT NULL,
    deleted_at TIMESTAMPTZ
);

-- One row per (subscription, event) taken for delivery, until delivered or given up.
CREATE TABLE webhook_deliveries (
    webhook_id       UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    ordering_key     TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    first_attempt_at TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_open ON webhook_deliveries (webhook_id, event_id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_updated ON webhook_deliveries USING brin (updated_at);

-- Every attempt, as the receiver answered it.
CREATE TABLE webhook_attempts (
    webhook_id  UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id    BIGINT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, event_id, attempt)
);
