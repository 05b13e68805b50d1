//! Re-checking, offline, every approval an exported log says a call ran
//! with: each Ed25519 signature against the approver's published key, each
//! passkey assertion against a credential pinned in the approvers document
//! or registered and confirmed earlier in the same log (and not revoked
//! since).

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
        if body.decision == Decision::PasskeyRevoked
            && let Some(o) = outcome
            && let (Some(approver), Some(id)) =
                (o["approver"].as_str(), o["credential_id"].as_str())
        {
            confirmed.remove(&(approver.to_string(), id.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ReceiptBody;
    use crate::fuzzing::SoftAuthenticator;

    fn receipt(seq: u64, decision: Decision, outcome: serde_json::Value) -> Receipt {
        Receipt {
            body: ReceiptBody {
                kind: crate::audit::RECEIPT_TYPE.into(),
                seq,
                prev: crate::audit::GENESIS_PREV.into(),
                ts_ms: 0,
                kid: "k".into(),
                subject: Some("agent".into()),
                token_id: None,
                transport: "http".into(),
                tool: "db.query".into(),
                class: Some("destructive".into()),
                scope: None,
                args_digest: Some("ab".repeat(32)),
                lease: Some("0".repeat(32)),
                decision,
                reason: None,
                outcome: Some(outcome),
                trace_id: None,
            },
            hash: String::new(),
            sig: String::new(),
        }
    }

    /// A passkey counts offline only between the receipts that confirm and
    /// revoke it, and only for the statement the receipt rebuilds.
    #[test]
    fn a_passkey_approval_verifies_only_while_the_log_says_it_was_confirmed() {
        let mut device =
            SoftAuthenticator::new(crate::webauthn::ES256, "http://localhost:1", "localhost");
        let statement =
            approval_statement(&"0".repeat(32), "db.query", &"ab".repeat(32), "agent", 99);
        let approval = |assertion: Assertion| serde_json::json!({ "approvals": [{ "approver": "alice", "passkey": assertion, "expires_at": 99 }] });
        let id = device.credential_id_b64();
        let confirmed = receipt(
            0,
            Decision::PasskeyConfirmed,
            serde_json::json!({ "approver": "alice", "credential_id": id, "public_key": URL_SAFE_NO_PAD.encode(device.cose_key()) }),
        );
        let ran = receipt(1, Decision::Intent, approval(device.assert(&statement)));
        let revoked = receipt(
            2,
            Decision::PasskeyRevoked,
            serde_json::json!({ "approver": "alice", "credential_id": id }),
        );
        let late = receipt(3, Decision::Intent, approval(device.assert(&statement)));
        let document = ApproversDocument {
            relying_party: RelyingParty::default(),
            approvers: vec![DocumentApprover {
                id: "alice".into(),
                public_key: None,
                passkeys: Vec::new(),
            }],
        };
        let checked = verify_logged_approvals(&[confirmed.clone(), ran.clone()], &document);
        assert_eq!(
            checked,
            Ok(ApprovalsChecked {
                by_key: 0,
                by_passkey: 1
            })
        );
        assert_eq!(
            verify_logged_approvals(std::slice::from_ref(&ran), &document).map_err(|(seq, _)| seq),
            Err(1),
            "never confirmed in this log"
        );
        assert_eq!(
            verify_logged_approvals(&[confirmed.clone(), ran.clone(), revoked, late], &document)
                .map_err(|(seq, _)| seq),
            Err(3),
            "used after its revocation"
        );
        let mut other = ran;
        other.body.args_digest = Some("cd".repeat(32));
        assert_eq!(
            verify_logged_approvals(&[confirmed, other], &document).map_err(|(seq, _)| seq),
            Err(1),
            "an approval moved onto other arguments"
        );
    }
}
