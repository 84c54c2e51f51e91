-- A disabled user can neither sign in nor use a token it already holds.
ALTER TABLE users ADD COLUMN disabled_at TIMESTAMPTZ;
