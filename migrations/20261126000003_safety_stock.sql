-- Per-line safety stock: units kept on hand that are never reserved (API.md v1.1).
ALTER TABLE stock_lines
    ADD COLUMN safety_stock BIGINT NOT NULL DEFAULT 0 CHECK (safety_stock >= 0);

-- The ledger records safety-stock changes as their own kind, and every movement the
-- safety stock after it, so availability can be replayed at any moment (`as_of`).
ALTER TABLE movements DROP CONSTRAINT movements_kind_check;
ALTER TABLE movements ADD CONSTRAINT movements_kind_check CHECK (kind IN
    ('adjust', 'reserve', 'release', 'expire', 'commit', 'transfer_out', 'transfer_in', 'safety'));
ALTER TABLE movements ADD COLUMN safety_stock_after BIGINT NOT NULL DEFAULT 0;
