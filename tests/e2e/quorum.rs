use serde_json::{Value, json};

use crate::common::{Approver, DataDir, call, error_code, lease_of, receipt, status};

/// Three approvers, 2 of 3 for destructive calls; `carol` is also the
/// token subject `carol@idp`.
fn setup(extra: &str) -> (DataDir, Approver, Approver, Approver) {
    let data = DataDir::new();
    let (alice, bob, carol) = (
        data.approver("alice"),
        data.approver("bob"),
        data.approver("carol"),
    );
    data.configure(
        &[
            (&alice, Some("alice@idp")),
            (&bob, None),
            (&carol, Some("carol@idp")),
        ],
        &format!("[quorum]\nk = 2\n{extra}"),
    );
    (data, alice, bob, carol)
}

fn decisions(data: &DataDir) -> Vec<String> {
    data.receipts()
        .iter()
        .map(|r| r["body"]["decision"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Approving beside the store is the operator's work on the store: the
/// command line neither asks the identity provider for keys nor connects to
/// the target database, so neither being away (or hostile) holds it up.
#[tokio::test]
async fn approving_from_the_command_line_reaches_neither_the_idp_nor_the_database() {
    let (data, alice, bob, carol) = setup("");
    let client = data
        .stdio_client(Some(
            &data.token("agent", "terminal:execute terminal:admin"),
        ))
        .await;
    std::fs::create_dir_all(data.workspace().join("build")).expect("mkdir");
    let (held, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["rm", "-rf", "build"] }),
    )
    .await;
    let lease = lease_of(&held);
    let listener = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        l
    };
    let (idp, database) = (listener(), listener());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("addr").port();
    data.configure(
        &[
            (&alice, Some("alice@idp")),
            (&bob, None),
            (&carol, Some("carol@idp")),
        ],
        &format!(
            "[quorum]\nk = 2\n[identity]\njwks_url = \"http://127.0.0.1:{}/jwks\"\n[database]\nurl = \"postgres://dt@127.0.0.1:{}/shop\"\n",
            port(&idp),
            port(&database)
        ),
    );
    let listed = data.cli(&["approvals", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&lease),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let out = data.approve(&lease, &alice);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 2"));
    for (name, l) in [("identity provider", &idp), ("database", &database)] {
        assert!(
            matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the command line connected to the {name}"
        );
    }
    client.cancel().await.expect("close");
}

/// An eligible approver can say no: a signed rejection, with a reason, ends
/// the held call at once, whatever approvals it already had; the agent is
/// told who and why, and the log holds the signed reason.
#[tokio::test]
async fn a_signed_rejection_ends_a_held_call_and_the_agent_learns_who_and_why() {
    let (data, alice, bob, carol) = setup("");
    let victim = data.workspace().join("build");
    std::fs::create_dir_all(&victim).expect("mkdir");
    let client = data
        .stdio_client(Some(
            &data.token("agent", "terminal:execute terminal:admin"),
        ))
        .await;
    let args = json!({ "argv": ["rm", "-rf", "build"] });
    let (held, _) = call(&client, "terminal.execute", args.clone()).await;
    let lease = lease_of(&held);
    assert!(
        held["approval"]["sign_to_reject"]
            .as_str()
            .unwrap_or_default()
            .starts_with("dualtrust-rejection-v1\n"),
        "{held}"
    );
    let reject = |approver: &Approver, key: &std::path::Path, reason: &str| {
        data.cli(&[
            "reject",
            "--lease",
            &lease,
            "--approver",
            &approver.id,
            "--key",
            key.to_str().expect("utf8"),
            "--reason",
            reason,
            "--yes",
        ])
    };
    let refused = |out: std::process::Output, code: &str| {
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains("rejection not recorded"), "{stderr}");
        let last = data.receipts().pop().expect("a receipt");
        assert_eq!(last["body"]["reason"], code, "{last}");
    };
    // Signed with another approver's key, or without a reason: refused.
    refused(reject(&bob, &alice.key, "no"), "bad_signature");
    refused(reject(&bob, &bob.key, " "), "invalid_reason");

    assert!(data.approve(&lease, &alice).status.success());
    let out = reject(&bob, &bob.key, "not during the release freeze");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut redeem = args.clone();
    redeem["lease_id"] = json!(lease);
    let (env, is_error) = call(&client, "terminal.execute", redeem).await;
    assert!(is_error);
    assert_eq!(error_code(&env), "rejected", "{env}");
    let message = env["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bob") && message.contains("not during the release freeze"),
        "{message}"
    );
    assert_eq!(receipt(&env)["body"]["reason"], "rejected");
    assert!(victim.exists(), "the rejected call did not run");
    // Later approvals count for nothing: the lease is over.
    assert!(!data.approve(&lease, &carol).status.success());

    let recorded = data
        .receipts()
        .into_iter()
        .find(|r| r["body"]["decision"] == "rejection_recorded")
        .expect("the rejection's receipt");
    let outcome = &recorded["body"]["outcome"];
    assert_eq!(outcome["approver"], "bob");
    assert_eq!(outcome["reason"], "not during the release freeze");
    // Anyone can recheck the signature over the documented statement
    // (Ed25519 is deterministic, so signing it again gives the same bytes).
    let statement = held["approval"]["sign_to_reject"]
        .as_str()
        .unwrap_or_default()
        .replace("<your reason>", "not during the release freeze");
    assert_eq!(outcome["signature"], data.sign(&bob, &statement));
    client.cancel().await.expect("close");
}

/// An approver's submissions over HTTP are limited per minute, keyed by
/// their token's subject, valid or not; the refusal is recorded like any
/// other, and another approver's budget is untouched.
#[tokio::test]
async fn approval_submissions_are_rate_limited_per_approver() {
    let (data, alice, _, carol) = setup("[limits]\napprovals_per_minute = 2\n");
    let server = data.http_server().await;
    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let (held, _) = call(&agent, "db.query", json!({ "sql": "DROP TABLE orders" })).await;
    let lease = lease_of(&held);
    let message = held["approval"]["sign"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let http = reqwest::Client::new();
    let post = |subject: &str, approver: &Approver, sig: String| {
        let (http, url) = (http.clone(), format!("{}/approvals", server.base));
        let token = data.token(subject, "approvals:write");
        let body = json!({ "lease_id": lease, "approver_id": approver.id, "signature": sig });
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("post");
            r.status().as_u16()
        }
    };
    for _ in 0..2 {
        assert_eq!(post("alice@idp", &alice, "A".repeat(86)).await, 403);
    }
    let valid = data.sign(&alice, &message);
    assert_eq!(
        post("alice@idp", &alice, valid).await,
        429,
        "past the limit, even a valid one"
    );
    let last = data.receipts().pop().expect("receipt");
    assert_eq!(last["body"]["reason"], "rate_limited");
    assert_eq!(
        post("carol@idp", &carol, data.sign(&carol, &message)).await,
        200,
        "carol has her own budget"
    );
    agent.cancel().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn destructive_command_runs_once_after_k_approvals() {
    let (data, alice, bob, _) = setup("");
    let victim = data.workspace().join("build");
    std::fs::create_dir_all(victim.join("deep")).expect("mkdir");
    let client = data
        .stdio_client(Some(
            &data.token("agent", "terminal:execute terminal:admin"),
        ))
        .await;
    let args = json!({ "argv": ["rm", "-rf", "build"] });

    let (held, is_error) = call(&client, "terminal.execute", args.clone()).await;
    assert!(is_error);
    assert_eq!(status(&held), "approval_required", "{held}");
    let lease = lease_of(&held);
    let approval = &held["approval"];
    assert_eq!(approval["k"], 2);
    assert_eq!(approval["approvers"], json!(["alice", "bob", "carol"]));
    assert_eq!(approval["requested_by"], "agent");
    assert!(
        approval["requested_by_token"].is_string() && approval["issued_at"].is_u64(),
        "the view says which token asked, and when: {approval}"
    );
    assert!(approval["requested_from"].is_null(), "stdio has no address");
    assert!(
        approval["summary"]
            .as_str()
            .unwrap_or("")
            .contains("recursively"),
        "{approval}"
    );
    assert!(
        approval["sign"]
            .as_str()
            .unwrap_or("")
            .starts_with("dualtrust-approval-v1\n")
    );
    assert!(
        approval["approve_command"]
            .as_str()
            .unwrap_or("")
            .contains(&lease)
    );
    assert!(victim.exists());

    let listed = data.cli(&["approvals", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&lease));

    let mut redeem = args.clone();
    redeem["lease_id"] = json!(lease);
    // Nothing runs on zero or k-1 approvals.
    let (env, _) = call(&client, "terminal.execute", redeem.clone()).await;
    assert_eq!(status(&env), "approval_required");
    let out = data.approve(&lease, &alice);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 2"));
    let (env, _) = call(&client, "terminal.execute", redeem.clone()).await;
    assert_eq!(status(&env), "approval_required", "k-1 approvals: {env}");
    // One code for the agent and the auditor, at issue and at redemption.
    assert_eq!(error_code(&env), "approval_required");
    assert_eq!(receipt(&env)["body"]["reason"], "approval_required");
    assert_eq!(env["approval"]["approved_by"], json!(["alice"]));
    assert!(victim.exists());
    // The same approver twice is one approval.
    assert!(!data.approve(&lease, &alice).status.success());
    let (env, _) = call(&client, "terminal.execute", redeem.clone()).await;
    assert_eq!(status(&env), "approval_required");

    assert!(data.approve(&lease, &bob).status.success());
    let (env, is_error) = call(&client, "terminal.execute", redeem.clone()).await;
    assert!(!is_error, "{env}");
    assert_eq!(env["result"]["exit_code"], 0);
    assert!(!victim.exists(), "the approved call ran");
    let approvals = &receipt(&env)["body"]["outcome"]["approvals"];
    let approvers: Vec<&str> = approvals
        .as_array()
        .expect("listed")
        .iter()
        .filter_map(|a| a["approver"].as_str())
        .collect();
    assert_eq!(approvers, ["alice", "bob"]);
    assert!(
        approvals[0]["signature"]
            .as_str()
            .is_some_and(|s| s.len() == 86)
    );

    // Exactly once.
    let (env, _) = call(&client, "terminal.execute", redeem).await;
    assert_eq!(error_code(&env), "lease_consumed");
    client.cancel().await.expect("close");

    // The intent is logged before the outcome.
    let log = decisions(&data);
    let intent = log
        .iter()
        .position(|d| d == "intent")
        .expect("intent logged");
    assert_eq!(log[intent + 1], "allowed");
    assert_eq!(log.iter().filter(|d| *d == "approval_recorded").count(), 2);
}

#[tokio::test]
async fn a_lease_binds_subject_tool_and_arguments() {
    let (data, alice, bob, _) = setup("");
    std::fs::write(data.workspace().join("a.txt"), "a").expect("write");
    std::fs::write(data.workspace().join("b.txt"), "b").expect("write");
    let scopes = "terminal:execute terminal:admin db:read db:admin";
    let agent = data.stdio_client(Some(&data.token("agent", scopes))).await;
    let other = data
        .stdio_client(Some(&data.token("other-agent", scopes)))
        .await;
    let (held, _) = call(
        &agent,
        "terminal.execute",
        json!({ "argv": ["rm", "a.txt"] }),
    )
    .await;
    let lease = lease_of(&held);
    assert!(data.approve(&lease, &alice).status.success());
    assert!(data.approve(&lease, &bob).status.success());

    let (env, _) = call(
        &agent,
        "terminal.execute",
        json!({ "argv": ["rm", "b.txt"], "lease_id": lease }),
    )
    .await;
    assert_eq!(error_code(&env), "lease_wrong_arguments");
    let (env, _) = call(
        &other,
        "terminal.execute",
        json!({ "argv": ["rm", "a.txt"], "lease_id": lease }),
    )
    .await;
    assert_eq!(error_code(&env), "lease_wrong_subject");
    let (env, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DROP TABLE orders", "lease_id": lease }),
    )
    .await;
    assert_eq!(error_code(&env), "lease_wrong_tool");
    for bad in [
        json!("nope"),
        json!(7),
        json!("ffffffffffffffffffffffffffffffff"),
    ] {
        let (env, _) = call(
            &agent,
            "terminal.execute",
            json!({ "argv": ["rm", "a.txt"], "lease_id": bad }),
        )
        .await;
        assert!(
            matches!(error_code(&env), "invalid_lease_id" | "lease_not_found"),
            "{env}"
        );
        receipt(&env);
    }
    assert!(data.workspace().join("a.txt").exists() && data.workspace().join("b.txt").exists());

    let (env, _) = call(
        &agent,
        "terminal.execute",
        json!({ "argv": ["rm", "a.txt"], "lease_id": lease }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert!(!data.workspace().join("a.txt").exists() && data.workspace().join("b.txt").exists());
    agent.cancel().await.expect("close");
    other.cancel().await.expect("close");
}

#[tokio::test]
async fn expired_leases_and_their_approvals_do_not_pass() {
    let (data, alice, bob, _) = setup("[leases]\nttl_s = 2\n");
    let client = data
        .stdio_client(Some(&data.token("agent", "db:read db:admin")))
        .await;
    let (held, _) = call(&client, "db.query", json!({ "sql": "DROP TABLE products" })).await;
    let lease = lease_of(&held);
    assert!(data.approve(&lease, &alice).status.success());
    tokio::time::sleep(std::time::Duration::from_millis(2_300)).await;
    let late = data.approve(&lease, &bob);
    assert!(!late.status.success());
    assert!(String::from_utf8_lossy(&late.stderr).contains("expired"));
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "DROP TABLE products", "lease_id": lease }),
    )
    .await;
    assert_eq!(error_code(&env), "lease_expired");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM products" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[8]]));
    client.cancel().await.expect("close");
}

/// An approver on their own machine: another data directory, sharing no
/// file with the server, with their token and their key only. They list the
/// held calls, review one, sign locally and post; the call runs once. A
/// rejection from there ends another held call.
#[tokio::test]
async fn approvers_approve_and_reject_from_their_own_machine() {
    let (data, alice, _bob, carol) = setup("");
    let server = data.http_server().await;
    let agent = server
        .client(&data.token("agent", "db:read db:admin"))
        .await;
    let (held, _) = call(&agent, "db.query", json!({ "sql": "DELETE FROM orders" })).await;
    let lease = lease_of(&held);
    let (other, _) = call(&agent, "db.query", json!({ "sql": "DROP TABLE customers" })).await;
    let other_lease = lease_of(&other);

    let laptop = |approver: &Approver, subject: &str| {
        let home = DataDir::new();
        let key = home.path.join("my.key");
        std::fs::copy(&approver.key, &key).expect("the approver's own key");
        let token = data.token(subject, "approvals:write");
        (home, key, token)
    };
    let run = |home: &DataDir, token: &str, args: &[&str]| {
        std::process::Command::new(crate::common::BIN)
            .arg("--data-dir")
            .arg(&home.path)
            .args(args)
            .env_remove("DUALTRUST_TOKEN")
            .env("DUALTRUST_APPROVER_TOKEN", token)
            .output()
            .expect("run dualtrust")
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (alice_home, alice_key, alice_token) = laptop(&alice, "alice@idp");
    let listed = ok(run(
        &alice_home,
        &alice_token,
        &["approvals", "list", "--server", &server.base],
    ));
    assert!(
        listed.contains(&lease) && listed.contains(&other_lease),
        "{listed}"
    );
    assert!(listed.contains("`DROP TABLE customers`"), "{listed}");
    // An agent's SQL carrying terminal escape sequences (to erase the line
    // above and write another) reaches the approver's terminal as text.
    let (sly, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "UPDATE orders SET note = '\u{1b}[1A\u{1b}[2Kharmless'" }),
    )
    .await;
    let sly_lease = lease_of(&sly);
    for args in [
        vec!["approvals", "list", "--server", &server.base],
        vec![
            "approvals",
            "show",
            "--server",
            &server.base,
            "--lease",
            &sly_lease,
        ],
    ] {
        let printed = ok(run(&alice_home, &alice_token, &args));
        assert!(
            !printed.contains('\u{1b}') && printed.contains("\\u{1b}[1A"),
            "{printed:?}"
        );
    }
    let shown = ok(run(
        &alice_home,
        &alice_token,
        &[
            "approvals",
            "show",
            "--server",
            &server.base,
            "--lease",
            &other_lease,
        ],
    ));
    assert!(
        shown.contains("`DROP TABLE customers`")
            && shown.contains("from 127.0.0.1")
            && shown.contains(&format!("lease={other_lease}")),
        "{shown}"
    );
    let approve = |home: &DataDir, token: &str, id: &str, key: &std::path::Path| {
        run(
            home,
            token,
            &[
                "approve",
                "--server",
                &server.base,
                "--lease",
                &lease,
                "--approver",
                id,
                "--key",
                key.to_str().expect("utf8"),
                "--yes",
            ],
        )
    };
    assert!(ok(approve(&alice_home, &alice_token, "alice", &alice_key)).contains("1 of 2"));
    let (carol_home, carol_key, carol_token) = laptop(&carol, "carol@idp");
    // A token without approvals:write gets nothing signed through.
    let weak = data.token("carol@idp", "db:read");
    assert!(
        !approve(&carol_home, &weak, "carol", &carol_key)
            .status
            .success()
    );
    assert!(ok(approve(&carol_home, &carol_token, "carol", &carol_key)).contains("2 of 2"));
    let (env, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DELETE FROM orders", "lease_id": lease }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert!(
        !alice_home.path.join("store.db").exists(),
        "the approver's machine holds no store"
    );

    ok(run(
        &alice_home,
        &alice_token,
        &[
            "reject",
            "--server",
            &server.base,
            "--lease",
            &other_lease,
            "--approver",
            "alice",
            "--key",
            alice_key.to_str().expect("utf8"),
            "--reason",
            "keep the customers",
            "--yes",
        ],
    ));
    let (env, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DROP TABLE customers", "lease_id": other_lease }),
    )
    .await;
    assert_eq!(error_code(&env), "rejected", "{env}");
    agent.cancel().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn approvals_over_http_are_bound_to_the_approver_the_lease_and_the_key() {
    let (data, alice, bob, carol) = setup("");
    let server = data.http_server().await;
    let agent = server
        .client(&data.token("carol@idp", "db:read db:admin"))
        .await;
    let (held, _) = call(&agent, "db.query", json!({ "sql": "DELETE FROM orders" })).await;
    let lease = lease_of(&held);
    let (held_b, _) = call(&agent, "db.query", json!({ "sql": "DROP TABLE customers" })).await;
    let other_lease = lease_of(&held_b);

    let http = reqwest::Client::new();
    let post = |token: String, body: Value| {
        let http = http.clone();
        let url = format!("{}/approvals", server.base);
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("post");
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let alice_token = data.token("alice@idp", "approvals:write");
    let view: Value = http
        .get(format!("{}/approvals/{lease}", server.base))
        .bearer_auth(&alice_token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(view["requested_by"], "carol@idp");
    assert_eq!(view["requested_from"], "127.0.0.1", "{view}");
    assert!(
        view["summary"]
            .as_str()
            .unwrap_or("")
            .contains("DELETE without WHERE"),
        "{view}"
    );
    let message = view["sign"].as_str().expect("statement").to_string();
    let other_message = held_b["approval"]["sign"]
        .as_str()
        .expect("statement")
        .to_string();

    let submit = |approver: &str, sig: String, lease: &str| json!({ "lease_id": lease, "approver_id": approver, "signature": sig });
    // Without approvals:write.
    let (code, body) = post(
        data.token("alice@idp", "db:read"),
        submit("alice", data.sign(&alice, &message), &lease),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    // Alice's token cannot submit for bob (bob has no bound subject, so no token may).
    let (code, body) = post(
        alice_token.clone(),
        submit("bob", data.sign(&bob, &message), &lease),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("wrong_submitter"))
    );
    // A signature forwarded from another lease, or by another key.
    let (code, body) = post(
        alice_token.clone(),
        submit("alice", data.sign(&alice, &other_message), &lease),
    )
    .await;
    assert_eq!((code, body["error"].as_str()), (403, Some("bad_signature")));
    let (code, body) = post(
        alice_token.clone(),
        submit("alice", data.sign(&alice, &message), &other_lease),
    )
    .await;
    assert_eq!((code, body["error"].as_str()), (403, Some("bad_signature")));
    let (code, body) = post(
        alice_token.clone(),
        submit("alice", data.sign(&bob, &message), &lease),
    )
    .await;
    assert_eq!((code, body["error"].as_str()), (403, Some("bad_signature")));
    // Unregistered approvers, malformed input.
    let (code, body) = post(
        alice_token.clone(),
        submit("mallory", data.sign(&alice, &message), &lease),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("unknown_approver"))
    );
    let (code, body) = post(alice_token.clone(), submit("alice", "!!".into(), &lease)).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("malformed_signature"))
    );
    let (code, _) = post(
        alice_token.clone(),
        submit("alice", data.sign(&alice, &message), "../../etc"),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = post(alice_token.clone(), json!({ "lease_id": lease })).await;
    assert_eq!(code, 400);
    // The requester cannot approve their own call.
    let carol_token = data.token("carol@idp", "approvals:write");
    let (code, body) = post(
        carol_token,
        submit("carol", data.sign(&carol, &message), &lease),
    )
    .await;
    assert_eq!((code, body["error"].as_str()), (403, Some("self_approval")));

    let (code, body) = post(
        alice_token.clone(),
        submit("alice", data.sign(&alice, &message), &lease),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["approvals"].as_u64(), body["complete"].as_bool()),
        (Some(1), Some(false))
    );
    assert!(body["receipt"].is_object());
    let (code, body) = post(
        alice_token.clone(),
        submit("alice", data.sign(&alice, &message), &lease),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("duplicate_approval"))
    );

    // Only one valid approval: still held.
    let (env, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DELETE FROM orders", "lease_id": lease }),
    )
    .await;
    assert_eq!(status(&env), "approval_required");
    assert!(data.approve(&lease, &bob).status.success());
    let (env, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DELETE FROM orders", "lease_id": lease }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["rows_affected"], 15);

    // The other held call, refused over HTTP. The approver sees which table.
    let summary = held_b["approval"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("`DROP TABLE customers`"), "{summary}");
    let reject = |token: String, body: Value| {
        let http = http.clone();
        let url = format!("{}/rejections", server.base);
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("post");
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let reason = "customers is the system of record";
    let statement = held_b["approval"]["sign_to_reject"]
        .as_str()
        .unwrap_or_default()
        .replace("<your reason>", reason);
    let rejection = |sig: String| json!({ "lease_id": other_lease, "approver_id": "alice", "signature": sig, "reason": reason });
    let before = data.receipts().len();
    let (code, body) = reject(
        data.token("alice@idp", "db:read"),
        rejection(data.sign(&alice, &statement)),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    let (code, body) = reject(alice_token.clone(), json!({ "lease_id": other_lease })).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // An approval is not a rejection: the domains differ.
    let (code, body) = reject(
        alice_token.clone(),
        rejection(data.sign(&alice, &other_message)),
    )
    .await;
    assert_eq!((code, body["error"].as_str()), (403, Some("bad_signature")));
    assert_eq!(
        data.receipts().len(),
        before + 3,
        "each refusal is recorded"
    );
    let (code, body) = reject(
        alice_token.clone(),
        rejection(data.sign(&alice, &statement)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rejected_by"], "alice");
    let (env, _) = call(
        &agent,
        "db.query",
        json!({ "sql": "DROP TABLE customers", "lease_id": other_lease }),
    )
    .await;
    assert_eq!(error_code(&env), "rejected", "{env}");

    // What an approver reads needs the scope too; each refusal is recorded.
    let before = data.receipts().len();
    let weak = data.token("alice@idp", "db:read");
    for path in [
        "/approvals".to_string(),
        "/approvals/history".to_string(),
        format!("/approvals/{lease}"),
    ] {
        let r = http
            .get(format!("{}{path}", server.base))
            .bearer_auth(&weak)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    let refusals = data.receipts();
    assert_eq!(refusals.len(), before + 3);
    assert!(
        refusals[before..]
            .iter()
            .all(|r| r["body"]["reason"] == "insufficient_scope")
    );
    // An agent retrying its spent lease adds a refusal receipt each time;
    // the history keeps the first ones, which tell what happened.
    for _ in 0..32 {
        let (env, _) = call(
            &agent,
            "db.query",
            json!({ "sql": "DELETE FROM orders", "lease_id": lease }),
        )
        .await;
        assert_eq!(error_code(&env), "lease_consumed");
    }
    // Alice's history: both calls, how they ended, and their receipts.
    let history: Value = http
        .get(format!("{}/approvals/history", server.base))
        .bearer_auth(&alice_token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let decided = history["decided"].as_array().expect("decided");
    let entry = |id: &str| {
        decided
            .iter()
            .find(|d| d["lease_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {history}"))
            .clone()
    };
    assert_eq!(entry(&lease)["state"], "consumed");
    assert_eq!(entry(&lease)["receipts_truncated"], true);
    assert_eq!(entry(&lease)["receipts"].as_array().map(Vec::len), Some(32));
    assert_eq!(entry(&other_lease)["receipts_truncated"], false);
    assert_eq!(entry(&other_lease)["rejections"][0]["reason"], reason);
    let ran = entry(&lease);
    let decisions: Vec<&str> = ran["receipts"]
        .as_array()
        .expect("receipts")
        .iter()
        .filter_map(|r| r["body"]["decision"].as_str())
        .collect();
    for decision in ["approval_required", "approval_recorded", "allowed"] {
        assert!(decisions.contains(&decision), "{decisions:?}");
    }
    agent.cancel().await.expect("close");
    server.stop().await;
}

/// Policy may need more than one rejection: each is recorded and shown,
/// the call waits until the last one needed, then ends naming them all.
#[tokio::test]
async fn a_held_call_can_need_several_rejections() {
    let (data, alice, _bob, carol) = setup("rejections = 2\n");
    let client = data
        .stdio_client(Some(&data.token("agent", "db:read db:admin")))
        .await;
    let args = json!({ "sql": "DELETE FROM orders" });
    let (held, _) = call(&client, "db.query", args.clone()).await;
    let lease = lease_of(&held);
    let reject = |approver: &Approver, reason: &str| {
        data.cli(&[
            "reject",
            "--lease",
            &lease,
            "--approver",
            &approver.id,
            "--key",
            approver.key.to_str().expect("utf8"),
            "--reason",
            reason,
            "--yes",
        ])
    };
    let out = reject(&alice, "too broad");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains("1 of 2"),
        "{stdout}"
    );
    // The same approver twice is one rejection.
    let again = reject(&alice, "still too broad");
    assert!(!again.status.success());
    assert_eq!(
        data.receipts().pop().expect("receipt")["body"]["reason"],
        "duplicate_approval"
    );
    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let (env, _) = call(&client, "db.query", redeem.clone()).await;
    assert_eq!(
        status(&env),
        "approval_required",
        "one rejection of two: {env}"
    );
    let view = &env["approval"];
    assert_eq!(view["rejected_by"], json!(["alice"]), "{env}");
    assert_eq!(view["rejections_needed"], 2);

    let out = reject(&carol, "no backup");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("will not run"));
    let (env, _) = call(&client, "db.query", redeem).await;
    assert_eq!(error_code(&env), "rejected", "{env}");
    let message = env["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("alice, carol") && message.contains("too broad / no backup"),
        "{message}"
    );
    client.cancel().await.expect("close");
}

/// Suspending an approver is removing their key from the configuration:
/// from the next start their approvals, even those already given, count
/// for nothing.
#[tokio::test]
async fn an_approver_whose_key_is_removed_no_longer_counts() {
    let (data, alice, bob, carol) = setup("");
    let token = data.token("agent", "db:read db:admin");
    let args = json!({ "sql": "DELETE FROM orders" });
    let client = data.stdio_client(Some(&token)).await;
    let (held, _) = call(&client, "db.query", args.clone()).await;
    let lease = lease_of(&held);
    assert!(data.approve(&lease, &alice).status.success());
    client.cancel().await.expect("close");

    data.configure(
        &[(&bob, None), (&carol, Some("carol@idp"))],
        "[quorum]\nk = 2\n",
    );
    assert!(data.approve(&lease, &bob).status.success());
    let refused = data.approve(&lease, &alice);
    assert!(!refused.status.success(), "alice is no longer registered");
    let client = data.stdio_client(Some(&token)).await;
    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let (env, _) = call(&client, "db.query", redeem.clone()).await;
    assert_eq!(
        status(&env),
        "approval_required",
        "alice's approval lapsed: {env}"
    );
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1 of 2"),
        "{env}"
    );
    assert!(data.approve(&lease, &carol).status.success());
    let (env, _) = call(&client, "db.query", redeem).await;
    assert_eq!(status(&env), "ok", "{env}");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn a_forged_approval_row_in_the_store_counts_for_nothing() {
    let (data, alice, _, _) = setup("");
    let client = data
        .stdio_client(Some(&data.token("agent", "db:read db:admin")))
        .await;
    let (held, _) = call(&client, "db.query", json!({ "sql": "DROP TABLE orders" })).await;
    let lease = lease_of(&held);
    assert!(data.approve(&lease, &alice).status.success());
    // Someone with write access to the store adds a second approval by hand.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        data.path.join("state.db").display()
    ))
    .await
    .expect("open store");
    sqlx::query("INSERT INTO approvals (lease_id, approver_id, signature, signed_at) VALUES (?, 'bob', ?, 0)")
        .bind(&lease)
        .bind("A".repeat(86))
        .execute(&pool)
        .await
        .expect("forge");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "DROP TABLE orders", "lease_id": lease }),
    )
    .await;
    assert_eq!(status(&env), "approval_required", "{env}");
    assert_eq!(env["approval"]["approved_by"], json!(["alice"]));
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn fifty_concurrent_redemptions_of_one_lease_run_exactly_once() {
    let (data, _, _, _) = setup("[leases]\nexplicit = [\"db.query:write\"]\n");
    let server = data.http_server().await;
    let client = server
        .client(&data.token("agent", "db:read db:write"))
        .await;
    let sql = "UPDATE products SET stock = stock + 1 WHERE sku = 'CB-006'";
    let (issued, _) = call(&client, "db.query", json!({ "sql": sql })).await;
    assert_eq!(status(&issued), "lease_issued", "{issued}");
    let lease = lease_of(&issued);
    let calls = (0..50).map(|_| {
        call(
            &client,
            "db.query",
            json!({ "sql": sql, "lease_id": lease }),
        )
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results
        .iter()
        .filter(|(env, _)| status(env) == "ok")
        .count();
    let consumed = results
        .iter()
        .filter(|(env, _)| error_code(env) == "lease_consumed")
        .count();
    assert_eq!((ok, consumed), (1, 49));
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT stock FROM products WHERE sku = 'CB-006'" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[401]]));
    client.cancel().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn even_an_approved_command_cannot_write_outside_the_roots() {
    let (data, alice, bob, _) = setup("");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("keep.txt");
    std::fs::write(&target, "outside the roots").expect("write");
    let server = data.http_server().await;
    let ready: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    let sandbox = ready["terminal_sandbox"].as_str().unwrap_or("").to_string();
    assert!(!sandbox.is_empty(), "{ready}");
    let client = server
        .client(&data.token("agent", "terminal:execute terminal:admin"))
        .await;
    let args = json!({ "argv": ["rm", "-f", target.to_str().expect("utf8")] });
    let (held, _) = call(&client, "terminal.execute", args.clone()).await;
    let lease = lease_of(&held);
    assert!(data.approve(&lease, &alice).status.success());
    assert!(data.approve(&lease, &bob).status.success());
    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let (env, _) = call(&client, "terminal.execute", redeem).await;
    assert_eq!(status(&env), "ok", "{env}");
    // The file does not even exist inside the command's root, so `rm -f`
    // has nothing to remove; on the host it is untouched.
    if sandbox == "fully_enforced" {
        assert_eq!(
            std::fs::read_to_string(&target).ok().as_deref(),
            Some("outside the roots"),
            "{env}"
        );
    }
    client.cancel().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn an_approved_shell_leaves_no_background_children() {
    let (data, alice, bob, _) = setup("[terminal]\nallow_shell = true\n");
    let client = data
        .stdio_client(Some(
            &data.token("agent", "terminal:execute terminal:admin"),
        ))
        .await;
    // Shells are allowed here, and every shell call is destructive.
    let marker = "31.4159";
    // A runaway killed at its deadline, and a shell that exits at once
    // leaving a child behind: neither child survives the call.
    for (script, timed_out) in [
        (
            format!("sleep {marker} & sleep {marker} & yes > /dev/null"),
            true,
        ),
        (format!("sleep {marker} & echo started"), false),
    ] {
        let args = json!({ "argv": ["sh", "-c", script], "timeout_ms": 800 });
        let (held, _) = call(&client, "terminal.execute", args.clone()).await;
        assert_eq!(status(&held), "approval_required", "{held}");
        let lease = lease_of(&held);
        assert!(data.approve(&lease, &alice).status.success());
        assert!(data.approve(&lease, &bob).status.success());
        let mut redeem = args;
        redeem["lease_id"] = json!(lease);
        let (env, _) = call(&client, "terminal.execute", redeem).await;
        assert_eq!(env["result"]["timed_out"], timed_out, "{env}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let survivors = std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|cmd| String::from_utf8_lossy(cmd).contains(marker))
            .count();
        assert_eq!(survivors, 0, "background children outlived the call");
    }
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn an_approved_fork_bomb_is_contained_and_killed() {
    let (data, alice, bob, _) = setup("[terminal]\nallow_shell = true\nmax_processes = 32\n");
    let server = data.http_server().await;
    let ready: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    // Never run a fork bomb without a process limit under it.
    if ready["terminal_process_limit"] != "pids_cgroup" {
        eprintln!("skipping the fork bomb: {ready}");
        server.stop().await;
        return;
    }
    let client = server
        .client(&data.token("agent", "terminal:execute terminal:admin"))
        .await;
    let args = json!({ "argv": ["sh", "-c", "b() { b | b & }; b"], "timeout_ms": 1500 });
    let (held, _) = call(&client, "terminal.execute", args.clone()).await;
    let lease = lease_of(&held);
    assert!(data.approve(&lease, &alice).status.success());
    assert!(data.approve(&lease, &bob).status.success());
    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let started = std::time::Instant::now();
    let (env, _) = call(&client, "terminal.execute", redeem).await;
    assert_eq!(status(&env), "ok", "{env}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The server is still healthy, and nothing of the bomb is left.
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["echo", "alive"] }),
    )
    .await;
    assert_eq!(env["result"]["stdout"], "alive\n", "{env}");
    // Only this server's cgroups: other tests run commands in parallel.
    let own = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(format!("dualtrust-{}", server.pid().expect("pid")));
    let leftovers: usize = std::fs::read_dir(&own)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            std::fs::read_to_string(e.path().join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(leftovers, 0, "processes survived in a command cgroup");
    client.cancel().await.expect("close");
    server.stop().await;
}
