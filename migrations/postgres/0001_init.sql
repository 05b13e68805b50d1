-- The state store on PostgreSQL: the same tables as the SQLite migrations
-- 0001-0003, in one step. Shared by every replica.

-- Leases: one row per capability; `state` moves to consumed exactly once.
CREATE TABLE leases (
    id           TEXT PRIMARY KEY,
    subject      TEXT NOT NULL,
    tool         TEXT NOT NULL,
    args_digest  TEXT NOT NULL,
    scope        TEXT NOT NULL,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending_approval', 'ready', 'consumed', 'expired', 'revoked')),
    consumed_at  BIGINT,
    summary      TEXT NOT NULL DEFAULT '',
    args_json    TEXT NOT NULL DEFAULT '{}',
    quorum_k     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX leases_subject_state ON leases (subject, state);

-- One approval per approver per lease.
CREATE TABLE approvals (
    lease_id     TEXT NOT NULL REFERENCES leases (id),
    approver_id  TEXT NOT NULL,
    signature    TEXT NOT NULL,
    signed_at    BIGINT NOT NULL,
    PRIMARY KEY (lease_id, approver_id)
);

-- The receipt log: `seq` is the position, unique so two writers cannot fork it.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    receipt    TEXT NOT NULL,
    leaf_hash  TEXT NOT NULL DEFAULT ''
);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    revoked_at  BIGINT NOT NULL
);
