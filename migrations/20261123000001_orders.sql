-- Orders, payments and idempotent answers: written by the flusher, in the same transaction
-- as the stock changes of the request that made them.

CREATE TABLE orders (
    id               UUID PRIMARY KEY,
    user_id          BIGINT NOT NULL REFERENCES users (id),
    status           TEXT NOT NULL CHECK (status IN
                     ('pending_payment', 'paid', 'shipped', 'delivered', 'cancelled', 'expired')),
    total_cents      BIGINT NOT NULL CHECK (total_cents >= 0),
    reservation_id   UUID NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    tracking_number  TEXT,
    shipping_address JSONB,
    contact          JSONB,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    lsn              BIGINT NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, created_at DESC);
CREATE INDEX orders_status ON orders (status, created_at DESC);

CREATE TABLE order_items (
    order_id         UUID NOT NULL REFERENCES orders (id),
    product_id       BIGINT NOT NULL,
    warehouse_id     BIGINT NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id, warehouse_id)
);

CREATE TABLE payments (
    id           UUID PRIMARY KEY,
    order_id     UUID NOT NULL REFERENCES orders (id),
    method       TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    status       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE idempotency_keys (
    user_id      BIGINT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       SMALLINT NOT NULL,
    body         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, key)
);
