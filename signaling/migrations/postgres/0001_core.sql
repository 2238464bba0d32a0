-- Core tables. Columns ending in a sealed value (display_name, contact, totp_secret,
-- reason) hold XChaCha20-Poly1305 envelopes, never clear text; see src/crypto.rs.
CREATE TABLE accounts (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    display_name BYTEA NOT NULL,
    contact BYTEA,
    totp_secret BYTEA,
    totp_enabled BIGINT NOT NULL DEFAULT 0,
    totp_last_step BIGINT,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE recovery_codes (
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    code_hash BYTEA NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    account_id BIGINT,
    invite_id BIGINT,
    role TEXT NOT NULL,
    kind TEXT NOT NULL,
    scope_appointment BIGINT,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_account ON sessions(account_id);

CREATE TABLE appointments (
    id BIGSERIAL PRIMARY KEY,
    doctor_id BIGINT NOT NULL REFERENCES accounts(id),
    patient_id BIGINT REFERENCES accounts(id),
    start_at BIGINT NOT NULL,
    duration_s BIGINT NOT NULL,
    reason BYTEA,
    status TEXT NOT NULL,
    created_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX appointments_doctor ON appointments(doctor_id, start_at);
CREATE INDEX appointments_patient ON appointments(patient_id, start_at);

CREATE TABLE invites (
    id BIGSERIAL PRIMARY KEY,
    appointment_id BIGINT NOT NULL REFERENCES appointments(id),
    token_hash BYTEA NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE consents (
    id BIGSERIAL PRIMARY KEY,
    subject TEXT NOT NULL,
    version TEXT NOT NULL,
    accepted_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX consents_subject ON consents(subject);

CREATE TABLE chat_messages (
    id BIGSERIAL PRIMARY KEY,
    appointment_id BIGINT NOT NULL REFERENCES appointments(id),
    sender_participant BIGINT NOT NULL,
    sender_role TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    ciphertext BYTEA NOT NULL
);
CREATE INDEX chat_appointment ON chat_messages(appointment_id, id);

CREATE TABLE data_keys (
    id BIGINT PRIMARY KEY,
    wrapped BYTEA NOT NULL,
    active BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE break_glass (
    id BIGSERIAL PRIMARY KEY,
    admin_id BIGINT NOT NULL REFERENCES accounts(id),
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
