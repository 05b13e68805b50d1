use serde_json::{Value, json};

use crate::common::{DataDir, HttpServer, call, receipt, status};

async fn store(data: &DataDir) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        data.path.join("state.db").display()
    ))
    .await
    .expect("open store")
}

#[tokio::test]
async fn receipts_carry_inclusion_proofs_against_signed_checkpoints() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("alice", "db:read audit:read")))
        .await;
    let (first, _) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
    for _ in 0..5 {
        call(&client, "db.query", json!({ "sql": "SELECT 2" })).await;
    }
    let log = &first["log"];
    assert_eq!(log["leaf_index"], 0);
    assert_eq!(log["tree_size"], 1);
    let note = log["checkpoint"].as_str().expect("checkpoint");
    assert!(note.starts_with("dualtrust/"), "{note}");
    assert!(note.contains("\n\n\u{2014} dualtrust/"), "{note}");

    // Against its own (older) checkpoint, and against the current one.
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "receipt": first["receipt"], "log": log }),
    )
    .await;
    assert_eq!(v["result"]["valid"], true, "{v}");
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "receipt": first["receipt"] }),
    )
    .await;
    assert_eq!(v["result"]["valid"], true, "{v}");

    let (later, _) = call(&client, "db.query", json!({ "sql": "SELECT 3" })).await;
    assert!(
        later["log"]["inclusion"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    let mut bad = later["log"].clone();
    bad["inclusion"][0] = json!("00".repeat(32));
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "receipt": later["receipt"], "log": bad }),
    )
    .await;
    assert_eq!(v["result"]["failed"], "inclusion", "{v}");
    let mut forged = later["log"].clone();
    forged["checkpoint"] = json!(note.replacen("\n1\n", "\n2\n", 1));
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "receipt": later["receipt"], "log": forged }),
    )
    .await;
    assert_eq!(v["result"]["failed"], "checkpoint", "{v}");

    // The old checkpoint is a prefix of the log now.
    let (v, _) = call(&client, "audit.verify", json!({ "checkpoint": note })).await;
    assert_eq!(v["result"]["valid"], true, "{v}");
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "range": { "from": 0, "to": 8 } }),
    )
    .await;
    assert_eq!(v["result"]["valid"], true, "{v}");
    client.cancel().await.expect("close");
}

/// Fills a log, keeps a checkpoint, then lets `tamper` edit the store;
/// returns what offline verification against the checkpoint says.
async fn tampered(tamper: &str) -> Result<String, String> {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("alice", "db:read")))
        .await;
    let mut last = Value::Null;
    for i in 0..6 {
        (last, _) = call(
            &client,
            "db.query",
            json!({ "sql": "SELECT ?", "params": [i] }),
        )
        .await;
    }
    client.cancel().await.expect("close");
    let checkpoint = data.path.join("held-checkpoint.txt");
    std::fs::write(
        &checkpoint,
        last["log"]["checkpoint"].as_str().expect("checkpoint"),
    )
    .expect("write");
    assert!(
        data.offline_verify(&[&checkpoint]).is_ok(),
        "honest log verifies"
    );

    let pool = store(&data).await;
    match tamper {
        "edit" => {
            sqlx::query("UPDATE audit_log SET receipt = replace(receipt, '\"alice\"', '\"mallory\"') WHERE seq = 2")
                .execute(&pool)
                .await
                .expect("edit");
        }
        "delete" => {
            sqlx::query("DELETE FROM audit_log WHERE seq = 3")
                .execute(&pool)
                .await
                .expect("delete");
        }
        "reorder" => {
            for sql in [
                "UPDATE audit_log SET seq = -1 WHERE seq = 1",
                "UPDATE audit_log SET seq = 1 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = -1",
            ] {
                sqlx::query(sql).execute(&pool).await.expect("reorder");
            }
        }
        "truncate-and-regrow" => {
            sqlx::query("DELETE FROM audit_log WHERE seq >= 3")
                .execute(&pool)
                .await
                .expect("truncate");
            pool.close().await;
            // The server appends honestly signed receipts on top.
            let client = data
                .stdio_client(Some(&data.token("alice", "db:read")))
                .await;
            for i in 0..5 {
                call(
                    &client,
                    "db.query",
                    json!({ "sql": "SELECT ?", "params": [100 + i] }),
                )
                .await;
            }
            client.cancel().await.expect("close");
        }
        other => panic!("unknown tamper {other}"),
    }
    data.offline_verify(&[&checkpoint])
}

#[tokio::test]
async fn edited_deleted_reordered_or_regrown_logs_are_detected() {
    for tamper in ["edit", "delete", "reorder", "truncate-and-regrow"] {
        let verdict = tampered(tamper).await;
        assert!(verdict.is_err(), "{tamper} went unnoticed: {verdict:?}");
    }
    let regrown = tampered("truncate-and-regrow").await.expect_err("detected");
    assert!(regrown.contains("rewritten"), "{regrown}");
}

#[tokio::test]
async fn a_regrown_log_fails_consistency_with_an_old_checkpoint_online() {
    let data = DataDir::new();
    let token = data.token("alice", "db:read audit:read");
    let client = data.stdio_client(Some(&token)).await;
    let mut last = Value::Null;
    for i in 0..5 {
        (last, _) = call(
            &client,
            "db.query",
            json!({ "sql": "SELECT ?", "params": [i] }),
        )
        .await;
    }
    client.cancel().await.expect("close");
    let old = last["log"]["checkpoint"]
        .as_str()
        .expect("checkpoint")
        .to_string();
    let pool = store(&data).await;
    sqlx::query("DELETE FROM audit_log WHERE seq >= 2")
        .execute(&pool)
        .await
        .expect("truncate");
    pool.close().await;
    let client = data.stdio_client(Some(&token)).await;
    for i in 0..6 {
        call(
            &client,
            "db.query",
            json!({ "sql": "SELECT ?", "params": [50 + i] }),
        )
        .await;
    }
    let (v, _) = call(&client, "audit.verify", json!({ "checkpoint": old })).await;
    assert_eq!(v["result"]["valid"], false, "{v}");
    assert_eq!(v["result"]["failed"], "consistency");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn kill_9_mid_stream_leaves_a_verifiable_log_with_every_executed_write() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let token = data.token("writer", "db:read db:write");
    let client = server.client(&token).await;
    call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
    let stream = tokio::spawn({
        let url = server.mcp_url();
        let token = token.clone();
        async move {
            let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url)
                .auth_header(token);
            let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
            let Ok(client) = rmcp::ServiceExt::serve((), transport).await else {
                return;
            };
            for i in 0..10_000i64 {
                let args = json!({ "sql": "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, 'x', 1, 1)", "params": [format!("K-{i}")] });
                let Value::Object(arguments) = args else {
                    return;
                };
                let request =
                    rmcp::model::CallToolRequestParams::new("db.query").with_arguments(arguments);
                if client.call_tool(request).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    // SIGKILL: no shutdown path runs.
    let pid = server.pid().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    // The client may keep retrying a dead server; it has done its part.
    let abort = stream.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), stream)
        .await
        .is_err()
    {
        abort.abort();
    }
    server.stop().await;
    drop(client);

    // Restarted, the log verifies end to end.
    let restarted = HttpServer::start(&data.path).await;
    let client = restarted
        .client(&data.token("auditor", "audit:read db:read"))
        .await;
    let (head, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM products WHERE sku LIKE 'K-%'" }),
    )
    .await;
    let inserted = head["result"]["rows"][0][0]
        .as_u64()
        .unwrap_or_else(|| panic!("count: {head}"));
    assert!(inserted > 0, "the stream ran before the kill");
    let size = head["log"]["tree_size"].as_u64().expect("size");
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "range": { "from": 0, "to": size } }),
    )
    .await;
    assert_eq!(v["result"]["valid"], true, "{v}");

    // Every row that exists was written by a call whose intent is logged.
    let export = data.cli(&["audit", "export"]);
    let intents: std::collections::HashSet<String> = String::from_utf8(export.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("receipt"))
        .filter(|r| r["body"]["decision"] == "intent")
        .filter_map(|r| r["body"]["args_digest"].as_str().map(String::from))
        .collect();
    let (rows, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT sku FROM products WHERE sku LIKE 'K-%'" }),
    )
    .await;
    let rows = rows["result"]["rows"].as_array().expect("rows").clone();
    assert_eq!(rows.len() as u64, inserted);
    for row in rows {
        let sku = row[0].as_str().expect("sku");
        let args = json!({ "sql": "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, 'x', 1, 1)", "params": [sku] });
        let digest = dualtrust::gate::args_digest("db.query", &args).expect("digest");
        assert!(intents.contains(&digest), "row {sku} has no intent receipt");
    }
    assert_eq!(status(&head), "ok");
    receipt(&head);
    client.cancel().await.expect("close");
    restarted.stop().await;
}

async fn readiness(server: &HttpServer) -> (u16, Value) {
    let response = reqwest::get(format!("{}/readyz", server.base))
        .await
        .expect("readyz");
    let code = response.status().as_u16();
    (code, response.json().await.expect("json"))
}

/// One byte of one stored receipt body changes; its `hash` and `leaf_hash`
/// columns (and the hash inside its JSON) are left as they were.
async fn edit_one_byte(data: &DataDir, seq: i64) {
    let pool = store(data).await;
    let changed = sqlx::query(
        "UPDATE audit_log SET receipt = replace(receipt, '\"subject\":\"alice\"', '\"subject\":\"alicf\"') WHERE seq = ?",
    )
    .bind(seq)
    .execute(&pool)
    .await
    .expect("edit")
    .rows_affected();
    assert_eq!(changed, 1);
    pool.close().await;
}

/// Six calls over HTTP; their envelopes.
async fn six_calls(client: &crate::common::Client) -> Vec<Value> {
    let mut envelopes = Vec::new();
    for i in 0..6 {
        let (envelope, _) = call(
            client,
            "db.query",
            json!({ "sql": "SELECT ?", "params": [i] }),
        )
        .await;
        envelopes.push(envelope);
    }
    envelopes
}

fn tampered_at_2(envelope: &Value) {
    assert_eq!(status(envelope), "error", "{envelope}");
    assert_eq!(
        envelope["error"]["code"], "audit_store_tampered",
        "{envelope}"
    );
    let message = envelope["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("receipt 2: its body does not hash to its recorded hash"),
        "{envelope}"
    );
}

#[tokio::test]
async fn online_checks_derive_from_the_stored_bytes_and_a_tampered_store_stops_the_log() {
    let token_scopes = "db:read audit:read";

    // A checkpoint held from before the edit: the store no longer derives
    // to the tree the checkpoint signs. Nothing is signed over it any more.
    let data = DataDir::new();
    let token = data.token("alice", token_scopes);
    let server = data.http_server().await;
    let client = server.client(&token).await;
    let envelopes = six_calls(&client).await;
    let held = envelopes[5]["log"]["checkpoint"]
        .as_str()
        .expect("checkpoint")
        .to_string();
    let (v, _) = call(&client, "audit.verify", json!({ "checkpoint": held })).await;
    assert_eq!(v["result"]["valid"], true, "honest: {v}");
    assert_eq!(readiness(&server).await.0, 200);
    edit_one_byte(&data, 2).await;
    let (v, _) = call(&client, "audit.verify", json!({ "checkpoint": held })).await;
    tampered_at_2(&v);
    let (code, ready) = readiness(&server).await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["audit_log"]["tampered"]["seq"], 2, "{ready}");
    let (envelope, _) = call(&client, "db.query", json!({ "sql": "SELECT 9" })).await;
    tampered_at_2(&envelope);
    client.cancel().await.ok();
    server.stop().await;

    // Found again at the next start, from the bytes alone.
    let server = data.http_server().await;
    let mut ready = readiness(&server).await;
    for _ in 0..40 {
        if ready.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ready = readiness(&server).await;
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(ready.1["audit_log"]["tampered"]["seq"], 2, "{}", ready.1);
    server.stop().await;

    // The original receipt, checked after the edit: not "in the log".
    let data = DataDir::new();
    let token = data.token("alice", token_scopes);
    let server = data.http_server().await;
    let client = server.client(&token).await;
    let envelopes = six_calls(&client).await;
    edit_one_byte(&data, 2).await;
    let (v, _) = call(
        &client,
        "audit.verify",
        json!({ "receipt": receipt(&envelopes[2]) }),
    )
    .await;
    tampered_at_2(&v);
    client.cancel().await.ok();
    server.stop().await;
}
