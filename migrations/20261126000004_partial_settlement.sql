-- Partial fulfilment: how much of each reserved line left (committed) or went back
-- (released). Written only when the reservation's status does not already say it
-- (a partly settled reservation); otherwise both stay 0.
ALTER TABLE reservation_items
    ADD COLUMN committed BIGINT NOT NULL DEFAULT 0 CHECK (committed >= 0),
    ADD COLUMN released  BIGINT NOT NULL DEFAULT 0 CHECK (released >= 0);

-- A hold resized (a cart's) may shrink a line to nothing; the row stays, at 0.
ALTER TABLE reservation_items DROP CONSTRAINT reservation_items_quantity_check;
ALTER TABLE reservation_items ADD CONSTRAINT reservation_items_quantity_check CHECK (quantity >= 0);
