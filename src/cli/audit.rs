//! `dualtrust audit export | checkpoint | verify`.

use crate::app;
use crate::audit::checkpoint::{Checkpoint, NoteVerifier};
use crate::config::Config;

use super::{AuditCommand, BoxError};

pub(super) async fn run(config: Config, command: AuditCommand) -> Result<(), BoxError> {
    use std::io::Write;
    match command {
        AuditCommand::Export { out } => {
            let store = crate::store::Store::open(&config.store_target).await?;
            let mut sink: Box<dyn Write> = match out {
                Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut next = 0u64;
            loop {
                let batch = crate::audit::stored_receipts(&store, next, 1000).await?;
                let Some(last) = batch.last() else { break };
                next = last.body.seq + 1;
                for receipt in &batch {
                    serde_json::to_writer(&mut sink, receipt)?;
                    sink.write_all(b"\n")?;
                }
            }
            sink.flush()?;
        }
        AuditCommand::Checkpoint { witnessed: true } => {
            let store = crate::store::Store::open(&config.store_target).await?;
            let note = store
                .latest_cosigned()
                .await?
                .ok_or("no checkpoint has been cosigned yet (are [[log.witnesses]] configured and reachable?)")?;
            print!("{note}");
        }
        AuditCommand::Checkpoint { witnessed: false } => {
            let store = crate::store::Store::open(&config.store_target).await?;
            let keys = app::open_keys(&config, &store, true).await?;
            let key = keys.signing()?;
            let log = crate::audit::AuditLog::open(store, keys).await?;
            eprintln!(
                "verifier key: {}",
                crate::audit::checkpoint::verifier_key(log.origin(), &key.verifying_key())
            );
            print!("{}", log.current_checkpoint().await?);
        }
        AuditCommand::Verify {
            log,
            jwks,
            origin,
            checkpoint,
            witnesses,
            witnesses_required,
            approvers,
        } => {
            let witnesses = witnesses
                .iter()
                .map(|vkey| {
                    NoteVerifier::parse(vkey)
                        .filter(|v| v.kind == crate::audit::checkpoint::COSIGNATURE_TYPE)
                        .ok_or_else(|| format!("--witness {vkey}: not a witness verifier key"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let required = witnesses_required.unwrap_or(witnesses.len());
            if required > witnesses.len() {
                return Err(format!(
                    "--witnesses-required {required}, but only {} --witness given",
                    witnesses.len()
                )
                .into());
            }
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&jwks)?)?;
            let keys = crate::keys::published_keys_from_jwks(&doc);
            if keys.is_empty() {
                return Err("the JWKS holds no Ed25519 key".into());
            }
            let text = std::fs::read_to_string(&log)?;
            let mut receipts = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                receipts.push(
                    serde_json::from_str(line)
                        .map_err(|e| format!("line {}: not a receipt: {e}", n + 1))?,
                );
            }
            let logged = approvers.as_ref().map(|_| receipts.clone());
            let tree = crate::audit::verify_log(receipts, &keys)
                .map_err(|(seq, error)| format!("receipt {seq}: {error}"))?;
            println!(
                "ok: {} receipts verified (signatures, sequence, chain); RFC 6962 root {}",
                tree.len(),
                tree.root(tree.len()).map(hex::encode).unwrap_or_default()
            );
            if let (Some(path), Some(logged)) = (&approvers, &logged) {
                let document: crate::gate::logged_approvals::ApproversDocument =
                    serde_json::from_str(&std::fs::read_to_string(path)?).map_err(|e| {
                        format!("{}: not an approvers document: {e}", path.display())
                    })?;
                let checked =
                    crate::gate::logged_approvals::verify_logged_approvals(logged, &document)
                        .map_err(|(seq, error)| format!("receipt {seq}: {error}"))?;
                println!(
                    "ok: {} approvals re-checked ({} Ed25519, {} passkey)",
                    checked.by_key + checked.by_passkey,
                    checked.by_key,
                    checked.by_passkey
                );
            }
            for path in checkpoint {
                let note = std::fs::read_to_string(&path)?;
                // The signature's key hash covers the origin, so a note's own
                // origin is only trusted as far as a key in the JWKS signed it.
                let named = origin
                    .clone()
                    .unwrap_or_else(|| note.lines().next().unwrap_or_default().to_string());
                let cp = Checkpoint::verify(&note, &named, &keys).map_err(|e| {
                    format!(
                        "{}: not a checkpoint of {named} signed by a key in the JWKS: {e}",
                        path.display()
                    )
                })?;
                if required > 0 {
                    let by = Checkpoint::cosigners(&note, &named, &witnesses)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if by.len() < required {
                        return Err(format!(
                            "{}: cosigned by {} of the {required} witnesses required ({}); a checkpoint the witnesses did not see may be a split view",
                            path.display(),
                            by.len(),
                            if by.is_empty() { "none".to_string() } else { by.join(", ") }
                        )
                        .into());
                    }
                    println!(
                        "ok: checkpoint {} is cosigned by {}",
                        path.display(),
                        by.join(", ")
                    );
                }
                match tree.root(cp.size) {
                    Some(root) if root == cp.root => println!("ok: checkpoint {} (size {}) is a prefix of this log", path.display(), cp.size),
                    Some(_) => return Err(format!("{}: the log was rewritten: its first {} receipts do not match the checkpoint", path.display(), cp.size).into()),
                    None => return Err(format!("{}: the log was truncated: it holds {} receipts, the checkpoint {}", path.display(), tree.len(), cp.size).into()),
                }
            }
        }
    }
    Ok(())
}
