-- A signed refusal of a held call: the lease is revoked, and this says by
-- whom and why (the signature covers the lease and the reason).
CREATE TABLE rejections (
    lease_id     TEXT PRIMARY KEY REFERENCES leases (id),
    approver_id  TEXT NOT NULL,
    signature    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    signed_at    INTEGER NOT NULL
);
