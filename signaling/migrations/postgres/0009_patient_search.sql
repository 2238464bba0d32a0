-- Front desk: a patient's date of birth, sealed like the display name (an envelope,
-- never clear text), and the keyed blind index that finds patients by a word of their
-- name or their date of birth without opening every row (src/blind_index.rs). `mac`
-- is HMAC-SHA256 of one search term under an index key derived from data key `key_id`;
-- the key itself is never stored. A data key rotation rebuilds the rows.
ALTER TABLE accounts ADD COLUMN date_of_birth BYTEA;

CREATE TABLE patient_index (
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    key_id BIGINT NOT NULL,
    mac BYTEA NOT NULL,
    PRIMARY KEY (account_id, key_id, mac)
);
CREATE INDEX patient_index_mac ON patient_index(key_id, mac);

-- The schedule reads appointments by time for the whole clinic.
CREATE INDEX appointments_start ON appointments(start_at);
