-- RFC 6962 leaf hash of each receipt, so the tree is rebuilt at start-up
-- without re-canonicalizing every receipt. Empty for rows written before
-- this migration; those are hashed from the receipt itself.
ALTER TABLE audit_log ADD COLUMN leaf_hash TEXT NOT NULL DEFAULT '';
