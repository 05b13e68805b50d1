//! Telling people that a call waits for them, or was decided: webhooks.
//!
//! The gate hands an event over and goes on: the queue is bounded and never
//! waited for (a full queue drops the event and counts it), and delivery
//! runs on its own tasks, retried with doubling delays. Every body is signed
//! with the server key, so a receiver checks it against the server's JWKS
//! (`/.well-known/jwks.json`): the `Dualtrust-Signature` header carries the
//! key id and an Ed25519 signature (base64url) over the exact body bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::config::{NotificationsConfig, WebhookConfig, WebhookFormat};
use crate::keyring::ServerKeys;
use crate::keys::KeyPair;

/// The header a receiver verifies.
pub const SIGNATURE_HEADER: &str = "dualtrust-signature";

/// What happened to a held call.
#[derive(Debug, Clone)]
pub struct Event {
    /// `approval_required`, `approved` or `rejected`.
    pub kind: &'static str,
    /// The approval view of the lease, from the server's record.
    pub view: Value,
    /// Who acted and why, for `approved` and `rejected`.
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// Delivery counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Events accepted and not yet delivered or given up on.
    outstanding: AtomicU64,
}

#[derive(Clone)]
pub struct Notifier {
    queue: Option<tokio::sync::mpsc::Sender<Event>>,
    deliveries: Arc<Deliveries>,
}

impl Notifier {
    /// Tells nobody (no webhook is configured).
    pub fn disabled() -> Self {
        Self {
            queue: None,
            deliveries: Arc::default(),
        }
    }

    /// Starts delivering to the configured webhooks.
    pub fn start(config: &NotificationsConfig, keys: Arc<ServerKeys>) -> Self {
        if config.webhooks.is_empty() {
            return Self::disabled();
        }
        let deliveries = Arc::new(Deliveries::default());
        let (queue, mut events) = tokio::sync::mpsc::channel::<Event>(config.queue);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let webhooks = config.webhooks.clone();
        let (attempts, base) = (config.attempts, Duration::from_millis(config.retry_base_ms));
        let counts = deliveries.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let deliveries: Vec<_> = webhooks
                    .iter()
                    .filter_map(|hook| {
                        // Signed by the key active now, which the JWKS names.
                        let key = keys.signing().ok()?;
                        let (body, signature) = signed_body(hook, &event, &key)?;
                        Some(
                            Delivery {
                                http: http.clone(),
                                url: hook.url.clone(),
                                body,
                                signature,
                                attempts,
                                base,
                                counts: counts.clone(),
                            }
                            .run(),
                        )
                    })
                    .collect();
                let counts = counts.clone();
                tokio::spawn(async move {
                    futures_util::future::join_all(deliveries).await;
                    counts.outstanding.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            queue: Some(queue),
            deliveries,
        }
    }

    /// Hands `event` over without waiting; a full queue drops it.
    pub fn notify(&self, event: Event) {
        let Some(queue) = &self.queue else {
            return;
        };
        self.deliveries.outstanding.fetch_add(1, Ordering::SeqCst);
        if queue.try_send(event).is_err() {
            self.deliveries.outstanding.fetch_sub(1, Ordering::SeqCst);
            self.deliveries.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("a notification was dropped: the delivery queue is full");
        }
    }

    /// Waits, up to `limit`, until every event handed over was delivered or
    /// given up on: for a process about to exit (the command line).
    /// Returns whether it got there.
    pub async fn flush(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.deliveries.outstanding.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }
}

struct Delivery {
    http: reqwest::Client,
    url: String,
    body: Vec<u8>,
    signature: String,
    attempts: u32,
    base: Duration,
    counts: Arc<Deliveries>,
}

impl Delivery {
    async fn run(self) {
        let mut delay = self.base;
        for attempt in 1..=self.attempts {
            let sent = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &self.signature)
                .body(self.body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(response) => {
                    tracing::warn!(
                        status = response.status().as_u16(),
                        attempt,
                        "webhook refused a notification"
                    )
                }
                Err(e) => tracing::warn!(error = %e, attempt, "webhook unreachable"),
            }
            if attempt < self.attempts {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            attempts = self.attempts,
            "a notification could not be delivered"
        );
    }
}

/// The body for `hook` and its signature header value.
fn signed_body(hook: &WebhookConfig, event: &Event, key: &KeyPair) -> Option<(Vec<u8>, String)> {
    let body = match hook.format {
        WebhookFormat::Json => json!({
            "type": "dualtrust.notification.v1",
            "event": event.kind,
            "at": crate::now_unix(),
            "lease": event.view,
            "by": event.by,
            "reason": event.reason,
        }),
        WebhookFormat::Slack => json!({ "text": slack_text(event) }),
    };
    let body = serde_json::to_vec(&body).ok()?;
    let signature = format!(
        "keyid=\"{}\", sig=\"{}\"",
        key.kid(),
        URL_SAFE_NO_PAD.encode(key.sign(&body))
    );
    Some((body, signature))
}

fn slack_text(event: &Event) -> String {
    let view = &event.view;
    let lease = view["lease_id"].as_str().unwrap_or_default();
    let what = view["summary"].as_str().unwrap_or_default();
    let asked = view["requested_by"].as_str().unwrap_or_default();
    match event.kind {
        "approval_required" => format!(
            "A call by `{asked}` waits for {} approval(s): {what}. Lease `{lease}`; review with `dualtrust approvals list`.",
            view["k"]
        ),
        "approved" => format!(
            "`{}` approved lease `{lease}` ({what}): {} of {}.",
            event.by.as_deref().unwrap_or_default(),
            view["approvals"],
            view["k"]
        ),
        _ => format!(
            "`{}` rejected lease `{lease}` ({what}): {}",
            event.by.as_deref().unwrap_or_default(),
            event.reason.as_deref().unwrap_or_default()
        ),
    }
}
