-- What an approver is shown, and how many approvals the lease needs.
ALTER TABLE leases ADD COLUMN summary TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN args_json TEXT NOT NULL DEFAULT '{}';
ALTER TABLE leases ADD COLUMN quorum_k INTEGER NOT NULL DEFAULT 0;

-- One approval per approver per lease: the primary key makes a second one
-- from the same approver a conflict, never a second vote.
CREATE TABLE approvals (
    lease_id     TEXT NOT NULL REFERENCES leases (id),
    approver_id  TEXT NOT NULL,
    signature    TEXT NOT NULL,
    signed_at    INTEGER NOT NULL,
    PRIMARY KEY (lease_id, approver_id)
);
