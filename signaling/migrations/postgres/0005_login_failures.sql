-- The login throttle's per-account counter, kept in the database so that a restart or
-- another node does not start the count again: failures counted, and when (Unix ms)
-- the next attempt is allowed.
ALTER TABLE accounts ADD COLUMN login_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN login_next_at BIGINT NOT NULL DEFAULT 0;
