//! Witnesses (C2SP tlog-witness) cosigning the log of two replicas: two
//! `dualtrust witness` processes cosign the shared log as it grows, offline
//! verification can require their cosignatures, and a split view — a fork
//! signed with the server's own key — is refused by a witness and by
//! `audit verify --witness`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{
    BIN, DataDir, HttpServer, PG_ADMIN_URL, call, create_pg_database, drop_pg_database, status,
};
use crate::replicas::replicas;

struct WitnessProcess {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    url: String,
    vkey: String,
}

impl WitnessProcess {
    async fn start(name: &str, log_vkey: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(BIN)
            .args(["witness", "--name", name, "--log", log_vkey])
            .arg("--key")
            .arg(dir.path().join("witness.key"))
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .env("DUALTRUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn witness");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (mut vkey, mut url) = (None, None);
        while vkey.is_none() || url.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("witness starts")
                .expect("stderr")
                .expect("witness exited early");
            if let Some(k) = line.strip_prefix("witness key: ") {
                vkey = Some(k.to_string());
            } else if let Some(u) = line.strip_prefix("dualtrust witness listening on ") {
                url = Some(u.to_string());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            _dir: dir,
            url: url.expect("url"),
            vkey: vkey.expect("vkey"),
        }
    }

    async fn submit(&self, body: String) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("{}/add-checkpoint", self.url))
            .body(body)
            .send()
            .await
            .expect("witness answers");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }
}

/// The newest cosigned checkpoint once it covers `size` receipts with a
/// cosignature from each of `witnesses`.
async fn cosigned_at_least(data: &DataDir, size: u64, witnesses: usize) -> (u64, String) {
    for _ in 0..100 {
        let out = data.cli(&["audit", "checkpoint", "--witnessed"]);
        let note = String::from_utf8_lossy(&out.stdout).to_string();
        let at: u64 = note
            .lines()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let cosignatures = note.lines().filter(|l| l.starts_with('\u{2014}')).count();
        if out.status.success() && at >= size && cosignatures > witnesses {
            return (at, note);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint of {size} receipts cosigned by {witnesses} witnesses");
}

fn seal_fork(
    receipts: &[dualtrust::audit::Receipt],
    keep: usize,
    forged: usize,
    key: &dualtrust::keys::KeyPair,
) -> Vec<dualtrust::audit::Receipt> {
    let mut fork = receipts[..keep].to_vec();
    for i in 0..forged {
        let mut body = receipts[keep - 1].body.clone();
        body.seq = (keep + i) as u64;
        body.prev = fork.last().expect("prefix").hash.clone();
        body.subject = Some("mallory".into());
        fork.push(dualtrust::audit::Receipt::seal(body, key).expect("seal"));
    }
    fork
}

fn tree_of(receipts: &[dualtrust::audit::Receipt]) -> dualtrust::audit::merkle::MerkleTree {
    let mut tree = dualtrust::audit::merkle::MerkleTree::new();
    for r in receipts {
        tree.push(dualtrust::audit::leaf_hash_of(&r.body).expect("leaf"));
    }
    tree
}

#[tokio::test]
async fn two_witnesses_cosign_two_replicas_log_and_a_split_view_is_caught() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(2, &store_url, "[limits]\ncalls_per_minute = 0\n");
    let out = dirs[0].cli(&["audit", "checkpoint"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let log_vkey = said
        .lines()
        .find_map(|l| l.strip_prefix("verifier key: "))
        .expect("verifier key")
        .to_string();
    let origin = log_vkey.split('+').next().expect("origin").to_string();
    let w1 = WitnessProcess::start("witness.example/w1", &log_vkey).await;
    let w2 = WitnessProcess::start("witness.example/w2", &log_vkey).await;
    for data in &dirs {
        let config = data.path.join("dualtrust.toml");
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str("[log]\nwitness_interval_ms = 100\n");
        for w in [&w1, &w2] {
            text.push_str(&format!(
                "[[log.witnesses]]\nurl = \"{}\"\nvkey = \"{}\"\n",
                w.url, w.vkey
            ));
        }
        std::fs::write(&config, text).expect("config");
    }
    let servers: Vec<HttpServer> =
        futures_util::future::join_all(dirs.iter().map(|d| HttpServer::start(&d.path))).await;
    let token = dirs[0].token("agent", "db:read");
    let clients = [
        servers[0].client(&token).await,
        servers[1].client(&token).await,
    ];
    let calls = |n: usize| {
        let clients = &clients;
        async move {
            for i in 0..n {
                let (env, _) = call(
                    &clients[i % 2],
                    "db.query",
                    json!({ "sql": "SELECT 1 AS n" }),
                )
                .await;
                assert_eq!(status(&env), "ok", "{env}");
            }
        }
    };
    calls(6).await;
    let started = std::time::Instant::now();
    let (first, _) = cosigned_at_least(&dirs[1], 6, 2).await;
    println!(
        "a checkpoint of {first} receipts cosigned by both witnesses {} ms after the calls",
        started.elapsed().as_millis()
    );
    // The log grows; the witnesses follow by consistency proofs from what
    // each cosigned before.
    calls(6).await;
    let (size, note) = cosigned_at_least(&dirs[0], first + 6, 2).await;
    // The dashboard's view: the log's size and what the witnesses cosigned.
    let gauge = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = reqwest::get(format!("{}/metrics", servers[0].base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if gauge(&metrics, "dualtrust_log_cosigned_size") >= first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gauge(&metrics, "dualtrust_log_size") >= size, "{metrics}");
    assert!(
        gauge(&metrics, "dualtrust_log_cosigned_size") >= first,
        "{metrics}"
    );
    assert!(
        gauge(&metrics, "dualtrust_log_cosigned_timestamp_seconds") > 0,
        "{metrics}"
    );
    assert!(
        gauge(&metrics, "dualtrust_log_last_append_timestamp_seconds") > 0,
        "{metrics}"
    );
    for c in clients {
        c.cancel().await.ok();
    }
    for s in servers {
        s.stop().await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let cosigned = dir.path().join("cosigned.txt");
    std::fs::write(&cosigned, &note).expect("write");
    let log = dir.path().join("log.jsonl");
    let jwks = dir.path().join("jwks.json");
    let out = dirs[0].cli(&["audit", "export", "--out", log.to_str().expect("utf8")]);
    assert!(out.status.success());
    std::fs::write(&jwks, dirs[0].cli(&["keys"]).stdout).expect("jwks");
    let verify = |log: &std::path::Path, checkpoint: &std::path::Path, required: &str| {
        dirs[0].cli(&[
            "audit",
            "verify",
            "--log",
            log.to_str().expect("utf8"),
            "--jwks",
            jwks.to_str().expect("utf8"),
            "--checkpoint",
            checkpoint.to_str().expect("utf8"),
            "--witness",
            &w1.vkey,
            "--witness",
            &w2.vkey,
            "--witnesses-required",
            required,
        ])
    };
    let out = verify(&log, &cosigned, "2");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("cosigned by witness.example/w1, witness.example/w2"),
        "{said}"
    );

    // A split view: the server's own key forks the log at the last entry the
    // witnesses saw, and at one past it.
    let receipts: Vec<dualtrust::audit::Receipt> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("receipt"))
        .collect();
    let seed = std::fs::read_to_string(dirs[0].path.join("server.key")).expect("key");
    let seed: [u8; 32] = hex::decode(seed.trim())
        .expect("hex")
        .try_into()
        .expect("32");
    let server_key = dualtrust::keys::KeyPair::from_seed(&seed);
    let size_n = usize::try_from(size).expect("size");
    let sign = |fork: &[dualtrust::audit::Receipt]| {
        let tree = tree_of(fork);
        dualtrust::audit::checkpoint::Checkpoint {
            origin: origin.clone(),
            size: tree.len(),
            root: tree.root(tree.len()).expect("root"),
            time: dualtrust::now_unix(),
        }
        .sign(&server_key)
    };
    let same_size = seal_fork(&receipts, size_n - 1, 1, &server_key);
    let (code, _) = w1
        .submit(format!("old {size}\n\n{}", sign(&same_size)))
        .await;
    assert_eq!(code, 409, "the witness holds another tree at this size");
    let longer = seal_fork(&receipts, size_n - 1, 2, &server_key);
    let proof: String = tree_of(&longer)
        .consistency_proof(size, size + 1)
        .expect("proof")
        .iter()
        .map(|h| {
            use base64::Engine;
            format!("{}\n", base64::engine::general_purpose::STANDARD.encode(h))
        })
        .collect();
    let forked_note = sign(&longer);
    let (code, _) = w2
        .submit(format!("old {size}\n{proof}\n{forked_note}"))
        .await;
    assert_eq!(
        code, 422,
        "the fork is not consistent with what it cosigned"
    );

    // Offline, the forked log and its checkpoint verify with the server key
    // alone — which is why the witnesses are asked for.
    let forked_log = dir.path().join("forked.jsonl");
    let text: String = longer
        .iter()
        .map(|r| format!("{}\n", serde_json::to_string(r).expect("json")))
        .collect();
    std::fs::write(&forked_log, text).expect("write");
    let forked_cp = dir.path().join("forked.txt");
    std::fs::write(&forked_cp, &forked_note).expect("write");
    let out = verify(&forked_log, &forked_cp, "0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = verify(&forked_log, &forked_cp, "1");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cosigned by 0 of the 1 witnesses required"),
        "{said}"
    );
    drop_pg_database(PG_ADMIN_URL, &db).await;
}
