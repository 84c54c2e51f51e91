-- Backorders (API.md v1.1): a product may be reserved up to `backorder_limit` units beyond
-- what is available over all its warehouses; a line then holds more than it has on hand
-- (`reserved <= on_hand + backordered`), until receipts fill the oldest holds first.
ALTER TABLE products
    ADD COLUMN backorder_limit BIGINT NOT NULL DEFAULT 0 CHECK (backorder_limit >= 0);

ALTER TABLE stock_lines DROP CONSTRAINT stock_lines_invariant;
ALTER TABLE stock_lines ADD CONSTRAINT stock_lines_invariant CHECK (reserved >= 0 AND on_hand >= 0);
