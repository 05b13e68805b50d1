//! k-of-n approval of destructive calls by registered humans.
//!
//! An approval is a signature by a registered approver over a
//! domain-separated statement built by the server from its own lease record
//! ([`approval_message`]): the lease id, tool, argument digest, requesting
//! subject and expiry. It is made with the approver's Ed25519 key, or with
//! one of their passkeys as a WebAuthn assertion whose challenge is the
//! statement's SHA-256 ([`crate::webauthn::statement_challenge`]). Nothing
//! a client sends names what is approved; a signature made for another
//! lease, other arguments or another expiry does not verify. Stored
//! approvals are verified again every time they are counted, so a row
//! written into the store by hand counts for nothing without a valid
//! signature.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signature;
use serde::Serialize;

use crate::config::{Approver, QuorumConfig};
use crate::store::{Lease, LeaseState, StoreError, StoredApproval, StoredPasskey};
use crate::webauthn::{Assertion, CredentialKey, RelyingParty, WebauthnError};

use super::record::{Halt, Held, Status};
use super::{Action, Denial, Gate};

/// The first line of every signed approval statement.
pub const APPROVAL_DOMAIN: &str = "dualtrust-approval-v1";

/// The exact bytes an approver signs for `lease`.
pub fn approval_message(lease: &Lease) -> String {
    approval_statement(
        &lease.id,
        &lease.tool,
        &lease.args_digest,
        &lease.subject,
        lease.expires_at,
    )
}

/// The approval statement from its fields, as an auditor rebuilds it from
/// a receipt (`lease`, `tool`, `args_digest`, `subject`, and the approval's
/// `expires_at`).
pub fn approval_statement(
    lease: &str,
    tool: &str,
    args_digest: &str,
    subject: &str,
    expires_at: u64,
) -> String {
    format!(
        "{APPROVAL_DOMAIN}\nlease={lease}\ntool={tool}\nargs_digest={args_digest}\nsubject={subject}\nexpires_at={expires_at}\n"
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
    let statement = approval_message(lease);
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
        "passkeys_needed": registry.rule_for(&lease.tool).passkeys,
        "passkey_challenge": URL_SAFE_NO_PAD.encode(crate::webauthn::statement_challenge(&statement)),
        "sign": statement,
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
    #[error("this approver signs with passkeys only: no key file is registered")]
    NoApproverKey,
    #[error("the passkey is not one of this approver's confirmed or pinned credentials")]
    UnknownCredential,
    #[error("the passkey assertion was refused: {0}")]
    Passkey(WebauthnError),
    #[error(
        "the registration challenge was not issued to this approver by this server, or it expired"
    )]
    BadChallenge,
    #[error("no passkey registration with this credential id waits for confirmation")]
    NoPendingPasskey,
    #[error(
        "no registered passkey with this credential id is left to revoke (a pinned one is removed from the configuration)"
    )]
    NoPasskeyToRevoke,
    #[error("five passkey registrations of this approver already wait for an operator")]
    TooManyPendingPasskeys,
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
            Self::NoApproverKey => "no_approver_key",
            Self::UnknownCredential => "unknown_credential",
            Self::Passkey(e) => e.code(),
            Self::BadChallenge => "bad_challenge",
            Self::NoPendingPasskey => "no_pending_passkey",
            Self::NoPasskeyToRevoke => "no_passkey_to_revoke",
            Self::TooManyPendingPasskeys => "too_many_pending_passkeys",
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
    /// Of the k approvals, how many must be passkey signatures.
    pub passkeys: u32,
}

/// What an approval or rejection is signed with. Stored as the signature
/// column's text: an Ed25519 signature as its base64url, a passkey
/// assertion as `{"passkey": …}` (JSON never starts a base64url string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// base64url of an Ed25519 signature by the approver's key.
    Key(String),
    Passkey(Assertion),
}

#[derive(Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAssertion {
    passkey: Assertion,
}

impl Evidence {
    pub fn to_stored(&self) -> String {
        match self {
            Self::Key(signature) => signature.clone(),
            Self::Passkey(assertion) => serde_json::to_string(&StoredAssertion {
                passkey: assertion.clone(),
            })
            .unwrap_or_default(),
        }
    }

    /// Reads the stored text; what is not a well-formed assertion is taken
    /// as a key signature, which then fails to verify like any bad one.
    pub fn from_stored(text: &str) -> Self {
        if text.starts_with('{')
            && let Ok(stored) = serde_json::from_str::<StoredAssertion>(text)
        {
            return Self::Passkey(stored.passkey);
        }
        Self::Key(text.to_string())
    }
}

/// A passkey check that passed: the counter the caller must still advance
/// in the store ([`crate::store::Backend::advance_passkey_counter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyUse {
    pub credential_id: String,
    pub sign_count: u32,
}

/// A counted approval, as listed in receipts: a registered approver's
/// signature that verified over this lease's statement. Only the tally
/// makes one.
/// It carries the lease's expiry, the one statement field a receipt does
/// not hold otherwise, so an auditor rebuilds the statement and re-checks
/// the signature or the passkey assertion from the receipt alone.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApprovalProof {
    approver: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    passkey: Option<Assertion>,
    expires_at: u64,
}

impl ApprovalProof {
    pub fn approver(&self) -> &str {
        &self.approver
    }

    pub fn is_passkey(&self) -> bool {
        self.passkey.is_some()
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
        let approvals = self
            .counted_approvals(lease)
            .await
            .map_err(|_| Denial::StoreUnavailable)?;
        let by_passkey = approvals.iter().filter(|a| a.is_passkey()).count();
        if approvals.len() < k as usize || by_passkey < rule.passkeys as usize {
            let approval = self
                .approval_view(lease)
                .await
                .map_err(|_| Denial::StoreUnavailable)?;
            let passkeys = match rule.passkeys {
                0 => String::new(),
                p => format!(" ({by_passkey} of the {p} passkey approvals needed)"),
            };
            return Err(Halt::Hold(Held {
                status: Status::ApprovalRequired,
                approval,
                message: format!(
                    "approval required: {} of {k} approvals so far{passkeys} for lease {}",
                    approvals.len(),
                    lease.id
                ),
            }));
        }
        Ok(QuorumMet { approvals })
    }

    /// The stored approvals of `lease` that verify now, one per approver,
    /// with the passkeys registered and confirmed at this moment.
    pub(super) async fn counted_approvals(
        &self,
        lease: &Lease,
    ) -> Result<Vec<ApprovalProof>, StoreError> {
        let stored = self.store.approvals(&lease.id).await?;
        let passkeys = if stored.iter().any(|a| a.signature.starts_with('{')) {
            self.store.passkeys(None).await?
        } else {
            Vec::new()
        };
        Ok(self.policy.approvers.tally(lease, &stored, &passkeys))
    }

    /// What approvers are shown about `lease`, from the server's records:
    /// the statement to sign, who may sign, and who already did.
    pub async fn approval_view(&self, lease: &Lease) -> Result<serde_json::Value, StoreError> {
        let approved_by: Vec<String> = self
            .counted_approvals(lease)
            .await?
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
    relying_party: RelyingParty,
}

impl ApproverRegistry {
    pub fn new(
        approvers: &[Approver],
        quorum: &QuorumConfig,
        relying_party: &RelyingParty,
    ) -> Self {
        Self {
            approvers: approvers.to_vec(),
            quorum: quorum.clone(),
            relying_party: relying_party.clone(),
        }
    }

    /// The WebAuthn relying party passkeys are checked against.
    pub fn relying_party(&self) -> &RelyingParty {
        &self.relying_party
    }

    /// Every registered approver.
    pub fn all(&self) -> &[Approver] {
        &self.approvers
    }

    pub fn approver(&self, id: &str) -> Option<&Approver> {
        self.approvers.iter().find(|a| a.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.approvers.is_empty()
    }

    pub fn rule_for(&self, tool: &str) -> QuorumRule {
        let (k, eligible, rejections, passkeys) = match self.quorum.overrides.get(tool) {
            Some(rule) => (
                rule.k,
                &rule.approvers,
                rule.rejections.unwrap_or(self.quorum.rejections),
                rule.passkeys.unwrap_or(self.quorum.passkeys),
            ),
            None => (
                self.quorum.k,
                &self.quorum.approvers,
                self.quorum.rejections,
                self.quorum.passkeys,
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
            passkeys: u32::try_from(passkeys).unwrap_or(u32::MAX),
        }
    }

    /// Checks one approval for `lease`. `submitter` is the subject of the
    /// token that submitted it, if any; `passkeys` the registered ones. A
    /// passkey's counter is returned for the caller to advance.
    pub fn check(
        &self,
        lease: &Lease,
        approver_id: &str,
        evidence: &Evidence,
        submitter: Option<&str>,
        passkeys: &[StoredPasskey],
    ) -> Result<Option<PasskeyUse>, ApprovalError> {
        self.check_signed(
            lease,
            approver_id,
            evidence,
            submitter,
            passkeys,
            &approval_message(lease),
        )
    }

    /// Checks one rejection: the same approver rules as an approval, over
    /// the rejection statement with its reason.
    pub fn check_rejection(
        &self,
        lease: &Lease,
        approver_id: &str,
        evidence: &Evidence,
        submitter: Option<&str>,
        passkeys: &[StoredPasskey],
        reason: &str,
    ) -> Result<Option<PasskeyUse>, ApprovalError> {
        let valid = !reason.trim().is_empty()
            && reason.chars().count() <= MAX_REASON_CHARS
            && !reason.chars().any(char::is_control);
        if !valid {
            return Err(ApprovalError::InvalidReason);
        }
        self.check_signed(
            lease,
            approver_id,
            evidence,
            submitter,
            passkeys,
            &rejection_message(lease, reason),
        )
    }

    fn check_signed(
        &self,
        lease: &Lease,
        approver_id: &str,
        evidence: &Evidence,
        submitter: Option<&str>,
        passkeys: &[StoredPasskey],
        message: &str,
    ) -> Result<Option<PasskeyUse>, ApprovalError> {
        let approver = self
            .approver(approver_id)
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
        match evidence {
            Evidence::Key(signature_b64) => {
                let key = approver.key.ok_or(ApprovalError::NoApproverKey)?;
                // Decoded exactly as the offline verifier decodes it, so
                // nothing counted here can fail an audit later.
                let signature = URL_SAFE_NO_PAD
                    .decode(signature_b64)
                    .ok()
                    .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
                    .ok_or(ApprovalError::MalformedSignature)?;
                key.verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
                    .map_err(|_| ApprovalError::BadSignature)?;
                Ok(None)
            }
            Evidence::Passkey(assertion) => {
                assertion
                    .credential_id_bytes()
                    .map_err(ApprovalError::Passkey)?;
                let key = self
                    .credential(approver, &assertion.credential_id, passkeys)
                    .ok_or(ApprovalError::UnknownCredential)?;
                let sign_count = assertion
                    .verify(&self.relying_party, &key, message)
                    .map_err(ApprovalError::Passkey)?;
                Ok(Some(PasskeyUse {
                    credential_id: assertion.credential_id.clone(),
                    sign_count,
                }))
            }
        }
    }

    /// The key of `approver`'s credential `id`: pinned in the
    /// configuration, or registered and confirmed.
    fn credential(
        &self,
        approver: &Approver,
        id: &str,
        registered: &[StoredPasskey],
    ) -> Option<CredentialKey> {
        if let Some(pinned) = approver.passkeys.iter().find(|p| p.credential_id == id) {
            return Some(pinned.key.clone());
        }
        registered
            .iter()
            .find(|p| p.credential_id == id && p.approver_id == approver.id && p.confirmed)
            .and_then(|p| CredentialKey::from_cose_b64(&p.public_key).ok())
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
        self.approver(id)
            .and_then(|a| a.key)
            .map(|key| URL_SAFE_NO_PAD.encode(key.as_bytes()))
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

    /// The stored approvals that verify for `lease`, one per approver. A
    /// passkey's counter was checked when the approval was submitted; here
    /// its signature is checked again against the credential as it stands.
    pub fn tally(
        &self,
        lease: &Lease,
        stored: &[StoredApproval],
        passkeys: &[StoredPasskey],
    ) -> Vec<ApprovalProof> {
        let mut seen = BTreeSet::new();
        stored
            .iter()
            .map(|a| (a, Evidence::from_stored(&a.signature)))
            .filter(|(a, evidence)| {
                self.check(lease, &a.approver_id, evidence, None, passkeys)
                    .is_ok()
            })
            .filter(|(a, _)| seen.insert(a.approver_id.clone()))
            .map(|(a, evidence)| {
                let (signature, passkey) = match evidence {
                    Evidence::Key(signature) => (Some(signature), None),
                    Evidence::Passkey(assertion) => (None, Some(assertion)),
                };
                ApprovalProof {
                    approver: a.approver_id.clone(),
                    signature,
                    passkey,
                    expires_at: lease.expires_at,
                }
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
                key: Some(key.verifying_key()),
                subject: subject.map(String::from),
                passkeys: Vec::new(),
            })
            .collect();
        ApproverRegistry::new(
            &approvers,
            &QuorumConfig {
                k,
                ..QuorumConfig::default()
            },
            &RelyingParty::default(),
        )
    }

    fn sign(key: &KeyPair, lease: &Lease) -> Evidence {
        Evidence::Key(URL_SAFE_NO_PAD.encode(key.sign(approval_message(lease).as_bytes())))
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
        assert_eq!(reg.check(&l, "alice", &sign(&a, &l), None, &[]), Ok(None));
        assert_eq!(
            reg.check(&l, "mallory", &sign(&outsider, &l), None, &[]),
            Err(ApprovalError::UnknownApprover)
        );
        assert_eq!(
            reg.check(&l, "alice", &sign(&outsider, &l), None, &[]),
            Err(ApprovalError::BadSignature)
        );
        assert_eq!(
            reg.check(&l, "agent", &sign(&c, &l), None, &[]),
            Err(ApprovalError::SelfApproval)
        );
        assert_eq!(
            reg.check(&l, "alice", &Evidence::Key("not base64!".into()), None, &[]),
            Err(ApprovalError::MalformedSignature)
        );
        assert_eq!(
            reg.check(&l, "bob", &sign(&b, &l), Some("mallory@idp"), &[]),
            Err(ApprovalError::WrongSubmitter)
        );
        assert_eq!(
            reg.check(&l, "bob", &sign(&b, &l), Some("bob@idp"), &[]),
            Ok(None)
        );

        let mut other_digest = l.clone();
        other_digest.args_digest = "cd".repeat(32);
        assert_eq!(
            reg.check(&l, "alice", &sign(&a, &other_digest), None, &[]),
            Err(ApprovalError::BadSignature)
        );
        let mut other_lease = l.clone();
        other_lease.id = "f".repeat(32);
        assert_eq!(
            reg.check(&l, "alice", &sign(&a, &other_lease), None, &[]),
            Err(ApprovalError::BadSignature)
        );
        let mut later = l.clone();
        later.expires_at += 1;
        assert_eq!(
            reg.check(&l, "alice", &sign(&a, &later), None, &[]),
            Err(ApprovalError::BadSignature)
        );

        let stored = |id: &str, sig: Evidence| StoredApproval {
            approver_id: id.into(),
            signature: sig.to_stored(),
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
            &[],
        );
        assert_eq!(
            tally.len(),
            1,
            "duplicates, self-approval and wrong keys do not count"
        );
    }

    #[test]
    fn a_passkey_counts_only_for_its_approver_once_confirmed_or_pinned() {
        use crate::fuzzing::SoftAuthenticator;
        use crate::webauthn::ES256;
        let origin = "http://localhost:8080";
        let mut pinned = SoftAuthenticator::new(ES256, origin, "localhost");
        let mut registered = SoftAuthenticator::new(ES256, origin, "localhost");
        let approvers = vec![
            Approver {
                id: "alice".into(),
                key: None,
                subject: None,
                passkeys: vec![crate::config::PinnedPasskey {
                    credential_id: pinned.credential_id_b64(),
                    key: pinned.key(),
                }],
            },
            Approver {
                id: "bob".into(),
                key: None,
                subject: None,
                passkeys: Vec::new(),
            },
        ];
        let reg = ApproverRegistry::new(
            &approvers,
            &QuorumConfig {
                k: 2,
                ..QuorumConfig::default()
            },
            &RelyingParty::default(),
        );
        let l = lease();
        let statement = approval_message(&l);
        let (bob_id, bob_key) = (
            registered.credential_id_b64(),
            URL_SAFE_NO_PAD.encode(registered.cose_key()),
        );
        let row = |confirmed| StoredPasskey {
            credential_id: bob_id.clone(),
            approver_id: "bob".into(),
            public_key: bob_key.clone(),
            confirmed,
            registered_at: 1,
            confirmed_at: None,
            revoked_at: None,
        };
        let alice = Evidence::Passkey(pinned.assert(&statement));
        assert_eq!(
            reg.check(&l, "alice", &alice, None, &[]),
            Ok(Some(PasskeyUse {
                credential_id: pinned.credential_id_b64(),
                sign_count: 1
            }))
        );
        assert_eq!(
            reg.check(&l, "bob", &alice, None, &[]),
            Err(ApprovalError::UnknownCredential),
            "another approver's passkey"
        );
        let bob = Evidence::Passkey(registered.assert(&statement));
        assert_eq!(
            reg.check(&l, "bob", &bob, None, &[row(false)]),
            Err(ApprovalError::UnknownCredential),
            "a registration no operator confirmed"
        );
        assert!(reg.check(&l, "bob", &bob, None, &[row(true)]).is_ok());
        assert_eq!(
            reg.check(&l, "bob", &Evidence::Key("AA".into()), None, &[]),
            Err(ApprovalError::NoApproverKey)
        );
        assert_eq!(Evidence::from_stored(&bob.to_stored()), bob);
        let mut other = l.clone();
        other.id = "f".repeat(32);
        assert_eq!(
            reg.check(&other, "bob", &bob, None, &[row(true)]),
            Err(ApprovalError::Passkey(WebauthnError::ChallengeMismatch)),
            "an assertion replayed for another lease"
        );
        let stored = |id: &str, e: &Evidence| StoredApproval {
            approver_id: id.into(),
            signature: e.to_stored(),
            signed_at: 1,
        };
        let tally = reg.tally(
            &l,
            &[stored("alice", &alice), stored("bob", &bob)],
            &[row(true)],
        );
        assert_eq!(tally.len(), 2);
        assert!(tally.iter().all(ApprovalProof::is_passkey));
        let proof = serde_json::to_value(&tally[0]).expect("json");
        assert_eq!(proof["expires_at"], l.expires_at);
        assert!(proof.get("signature").is_none() && proof["passkey"]["signature"].is_string());
    }
}
