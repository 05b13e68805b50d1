//! `dualtrust approvals list`, `approve` and `reject`: beside the server,
//! on its store, through the lighter [`Desk`] (no tools, no target database,
//! no identity provider).

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::app::Desk;
use crate::config::Config;
use crate::keys::KeyPair;
use crate::store::Lease;

use super::BoxError;

pub(super) async fn list(config: &Config) -> Result<(), BoxError> {
    let desk = Desk::open(config).await?;
    let now = crate::now_unix();
    let pending = desk.store.pending_leases(now).await?;
    if pending.is_empty() {
        println!("no calls are waiting for approval");
    }
    for lease in pending {
        let stored = desk.store.approvals(&lease.id).await?;
        let approved = desk.gate.approvers().tally(&lease, &stored);
        println!(
            "{}  {}/{} approvals  expires in {}s  requested by {}\n    {}",
            lease.id,
            approved.len(),
            lease.quorum_k,
            lease.expires_at.saturating_sub(now),
            lease.subject,
            lease.summary
        );
    }
    Ok(())
}

/// Shows the approver what they are about to sign, from the server's
/// record, and asks (unless `yes`).
async fn review(desk: &Desk, lease_id: &str, question: &str, yes: bool) -> Result<Lease, BoxError> {
    let lease = desk
        .store
        .lease(lease_id)
        .await?
        .ok_or("no lease with this id exists")?;
    let now = crate::now_unix();
    let stored = desk.store.approvals(&lease.id).await?;
    let approved: Vec<String> = desk
        .gate
        .approvers()
        .tally(&lease, &stored)
        .into_iter()
        .map(|a| a.approver().to_string())
        .collect();
    let mut out = std::io::stderr().lock();
    writeln!(out, "lease        {}", lease.id)?;
    writeln!(
        out,
        "state        {} ({} of {} approvals so far{})",
        lease.state.as_str(),
        approved.len(),
        lease.quorum_k,
        if approved.is_empty() {
            String::new()
        } else {
            format!(": {}", approved.join(", "))
        }
    )?;
    writeln!(out, "requested by {}", lease.subject)?;
    writeln!(out, "tool         {}", lease.tool)?;
    writeln!(out, "will         {}", lease.summary)?;
    writeln!(out, "arguments    {}", lease.args_json)?;
    writeln!(
        out,
        "expires in   {} s (unix {})",
        lease.expires_at.saturating_sub(now),
        lease.expires_at
    )?;
    if !yes {
        write!(out, "{question} [y/N] ")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err("nothing was signed".into());
        }
    }
    Ok(lease)
}

fn sign(key: &std::path::Path, message: &str) -> Result<String, BoxError> {
    let (pair, _) = KeyPair::load_or_create(key, false)?;
    Ok(URL_SAFE_NO_PAD.encode(pair.sign(message.as_bytes())))
}

pub(super) async fn approve(
    config: &Config,
    lease_id: &str,
    approver: &str,
    key: &std::path::Path,
    yes: bool,
) -> Result<(), BoxError> {
    let desk = Desk::open(config).await?;
    let lease = review(&desk, lease_id, "Approve this exact call?", yes).await?;
    let signature = sign(key, &crate::gate::quorum::approval_message(&lease))?;
    let status = desk
        .gate
        .submit_approval("cli", None, &lease.id, approver, &signature)
        .await
        .map_err(|e| format!("approval not recorded: {e}"))?;
    println!(
        "approval recorded: {} of {} for lease {}{}",
        status.approvals,
        status.k,
        status.lease_id,
        if status.complete {
            "; the call can now be repeated with this lease_id"
        } else {
            ""
        }
    );
    Ok(())
}

pub(super) async fn reject(
    config: &Config,
    lease_id: &str,
    approver: &str,
    key: &std::path::Path,
    reason: &str,
    yes: bool,
) -> Result<(), BoxError> {
    let desk = Desk::open(config).await?;
    let lease = review(&desk, lease_id, "Reject this call?", yes).await?;
    let signature = sign(key, &crate::gate::quorum::rejection_message(&lease, reason))?;
    let status = desk
        .gate
        .submit_rejection("cli", None, &lease.id, approver, &signature, reason)
        .await
        .map_err(|e| format!("rejection not recorded: {e}"))?;
    println!(
        "lease {} rejected by {}: the call will not run",
        status.lease_id, status.rejected_by
    );
    Ok(())
}
