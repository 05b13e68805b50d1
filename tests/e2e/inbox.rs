//! The approvals inbox in a real browser: Debian's Chromium driven by
//! `tests/browser/inbox.mjs` (playwright-core) against the real server,
//! with the agent on rmcp's HTTP client. The test holds the calls, the
//! browser decides them, the test checks what ran.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::{Approver, DataDir, call, error_code, lease_of, status};
use crate::idp::{INBOX_CLIENT_ID, Idp};

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_tests() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = Path::new(CHROMIUM).exists() && dir.join("node_modules/playwright-core").exists();
    if ready {
        return Some(dir);
    }
    // tools/test installs both and sets this, so CI can never skip.
    assert!(
        std::env::var_os("DT_REQUIRE_BROWSER").is_none(),
        "the browser tests need {CHROMIUM} and `npm ci --prefix tests/browser`"
    );
    eprintln!("skipped: no Chromium or playwright-core here (tools/test installs them)");
    None
}

/// Runs one phase of the browser script; awaited, so servers the test runs
/// in-process (the identity provider) keep answering the browser.
async fn run_page(dir: &Path, phase: &str, vars: &[(&str, String)]) {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let out = tokio::process::Command::new("node")
        .arg(dir.join("inbox.mjs"))
        .arg(phase)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DT_SCREENSHOTS", shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "the inbox in the browser, phase {phase}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn key(approver: &Approver) -> String {
    approver.key.to_str().expect("utf8").to_string()
}

#[tokio::test]
async fn approvers_decide_held_calls_in_the_inbox_and_check_the_receipts() {
    let Some(dir) = browser_tests() else {
        return;
    };
    let data = DataDir::new();
    let (alice, bob) = (data.approver("alice"), data.approver("bob"));
    data.configure(
        &[(&alice, Some("alice@idp")), (&bob, Some("bob@idp"))],
        "[quorum]\nk = 2\n",
    );
    let server = data.http_server().await;
    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let drop_table = json!({ "sql": "DROP TABLE orders" });
    let delete = json!({ "sql": "DELETE FROM customers" });
    let odd = json!({ "sql": "DROP TABLE \"<img src=x onerror=alert(1)>\"" });
    let mut leases = Vec::new();
    for args in [&drop_table, &delete, &odd] {
        let (held, _) = call(&agent, "db.query", args.clone()).await;
        assert_eq!(status(&held), "approval_required", "{held}");
        leases.push(lease_of(&held));
    }
    let vars = vec![
        ("DT_BASE", server.base.clone()),
        ("DT_ALICE_TOKEN", data.token("alice@idp", "approvals:write")),
        ("DT_BOB_TOKEN", data.token("bob@idp", "approvals:write")),
        ("DT_ALICE_KEY", key(&alice)),
        ("DT_BOB_KEY", key(&bob)),
        ("DT_DROP_LEASE", leases[0].clone()),
        ("DT_DELETE_LEASE", leases[1].clone()),
        ("DT_ODD_LEASE", leases[2].clone()),
    ];
    run_page(&dir, "decide", &vars).await;

    // Approved by both in the page: the call runs, exactly once.
    let with_lease = |args: &serde_json::Value, lease: &str| {
        let mut args = args.clone();
        args["lease_id"] = json!(lease);
        args
    };
    let (ran, _) = call(&agent, "db.query", with_lease(&drop_table, &leases[0])).await;
    assert_eq!(status(&ran), "ok", "{ran}");
    let (gone, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM orders" }),
    )
    .await;
    assert_eq!(
        error_code(&gone),
        "sql_error",
        "the table was dropped: {gone}"
    );
    let (again, _) = call(&agent, "db.query", with_lease(&drop_table, &leases[0])).await;
    assert_eq!(error_code(&again), "lease_consumed", "{again}");
    // Rejected in the page: the agent's retry is refused with who and why.
    let (refused, _) = call(&agent, "db.query", with_lease(&delete, &leases[1])).await;
    assert_eq!(error_code(&refused), "rejected", "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("alice") && text.contains("not during the quarter close"),
        "{text}"
    );
    run_page(&dir, "history", &vars).await;
    server.stop().await;
}

#[tokio::test]
async fn approvers_sign_in_to_the_inbox_through_the_identity_provider() {
    let Some(dir) = browser_tests() else {
        return;
    };
    let idp = Idp::start(&["ec-1"]).await;
    let data = DataDir::new();
    let alice = data.approver("alice");
    idp.configure(
        &data,
        &format!(
            "[quorum]\nk = 1\n[inbox.oauth]\nclient_id = \"{INBOX_CLIENT_ID}\"\nauthorization_endpoint = \"{base}/authorize\"\ntoken_endpoint = \"{base}/token\"\n[[approvers]]\nid = \"alice\"\npublic_key = \"{key}\"\nsubject = \"alice@idp\"\n",
            base = idp.base,
            key = alice.public_key,
        ),
    );
    let server = data.http_server().await;
    idp.sign_in_as("alice@idp", &format!("{}/approvals/", server.base));
    let agent = server
        .client(&idp.mint("ec-1", "db:read db:admin", |_| {}))
        .await;
    let args = json!({ "sql": "DROP TABLE orders" });
    let (held, _) = call(&agent, "db.query", args.clone()).await;
    let lease = lease_of(&held);
    run_page(
        &dir,
        "oauth",
        &[
            ("DT_BASE", server.base.clone()),
            ("DT_ALICE_KEY", key(&alice)),
            ("DT_DROP_LEASE", lease.clone()),
        ],
    )
    .await;
    assert_eq!(
        idp.token_requests(),
        1,
        "the forged answer never reached the token endpoint"
    );
    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let (ran, _) = call(&agent, "db.query", redeem).await;
    assert_eq!(status(&ran), "ok", "{ran}");
    server.stop().await;
}

/// Passkeys in a real browser: alice and bob register passkeys on Chromium's
/// virtual platform authenticators (user verification on), an operator
/// confirms both, and both approve a held call in the page; it runs once.
/// A real assertion replayed for another lease is refused, and so is a
/// cloned authenticator whose counter lags. The exported log re-checks
/// both passkey approvals offline.
#[tokio::test]
async fn approvers_sign_held_calls_with_passkeys_in_the_inbox() {
    let Some(dir) = browser_tests() else {
        return;
    };
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[[approvers]]\nid = \"alice\"\nsubject = \"alice@idp\"\n\
         [[approvers]]\nid = \"bob\"\nsubject = \"bob@idp\"\n\
         [quorum]\nk = 2\npasskeys = 2\n",
    )
    .expect("config");
    let server = data.http_server().await;
    // WebAuthn takes no IP address as an RP id: the page is opened as
    // localhost, the relying party by default.
    let localhost = server.base.replace("127.0.0.1", "localhost");
    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let drop_table = json!({ "sql": "DROP TABLE orders" });
    let (held, _) = call(&agent, "db.query", drop_table.clone()).await;
    let (other, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DELETE FROM customers" }),
    )
    .await;
    let (lease, other_lease) = (lease_of(&held), lease_of(&other));
    let state = tempfile::NamedTempFile::new().expect("state file");
    let vars = vec![
        ("DT_BASE", localhost),
        ("DT_ALICE_TOKEN", data.token("alice@idp", "approvals:write")),
        ("DT_BOB_TOKEN", data.token("bob@idp", "approvals:write")),
        ("DT_DROP_LEASE", lease.clone()),
        ("DT_OTHER_LEASE", other_lease.clone()),
        (
            "DT_PASSKEY_STATE",
            state.path().to_str().expect("utf8").to_string(),
        ),
    ];
    run_page(&dir, "passkeys-register", &vars).await;

    // The operator confirms the two registrations.
    let exported = data.cli(&["passkeys", "export"]);
    let document: serde_json::Value = serde_json::from_slice(&exported.stdout).expect("document");
    let pending: Vec<String> = document["approvers"]
        .as_array()
        .expect("approvers")
        .iter()
        .flat_map(|a| a["passkeys"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["confirmed"] == false)
        .map(|p| p["credential_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(pending.len(), 2, "{document}");
    for credential in &pending {
        let out = data.cli(&["passkeys", "confirm", "--credential", credential]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run_page(&dir, "passkeys-approve", &vars).await;

    let mut redeem = drop_table;
    redeem["lease_id"] = json!(lease);
    let (ran, _) = call(&agent, "db.query", redeem.clone()).await;
    assert_eq!(status(&ran), "ok", "{ran}");
    let approvals = ran["receipt"]["body"]["outcome"]["approvals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(approvals.len(), 2, "{ran}");
    assert!(
        approvals
            .iter()
            .all(|a| a["passkey"]["client_data_json"].is_string())
    );
    let (again, _) = call(&agent, "db.query", redeem).await;
    assert_eq!(error_code(&again), "lease_consumed", "{again}");
    let reasons: Vec<String> = data
        .receipts()
        .iter()
        .filter_map(|r| r["body"]["reason"].as_str().map(String::from))
        .collect();
    for code in ["passkey_challenge_mismatch", "passkey_counter_regressed"] {
        assert!(
            reasons.iter().any(|r| r == code),
            "no receipt for {code}: {reasons:?}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("approvers.json");
    std::fs::write(&doc, data.cli(&["passkeys", "export"]).stdout).expect("doc");
    let verified = data.offline_verify_approvals(&doc).expect("offline verify");
    assert!(verified.contains("0 Ed25519, 4 passkey"), "{verified}");
    server.stop().await;
}
