-- Carts (API.md v1.1): per customer; a held cart keeps its items reserved through one
-- pending reservation (`reservation_id`), which follows every change.
CREATE TABLE carts (
    id              UUID PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES users (id),
    shop_id         BIGINT REFERENCES shops (id),
    status          TEXT NOT NULL CHECK (status IN ('open', 'checked_out')),
    hold            BOOLEAN NOT NULL,
    reservation_id  UUID,
    hold_expires_at TIMESTAMPTZ,
    order_id        UUID,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX carts_user ON carts (user_id, created_at DESC);

CREATE TABLE cart_items (
    cart_id          UUID NOT NULL REFERENCES carts (id) ON DELETE CASCADE,
    product_id       BIGINT NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL,
    added_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (cart_id, product_id)
);
