//! Every way a call, or a request at the front door, is turned away. Each
//! variant has one code: the caller reads it in `error.code`, and the
//! receipt records it as `reason`, so clients, metrics and auditors share
//! one vocabulary. `docs/refusals.md` lists them for operators.

use crate::identity::IdentityError;

use super::{INTERNAL, Refusal, Status};

#[derive(Debug, Clone)]
pub enum Denial {
    /// The token did not verify, has expired, or was revoked.
    Identity(IdentityError),

    // The HTTP front door, before any tool is reached.
    /// Zero or two `Host` headers, or a request target naming another host.
    AmbiguousHost,
    HostNotAllowed,
    OriginNotAllowed,
    PayloadTooLarge,
    BodyTimeout,
    /// A body that is not one JSON-RPC message this server answers; the
    /// code says which rule it broke (`malformed_json`, `invalid_jsonrpc`…).
    MalformedMessage(&'static str),
    /// An approval submission that is not the expected JSON object.
    InvalidRequest,
    UnknownTool,
    /// `resources/read` of a URI this server does not serve.
    UnknownResource,

    // Admission: the call's arguments, class and scope.
    InvalidLeaseId,
    InvalidArguments(String),
    /// The token lacks the scope policy names for this call (over HTTP,
    /// a 403 challenge naming `scope`).
    InsufficientScope {
        scope: String,
        message: String,
    },
    /// The classifier returned a class policy has no scope for.
    NoPolicy,
    /// The tool's own classifier refused; the code is the tool's.
    Tool(Refusal),
    RateLimited {
        retry_after_s: u64,
    },

    // Leases and quorum.
    NoApprovers {
        summary: String,
    },
    TooManyOpenLeases {
        limit: u32,
    },
    LeaseNotFound,
    LeaseWrongSubject,
    LeaseWrongTool,
    LeaseWrongArguments,
    LeaseConsumed,
    LeaseRevoked,
    LeaseExpired,
    /// An eligible approver refused the held call, with a signed reason.
    Rejected {
        by: String,
        reason: String,
    },

    // The server's own failures: errors, not the caller's fault.
    StoreUnavailable,
    /// The shared rate-limit backend cannot be reached and
    /// `limits.on_backend_failure` is `closed`.
    LimitsUnavailable,
    RandomUnavailable,
    /// The tool ran and failed; the code is the tool's.
    Failed(Refusal),
    /// A panic, contained; the text stays in the operator's log.
    Internal,
    AuditUnavailable {
        consequence: &'static str,
    },
    AuditStoreTampered {
        seq: u64,
        problem: String,
        consequence: &'static str,
    },
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Identity(e) => e.code(),
            Self::AmbiguousHost => "ambiguous_host",
            Self::HostNotAllowed => "host_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::MalformedMessage(code) => code,
            Self::InvalidRequest => "invalid_request",
            Self::UnknownTool => "unknown_tool",
            Self::UnknownResource => "unknown_resource",
            Self::InvalidLeaseId => "invalid_lease_id",
            Self::InvalidArguments(_) => "invalid_arguments",
            Self::InsufficientScope { .. } => INSUFFICIENT_SCOPE,
            Self::NoPolicy => "no_policy",
            Self::Tool(refusal) | Self::Failed(refusal) => refusal.code,
            Self::RateLimited { .. } => "rate_limited",
            Self::NoApprovers { .. } => "no_approvers",
            Self::TooManyOpenLeases { .. } => "too_many_open_leases",
            Self::LeaseNotFound => "lease_not_found",
            Self::LeaseWrongSubject => "lease_wrong_subject",
            Self::LeaseWrongTool => "lease_wrong_tool",
            Self::LeaseWrongArguments => "lease_wrong_arguments",
            Self::LeaseConsumed => "lease_consumed",
            Self::LeaseRevoked => "lease_revoked",
            Self::LeaseExpired => "lease_expired",
            Self::Rejected { .. } => "rejected",
            Self::StoreUnavailable => "store_unavailable",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::RandomUnavailable => "random_unavailable",
            Self::Internal => INTERNAL,
            Self::AuditUnavailable { .. } => "audit_unavailable",
            Self::AuditStoreTampered { .. } => "audit_store_tampered",
        }
    }

    /// `denied` when the caller asked for something it may not have;
    /// `error` when the server failed.
    pub fn status(&self) -> Status {
        match self {
            Self::Tool(refusal) if refusal.code == INTERNAL => Status::Error,
            Self::NoPolicy
            | Self::StoreUnavailable
            | Self::LimitsUnavailable
            | Self::RandomUnavailable
            | Self::Failed(_)
            | Self::Internal
            | Self::AuditUnavailable { .. }
            | Self::AuditStoreTampered { .. } => Status::Error,
            _ => Status::Denied,
        }
    }

    /// The HTTP status of a front-door refusal. A refusal inside a tool
    /// call is a tool result (200) on every transport, except the scope
    /// challenge, which MCP authorization answers with 403.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Identity(IdentityError::DuplicateCredentials) => 400,
            Self::Identity(IdentityError::Unavailable) => 503,
            Self::Identity(_) => 401,
            Self::AmbiguousHost | Self::MalformedMessage(_) | Self::InvalidRequest => 400,
            Self::HostNotAllowed | Self::OriginNotAllowed | Self::InsufficientScope { .. } => 403,
            Self::PayloadTooLarge => 413,
            Self::BodyTimeout => 408,
            _ => 200,
        }
    }

    /// What the caller is told: enough to act on, nothing about the host.
    pub fn message(&self) -> String {
        match self {
            Self::Identity(e) => e.to_string(),
            Self::AmbiguousHost => "the request does not name exactly one host".into(),
            Self::HostNotAllowed => "Host not allowed".into(),
            Self::OriginNotAllowed => "Origin not allowed".into(),
            Self::PayloadTooLarge => "the request body exceeds the configured limit".into(),
            Self::BodyTimeout => "the request body did not arrive in time".into(),
            Self::MalformedMessage(code) => format!("the message was refused: {code}"),
            Self::InvalidRequest => {
                "expected {\"lease_id\", \"approver_id\", \"signature\"}, and \"reason\" for a rejection".into()
            }
            Self::UnknownTool => "no tool with this name exists".into(),
            Self::UnknownResource => "no resource with this URI exists".into(),
            Self::InvalidLeaseId => {
                "lease_id must be the 32-character hex id of an issued lease".into()
            }
            Self::InvalidArguments(why) => why.clone(),
            Self::InsufficientScope { message, .. } => message.clone(),
            Self::NoPolicy => {
                "the server's policy has no rule for this class of call; it was refused".into()
            }
            Self::Tool(refusal) | Self::Failed(refusal) => refusal.message.clone(),
            Self::RateLimited { retry_after_s } => {
                format!("too many calls: retry in {retry_after_s} s")
            }
            Self::NoApprovers { summary } => format!(
                "approval required: {summary}; no approvers are registered on this server, so destructive calls cannot run"
            ),
            Self::TooManyOpenLeases { limit } => format!(
                "this subject already holds {limit} open leases; redeem or let some expire first"
            ),
            Self::LeaseNotFound => "no lease with this id was issued".into(),
            Self::LeaseWrongSubject => "this lease was issued to another subject".into(),
            Self::LeaseWrongTool => "this lease was issued for another tool".into(),
            Self::LeaseWrongArguments => {
                "this lease was issued for other arguments; repeat the call exactly".into()
            }
            Self::LeaseConsumed => "this lease has already been used".into(),
            Self::LeaseRevoked => "this lease is no longer valid".into(),
            Self::Rejected { by, reason } => {
                format!("approver `{by}` rejected this call: {reason}")
            }
            Self::LeaseExpired => {
                "this lease has expired; make the call again to get a new one".into()
            }
            Self::StoreUnavailable => "the state store is unavailable; nothing ran".into(),
            Self::LimitsUnavailable => {
                "the shared rate limit cannot be checked right now, so nothing ran; retry".into()
            }
            Self::RandomUnavailable => "random source unavailable".into(),
            Self::Internal => {
                "the server failed on this call; it was recorded and nothing else ran".into()
            }
            Self::AuditUnavailable { consequence } => {
                format!("the audit log is unavailable; {consequence}")
            }
            Self::AuditStoreTampered {
                seq,
                problem,
                consequence,
            } => format!(
                "the audit store no longer matches the log this server signed (receipt {seq}: {problem}); {consequence}, and nothing is until an operator restores the store"
            ),
        }
    }

    pub(super) fn invalid_arguments(why: impl Into<String>) -> Self {
        Self::InvalidArguments(why.into())
    }
}

/// The code of a call whose token lacks the scope its class needs.
pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";

impl From<IdentityError> for Denial {
    fn from(e: IdentityError) -> Self {
        Self::Identity(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_server_failures_are_errors() {
        let all = [
            Denial::AmbiguousHost,
            Denial::HostNotAllowed,
            Denial::OriginNotAllowed,
            Denial::PayloadTooLarge,
            Denial::BodyTimeout,
            Denial::InvalidRequest,
            Denial::UnknownTool,
            Denial::UnknownResource,
            Denial::InvalidLeaseId,
            Denial::InvalidArguments("why".into()),
            Denial::InsufficientScope {
                scope: "db:read".into(),
                message: "why".into(),
            },
            Denial::NoPolicy,
            Denial::RateLimited { retry_after_s: 1 },
            Denial::NoApprovers {
                summary: String::new(),
            },
            Denial::TooManyOpenLeases { limit: 1 },
            Denial::LeaseNotFound,
            Denial::LeaseWrongSubject,
            Denial::LeaseWrongTool,
            Denial::LeaseWrongArguments,
            Denial::LeaseConsumed,
            Denial::LeaseRevoked,
            Denial::LeaseExpired,
            Denial::Rejected {
                by: "alice".into(),
                reason: "no".into(),
            },
            Denial::StoreUnavailable,
            Denial::LimitsUnavailable,
            Denial::RandomUnavailable,
            Denial::Internal,
            Denial::AuditUnavailable { consequence: "" },
            Denial::AuditStoreTampered {
                seq: 0,
                problem: String::new(),
                consequence: "",
            },
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(Denial::code).collect();
        assert_eq!(codes.len(), all.len(), "two variants share a code");
        for denial in &all {
            let code = denial.code();
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert!(!denial.message().is_empty(), "{code}");
        }
        assert_eq!(Denial::Internal.status(), Status::Error);
        assert_eq!(Denial::LeaseExpired.status(), Status::Denied);
        assert_eq!(
            Denial::Tool(Refusal::new(INTERNAL, "x")).status(),
            Status::Error
        );
        assert_eq!(
            Denial::Tool(Refusal::new("path_outside_roots", "x")).status(),
            Status::Denied
        );
        assert_eq!(
            Denial::Identity(IdentityError::Expired).code(),
            "expired",
            "identity codes pass through"
        );
    }
}
