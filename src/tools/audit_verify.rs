//! `audit.verify`: checks a receipt (hash, signature, presence in the log,
//! link to its predecessor) or a passport (signature, issuer, expiry) and
//! says exactly which check failed.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{AuditLog, Receipt};
use crate::config::ScopeConfig;
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};
use crate::tools::passport::verify_passport;

/// Largest passport accepted for verification.
const MAX_PASSPORT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyArgs {
    /// A receipt exactly as returned in a tool result's `receipt` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// A passport (compact JWS) returned by `passport.issue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passport: Option<String>,
}

pub struct AuditVerify {
    log: Arc<AuditLog>,
    passport_issuer: String,
    scopes: ScopeConfig,
}

impl AuditVerify {
    pub fn new(log: Arc<AuditLog>, passport_issuer: String, scopes: ScopeConfig) -> Self {
        Self {
            log,
            passport_issuer,
            scopes,
        }
    }
}

impl Tool for AuditVerify {
    const NAME: &'static str = "audit.verify";
    const TITLE: &'static str = "Verify a receipt or passport";
    const DESCRIPTION: &'static str = "Verifies an audit receipt (RFC 8785 canonical hash, Ed25519 signature, \
        presence in the log and its link to the previous receipt) or a passport (signature, issuer, expiry). \
        Pass exactly one of `receipt` or `passport`. Reports each check and which one failed. Needs `audit:read`.";
    const READ_ONLY: bool = true;
    type Args = AuditVerifyArgs;

    fn classify(&self, args: &AuditVerifyArgs) -> Result<Classification, Refusal> {
        let what = match (&args.receipt, &args.passport) {
            (Some(r), None) => format!("verify receipt #{}", r.body.seq),
            (None, Some(p)) if p.len() <= MAX_PASSPORT_BYTES => "verify a passport".to_string(),
            (None, Some(_)) => {
                return Err(Refusal::new(
                    "passport_too_large",
                    format!("passports are limited to {MAX_PASSPORT_BYTES} bytes"),
                ));
            }
            _ => {
                return Err(Refusal::new(
                    "invalid_arguments",
                    "pass exactly one of `receipt` or `passport`",
                ));
            }
        };
        Ok(Classification {
            class: Class::Read,
            scope: self.scopes.audit_read.clone(),
            summary: what,
        })
    }

    async fn execute(&self, call: Authorized<'_, AuditVerifyArgs>) -> Result<Executed, Refusal> {
        let args = call.args();
        if let Some(receipt) = &args.receipt {
            let checks = self
                .log
                .check(receipt)
                .await
                .map_err(|e| Refusal::new("store_unavailable", e.to_string()))?;
            let failed = checks.iter().find_map(|(_, r)| r.err());
            let listed: Vec<_> = checks
                .iter()
                .map(|(name, r)| match r {
                    Ok(()) => json!({ "check": name, "ok": true }),
                    Err(e) => json!({ "check": name, "ok": false, "code": e.code(), "message": e.to_string() }),
                })
                .collect();
            let result = json!({
                "kind": "receipt",
                "seq": receipt.body.seq,
                "valid": failed.is_none(),
                "failed": failed.map(|e| e.code()),
                "checks": listed,
            });
            let outcome =
                json!({ "kind": "receipt", "seq": receipt.body.seq, "valid": failed.is_none() });
            return Ok(Executed { result, outcome });
        }
        let token = args.passport.as_deref().unwrap_or_default();
        let verdict = verify_passport(
            token,
            &self.log.server_keys(),
            &self.passport_issuer,
            crate::now_unix(),
        );
        let result = match &verdict {
            Ok(claims) => {
                json!({ "kind": "passport", "valid": true, "failed": null, "claims": claims })
            }
            Err(e) => {
                json!({ "kind": "passport", "valid": false, "failed": e.code(), "message": e.to_string() })
            }
        };
        let outcome = json!({ "kind": "passport", "valid": verdict.is_ok() });
        Ok(Executed { result, outcome })
    }
}
