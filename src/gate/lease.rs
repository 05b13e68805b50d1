//! Step 4, the lease: every call runs on a single-use lease bound to
//! (subject, tool, argument digest, expiry). An ordinary call mints one
//! consumed at once; a held or explicitly leased call gets one issued and
//! runs when it is repeated with it, consumed by one compare-and-set.

use serde_json::Value;

use crate::store::{Lease, LeaseState, StoreError};

use super::record::{CallRecord, Halt, Held, Status};
use super::{Action, Authenticated, Denial, Gate, LEASE_ARG, Tool};

/// Proof that this call holds a lease nobody can use again. Only this
/// step makes one.
#[derive(Debug)]
pub struct LeaseConsumed {
    id: String,
}

impl LeaseConsumed {
    pub fn id(&self) -> &str {
        &self.id
    }

    #[cfg(feature = "bench")]
    pub(super) fn unchecked_for_benchmark() -> Self {
        Self { id: String::new() }
    }
}

impl Gate {
    fn lease_for(&self, caller: &Authenticated, action: &Action, id: String, ttl_s: u64) -> Lease {
        let now = self.clock.now_unix();
        Lease {
            id,
            subject: caller.principal().subject().to_string(),
            tool: action.tool().to_string(),
            args_digest: action.args_digest().to_string(),
            scope: action.scope().to_string(),
            issued_at: now,
            expires_at: now + ttl_s,
            state: LeaseState::Consumed,
            summary: String::new(),
            args_json: String::new(),
            quorum_k: 0,
            requester_token: caller.principal().token_id().map(String::from),
            requester_address: caller.address().map(|a| a.to_string()),
        }
    }

    /// An ordinary call's lease. Nobody else can present it: its id is
    /// fresh and not disclosed before the call runs. So minting and
    /// consuming it needs no store round trip of its own; its row is
    /// written, already consumed, with the call's first receipt (the intent
    /// for a call that may change state, so it is durable before anything
    /// runs; the final receipt for a read).
    pub(super) fn mint(
        &self,
        record: &mut CallRecord,
        caller: &Authenticated,
        action: &Action,
    ) -> Result<LeaseConsumed, Denial> {
        let id = crate::random_id().map_err(|_| Denial::RandomUnavailable)?;
        let lease = self.lease_for(
            caller,
            action,
            id.clone(),
            self.policy.leases.ordinary_ttl_s,
        );
        record.minted(lease);
        Ok(LeaseConsumed { id })
    }

    /// Issues a lease for this exact call: pending approval when the call
    /// needs quorum, ready when policy only wants an explicit lease. The
    /// call is held either way.
    pub(super) async fn issue<T: Tool>(
        &self,
        record: &mut CallRecord,
        caller: &Authenticated,
        action: &Action,
        args: &T::Args,
    ) -> Halt {
        let needs_quorum = self.policy.needs_quorum(action.class());
        if needs_quorum && self.policy.approvers.is_empty() {
            return Denial::NoApprovers {
                summary: action.summary().to_string(),
            }
            .into();
        }
        let Ok(id) = crate::random_id() else {
            return Denial::RandomUnavailable.into();
        };
        let rule = self.policy.quorum_rule(T::NAME);
        let arguments = serde_json::to_value(args).unwrap_or(Value::Null);
        let lease = Lease {
            state: if needs_quorum {
                LeaseState::PendingApproval
            } else {
                LeaseState::Ready
            },
            summary: action.summary().to_string(),
            args_json: crate::audit::canonical_bytes(&arguments)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default(),
            quorum_k: if needs_quorum { rule.k } else { 0 },
            ..self.lease_for(caller, action, id.clone(), self.policy.leases.ttl_s)
        };
        let limit = self.policy.leases.max_open_per_subject;
        if let Err(e) = self.store.issue_lease(&lease, limit, lease.issued_at).await {
            return match e {
                StoreError::TooManyOpenLeases => Denial::TooManyOpenLeases { limit },
                _ => Denial::StoreUnavailable,
            }
            .into();
        }
        record.lease(&id);
        if needs_quorum {
            self.notify_lease("approval_required", &id, None, None)
                .await;
        }
        let redeem = format!(
            "call {} again with the same arguments plus \"{LEASE_ARG}\": \"{id}\"",
            T::NAME
        );
        let held = if needs_quorum {
            let mut approval = super::quorum::approval_view(&lease, &self.policy.approvers, &[]);
            approval["approve_command"] = Value::from(format!(
                "dualtrust approve --lease {id} --approver <your-approver-id> --key <your-key-file>"
            ));
            approval["then"] = Value::from(redeem.clone());
            Held {
                status: Status::ApprovalRequired,
                message: format!(
                    "approval required: {}. {} of the registered approvers must approve lease {id} before it expires; then {redeem}",
                    action.summary(),
                    rule.k
                ),
                approval,
            }
        } else {
            Held {
                status: Status::LeaseIssued,
                approval: serde_json::json!({
                    "lease_id": id,
                    "tool": T::NAME,
                    "summary": action.summary(),
                    "args_digest": action.args_digest(),
                    "expires_at": lease.expires_at,
                    "then": redeem,
                }),
                message: format!(
                    "policy requires an explicit lease for this call; lease {id} was issued: {redeem}"
                ),
            }
        };
        Halt::Hold(held)
    }

    /// The issued lease `id`, if it was issued for exactly this call and
    /// can still be used.
    pub(super) async fn redeemable(
        &self,
        record: &mut CallRecord,
        id: &str,
        caller: &Authenticated,
        action: &Action,
    ) -> Result<Lease, Denial> {
        record.lease(id);
        let lease = self
            .store
            .lease(id)
            .await
            .map_err(|_| Denial::StoreUnavailable)?
            .ok_or(Denial::LeaseNotFound)?;
        if lease.subject != caller.principal().subject() {
            Err(Denial::LeaseWrongSubject)
        } else if lease.tool != action.tool() {
            Err(Denial::LeaseWrongTool)
        } else if lease.args_digest != action.args_digest() {
            Err(Denial::LeaseWrongArguments)
        } else if lease.state == LeaseState::Consumed {
            Err(Denial::LeaseConsumed)
        } else if lease.state == LeaseState::Expired {
            Err(Denial::LeaseExpired)
        } else if lease.state != LeaseState::Ready && lease.state != LeaseState::PendingApproval {
            match self.store.rejections(id).await {
                Ok(rejections) if rejections.is_empty() => Err(Denial::LeaseRevoked),
                Ok(rejections) => Err(Denial::Rejected {
                    by: rejections
                        .iter()
                        .map(|r| r.approver_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    reason: rejections
                        .iter()
                        .map(|r| r.reason.as_str())
                        .collect::<Vec<_>>()
                        .join(" / "),
                }),
                Err(_) => Err(Denial::StoreUnavailable),
            }
        } else if lease.expires_at <= self.clock.now_unix() {
            Err(Denial::LeaseExpired)
        } else {
            Ok(lease)
        }
    }

    /// Uses the lease up: one compare-and-set in the store, so of two
    /// concurrent redemptions exactly one runs.
    pub(super) async fn consume(&self, lease: &Lease) -> Result<LeaseConsumed, Denial> {
        match self.store.consume_lease(lease, self.clock.now_unix()).await {
            Ok(true) => Ok(LeaseConsumed {
                id: lease.id.clone(),
            }),
            Ok(false) => Err(Denial::LeaseConsumed),
            Err(_) => Err(Denial::StoreUnavailable),
        }
    }
}
