//! Audit receipts: one for every decision, allowed or denied.
//!
//! A receipt's body is serialized with RFC 8785 (JSON Canonicalization
//! Scheme); `hash` is the SHA-256 of those canonical bytes and `sig` is an
//! Ed25519 signature (RFC 8032) over the same bytes by the server key named
//! in `body.kid`. Anyone holding the server's JWKS can check a receipt with
//! standard tools: canonicalize `body`, hash, verify.
//!
//! Receipts are chained: `body.prev` is the hash of the receipt before it in
//! the log and `body.seq` its position, so deleting, reordering or editing a
//! stored receipt breaks the chain. The body is kept ready to become an
//! RFC 6962 Merkle leaf.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys::KeyPair;
use crate::store::{Store, StoreError};

pub const RECEIPT_TYPE: &str = "dualtrust.receipt.v1";
/// `prev` of the first receipt in a log.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The call passed the gate and ran.
    Allowed,
    /// The gate refused the call; nothing ran.
    Denied,
    /// The call passed the gate but the tool failed.
    Error,
    /// The call is destructive and lacks quorum approval; nothing ran.
    ApprovalRequired,
    /// An explicit lease was issued; nothing ran.
    LeaseIssued,
    /// A destructive call is about to run (recorded before it does).
    Intent,
    /// A registered approver's signed approval was recorded.
    ApprovalRecorded,
}

/// What the gate knows about a decision; the log adds position and time.
#[derive(Debug, Clone, Default)]
pub struct ReceiptDraft {
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub transport: &'static str,
    pub tool: String,
    pub class: Option<&'static str>,
    pub scope: Option<String>,
    pub args_digest: Option<String>,
    pub lease: Option<String>,
    pub decision: Option<Decision>,
    pub reason: Option<String>,
    pub outcome: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub seq: u64,
    pub prev: String,
    pub ts_ms: u64,
    /// `kid` (RFC 7638 thumbprint) of the server key that signed.
    pub kid: String,
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub transport: String,
    pub tool: String,
    pub class: Option<String>,
    pub scope: Option<String>,
    pub args_digest: Option<String>,
    pub lease: Option<String>,
    pub decision: Decision,
    pub reason: Option<String>,
    pub outcome: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The signed statement.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub body: ReceiptBody,
    /// SHA-256 (hex) of the RFC 8785 canonical form of `body`.
    pub hash: String,
    /// Ed25519 signature (base64url) over the RFC 8785 canonical form of `body`.
    pub sig: String,
}

/// Which check on a receipt failed. Each has a fixed, explainable meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptCheckError {
    #[error("the receipt body cannot be canonicalized")]
    Canonicalization,
    #[error("hash mismatch: the body is not the one that was hashed")]
    HashMismatch,
    #[error("the signing key is not one of this server's keys")]
    UnknownKey,
    #[error("the signature is not 64 base64url-encoded bytes")]
    MalformedSignature,
    #[error("the signature does not verify: the body was altered or signed by another key")]
    BadSignature,
    #[error("no receipt with this sequence number is in the log")]
    NotInLog,
    #[error("the log holds a different receipt at this sequence number")]
    LogMismatch,
    #[error("the receipt's prev does not match the hash of the receipt before it")]
    ChainBroken,
}

impl ReceiptCheckError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Canonicalization => "canonicalization",
            Self::HashMismatch => "hash",
            Self::UnknownKey => "unknown_key",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "signature",
            Self::NotInLog => "not_in_log",
            Self::LogMismatch => "log_mismatch",
            Self::ChainBroken => "chain",
        }
    }
}

pub fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, ReceiptCheckError> {
    serde_json_canonicalizer::to_vec(value).map_err(|_| ReceiptCheckError::Canonicalization)
}

impl Receipt {
    pub fn seal(body: ReceiptBody, key: &KeyPair) -> Result<Self, ReceiptCheckError> {
        let bytes = canonical_bytes(&body)?;
        Ok(Self {
            hash: crate::sha256_hex(&bytes),
            sig: URL_SAFE_NO_PAD.encode(key.sign(&bytes)),
            body,
        })
    }

    /// Checks hash and signature against the given server keys (by `kid`).
    pub fn check_signature(
        &self,
        keys: &[(String, VerifyingKey)],
    ) -> Result<(), ReceiptCheckError> {
        let bytes = canonical_bytes(&self.body)?;
        if crate::sha256_hex(&bytes) != self.hash {
            return Err(ReceiptCheckError::HashMismatch);
        }
        let (_, key) = keys
            .iter()
            .find(|(kid, _)| *kid == self.body.kid)
            .ok_or(ReceiptCheckError::UnknownKey)?;
        let sig = URL_SAFE_NO_PAD
            .decode(&self.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .ok_or(ReceiptCheckError::MalformedSignature)?;
        key.verify_strict(&bytes, &Signature::from_bytes(&sig))
            .map_err(|_| ReceiptCheckError::BadSignature)
    }
}

/// The append-only receipt log.
pub struct AuditLog {
    store: Store,
    key: Arc<KeyPair>,
    // One writer per process; the store's unique `seq` makes a second
    // process lose the race and retry instead of forking the chain.
    append_lock: tokio::sync::Mutex<()>,
}

const APPEND_ATTEMPTS: usize = 8;

impl AuditLog {
    pub fn new(store: Store, key: Arc<KeyPair>) -> Self {
        Self {
            store,
            key,
            append_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn server_keys(&self) -> Vec<(String, VerifyingKey)> {
        vec![(self.key.kid().to_string(), self.key.verifying_key())]
    }

    /// Appends and returns the receipt once the store has committed it.
    pub async fn append(&self, draft: ReceiptDraft) -> Result<Receipt, StoreError> {
        let _writer = self.append_lock.lock().await;
        for _ in 0..APPEND_ATTEMPTS {
            let (seq, prev) = match self.store.log_head().await? {
                Some((seq, hash)) => (seq + 1, hash),
                None => (0, GENESIS_PREV.to_string()),
            };
            let body = ReceiptBody {
                kind: RECEIPT_TYPE.into(),
                seq,
                prev,
                ts_ms: crate::now_unix_ms(),
                kid: self.key.kid().to_string(),
                subject: draft.subject.clone(),
                token_id: draft.token_id.clone(),
                transport: draft.transport.into(),
                tool: draft.tool.clone(),
                class: draft.class.map(String::from),
                scope: draft.scope.clone(),
                args_digest: draft.args_digest.clone(),
                lease: draft.lease.clone(),
                decision: draft.decision.unwrap_or(Decision::Error),
                reason: draft.reason.clone(),
                outcome: draft.outcome.clone(),
            };
            let receipt = Receipt::seal(body, &self.key).map_err(|_| StoreError::Corrupt)?;
            match self.store.insert_receipt(&receipt).await {
                Ok(()) => return Ok(receipt),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Checks a receipt: hash, signature, presence in the log and its link
    /// to the receipt before it. Returns every check with its outcome.
    pub async fn check(
        &self,
        receipt: &Receipt,
    ) -> Result<Vec<(&'static str, Result<(), ReceiptCheckError>)>, StoreError> {
        let mut checks = Vec::new();
        let signature = receipt.check_signature(&self.server_keys());
        let signature_ok = signature.is_ok();
        checks.push(("signature", signature));
        if !signature_ok {
            return Ok(checks);
        }
        let in_log = match self.store.receipt_at(receipt.body.seq).await? {
            None => Err(ReceiptCheckError::NotInLog),
            Some(stored) if stored.hash != receipt.hash => Err(ReceiptCheckError::LogMismatch),
            Some(_) => Ok(()),
        };
        let in_log_ok = in_log.is_ok();
        checks.push(("in_log", in_log));
        if !in_log_ok {
            return Ok(checks);
        }
        let chain = if receipt.body.seq == 0 {
            if receipt.body.prev == GENESIS_PREV {
                Ok(())
            } else {
                Err(ReceiptCheckError::ChainBroken)
            }
        } else {
            match self.store.receipt_at(receipt.body.seq - 1).await? {
                Some(before) if before.hash == receipt.body.prev => Ok(()),
                _ => Err(ReceiptCheckError::ChainBroken),
            }
        };
        checks.push(("chain", chain));
        Ok(checks)
    }
}

/// Verifies a whole exported log offline: every receipt's signature, the
/// sequence numbers, and the chain. Returns the number of receipts.
pub fn verify_chain(
    receipts: impl IntoIterator<Item = Receipt>,
    keys: &[(String, VerifyingKey)],
) -> Result<u64, (u64, ReceiptCheckError)> {
    let mut expected_prev = GENESIS_PREV.to_string();
    let mut count = 0u64;
    for receipt in receipts {
        if receipt.body.seq != count {
            return Err((count, ReceiptCheckError::NotInLog));
        }
        receipt.check_signature(keys).map_err(|e| (count, e))?;
        if receipt.body.prev != expected_prev {
            return Err((count, ReceiptCheckError::ChainBroken));
        }
        expected_prev = receipt.hash;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(seq: u64, prev: &str) -> ReceiptBody {
        ReceiptBody {
            kind: RECEIPT_TYPE.into(),
            seq,
            prev: prev.into(),
            ts_ms: 1,
            kid: String::new(),
            subject: Some("alice".into()),
            token_id: None,
            transport: "stdio".into(),
            tool: "db.query".into(),
            class: Some("read".into()),
            scope: Some("db:read".into()),
            args_digest: Some("00".into()),
            lease: None,
            decision: Decision::Allowed,
            reason: None,
            outcome: Some(serde_json::json!({"rows": 1, "é": "ü"})),
        }
    }

    fn chain(key: &KeyPair, n: u64) -> Vec<Receipt> {
        let mut prev = GENESIS_PREV.to_string();
        (0..n)
            .map(|seq| {
                let mut b = body(seq, &prev);
                b.kid = key.kid().into();
                let r = Receipt::seal(b, key).expect("seal");
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn honest_chain_verifies_and_every_tamper_is_caught() {
        let key = KeyPair::generate().expect("key");
        let keys = vec![(key.kid().to_string(), key.verifying_key())];
        let honest = chain(&key, 6);
        assert_eq!(verify_chain(honest.clone(), &keys), Ok(6));

        let mut edited = honest.clone();
        edited[3].body.subject = Some("mallory".into());
        assert_eq!(
            verify_chain(edited, &keys),
            Err((3, ReceiptCheckError::HashMismatch))
        );

        let mut deleted = honest.clone();
        deleted.remove(2);
        assert!(verify_chain(deleted, &keys).is_err());

        let mut reordered = honest.clone();
        reordered.swap(1, 2);
        assert!(verify_chain(reordered, &keys).is_err());

        let mut rehashed = honest.clone();
        rehashed[4].body.outcome = None;
        rehashed[4].hash = crate::sha256_hex(&canonical_bytes(&rehashed[4].body).expect("c"));
        assert_eq!(
            verify_chain(rehashed, &keys),
            Err((4, ReceiptCheckError::BadSignature))
        );

        let other = KeyPair::generate().expect("key");
        let other_keys = vec![(key.kid().to_string(), other.verifying_key())];
        assert_eq!(
            verify_chain(honest, &other_keys),
            Err((0, ReceiptCheckError::BadSignature))
        );
    }

    #[test]
    fn canonical_form_is_rfc8785() {
        // Keys sorted by UTF-16 code units, no whitespace, numbers in ES6 form.
        let v = serde_json::json!({"b": 1.0, "a": [true, null], "\u{e9}": "x"});
        let bytes = canonical_bytes(&v).expect("canonical");
        assert_eq!(
            String::from_utf8(bytes).expect("utf8"),
            "{\"a\":[true,null],\"b\":1,\"\u{e9}\":\"x\"}"
        );
    }
}
