//! The one gate every tool call passes through, on every transport. Each
//! step lives in its own file and hands the next a proof only it can make:
//!
//! 1. [`authenticate`] — a verified token, not revoked: [`Authenticated`];
//! 2. [`admit`] — typed arguments, their digest, the tool's classification,
//!    and the scope [`policy`] names for the class: [`ScopeGranted`]
//!    inside the [`Action`];
//! 3. rate — the subject's call budget ([`rate`]);
//! 4. [`lease`] — a single-use lease bound to (subject, tool, argument
//!    digest, expiry), minted or redeemed: [`LeaseConsumed`];
//! 5. [`quorum`] — k signed approvals for a destructive call: [`QuorumMet`];
//! 6. [`execute`] — the tool runs with an [`Authorized`] value built from
//!    those proofs; nothing else can build one, so a tool's `execute`
//!    cannot be reached around the gate (the rustls "proof value" pattern);
//! 7. [`record`] — a receipt for every outcome, in the words of [`Denial`].

pub mod admit;
pub mod approval;
pub mod authenticate;
#[cfg(feature = "bench")]
mod danger;
pub mod denial;
pub mod execute;
pub mod lease;
pub mod logged_approvals;
pub mod passkeys;
pub mod policy;
pub mod quorum;
pub mod rate;
pub mod record;
pub mod revocation;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::audit::{AuditLog, Receipt};
use crate::clock::Clock;
use crate::identity::TokenVerifier;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::Store;

pub use admit::{Action, Challenge, Preadmitted, ScopeGranted, args_digest};
pub use approval::{ApprovalStatus, RejectionStatus};
pub use authenticate::{Authenticated, Caller};
pub use denial::{Denial, INSUFFICIENT_SCOPE};
pub use execute::Authorized;
pub use lease::LeaseConsumed;
pub use policy::Policy;
pub use quorum::QuorumMet;
pub use record::{ErrorInfo, GateOutcome, Origin, Status};

use record::{CallRecord, Halt};

/// The argument that names a previously issued lease when a call is repeated.
/// It is taken out of the arguments before they are parsed and digested.
pub const LEASE_ARG: &str = "lease_id";

/// What receipts of approval submissions name as their tool.
pub const APPROVAL: &str = "approval";
/// The pseudo-tool of passkey registrations and their confirmations.
pub const PASSKEY: &str = "passkey";

/// The code of a call the server failed on, not one the caller got wrong.
pub const INTERNAL: &str = "internal";

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

/// A tool's own refusal, with a code the caller can act on.
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

/// A tool behind the gate. Adding one is its file, a line in
/// [`crate::tools::ToolSet`] and its classes' scopes in [`policy`].
pub trait Tool: Send + Sync + 'static {
    const NAME: &'static str;
    const TITLE: &'static str;
    const DESCRIPTION: &'static str;
    /// Whether every call of this tool leaves its environment unchanged.
    const READ_ONLY: bool;
    type Args: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
    /// What classification hands to execution; `()` when nothing.
    type Plan: Send + Sync + 'static;

    /// Judges the call without side effects the caller could observe
    /// beyond the verdict: it runs only for callers holding one of the
    /// tool's scopes.
    fn classify(&self, args: &Self::Args) -> Result<Classification<Self::Plan>, Refusal>;

    fn execute(
        &self,
        call: Authorized<'_, Self>,
    ) -> impl Future<Output = Result<Executed, Refusal>> + Send;

    /// What `tools/list` says about the tool; may depend on the host.
    fn description(&self) -> String {
        Self::DESCRIPTION.to_string()
    }
}

pub struct Gate {
    verifier: Arc<TokenVerifier>,
    store: Store,
    log: Arc<AuditLog>,
    policy: Policy,
    metrics: Metrics,
    in_flight: AtomicUsize,
    clock: Clock,
    notifier: Notifier,
    revocations: Arc<revocation::Revocations>,
    /// See [`danger`]: benchmark builds only.
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
            clock: Clock::system(),
            notifier: Notifier::disabled(),
            revocations: Arc::new(revocation::Revocations::new(revocation::DEFAULT_REFRESH)),
            #[cfg(feature = "bench")]
            gate_off: false,
        }
    }

    /// Whether this gate lets calls through unchecked: never, unless the
    /// binary was built with the benchmark-only `bench` feature and started
    /// with `serve --bench-gate-off` in development mode.
    #[cfg(not(feature = "bench"))]
    pub fn is_off(&self) -> bool {
        false
    }

    /// A gate whose revocation list is reloaded every `refresh`.
    pub fn with_revocation_refresh(mut self, refresh: std::time::Duration) -> Self {
        self.revocations = Arc::new(revocation::Revocations::new(refresh));
        self
    }

    /// The in-memory revocation list (the serving process keeps it fresh
    /// with [`revocation::Revocations::spawn_refresher`]).
    pub fn revocations(&self) -> &Arc<revocation::Revocations> {
        &self.revocations
    }

    /// A gate that tells `notifier` when a call is held or decided.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Tells the notifier what happened to a held lease, with its view.
    async fn notify_lease(
        &self,
        kind: &'static str,
        lease_id: &str,
        by: Option<&str>,
        reason: Option<&str>,
    ) {
        if !self.notifier.enabled() {
            return;
        }
        let Ok(Some(lease)) = self.store.lease(lease_id).await else {
            return;
        };
        if let Ok(view) = self.approval_view(&lease).await {
            self.notifier.notify(crate::notify::Event {
                kind,
                view,
                by: by.map(String::from),
                reason: reason.map(String::from),
            });
        }
    }

    /// A gate deciding by `clock` (unit tests move it to reach expiry).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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

    pub fn approvers(&self) -> &quorum::ApproverRegistry {
        &self.policy.approvers
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Whether `caller` holds any scope of any class of `tool`: whether the
    /// tool is any use to them (the same test admission starts with).
    pub fn may_use(&self, caller: &Authenticated, tool: &str) -> bool {
        self.policy
            .tool_scopes(tool)
            .iter()
            .any(|scope| caller.principal().has_scope(scope))
    }

    /// Whether policy names a scope for any class of `tool`: a tool
    /// without one could never be called, so the server refuses to start.
    pub fn has_policy_for(&self, tool: &str) -> bool {
        !self.policy.tool_scopes(tool).is_empty()
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Records a call to a tool name that does not exist.
    /// Records a request for something that does not exist: a tool
    /// (`UnknownTool`, route `unknown`) or a resource (`UnknownResource`).
    pub async fn record_unknown(
        &self,
        transport: &'static str,
        route: &str,
        caller: Caller,
        denial: &Denial,
    ) -> Option<Receipt> {
        let caller = self.identify(caller).await.ok().map(|(caller, _)| caller);
        let principal = caller.as_ref().map(Authenticated::principal);
        self.record_refusal(transport, route, principal, denial)
            .await
    }

    /// One call of `tool`, measured, with any panic inside contained.
    pub async fn run<T: Tool>(
        &self,
        tool: &T,
        origin: impl Into<Origin>,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> GateOutcome {
        let origin = origin.into();
        let _in_flight = InFlight::enter(&self.in_flight);
        #[cfg(feature = "bench")]
        if self.gate_off {
            return self.run_ungated(tool, arguments).await;
        }
        let started = std::time::Instant::now();
        let redeeming = arguments
            .as_ref()
            .is_some_and(|a| a.contains_key(LEASE_ARG));
        let mut record = CallRecord::new(origin.transport, T::NAME);
        record.trace(origin.trace.as_ref());
        let steps = AssertUnwindSafe(self.steps(tool, &mut record, caller, arguments))
            .catch_unwind()
            .await;
        let outcome = match steps {
            Ok(Ok(result)) => self.finish(record, Status::Ok, Some(result), None).await,
            Ok(Err(halt)) => self.halt(record, halt).await,
            Err(panic) => {
                log_panic(T::NAME, "gate", panic.as_ref());
                self.halt(record, Denial::Internal.into()).await
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

    /// The steps in order; each returns its proof or halts the call.
    async fn steps<T: Tool>(
        &self,
        tool: &T,
        record: &mut CallRecord,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> Result<Value, Halt> {
        let (caller, preadmitted) = self.identify(caller).await.map_err(Denial::from)?;
        record.caller(caller.principal());
        let admitted = match preadmitted.and_then(|p| p.take::<T>(&caller, arguments.as_ref())) {
            Some(admitted) => {
                record.admitted(&admitted.action);
                admitted
            }
            None => self.admit(tool, record, &caller, arguments)?,
        };
        let action = &admitted.action;
        self.policy
            .limits
            .take(&self.store, caller.principal().subject(), T::NAME)
            .await
            .map_err(|limited| match limited {
                rate::Limited::Wait(retry_after) => Denial::RateLimited {
                    retry_after_s: retry_after.as_secs().max(1),
                },
                rate::Limited::Unavailable => Denial::LimitsUnavailable,
            })?;
        let (lease, quorum) = match &admitted.lease_id {
            Some(id) => {
                let lease = self.redeemable(record, id, &caller, action).await?;
                let quorum = self.quorum(&lease, action).await?;
                (self.consume(&lease).await?, quorum)
            }
            None if self.policy.needs_quorum(action.class())
                || self.policy.needs_explicit_lease(T::NAME, action.class()) =>
            {
                return Err(self
                    .issue::<T>(record, &caller, action, &admitted.args)
                    .await);
            }
            None => (
                self.mint(record, &caller, action)?,
                self.no_quorum_needed(action)?,
            ),
        };
        self.execute(tool, record, &caller, admitted, &lease, &quorum)
            .await
    }
}

fn internal_refusal() -> Refusal {
    Refusal::new(INTERNAL, Denial::Internal.message())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IdentityConfig, LeaseConfig, LimitsConfig, QuorumConfig, ScopeConfig};
    use crate::gate::quorum::ApproverRegistry;
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
        gate_with(dir, LeaseConfig::default(), Clock::system()).await
    }

    async fn gate_with(dir: &std::path::Path, leases: LeaseConfig, clock: Clock) -> (Gate, String) {
        let config = IdentityConfig::default();
        let issuer = KeyPair::generate().expect("key");
        let verifier =
            TokenVerifier::new(&config, Some(&issuer), &Default::default()).expect("verifier");
        let store = Store::open_sqlite(&dir.join("store.db"))
            .await
            .expect("store");
        let keys = crate::keyring::ServerKeys::single(&store, KeyPair::generate().expect("key"))
            .await
            .expect("keys");
        let log = AuditLog::open(store.clone(), keys).await.expect("log");
        let gate = Gate::new(
            Arc::new(verifier),
            store,
            Arc::new(log),
            Policy::new(
                &ScopeConfig::default(),
                &leases,
                ApproverRegistry::new(
                    &[],
                    &QuorumConfig::default(),
                    &crate::webauthn::RelyingParty::default(),
                ),
                rate::CallLimits::new(&LimitsConfig::default()),
            )
            .with_scope(Fragile::NAME, Class::Read, "db:read")
            .with_scope(Counting::NAME, Class::Read, "db:read"),
        )
        .with_clock(clock);
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
        assert!(
            matches!(
                gate.challenge_scope(&Fragile, "http", &principal, arguments("classify"))
                    .await,
                Challenge::Undecided
            ),
            "the HTTP scope challenge survives the classifier's panic and leaves the call to the gate"
        );
    }

    /// Counts its classifications; its plan is its text, upper-cased, and
    /// its result the plan: which admission ran shows in the answer.
    #[derive(Default)]
    struct Counting {
        classified: AtomicUsize,
    }

    #[derive(serde::Deserialize, Serialize, JsonSchema)]
    struct CountingArgs {
        text: String,
    }

    impl Tool for Counting {
        const NAME: &'static str = "test.counting";
        const TITLE: &'static str = "counting";
        const DESCRIPTION: &'static str = "counts its classifications";
        const READ_ONLY: bool = true;
        type Args = CountingArgs;
        type Plan = String;

        fn classify(&self, args: &CountingArgs) -> Result<Classification<String>, Refusal> {
            self.classified.fetch_add(1, Ordering::SeqCst);
            Ok(Classification {
                class: Class::Read,
                summary: String::new(),
                plan: args.text.to_uppercase(),
            })
        }

        async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
            Ok(Executed {
                result: Value::from(call.plan().as_str()),
                outcome: Value::Null,
            })
        }
    }

    fn text(text: &str) -> Option<Map<String, Value>> {
        match serde_json::json!({ "text": text }) {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_http_call_is_classified_once_and_a_carried_admission_fits_only_its_own_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gate, token) = gate(dir.path()).await;
        let tool = Counting::default();
        let caller = gate.authenticate(Some(&token)).await.expect("caller");
        let admitted = |challenge: Challenge| match challenge {
            Challenge::Admitted(admitted) => admitted,
            _ => panic!("the challenge should admit a call within the token's scope"),
        };

        let carried = admitted(
            gate.challenge_scope(&tool, "http", &caller, text("a"))
                .await,
        );
        let verified = Caller::Verified(caller.clone(), Some(carried.clone()));
        let outcome = gate.run(&tool, "http", verified, text("a")).await;
        assert_eq!(outcome.status, Status::Ok);
        assert_eq!(outcome.result, Some(Value::from("A")));
        assert_eq!(tool.classified.load(Ordering::SeqCst), 1, "classified once");
        let body = serde_json::to_value(outcome.receipt.expect("receipt")).expect("json");
        assert_eq!(
            body["body"]["class"], "read",
            "the record has the carried class"
        );
        assert!(body["body"]["args_digest"].is_string());

        // Taken once: the same admission does not serve a second call.
        let again = Caller::Verified(caller.clone(), Some(carried));
        gate.run(&tool, "http", again, text("a")).await;
        assert_eq!(tool.classified.load(Ordering::SeqCst), 2);

        // Made for other arguments: judged afresh, and what runs is this call.
        let other = admitted(
            gate.challenge_scope(&tool, "http", &caller, text("b"))
                .await,
        );
        let outcome = gate
            .run(
                &tool,
                "http",
                Caller::Verified(caller.clone(), Some(other)),
                text("c"),
            )
            .await;
        assert_eq!(outcome.result, Some(Value::from("C")));
        assert_eq!(tool.classified.load(Ordering::SeqCst), 4);
    }

    fn with_lease(
        mut arguments: Option<Map<String, Value>>,
        held: &GateOutcome,
    ) -> Option<Map<String, Value>> {
        let id = held.approval.as_ref().map(|a| a["lease_id"].clone());
        if let (Some(arguments), Some(id)) = (arguments.as_mut(), id) {
            arguments.insert(LEASE_ARG.into(), id);
        }
        arguments
    }

    #[tokio::test]
    async fn leases_and_verified_tokens_expire_by_the_gates_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::manual(crate::now_unix());
        let leases = LeaseConfig {
            explicit: vec![format!("{}:read", Counting::NAME)],
            ttl_s: 60,
            ..LeaseConfig::default()
        };
        let (gate, token) = gate_with(dir.path(), leases, clock.clone()).await;
        let tool = Counting::default();
        let caller = || Caller::Token(Some(token.clone()));

        let held = gate.run(&tool, "stdio", caller(), text("a")).await;
        assert_eq!(held.status, Status::LeaseIssued);
        clock.advance(61);
        let late = gate
            .run(&tool, "stdio", caller(), with_lease(text("a"), &held))
            .await;
        assert_eq!(late.error.map(|e| e.code), Some("lease_expired"));

        let held = gate.run(&tool, "stdio", caller(), text("b")).await;
        clock.advance(59);
        let redeemed = gate
            .run(&tool, "stdio", caller(), with_lease(text("b"), &held))
            .await;
        assert_eq!(redeemed.result, Some(Value::from("B")), "in time, it runs");
        let again = gate
            .run(&tool, "stdio", caller(), with_lease(text("b"), &held))
            .await;
        assert_eq!(again.error.map(|e| e.code), Some("lease_consumed"));

        // The front door verified the token; by the time the call reaches
        // the gate, the token has expired.
        let verified = gate.authenticate(Some(&token)).await.expect("caller");
        clock.advance(600);
        let stale = gate
            .run(&tool, "http", Caller::Verified(verified, None), text("c"))
            .await;
        assert_eq!(stale.error.map(|e| e.code), Some("expired"));
    }
}
