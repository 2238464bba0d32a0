// Integration tests for confide-audit, one binary with a module per area.

// Known-answer vectors for RFC 6962 hashing and proofs, from independent sources.
mod vectors;
// Whole-log verification against edited, deleted, reordered and truncated logs.
mod tamper;
// Auditor packages: export, offline check, and tampered packages.
mod package;
// The SQL store: SQLite and PostgreSQL, including rows tampered with directly in SQL.
mod store;
// Shared helpers.
mod util;
