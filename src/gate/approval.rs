//! Approval submissions: a registered approver's signature over a held
//! lease, checked and stored. Counting happens again at redemption
//! ([`Gate::quorum`]), so nothing stored here is trusted later.

use serde::Serialize;

use crate::audit::{Decision, Receipt};
use crate::identity::Principal;
use crate::store::{
    Lease, LeaseState, RejectionTally, StoreError, StoredApproval, StoredRejection,
};

use super::admit::valid_lease_id;
use super::quorum::{ApprovalError, Evidence, PasskeyUse};
use super::record::CallRecord;
use super::{APPROVAL, Gate};

/// What happened to an approval submission.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalStatus {
    pub lease_id: String,
    pub approvals: usize,
    pub k: u32,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

impl Gate {
    /// Checks and records one approval; `submitter` is the verified token
    /// subject when it arrived over HTTP. Every outcome leaves a receipt.
    pub async fn submit_approval(
        &self,
        transport: &'static str,
        submitter: Option<&Principal>,
        lease_id: &str,
        approver_id: &str,
        evidence: &Evidence,
    ) -> Result<ApprovalStatus, ApprovalError> {
        let record = submission_record(transport, submitter, lease_id, approver_id);
        let result = self
            .check_and_record(submitter, lease_id, approver_id, evidence)
            .await;
        let outcome = result.as_ref().map_err(|e| *e).map(|status| {
            let mut outcome = serde_json::json!({
                "approver": approver_id,
                "approvals": status.approvals,
                "k": status.k,
            });
            evidence_into(&mut outcome, evidence);
            outcome
        });
        let receipt = self
            .record_submission(
                record,
                outcome,
                "accepted",
                Decision::ApprovalRecorded,
                approver_id,
            )
            .await?;
        let mut status = result?;
        status.receipt = Some(receipt);
        self.notify_lease("approved", lease_id, Some(approver_id), None)
            .await;
        Ok(status)
    }

    /// Counts and records a submission's outcome: what was accepted, or the
    /// refusal with its code. A submission that cannot be recorded did not
    /// happen, as far as its submitter is told.
    async fn record_submission(
        &self,
        record: CallRecord,
        outcome: Result<serde_json::Value, ApprovalError>,
        accepted: &'static str,
        decision: Decision,
        approver_id: &str,
    ) -> Result<Receipt, ApprovalError> {
        self.metrics.record_approval(match &outcome {
            Ok(_) => accepted,
            Err(e) => e.code(),
        });
        self.record_decided(record, outcome, decision, approver_id)
            .await
    }

    /// Records what was accepted as `decision`, or the refusal with its
    /// code, naming the approver concerned.
    pub(super) async fn record_decided(
        &self,
        mut record: CallRecord,
        outcome: Result<serde_json::Value, ApprovalError>,
        decision: Decision,
        approver_id: &str,
    ) -> Result<Receipt, ApprovalError> {
        match outcome {
            Ok(outcome) => {
                record.outcome(outcome);
                self.record_approval(record, decision, None)
                    .await
                    .map_err(|_| ApprovalError::StoreUnavailable)
            }
            Err(e) => {
                record.outcome(serde_json::json!({
                    "approver": approver_id.chars().take(64).collect::<String>(),
                }));
                // Recorded or not, the submitter is told why it was refused.
                let _ = self
                    .record_approval(record, Decision::Denied, Some(e.code()))
                    .await;
                Err(e)
            }
        }
    }

    async fn check_and_record(
        &self,
        submitter: Option<&Principal>,
        lease_id: &str,
        approver_id: &str,
        evidence: &Evidence,
    ) -> Result<ApprovalStatus, ApprovalError> {
        let lease = self.pending_lease(lease_id, submitter, approver_id).await?;
        let now = self.clock.now_unix();
        let passkeys = self.passkeys_for(evidence).await?;
        let used = self.policy.approvers.check(
            &lease,
            approver_id,
            evidence,
            submitter.map(Principal::subject),
            &passkeys,
        )?;
        self.advance_counter(used).await?;
        match self
            .store
            .record_approval(
                &StoredApproval {
                    approver_id: approver_id.to_string(),
                    signature: evidence.to_stored(),
                    signed_at: now,
                },
                lease_id,
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::Duplicate) => return Err(ApprovalError::Duplicate),
            Err(_) => return Err(ApprovalError::StoreUnavailable),
        }
        let counted = self
            .counted_approvals(&lease)
            .await
            .map_err(|_| ApprovalError::StoreUnavailable)?;
        let approvals = counted.len();
        // The same test redemption applies (`Gate::quorum`).
        let rule = self.policy.quorum_rule(&lease.tool);
        let k = lease.quorum_k.max(rule.k);
        let by_passkey = counted.iter().filter(|a| a.is_passkey()).count();
        let complete = approvals >= k as usize && by_passkey >= rule.passkeys as usize;
        if complete {
            self.metrics
                .record_quorum_wait(now.saturating_sub(lease.issued_at) as f64);
        }
        Ok(ApprovalStatus {
            lease_id: lease_id.to_string(),
            approvals,
            k,
            complete,
            receipt: None,
        })
    }

    /// The registered passkeys, when `evidence` is a passkey's.
    async fn passkeys_for(
        &self,
        evidence: &Evidence,
    ) -> Result<Vec<crate::store::StoredPasskey>, ApprovalError> {
        match evidence {
            Evidence::Key(_) => Ok(Vec::new()),
            Evidence::Passkey(_) => self
                .store
                .passkeys(None)
                .await
                .map_err(|_| ApprovalError::StoreUnavailable),
        }
    }

    /// Moves a verified passkey's counter on in the store, once for every
    /// replica: an assertion whose counter does not advance is refused, as
    /// a replay or a cloned authenticator (WebAuthn section 7.2 step 21).
    async fn advance_counter(&self, used: Option<PasskeyUse>) -> Result<(), ApprovalError> {
        let Some(used) = used else {
            return Ok(());
        };
        match self
            .store
            .advance_passkey_counter(&used.credential_id, used.sign_count)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApprovalError::Passkey(
                crate::webauthn::WebauthnError::CounterRegressed,
            )),
            Err(_) => Err(ApprovalError::StoreUnavailable),
        }
    }

    /// A held lease that approvals and rejections may still act on, once
    /// the submitter is within their rate (keyed by the token's subject when
    /// there is one, so nobody can exhaust another approver's budget).
    async fn pending_lease(
        &self,
        lease_id: &str,
        submitter: Option<&Principal>,
        approver_id: &str,
    ) -> Result<Lease, ApprovalError> {
        let key = submitter.map_or(approver_id, Principal::subject);
        self.policy
            .limits
            .check_approver(key)
            .map_err(|_| ApprovalError::RateLimited)?;
        if !valid_lease_id(lease_id) {
            return Err(ApprovalError::LeaseNotFound);
        }
        let lease = self
            .store
            .lease(lease_id)
            .await
            .map_err(|_| ApprovalError::StoreUnavailable)?
            .ok_or(ApprovalError::LeaseNotFound)?;
        if lease.state == LeaseState::Expired {
            return Err(ApprovalError::LeaseExpired);
        }
        if lease.state != LeaseState::PendingApproval {
            return Err(ApprovalError::LeaseNotPending);
        }
        if lease.expires_at <= self.clock.now_unix() {
            return Err(ApprovalError::LeaseExpired);
        }
        Ok(lease)
    }

    /// Checks and records one rejection: an eligible approver's signature
    /// over the lease and `reason` ends the held call at once. Every outcome
    /// leaves a receipt; the agent's next call is answered `rejected`.
    pub async fn submit_rejection(
        &self,
        transport: &'static str,
        submitter: Option<&Principal>,
        lease_id: &str,
        approver_id: &str,
        evidence: &Evidence,
        reason: &str,
    ) -> Result<RejectionStatus, ApprovalError> {
        let record = submission_record(transport, submitter, lease_id, approver_id);
        let result = self
            .check_and_reject(submitter, lease_id, approver_id, evidence, reason)
            .await;
        let outcome = result.as_ref().map_err(|e| *e).map(|(tally, needed)| {
            let mut outcome = serde_json::json!({
                "approver": approver_id,
                "reason": reason,
                "rejections": tally.rejections,
                "needed": needed,
                "ended": tally.ended,
            });
            evidence_into(&mut outcome, evidence);
            outcome
        });
        let receipt = self
            .record_submission(
                record,
                outcome,
                "rejected",
                Decision::RejectionRecorded,
                approver_id,
            )
            .await?;
        // A refusal was returned by `record_submission` already.
        let (tally, needed) = result?;
        if tally.ended {
            self.notify_lease("rejected", lease_id, Some(approver_id), Some(reason))
                .await;
        }
        Ok(RejectionStatus {
            lease_id: lease_id.to_string(),
            rejected_by: approver_id.to_string(),
            reason: reason.to_string(),
            rejections: tally.rejections,
            needed,
            ended: tally.ended,
            receipt: Some(receipt),
        })
    }

    async fn check_and_reject(
        &self,
        submitter: Option<&Principal>,
        lease_id: &str,
        approver_id: &str,
        evidence: &Evidence,
        reason: &str,
    ) -> Result<(RejectionTally, u32), ApprovalError> {
        let lease = self.pending_lease(lease_id, submitter, approver_id).await?;
        let passkeys = self.passkeys_for(evidence).await?;
        let used = self.policy.approvers.check_rejection(
            &lease,
            approver_id,
            evidence,
            submitter.map(Principal::subject),
            &passkeys,
            reason,
        )?;
        self.advance_counter(used).await?;
        let now = self.clock.now_unix();
        let rejection = StoredRejection {
            approver_id: approver_id.to_string(),
            signature: evidence.to_stored(),
            reason: reason.to_string(),
            signed_at: now,
        };
        let needed = self.policy.approvers.rule_for(&lease.tool).rejections;
        match self
            .store
            .reject_lease(lease_id, &rejection, now, needed)
            .await
        {
            Ok(Some(tally)) => Ok((tally, needed)),
            // Approved and redeemed, expired or rejected in between.
            Ok(None) => Err(ApprovalError::LeaseNotPending),
            Err(StoreError::Duplicate) => Err(ApprovalError::Duplicate),
            Err(_) => Err(ApprovalError::StoreUnavailable),
        }
    }
}

impl Gate {
    /// Ends the held calls whose approval window closed: each gets a
    /// receipt (`lease_expired`, with the approvals it had) and an
    /// `expired` notification, once, however many replicas sweep.
    pub async fn expire_held(&self) -> Result<usize, StoreError> {
        let expired = self.store.expire_held(self.clock.now_unix()).await?;
        for lease in &expired {
            let mut record = CallRecord::new("server", &lease.tool);
            record.requester(lease);
            record.lease(&lease.id);
            record.args_digest(&lease.args_digest);
            record.scope(&lease.scope);
            let view = self.approval_view(lease).await?;
            record.outcome(
                serde_json::json!({ "approvals": view["approved_by"], "k": lease.quorum_k }),
            );
            self.record_approval(record, Decision::LeaseExpired, None)
                .await?;
            self.notify_lease("expired", &lease.id, None, None).await;
        }
        Ok(expired.len())
    }
}

/// A submission receipt's signature: `signature` for a key's, `passkey`
/// (the whole assertion) for a passkey's.
fn evidence_into(outcome: &mut serde_json::Value, evidence: &Evidence) {
    match evidence {
        Evidence::Key(signature) => outcome["signature"] = serde_json::json!(signature),
        Evidence::Passkey(assertion) => outcome["passkey"] = serde_json::json!(assertion),
    }
}

/// The record of an approval or rejection submission: by the submitting
/// token's subject, or by the approver on the command line.
fn submission_record(
    transport: &'static str,
    submitter: Option<&Principal>,
    lease_id: &str,
    approver_id: &str,
) -> CallRecord {
    let mut record = CallRecord::new(transport, APPROVAL);
    match submitter {
        Some(principal) => record.caller(principal),
        None => record.approver(approver_id),
    }
    if valid_lease_id(lease_id) {
        record.lease(lease_id);
    }
    record
}

/// What happened to a rejection submission.
#[derive(Debug, Clone, Serialize)]
pub struct RejectionStatus {
    pub lease_id: String,
    pub rejected_by: String,
    pub reason: String,
    /// Rejections recorded so far, and how many end the call.
    pub rejections: u32,
    pub needed: u32,
    /// Whether this rejection ended the call.
    pub ended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}
