//! Passkey approvers over the real HTTP API: registration, an operator's
//! confirmation, approvals whose WebAuthn assertions sign one exact call,
//! each attack on a ceremony refused with a receipt, and the offline
//! re-check of every approval in the exported log.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dualtrust::fuzzing::SoftAuthenticator;
use dualtrust::webauthn::{EDDSA, ES256};
use serde_json::{Value, json};

use crate::common::{DataDir, call, lease_of, status};

/// One way an assertion is made wrong.
type Tamper = fn(&mut SoftAuthenticator);

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("post");
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, token: Option<&str>, path: &str) -> Value {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// The inbox's registration: options, the ceremony, the result.
    async fn register(&self, token: &str, device: &mut SoftAuthenticator) -> (u16, Value) {
        let (code, options) = self
            .post(token, "/approvals/passkeys/challenge", json!({}))
            .await;
        assert_eq!(code, 200, "{options}");
        let challenge = options["public_key"]["challenge"]
            .as_str()
            .expect("challenge");
        assert_eq!(
            options["public_key"]["authenticatorSelection"]["userVerification"],
            "required"
        );
        let bytes = URL_SAFE_NO_PAD.decode(challenge).expect("b64");
        let response = device.register(&bytes);
        self.post(
            token,
            "/approvals/passkeys",
            json!({
                "challenge": challenge,
                "client_data_json": response.client_data_json,
                "attestation_object": response.attestation_object,
            }),
        )
        .await
    }

    async fn approve(
        &self,
        token: &str,
        approver: &str,
        lease: &str,
        device: &mut SoftAuthenticator,
        statement: &str,
    ) -> (u16, Value) {
        let assertion = device.assert(statement);
        self.post(
            token,
            "/approvals",
            json!({ "lease_id": lease, "approver_id": approver, "passkey": assertion }),
        )
        .await
    }
}

fn cli_ok(data: &DataDir, args: &[&str]) -> String {
    let out = data.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two approvers register passkeys in the inbox and an operator confirms
/// them; a destructive call is held until both sign that exact call with
/// their passkeys (policy: both of k=2 must be passkeys for the database);
/// every attack on the ceremony is refused with a receipt; the call runs
/// once; and the exported log re-checks both passkey approvals offline.
#[tokio::test]
async fn destructive_calls_run_on_k_passkey_signatures_over_that_exact_call() {
    let data = DataDir::new();
    let bob_key = data.approver("bob");
    std::fs::write(
        data.path.join("dualtrust.toml"),
        format!(
            "[[approvers]]\nid = \"alice\"\nsubject = \"alice@idp\"\n\
             [[approvers]]\nid = \"bob\"\nsubject = \"bob@idp\"\npublic_key = \"{}\"\n\
             [quorum]\nk = 2\n[quorum.overrides.\"db.query\"]\nk = 2\npasskeys = 2\n",
            bob_key.public_key
        ),
    )
    .expect("config");
    let server = data.http_server().await;
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let origin = format!("http://localhost:{port}");
    let api = Api {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    };
    let alice_token = data.token("alice@idp", "approvals:write");
    let bob_token = data.token("bob@idp", "approvals:write");
    let mut alice = SoftAuthenticator::new(ES256, &origin, "localhost");
    let mut bob = SoftAuthenticator::new(EDDSA, &origin, "localhost");

    // Registration: user verification is required, and the challenge must
    // be one this server issued to this approver.
    let mut careless = alice.clone();
    careless.user_verified = false;
    let (code, body) = api.register(&alice_token, &mut careless).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("passkey_user_not_verified")),
        "{body}"
    );
    let (_, options) = api
        .post(&alice_token, "/approvals/passkeys/challenge", json!({}))
        .await;
    let bobs_challenge = options["public_key"]["challenge"]
        .as_str()
        .expect("challenge")
        .to_string();
    let response = bob.register(&URL_SAFE_NO_PAD.decode(&bobs_challenge).expect("b64"));
    let (code, body) = api
        .post(
            &bob_token,
            "/approvals/passkeys",
            json!({
                "challenge": bobs_challenge,
                "client_data_json": response.client_data_json,
                "attestation_object": response.attestation_object,
            }),
        )
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("bad_challenge")),
        "alice's challenge answered by bob: {body}"
    );
    let (code, registered) = api.register(&alice_token, &mut alice).await;
    assert_eq!(code, 200, "{registered}");
    assert_eq!(registered["confirmed"], false);
    assert_eq!(
        registered["receipt"]["body"]["decision"],
        "passkey_registered"
    );
    let (code, body) = api.register(&alice_token, &mut alice).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("duplicate_approval")),
        "the same credential twice: {body}"
    );
    // Alice's public key (anyone can copy it from the approvers document)
    // under another credential id: one passkey belongs to one approver.
    let mut copy = alice.clone().with_credential_id(b"another-id");
    let (code, body) = api.register(&bob_token, &mut copy).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("duplicate_approval")),
        "{body}"
    );
    let (code, _) = api.register(&bob_token, &mut bob).await;
    assert_eq!(code, 200);
    // Registrations nobody confirms cannot pile up.
    for n in 0..5 {
        let mut spare = SoftAuthenticator::new(ES256, &origin, "localhost");
        let (code, body) = api.register(&bob_token, &mut spare).await;
        let expected = if n < 4 { 200 } else { 429 };
        assert_eq!(code, expected, "registration {n}: {body}");
        if code == 429 {
            assert_eq!(body["error"], "too_many_pending_passkeys");
        }
    }

    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let (held, _) = call(&agent, "db.query", json!({ "sql": "DELETE FROM orders" })).await;
    let (other, _) = call(&agent, "db.query", json!({ "sql": "DROP TABLE orders" })).await;
    assert_eq!(status(&held), "approval_required");
    let (lease, other_lease) = (lease_of(&held), lease_of(&other));
    let view = api
        .get(Some(&alice_token), &format!("/approvals/{lease}"))
        .await;
    let statement = view["sign"].as_str().expect("statement").to_string();
    let other_statement = other["approval"]["sign"]
        .as_str()
        .expect("statement")
        .to_string();
    assert_eq!(view["passkeys_needed"], 2);
    assert_eq!(
        view["passkey_challenge"].as_str(),
        Some(
            URL_SAFE_NO_PAD
                .encode(dualtrust::webauthn::statement_challenge(&statement))
                .as_str()
        )
    );

    // Not yet confirmed by an operator: it counts for nothing.
    let (code, body) = api
        .approve(&alice_token, "alice", &lease, &mut alice, &statement)
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("unknown_credential")),
        "{body}"
    );
    let listed = cli_ok(&data, &["passkeys", "list"]);
    assert!(listed.contains("PENDING"), "{listed}");
    for device in [&alice, &bob] {
        let confirmed = data.cli(&[
            "passkeys",
            "confirm",
            "--credential",
            &device.credential_id_b64(),
        ]);
        assert!(
            confirmed.status.success(),
            "{}",
            String::from_utf8_lossy(&confirmed.stderr)
        );
    }
    let again = data.cli(&[
        "passkeys",
        "confirm",
        "--credential",
        &alice.credential_id_b64(),
    ]);
    assert!(!again.status.success(), "a confirmation is made once");

    // Each attack on the assertion, refused.
    let attacks: [(&str, Tamper, &str); 3] = [
        (
            "a page of another origin",
            |d| d.origin = "http://localhost.evil.example:1".into(),
            "passkey_origin_not_allowed",
        ),
        (
            "another RP id",
            |d| d.rp_id = "evil.example".into(),
            "passkey_rp_id_mismatch",
        ),
        (
            "no user verification",
            |d| d.user_verified = false,
            "passkey_user_not_verified",
        ),
    ];
    for (what, change, code_expected) in attacks {
        let mut device = alice.clone();
        change(&mut device);
        let (code, body) = api
            .approve(&alice_token, "alice", &lease, &mut device, &statement)
            .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (403, Some(code_expected)),
            "{what}: {body}"
        );
    }
    let (code, body) = api
        .approve(
            &alice_token,
            "alice",
            &lease,
            &mut alice.clone(),
            &other_statement,
        )
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("passkey_challenge_mismatch")),
        "an assertion made for another lease: {body}"
    );
    let mut stranger = SoftAuthenticator::new(ES256, &origin, "localhost");
    let (code, body) = api
        .approve(&alice_token, "alice", &lease, &mut stranger, &statement)
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("unknown_credential")),
        "{body}"
    );
    let (code, body) = api
        .approve(&alice_token, "bob", &lease, &mut alice.clone(), &statement)
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("wrong_submitter")),
        "{body}"
    );

    // A cloned authenticator: the copy's counter lags the original's.
    let mut clone = alice.clone();
    let (code, body) = api
        .approve(&alice_token, "alice", &lease, &mut alice, &statement)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["approvals"], 1);
    let (code, body) = api
        .approve(
            &alice_token,
            "alice",
            &other_lease,
            &mut clone,
            &other_statement,
        )
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("passkey_counter_regressed")),
        "{body}"
    );

    // Bob's key file is not enough where the policy wants two passkeys.
    let (code, body) = api
        .post(
            &bob_token,
            "/approvals",
            json!({ "lease_id": lease, "approver_id": "bob", "signature": data.sign(&bob_key, &statement) }),
        )
        .await;
    assert_eq!(
        (code, body["approvals"].clone(), body["complete"].clone()),
        (200, json!(2), json!(false)),
        "two approvals, one a passkey, where two passkeys are needed: {body}"
    );
    let mut redeem = json!({ "sql": "DELETE FROM orders", "lease_id": lease });
    let (still, _) = call(&agent, "db.query", redeem.clone()).await;
    assert_eq!(status(&still), "approval_required", "{still}");
    assert!(
        still
            .to_string()
            .contains("2 of 2 approvals so far (1 of the 2 passkey approvals needed)"),
        "{still}"
    );
    // The key-file approval occupies bob's vote on this lease; his passkey
    // signs the other one, and alice's on it too, then it runs once.
    let (code, body) = api
        .approve(&bob_token, "bob", &other_lease, &mut bob, &other_statement)
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = api
        .approve(
            &alice_token,
            "alice",
            &other_lease,
            &mut alice,
            &other_statement,
        )
        .await;
    assert_eq!(
        (code, body["complete"].clone(), body["approvals"].clone()),
        (200, json!(true), json!(2)),
        "{body}"
    );
    redeem = json!({ "sql": "DROP TABLE orders", "lease_id": other_lease });
    let (ran, _) = call(&agent, "db.query", redeem.clone()).await;
    assert_eq!(status(&ran), "ok", "{ran}");
    let approvals = &ran["receipt"]["body"]["outcome"]["approvals"];
    assert_eq!(approvals.as_array().map(Vec::len), Some(2), "{ran}");
    assert!(
        approvals
            .as_array()
            .expect("list")
            .iter()
            .all(|a| a["passkey"]["signature"].is_string())
    );
    let (spent, _) = call(&agent, "db.query", redeem).await;
    assert_eq!(status(&spent), "denied", "a lease runs once: {spent}");

    // Every refusal above left a receipt with its code.
    let receipts = data.receipts();
    let reasons: Vec<&str> = receipts
        .iter()
        .filter(|r| r["body"]["decision"] == "denied")
        .filter_map(|r| r["body"]["reason"].as_str())
        .collect();
    for code in [
        "passkey_user_not_verified",
        "bad_challenge",
        "unknown_credential",
        "passkey_origin_not_allowed",
        "passkey_rp_id_mismatch",
        "passkey_challenge_mismatch",
        "passkey_counter_regressed",
        "wrong_submitter",
    ] {
        assert!(
            reasons.contains(&code),
            "no receipt for {code}: {reasons:?}"
        );
    }

    // Offline: the exported log re-checks both passkey approvals against
    // credentials its own confirmation receipts name.
    let dir = tempfile::tempdir().expect("tempdir");
    let published = api.get(None, "/.well-known/dualtrust-approvers.json").await;
    assert_eq!(published["relying_party"]["id"], "localhost");
    let doc = dir.path().join("approvers.json");
    std::fs::write(&doc, published.to_string()).expect("doc");
    let verified = data.offline_verify_approvals(&doc).expect("offline verify");
    assert!(
        verified.contains("0 Ed25519, 4 passkey"),
        "intent and result each carry both: {verified}"
    );
    let mut forged = published.clone();
    forged["relying_party"]["id"] = json!("evil.example");
    let forged_doc = dir.path().join("forged.json");
    std::fs::write(&forged_doc, forged.to_string()).expect("doc");
    let refused = data
        .offline_verify_approvals(&forged_doc)
        .expect_err("a passkey approval is checked, not counted");
    assert!(refused.contains("relying party"), "{refused}");

    // Alice loses her authenticator: once revoked, her passkey counts for
    // nothing, not even the approval it gave the call that still waits.
    let before = api
        .get(Some(&bob_token), &format!("/approvals/{lease}"))
        .await;
    assert_eq!(before["approved_by"], json!(["alice", "bob"]), "{before}");
    cli_ok(
        &data,
        &[
            "passkeys",
            "revoke",
            "--credential",
            &alice.credential_id_b64(),
        ],
    );
    let after = api
        .get(Some(&bob_token), &format!("/approvals/{lease}"))
        .await;
    assert_eq!(after["approved_by"], json!(["bob"]), "{after}");
    let (code, body) = api
        .approve(&alice_token, "alice", &lease, &mut alice, &statement)
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("unknown_credential")),
        "{body}"
    );
    assert!(cli_ok(&data, &["passkeys", "list"]).contains("revoked"));

    // Bob ends the call with his passkey over the rejection statement; an
    // approval's assertion cannot stand for a rejection.
    let reason = "not during the freeze";
    let rejection = view["sign_to_reject"]
        .as_str()
        .expect("rejection statement")
        .replace("<your reason>", reason);
    let reject = |assertion: dualtrust::webauthn::Assertion| json!({ "lease_id": lease, "approver_id": "bob", "passkey": assertion, "reason": reason });
    let (code, body) = api
        .post(&bob_token, "/rejections", reject(bob.assert(&statement)))
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("passkey_challenge_mismatch")),
        "{body}"
    );
    let (code, body) = api
        .post(&bob_token, "/rejections", reject(bob.assert(&rejection)))
        .await;
    assert_eq!((code, body["ended"].clone()), (200, json!(true)), "{body}");
    assert!(body["receipt"]["body"]["outcome"]["passkey"]["signature"].is_string());
    let (refused, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DELETE FROM orders", "lease_id": lease }),
    )
    .await;
    assert!(refused.to_string().contains(reason), "{refused}");
    let again = data.cli(&[
        "passkeys",
        "revoke",
        "--credential",
        &alice.credential_id_b64(),
    ]);
    assert!(!again.status.success(), "a revocation is made once");
    assert!(
        data.receipts()
            .iter()
            .any(|r| r["body"]["decision"] == "passkey_revoked"),
        "the revocation is a receipt"
    );
    agent.cancel().await.expect("close");
}
