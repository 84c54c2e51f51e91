-- A TOTP code signs in once (RFC 6238, section 5.2): the last time step a login accepted,
-- per user. Kept in the database, so it holds across a restart and across cluster nodes;
-- a login takes a step only if it is past this one, in one conditional UPDATE.
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;
