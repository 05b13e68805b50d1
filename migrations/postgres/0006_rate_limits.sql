-- Shared rate limits (limits.backend = "store"): one GCRA bucket per key,
-- its theoretical arrival time in milliseconds.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY,
    tat_ms BIGINT NOT NULL
);
