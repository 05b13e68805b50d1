//! Server key rotation: `dualtrust keys rotate` mid-run on two replicas of
//! one PostgreSQL store. Every call is served through the rotation, every
//! receipt from before and after verifies online and offline, and nothing
//! the retired key signs past its retirement is accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Client, DataDir, HttpServer, PG_ADMIN_URL, call, create_pg_database, drop_pg_database, receipt,
    status,
};
use crate::replicas::replicas;

fn key_file(data: &DataDir) -> std::path::PathBuf {
    data.path.join("server.key")
}

/// Appends the key text of `extra` to `data`'s key file, as an operator
/// adds the next key to a replica's secret.
fn add_key(data: &DataDir, extra: &str) {
    let mut text = std::fs::read_to_string(key_file(data)).expect("key file");
    text.push_str(extra);
    std::fs::write(key_file(data), text).expect("write key file");
}

async fn jwks(server: &HttpServer) -> Value {
    reqwest::get(format!("{}/.well-known/jwks.json", server.base))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn a_key_rotated_mid_run_on_two_replicas_breaks_no_call_and_no_proof() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(
        2,
        &store_url,
        "[limits]\ncalls_per_minute = 0\n[keys]\nrefresh_ms = 200\n",
    );
    let old_seed = std::fs::read_to_string(key_file(&dirs[0])).expect("key");
    let servers: Vec<HttpServer> =
        futures_util::future::join_all(dirs.iter().map(|d| HttpServer::start(&d.path))).await;
    let token = dirs[0].token("agent", "db:read audit:read passport:issue");
    let mut clients: Vec<Arc<Client>> = Vec::new();
    for i in 0..6 {
        clients.push(Arc::new(servers[i % 2].client(&token).await));
    }
    let (before, _) = call(&clients[0], "db.query", json!({ "sql": "SELECT 1 AS n" })).await;
    assert_eq!(status(&before), "ok", "{before}");
    let old_kid = receipt(&before)["body"]["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    let (passport, _) = call(&clients[1], "passport.issue", json!({ "agent_id": "a-1" })).await;
    let passport = passport["result"]["passport"]
        .as_str()
        .expect("passport")
        .to_string();

    // Calls on both replicas the whole time.
    let running = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, running) = (client.clone(), running.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while running.load(Ordering::Relaxed) {
                    let (env, _) =
                        call(&client, "db.query", json!({ "sql": "SELECT 2 AS n" })).await;
                    seen.push(env);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operator's rotation: the next key into every replica's secret
    // beside the current one, then `keys rotate --next`, then the old key out.
    let next = dirs[0].path.join("next.key");
    let out = dirs[0].cli(&["keygen", "--out", next.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next_text = std::fs::read_to_string(&next).expect("next key");
    for data in &dirs {
        add_key(data, &next_text);
    }
    let out = dirs[0].cli(&["keys", "rotate", "--next", next.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let at: u64 = said
        .split("rotated at log size ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    for data in &dirs {
        std::fs::write(key_file(data), &next_text).expect("old key out");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    let mut served = 0;
    for task in load {
        for env in task.await.expect("load task") {
            assert_eq!(
                status(&env),
                "ok",
                "no call fails through a rotation: {env}"
            );
            served += 1;
        }
    }
    println!(
        "rotation at log size {at} on two replicas: {served} calls served through it, none failed"
    );
    assert!(served > 50, "calls ran through the rotation: {served}");

    // Both replicas sign with the new key now, without a restart.
    let mut after = Vec::new();
    for client in &clients[..2] {
        let (env, _) = call(client, "db.query", json!({ "sql": "SELECT 3 AS n" })).await;
        assert_eq!(status(&env), "ok", "{env}");
        let kid = receipt(&env)["body"]["kid"]
            .as_str()
            .expect("kid")
            .to_string();
        assert_ne!(kid, old_kid, "{env}");
        after.push(env);
    }
    // Old and new receipts, and the old passport, verify at either replica.
    for client in &clients[..2] {
        for env in [&before, &after[0], &after[1]] {
            let (verdict, _) =
                call(client, "audit.verify", json!({ "receipt": receipt(env) })).await;
            assert_eq!(verdict["result"]["valid"], true, "{verdict}");
        }
        let (verdict, _) = call(client, "audit.verify", json!({ "passport": passport })).await;
        assert_eq!(verdict["result"]["valid"], true, "{verdict}");
        // Every receipt so far, across the rotation, online.
        let end = receipt(&after[1])["body"]["seq"].as_u64().expect("seq") + 1;
        let (verdict, _) = call(
            client,
            "audit.verify",
            json!({ "range": { "from": 0, "to": end } }),
        )
        .await;
        assert_eq!(verdict["result"]["valid"], true, "{verdict}");
        assert_eq!(verdict["result"]["verified"], end, "{verdict}");
    }
    // Each replica publishes both keys, the old one with its span.
    for server in &servers {
        let doc = jwks(server).await;
        let keys = doc["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 2, "{doc}");
        let old = keys
            .iter()
            .find(|k| k["kid"] == old_kid.as_str())
            .expect("old key");
        assert_eq!(old["log_until"], at, "{doc}");
        assert!(
            old["exp"].is_u64() && old["log_until_root"].is_string(),
            "{doc}"
        );
    }
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.cancel().await.ok();
        }
    }
    for s in servers {
        s.stop().await;
    }

    // Offline, from the export and the JWKS alone.
    let verified = dirs[1]
        .offline_verify(&[])
        .expect("the rotated log verifies offline");
    assert!(verified.starts_with("ok: "), "{verified}");
    let receipts = dirs[1].receipts();
    for r in &receipts {
        let seq = r["body"]["seq"].as_u64().expect("seq");
        assert_eq!(r["body"]["kid"] == old_kid.as_str(), seq < at, "{r}");
    }

    // The retired key, leaked: a receipt it signs after the retirement, and
    // a checkpoint past it, are refused offline.
    let old_key = old_seed.trim();
    let seed: [u8; 32] = hex::decode(old_key).expect("hex").try_into().expect("32");
    let leaked = dualtrust::keys::KeyPair::from_seed(&seed);
    let last: dualtrust::audit::Receipt =
        serde_json::from_value(receipts.last().expect("receipts").clone()).expect("receipt");
    let mut body = last.body.clone();
    body.seq += 1;
    body.prev = last.hash.clone();
    body.kid = leaked.kid().to_string();
    let forged = dualtrust::audit::Receipt::seal(body, &leaked).expect("seal");
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, jwks_file) = (dir.path().join("log.jsonl"), dir.path().join("jwks.json"));
    let out = dirs[1].cli(&["audit", "export", "--out", log.to_str().expect("utf8")]);
    assert!(out.status.success());
    std::fs::write(&jwks_file, dirs[1].cli(&["keys"]).stdout).expect("jwks");
    let mut text = std::fs::read_to_string(&log).expect("log");
    text.push_str(&serde_json::to_string(&forged).expect("json"));
    text.push('\n');
    let forged_log = dir.path().join("forged.jsonl");
    std::fs::write(&forged_log, text).expect("write");
    let verify = |log: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            "--log",
            log.to_str().expect("utf8"),
            "--jwks",
            jwks_file.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        dirs[1].cli(&args)
    };
    let out = verify(&forged_log, &[]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("retired"), "{said}");

    let origin = format!("dualtrust/{old_kid}");
    let size = receipts.len() as u64;
    let mut tree = dualtrust::audit::merkle::MerkleTree::new();
    for r in &receipts {
        let r: dualtrust::audit::Receipt = serde_json::from_value(r.clone()).expect("receipt");
        tree.push(dualtrust::audit::leaf_hash_of(&r.body).expect("leaf"));
    }
    let note = dualtrust::audit::checkpoint::Checkpoint {
        origin,
        size,
        root: tree.root(size).expect("root"),
        time: dualtrust::now_unix(),
    }
    .sign(&leaked);
    let note_file = dir.path().join("forged.checkpoint");
    std::fs::write(&note_file, note).expect("write");
    let out = verify(&log, &["--checkpoint", note_file.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("retired"), "{said}");
    drop_pg_database(PG_ADMIN_URL, &db).await;
}

/// On one host, `keys rotate` makes the next key itself: the server picks
/// it up without a restart, and the key file ends holding only it, 0600.
#[tokio::test]
async fn keys_rotate_on_one_host_replaces_the_key_file_and_the_server_follows() {
    use std::os::unix::fs::PermissionsExt;
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[keys]\nrefresh_ms = 100\n",
    )
    .expect("config");
    let server = data.http_server().await;
    let client = server
        .client(&data.token("agent", "db:read audit:read"))
        .await;
    let (before, _) = call(&client, "db.query", json!({ "sql": "SELECT 1 AS n" })).await;
    let out = data.cli(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (after, _) = call(&client, "db.query", json!({ "sql": "SELECT 2 AS n" })).await;
    assert_eq!(status(&after), "ok", "{after}");
    assert_ne!(
        receipt(&before)["body"]["kid"],
        receipt(&after)["body"]["kid"]
    );
    let text = std::fs::read_to_string(key_file(&data)).expect("key file");
    assert_eq!(text.lines().count(), 1, "the retired key left the disk");
    let mode = std::fs::metadata(key_file(&data))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (verdict, _) = call(
        &client,
        "audit.verify",
        json!({ "receipt": receipt(&before) }),
    )
    .await;
    assert_eq!(verdict["result"]["valid"], true, "{verdict}");
    // Rotating to a key that already signed the log is refused.
    let again = data.cli(&[
        "keys",
        "rotate",
        "--next",
        key_file(&data).to_str().expect("utf8"),
    ]);
    assert!(!again.status.success());
    client.cancel().await.ok();
    server.stop().await;
    data.offline_verify(&[]).expect("verifies offline");
}
