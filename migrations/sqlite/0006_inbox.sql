-- The lease each receipt names, so an approver's history finds a held
-- call's receipts (held, approvals, rejection, the run) without scanning
-- the log. Backfilled from the receipts already stored.
ALTER TABLE audit_log ADD COLUMN lease TEXT;
UPDATE audit_log SET lease = json_extract(receipt, '$.body.lease');
CREATE INDEX audit_log_lease ON audit_log (lease) WHERE lease IS NOT NULL;
-- The network address a held call came from (HTTP), for the review.
ALTER TABLE leases ADD COLUMN requester_address TEXT;
-- Policy may need more than one rejection to end a held call: one row per
-- approver per lease (SQLite cannot change a primary key in place).
CREATE TABLE rejections_by_approver (
    lease_id     TEXT NOT NULL REFERENCES leases (id),
    approver_id  TEXT NOT NULL,
    signature    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    signed_at    INTEGER NOT NULL,
    PRIMARY KEY (lease_id, approver_id)
);
INSERT INTO rejections_by_approver SELECT lease_id, approver_id, signature, reason, signed_at FROM rejections;
DROP TABLE rejections;
ALTER TABLE rejections_by_approver RENAME TO rejections;
-- Revocations are served from memory and reloaded incrementally by time.
CREATE INDEX revoked_tokens_at ON revoked_tokens (revoked_at);
