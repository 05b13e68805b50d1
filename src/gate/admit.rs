//! Steps 2 and 3, admission: the lease id taken out of the arguments, the
//! typed arguments and their digest, the tool's classification, and the
//! scope policy names for that class. Shared by the pipeline and the HTTP
//! scope challenge, so both judge, and record, a call identically.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

use super::record::CallRecord;
use super::{
    Authenticated, Class, Classification, Denial, Gate, LEASE_ARG, Refusal, Tool, internal_refusal,
    log_panic,
};

/// Proof that the caller holds the scope policy names for this class of
/// call to this tool. Only admission makes one.
#[derive(Debug, Clone)]
pub struct ScopeGranted {
    scope: String,
}

impl ScopeGranted {
    pub fn scope(&self) -> &str {
        &self.scope
    }

    #[cfg(feature = "bench")]
    pub(super) fn unchecked_for_benchmark() -> Self {
        Self {
            scope: String::new(),
        }
    }
}

/// Everything admission established about a call.
#[derive(Debug, Clone)]
pub struct Action {
    tool: &'static str,
    class: Class,
    granted: ScopeGranted,
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
        self.granted.scope()
    }
    pub fn summary(&self) -> &str {
        &self.summary
    }
    pub fn args_digest(&self) -> &str {
        &self.args_digest
    }

    #[cfg(feature = "bench")]
    pub(super) fn unchecked_for_benchmark<T: Tool>(
        classification: &Classification<T::Plan>,
    ) -> Self {
        Self {
            tool: T::NAME,
            class: classification.class,
            granted: ScopeGranted::unchecked_for_benchmark(),
            summary: classification.summary.clone(),
            args_digest: String::new(),
        }
    }
}

/// A call that passed admission.
pub(super) struct Admitted<T: Tool> {
    pub lease_id: Option<String>,
    pub args: T::Args,
    pub plan: T::Plan,
    pub action: Action,
}

impl Gate {
    pub(super) fn admit<T: Tool>(
        &self,
        tool: &T,
        record: &mut CallRecord,
        caller: &Authenticated,
        arguments: Option<Map<String, Value>>,
    ) -> Result<Admitted<T>, Denial> {
        let principal = caller.principal();
        // A caller holding none of the tool's scopes learns nothing from its
        // classifier (which may look at the filesystem or the schema).
        if !self.may_use(caller, T::NAME) {
            let tool_scopes = self.policy.tool_scopes(T::NAME);
            let least = tool_scopes.first().copied().unwrap_or(T::NAME);
            record.scope(least);
            return Err(Denial::InsufficientScope {
                scope: least.to_string(),
                message: format!(
                    "`{}` needs the `{least}` scope, which the token does not grant",
                    T::NAME
                ),
            });
        }
        let mut arguments = arguments.unwrap_or_default();
        let lease_id = match arguments.remove(LEASE_ARG) {
            None => None,
            Some(Value::String(id)) if valid_lease_id(&id) => Some(id),
            Some(_) => return Err(Denial::InvalidLeaseId),
        };
        let args: T::Args = serde_json::from_value(Value::Object(arguments)).map_err(|e| {
            Denial::invalid_arguments(truncate(&format!("invalid arguments: {e}"), 300))
        })?;
        let digest = args_digest(T::NAME, &args)
            .ok_or_else(|| Denial::invalid_arguments("arguments cannot be canonicalized"))?;
        record.args_digest(&digest);
        let classification = classify_contained(tool, &args).map_err(Denial::Tool)?;
        record.class(classification.class);
        let Some(scope) = self.policy.scope_for(T::NAME, classification.class) else {
            tracing::error!(
                tool = T::NAME,
                class = classification.class.as_str(),
                "policy names no scope for this class of call"
            );
            return Err(Denial::NoPolicy);
        };
        record.scope(scope);
        if !principal.has_scope(scope) {
            return Err(Denial::InsufficientScope {
                scope: scope.to_string(),
                message: format!(
                    "this call needs the `{scope}` scope, which the token does not grant"
                ),
            });
        }
        let action = Action {
            tool: T::NAME,
            class: classification.class,
            granted: ScopeGranted {
                scope: scope.to_string(),
            },
            summary: classification.summary,
            args_digest: digest,
        };
        Ok(Admitted {
            lease_id,
            args,
            plan: classification.plan,
            action,
        })
    }

    /// The HTTP front door's scope challenge (MCP authorization), made by
    /// the same admission the pipeline makes. A caller lacking the scope is
    /// refused here, recorded exactly as the pipeline records it, and the
    /// scope named for the 403. An admitted call is handed on, so the tool
    /// classifies it once. Other refusals (arguments that do not parse…)
    /// are left to the pipeline, which judges and records them itself.
    pub async fn challenge_scope<T: Tool>(
        &self,
        tool: &T,
        transport: &'static str,
        caller: &Authenticated,
        arguments: Option<Map<String, Value>>,
    ) -> Challenge {
        let mut record = CallRecord::new(transport, T::NAME);
        record.caller(caller.principal());
        match self.admit(tool, &mut record, caller, arguments.clone()) {
            Ok(admitted) => {
                let carried: Box<dyn Any + Send> = Box::new(Carried::<T> {
                    subject: caller.principal().subject().to_string(),
                    token_id: caller.principal().token_id().map(String::from),
                    arguments,
                    admitted,
                });
                Challenge::Admitted(Preadmitted(Arc::new(Mutex::new(Some(carried)))))
            }
            Err(Denial::InsufficientScope { scope, message }) => {
                self.metrics
                    .count_call(T::NAME, super::Status::Denied.as_str());
                let denial = Denial::InsufficientScope {
                    scope: scope.clone(),
                    message,
                };
                self.halt(record, denial.into()).await;
                Challenge::Refused(scope)
            }
            Err(_) => Challenge::Undecided,
        }
    }
}

/// What the HTTP scope challenge decided about a call.
pub enum Challenge {
    /// Refused for want of this scope, and recorded: answer 403.
    Refused(String),
    /// Admitted: the pipeline takes this admission instead of making it again.
    Admitted(Preadmitted),
    /// Left to the pipeline, which judges and records the call itself.
    Undecided,
}

/// An admission made by the scope challenge of this very HTTP request,
/// carried in its extensions to the pipeline, which takes it at most once.
#[derive(Clone)]
pub struct Preadmitted(Arc<Mutex<Option<Box<dyn Any + Send>>>>);

struct Carried<T: Tool> {
    subject: String,
    token_id: Option<String>,
    arguments: Option<Map<String, Value>>,
    admitted: Admitted<T>,
}

impl Preadmitted {
    /// The admission, if it was made for this tool, this caller and exactly
    /// these arguments; otherwise the pipeline admits the call afresh.
    pub(super) fn take<T: Tool>(
        &self,
        caller: &Authenticated,
        arguments: Option<&Map<String, Value>>,
    ) -> Option<Admitted<T>> {
        let carried = self.0.lock().ok()?.take()?.downcast::<Carried<T>>().ok()?;
        let principal = caller.principal();
        let empty = Map::new();
        let same = carried.subject == principal.subject()
            && carried.token_id.as_deref() == principal.token_id()
            && carried.arguments.as_ref().unwrap_or(&empty) == arguments.unwrap_or(&empty);
        same.then_some(carried.admitted)
    }
}

pub(super) fn valid_lease_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 over the RFC 8785 form of `{"tool": …, "args": …}`: the digest a
/// lease is bound to and approvers sign.
pub fn args_digest<A: Serialize>(tool: &str, args: &A) -> Option<String> {
    let value = serde_json::json!({ "tool": tool, "args": args });
    crate::audit::canonical_bytes(&value)
        .ok()
        .map(|bytes| crate::sha256_hex(&bytes))
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
