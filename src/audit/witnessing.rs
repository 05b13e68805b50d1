//! Taking the log's checkpoints to its witnesses (C2SP `tlog-witness`
//! `add-checkpoint`), and keeping what they cosign.
//!
//! Every `log.witness_interval_ms`, when the log has grown, the newest
//! checkpoint goes to each configured witness with an RFC 6962 consistency
//! proof from the size that witness cosigned last. A witness that has seen a
//! different size says so (409 with its size); the proof is rebuilt from
//! there once. The cosignatures that verify against the configured witness
//! key are appended to the checkpoint, which is kept in the store: clients
//! get it from `dualtrust audit checkpoint --witnessed` and check it with
//! `audit verify --witness`. Witnessing is off the call path: no call
//! waits for a witness, and a witness that is down delays only cosigning.
//! Every replica does this; the witness orders their submissions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::AuditLog;
use super::checkpoint::{COSIGNATURE_TYPE, Checkpoint, NoteVerifier};
use crate::config::WitnessEndpoint;
use crate::store::Store;

/// How long one witness may take to answer.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);

/// One witness as the log talks to it.
pub struct Witness {
    submit: String,
    verifier: NoteVerifier,
    /// The size this witness cosigned last, as far as we know.
    known: std::sync::Mutex<Option<u64>>,
}

impl Witness {
    /// The configured witnesses; an error names the bad entry.
    pub fn from_config(endpoints: &[WitnessEndpoint]) -> Result<Vec<Self>, String> {
        endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let verifier = NoteVerifier::parse(&endpoint.vkey)
                    .filter(|v| v.kind == COSIGNATURE_TYPE)
                    .ok_or_else(|| {
                        format!("log.witnesses[{i}].vkey: not a cosigner verifier key (name+hash+base64(0x04||key))")
                    })?;
                Ok(Self {
                    submit: format!("{}/add-checkpoint", endpoint.url.trim_end_matches('/')),
                    verifier,
                    known: std::sync::Mutex::new(None),
                })
            })
            .collect()
    }

    fn known(&self) -> Option<u64> {
        *self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_known(&self, size: u64) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(size);
    }

    /// This witness's cosignature line(s) for `note`, if it gives them.
    async fn cosign(
        &self,
        http: &reqwest::Client,
        log: &AuditLog,
        note: &str,
        checkpoint: &Checkpoint,
    ) -> Option<String> {
        for _ in 0..2 {
            let old = self.known().unwrap_or(0);
            if old > checkpoint.size {
                // It says it cosigned a larger tree than this replica's
                // view: ask afresh next time rather than trust that forever.
                *self.known.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return None;
            }
            let proof = if old == 0 || old == checkpoint.size {
                Vec::new()
            } else {
                log.prove_consistency(old, checkpoint.size).await.ok()??
            };
            let mut body = format!("old {old}\n");
            for hash in &proof {
                body.push_str(&STANDARD.encode(hash));
                body.push('\n');
            }
            body.push('\n');
            body.push_str(note);
            let response = match http.post(&self.submit).body(body).send().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(witness = self.verifier.name, error = %e, "a witness could not be reached");
                    return None;
                }
            };
            let status = response.status();
            let Some(text) = bounded_text(response).await else {
                tracing::warn!(
                    witness = self.verifier.name,
                    "a witness answered with too much"
                );
                return None;
            };
            match status.as_u16() {
                200 => {
                    // Only the lines that are this witness's cosignature.
                    let lines: String = text
                        .lines()
                        .filter(|l| l.starts_with('\u{2014}'))
                        .map(|l| format!("{l}\n"))
                        .filter(|line| {
                            Checkpoint::cosigners(
                                &format!("{note}{line}"),
                                &checkpoint.origin,
                                std::slice::from_ref(&self.verifier),
                            )
                            .is_ok_and(|names| !names.is_empty())
                        })
                        .collect();
                    if !lines.is_empty() {
                        self.set_known(checkpoint.size);
                        return Some(lines);
                    }
                    tracing::warn!(
                        witness = self.verifier.name,
                        "a witness answered without a cosignature by its configured key"
                    );
                    return None;
                }
                409 => match text.trim().parse::<u64>() {
                    Ok(size) if Some(size) != self.known() => self.set_known(size),
                    _ => {
                        // It holds another tree at this very size: the log
                        // it saw is not the log this replica sees.
                        tracing::error!(
                            witness = self.verifier.name,
                            size = checkpoint.size,
                            "a witness refused this log's checkpoint as inconsistent with what it cosigned"
                        );
                        return None;
                    }
                },
                _ => {
                    tracing::error!(
                        witness = self.verifier.name,
                        status = status.as_u16(),
                        answer = text.chars().take(200).collect::<String>(),
                        "a witness refused this log's checkpoint"
                    );
                    return None;
                }
            }
        }
        None
    }
}

/// The largest witness answer read: cosignature lines or a size.
const MAX_ANSWER: usize = 16 * 1024;

/// The answer's text, or `None` past [`MAX_ANSWER`] bytes (or unreadable).
async fn bounded_text(mut response: reqwest::Response) -> Option<String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).ok()
}

/// While serving: takes the newest checkpoint to every witness each
/// `every`, when the log grew, and keeps it with the cosignatures it got.
pub fn spawn(log: Arc<AuditLog>, store: Store, witnesses: Vec<Witness>, every: Duration) {
    if witnesses.is_empty() {
        return;
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WITNESS_TIMEOUT)
        .build()
        .unwrap_or_default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The size every witness has cosigned: nothing new to ask for.
        let mut complete_at = None;
        loop {
            tick.tick().await;
            let note = match log.current_checkpoint().await {
                Ok(note) => note,
                Err(e) => {
                    tracing::warn!(error = %e, "no checkpoint to take to the witnesses");
                    continue;
                }
            };
            let Ok((checkpoint, _)) = Checkpoint::parse(&note, log.origin()) else {
                continue;
            };
            if complete_at == Some(checkpoint.size) {
                continue;
            }
            let answers = futures_util::future::join_all(
                witnesses
                    .iter()
                    .map(|w| w.cosign(&http, &log, &note, &checkpoint)),
            )
            .await;
            let complete = answers.iter().all(Option::is_some);
            let answers_count = answers.iter().filter(|a| a.is_some()).count() as u64;
            let lines: String = answers.into_iter().flatten().collect();
            if lines.is_empty() {
                continue;
            }
            let cosigners = answers_count;
            match store
                .record_cosigned(checkpoint.size, cosigners, &format!("{note}{lines}"))
                .await
            {
                Ok(()) => {
                    complete_at = complete.then_some(checkpoint.size);
                    let status = log.status();
                    status
                        .cosigned_size
                        .store(checkpoint.size, Ordering::Relaxed);
                    status
                        .cosigned_ms
                        .store(crate::now_unix_ms(), Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "a cosigned checkpoint could not be kept"),
            }
        }
    });
}
