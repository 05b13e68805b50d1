use serde_json::{Value, json};

use crate::common::{DataDir, call, error_code, receipt, status};

const ALL_READ: &str = "db:read audit:read passport:issue terminal:execute";

#[tokio::test]
async fn lists_the_tools_each_token_can_use_with_schemas() {
    let data = DataDir::new();
    // Each token sees the tools its scopes can use at all.
    for (scopes, want) in [
        ("db:read", vec!["db.query", "db.schema"]),
        (
            "db:admin audit:read",
            vec!["audit.verify", "db.query", "db.schema"],
        ),
        ("approvals:write", vec![]),
    ] {
        let client = data.stdio_client(Some(&data.token("bob", scopes))).await;
        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(names, want, "{scopes}");
        client.cancel().await.expect("close");
    }
    let client = data.stdio_client(None).await;
    assert!(
        client
            .list_all_tools()
            .await
            .expect("tools/list")
            .is_empty(),
        "no token, no tools"
    );
    client.cancel().await.expect("close");
    let client = data
        .stdio_client(Some(&data.token(
            "alice",
            "db:read audit:read passport:issue terminal:execute",
        )))
        .await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audit.verify",
            "db.query",
            "db.schema",
            "passport.issue",
            "terminal.execute"
        ]
    );
    for tool in &tools {
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            tool.name
        );
        assert!(tool.output_schema.is_some(), "{}", tool.name);
    }
    let db = tools
        .iter()
        .find(|t| t.name == "db.query")
        .expect("db.query");
    assert_eq!(db.input_schema["required"], json!(["sql"]));
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn read_query_returns_rows_and_a_receipt_that_verifies() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("alice", ALL_READ)))
        .await;
    let (env, is_error) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT name FROM customers WHERE country = ? ORDER BY id", "params": ["GB"] }),
    )
    .await;
    assert!(!is_error, "{env}");
    assert_eq!(status(&env), "ok");
    assert_eq!(env["result"]["columns"], json!(["name"]));
    assert_eq!(
        env["result"]["rows"],
        json!([["Ada Lovelace"], ["Alan Turing"], ["Tony Hoare"]])
    );
    let r = receipt(&env).clone();
    assert_eq!(r["body"]["decision"], "allowed");
    assert_eq!(r["body"]["subject"], "alice");
    assert_eq!(r["body"]["scope"], "db:read");
    assert!(
        r["body"]["lease"].is_string(),
        "the consumed lease is named"
    );

    let (verdict, _) = call(&client, "audit.verify", json!({ "receipt": r })).await;
    assert_eq!(verdict["result"]["valid"], true, "{verdict}");
    assert_eq!(
        verdict["result"]["checks"].as_array().map(Vec::len),
        Some(4)
    );

    // Tampering with any signed field is caught and named.
    let mut forged = r.clone();
    forged["body"]["subject"] = json!("mallory");
    let (verdict, _) = call(&client, "audit.verify", json!({ "receipt": forged })).await;
    assert_eq!(verdict["result"]["valid"], false);
    assert_eq!(verdict["result"]["failed"], "hash");

    let mut resigned = r.clone();
    resigned["body"]["subject"] = json!("mallory");
    let canonical = serde_json_canonicalizer::to_vec(&resigned["body"]).expect("jcs");
    resigned["hash"] = json!(dualtrust::sha256_hex(&canonical));
    let (verdict, _) = call(&client, "audit.verify", json!({ "receipt": resigned })).await;
    assert_eq!(verdict["result"]["failed"], "signature");

    let mut elsewhere = r.clone();
    elsewhere["body"]["seq"] = json!(999);
    let (verdict, _) = call(&client, "audit.verify", json!({ "receipt": elsewhere })).await;
    assert_eq!(verdict["result"]["failed"], "hash");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn write_sql_with_read_scope_is_denied_and_changes_nothing() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("alice", "db:read")))
        .await;
    for sql in [
        "DELETE FROM orders WHERE id = 1",
        "INSERT INTO customers (name, email, country, created_at) VALUES ('x', 'x@x', 'XX', 'now')",
        "WITH gone AS (DELETE FROM orders WHERE id = 2 RETURNING *) SELECT * FROM gone",
    ] {
        let (env, is_error) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert!(is_error, "{sql}");
        assert_eq!(status(&env), "denied", "{sql}");
        assert_eq!(error_code(&env), "insufficient_scope", "{sql}");
        assert_eq!(receipt(&env)["body"]["decision"], "denied");
        assert!(
            receipt(&env)["body"]["lease"].is_null(),
            "no lease for a denial"
        );
    }
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) AS n FROM orders" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[15]]));
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM customers" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[10]]));
    client.cancel().await.expect("close");
}

/// A tool's classifier looks at the host (the terminal resolves working
/// directories and paths), so a caller holding none of the tool's scopes
/// must get the same answer whatever it names: nothing to learn from.
#[tokio::test]
async fn a_caller_without_any_of_a_tools_scopes_learns_nothing_from_its_classifier() {
    let data = DataDir::new();
    std::fs::create_dir_all(data.workspace().join("exists")).expect("mkdir");
    let client = data
        .stdio_client(Some(&data.token("mallory", "db:read")))
        .await;
    let mut answers = Vec::new();
    for args in [
        json!({ "argv": ["ls"], "cwd": "exists" }),
        json!({ "argv": ["ls"], "cwd": "missing" }),
        json!({ "argv": ["cat", "/etc/passwd"] }),
        json!({ "argv": ["cat", "/no/such/file"] }),
        json!({ "argv": ["no-such-program"] }),
        json!({ "argv": [] }),
    ] {
        let (env, is_error) = call(&client, "terminal.execute", args.clone()).await;
        assert!(is_error, "{args}");
        assert_eq!(error_code(&env), "insufficient_scope", "{args}: {env}");
        let body = &receipt(&env)["body"];
        assert_eq!(body["reason"], "insufficient_scope", "{args}");
        assert_eq!(body["scope"], "terminal:execute", "{args}");
        assert!(body["class"].is_null(), "not classified: {args}");
        answers.push(env["error"]["message"].clone());
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "one answer for every probe: {answers:?}");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn writes_run_with_write_scope_and_batches_never_run() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("bob", "db:read db:write db:admin")))
        .await;
    let (env, is_error) = call(
        &client,
        "db.query",
        json!({ "sql": "UPDATE products SET stock = stock - ? WHERE sku = ?", "params": [2, "KB-001"] }),
    )
    .await;
    assert!(!is_error, "{env}");
    assert_eq!(env["result"]["rows_affected"], 1);
    assert_eq!(receipt(&env)["body"]["class"], "write");

    for (sql, code) in [
        ("SELECT 1; DROP TABLE customers", "multiple_statements"),
        ("SELECT 1; COMMIT; DROP TABLE t", "multiple_statements"),
        ("SELEKT nonsense", "unparseable_sql"),
        ("COMMIT", "transaction_control"),
    ] {
        let (env, _) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert_eq!(error_code(&env), code, "{sql}");
        assert_eq!(receipt(&env)["body"]["decision"], "denied");
    }
    // Destructive SQL never runs without approvers, even with db:admin.
    let (env, _) = call(&client, "db.query", json!({ "sql": "DROP TABLE orders" })).await;
    assert_eq!(error_code(&env), "no_approvers", "{env}");
    assert_eq!(receipt(&env)["body"]["class"], "destructive");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT stock FROM products WHERE sku = 'KB-001'" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[40]]));
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM orders" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[15]]), "DROP did not run");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn destructive_command_never_runs_without_registered_approvers() {
    let data = DataDir::new();
    let victim = data.workspace().join("precious.txt");
    std::fs::write(&victim, "keep me").expect("write");
    let client = data
        .stdio_client(Some(
            &data.token("carol", "terminal:execute terminal:admin"),
        ))
        .await;
    for argv in [
        json!(["rm", "-rf", "precious.txt"]),
        json!(["rm", "-f", "-r", "precious.txt"]),
        json!(["/bin/rm", "precious.txt"]),
    ] {
        let (env, is_error) = call(&client, "terminal.execute", json!({ "argv": argv })).await;
        assert!(is_error);
        assert_eq!(error_code(&env), "no_approvers", "{env}");
        assert!(
            env["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("deletes"),
            "{env}"
        );
        assert_eq!(receipt(&env)["body"]["class"], "destructive");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("still there"),
        "keep me"
    );

    // Without terminal:admin the same call is simply denied.
    let client2 = data
        .stdio_client(Some(&data.token("dave", "terminal:execute")))
        .await;
    let (env, _) = call(
        &client2,
        "terminal.execute",
        json!({ "argv": ["rm", "-rf", "precious.txt"] }),
    )
    .await;
    assert_eq!(error_code(&env), "insufficient_scope");
    for (argv, code) in [
        (
            json!(["sh", "-c", "rm -rf precious.txt"]),
            "shell_not_allowed",
        ),
        (json!(["env", "rm", "precious.txt"]), "wrapper_not_allowed"),
        (json!(["find", ".", "-delete"]), "forbidden_flag"),
    ] {
        let (env, _) = call(&client2, "terminal.execute", json!({ "argv": argv })).await;
        assert_eq!(error_code(&env), code, "{env}");
    }
    assert!(victim.exists());
    client.cancel().await.expect("close");
    client2.cancel().await.expect("close");
}

#[tokio::test]
async fn ordinary_commands_run_confined_with_limits() {
    let data = DataDir::new();
    std::fs::write(
        data.workspace().join("notes.txt"),
        "hello from the workspace\n",
    )
    .expect("write");
    let client = data
        .stdio_client(Some(&data.token("erin", "terminal:execute")))
        .await;
    let (env, is_error) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["cat", "notes.txt"] }),
    )
    .await;
    assert!(!is_error, "{env}");
    assert_eq!(env["result"]["stdout"], "hello from the workspace\n");
    assert_eq!(env["result"]["exit_code"], 0);

    // The environment is built from scratch.
    let (env, _) = call(&client, "terminal.execute", json!({ "argv": ["pwd"] })).await;
    let pwd = env["result"]["stdout"]
        .as_str()
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(pwd.ends_with("workspace"), "{pwd}");

    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["ls"], "cwd": "../" }),
    )
    .await;
    assert_eq!(error_code(&env), "cwd_not_allowed");
    for argv in [
        json!(["cat", "/etc/passwd"]),
        json!(["touch", "/tmp/dualtrust-escape"]),
        json!(["cp", "notes.txt", "../notes.txt"]),
    ] {
        let (env, _) = call(&client, "terminal.execute", json!({ "argv": argv })).await;
        assert_eq!(error_code(&env), "path_outside_roots", "{env}");
    }
    assert!(!std::path::Path::new("/tmp/dualtrust-escape").exists());

    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["sleep", "30"], "timeout_ms": 300 }),
    )
    .await;
    assert_eq!(env["result"]["timed_out"], true, "{env}");
    assert!(env["result"]["duration_ms"].as_u64().unwrap_or(u64::MAX) < 5_000);
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn identity_failures_are_denied_with_receipts() {
    let data = DataDir::new();
    let now = dualtrust::now_unix();
    let cases = [
        (None, "missing_token"),
        (Some("garbage".to_string()), "malformed_token"),
        (
            Some(data.forged_token(|c| c["exp"] = json!(now - 3600))),
            "expired",
        ),
        (
            Some(data.forged_token(|c| c["aud"] = json!("another-server"))),
            "wrong_audience",
        ),
        (
            Some(data.forged_token(|c| c["iss"] = json!("someone-else"))),
            "wrong_issuer",
        ),
    ];
    for (token, reason) in cases {
        let client = data.stdio_client(token.as_deref()).await;
        let (env, is_error) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
        assert!(is_error);
        // The caller and the auditor read the same code.
        assert_eq!(error_code(&env), reason);
        assert_eq!(receipt(&env)["body"]["reason"], reason);
        assert!(receipt(&env)["body"]["subject"].is_null());
        client.cancel().await.expect("close");
    }
}

/// The receipt, its proof and the checkpoint travel once, in the
/// structured content; the text a text-only client shows carries the
/// decision and the result, and names the receipt.
#[tokio::test]
async fn the_text_content_names_the_receipt_without_repeating_it() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("carol", "db:read")))
        .await;
    let result = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("db.query").with_arguments(
                json!({ "sql": "SELECT 41 + 1 AS answer" })
                    .as_object()
                    .cloned()
                    .expect("object"),
            ),
        )
        .await
        .expect("answered");
    let structured = result.structured_content.clone().expect("structured");
    let text = result
        .content
        .iter()
        .find_map(|c| c.as_text().map(|t| t.text.clone()))
        .expect("a text block");
    let shown: Value = serde_json::from_str(&text).expect("the text is JSON");
    assert_eq!(shown["status"], "ok");
    assert_eq!(shown["result"], structured["result"]);
    assert_eq!(shown["receipt"]["hash"], structured["receipt"]["hash"]);
    assert_eq!(
        shown["receipt"]["seq"],
        structured["receipt"]["body"]["seq"]
    );
    assert!(shown.get("log").is_none() && shown["receipt"].get("sig").is_none());
    assert!(
        text.len() * 2 < serde_json::to_string(&structured).expect("json").len(),
        "the text is not a second copy of the envelope"
    );
    client.cancel().await.expect("close");
}

/// The revocation list is served from memory: a revocation written by the
/// command line is refused within `identity.revocation_refresh_ms` (here
/// 200 ms), and at worst twice that.
#[tokio::test]
async fn revoked_token_is_refused_within_the_refresh_interval() {
    let data = DataDir::new();
    data.configure(&[], "[identity]\nrevocation_refresh_ms = 200\n");
    let token = data.forged_token(|c| c["jti"] = json!("revoke-me"));
    let client = data.stdio_client(Some(&token)).await;
    let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status(&env), "ok");
    let out = data.cli(&["revoke", "--jti", "revoke-me"]);
    assert!(out.status.success());
    let revoked = std::time::Instant::now();
    loop {
        let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
        if receipt(&env)["body"]["reason"] == "revoked" {
            break;
        }
        assert_eq!(status(&env), "ok", "{env}");
        assert!(
            revoked.elapsed() < std::time::Duration::from_millis(400),
            "still accepted {:?} after the revocation",
            revoked.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn passport_is_issued_and_verified() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("frank", "passport:issue audit:read")))
        .await;
    let (env, is_error) = call(
        &client,
        "passport.issue",
        json!({ "agent_id": "agent-7", "session_id": "s-1", "ttl_s": 120, "health": { "status": "ok", "version": "1.2.3" } }),
    )
    .await;
    assert!(!is_error, "{env}");
    let passport = env["result"]["passport"]
        .as_str()
        .expect("passport")
        .to_string();
    let claims = &env["result"]["claims"];
    assert_eq!(claims["sub"], "agent-7");
    assert_eq!(claims["act"]["sub"], "frank");
    assert_eq!(
        claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0),
        120
    );

    let (verdict, _) = call(&client, "audit.verify", json!({ "passport": passport })).await;
    assert_eq!(verdict["result"]["valid"], true, "{verdict}");

    // Stretching the expiry breaks the signature.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = passport.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
    payload["exp"] = json!(payload["exp"].as_u64().unwrap_or(0) + 86_400);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    let (verdict, _) = call(&client, "audit.verify", json!({ "passport": forged })).await;
    assert_eq!(verdict["result"]["failed"], "signature");

    for bad in [
        json!({ "agent_id": "" }),
        json!({ "agent_id": "a b" }),
        json!({ "agent_id": "a", "ttl_s": 999_999 }),
    ] {
        let (env, _) = call(&client, "passport.issue", bad.clone()).await;
        assert_eq!(status(&env), "denied", "{bad}");
    }
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn malformed_arguments_get_clear_denials() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("gina", "db:read terminal:execute")))
        .await;
    for (tool, args) in [
        ("db.query", json!({})),
        ("db.query", json!({ "sql": 42 })),
        ("db.query", json!({ "sql": "SELECT 1", "extra": true })),
        (
            "db.query",
            json!({ "sql": "SELECT ?", "params": [{ "nested": 1 }] }),
        ),
        ("terminal.execute", json!({ "argv": "ls -la" })),
        ("terminal.execute", json!({ "argv": [] })),
        (
            "terminal.execute",
            json!({ "argv": ["ls"], "env": { "LD_PRELOAD": "/tmp/evil.so" } }),
        ),
        (
            "terminal.execute",
            json!({ "argv": ["git", "status"], "env": { "GIT_SSH_COMMAND": "sh" } }),
        ),
    ] {
        let (env, is_error) = call(&client, tool, args.clone()).await;
        assert!(is_error, "{args}");
        assert_eq!(status(&env), "denied", "{args}");
        assert!(
            env["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        receipt(&env);
    }
    let unknown = client
        .call_tool(rmcp::model::CallToolRequestParams::new(
            "db.drop_everything",
        ))
        .await;
    assert!(unknown.is_err(), "unknown tools are protocol errors");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn commands_run_under_resource_limits_without_new_privileges() {
    let data = DataDir::new();
    // /proc is a root here only so the command can show its own limits.
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[terminal]\nroots = [\"workspace\", \"/proc\"]\n",
    )
    .expect("config");
    let client = data
        .stdio_client(Some(&data.token("erin", "terminal:execute")))
        .await;
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["cat", "/proc/self/status"] }),
    )
    .await;
    let status_text = env["result"]["stdout"].as_str().unwrap_or("").to_string();
    assert!(status_text.contains("NoNewPrivs:\t1"), "{status_text}");
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["cat", "/proc/self/limits"] }),
    )
    .await;
    let limits = env["result"]["stdout"].as_str().unwrap_or("").to_string();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(line("Max cpu time").contains("30 31 seconds"), "{limits}");
    assert!(line("Max core file size").contains("0 0 bytes"), "{limits}");
    assert!(line("Max open files").contains("256 256"), "{limits}");

    // A runaway writer is stopped once its output passes the cap, long
    // before its deadline; one that stays quiet is stopped at the deadline.
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["yes"], "timeout_ms": 30_000 }),
    )
    .await;
    assert_eq!(
        env["result"]["stopped"], "output_cap",
        "{}",
        env["result"]["duration_ms"]
    );
    assert_eq!(env["result"]["timed_out"], false);
    assert_eq!(env["result"]["signal"], 9);
    assert_eq!(env["result"]["stdout_truncated"], true);
    assert!(env["result"]["duration_ms"].as_u64().unwrap_or(u64::MAX) < 20_000);
    assert_eq!(receipt(&env)["body"]["outcome"]["stopped"], "output_cap");
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["sleep", "30"], "timeout_ms": 500 }),
    )
    .await;
    assert_eq!(env["result"]["stopped"], "timeout", "{env}");
    assert_eq!(env["result"]["timed_out"], true);

    let repo = data.workspace().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let init = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&repo)
        .status()
        .expect("git init");
    assert!(init.success());
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["git", "status", "--short"], "cwd": "repo" }),
    )
    .await;
    assert_eq!(env["result"]["exit_code"], 0, "{env}");
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["git", "--version"] }),
    )
    .await;
    assert!(
        env["result"]["stdout"]
            .as_str()
            .unwrap_or("")
            .starts_with("git version"),
        "{env}"
    );
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn concurrent_commands_per_subject_are_capped() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[terminal]\nmax_concurrent_per_subject = 1\n",
    )
    .expect("config");
    let server = data.http_server().await;
    let client = server.client(&data.token("erin", "terminal:execute")).await;
    let slow = || {
        call(
            &client,
            "terminal.execute",
            json!({ "argv": ["sleep", "1"] }),
        )
    };
    let (a, b) = tokio::join!(slow(), slow());
    let codes = [error_code(&a.0).to_string(), error_code(&b.0).to_string()];
    assert!(
        codes.contains(&"none".to_string()) && codes.contains(&"too_many_concurrent".to_string()),
        "{codes:?}"
    );
    client.cancel().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn sqlite_escapes_and_bombs_are_refused_or_contained() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[database]\nstatement_timeout_ms = 1000\n",
    )
    .expect("config");
    let token = data.token("reader", "db:read");
    let client = data.stdio_client(Some(&token)).await;
    let outside = data.path.join("exfil.db");
    let outside_sql = outside.to_str().expect("utf8");
    for sql in [
        format!("ATTACH DATABASE '{outside_sql}' AS exfil"),
        format!("VACUUM INTO '{outside_sql}'"),
        "PRAGMA writable_schema = 1".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        "SELECT load_extension('/tmp/evil.so')".to_string(),
        "CREATE TEMP TRIGGER t AFTER INSERT ON customers BEGIN DELETE FROM orders; END".to_string(),
        "CREATE TEMP TABLE t AS SELECT * FROM customers".to_string(),
        "SELECT writefile('/tmp/dualtrust-pwned', 'x')".to_string(),
    ] {
        let (env, is_error) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert!(is_error && status(&env) == "denied", "{sql}: {env}");
    }
    assert!(!outside.exists(), "nothing was written outside");
    // Bombs run as reads and are contained by the deadline and the caps.
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r" }),
    )
    .await;
    assert_eq!(error_code(&env), "statement_timeout", "{env}");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT randomblob(1000000) FROM r" }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["truncated"], true, "{env}");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT randomblob(200000000)" }),
    )
    .await;
    assert_eq!(
        env["result"]["rows"][0][0]["omitted_bytes"], 200_000_000,
        "a huge value is not encoded: {}",
        env["result"]["rows"][0][0]
    );
    let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status(&env), "ok", "still serving");
    client.cancel().await.ok();
}

#[tokio::test]
async fn malformed_json_rpc_lines_are_answered_not_dropped() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let data = DataDir::new();
    let token = data.token("alice", "db:read");
    let mut child = tokio::process::Command::new(crate::common::BIN)
        .arg("--data-dir")
        .arg(&data.path)
        .args(["serve", "--stdio"])
        .env("DUALTRUST_TOKEN", &token)
        .env("DUALTRUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let long = format!("\"{}\"", "x".repeat(2 * 1024 * 1024));
    let cases: Vec<(String, i64, Value)> = vec![
        (r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\ud800"}}"#.into(), -32700, Value::Null),
        (deep, -32700, Value::Null),
        (r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"n":1e999}}"#.into(), -32700, Value::Null),
        (r#"[{"jsonrpc":"2.0","id":3,"method":"ping"}]"#.into(), -32600, Value::Null),
        (long, -32600, Value::Null),
        (r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"db.query","arguments":"SELECT 1"}}"#.into(), -32602, json!(4)),
        (r#"{"jsonrpc":"2.0","id":"five","method":"no/such/method"}"#.into(), -32601, json!("five")),
    ];
    let initialize = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    stdin
        .write_all(format!("{initialize}\n").as_bytes())
        .await
        .expect("write");
    let answer: Value = serde_json::from_str(&next_line(&mut stdout).await).expect("json");
    assert_eq!(answer["id"], 0, "{answer}");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await
        .expect("write");
    for (line, code, id) in &cases {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        let answer: Value = serde_json::from_str(&next_line(&mut stdout).await).expect("json");
        assert_eq!(answer["error"]["code"], *code, "{answer}");
        assert_eq!(answer["id"], *id, "{answer}");
    }
    // The session still works, and every refusal left a receipt.
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}\n")
        .await
        .expect("write");
    let answer: Value = serde_json::from_str(&next_line(&mut stdout).await).expect("json");
    assert_eq!(answer["id"], 9, "{answer}");
    assert!(answer.get("result").is_some(), "{answer}");
    drop(stdin);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits at end of input")
        .expect("wait");
    assert!(status.success());
    let refusals = data
        .receipts()
        .iter()
        .filter(|r| r["body"]["tool"] == "jsonrpc")
        .count();
    assert_eq!(refusals, cases.len());
}

async fn next_line(
    stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(10), stdout.next_line())
        .await
        .expect("an answer, not silence")
        .expect("read")
        .expect("a line")
}

/// SQLite keeps booleans as integers; a column declared BOOLEAN comes back
/// as JSON booleans, while an integer expression stays a number.
#[tokio::test]
async fn sqlite_boolean_columns_are_json_booleans() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("alice", "db:admin")))
        .await;
    for sql in [
        "CREATE TABLE flags (id INTEGER PRIMARY KEY, active BOOLEAN, n INTEGER)",
        "INSERT INTO flags (active, n) VALUES (1, 1), (0, 0), (NULL, 2), (7, 7)",
    ] {
        let (env, _) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert_eq!(env["status"], "ok", "{sql}: {env}");
    }
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT active, n, active + 0 FROM flags ORDER BY id" }),
    )
    .await;
    assert_eq!(
        env["result"]["rows"],
        json!([[true, 1, 1], [false, 0, 0], [null, 2, null], [7, 7, 7]])
    );
    client.cancel().await.ok();
}
