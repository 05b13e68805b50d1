//! k-of-n approval of destructive calls by registered humans.
//!
//! An approval is an Ed25519 signature by a registered approver key over a
//! domain-separated statement built by the server from its own lease record
//! ([`approval_message`]): the lease id, tool, argument digest, requesting
//! subject and expiry. Nothing a client sends names what is approved; a
//! signature made for another lease, other arguments or another expiry does
//! not verify. Stored approvals are verified again every time they are
//! counted, so a row written into the store by hand counts for nothing
//! without a valid signature.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signature;
use serde::Serialize;

use crate::config::{Approver, QuorumConfig};
use crate::store::{Lease, LeaseState, StoreError, StoredApproval};

use super::record::{Halt, Held, Status};
use super::{Action, Denial, Gate};

/// The first line of every signed approval statement.
pub const APPROVAL_DOMAIN: &str = "dualtrust-approval-v1";

/// The exact bytes an approver signs for `lease`.
pub fn approval_message(lease: &Lease) -> String {
    format!(
        "{APPROVAL_DOMAIN}\nlease={}\ntool={}\nargs_digest={}\nsubject={}\nexpires_at={}\n",
        lease.id, lease.tool, lease.args_digest, lease.subject, lease.expires_at
    )
}

/// The first line of every signed rejection statement.
pub const REJECTION_DOMAIN: &str = "dualtrust-rejection-v1";

/// The longest reason a rejection may give.
pub const MAX_REASON_CHARS: usize = 500;

/// The exact bytes an approver signs to refuse `lease`, with their reason:
/// the lease's own statement fields under another domain, so an approval
/// can never be replayed as a rejection or the other way round.
pub fn rejection_message(lease: &Lease, reason: &str) -> String {
    format!(
        "{REJECTION_DOMAIN}\nlease={}\ntool={}\nargs_digest={}\nsubject={}\nexpires_at={}\nreason={reason}\n",
        lease.id, lease.tool, lease.args_digest, lease.subject, lease.expires_at
    )
}

/// What an approver (or the agent) is shown about a held call. Built from
/// the server's lease record only; `approvers` are those who can approve
/// this very lease (the requester never can).
pub fn approval_view(
    lease: &Lease,
    registry: &ApproverRegistry,
    approved_by: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "lease_id": lease.id,
        "tool": lease.tool,
        "requested_by": lease.subject,
        "requested_by_token": lease.requester_token,
        "requested_from": lease.requester_address,
        "issued_at": lease.issued_at,
        "summary": lease.summary,
        "arguments": serde_json::from_str::<serde_json::Value>(&lease.args_json).unwrap_or(serde_json::Value::Null),
        "args_digest": lease.args_digest,
        "expires_at": lease.expires_at,
        "k": lease.quorum_k,
        "approvers": registry.eligible_for(lease),
        "approvals": approved_by.len(),
        "approved_by": approved_by,
        "sign": approval_message(lease),
        "sign_to_reject": rejection_message(lease, "<your reason>"),
    })
}

/// Whether `approver` is the requester of `lease`, by id or token subject.
fn requested_by(approver: &Approver, lease: &Lease) -> bool {
    approver.id == lease.subject || approver.subject.as_deref() == Some(lease.subject.as_str())
}

/// Why an approval does not count. `Display` is safe to show the submitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    #[error("no lease with this id exists")]
    LeaseNotFound,
    #[error("the lease is not waiting for approval")]
    LeaseNotPending,
    #[error("the lease has expired")]
    LeaseExpired,
    #[error("the approver is not registered")]
    UnknownApprover,
    #[error("the approver is not eligible to approve this tool")]
    NotEligible,
    #[error("the requester of a call cannot approve it")]
    SelfApproval,
    #[error("the submitting identity is not this approver")]
    WrongSubmitter,
    #[error("the signature is not 64 base64url-encoded bytes")]
    MalformedSignature,
    #[error("the signature does not verify for this lease with this approver's key")]
    BadSignature,
    #[error("this approver has already approved this lease")]
    Duplicate,
    #[error("a rejection needs a reason of 1-500 printable characters on one line")]
    InvalidReason,
    #[error("too many submissions by this approver; retry in a minute")]
    RateLimited,
    #[error("the state store is unavailable")]
    StoreUnavailable,
}

impl ApprovalError {
    pub fn code(self) -> &'static str {
        match self {
            Self::LeaseNotFound => "lease_not_found",
            Self::LeaseNotPending => "lease_not_pending",
            Self::LeaseExpired => "lease_expired",
            Self::UnknownApprover => "unknown_approver",
            Self::NotEligible => "not_eligible",
            Self::SelfApproval => "self_approval",
            Self::WrongSubmitter => "wrong_submitter",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::Duplicate => "duplicate_approval",
            Self::InvalidReason => "invalid_reason",
            Self::RateLimited => "rate_limited",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

/// k and the eligible approver ids for one tool.
#[derive(Debug, Clone, Serialize)]
pub struct QuorumRule {
    pub k: u32,
    pub approvers: Vec<String>,
    /// Rejections that end a held call.
    pub rejections: u32,
}

/// A counted approval, as listed in receipts: a registered approver's
/// signature that verified over this lease's statement. Only the tally
/// makes one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApprovalProof {
    approver: String,
    signature: String,
}

impl ApprovalProof {
    pub fn approver(&self) -> &str {
        &self.approver
    }
    pub fn signature(&self) -> &str {
        &self.signature
    }
}

/// Proof that a call needs no approval, or that k eligible approvers signed
/// this very lease. Only the quorum step makes one.
#[derive(Debug)]
pub struct QuorumMet {
    approvals: Vec<ApprovalProof>,
}

impl QuorumMet {
    /// The verified approvals that let the call run (empty when none were needed).
    pub fn approvals(&self) -> &[ApprovalProof] {
        &self.approvals
    }

    #[cfg(feature = "bench")]
    pub(super) fn unchecked_for_benchmark() -> Self {
        Self {
            approvals: Vec::new(),
        }
    }
}

impl Gate {
    /// Step 5 for a call on a freshly minted lease: only a class that needs
    /// no quorum gets here, and it is checked again rather than trusted.
    pub(super) fn no_quorum_needed(&self, action: &Action) -> Result<QuorumMet, Denial> {
        if self.policy.needs_quorum(action.class()) {
            tracing::error!(
                tool = action.tool(),
                "a call that needs quorum reached a minted lease"
            );
            return Err(Denial::Internal);
        }
        Ok(QuorumMet {
            approvals: Vec::new(),
        })
    }

    /// Step 5 for a redeemed lease: the stored approvals that verify now,
    /// against the larger of the k recorded at issue and the k policy asks
    /// for today. Short of k, the call stays held.
    pub(super) async fn quorum(&self, lease: &Lease, action: &Action) -> Result<QuorumMet, Halt> {
        let rule = self.policy.quorum_rule(&lease.tool);
        let k = if self.policy.needs_quorum(action.class()) {
            lease.quorum_k.max(rule.k)
        } else {
            lease.quorum_k
        };
        if k == 0 {
            return Ok(QuorumMet {
                approvals: Vec::new(),
            });
        }
        let stored = self
            .store
            .approvals(&lease.id)
            .await
            .map_err(|_| Denial::StoreUnavailable)?;
        let approvals = self.policy.approvers.tally(lease, &stored);
        if approvals.len() < k as usize {
            let approval = self
                .approval_view(lease)
                .await
                .map_err(|_| Denial::StoreUnavailable)?;
            return Err(Halt::Hold(Held {
                status: Status::ApprovalRequired,
                approval,
                message: format!(
                    "approval required: {} of {k} approvals so far for lease {}",
                    approvals.len(),
                    lease.id
                ),
            }));
        }
        Ok(QuorumMet { approvals })
    }

    /// What approvers are shown about `lease`, from the server's records:
    /// the statement to sign, who may sign, and who already did.
    pub async fn approval_view(&self, lease: &Lease) -> Result<serde_json::Value, StoreError> {
        let stored = self.store.approvals(&lease.id).await?;
        let approved_by: Vec<String> = self
            .policy
            .approvers
            .tally(lease, &stored)
            .into_iter()
            .map(|a| a.approver)
            .collect();
        let mut view = approval_view(lease, &self.policy.approvers, &approved_by);
        let expired =
            lease.state == LeaseState::PendingApproval && lease.expires_at <= self.clock.now_unix();
        let state = if expired {
            LeaseState::Expired
        } else {
            lease.state
        };
        view["state"] = serde_json::json!(state.as_str());
        let rejected_by: Vec<String> = self
            .store
            .rejections(&lease.id)
            .await?
            .into_iter()
            .map(|r| r.approver_id)
            .collect();
        view["rejected_by"] = serde_json::json!(rejected_by);
        view["rejections_needed"] =
            serde_json::json!(self.policy.approvers.rule_for(&lease.tool).rejections);
        Ok(view)
    }

    /// The held calls `approver` could have approved that no longer wait
    /// (ran, rejected or expired), newest first: each with its view, the
    /// rejection if there was one, and every receipt that names the lease,
    /// so the approver can check what happened against the log.
    pub async fn approval_history(
        &self,
        approver: &str,
        limit: u32,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let now = self.clock.now_unix();
        let mut history = Vec::new();
        // Leases this approver was never eligible for are skipped, so read
        // a bounded multiple of `limit` to fill it.
        for lease in self
            .store
            .decided_leases(now, limit.saturating_mul(4))
            .await?
        {
            if history.len() >= limit as usize {
                break;
            }
            let eligible = self.policy.approvers.eligible_for(&lease);
            if !eligible.iter().any(|id| id == approver) {
                continue;
            }
            let mut entry = self.approval_view(&lease).await?;
            entry["rejections"] = self
                .store
                .rejections(&lease.id)
                .await?
                .iter()
                .map(|r| serde_json::json!({ "by": r.approver_id, "reason": r.reason, "signed_at": r.signed_at }))
                .collect();
            // The first receipts tell the story (held, approved, ran); a
            // caller retrying a spent lease could add any number after them.
            let rows = self
                .store
                .lease_receipts(&lease.id, RECEIPTS_PER_DECIDED_CALL + 1)
                .await?;
            entry["receipts_truncated"] =
                serde_json::json!(rows.len() > RECEIPTS_PER_DECIDED_CALL as usize);
            let receipts: Result<Vec<serde_json::Value>, StoreError> = rows
                .iter()
                .take(RECEIPTS_PER_DECIDED_CALL as usize)
                .map(|row| serde_json::from_str(&row.receipt).map_err(|_| StoreError::Corrupt))
                .collect();
            entry["receipts"] = serde_json::Value::Array(receipts?);
            history.push(entry);
        }
        Ok(history)
    }
}

/// How many receipts of one decided call its history entry carries.
const RECEIPTS_PER_DECIDED_CALL: u32 = 32;

/// The registered approvers and the quorum policy.
pub struct ApproverRegistry {
    approvers: Vec<Approver>,
    quorum: QuorumConfig,
}

impl ApproverRegistry {
    pub fn new(approvers: &[Approver], quorum: &QuorumConfig) -> Self {
        Self {
            approvers: approvers.to_vec(),
            quorum: quorum.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.approvers.is_empty()
    }

    pub fn rule_for(&self, tool: &str) -> QuorumRule {
        let (k, eligible, rejections) = match self.quorum.overrides.get(tool) {
            Some(rule) => (
                rule.k,
                &rule.approvers,
                rule.rejections.unwrap_or(self.quorum.rejections),
            ),
            None => (
                self.quorum.k,
                &self.quorum.approvers,
                self.quorum.rejections,
            ),
        };
        let approvers = if eligible.is_empty() {
            self.approvers.iter().map(|a| a.id.clone()).collect()
        } else {
            eligible.clone()
        };
        QuorumRule {
            k: u32::try_from(k).unwrap_or(u32::MAX),
            approvers,
            rejections: u32::try_from(rejections).unwrap_or(u32::MAX),
        }
    }

    /// Checks one approval for `lease`; returns nothing on success.
    /// `submitter` is the subject of the token that submitted it, if any.
    pub fn check(
        &self,
        lease: &Lease,
        approver_id: &str,
        signature_b64: &str,
        submitter: Option<&str>,
    ) -> Result<(), ApprovalError> {
        self.check_signed(
            lease,
            approver_id,
            signature_b64,
            submitter,
            &approval_message(lease),
        )
    }

    /// Checks one rejection: the same approver rules as an approval, over
    /// the rejection statement with its reason.
    pub fn check_rejection(
        &self,
        lease: &Lease,
        approver_id: &str,
        signature_b64: &str,
        submitter: Option<&str>,
        reason: &str,
    ) -> Result<(), ApprovalError> {
        let valid = !reason.trim().is_empty()
            && reason.chars().count() <= MAX_REASON_CHARS
            && !reason.chars().any(char::is_control);
        if !valid {
            return Err(ApprovalError::InvalidReason);
        }
        self.check_signed(
            lease,
            approver_id,
            signature_b64,
            submitter,
            &rejection_message(lease, reason),
        )
    }

    fn check_signed(
        &self,
        lease: &Lease,
        approver_id: &str,
        signature_b64: &str,
        submitter: Option<&str>,
        message: &str,
    ) -> Result<(), ApprovalError> {
        let approver = self
            .approvers
            .iter()
            .find(|a| a.id == approver_id)
            .ok_or(ApprovalError::UnknownApprover)?;
        if !self
            .rule_for(&lease.tool)
            .approvers
            .iter()
            .any(|id| id == approver_id)
        {
            return Err(ApprovalError::NotEligible);
        }
        if requested_by(approver, lease) {
            return Err(ApprovalError::SelfApproval);
        }
        if let Some(submitter) = submitter {
            match &approver.subject {
                Some(subject) if subject == submitter => {}
                _ => return Err(ApprovalError::WrongSubmitter),
            }
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64.trim())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .ok_or(ApprovalError::MalformedSignature)?;
        approver
            .key
            .verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| ApprovalError::BadSignature)
    }

    /// The registered approver whose token subject is `subject`, if any.
    pub fn approver_for_subject(&self, subject: &str) -> Option<&str> {
        self.approvers
            .iter()
            .find(|a| a.subject.as_deref() == Some(subject))
            .map(|a| a.id.as_str())
    }

    /// The registered public key of approver `id` (base64url, as the
    /// inbox derives it from a key file to check it is the right one).
    pub fn public_key_of(&self, id: &str) -> Option<String> {
        self.approvers
            .iter()
            .find(|a| a.id == id)
            .map(|a| URL_SAFE_NO_PAD.encode(a.key.as_bytes()))
    }

    /// The approver ids policy lets approve `lease`: eligible for its tool,
    /// and not its requester.
    pub fn eligible_for(&self, lease: &Lease) -> Vec<String> {
        self.rule_for(&lease.tool)
            .approvers
            .into_iter()
            .filter(|id| {
                let approver = self.approvers.iter().find(|a| &a.id == id);
                approver.is_some_and(|a| !requested_by(a, lease))
            })
            .collect()
    }

    /// The stored approvals that verify for `lease`, one per approver.
    pub fn tally(&self, lease: &Lease, stored: &[StoredApproval]) -> Vec<ApprovalProof> {
        let mut seen = BTreeSet::new();
        stored
            .iter()
            .filter(|a| {
                self.check(lease, &a.approver_id, &a.signature, None)
                    .is_ok()
            })
            .filter(|a| seen.insert(a.approver_id.clone()))
            .map(|a| ApprovalProof {
                approver: a.approver_id.clone(),
                signature: a.signature.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;
    use crate::store::LeaseState;

    fn lease() -> Lease {
        Lease {
            id: "0123456789abcdef0123456789abcdef".into(),
            subject: "agent".into(),
            tool: "terminal.execute".into(),
            args_digest: "ab".repeat(32),
            scope: "terminal:admin".into(),
            issued_at: 1,
            expires_at: 2_000_000_000,
            state: LeaseState::PendingApproval,
            summary: "run `rm -rf build`".into(),
            args_json: "{}".into(),
            quorum_k: 2,
            requester_token: None,
            requester_address: None,
        }
    }

    fn registry(keys: &[(&str, &KeyPair, Option<&str>)], k: usize) -> ApproverRegistry {
        let approvers: Vec<Approver> = keys
            .iter()
            .map(|(id, key, subject)| Approver {
                id: id.to_string(),
                key: key.verifying_key(),
                subject: subject.map(String::from),
            })
            .collect();
        ApproverRegistry::new(
            &approvers,
            &QuorumConfig {
                k,
                ..QuorumConfig::default()
            },
        )
    }

    fn sign(key: &KeyPair, lease: &Lease) -> String {
        URL_SAFE_NO_PAD.encode(key.sign(approval_message(lease).as_bytes()))
    }

    #[test]
    fn only_signatures_over_this_lease_by_registered_keys_count() {
        let (a, b, c, outsider) = (
            KeyPair::generate().expect("k"),
            KeyPair::generate().expect("k"),
            KeyPair::generate().expect("k"),
            KeyPair::generate().expect("k"),
        );
        let reg = registry(
            &[
                ("alice", &a, None),
                ("bob", &b, Some("bob@idp")),
                ("agent", &c, None),
            ],
            2,
        );
        let l = lease();
        assert_eq!(
            reg.eligible_for(&l),
            ["alice", "bob"],
            "the requester is not offered as an approver"
        );
        assert_eq!(reg.check(&l, "alice", &sign(&a, &l), None), Ok(()));
        assert_eq!(
            reg.check(&l, "mallory", &sign(&outsider, &l), None),
            Err(ApprovalError::UnknownApprover)
        );
        assert_eq!(
            reg.check(&l, "alice", &sign(&outsider, &l), None),
            Err(ApprovalError::BadSignature)
        );
        assert_eq!(
            reg.check(&l, "agent", &sign(&c, &l), None),
            Err(ApprovalError::SelfApproval)
        );
        assert_eq!(
            reg.check(&l, "alice", "not base64!", None),
            Err(ApprovalError::MalformedSignature)
        );
        assert_eq!(
            reg.check(&l, "bob", &sign(&b, &l), Some("mallory@idp")),
            Err(ApprovalError::WrongSubmitter)
        );
        assert_eq!(reg.check(&l, "bob", &sign(&b, &l), Some("bob@idp")), Ok(()));

        let mut other_digest = l.clone();
        other_digest.args_digest = "cd".repeat(32);
        assert_eq!(
            reg.check(&l, "alice", &sign(&a, &other_digest), None),
            Err(ApprovalError::BadSignature)
        );
        let mut other_lease = l.clone();
        other_lease.id = "f".repeat(32);
        assert_eq!(
            reg.check(&l, "alice", &sign(&a, &other_lease), None),
            Err(ApprovalError::BadSignature)
        );
        let mut later = l.clone();
        later.expires_at += 1;
        assert_eq!(
            reg.check(&l, "alice", &sign(&a, &later), None),
            Err(ApprovalError::BadSignature)
        );

        let stored = |id: &str, sig: String| StoredApproval {
            approver_id: id.into(),
            signature: sig,
            signed_at: 1,
        };
        let tally = reg.tally(
            &l,
            &[
                stored("alice", sign(&a, &l)),
                stored("alice", sign(&a, &l)),
                stored("agent", sign(&c, &l)),
                stored("bob", sign(&a, &l)),
            ],
        );
        assert_eq!(
            tally.len(),
            1,
            "duplicates, self-approval and wrong keys do not count"
        );
    }
}
