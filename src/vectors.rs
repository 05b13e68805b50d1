//! Known-answer vectors in `tests/vectors/`, shared with the independent
//! Python checks (`tests/python/test_vectors.py`): the argument digest a
//! lease binds, the approval statement approvers sign, receipts, the RFC
//! 6962 inclusion of a receipt and the C2SP signed-note checkpoint, each
//! with negative cases both implementations must refuse.
//!
//! This test recomputes every value from the files' inputs, refuses every
//! negative case, and fails when the code would write anything else.
//! `DT_BLESS_VECTORS=1 cargo test vectors` writes them afresh, for a
//! deliberate format change only; the Python side then checks the new files
//! with code of its own.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::audit::checkpoint::{Checkpoint, origin_for};
use crate::audit::merkle::MerkleTree;
use crate::audit::{
    Decision, GENESIS_PREV, LogProof, RECEIPT_TYPE, Receipt, ReceiptBody, canonical_bytes,
    leaf_hash_of, verify_log, verify_log_proof,
};
use crate::gate::args_digest;
use crate::gate::quorum::{approval_message, rejection_message};
use crate::keys::{KeyPair, PublishedKey, public_jwk};
use crate::store::{Lease, LeaseState};

/// Test-only keys: published in the vectors, never used for anything else.
const SERVER_SEED: [u8; 32] = [0x5e; 32];
const APPROVER_SEED: [u8; 32] = [0xa1; 32];
const OTHER_SEED: [u8; 32] = [0x07; 32];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn read(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn keys() -> (KeyPair, KeyPair, KeyPair) {
    (
        KeyPair::from_seed(&SERVER_SEED),
        KeyPair::from_seed(&APPROVER_SEED),
        KeyPair::from_seed(&OTHER_SEED),
    )
}

fn args_digest_vectors() -> Value {
    let cases = [
        ("db.query", json!({ "sql": "SELECT 1", "params": [] })),
        (
            "db.query",
            json!({ "sql": "DELETE FROM orders WHERE id = ?", "params": [42, 1.5, true, null, "é"] }),
        ),
        (
            "terminal.execute",
            json!({ "argv": ["rm", "-rf", "build"], "cwd": "work", "timeout_ms": 5000 }),
        ),
        (
            "passport.issue",
            json!({ "agent_id": "agent-7", "health": { "version": "1.2", "ok": true }, "ttl_s": 600 }),
        ),
    ];
    let cases: Vec<Value> = cases
        .iter()
        .map(|(tool, args)| {
            let canonical =
                canonical_bytes(&json!({ "tool": tool, "args": args })).expect("canonical");
            json!({
                "tool": tool,
                "args": args,
                "canonical": String::from_utf8(canonical).expect("utf-8"),
                "digest": args_digest(tool, args).expect("digest"),
            })
        })
        .collect();
    json!({
        "about": "args_digest = SHA-256 (hex) of the RFC 8785 form of {\"tool\": <tool name>, \"args\": <the call's arguments without lease_id>}",
        "cases": cases,
    })
}

fn vector_lease() -> Lease {
    Lease {
        id: "0123456789abcdef0123456789abcdef".into(),
        subject: "agent-7".into(),
        tool: "db.query".into(),
        args_digest: args_digest(
            "db.query",
            &json!({ "sql": "DROP TABLE orders", "params": [] }),
        )
        .expect("digest"),
        scope: "db:admin".into(),
        issued_at: 1_800_000_000,
        expires_at: 1_800_000_900,
        state: LeaseState::PendingApproval,
        summary: String::new(),
        args_json: String::new(),
        quorum_k: 1,
        requester_token: None,
        requester_address: None,
    }
}

fn lease_json(lease: &Lease) -> Value {
    json!({
        "id": lease.id,
        "tool": lease.tool,
        "args_digest": lease.args_digest,
        "subject": lease.subject,
        "expires_at": lease.expires_at,
    })
}

fn approval_vectors() -> Value {
    let (_, approver, other) = keys();
    let lease = vector_lease();
    let statement = approval_message(&lease);
    let signature = URL_SAFE_NO_PAD.encode(approver.sign(statement.as_bytes()));
    let mut later = lease.clone();
    later.expires_at += 1;
    let mut other_lease = lease.clone();
    other_lease.id = "f".repeat(32);
    let mut other_args = lease.clone();
    other_args.args_digest = "0".repeat(64);
    let refused = |name: &str, lease: &Lease, signature: &str| json!({ "name": name, "lease": lease_json(lease), "signature": signature });
    let reason = "not during the release freeze";
    let rejection = rejection_message(&lease, reason);
    json!({
        "about": "approvers sign, with Ed25519, the exact bytes of `statement`, built from the lease record; a rejection signs `rejection.statement`, the same fields under another first line, with the reason",
        "rejection": {
            "reason": reason,
            "statement": rejection,
            "signature": URL_SAFE_NO_PAD.encode(approver.sign(rejection.as_bytes())),
        },
        "approver_public_key": public_jwk(&approver.verifying_key())["x"],
        "lease": lease_json(&lease),
        "statement": statement,
        "signature": signature,
        "refused": [
            refused("another expiry", &later, &signature),
            refused("another lease", &other_lease, &signature),
            refused("other arguments", &other_args, &signature),
            refused(
                "another key",
                &lease,
                &URL_SAFE_NO_PAD.encode(other.sign(statement.as_bytes())),
            ),
        ],
    })
}

fn receipt_body(seq: u64, prev: &str, kid: &str) -> ReceiptBody {
    ReceiptBody {
        kind: RECEIPT_TYPE.into(),
        seq,
        prev: prev.into(),
        ts_ms: 1_800_000_000_000 + seq,
        kid: kid.into(),
        subject: Some("agent-7".into()),
        token_id: Some(format!("token-{seq}")),
        transport: "http".into(),
        tool: "db.query".into(),
        class: Some("read".into()),
        scope: Some("db:read".into()),
        args_digest: Some(
            args_digest("db.query", &json!({ "sql": format!("SELECT {seq}") })).expect("digest"),
        ),
        lease: Some(format!("{seq:032x}")),
        decision: Decision::Allowed,
        reason: None,
        outcome: Some(json!({ "row_count": seq, "note": "é ü 😀" })),
        trace_id: None,
    }
}

fn receipt_vectors() -> Value {
    let (server, _, other) = keys();
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut prev = GENESIS_PREV.to_string();
    for seq in 0..5 {
        let receipt = Receipt::seal(receipt_body(seq, &prev, server.kid()), &server).expect("seal");
        prev = receipt.hash.clone();
        receipts.push(receipt);
    }
    let mut tree = MerkleTree::new();
    for receipt in &receipts {
        tree.push(leaf_hash_of(&receipt.body).expect("leaf"));
    }
    let size = tree.len();
    let origin = origin_for(server.kid());
    let checkpoint = Checkpoint {
        origin: origin.clone(),
        size,
        root: tree.root(size).expect("root"),
        time: 1_800_000_100,
    }
    .sign(&server);
    let proofs: Vec<Value> = receipts
        .iter()
        .map(|receipt| {
            let index = receipt.body.seq;
            json!({
                "leaf_index": index,
                "tree_size": size,
                "inclusion": tree
                    .inclusion_proof(index, size)
                    .expect("proof")
                    .iter()
                    .map(hex::encode)
                    .collect::<Vec<_>>(),
                "checkpoint": checkpoint,
            })
        })
        .collect();

    let mut edited = receipts[2].clone();
    edited.body.tool = "db.querz".into();
    let mut resigned = receipts[2].clone();
    let bytes = canonical_bytes(&resigned.body).expect("canonical");
    resigned.sig = URL_SAFE_NO_PAD.encode(other.sign(&bytes));
    let mut unchained = receipts.clone();
    unchained[3] =
        Receipt::seal(receipt_body(3, &"1".repeat(64), server.kid()), &server).expect("seal");
    let mut wrong_path = proofs[1].clone();
    wrong_path["inclusion"][0] = json!("0".repeat(64));
    let forged_checkpoint = checkpoint.replacen(&format!("\n{size}\n"), "\n6\n", 1);
    json!({
        "about": "receipt.hash = SHA-256 (hex) of the RFC 8785 body; receipt.sig = Ed25519 (base64url) over the same bytes; each body's prev is the hash of the one before (the first: 64 zeros); leaf = SHA-256(0x00 || RFC 8785 body) (RFC 6962); the checkpoint is a C2SP signed note by `origin`",
        "server_public_key": public_jwk(&server.verifying_key()),
        "origin": origin,
        "receipts": receipts,
        "proofs": proofs,
        "refused": {
            "edited_body": { "receipt": edited, "failure": "hash" },
            "signed_by_another_key": { "receipt": resigned, "failure": "signature" },
            "broken_chain": { "receipts": unchained, "failure": "chain", "at": 3 },
            "wrong_inclusion_path": { "receipt": receipts[1], "proof": wrong_path, "failure": "inclusion" },
            "checkpoint_with_another_size": { "checkpoint": forged_checkpoint, "failure": "checkpoint" },
        },
    })
}

/// The keys of a rotated log as its JWKS publishes them: the first retired
/// at size 3 (with the root there), the second active from 3.
fn rotated_keys(old: &KeyPair, new: &KeyPair, root_at_3: [u8; 32]) -> [PublishedKey; 2] {
    [
        PublishedKey {
            until_seq: Some(3),
            until_root: Some(root_at_3),
            not_before: 1_800_000_000,
            not_after: Some(1_800_000_050),
            ..PublishedKey::unbounded(old.verifying_key())
        },
        PublishedKey {
            from_seq: 3,
            not_before: 1_800_000_050,
            ..PublishedKey::unbounded(new.verifying_key())
        },
    ]
}

fn rotation_vectors() -> Value {
    let (old, _, new) = keys();
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut prev = GENESIS_PREV.to_string();
    let mut tree = MerkleTree::new();
    for seq in 0..5 {
        let signer = if seq < 3 { &old } else { &new };
        let receipt = Receipt::seal(receipt_body(seq, &prev, signer.kid()), signer).expect("seal");
        prev = receipt.hash.clone();
        tree.push(leaf_hash_of(&receipt.body).expect("leaf"));
        receipts.push(receipt);
    }
    let origin = "example.com/dualtrust-vectors";
    let keys = rotated_keys(&old, &new, tree.root(3).expect("root"));
    let note = |size: u64, key: &KeyPair| {
        Checkpoint {
            origin: origin.into(),
            size,
            root: tree.root(size).expect("root"),
            time: 1_800_000_100,
        }
        .sign(key)
    };
    let proofs: Vec<Value> = receipts
        .iter()
        .map(|receipt| {
            let index = receipt.body.seq;
            json!({
                "leaf_index": index,
                "tree_size": 5,
                "inclusion": tree.inclusion_proof(index, 5).expect("proof").iter().map(hex::encode).collect::<Vec<_>>(),
                "checkpoint": note(5, &new),
            })
        })
        .collect();
    let mut late = receipt_body(5, &receipts[4].hash, old.kid());
    late.subject = Some("mallory".into());
    let late = Receipt::seal(late, &old).expect("seal");
    let mut rewritten = Vec::new();
    let mut prev = GENESIS_PREV.to_string();
    for receipt in &receipts[..3] {
        let mut body = receipt.body.clone();
        body.prev = prev.clone();
        body.tool = "db.execute".into();
        let sealed = Receipt::seal(body, &old).expect("seal");
        prev = sealed.hash.clone();
        rewritten.push(sealed);
    }
    // Presented alone: with the later receipts the chain would break too.
    let extended = [receipts.clone(), vec![late]].concat();
    json!({
        "about": "a log whose server key rotated at size 3: each JWK carries the span it signs (log_from <= receipt seq < log_until; log_from <= checkpoint size <= log_until) and a retired key the root of the log at log_until; the origin is configured, not derived from a key",
        "jwks": crate::keys::published_jwks(&keys),
        "origin": origin,
        "receipts": receipts,
        "proofs": proofs,
        "refused": {
            "receipt_by_the_retired_key_after_retirement": { "receipts": extended, "failure": "key_retired", "at": 5 },
            "checkpoint_by_the_retired_key_past_retirement": { "checkpoint": note(4, &old), "failure": "checkpoint_key_retired" },
            "history_rewritten_with_the_retired_key": { "receipts": rewritten, "failure": "retirement_root", "at": 3 },
        },
    })
}

fn files() -> [(&'static str, Value); 4] {
    [
        ("args_digest.json", args_digest_vectors()),
        ("approval_statement.json", approval_vectors()),
        ("receipts.json", receipt_vectors()),
        ("rotation.json", rotation_vectors()),
    ]
}

#[test]
fn vectors_recompute_from_their_inputs_and_every_refused_case_fails() {
    if std::env::var_os("DT_BLESS_VECTORS").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        for (name, value) in files() {
            let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
            std::fs::write(dir().join(name), text).expect("write");
        }
    }

    let digests = read("args_digest.json");
    for case in digests["cases"].as_array().expect("cases") {
        let tool = case["tool"].as_str().expect("tool");
        let canonical =
            canonical_bytes(&json!({ "tool": tool, "args": case["args"] })).expect("canonical");
        assert_eq!(
            case["canonical"].as_str(),
            std::str::from_utf8(&canonical).ok()
        );
        assert_eq!(
            case["digest"].as_str(),
            args_digest(tool, &case["args"]).as_deref()
        );
    }

    let approval = read("approval_statement.json");
    let lease_of = |v: &Value| Lease {
        id: v["id"].as_str().expect("id").into(),
        tool: v["tool"].as_str().expect("tool").into(),
        args_digest: v["args_digest"].as_str().expect("digest").into(),
        subject: v["subject"].as_str().expect("subject").into(),
        expires_at: v["expires_at"].as_u64().expect("expires_at"),
        ..vector_lease()
    };
    let approver_key =
        crate::keys::parse_public_key(approval["approver_public_key"].as_str().expect("key"))
            .expect("approver key");
    let verifies = |lease: &Lease, signature: &str| {
        let sig = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok());
        sig.is_some_and(|sig| {
            approver_key
                .verify_strict(
                    approval_message(lease).as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig),
                )
                .is_ok()
        })
    };
    let lease = lease_of(&approval["lease"]);
    assert_eq!(
        approval["statement"].as_str(),
        Some(approval_message(&lease).as_str())
    );
    assert!(verifies(
        &lease,
        approval["signature"].as_str().expect("signature")
    ));
    let rejection = &approval["rejection"];
    let reason = rejection["reason"].as_str().expect("reason");
    let statement = rejection_message(&lease, reason);
    assert_eq!(rejection["statement"].as_str(), Some(statement.as_str()));
    let signature = URL_SAFE_NO_PAD
        .decode(rejection["signature"].as_str().expect("signature"))
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .expect("64 bytes");
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    assert!(
        approver_key
            .verify_strict(statement.as_bytes(), &signature)
            .is_ok()
    );
    assert!(
        approver_key
            .verify_strict(approval_message(&lease).as_bytes(), &signature)
            .is_err(),
        "a rejection's signature is not an approval"
    );
    for case in approval["refused"].as_array().expect("refused") {
        let refused = verifies(
            &lease_of(&case["lease"]),
            case["signature"].as_str().expect("signature"),
        );
        assert!(!refused, "{}", case["name"]);
    }

    let log = read("receipts.json");
    let jwk = &log["server_public_key"];
    let server_key =
        crate::keys::parse_public_key(jwk["x"].as_str().expect("x")).expect("server key");
    let kid = jwk["kid"].as_str().expect("kid").to_string();
    assert_eq!(crate::keys::jwk_thumbprint(&server_key), kid);
    let keyring = [crate::keys::PublishedKey::unbounded(server_key)];
    let receipts: Vec<Receipt> = serde_json::from_value(log["receipts"].clone()).expect("receipts");
    let tree = verify_log(receipts.clone(), &keyring).expect("the chain verifies");
    let origin = log["origin"].as_str().expect("origin");
    for (receipt, proof) in receipts
        .iter()
        .zip(log["proofs"].as_array().expect("proofs"))
    {
        let proof: LogProof = serde_json::from_value(proof.clone()).expect("proof");
        let checkpoint =
            Checkpoint::verify(&proof.checkpoint, origin, &keyring).expect("checkpoint");
        assert_eq!(Some(checkpoint.root), tree.root(checkpoint.size));
        verify_log_proof(receipt, &proof, &checkpoint).expect("inclusion");
    }
    let refused = &log["refused"];
    for case in ["edited_body", "signed_by_another_key"] {
        let receipt: Receipt =
            serde_json::from_value(refused[case]["receipt"].clone()).expect("receipt");
        let failure = receipt.check_signature(&keyring).expect_err(case).code();
        assert_eq!(refused[case]["failure"].as_str(), Some(failure), "{case}");
    }
    let unchained: Vec<Receipt> =
        serde_json::from_value(refused["broken_chain"]["receipts"].clone()).expect("receipts");
    let (at, failure) = verify_log(unchained, &keyring).expect_err("chain");
    assert_eq!(refused["broken_chain"]["at"].as_u64(), Some(at));
    assert_eq!(
        refused["broken_chain"]["failure"].as_str(),
        Some(failure.code())
    );
    let wrong = &refused["wrong_inclusion_path"];
    let receipt: Receipt = serde_json::from_value(wrong["receipt"].clone()).expect("receipt");
    let proof: LogProof = serde_json::from_value(wrong["proof"].clone()).expect("proof");
    let checkpoint = Checkpoint::verify(&proof.checkpoint, origin, &keyring).expect("valid");
    let failure = verify_log_proof(&receipt, &proof, &checkpoint)
        .expect_err("wrong path")
        .code();
    assert_eq!(wrong["failure"].as_str(), Some(failure));
    assert!(
        Checkpoint::verify(
            refused["checkpoint_with_another_size"]["checkpoint"]
                .as_str()
                .expect("note"),
            origin,
            &keyring
        )
        .is_err(),
        "a checkpoint whose signed text changed does not verify"
    );

    let rotation = read("rotation.json");
    let published = crate::keys::published_keys_from_jwks(&rotation["jwks"]);
    assert_eq!(published.len(), 2);
    let origin = rotation["origin"].as_str().expect("origin");
    let receipts: Vec<Receipt> =
        serde_json::from_value(rotation["receipts"].clone()).expect("receipts");
    let tree = verify_log(receipts.clone(), &published).expect("the rotated log verifies");
    for (receipt, proof) in receipts
        .iter()
        .zip(rotation["proofs"].as_array().expect("proofs"))
    {
        let proof: LogProof = serde_json::from_value(proof.clone()).expect("proof");
        let checkpoint =
            Checkpoint::verify(&proof.checkpoint, origin, &published).expect("checkpoint");
        assert_eq!(Some(checkpoint.root), tree.root(checkpoint.size));
        verify_log_proof(receipt, &proof, &checkpoint).expect("inclusion");
    }
    let refused = &rotation["refused"];
    for case in [
        "receipt_by_the_retired_key_after_retirement",
        "history_rewritten_with_the_retired_key",
    ] {
        let log: Vec<Receipt> =
            serde_json::from_value(refused[case]["receipts"].clone()).expect("receipts");
        let (at, failure) = verify_log(log, &published).expect_err(case);
        assert_eq!(refused[case]["at"].as_u64(), Some(at), "{case}");
        assert_eq!(
            refused[case]["failure"].as_str(),
            Some(failure.code()),
            "{case}"
        );
    }
    let case = &refused["checkpoint_by_the_retired_key_past_retirement"];
    let failure = Checkpoint::verify(
        case["checkpoint"].as_str().expect("note"),
        origin,
        &published,
    )
    .expect_err("retired");
    assert_eq!(case["failure"].as_str(), Some(failure.code()));

    // The files are exactly what this code would write: a format change
    // cannot slip past both implementations unnoticed.
    for (name, value) in files() {
        assert_eq!(
            read(name),
            value,
            "{name} differs from what the code produces"
        );
    }
}
