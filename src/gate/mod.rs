//! The one gate every tool call passes through, on every transport:
//!
//! 1. identity — a [`Principal`] from a verified token, re-checked for
//!    expiry and revocation on every call;
//! 2. classify — the tool turns its typed arguments into a [`Classification`];
//! 3. scope — the principal must hold the scope policy names for that class;
//! 4. lease — a lease bound to (subject, tool, argument digest, expiry) is
//!    minted and consumed in one compare-and-set in the store;
//! 5. quorum — destructive calls are held for signed approval and not run;
//! 6. execute — only here, with an [`Authorized`] value;
//! 7. receipt — appended to the log for every outcome, and returned.
//!
//! [`Authorized`] has private fields and is built only in [`Gate::run`], so a
//! tool's `execute` cannot be reached without steps 1–5 (the rustls
//! "proof value" pattern): adding a tool cannot skip the gate by accident.

pub mod policy;
pub mod quorum;
pub mod rate;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::audit::{AuditLog, Decision, LogProof, Receipt, ReceiptDraft};
use crate::identity::{IdentityError, Principal, TokenVerifier};
use crate::metrics::Metrics;
use crate::store::{Lease, LeaseState, Store, StoreError};
pub use policy::Policy;
use quorum::{ApprovalError, ApprovalProof, ApproverRegistry};

/// The argument that names a previously issued lease when a call is repeated.
/// It is taken out of the arguments before they are parsed and digested.
pub const LEASE_ARG: &str = "lease_id";

/// How dangerous a call is. Policy maps each class of each tool to a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Read,
    Write,
    Admin,
    /// Needs quorum approval before it runs.
    Destructive,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
            Self::Destructive => "destructive",
        }
    }
}

/// A tool's judgement of one call, and what it found that running the call
/// needs (the canonical statement, the resolved program): execution uses the
/// plan rather than judging the arguments again, so what runs is what was
/// judged. Which scope the class needs is [`policy`]'s business.
#[derive(Debug, Clone)]
pub struct Classification<P = ()> {
    pub class: Class,
    /// What the call will do, in words a human approver can check.
    pub summary: String,
    pub plan: P,
}

/// A call refused before it ran, with a reason the caller can act on.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a tool returns: the caller's result and a short outcome for the receipt.
#[derive(Debug, Clone)]
pub struct Executed {
    pub result: Value,
    pub outcome: Value,
}

/// Everything the gate established about a call.
#[derive(Debug, Clone)]
pub struct Action {
    tool: &'static str,
    class: Class,
    scope: String,
    summary: String,
    args_digest: String,
}

impl Action {
    pub fn tool(&self) -> &'static str {
        self.tool
    }
    pub fn class(&self) -> Class {
        self.class
    }
    pub fn scope(&self) -> &str {
        &self.scope
    }
    pub fn summary(&self) -> &str {
        &self.summary
    }
    pub fn args_digest(&self) -> &str {
        &self.args_digest
    }
}

/// Proof that a call passed identity, scope, lease and quorum. Only
/// [`Gate::run`] constructs one; a tool's `execute` requires it.
pub struct Authorized<'a, T: Tool + ?Sized> {
    principal: &'a Principal,
    action: &'a Action,
    lease_id: &'a str,
    approvals: &'a [ApprovalProof],
    args: T::Args,
    plan: T::Plan,
}

impl<T: Tool + ?Sized> Authorized<'_, T> {
    pub fn principal(&self) -> &Principal {
        self.principal
    }
    pub fn action(&self) -> &Action {
        self.action
    }
    pub fn lease_id(&self) -> &str {
        self.lease_id
    }
    /// The verified approvals that let a destructive call run (empty otherwise).
    pub fn approvals(&self) -> &[ApprovalProof] {
        self.approvals
    }
    pub fn args(&self) -> &T::Args {
        &self.args
    }
    /// What classification established about this very call.
    pub fn plan(&self) -> &T::Plan {
        &self.plan
    }
}

/// A tool behind the gate.
pub trait Tool: Send + Sync + 'static {
    const NAME: &'static str;
    const TITLE: &'static str;
    const DESCRIPTION: &'static str;
    /// Whether every call of this tool leaves its environment unchanged.
    const READ_ONLY: bool;
    type Args: DeserializeOwned + Serialize + JsonSchema + Send + Sync;
    /// What classification hands to execution; `()` when nothing.
    type Plan: Send + Sync;

    /// Judges the call without side effects the caller could observe
    /// beyond the verdict: it runs only for callers holding one of the
    /// tool's scopes.
    fn classify(&self, args: &Self::Args) -> Result<Classification<Self::Plan>, Refusal>;

    fn execute(
        &self,
        call: Authorized<'_, Self>,
    ) -> impl Future<Output = Result<Executed, Refusal>> + Send;
}

/// Who the transport says is calling.
pub enum Caller {
    /// A raw token (stdio: from the launching environment), verified per call.
    Token(Option<String>),
    /// A principal the HTTP front door verified for this very request.
    Verified(Principal),
}

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

pub struct Gate {
    verifier: Arc<TokenVerifier>,
    store: Store,
    log: Arc<AuditLog>,
    policy: Policy,
    metrics: Metrics,
    in_flight: AtomicUsize,
    /// Benchmark builds only: run tools with no identity, scope, rate,
    /// lease, quorum or receipt, to measure what the gate itself costs.
    #[cfg(feature = "bench")]
    gate_off: bool,
}

/// Counts a call as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn valid_lease_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

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
    pub fn new(
        verifier: Arc<TokenVerifier>,
        store: Store,
        log: Arc<AuditLog>,
        policy: Policy,
    ) -> Self {
        Self {
            verifier,
            store,
            log,
            policy,
            metrics: Metrics::default(),
            in_flight: AtomicUsize::new(0),
            #[cfg(feature = "bench")]
            gate_off: false,
        }
    }

    /// Whether this gate lets calls through unchecked. Always false unless
    /// the binary was built with the benchmark-only `bench` feature and
    /// started with `serve --bench-gate-off` in development mode.
    pub fn is_off(&self) -> bool {
        #[cfg(feature = "bench")]
        return self.gate_off;
        #[cfg(not(feature = "bench"))]
        false
    }

    #[cfg(feature = "bench")]
    pub(crate) fn switch_off_for_benchmark(&mut self) {
        self.gate_off = true;
    }

    /// The tool's own argument parsing, classification and execution, and
    /// nothing of the gate: the baseline the benchmark divides by.
    #[cfg(feature = "bench")]
    async fn run_ungated<T: Tool>(
        &self,
        tool: &T,
        arguments: Option<Map<String, Value>>,
    ) -> GateOutcome {
        let failed = |status: Status, error: ErrorInfo| GateOutcome {
            status,
            result: None,
            error: Some(error),
            approval: None,
            receipt: None,
            log: None,
        };
        let args: T::Args =
            match serde_json::from_value(Value::Object(arguments.unwrap_or_default())) {
                Ok(args) => args,
                Err(e) => {
                    return failed(
                        Status::Denied,
                        ErrorInfo::new("invalid_arguments", e.to_string()),
                    );
                }
            };
        let classification = match tool.classify(&args) {
            Ok(c) => c,
            Err(refusal) => return failed(Status::Denied, refusal.into()),
        };
        let principal = Principal::unverified_for_benchmark();
        let action = Action {
            tool: T::NAME,
            class: classification.class,
            scope: String::new(),
            summary: classification.summary,
            args_digest: String::new(),
        };
        let call = Authorized::<T> {
            principal: &principal,
            action: &action,
            lease_id: "",
            approvals: &[],
            args,
            plan: classification.plan,
        };
        match tool.execute(call).await {
            Ok(executed) => GateOutcome {
                status: Status::Ok,
                result: Some(executed.result),
                error: None,
                approval: None,
                receipt: None,
                log: None,
            },
            Err(refusal) => failed(Status::Error, refusal.into()),
        }
    }

    /// Tool calls inside the gate right now (graceful shutdown waits for 0).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn approvers(&self) -> &ApproverRegistry {
        &self.policy.approvers
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Verifies a token and checks its revocation in the store.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, IdentityError> {
        let principal = self.verifier.verify(token.unwrap_or_default()).await?;
        self.check_revocation(principal).await
    }

    async fn check_revocation(&self, principal: Principal) -> Result<Principal, IdentityError> {
        if let Some(jti) = principal.token_id() {
            match self.store.is_revoked(jti).await {
                Ok(false) => {}
                Ok(true) => return Err(IdentityError::Revoked),
                // Fail closed: an unknown revocation state is not "not revoked".
                Err(_) => return Err(IdentityError::Unavailable),
            }
        }
        Ok(principal)
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
        reason: &'static str,
    ) -> Option<Receipt> {
        self.metrics.record_refusal(reason);
        let draft = ReceiptDraft {
            subject: principal.map(|p| p.subject().to_string()),
            token_id: principal.and_then(|p| p.token_id().map(String::from)),
            transport,
            tool: route.into(),
            decision: Some(Decision::Denied),
            reason: Some(reason.into()),
            ..Default::default()
        };
        match self.log.append(draft).await {
            Ok(appended) => Some(appended.receipt),
            Err(e) => {
                tracing::error!(error = %e, reason, "a refusal could not be recorded");
                None
            }
        }
    }

    /// Records a call to a tool name that does not exist.
    pub async fn record_unknown_tool(
        &self,
        transport: &'static str,
        caller: Caller,
    ) -> Option<Receipt> {
        let principal = self.identify(caller).await.ok();
        self.record_refusal(transport, "unknown", principal.as_ref(), "unknown_tool")
            .await
    }

    async fn identify(&self, caller: Caller) -> Result<Principal, IdentityError> {
        match caller {
            Caller::Token(token) => self.authenticate(token.as_deref()).await,
            // The HTTP front door verified the token and checked revocation
            // for this very request; only the clock has moved since.
            Caller::Verified(principal) => {
                if principal.expires_at() < crate::now_unix() {
                    return Err(IdentityError::Expired);
                }
                Ok(principal)
            }
        }
    }

    /// The whole pipeline for one call of `tool`, measured.
    pub async fn run<T: Tool>(
        &self,
        tool: &T,
        transport: &'static str,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> GateOutcome {
        let _in_flight = InFlight::enter(&self.in_flight);
        #[cfg(feature = "bench")]
        if self.gate_off {
            return self.run_ungated(tool, arguments).await;
        }
        let started = std::time::Instant::now();
        let redeeming = arguments
            .as_ref()
            .is_some_and(|a| a.contains_key(LEASE_ARG));
        let outcome = match AssertUnwindSafe(self.pipeline(tool, transport, caller, arguments))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                log_panic(T::NAME, "gate", panic.as_ref());
                let draft = ReceiptDraft {
                    transport,
                    tool: T::NAME.into(),
                    ..Default::default()
                };
                self.reject(draft, internal_refusal().into()).await
            }
        };
        self.metrics
            .record_call(T::NAME, outcome.status.as_str(), started.elapsed());
        match outcome.status {
            Status::ApprovalRequired | Status::LeaseIssued => {
                self.metrics.leases_issued.fetch_add(1, Ordering::Relaxed);
            }
            Status::Ok if redeeming => {
                self.metrics.leases_redeemed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        outcome
    }

    async fn pipeline<T: Tool>(
        &self,
        tool: &T,
        transport: &'static str,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> GateOutcome {
        let mut draft = ReceiptDraft {
            transport,
            tool: T::NAME.into(),
            ..Default::default()
        };

        // 1. Identity.
        let principal = match self.identify(caller).await {
            Ok(p) => p,
            Err(e) => {
                return self
                    .finish(
                        draft,
                        Status::Denied,
                        None,
                        Some(ErrorInfo::new(e.code(), e.to_string())),
                    )
                    .await;
            }
        };
        draft.subject = Some(principal.subject().to_string());
        draft.token_id = principal.token_id().map(String::from);

        let admitted = match self.admit(tool, &mut draft, &principal, arguments) {
            Ok(admitted) => admitted,
            Err(rejection) => return self.reject(draft, rejection).await,
        };
        let action = &admitted.action;

        // 4. Rate.
        if let Err(retry_after) = self.policy.limits.check(principal.subject(), T::NAME) {
            let message = format!(
                "too many calls: retry in {} s",
                retry_after.as_secs().max(1)
            );
            return self.deny(draft, "rate_limited", message).await;
        }

        // 4–5. Lease and quorum.
        let needs_quorum = self.policy.needs_quorum(action.class());
        if admitted.lease_id.is_some() {
            return self
                .redeem(tool, draft, &principal, admitted, needs_quorum)
                .await;
        }
        if needs_quorum || self.policy.needs_explicit_lease(T::NAME, action.class()) {
            return self
                .issue::<T>(draft, &principal, action, &admitted.args, needs_quorum)
                .await;
        }
        let now = crate::now_unix();
        let lease_id = match crate::random_id() {
            Ok(id) => id,
            Err(_) => {
                return self
                    .finish(
                        draft,
                        Status::Error,
                        None,
                        Some(ErrorInfo::new(
                            RANDOM_UNAVAILABLE,
                            "random source unavailable".into(),
                        )),
                    )
                    .await;
            }
        };
        // Nobody else can present this lease: its id is fresh and is not
        // disclosed before the call runs. So minting and consuming it needs
        // no store round trip of its own; its row is written, already
        // consumed, in the same transaction as the call's first receipt (the
        // intent for a call that may change state, so it is durable before
        // anything runs; the final receipt for a read).
        draft.lease = Some(lease_id.clone());
        draft.consumed_lease = Some(Lease {
            id: lease_id.clone(),
            subject: principal.subject().to_string(),
            tool: T::NAME.to_string(),
            args_digest: action.args_digest().to_string(),
            scope: action.scope().to_string(),
            issued_at: now,
            expires_at: now + self.policy.leases.ordinary_ttl_s,
            state: LeaseState::Consumed,
            summary: String::new(),
            args_json: String::new(),
            quorum_k: 0,
        });
        self.execute(tool, draft, &principal, admitted, &lease_id, &[])
            .await
    }

    /// Steps 2 and 3, shared by the pipeline and the HTTP scope challenge so
    /// both judge, and record, a call identically: the lease id taken out of
    /// the arguments, typed arguments, their digest, the classification, and
    /// the scope check. Fills in `draft` as far as it gets.
    fn admit<T: Tool>(
        &self,
        tool: &T,
        draft: &mut ReceiptDraft,
        principal: &Principal,
        arguments: Option<Map<String, Value>>,
    ) -> Result<Admitted<T>, Rejection> {
        // A caller holding none of the tool's scopes learns nothing from its
        // classifier (which may look at the filesystem or the schema).
        let tool_scopes = self.policy.tool_scopes(T::NAME);
        if !tool_scopes.iter().any(|scope| principal.has_scope(scope)) {
            let least = tool_scopes.first().copied().unwrap_or(T::NAME);
            draft.scope = Some(least.to_string());
            return Err(Rejection::denied(
                INSUFFICIENT_SCOPE,
                format!(
                    "`{}` needs the `{least}` scope, which the token does not grant",
                    T::NAME
                ),
            ));
        }
        let mut arguments = arguments.unwrap_or_default();
        let lease_id = match arguments.remove(LEASE_ARG) {
            None => None,
            Some(Value::String(id)) if valid_lease_id(&id) => Some(id),
            Some(_) => {
                return Err(Rejection::denied(
                    "invalid_lease_id",
                    "lease_id must be the 32-character hex id of an issued lease",
                ));
            }
        };
        let args: T::Args = serde_json::from_value(Value::Object(arguments)).map_err(|e| {
            Rejection::denied(
                "invalid_arguments",
                truncate(&format!("invalid arguments: {e}"), 300),
            )
        })?;
        let digest = args_digest(T::NAME, &args).ok_or_else(|| {
            Rejection::denied("invalid_arguments", "arguments cannot be canonicalized")
        })?;
        draft.args_digest = Some(digest.clone());
        let classification = classify_contained(tool, &args).map_err(Rejection::from)?;
        draft.class = Some(classification.class.as_str());
        let Some(scope) = self.policy.scope_for(T::NAME, classification.class) else {
            tracing::error!(
                tool = T::NAME,
                class = classification.class.as_str(),
                "policy names no scope for this class of call"
            );
            return Err(Rejection {
                status: Status::Error,
                code: NO_POLICY,
                message: "the server's policy has no rule for this class of call; it was refused"
                    .into(),
            });
        };
        draft.scope = Some(scope.to_string());
        let action = Action {
            tool: T::NAME,
            class: classification.class,
            scope: scope.to_string(),
            summary: classification.summary,
            args_digest: digest,
        };
        if !principal.has_scope(action.scope()) {
            return Err(Rejection::denied(
                INSUFFICIENT_SCOPE,
                format!(
                    "this call needs the `{}` scope, which the token does not grant",
                    action.scope()
                ),
            ));
        }
        Ok(Admitted {
            lease_id,
            args,
            plan: classification.plan,
            action,
        })
    }

    async fn reject(&self, draft: ReceiptDraft, rejection: Rejection) -> GateOutcome {
        self.finish(
            draft,
            rejection.status,
            None,
            Some(ErrorInfo::new(rejection.code, rejection.message)),
        )
        .await
    }

    /// The HTTP front door's scope challenge (MCP authorization): when the
    /// verified `principal` lacks the scope this call needs, the refusal is
    /// recorded exactly as the pipeline records it and the scope is returned
    /// for the 403. Anything else (including arguments that do not parse)
    /// is left to the pipeline, which judges and records it itself.
    pub async fn challenge_scope<T: Tool>(
        &self,
        tool: &T,
        transport: &'static str,
        principal: &Principal,
        arguments: Option<&Map<String, Value>>,
    ) -> Option<String> {
        let mut draft = ReceiptDraft {
            transport,
            tool: T::NAME.into(),
            subject: Some(principal.subject().to_string()),
            token_id: principal.token_id().map(String::from),
            ..Default::default()
        };
        let rejection = match self.admit(tool, &mut draft, principal, arguments.cloned()) {
            Err(rejection) if rejection.code == INSUFFICIENT_SCOPE => rejection,
            _ => return None,
        };
        let scope = draft.scope.clone()?;
        self.metrics.count_call(T::NAME, Status::Denied.as_str());
        self.reject(draft, rejection).await;
        Some(scope)
    }

    /// Issues a lease for this exact call: pending approval when the call is
    /// destructive, ready when policy only wants an explicit lease.
    async fn issue<T: Tool>(
        &self,
        mut draft: ReceiptDraft,
        principal: &Principal,
        action: &Action,
        args: &T::Args,
        needs_quorum: bool,
    ) -> GateOutcome {
        let rule = self.policy.quorum_rule(T::NAME);
        if needs_quorum && self.policy.approvers.is_empty() {
            let message = format!(
                "approval required: {}; no approvers are registered on this server, so destructive calls cannot run",
                action.summary()
            );
            return self.deny(draft, "no_approvers", message).await;
        }
        let now = crate::now_unix();
        let Ok(id) = crate::random_id() else {
            return self
                .finish(
                    draft,
                    Status::Error,
                    None,
                    Some(ErrorInfo::new(
                        RANDOM_UNAVAILABLE,
                        "random source unavailable".into(),
                    )),
                )
                .await;
        };
        let arguments = serde_json::to_value(args).unwrap_or(Value::Null);
        let lease = Lease {
            id: id.clone(),
            subject: principal.subject().to_string(),
            tool: T::NAME.to_string(),
            args_digest: action.args_digest().to_string(),
            scope: action.scope().to_string(),
            issued_at: now,
            expires_at: now + self.policy.leases.ttl_s,
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
        };
        if let Err(e) = self
            .store
            .issue_lease(&lease, self.policy.leases.max_open_per_subject, now)
            .await
        {
            let code = match e {
                StoreError::TooManyOpenLeases => "too_many_open_leases",
                _ => "store_unavailable",
            };
            return self.deny(draft, code, e.to_string()).await;
        }
        draft.lease = Some(id.clone());
        let redeem = format!(
            "call {} again with the same arguments plus \"{LEASE_ARG}\": \"{id}\"",
            T::NAME
        );
        if needs_quorum {
            let mut approval = quorum::approval_view(&lease, &rule, &[]);
            approval["approve_command"] = Value::from(format!(
                "dualtrust approve --lease {id} --approver <your-approver-id> --key <your-key-file>"
            ));
            approval["then"] = Value::from(redeem.clone());
            let message = format!(
                "approval required: {}. {} of the registered approvers must approve lease {id} before it expires; then {redeem}",
                action.summary(),
                rule.k
            );
            self.finish(
                draft,
                Status::ApprovalRequired,
                Some(approval),
                Some(ErrorInfo::new("approval_required", message)),
            )
            .await
        } else {
            let issued = serde_json::json!({
                "lease_id": id,
                "tool": T::NAME,
                "summary": action.summary(),
                "args_digest": action.args_digest(),
                "expires_at": lease.expires_at,
                "then": redeem,
            });
            let message = format!(
                "policy requires an explicit lease for this call; lease {id} was issued: {redeem}"
            );
            self.finish(
                draft,
                Status::LeaseIssued,
                Some(issued),
                Some(ErrorInfo::new("lease_issued", message)),
            )
            .await
        }
    }

    /// Redeems an issued lease for exactly the call it was issued for.
    async fn redeem<T: Tool>(
        &self,
        tool: &T,
        mut draft: ReceiptDraft,
        principal: &Principal,
        admitted: Admitted<T>,
        needs_quorum: bool,
    ) -> GateOutcome {
        let action = &admitted.action;
        let id = admitted.lease_id.clone().unwrap_or_default();
        draft.lease = Some(id.clone());
        let deny = |code: &'static str, message: &str| (code, message.to_string());
        let now = crate::now_unix();
        let lease = match self.store.lease(&id).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                let (code, message) = deny("lease_not_found", "no lease with this id was issued");
                return self.deny(draft, code, message).await;
            }
            Err(e) => {
                return self.deny(draft, "store_unavailable", e.to_string()).await;
            }
        };
        let problem = if lease.subject != principal.subject() {
            Some(deny(
                "lease_wrong_subject",
                "this lease was issued to another subject",
            ))
        } else if lease.tool != T::NAME {
            Some(deny(
                "lease_wrong_tool",
                "this lease was issued for another tool",
            ))
        } else if lease.args_digest != action.args_digest() {
            Some(deny(
                "lease_wrong_arguments",
                "this lease was issued for other arguments; repeat the call exactly",
            ))
        } else if lease.state == LeaseState::Consumed {
            Some(deny("lease_consumed", "this lease has already been used"))
        } else if lease.state != LeaseState::Ready && lease.state != LeaseState::PendingApproval {
            Some(deny("lease_revoked", "this lease is no longer valid"))
        } else if lease.expires_at <= now {
            Some(deny(
                "lease_expired",
                "this lease has expired; make the call again to get a new one",
            ))
        } else {
            None
        };
        if let Some((code, message)) = problem {
            return self.deny(draft, code, message).await;
        }
        let rule = self.policy.quorum_rule(T::NAME);
        let k = if needs_quorum {
            lease.quorum_k.max(rule.k)
        } else {
            lease.quorum_k
        };
        let approvals = if k > 0 {
            let stored = match self.store.approvals(&id).await {
                Ok(s) => s,
                Err(e) => {
                    return self.deny(draft, "store_unavailable", e.to_string()).await;
                }
            };
            let valid = self.policy.approvers.tally(&lease, &stored);
            if valid.len() < k as usize {
                let approved_by: Vec<String> = valid.iter().map(|a| a.approver.clone()).collect();
                let approval = quorum::approval_view(&lease, &rule, &approved_by);
                let message = format!(
                    "approval required: {} of {k} approvals so far for lease {id}",
                    valid.len()
                );
                return self
                    .finish(
                        draft,
                        Status::ApprovalRequired,
                        Some(approval),
                        Some(ErrorInfo::new("approval_required", message)),
                    )
                    .await;
            }
            valid
        } else {
            Vec::new()
        };
        match self
            .store
            .consume_lease(&id, principal.subject(), T::NAME, action.args_digest(), now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let (code, message) = deny("lease_consumed", "this lease has already been used");
                return self.deny(draft, code, message).await;
            }
            Err(e) => {
                return self.deny(draft, "store_unavailable", e.to_string()).await;
            }
        }
        self.execute(tool, draft, principal, admitted, &id, &approvals)
            .await
    }

    /// Step 6: run the tool with its proof; for any call that may change
    /// state, record the intent first, so a crash mid-call still leaves a
    /// trace of everything that ran.
    async fn execute<T: Tool>(
        &self,
        tool: &T,
        mut draft: ReceiptDraft,
        principal: &Principal,
        admitted: Admitted<T>,
        lease_id: &str,
        approvals: &[ApprovalProof],
    ) -> GateOutcome {
        let Admitted {
            action, args, plan, ..
        } = admitted;
        let action = &action;
        let approvals_json = serde_json::to_value(approvals).unwrap_or(Value::Null);
        // Anything that may change state is recorded before it runs.
        if action.class() != Class::Read {
            let mut intent = draft.clone();
            draft.consumed_lease = None;
            intent.decision = Some(Decision::Intent);
            intent.outcome = Some(serde_json::json!({ "approvals": approvals_json }));
            if let Err(e) = self.log.append(intent).await {
                tracing::error!(error = %e, "intent could not be recorded; not executing");
                return self
                    .finish(
                        draft,
                        Status::Error,
                        None,
                        Some(self.audit_unavailable("the call was not executed")),
                    )
                    .await;
            }
        }
        let call = Authorized::<T> {
            principal,
            action,
            lease_id,
            approvals,
            args,
            plan,
        };
        let with_approvals = |outcome: Value| {
            if approvals.is_empty() {
                outcome
            } else {
                serde_json::json!({ "result": outcome, "approvals": approvals_json })
            }
        };
        let executed = AssertUnwindSafe(tool.execute(call))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                log_panic(T::NAME, "execution", panic.as_ref());
                Err(internal_refusal())
            });
        match executed {
            Ok(executed) => {
                draft.outcome = Some(with_approvals(executed.outcome));
                self.finish(draft, Status::Ok, Some(executed.result), None)
                    .await
            }
            Err(refusal) => {
                draft.outcome = (!approvals.is_empty()).then(|| with_approvals(Value::Null));
                self.finish(draft, Status::Error, None, Some(refusal.into()))
                    .await
            }
        }
    }

    /// Checks and records one approval; `submitter` is the verified token
    /// subject when it arrived over HTTP. Every outcome leaves a receipt.
    pub async fn submit_approval(
        &self,
        transport: &'static str,
        submitter: Option<&Principal>,
        lease_id: &str,
        approver_id: &str,
        signature: &str,
    ) -> Result<ApprovalStatus, ApprovalError> {
        let mut draft = ReceiptDraft {
            transport,
            tool: APPROVAL.into(),
            subject: Some(
                submitter
                    .map(|p| p.subject().to_string())
                    .unwrap_or_else(|| format!("approver:{approver_id}")),
            ),
            token_id: submitter.and_then(|p| p.token_id().map(String::from)),
            lease: valid_lease_id(lease_id).then(|| lease_id.to_string()),
            ..Default::default()
        };
        let result = self
            .check_and_record(submitter, lease_id, approver_id, signature)
            .await;
        self.metrics.record_approval(match &result {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        });
        match &result {
            Ok(status) => {
                draft.decision = Some(Decision::ApprovalRecorded);
                draft.outcome = Some(
                    serde_json::json!({ "approver": approver_id, "signature": signature, "approvals": status.approvals, "k": status.k }),
                );
            }
            Err(e) => {
                draft.decision = Some(Decision::Denied);
                draft.reason = Some(e.code().into());
                draft.outcome = Some(
                    serde_json::json!({ "approver": approver_id.chars().take(64).collect::<String>() }),
                );
            }
        }
        let receipt = self.log.append(draft).await;
        match (result, receipt) {
            (Ok(mut status), Ok(receipt)) => {
                status.receipt = Some(receipt.receipt);
                Ok(status)
            }
            (Ok(_), Err(_)) => Err(ApprovalError::StoreUnavailable),
            (Err(e), _) => Err(e),
        }
    }

    async fn check_and_record(
        &self,
        submitter: Option<&Principal>,
        lease_id: &str,
        approver_id: &str,
        signature: &str,
    ) -> Result<ApprovalStatus, ApprovalError> {
        if !valid_lease_id(lease_id) {
            return Err(ApprovalError::LeaseNotFound);
        }
        let lease = self
            .store
            .lease(lease_id)
            .await
            .map_err(|_| ApprovalError::StoreUnavailable)?
            .ok_or(ApprovalError::LeaseNotFound)?;
        let now = crate::now_unix();
        if lease.state != LeaseState::PendingApproval {
            return Err(ApprovalError::LeaseNotPending);
        }
        if lease.expires_at <= now {
            return Err(ApprovalError::LeaseExpired);
        }
        self.policy.approvers.check(
            &lease,
            approver_id,
            signature,
            submitter.map(Principal::subject),
        )?;
        match self
            .store
            .record_approval(lease_id, approver_id, signature, now)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(ApprovalError::Duplicate),
            Err(_) => return Err(ApprovalError::StoreUnavailable),
        }
        let stored = self
            .store
            .approvals(lease_id)
            .await
            .map_err(|_| ApprovalError::StoreUnavailable)?;
        let approvals = self.policy.approvers.tally(&lease, &stored).len();
        Ok(ApprovalStatus {
            lease_id: lease_id.to_string(),
            approvals,
            k: lease.quorum_k,
            complete: approvals >= lease.quorum_k as usize,
            receipt: None,
        })
    }

    /// A refusal: nothing ran; the caller gets `code` and `message`.
    async fn deny(
        &self,
        draft: ReceiptDraft,
        code: &'static str,
        message: impl Into<String>,
    ) -> GateOutcome {
        self.finish(
            draft,
            Status::Denied,
            None,
            Some(ErrorInfo::new(code, message.into())),
        )
        .await
    }

    /// Records the decision and builds the answer. The receipt's reason is
    /// the code the caller gets: one vocabulary for clients and auditors.
    async fn finish(
        &self,
        mut draft: ReceiptDraft,
        status: Status,
        payload: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> GateOutcome {
        let reason = error.as_ref().map(|e| e.code);
        if status == Status::Denied
            && let Some(code) = reason
        {
            self.metrics.record_refusal(code);
        }
        draft.decision = Some(match status {
            Status::Ok => Decision::Allowed,
            Status::Denied => Decision::Denied,
            Status::Error => Decision::Error,
            Status::ApprovalRequired => Decision::ApprovalRequired,
            Status::LeaseIssued => Decision::LeaseIssued,
        });
        draft.reason = reason.map(String::from);
        let (result, approval) = match status {
            Status::ApprovalRequired | Status::LeaseIssued => (None, payload),
            _ => (payload, None),
        };
        match self.log.append(draft).await {
            Ok(appended) => GateOutcome {
                status,
                result,
                error,
                approval,
                receipt: Some(appended.receipt),
                log: Some(appended.proof),
            },
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
                    error: Some(self.audit_unavailable("the decision could not be recorded")),
                    approval,
                    receipt: None,
                    log: None,
                }
            }
        }
    }
}

impl Gate {
    /// Why nothing could be recorded: the store is away, or it was
    /// tampered with and the log refuses to sign over it.
    fn audit_unavailable(&self, consequence: &str) -> ErrorInfo {
        match self.log.integrity() {
            Some(failure) => ErrorInfo::new(
                "audit_store_tampered",
                format!(
                    "the audit store no longer matches the log this server signed (receipt {}: {}); {consequence}, and nothing is until an operator restores the store",
                    failure.seq, failure.problem
                ),
            ),
            None => ErrorInfo::new(
                "audit_unavailable",
                format!("the audit log is unavailable; {consequence}"),
            ),
        }
    }
}

impl ErrorInfo {
    pub fn new(code: &'static str, message: String) -> Self {
        Self { code, message }
    }
}

impl From<Refusal> for ErrorInfo {
    fn from(r: Refusal) -> Self {
        Self::new(r.code, r.message)
    }
}

/// A call that passed admission: what the gate and the tool established.
struct Admitted<T: Tool> {
    lease_id: Option<String>,
    args: T::Args,
    plan: T::Plan,
    action: Action,
}

/// A call turned away before it ran: how, with which code, and why.
struct Rejection {
    status: Status,
    code: &'static str,
    message: String,
}

/// A tool's refusal; the server's own failure (`internal`) is an error,
/// not a denial.
impl From<Refusal> for Rejection {
    fn from(refusal: Refusal) -> Self {
        Self {
            status: if refusal.code == INTERNAL {
                Status::Error
            } else {
                Status::Denied
            },
            code: refusal.code,
            message: refusal.message,
        }
    }
}

impl Rejection {
    fn denied(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: Status::Denied,
            code,
            message: message.into(),
        }
    }
}

/// What receipts of approval submissions name as their tool.
pub const APPROVAL: &str = "approval";

/// The code of a call whose token lacks the scope its class needs.
pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";

/// The code of a call refused because the system's random source failed.
const RANDOM_UNAVAILABLE: &str = "random_unavailable";

/// The code of a call whose class policy names no scope for.
const NO_POLICY: &str = "no_policy";

/// The code of a call the server failed on, not one the caller got wrong.
pub const INTERNAL: &str = "internal";

fn internal_refusal() -> Refusal {
    Refusal::new(
        INTERNAL,
        "the server failed on this call; it was recorded and nothing else ran",
    )
}

/// A tool's classifier, with any panic in it turned into an `internal`
/// refusal: request data must never take a call down without its receipt.
fn classify_contained<T: Tool>(
    tool: &T,
    args: &T::Args,
) -> Result<Classification<T::Plan>, Refusal> {
    std::panic::catch_unwind(AssertUnwindSafe(|| tool.classify(args))).unwrap_or_else(|panic| {
        log_panic(T::NAME, "classification", panic.as_ref());
        Err(internal_refusal())
    })
}

/// The panic's message goes to the operator's log, never to the caller.
fn log_panic(tool: &str, stage: &str, panic: &(dyn std::any::Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(tool, stage, panic = %message, "a tool panicked; the call was answered `internal` and recorded");
}

/// SHA-256 over the RFC 8785 form of `{"tool": …, "args": …}`: the digest a
/// lease is bound to and approvers sign.
pub fn args_digest<A: Serialize>(tool: &str, args: &A) -> Option<String> {
    let value = serde_json::json!({ "tool": tool, "args": args });
    crate::audit::canonical_bytes(&value)
        .ok()
        .map(|bytes| crate::sha256_hex(&bytes))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IdentityConfig, LeaseConfig, LimitsConfig, QuorumConfig, ScopeConfig};
    use crate::keys::KeyPair;

    /// A tool whose classifier or body panics when asked to: stands for any
    /// bug a hostile argument may reach.
    struct Fragile;

    #[derive(serde::Deserialize, Serialize, JsonSchema)]
    struct FragileArgs {
        panic_in: String,
    }

    impl Tool for Fragile {
        const NAME: &'static str = "test.fragile";
        const TITLE: &'static str = "fragile";
        const DESCRIPTION: &'static str = "panics on request";
        const READ_ONLY: bool = true;
        type Args = FragileArgs;
        type Plan = ();

        fn classify(&self, args: &FragileArgs) -> Result<Classification, Refusal> {
            if args.panic_in == "classify" {
                let text = "-é";
                // The bug class of the issue: a byte slice inside a character.
                let _ = &text[..2];
            }
            Ok(Classification {
                class: Class::Read,
                summary: "fragile".into(),
                plan: (),
            })
        }

        async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
            if call.args().panic_in == "execute" {
                panic!("tool body failed");
            }
            Ok(Executed {
                result: Value::Bool(true),
                outcome: Value::Null,
            })
        }
    }

    async fn gate(dir: &std::path::Path) -> (Gate, String) {
        let config = IdentityConfig::default();
        let issuer = KeyPair::generate().expect("key");
        let verifier =
            TokenVerifier::new(&config, Some(&issuer), &Default::default()).expect("verifier");
        let store = Store::open_sqlite(&dir.join("store.db"))
            .await
            .expect("store");
        let log = AuditLog::open(store.clone(), Arc::new(KeyPair::generate().expect("key")))
            .await
            .expect("log");
        let gate = Gate::new(
            Arc::new(verifier),
            store,
            Arc::new(log),
            Policy::new(
                &ScopeConfig::default(),
                &LeaseConfig::default(),
                ApproverRegistry::new(&[], &QuorumConfig::default()),
                rate::CallLimits::new(&LimitsConfig::default()),
            )
            .with_scope(Fragile::NAME, Class::Read, "db:read"),
        );
        let now = crate::now_unix();
        let token = issuer
            .sign_jws(
                "JWT",
                &serde_json::json!({
                    "iss": config.issuer, "aud": config.audience, "sub": "alice",
                    "scope": "db:read", "iat": now, "exp": now + 600, "jti": "t1"
                }),
            )
            .expect("token");
        (gate, token)
    }

    fn arguments(panic_in: &str) -> Option<Map<String, Value>> {
        match serde_json::json!({ "panic_in": panic_in }) {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_panic_in_a_tool_is_an_internal_error_with_a_receipt_and_the_gate_keeps_serving() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gate, token) = gate(dir.path()).await;
        for stage in ["classify", "execute"] {
            let outcome = gate
                .run(
                    &Fragile,
                    "stdio",
                    Caller::Token(Some(token.clone())),
                    arguments(stage),
                )
                .await;
            assert_eq!(outcome.status, Status::Error, "{stage}");
            let error = outcome.error.expect("error");
            assert_eq!(error.code, INTERNAL);
            assert!(
                !error.message.contains("failed on a byte") && !error.message.contains("tool body")
            );
            let receipt = serde_json::to_value(outcome.receipt.expect("a receipt")).expect("json");
            assert_eq!(receipt["body"]["reason"], INTERNAL, "{stage}");
            assert_eq!(receipt["body"]["subject"], "alice", "{stage}");
            assert_eq!(receipt["body"]["decision"], "error", "{stage}");
        }
        let healthy = gate
            .run(
                &Fragile,
                "stdio",
                Caller::Token(Some(token.clone())),
                arguments("none"),
            )
            .await;
        assert_eq!(healthy.status, Status::Ok);
        assert_eq!(gate.in_flight(), 0);
        let principal = gate.authenticate(Some(&token)).await.expect("principal");
        assert_eq!(
            gate.challenge_scope(&Fragile, "http", &principal, arguments("classify").as_ref())
                .await,
            None,
            "the HTTP scope challenge survives the classifier's panic and leaves the call to the gate"
        );
    }
}
