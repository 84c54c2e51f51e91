-- Carts are journaled state (issue: a crash between the order and the cart's mark could
-- double an order): the flusher writes a cart's newest state in the batch of the change
-- that made it, one row per cart with its items, guarded by the cart's version.
ALTER TABLE carts
    ADD COLUMN items JSONB NOT NULL DEFAULT '[]',
    ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
UPDATE carts c SET items = coalesce(
    (SELECT jsonb_agg(jsonb_build_object('product_id', i.product_id, 'quantity', i.quantity,
                                         'unit_price_cents', i.unit_price_cents)
                      ORDER BY i.product_id)
     FROM cart_items i WHERE i.cart_id = c.id), '[]');
DROP TABLE cart_items;
-- Start-up loads the open carts.
CREATE INDEX carts_open ON carts (created_at) WHERE status = 'open';
-- A deleted cart stays as a row (the flusher's order needs it), hidden from every read.
ALTER TABLE carts DROP CONSTRAINT carts_status_check;
ALTER TABLE carts ADD CONSTRAINT carts_status_check
    CHECK (status IN ('open', 'checked_out', 'deleted'));
