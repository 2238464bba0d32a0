-- Core tables. Columns ending in a sealed value (display_name, contact, totp_secret,
-- reason) hold XChaCha20-Poly1305 envelopes, never clear text; see src/crypto.rs.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    display_name BLOB NOT NULL,
    contact BLOB,
    totp_secret BLOB,
    totp_enabled INTEGER NOT NULL DEFAULT 0,
    totp_last_step INTEGER,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE recovery_codes (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    code_hash BLOB NOT NULL,
    used_at INTEGER,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,
    account_id INTEGER,
    invite_id INTEGER,
    role TEXT NOT NULL,
    kind TEXT NOT NULL,
    scope_appointment INTEGER,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_account ON sessions(account_id);

CREATE TABLE appointments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doctor_id INTEGER NOT NULL REFERENCES accounts(id),
    patient_id INTEGER REFERENCES accounts(id),
    start_at INTEGER NOT NULL,
    duration_s INTEGER NOT NULL,
    reason BLOB,
    status TEXT NOT NULL,
    created_by INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX appointments_doctor ON appointments(doctor_id, start_at);
CREATE INDEX appointments_patient ON appointments(patient_id, start_at);

CREATE TABLE invites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    appointment_id INTEGER NOT NULL REFERENCES appointments(id),
    token_hash BLOB NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    created_by INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE consents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    version TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX consents_subject ON consents(subject);

CREATE TABLE chat_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    appointment_id INTEGER NOT NULL REFERENCES appointments(id),
    sender_participant INTEGER NOT NULL,
    sender_role TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE INDEX chat_appointment ON chat_messages(appointment_id, id);

CREATE TABLE data_keys (
    id INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    active INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE break_glass (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    admin_id INTEGER NOT NULL REFERENCES accounts(id),
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
