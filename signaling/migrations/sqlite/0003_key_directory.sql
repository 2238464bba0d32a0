-- The key directory: device signature keys and MLS KeyPackages; owned by
-- src/store/directory.rs. Every registration and revocation is also an entry of the
-- Merkle audit log (registered_seq / revoked_seq are its leaf indices).
CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    principal TEXT NOT NULL,
    device TEXT NOT NULL,
    signature_key BLOB NOT NULL,
    -- NULL while the registration is being logged: not served, not usable.
    registered_seq INTEGER,
    registered_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_seq INTEGER,
    UNIQUE (principal, device)
);

CREATE TABLE key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    principal TEXT NOT NULL,
    device TEXT NOT NULL,
    data BLOB NOT NULL,
    last_resort INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX key_packages_device ON key_packages(principal, device, last_resort, id);
-- One last-resort KeyPackage per device at most.
CREATE UNIQUE INDEX key_packages_last_resort ON key_packages(principal, device) WHERE last_resort = 1;
