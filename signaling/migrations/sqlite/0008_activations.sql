-- Account lifecycle. An account an admin creates has no password until its owner
-- follows a single-use activation link; an admin's reset of a password or a second
-- factor issues a new link. Only the SHA-256 of a link's token is stored.
CREATE TABLE activations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    token_hash BLOB NOT NULL UNIQUE,
    -- activate | reset_password | reset_second_factor
    purpose TEXT NOT NULL,
    -- The admin (or staff member) who issued it; NULL when issued from the command line.
    created_by INTEGER REFERENCES accounts(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE INDEX activations_account ON activations(account_id);

-- Set while the account waits for its owner to follow a link: it cannot log in.
ALTER TABLE accounts ADD COLUMN activation_pending INTEGER NOT NULL DEFAULT 0;

-- A second factor being enrolled (sealed like totp_secret). Kept apart from the enabled
-- one, so that changing a second factor leaves the old one working until the new one
-- is confirmed.
ALTER TABLE accounts ADD COLUMN totp_pending BLOB;
UPDATE accounts SET totp_pending = totp_secret, totp_secret = NULL
    WHERE totp_enabled = 0 AND totp_secret IS NOT NULL;
