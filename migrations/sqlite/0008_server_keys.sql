-- The server keys that sign this log and where each may sign: receipts
-- with from_seq <= seq < until_seq, checkpoints of sizes from_seq through
-- until_seq. until_seq is NULL for the one active key; a retired key's
-- until_root is the RFC 6962 root (hex) of the log at until_seq.
CREATE TABLE server_keys (
    kid TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    until_seq INTEGER,
    until_root TEXT,
    activated_ms INTEGER NOT NULL,
    retired_ms INTEGER
);
CREATE UNIQUE INDEX server_keys_one_active ON server_keys ((until_seq IS NULL)) WHERE until_seq IS NULL;

-- The log's checkpoint origin, fixed when the log is first opened.
CREATE TABLE log_origin (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    origin TEXT NOT NULL
);
