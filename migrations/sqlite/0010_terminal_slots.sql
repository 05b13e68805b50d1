-- The terminal's per-subject concurrency cap shared by replicas
-- (limits.backend = "store"): one row per running command, lapsing at
-- expires_ms so a replica that died holding one frees it.
CREATE TABLE terminal_slots (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX terminal_slots_subject ON terminal_slots (subject);
