-- The lease each receipt names, so an approver's history finds a held
-- call's receipts (held, approvals, rejection, the run) without scanning
-- the log. Backfilled from the receipts already stored.
ALTER TABLE audit_log ADD COLUMN lease TEXT;
UPDATE audit_log SET lease = (receipt::jsonb) -> 'body' ->> 'lease';
CREATE INDEX audit_log_lease ON audit_log (lease) WHERE lease IS NOT NULL;
-- The network address a held call came from (HTTP), for the review.
ALTER TABLE leases ADD COLUMN requester_address TEXT;
-- Policy may need more than one rejection to end a held call: one row per
-- approver per lease.
ALTER TABLE rejections DROP CONSTRAINT rejections_pkey;
ALTER TABLE rejections ADD PRIMARY KEY (lease_id, approver_id);
-- Revocations are served from memory and reloaded incrementally by time.
CREATE INDEX revoked_tokens_at ON revoked_tokens (revoked_at);
