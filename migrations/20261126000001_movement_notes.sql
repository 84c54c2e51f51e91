-- Who made a change by hand and the reference they gave (API.md v1.1, deeper stock).
-- `reason` is the adjustment's or count's reason; `client_reference` the client's own text
-- (shown as the movement's `reference` when present).
ALTER TABLE movements
    ADD COLUMN reason TEXT,
    ADD COLUMN actor_user_id BIGINT,
    ADD COLUMN client_reference TEXT;

ALTER TABLE transfers
    ADD COLUMN actor_user_id BIGINT,
    ADD COLUMN reference TEXT;
