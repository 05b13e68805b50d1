//! Step 6, execution: the tool runs with an [`Authorized`] value, which
//! only the proofs of the earlier steps can build. Anything that may change
//! state is recorded as an intent before it runs, so a crash mid-call still
//! leaves a trace of everything that ran.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde_json::Value;

use crate::identity::Principal;

use super::admit::Admitted;
use super::lease::LeaseConsumed;
use super::quorum::{ApprovalProof, QuorumMet};
use super::record::{CallRecord, Halt};
use super::{
    Action, Authenticated, Class, Denial, Executed, Gate, Tool, internal_refusal, log_panic,
};

/// Proof that a call passed identity, scope, lease and quorum: a tool's
/// `execute` requires one, and one exists only where the gate holds every
/// step's proof.
pub struct Authorized<'a, T: Tool + ?Sized> {
    caller: &'a Authenticated,
    action: &'a Action,
    lease: &'a LeaseConsumed,
    quorum: &'a QuorumMet,
    args: T::Args,
    plan: T::Plan,
}

impl<'a, T: Tool + ?Sized> Authorized<'a, T> {
    pub(super) fn new(
        caller: &'a Authenticated,
        action: &'a Action,
        lease: &'a LeaseConsumed,
        quorum: &'a QuorumMet,
        args: T::Args,
        plan: T::Plan,
    ) -> Self {
        Self {
            caller,
            action,
            lease,
            quorum,
            args,
            plan,
        }
    }

    pub fn principal(&self) -> &Principal {
        self.caller.principal()
    }
    pub fn action(&self) -> &Action {
        self.action
    }
    pub fn lease_id(&self) -> &str {
        self.lease.id()
    }
    /// The verified approvals that let a destructive call run (empty otherwise).
    pub fn approvals(&self) -> &[ApprovalProof] {
        self.quorum.approvals()
    }
    pub fn args(&self) -> &T::Args {
        &self.args
    }
    /// What classification established about this very call.
    pub fn plan(&self) -> &T::Plan {
        &self.plan
    }
}

impl Gate {
    pub(super) async fn execute<T: Tool>(
        &self,
        tool: &T,
        record: &mut CallRecord,
        caller: &Authenticated,
        admitted: Admitted<T>,
        lease: &LeaseConsumed,
        quorum: &QuorumMet,
    ) -> Result<Value, Halt> {
        let Admitted {
            action, args, plan, ..
        } = admitted;
        let approvals = serde_json::to_value(quorum.approvals()).unwrap_or(Value::Null);
        if action.class() != Class::Read
            && let Err(e) = self.log.append(record.intent(approvals.clone())).await
        {
            tracing::error!(error = %e, "intent could not be recorded; not executing");
            return Err(self.audit_unavailable("the call was not executed").into());
        }
        let call = Authorized::<T>::new(caller, &action, lease, quorum, args, plan);
        let executed = AssertUnwindSafe(tool.execute(call))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                log_panic(T::NAME, "execution", panic.as_ref());
                Err(internal_refusal())
            });
        let approved = !quorum.approvals().is_empty();
        let with_approvals =
            |outcome: Value| serde_json::json!({ "result": outcome, "approvals": approvals });
        match executed {
            Ok(Executed { result, outcome }) => {
                record.outcome(if approved {
                    with_approvals(outcome)
                } else {
                    outcome
                });
                Ok(result)
            }
            Err(refusal) => {
                if approved {
                    record.outcome(with_approvals(Value::Null));
                }
                Err(Denial::Failed(refusal).into())
            }
        }
    }
}
