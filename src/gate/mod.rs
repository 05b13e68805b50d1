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

use std::future::Future;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::audit::{AuditLog, Decision, Receipt, ReceiptDraft};
use crate::identity::{IdentityError, Principal, TokenVerifier};
use crate::store::{NewLease, Store, StoreError};

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

/// A tool's judgement of one call.
#[derive(Debug, Clone)]
pub struct Classification {
    pub class: Class,
    /// The scope policy requires for this class of this tool.
    pub scope: String,
    /// What the call will do, in words a human approver can check.
    pub summary: String,
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
    classification: Classification,
    args_digest: String,
}

impl Action {
    pub fn tool(&self) -> &'static str {
        self.tool
    }
    pub fn class(&self) -> Class {
        self.classification.class
    }
    pub fn scope(&self) -> &str {
        &self.classification.scope
    }
    pub fn summary(&self) -> &str {
        &self.classification.summary
    }
    pub fn args_digest(&self) -> &str {
        &self.args_digest
    }
}

/// Proof that a call passed identity, scope, lease and quorum. Only
/// [`Gate::run`] constructs one; a tool's `execute` requires it.
pub struct Authorized<'a, A> {
    principal: &'a Principal,
    action: &'a Action,
    lease_id: &'a str,
    args: A,
}

impl<A> Authorized<'_, A> {
    pub fn principal(&self) -> &Principal {
        self.principal
    }
    pub fn action(&self) -> &Action {
        self.action
    }
    pub fn lease_id(&self) -> &str {
        self.lease_id
    }
    pub fn args(&self) -> &A {
        &self.args
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

    fn classify(&self, args: &Self::Args) -> Result<Classification, Refusal>;

    fn execute(
        &self,
        call: Authorized<'_, Self::Args>,
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
    ApprovalRequired,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// Limits on the gate's own work.
#[derive(Debug, Clone)]
pub struct GateLimits {
    /// Lifetime of a lease minted for an ordinary call.
    pub lease_ttl_s: u64,
}

impl Default for GateLimits {
    fn default() -> Self {
        Self { lease_ttl_s: 60 }
    }
}

pub struct Gate {
    verifier: Arc<TokenVerifier>,
    store: Store,
    log: Arc<AuditLog>,
    limits: GateLimits,
}

impl Gate {
    pub fn new(
        verifier: Arc<TokenVerifier>,
        store: Store,
        log: Arc<AuditLog>,
        limits: GateLimits,
    ) -> Self {
        Self {
            verifier,
            store,
            log,
            limits,
        }
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Verifies a token and checks its revocation in the store.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, IdentityError> {
        let principal = self.verifier.verify(token.unwrap_or_default())?;
        self.check_revocation(principal).await
    }

    async fn check_revocation(&self, principal: Principal) -> Result<Principal, IdentityError> {
        if let Some(jti) = principal.token_id() {
            match self.store.is_revoked(jti).await {
                Ok(false) => {}
                Ok(true) => return Err(IdentityError::Revoked),
                // Fail closed: an unknown revocation state is not "not revoked".
                Err(_) => return Err(IdentityError::Revoked),
            }
        }
        Ok(principal)
    }

    /// Records a request the HTTP front door refused before it reached MCP.
    pub async fn record_transport_denial(&self, transport: &'static str, error: IdentityError) {
        let draft = ReceiptDraft {
            transport,
            tool: "http".into(),
            decision: Some(Decision::Denied),
            reason: Some(error.code().into()),
            ..Default::default()
        };
        if let Err(e) = self.log.append(draft).await {
            tracing::error!(error = %e, "could not record an authentication denial");
        }
    }

    /// Records a call to a tool name that does not exist.
    pub async fn record_unknown_tool(
        &self,
        transport: &'static str,
        caller: Caller,
    ) -> Option<Receipt> {
        let principal = self.identify(caller).await.ok();
        let draft = ReceiptDraft {
            subject: principal.as_ref().map(|p| p.subject().to_string()),
            token_id: principal
                .as_ref()
                .and_then(|p| p.token_id().map(String::from)),
            transport,
            tool: "unknown".into(),
            decision: Some(Decision::Denied),
            reason: Some("unknown_tool".into()),
            ..Default::default()
        };
        self.log.append(draft).await.ok()
    }

    async fn identify(&self, caller: Caller) -> Result<Principal, IdentityError> {
        match caller {
            Caller::Token(token) => self.authenticate(token.as_deref()).await,
            Caller::Verified(principal) => {
                if principal.expires_at() < crate::now_unix() {
                    return Err(IdentityError::Expired);
                }
                self.check_revocation(principal).await
            }
        }
    }

    /// The whole pipeline for one call of `tool`.
    pub async fn run<T: Tool>(
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
                        Some(ErrorInfo::new("unauthenticated", e.to_string())),
                        Some(e.code()),
                    )
                    .await;
            }
        };
        draft.subject = Some(principal.subject().to_string());
        draft.token_id = principal.token_id().map(String::from);

        // 2. Classify typed arguments.
        let raw = Value::Object(arguments.unwrap_or_default());
        let args: T::Args = match serde_json::from_value(raw) {
            Ok(a) => a,
            Err(e) => {
                let message = truncate(&format!("invalid arguments: {e}"), 300);
                return self
                    .finish(
                        draft,
                        Status::Denied,
                        None,
                        Some(ErrorInfo::new("invalid_arguments", message)),
                        Some("invalid_arguments"),
                    )
                    .await;
            }
        };
        let digest = match args_digest(T::NAME, &args) {
            Some(d) => d,
            None => {
                return self
                    .finish(
                        draft,
                        Status::Denied,
                        None,
                        Some(ErrorInfo::new(
                            "invalid_arguments",
                            "arguments cannot be canonicalized".into(),
                        )),
                        Some("invalid_arguments"),
                    )
                    .await;
            }
        };
        draft.args_digest = Some(digest.clone());
        let classification = match tool.classify(&args) {
            Ok(c) => c,
            Err(refusal) => {
                return self
                    .finish(
                        draft,
                        Status::Denied,
                        None,
                        Some(refusal.clone().into()),
                        Some(refusal.code),
                    )
                    .await;
            }
        };
        draft.class = Some(classification.class.as_str());
        draft.scope = Some(classification.scope.clone());
        let action = Action {
            tool: T::NAME,
            classification,
            args_digest: digest,
        };

        // 3. Scope.
        if !principal.has_scope(action.scope()) {
            let message = format!(
                "this call needs the `{}` scope, which the token does not grant",
                action.scope()
            );
            return self
                .finish(
                    draft,
                    Status::Denied,
                    None,
                    Some(ErrorInfo::new("insufficient_scope", message)),
                    Some("insufficient_scope"),
                )
                .await;
        }

        // 4. Quorum: destructive calls are held, not run.
        if action.class() == Class::Destructive {
            let approval = serde_json::json!({
                "summary": action.summary(),
                "args_digest": action.args_digest(),
                "reason": "destructive calls run only after quorum approval by registered approvers",
            });
            let message = format!("approval required: {}", action.summary());
            return self
                .finish(
                    draft,
                    Status::ApprovalRequired,
                    Some(approval),
                    Some(ErrorInfo::new("approval_required", message)),
                    Some("approval_required"),
                )
                .await;
        }

        // 5. Lease, minted and consumed in one compare-and-set.
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
                            "internal",
                            "random source unavailable".into(),
                        )),
                        Some("random_unavailable"),
                    )
                    .await;
            }
        };
        let lease = NewLease {
            id: lease_id.clone(),
            subject: principal.subject().to_string(),
            tool: T::NAME.to_string(),
            args_digest: action.args_digest().to_string(),
            scope: action.scope().to_string(),
            issued_at: now,
            expires_at: now + self.limits.lease_ttl_s,
        };
        if let Err(e) = self.store.mint_and_consume_lease(&lease, now).await {
            let code = match e {
                StoreError::Conflict => "lease_conflict",
                _ => "store_unavailable",
            };
            return self
                .finish(
                    draft,
                    Status::Denied,
                    None,
                    Some(ErrorInfo::new(code, e.to_string())),
                    Some(code),
                )
                .await;
        }
        draft.lease = Some(lease_id.clone());

        // 6. Execute, holding the proof.
        let call = Authorized {
            principal: &principal,
            action: &action,
            lease_id: &lease_id,
            args,
        };
        match tool.execute(call).await {
            Ok(executed) => {
                draft.outcome = Some(executed.outcome);
                self.finish(draft, Status::Ok, Some(executed.result), None, None)
                    .await
            }
            Err(refusal) => {
                self.finish(
                    draft,
                    Status::Error,
                    None,
                    Some(refusal.clone().into()),
                    Some(refusal.code),
                )
                .await
            }
        }
    }

    async fn finish(
        &self,
        mut draft: ReceiptDraft,
        status: Status,
        payload: Option<Value>,
        error: Option<ErrorInfo>,
        reason: Option<&str>,
    ) -> GateOutcome {
        draft.decision = Some(match status {
            Status::Ok => Decision::Allowed,
            Status::Denied => Decision::Denied,
            Status::Error => Decision::Error,
            Status::ApprovalRequired => Decision::ApprovalRequired,
        });
        draft.reason = reason.map(String::from);
        let (result, approval) = match status {
            Status::ApprovalRequired => (None, payload),
            _ => (payload, None),
        };
        match self.log.append(draft).await {
            Ok(receipt) => GateOutcome {
                status,
                result,
                error,
                approval,
                receipt: Some(receipt),
            },
            Err(e) => {
                tracing::error!(error = %e, "receipt could not be appended");
                GateOutcome {
                    status: if status == Status::Ok {
                        Status::Error
                    } else {
                        status
                    },
                    result,
                    error: Some(ErrorInfo::new(
                        "audit_unavailable",
                        "the audit log is unavailable; the decision could not be recorded".into(),
                    )),
                    approval,
                    receipt: None,
                }
            }
        }
    }
}

impl ErrorInfo {
    pub fn new(code: &str, message: String) -> Self {
        Self {
            code: code.to_string(),
            message,
        }
    }
}

impl From<Refusal> for ErrorInfo {
    fn from(r: Refusal) -> Self {
        Self::new(r.code, r.message)
    }
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
