-- Cluster mode: a held cart's items are held by one reservation per shard they are in,
-- each on its shard's owner; the cart keeps their ids (one process keeps one reservation,
-- `reservation_id`).
ALTER TABLE carts ADD COLUMN hold_parts UUID[] NOT NULL DEFAULT '{}';
