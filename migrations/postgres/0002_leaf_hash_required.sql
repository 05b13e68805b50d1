-- Every PostgreSQL log row was written with its leaf hash; no default, so a
-- row without one is an error rather than an empty string.
ALTER TABLE audit_log ALTER COLUMN leaf_hash DROP DEFAULT;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_leaf_hash_present CHECK (leaf_hash <> '');
