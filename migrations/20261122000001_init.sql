-- The stockline schema. Stock tables are written only by the write-behind flusher; the
-- catalog and users by plain queries.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id                  BIGSERIAL PRIMARY KEY,
    email               TEXT NOT NULL,
    phone               TEXT,
    name                TEXT NOT NULL,
    role                TEXT NOT NULL DEFAULT 'customer'
                        CHECK (role IN ('customer', 'operator', 'admin')),
    password_hash       TEXT NOT NULL,
    totp_secret         TEXT,
    totp_pending_secret TEXT,
    totp_enabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_phone_key ON users (phone);

-- Logged-out tokens, refused until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti        UUID PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE products (
    id                  BIGSERIAL PRIMARY KEY,
    sku                 TEXT NOT NULL,
    name                TEXT NOT NULL,
    description         TEXT,
    price_cents         BIGINT NOT NULL CHECK (price_cents >= 0),
    low_stock_threshold BIGINT NOT NULL DEFAULT 0 CHECK (low_stock_threshold >= 0),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Deleted products keep their ledger; they are gone from the API.
    deleted_at          TIMESTAMPTZ
);
CREATE UNIQUE INDEX products_sku_key ON products (sku) WHERE deleted_at IS NULL;

CREATE TABLE warehouses (
    id         BIGSERIAL PRIMARY KEY,
    code       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    location   TEXT,
    priority   INTEGER NOT NULL DEFAULT 100,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE stock_lines (
    warehouse_id BIGINT NOT NULL REFERENCES warehouses (id),
    product_id   BIGINT NOT NULL REFERENCES products (id),
    on_hand      BIGINT NOT NULL,
    reserved     BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (warehouse_id, product_id),
    CONSTRAINT stock_lines_invariant CHECK (reserved >= 0 AND reserved <= on_hand)
);

-- The append-only ledger. `id` is the journal sequence number of the movement.
CREATE TABLE movements (
    id             BIGINT PRIMARY KEY,
    warehouse_id   BIGINT NOT NULL,
    product_id     BIGINT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN
                   ('adjust', 'reserve', 'release', 'expire', 'commit', 'transfer_out', 'transfer_in')),
    quantity       BIGINT NOT NULL,
    on_hand_after  BIGINT NOT NULL,
    reserved_after BIGINT NOT NULL,
    reference      TEXT NOT NULL,
    at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX movements_product ON movements (product_id, id DESC);
CREATE INDEX movements_warehouse ON movements (warehouse_id, id DESC);

CREATE TABLE reservations (
    id         UUID PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'committed', 'released', 'expired')),
    reference  TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    -- Journal position of the newest record written: an older one never overwrites it.
    lsn        BIGINT NOT NULL
);
CREATE INDEX reservations_pending ON reservations (expires_at) WHERE status = 'pending';

CREATE TABLE reservation_items (
    reservation_id UUID NOT NULL REFERENCES reservations (id),
    warehouse_id   BIGINT NOT NULL,
    product_id     BIGINT NOT NULL,
    quantity       BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, warehouse_id, product_id)
);
CREATE INDEX reservation_items_line ON reservation_items (warehouse_id, product_id);

CREATE TABLE transfers (
    id                UUID PRIMARY KEY,
    from_warehouse_id BIGINT NOT NULL,
    to_warehouse_id   BIGINT NOT NULL,
    product_id        BIGINT NOT NULL,
    quantity          BIGINT NOT NULL CHECK (quantity > 0),
    status            TEXT NOT NULL DEFAULT 'completed',
    created_at        TIMESTAMPTZ NOT NULL
);
