//! `audit.verify`: checks a receipt (hash, signature, presence in the log,
//! link to its predecessor, RFC 6962 inclusion against a signed checkpoint),
//! a checkpoint you hold (consistency with the log now: nothing rewritten),
//! a range of the log, or a passport — and says exactly which check failed.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::merkle;
use crate::audit::{AuditLog, Chain, LogProof, Receipt, ReceiptCheckError};
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};
use crate::tools::passport::verify_passport;

/// Largest passport or checkpoint accepted for verification.
const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Receipts verified by one `range` call at most.
const MAX_RANGE: u64 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogRange {
    /// First sequence number, inclusive.
    pub from: u64,
    /// Last sequence number, exclusive.
    pub to: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyArgs {
    /// A receipt exactly as returned in a tool result's `receipt` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// With `receipt`: the `log` object returned beside it, to check the
    /// inclusion proof against its own checkpoint (default: a fresh proof
    /// against the current checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogProof>,
    /// A passport (compact JWS) returned by `passport.issue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passport: Option<String>,
    /// A signed checkpoint you hold: proves the log now (or at
    /// `checkpoint_new`) extends it, i.e. nothing before it was rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// With `checkpoint`: the later checkpoint to compare against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_new: Option<String>,
    /// Verify a range of the log: signatures, sequence, chain and tree leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<LogRange>,
}

pub struct AuditVerify {
    log: Arc<AuditLog>,
    passports: crate::config::PassportConfig,
}

impl AuditVerify {
    pub fn new(log: Arc<AuditLog>, passports: crate::config::PassportConfig) -> Self {
        Self { log, passports }
    }

    async fn verify_receipt(
        &self,
        receipt: &Receipt,
        proof: Option<&LogProof>,
    ) -> Result<Value, Refusal> {
        let checks = self.log.check(receipt, proof).await.map_err(unavailable)?;
        let failed = checks.iter().find_map(|(_, r)| r.err());
        let listed: Vec<_> = checks
            .iter()
            .map(|(name, r)| match r {
                Ok(()) => json!({ "check": name, "ok": true }),
                Err(e) => json!({ "check": name, "ok": false, "code": e.code(), "message": e.to_string() }),
            })
            .collect();
        Ok(json!({
            "kind": "receipt",
            "seq": receipt.body.seq,
            "valid": failed.is_none(),
            "failed": failed.map(|e| e.code()),
            "checks": listed,
        }))
    }

    async fn verify_consistency(
        &self,
        old_note: &str,
        new_note: Option<&str>,
    ) -> Result<Value, Refusal> {
        let invalid = |which: &str, e: crate::audit::checkpoint::CheckpointError| json!({ "kind": "consistency", "valid": false, "failed": e.code(), "message": format!("{which}: {e}") });
        let old = match self.log.open_checkpoint(old_note) {
            Ok(c) => c,
            Err(e) => return Ok(invalid("checkpoint", e)),
        };
        let new_note = match new_note {
            Some(n) => n.to_string(),
            None => self.log.current_checkpoint().await.map_err(unavailable)?,
        };
        let new = match self.log.open_checkpoint(&new_note) {
            Ok(c) => c,
            Err(e) => return Ok(invalid("checkpoint_new", e)),
        };
        if old.size > new.size {
            return Ok(
                json!({ "kind": "consistency", "valid": false, "failed": "order", "message": "checkpoint is larger than checkpoint_new" }),
            );
        }
        // The proof comes from the tree; the tree is only worth it while the
        // stored receipts still derive to it.
        if let Some(failure) = self.log.scrub().await.map_err(unavailable)? {
            return Ok(json!({
                "kind": "consistency", "valid": false, "failed": ReceiptCheckError::StoreMismatch.code(),
                "message": format!("{}: receipt {} {}", ReceiptCheckError::StoreMismatch, failure.seq, failure.problem),
                "seq": failure.seq,
            }));
        }
        let Some(proof) = self
            .log
            .prove_consistency(old.size, new.size)
            .await
            .map_err(unavailable)?
        else {
            return Ok(
                json!({ "kind": "consistency", "valid": false, "failed": "unknown_size", "message": "the log is smaller than checkpoint_new: it was truncated" }),
            );
        };
        let valid = merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof);
        Ok(json!({
            "kind": "consistency",
            "valid": valid,
            "failed": if valid { Value::Null } else { json!("consistency") },
            "message": if valid { "the later checkpoint extends the earlier one: nothing was rewritten" } else { "the log was rewritten: the earlier checkpoint is not a prefix of the later one" },
            "old_size": old.size,
            "new_size": new.size,
            "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            "checkpoint_new": new_note,
        }))
    }

    async fn verify_range(&self, range: &LogRange) -> Result<Value, Refusal> {
        let keys = self.log.server_keys();
        let store_err = unavailable;
        let mut chain = match range.from.checked_sub(1) {
            None => Chain::genesis(),
            Some(before) => match self.log_receipt(before).await? {
                Some(r) => Chain::after(range.from, &r.hash),
                None => return Ok(range_failure(before, ReceiptCheckError::NotInLog)),
            },
        };
        let leaves = self
            .log
            .leaves(range.from, range.to)
            .await
            .map_err(store_err)?;
        let mut seq = range.from;
        while seq < range.to {
            let page = self
                .log_page(seq, (range.to - seq).min(1000))
                .await
                .map_err(store_err)?;
            if page.is_empty() {
                return Ok(range_failure(seq, ReceiptCheckError::NotInLog));
            }
            for receipt in page {
                if receipt.body.seq != seq {
                    return Ok(range_failure(seq, ReceiptCheckError::NotInLog));
                }
                if let Err(e) = receipt.check_signature(&keys) {
                    return Ok(range_failure(seq, e));
                }
                if let Err(e) = chain.link(&receipt) {
                    return Ok(range_failure(seq, e));
                }
                // The tree the checkpoints sign must hold exactly this receipt.
                let leaf = crate::audit::leaf_hash_of(&receipt.body).ok();
                let in_tree = usize::try_from(seq - range.from)
                    .ok()
                    .and_then(|i| leaves.get(i));
                if leaf.is_none() || leaf.as_ref() != in_tree {
                    return Ok(range_failure(seq, ReceiptCheckError::InclusionFailed));
                }
                seq += 1;
            }
        }
        Ok(
            json!({ "kind": "range", "valid": true, "failed": null, "from": range.from, "to": range.to, "verified": range.to - range.from }),
        )
    }

    async fn log_receipt(&self, seq: u64) -> Result<Option<Receipt>, Refusal> {
        Ok(self
            .log_page(seq, 1)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next()
            .filter(|r| r.body.seq == seq))
    }

    async fn log_page(
        &self,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Receipt>, crate::store::StoreError> {
        self.log
            .receipts(from, u32::try_from(limit).unwrap_or(1000))
            .await
    }
}

fn range_failure(seq: u64, e: ReceiptCheckError) -> Value {
    json!({ "kind": "range", "valid": false, "failed": e.code(), "seq": seq, "message": e.to_string() })
}

fn unavailable(e: crate::store::StoreError) -> Refusal {
    Refusal::new("store_unavailable", e.to_string())
}

impl Tool for AuditVerify {
    const NAME: &'static str = "audit.verify";
    const TITLE: &'static str = "Verify receipts, checkpoints, the log, passports";
    const DESCRIPTION: &'static str = "Verifies, and says exactly which check failed: a `receipt` (RFC 8785 hash, Ed25519 \
        signature, present in the log, linked to its predecessor, RFC 6962 inclusion against a signed checkpoint — pass the \
        `log` object returned with it to use its own checkpoint); a `checkpoint` you hold (RFC 6962 consistency with the \
        current log or `checkpoint_new`: proves nothing was rewritten); a `range` {from, to} of the log; or a `passport`. \
        Pass exactly one of receipt, checkpoint, range, passport. Needs `audit:read`.";
    const READ_ONLY: bool = true;
    type Args = AuditVerifyArgs;
    type Plan = ();

    fn classify(&self, args: &AuditVerifyArgs) -> Result<Classification, Refusal> {
        let modes = [
            args.receipt.is_some(),
            args.passport.is_some(),
            args.checkpoint.is_some(),
            args.range.is_some(),
        ];
        if modes.iter().filter(|m| **m).count() != 1
            || (args.log.is_some() && args.receipt.is_none())
            || (args.checkpoint_new.is_some() && args.checkpoint.is_none())
        {
            return Err(Refusal::new(
                "invalid_arguments",
                "pass exactly one of `receipt` (optionally with `log`), `checkpoint` (optionally with `checkpoint_new`), `range` or `passport`",
            ));
        }
        let too_long = [&args.passport, &args.checkpoint, &args.checkpoint_new]
            .iter()
            .any(|t| t.as_ref().is_some_and(|t| t.len() > MAX_TEXT_BYTES));
        if too_long {
            return Err(Refusal::new(
                "too_large",
                format!("passports and checkpoints are limited to {MAX_TEXT_BYTES} bytes"),
            ));
        }
        if let Some(range) = &args.range
            && (range.from >= range.to || range.to - range.from > MAX_RANGE)
        {
            return Err(Refusal::new(
                "invalid_range",
                format!("range needs from < to and at most {MAX_RANGE} receipts"),
            ));
        }
        let summary = match (&args.receipt, &args.range) {
            (Some(r), _) => format!("verify receipt #{}", r.body.seq),
            (_, Some(r)) => format!("verify log receipts {}..{}", r.from, r.to),
            _ if args.checkpoint.is_some() => {
                "verify a checkpoint's consistency with the log".to_string()
            }
            _ => "verify a passport".to_string(),
        };
        Ok(Classification {
            class: Class::Read,
            summary,
            plan: (),
        })
    }

    async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
        let args = call.args();
        let result = if let Some(receipt) = &args.receipt {
            self.verify_receipt(receipt, args.log.as_ref()).await?
        } else if let Some(old) = &args.checkpoint {
            self.verify_consistency(old, args.checkpoint_new.as_deref())
                .await?
        } else if let Some(range) = &args.range {
            self.verify_range(range).await?
        } else {
            let token = args.passport.as_deref().unwrap_or_default();
            match verify_passport(
                token,
                &self.log.server_keys(),
                &self.passports.issuer,
                self.passports.max_ttl_s,
                crate::now_unix(),
            ) {
                Ok(claims) => {
                    json!({ "kind": "passport", "valid": true, "failed": null, "claims": claims })
                }
                Err(e) => {
                    json!({ "kind": "passport", "valid": false, "failed": e.code(), "message": e.to_string() })
                }
            }
        };
        let outcome =
            json!({ "kind": result["kind"], "valid": result["valid"], "failed": result["failed"] });
        Ok(Executed { result, outcome })
    }
}
