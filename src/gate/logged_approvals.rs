//! Re-checking, offline, every approval an exported log says a call ran
//! with: each Ed25519 signature against the approver's published key, each
//! passkey assertion against a credential pinned in the approvers document
//! or registered and confirmed earlier in the same log.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::audit::{Decision, Receipt};
use crate::webauthn::{Assertion, CredentialKey, RelyingParty};

use super::quorum::approval_statement;

/// `/.well-known/dualtrust-approvers.json`, as far as verification reads it.
#[derive(Debug, Deserialize)]
pub struct ApproversDocument {
    pub relying_party: RelyingParty,
    pub approvers: Vec<DocumentApprover>,
}

#[derive(Debug, Deserialize)]
pub struct DocumentApprover {
    pub id: String,
    pub public_key: Option<String>,
    #[serde(default)]
    pub passkeys: Vec<DocumentPasskey>,
}

#[derive(Debug, Deserialize)]
pub struct DocumentPasskey {
    pub credential_id: String,
    pub public_key: String,
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggedApproval {
    approver: String,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    passkey: Option<Assertion>,
    expires_at: u64,
}

/// How many approvals were re-checked, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApprovalsChecked {
    pub by_key: usize,
    pub by_passkey: usize,
}

/// Checks every approval in `receipts` (in log order); the first that does
/// not verify is returned with its receipt's `seq`.
pub fn verify_logged_approvals(
    receipts: &[Receipt],
    document: &ApproversDocument,
) -> Result<ApprovalsChecked, (u64, String)> {
    let mut checked = ApprovalsChecked::default();
    // (approver, credential id) → key, from confirmation receipts so far.
    let mut confirmed: BTreeMap<(String, String), String> = BTreeMap::new();
    for receipt in receipts {
        let body = &receipt.body;
        let fail = |why: String| (body.seq, why);
        let outcome = body.outcome.as_ref();
        if body.decision == Decision::PasskeyConfirmed
            && let Some(o) = outcome
            && let (Some(approver), Some(id), Some(key)) = (
                o["approver"].as_str(),
                o["credential_id"].as_str(),
                o["public_key"].as_str(),
            )
        {
            confirmed.insert((approver.into(), id.into()), key.into());
            continue;
        }
        if !matches!(
            body.decision,
            Decision::Intent | Decision::Allowed | Decision::Error
        ) {
            continue;
        }
        let Some(approvals) = outcome.and_then(|o| o.get("approvals")) else {
            continue;
        };
        let approvals: Vec<LoggedApproval> = serde_json::from_value(approvals.clone())
            .map_err(|e| fail(format!("its approvals are not well formed: {e}")))?;
        for approval in approvals {
            let (Some(lease), Some(digest), Some(subject)) =
                (&body.lease, &body.args_digest, &body.subject)
            else {
                return Err(fail(
                    "an approved call without lease, digest or subject".into(),
                ));
            };
            let statement =
                approval_statement(lease, &body.tool, digest, subject, approval.expires_at);
            let approver = document
                .approvers
                .iter()
                .find(|a| a.id == approval.approver)
                .ok_or_else(|| {
                    fail(format!(
                        "approver `{}` is not in the approvers document",
                        approval.approver
                    ))
                })?;
            match (&approval.signature, &approval.passkey) {
                (Some(signature), None) => {
                    let key = approver
                        .public_key
                        .as_deref()
                        .and_then(crate::keys::parse_public_key)
                        .ok_or_else(|| {
                            fail(format!("approver `{}` has no Ed25519 key", approver.id))
                        })?;
                    let signature = URL_SAFE_NO_PAD
                        .decode(signature)
                        .ok()
                        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
                        .ok_or_else(|| fail("a malformed approval signature".into()))?;
                    key.verify_strict(
                        statement.as_bytes(),
                        &ed25519_dalek::Signature::from_bytes(&signature),
                    )
                    .map_err(|_| {
                        fail(format!("the approval by `{}` does not verify", approver.id))
                    })?;
                    checked.by_key += 1;
                }
                (None, Some(assertion)) => {
                    let pinned = approver
                        .passkeys
                        .iter()
                        .find(|p| {
                            p.source == "config" && p.credential_id == assertion.credential_id
                        })
                        .map(|p| p.public_key.clone());
                    let key = pinned
                        .or_else(|| {
                            confirmed
                                .get(&(approver.id.clone(), assertion.credential_id.clone()))
                                .cloned()
                        })
                        .ok_or_else(|| {
                            fail(format!(
                                "passkey {} of `{}` is neither pinned nor confirmed earlier in the log",
                                assertion.credential_id, approver.id
                            ))
                        })?;
                    let key = CredentialKey::from_cose_b64(&key)
                        .map_err(|e| fail(format!("passkey {}: {e}", assertion.credential_id)))?;
                    assertion
                        .verify(&document.relying_party, &key, &statement)
                        .map_err(|e| {
                            fail(format!("the passkey approval by `{}`: {e}", approver.id))
                        })?;
                    checked.by_passkey += 1;
                }
                _ => {
                    return Err(fail(
                        "an approval with neither or both of signature and passkey".into(),
                    ));
                }
            }
        }
    }
    Ok(checked)
}
