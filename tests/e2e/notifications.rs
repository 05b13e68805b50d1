//! Webhooks: a held call is announced to every configured receiver, signed
//! with the server key, retried with backoff when a receiver fails, and
//! never waited for by the gate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::common::{DataDir, call, lease_of, status};

#[derive(Default)]
struct Received {
    /// Path, signature header, body, when.
    requests: Vec<(String, String, Vec<u8>, Instant)>,
}

/// A receiver that answers 500 to the first two requests on `/hook`.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    let handler =
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let signature = headers
                    .get("dualtrust-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let mut received = state.lock().expect("lock");
                received.requests.push((
                    uri.path().to_string(),
                    signature,
                    body.to_vec(),
                    Instant::now(),
                ));
                let hook_requests = received.requests.iter().filter(|r| r.0 == "/hook").count();
                if uri.path() == "/hook" && hook_requests <= 2 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        };
    let app = axum::Router::new().fallback(axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, received)
}

// Multi-threaded: the receiver keeps answering while the test blocks on
// the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_is_announced_signed_retried_and_never_waited_for() {
    let (hooks, received) = receiver().await;
    let data = DataDir::new();
    let alice = data.approver("alice");
    data.configure(
        &[(&alice, None)],
        &format!(
            "[quorum]\nk = 1\n[notifications]\nretry_base_ms = 100\n[[notifications.webhooks]]\nurl = \"{hooks}/hook\"\n[[notifications.webhooks]]\nurl = \"{hooks}/slack\"\nformat = \"slack\"\n"
        ),
    );
    let server = data.http_server().await;
    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let (held, _) = call(&agent, "db.query", json!({ "sql": "DROP TABLE orders" })).await;
    let answered = Instant::now();
    assert_eq!(status(&held), "approval_required");
    let lease = lease_of(&held);

    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        {
            let received = received.lock().expect("lock");
            let hook: Vec<_> = received
                .requests
                .iter()
                .filter(|r| r.0 == "/hook")
                .collect();
            let slack = received.requests.iter().any(|r| r.0 == "/slack");
            if hook.len() >= 3 && slack {
                break hook.iter().map(|r| (*r).clone()).collect::<Vec<_>>();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the webhooks were not delivered in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delivered.len(), 3, "two failures, then one delivery");
    let (_, signature, body, at) = &delivered[2];
    assert!(
        *at > answered,
        "the call was answered before the receiver accepted"
    );
    assert!(
        delivered[1].3 >= delivered[0].3 + Duration::from_millis(90),
        "retries back off"
    );

    // The body is signed with the key the server publishes.
    let jwks: Value = serde_json::from_slice(&data.cli(&["keys"]).stdout).expect("jwks");
    let key = &jwks["keys"][0];
    assert_eq!(
        signature,
        &format!(
            "keyid=\"{}\", sig=\"{}\"",
            key["kid"].as_str().unwrap_or_default(),
            signature
                .rsplit_once("sig=\"")
                .map(|(_, s)| s.trim_end_matches('"'))
                .unwrap_or_default()
        )
    );
    let sig = signature
        .rsplit_once("sig=\"")
        .map(|(_, s)| s.trim_end_matches('"'))
        .unwrap_or_default();
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(sig)
        .expect("base64url")
        .try_into()
        .expect("64 bytes");
    let public = dualtrust::keys::parse_public_key(key["x"].as_str().unwrap_or_default())
        .expect("the server's key");
    public
        .verify_strict(body, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("the notification verifies against the server's JWKS");
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert!(
        public
            .verify_strict(&tampered, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_err()
    );

    let event: Value = serde_json::from_slice(body).expect("json");
    assert_eq!(event["type"], "dualtrust.notification.v1");
    assert_eq!(event["event"], "approval_required");
    assert_eq!(event["lease"]["lease_id"], lease.as_str());
    assert!(
        event["lease"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("`DROP TABLE orders`"),
        "{event}"
    );
    let slack = received
        .lock()
        .expect("lock")
        .requests
        .iter()
        .find(|r| r.0 == "/slack")
        .map(|r| r.2.clone())
        .expect("slack body");
    let slack: Value = serde_json::from_slice(&slack).expect("json");
    assert!(
        slack["text"].as_str().unwrap_or_default().contains(&lease),
        "{slack}"
    );

    // Decided beside the store with the local command line: announced too,
    // before the command exits.
    let out = data.approve(&lease, &alice);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approved: Vec<Value> = received
        .lock()
        .expect("lock")
        .requests
        .iter()
        .filter(|r| r.0 == "/hook")
        .filter_map(|r| serde_json::from_slice::<Value>(&r.2).ok())
        .filter(|e| e["event"] == "approved")
        .collect();
    assert_eq!(approved.len(), 1, "delivered before the command returned");
    assert_eq!(approved[0]["by"], "alice");

    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "dualtrust_webhook_deliveries_total 2",
        "dualtrust_webhook_retries_total 2",
        "dualtrust_webhook_failures_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    agent.cancel().await.expect("close");
    server.stop().await;
}

/// A held call nobody approves in time is ended by the server: one
/// `lease_expired` receipt, one `expired` notification, and the lease is
/// refused to the agent and to a late approver alike.
#[tokio::test]
async fn a_held_call_that_expires_is_recorded_and_announced_once() {
    let (hooks, received) = receiver().await;
    let data = DataDir::new();
    let alice = data.approver("alice");
    data.configure(
        &[(&alice, None)],
        &format!(
            "[quorum]\nk = 1\n[leases]\nttl_s = 1\n[[notifications.webhooks]]\nurl = \"{hooks}/events\"\n"
        ),
    );
    let server = data.http_server().await;
    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let args = json!({ "sql": "DROP TABLE orders" });
    let (held, _) = call(&agent, "db.query", args.clone()).await;
    let lease = lease_of(&held);
    let events = |kind: &str| -> Vec<Value> {
        received
            .lock()
            .expect("lock")
            .requests
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.2).ok())
            .filter(|e| e["event"] == kind)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while events("expired").is_empty() {
        assert!(Instant::now() < deadline, "no `expired` event in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired = events("expired");
    assert_eq!(expired[0]["lease"]["lease_id"], lease.as_str());
    assert_eq!(expired[0]["lease"]["state"], "expired");

    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let (late, _) = call(&agent, "db.query", redeem).await;
    assert_eq!(crate::common::error_code(&late), "lease_expired", "{late}");
    let approve = data.approve(&lease, &alice);
    assert!(!approve.status.success());
    assert!(
        String::from_utf8_lossy(&approve.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    // Another sweep finds nothing more to end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(events("expired").len(), 1, "announced once");
    let receipts = data.receipts();
    let ended: Vec<&Value> = receipts
        .iter()
        .filter(|r| r["body"]["decision"] == "lease_expired")
        .collect();
    assert_eq!(ended.len(), 1, "recorded once");
    assert_eq!(ended[0]["body"]["lease"], lease.as_str());
    assert_eq!(ended[0]["body"]["subject"], "agent");
    assert_eq!(ended[0]["body"]["outcome"]["k"], 1);
    agent.cancel().await.expect("close");
    server.stop().await;
}
