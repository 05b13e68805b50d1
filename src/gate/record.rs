//! The only builder of receipt drafts. The steps of a call tell its
//! [`CallRecord`] what they established; [`Gate::finish`] appends the
//! receipt and answers, so no decision leaves the gate unrecorded.

use serde::Serialize;
use serde_json::Value;

use crate::audit::{Decision, LogProof, Receipt, ReceiptDraft};
use crate::identity::Principal;
use crate::store::Lease;

use super::{Denial, Gate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Denied,
    Error,
    /// Held: destructive, needs quorum approval; a lease was issued.
    ApprovalRequired,
    /// Policy wants an explicit lease; one was issued, repeat the call with it.
    LeaseIssued,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::ApprovalRequired => "approval_required",
            Self::LeaseIssued => "lease_issued",
        }
    }

    fn decision(self) -> Decision {
        match self {
            Self::Ok => Decision::Allowed,
            Self::Denied => Decision::Denied,
            Self::Error => Decision::Error,
            Self::ApprovalRequired => Decision::ApprovalRequired,
            Self::LeaseIssued => Decision::LeaseIssued,
        }
    }
}

/// What the gate answers; the server turns it into an MCP tool result.
#[derive(Debug, Clone, Serialize)]
pub struct GateOutcome {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// The receipt's place in the log: leaf index, inclusion proof, checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogProof>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorInfo {
    /// Also the receipt's `reason`: callers and auditors read one code.
    pub code: &'static str,
    pub message: String,
}

impl From<Denial> for ErrorInfo {
    fn from(denial: Denial) -> Self {
        Self {
            code: denial.code(),
            message: denial.message(),
        }
    }
}

/// A call held rather than run: a lease was issued, and the caller is told
/// how to come back with it.
pub(super) struct Held {
    pub status: Status,
    pub approval: Value,
    pub message: String,
}

/// Why a call stopped before it produced a result.
pub(super) enum Halt {
    Deny(Denial),
    Hold(Held),
}

impl From<Denial> for Halt {
    fn from(denial: Denial) -> Self {
        Self::Deny(denial)
    }
}

/// Where a call came from: the front door, and the trace it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub transport: &'static str,
    pub trace: Option<crate::trace::TraceId>,
}

impl From<&'static str> for Origin {
    fn from(transport: &'static str) -> Self {
        Self {
            transport,
            trace: None,
        }
    }
}

/// What one call's receipt will say, filled in step by step.
pub(super) struct CallRecord {
    draft: ReceiptDraft,
}

impl CallRecord {
    pub fn new(transport: &'static str, tool: &str) -> Self {
        Self {
            draft: ReceiptDraft {
                transport,
                tool: tool.into(),
                ..Default::default()
            },
        }
    }

    pub fn trace(&mut self, trace: Option<&crate::trace::TraceId>) {
        self.draft.trace_id = trace.map(|t| t.as_str().to_string());
    }

    pub fn caller(&mut self, principal: &Principal) {
        self.draft.subject = Some(principal.subject().to_string());
        self.draft.token_id = principal.token_id().map(String::from);
    }

    /// On behalf of whoever asked for a held call, from its lease.
    pub fn requester(&mut self, lease: &Lease) {
        self.draft.subject = Some(lease.subject.clone());
        self.draft.token_id = lease.requester_token.clone();
    }

    /// On behalf of an approver who submitted without a token (the CLI).
    pub fn approver(&mut self, approver_id: &str) {
        self.draft.subject = Some(format!("approver:{approver_id}"));
    }

    /// On behalf of the operator at the server's command line.
    pub fn operator(&mut self) {
        self.draft.subject = Some("operator".into());
    }

    pub fn args_digest(&mut self, digest: &str) {
        self.draft.args_digest = Some(digest.to_string());
    }

    pub fn scope(&mut self, scope: &str) {
        self.draft.scope = Some(scope.to_string());
    }

    /// What an admission made earlier in this request established.
    pub fn admitted(&mut self, action: &super::Action) {
        self.args_digest(action.args_digest());
        self.class(action.class());
        self.scope(action.scope());
    }

    pub fn class(&mut self, class: super::Class) {
        self.draft.class = Some(class.as_str());
    }

    pub fn lease(&mut self, id: &str) {
        self.draft.lease = Some(id.to_string());
    }

    /// An ordinary call's lease, minted already consumed: its row is written
    /// in the same transaction as the call's first receipt.
    pub fn minted(&mut self, lease: Lease) {
        self.draft.lease = Some(lease.id.clone());
        self.draft.consumed_lease = Some(lease);
    }

    pub fn outcome(&mut self, outcome: Value) {
        self.draft.outcome = Some(outcome);
    }

    /// The receipt of a call about to run: the minted lease goes with it,
    /// so the final receipt does not write it again.
    pub fn intent(&mut self, approvals: Value) -> ReceiptDraft {
        let mut intent = self.draft.clone();
        self.draft.consumed_lease = None;
        intent.decision = Some(Decision::Intent);
        intent.outcome = Some(serde_json::json!({ "approvals": approvals }));
        intent
    }
}

impl Gate {
    /// Records the decision and builds the answer. The receipt's reason is
    /// the code the caller gets: one vocabulary for clients and auditors.
    pub(super) async fn finish(
        &self,
        record: CallRecord,
        status: Status,
        payload: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> GateOutcome {
        let mut draft = record.draft;
        let reason = error.as_ref().map(|e| e.code);
        if status == Status::Denied
            && let Some(code) = reason
        {
            self.metrics.record_refusal(code);
        }
        draft.decision = Some(status.decision());
        draft.reason = reason.map(String::from);
        // A traced call's decision is logged so the trace can be joined
        // with the audit log; untraced ones only at debug (one line per
        // call would otherwise dominate a busy server's log).
        let (result, approval) = match status {
            Status::ApprovalRequired | Status::LeaseIssued => (None, payload),
            _ => (payload, None),
        };
        match self.log.append(draft).await {
            Ok(appended) => {
                let body = &appended.receipt.body;
                let (tool, seq, decision) = (&body.tool, body.seq, body.decision);
                let receipt = &appended.receipt.hash;
                match &body.trace_id {
                    Some(trace_id) => {
                        tracing::info!(tool, ?decision, reason, seq, receipt, trace_id, "decision")
                    }
                    None => tracing::debug!(tool, ?decision, reason, seq, receipt, "decision"),
                }
                GateOutcome {
                    status,
                    result,
                    error,
                    approval,
                    receipt: Some(appended.receipt),
                    log: Some(appended.proof),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "receipt could not be appended");
                GateOutcome {
                    status: if status == Status::Ok {
                        Status::Error
                    } else {
                        status
                    },
                    // No receipt, no result: a read that cannot be recorded
                    // is not answered.
                    result: None,
                    error: Some(
                        self.audit_unavailable("the decision could not be recorded")
                            .into(),
                    ),
                    approval,
                    receipt: None,
                    log: None,
                }
            }
        }
    }

    pub(super) async fn halt(&self, record: CallRecord, halt: Halt) -> GateOutcome {
        match halt {
            Halt::Deny(denial) => {
                let status = denial.status();
                self.finish(record, status, None, Some(denial.into())).await
            }
            Halt::Hold(held) => {
                let error = ErrorInfo {
                    code: held.status.as_str(),
                    message: held.message,
                };
                self.finish(record, held.status, Some(held.approval), Some(error))
                    .await
            }
        }
    }

    /// Records a refusal made before any tool's pipeline: at the HTTP front
    /// door (host, origin, token, an approval route) or of a call naming no
    /// tool. `subject` and `token_id` are filled in when a verified principal
    /// is known, so the receipt has the fields the pipeline would record.
    pub async fn record_refusal(
        &self,
        transport: &'static str,
        route: &str,
        principal: Option<&Principal>,
        denial: &Denial,
    ) -> Option<Receipt> {
        let reason = denial.code();
        self.metrics.record_refusal(reason);
        let mut record = CallRecord::new(transport, route);
        if let Some(principal) = principal {
            record.caller(principal);
        }
        let mut draft = record.draft;
        draft.decision = Some(Decision::Denied);
        draft.reason = Some(reason.into());
        match self.log.append(draft).await {
            Ok(appended) => Some(appended.receipt),
            Err(e) => {
                tracing::error!(error = %e, reason, "a refusal could not be recorded");
                None
            }
        }
    }

    /// Records a decision on a held call made outside a tool call: an
    /// approval or rejection submitted, or its window closing.
    pub(super) async fn record_approval(
        &self,
        mut record: CallRecord,
        decision: Decision,
        reason: Option<&'static str>,
    ) -> Result<Receipt, crate::store::StoreError> {
        record.draft.decision = Some(decision);
        record.draft.reason = reason.map(String::from);
        self.log.append(record.draft).await.map(|a| a.receipt)
    }

    /// Why nothing could be recorded: the store is away, or it was
    /// tampered with and the log refuses to sign over it.
    pub(super) fn audit_unavailable(&self, consequence: &'static str) -> Denial {
        match self.log.integrity() {
            Some(failure) => Denial::AuditStoreTampered {
                seq: failure.seq,
                problem: failure.problem.to_string(),
                consequence,
            },
            None => Denial::AuditUnavailable { consequence },
        }
    }
}
