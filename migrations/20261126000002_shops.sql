-- Shops of a marketplace: each owns warehouses; members act on those only (API.md v1.1).
CREATE TABLE shops (
    id         BIGSERIAL PRIMARY KEY,
    code       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE shop_members (
    shop_id    BIGINT NOT NULL REFERENCES shops (id),
    user_id    BIGINT NOT NULL REFERENCES users (id),
    role       TEXT NOT NULL CHECK (role IN ('shop_owner', 'shop_staff')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, user_id)
);
CREATE INDEX shop_members_user ON shop_members (user_id);

-- NULL: the platform's own warehouse.
ALTER TABLE warehouses ADD COLUMN shop_id BIGINT REFERENCES shops (id);
CREATE INDEX warehouses_shop ON warehouses (shop_id);
