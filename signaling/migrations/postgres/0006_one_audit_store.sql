-- One audit store: the Merkle log (`audit_log`, created by confide-audit) is the only
-- record of audited actions, and the admin API and CLI read it. The old plain copy had
-- no append-only guard and was never verified; every row in it was also appended to
-- the Merkle log, so nothing is lost.
DROP TABLE audit_events;
