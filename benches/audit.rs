//! Audit log benchmark (a plain program: `cargo bench --bench audit`).
//!
//! Prints: receipts appended per second through `AuditLog::append` into a
//! real SQLite store (WAL, synchronous=FULL, group commit) at several
//! concurrency levels; and the time to verify an exported log of N receipts
//! offline (`verify_log`: RFC 8785 hash, Ed25519 signature, chain and RFC
//! 6962 tree per receipt); and the time to open a stored log of N receipts
//! (its tree derived from the stored bytes); and the cost of counting one
//! approval: an Ed25519 key signature, and a passkey (WebAuthn ES256 and
//! EdDSA) assertion. N defaults to 1,000,000; set BENCH_RECEIPTS to
//! change it and BENCH_APPEND_SECS for the append phase length. With
//! BENCH_JSON=path the figures are also written there (tools/bench merges
//! them into its table).

// A benchmark or test harness: a failed set-up step ends the run loudly.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dualtrust::audit::{
    AuditLog, Decision, GENESIS_PREV, RECEIPT_TYPE, Receipt, ReceiptBody, ReceiptDraft,
};
use dualtrust::keyring::{KeySource, ServerKeys};
use dualtrust::keys::KeyPair;
use dualtrust::store::{LogRow, Store};

fn draft(i: u64) -> ReceiptDraft {
    ReceiptDraft {
        subject: Some("bench".into()),
        token_id: Some(format!("{i:032x}")),
        transport: "bench",
        tool: "db.query".into(),
        class: Some("read"),
        scope: Some("db:read".into()),
        args_digest: Some(format!("{i:064x}")),
        lease: Some(format!("{i:032x}")),
        decision: Some(Decision::Allowed),
        reason: None,
        outcome: Some(serde_json::json!({ "row_count": 1, "truncated": false })),
        trace_id: None,
        consumed_lease: None,
    }
}

async fn append_rate(concurrency: usize, secs: u64) -> (u64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("state.db"))
        .await
        .expect("store");
    let keys = ServerKeys::single(&store, KeyPair::generate().expect("key"))
        .await
        .expect("keys");
    let log = Arc::new(AuditLog::open(store, keys).await.expect("log"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    log.append(draft(t as u64 * 1_000_000 + n))
                        .await
                        .expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    (total, total as f64 / started.elapsed().as_secs_f64())
}

fn build_log(n: u64, key: &KeyPair) -> Vec<Receipt> {
    let mut prev = GENESIS_PREV.to_string();
    (0..n)
        .map(|seq| {
            let d = draft(seq);
            let body = ReceiptBody {
                kind: RECEIPT_TYPE.into(),
                seq,
                prev: prev.clone(),
                ts_ms: 1_795_000_000_000 + seq,
                kid: key.kid().into(),
                subject: d.subject,
                token_id: d.token_id,
                transport: d.transport.into(),
                tool: d.tool,
                class: d.class.map(String::from),
                scope: d.scope,
                args_digest: d.args_digest,
                lease: d.lease,
                decision: Decision::Allowed,
                reason: None,
                outcome: d.outcome,
                trace_id: d.trace_id,
            };
            let r = Receipt::seal(body, key).expect("seal");
            prev = r.hash.clone();
            r
        })
        .collect()
}

struct LoadTime {
    receipts: u64,
    derived_s: f64,
    columns_s: f64,
}

/// Stores `receipts` in a fresh SQLite store, then times opening the log
/// until its tree is complete (every leaf derived from the stored bytes,
/// the chain and the newest signature checked), against the I/O-only floor
/// of reading the rows and decoding their leaf column.
async fn load_time(receipts: Vec<Receipt>, key: Arc<KeyPair>) -> LoadTime {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("state.db"))
        .await
        .expect("store");
    let n = receipts.len() as u64;
    let keys = ServerKeys::open(&store, KeySource::Held(vec![key.clone()]), None, true)
        .await
        .expect("keys");
    for chunk in receipts.chunks(10_000) {
        let rows: Vec<LogRow> = chunk
            .iter()
            .map(|r| LogRow {
                seq: r.body.seq,
                hash: r.hash.clone(),
                leaf_hash: Some(hex::encode(
                    dualtrust::audit::leaf_hash_of(&r.body).expect("leaf"),
                )),
                receipt: serde_json::to_string(r).expect("json"),
                lease: r.body.lease.clone(),
            })
            .collect();
        store
            .insert_receipts(key.kid(), &rows, &[])
            .await
            .expect("insert");
    }
    let started = Instant::now();
    let log = AuditLog::open(store.clone(), keys).await.expect("open");
    log.current_checkpoint().await.expect("checkpoint");
    let derived_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut seq = 0;
    loop {
        let rows = store.log_rows(seq, 10_000).await.expect("rows");
        let Some(last) = rows.last() else { break };
        seq = last.seq + 1;
        for row in &rows {
            let leaf: [u8; 32] = hex::decode(row.leaf_hash.as_deref().unwrap_or_default())
                .expect("hex")
                .try_into()
                .expect("32 bytes");
            std::hint::black_box(leaf);
        }
    }
    LoadTime {
        receipts: n,
        derived_s,
        columns_s: started.elapsed().as_secs_f64(),
    }
}

/// Microseconds per check of one approval by `ApproverRegistry::check`
/// (what counting it at submission and at redemption costs), for a key
/// signature and for ES256 and EdDSA passkey assertions.
fn approval_checks(rounds: u32) -> Vec<(&'static str, f64)> {
    use dualtrust::config::{Approver, PinnedPasskey, QuorumConfig};
    use dualtrust::fuzzing::SoftAuthenticator;
    use dualtrust::gate::quorum::{ApproverRegistry, Evidence, approval_message};
    use dualtrust::webauthn::{EDDSA, ES256, RelyingParty};
    let lease = dualtrust::store::Lease {
        id: "0123456789abcdef0123456789abcdef".into(),
        subject: "agent".into(),
        tool: "db.query".into(),
        args_digest: "ab".repeat(32),
        scope: "db:admin".into(),
        issued_at: 1,
        expires_at: 4_000_000_000,
        state: dualtrust::store::LeaseState::PendingApproval,
        summary: String::new(),
        args_json: "{}".into(),
        quorum_k: 1,
        requester_token: None,
        requester_address: None,
    };
    let statement = approval_message(&lease);
    let key = KeyPair::generate().expect("key");
    let mut es256 = SoftAuthenticator::new(ES256, "http://localhost:8080", "localhost");
    let mut eddsa = SoftAuthenticator::new(EDDSA, "http://localhost:8080", "localhost");
    let pinned = |device: &SoftAuthenticator| PinnedPasskey {
        credential_id: device.credential_id_b64(),
        key: device.key(),
    };
    let approver = Approver {
        id: "alice".into(),
        key: Some(key.verifying_key()),
        subject: None,
        passkeys: vec![pinned(&es256), pinned(&eddsa)],
    };
    let registry = ApproverRegistry::new(
        &[approver],
        &QuorumConfig {
            k: 1,
            ..QuorumConfig::default()
        },
        &RelyingParty::default(),
    );
    let signature = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        key.sign(statement.as_bytes()),
    );
    let cases = [
        ("Ed25519 key signature", Evidence::Key(signature)),
        (
            "passkey ES256 assertion",
            Evidence::Passkey(es256.assert(&statement)),
        ),
        (
            "passkey EdDSA assertion",
            Evidence::Passkey(eddsa.assert(&statement)),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, evidence)| {
            let started = Instant::now();
            for _ in 0..rounds {
                registry
                    .check(&lease, "alice", &evidence, None, &[])
                    .expect("a valid approval");
            }
            (
                name,
                started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds),
            )
        })
        .collect()
}

fn main() {
    let secs: u64 = std::env::var("BENCH_APPEND_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let n: u64 = std::env::var("BENCH_RECEIPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("audit benchmark on {cores} cores");
    println!(
        "{:<34} {:>12} {:>14}",
        "append (SQLite, synchronous=FULL)", "receipts", "receipts/s"
    );
    let mut appends = Vec::new();
    for concurrency in [1, 16, 64] {
        let (total, rate) = runtime.block_on(append_rate(concurrency, secs));
        appends.push(serde_json::json!({ "concurrency": concurrency, "receipts": total, "receipts_per_s": rate }));
        println!(
            "{:<34} {:>12} {:>14.0}",
            format!("  {concurrency} concurrent appenders"),
            total,
            rate
        );
    }
    let key = KeyPair::generate().expect("key");
    let started = Instant::now();
    let receipts = build_log(n, &key);
    let built = started.elapsed();
    let keys = vec![dualtrust::keys::PublishedKey::unbounded(
        key.verifying_key(),
    )];
    let started = Instant::now();
    let tree = dualtrust::audit::verify_log(receipts.clone(), &keys).expect("honest log verifies");
    let verified = started.elapsed();
    let load = runtime.block_on(load_time(receipts, Arc::new(key)));
    println!(
        "verify {} receipts offline: {:.2} s ({:.0} receipts/s; signing them took {:.2} s); root {}",
        tree.len(),
        verified.as_secs_f64(),
        tree.len() as f64 / verified.as_secs_f64(),
        built.as_secs_f64(),
        hex::encode(tree.root(tree.len()).unwrap_or_default())
    );
    println!(
        "open a stored log of {} receipts: {:.2} s deriving every leaf from the receipt bytes (now); {:.2} s reading and decoding the leaf column (what opening did before)",
        load.receipts, load.derived_s, load.columns_s
    );
    let checks = approval_checks(2_000);
    for (name, micros) in &checks {
        println!("check one approval, {name}: {micros:.1} µs");
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let figures = serde_json::json!({
            "approval_check_us": checks.iter().map(|(n, us)| (n.to_string(), serde_json::json!(us))).collect::<serde_json::Map<_, _>>(),
            "cores": cores,
            "appends": appends,
            "verify": {
                "receipts": tree.len(),
                "seconds": verified.as_secs_f64(),
                "receipts_per_s": tree.len() as f64 / verified.as_secs_f64(),
            },
            "open": {
                "receipts": load.receipts,
                "derived_from_bytes_s": load.derived_s,
                "leaf_column_only_s": load.columns_s,
            },
        });
        std::fs::write(&path, figures.to_string()).expect("write BENCH_JSON");
    }
}
