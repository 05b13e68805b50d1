-- Approvers' passkeys registered in the inbox: pending until an operator
-- confirms one (dualtrust passkeys confirm), only then counted, until one
-- revokes it (dualtrust passkeys revoke: a lost or retired authenticator).
CREATE TABLE passkeys (
    credential_id TEXT PRIMARY KEY,
    approver_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    state TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    confirmed_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX passkeys_approver ON passkeys (approver_id);

-- The highest signature counter each credential (registered or pinned in
-- the configuration) has shown: an assertion must exceed it, or a cloned
-- authenticator could replay the same credential.
CREATE TABLE passkey_counters (
    credential_id TEXT PRIMARY KEY,
    sign_count BIGINT NOT NULL
);
