-- Lines are loaded on demand. Which warehouses hold a product is read per product, and
-- start-up restores the lines that still hold stock for someone.
CREATE INDEX IF NOT EXISTS stock_lines_by_product ON stock_lines (product_id);
CREATE INDEX IF NOT EXISTS stock_lines_reserved ON stock_lines (warehouse_id, product_id)
    WHERE reserved <> 0;
