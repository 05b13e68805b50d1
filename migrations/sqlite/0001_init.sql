-- Leases: one row per capability; `state` moves ready -> consumed exactly once.
CREATE TABLE leases (
    id           TEXT PRIMARY KEY,
    subject      TEXT NOT NULL,
    tool         TEXT NOT NULL,
    args_digest  TEXT NOT NULL,
    scope        TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending_approval', 'ready', 'consumed', 'expired', 'revoked')),
    consumed_at  INTEGER
);
CREATE INDEX leases_subject_state ON leases (subject, state);

-- The receipt log: `seq` is the position, unique so two writers cannot fork it.
CREATE TABLE audit_log (
    seq      INTEGER PRIMARY KEY,
    hash     TEXT NOT NULL UNIQUE,
    receipt  TEXT NOT NULL
);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    revoked_at  INTEGER NOT NULL
);
