-- Audit events; owned by src/store/audit.rs.
CREATE TABLE audit_events (
    seq BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    source TEXT,
    request_id TEXT,
    priority TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_action ON audit_events(action);
