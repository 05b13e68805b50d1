//! Several replicas sharing one PostgreSQL state store: single use holds
//! across them, the log stays one linear verifiable log, and PostgreSQL
//! going away and coming back fails calls closed and loses nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Client, DataDir, HttpServer, PG_ADMIN_URL, call, create_pg_database, drop_pg_database,
    error_code, lease_of, status,
};

/// Data directories for `n` replicas of one deployment: the same server key
/// and token issuer (as an operator would distribute them), one store URL.
pub(crate) fn replicas(n: usize, store_url: &str, extra: &str) -> Vec<DataDir> {
    let first = DataDir::new();
    let mut all = vec![first];
    for _ in 1..n {
        let other = DataDir::new();
        other.share_keys_of(&all[0]);
        all.push(other);
    }
    for data in &all {
        std::fs::write(
            data.path.join("dualtrust.toml"),
            format!("[store]\nurl = \"{store_url}\"\n{extra}"),
        )
        .expect("config");
    }
    all
}

fn export_and_verify(data: &DataDir) -> usize {
    if let Err(e) = data.offline_verify(&[]) {
        panic!("the merged log verifies: {e}");
    }
    data.receipts().len()
}

#[tokio::test]
async fn two_replicas_redeem_each_lease_once_and_share_one_log() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(
        2,
        &store_url,
        "[leases]\nexplicit = [\"db.query:read\"]\nmax_open_per_subject = 1000\n[limits]\ncalls_per_minute = 0\n",
    );
    let servers: Vec<HttpServer> =
        futures_util::future::join_all(dirs.iter().map(|d| HttpServer::start(&d.path))).await;
    let token = dirs[0].token("agent", "db:read audit:read");
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..20 {
        clients.push(servers[i % 2].client(&token).await);
    }

    // 100 leases, issued alternately by both replicas.
    let mut leases = Vec::new();
    for i in 0..100 {
        let args = json!({ "sql": format!("SELECT {i} AS n") });
        let (env, _) = call(&clients[i % 2], "db.query", args.clone()).await;
        assert_eq!(status(&env), "lease_issued", "{env}");
        leases.push((lease_of(&env), args));
    }
    // 1,000 redemptions, ten per lease, all in flight at once across both.
    let attempts = (0..1000).map(|k| {
        let (lease, args) = &leases[k % 100];
        let mut redeem = args.clone();
        redeem["lease_id"] = json!(lease);
        let client = &clients[k % clients.len()];
        async move { call(client, "db.query", redeem).await.0 }
    });
    let outcomes = futures_util::future::join_all(attempts).await;
    let ok = outcomes.iter().filter(|e| status(e) == "ok").count();
    assert_eq!(ok, 100, "exactly one redemption per lease succeeds");
    for e in outcomes.iter().filter(|e| status(e) != "ok") {
        assert_eq!(status(e), "denied", "{e}");
        assert!(e["receipt"].is_object(), "refusals leave receipts: {e}");
    }
    let mut per_lease = std::collections::HashMap::new();
    for e in outcomes.iter().filter(|e| status(e) == "ok") {
        *per_lease
            .entry(
                e["receipt"]["body"]["lease"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(per_lease.len(), 100);
    assert!(per_lease.values().all(|n| *n == 1));

    // A receipt written by one replica verifies, with its proof, at the other.
    let from_a = outcomes
        .iter()
        .find(|e| status(e) == "ok")
        .expect("one ok")
        .clone();
    let (verdict, _) = call(
        &clients[1],
        "audit.verify",
        json!({ "receipt": from_a["receipt"] }),
    )
    .await;
    assert_eq!(verdict["result"]["valid"], true, "{verdict}");

    for c in clients {
        c.cancel().await.ok();
    }
    for s in servers {
        s.stop().await;
    }
    let receipts = export_and_verify(&dirs[1]);
    assert_eq!(
        receipts,
        100 + 1000 + 1,
        "every decision, in one linear log"
    );
    drop_pg_database(PG_ADMIN_URL, &db).await;
}

/// Rate limits with `limits.backend = "store"`: one subject's budget is one
/// budget across replicas (with the default `local` backend each replica
/// would grant it again).
#[tokio::test]
async fn a_subjects_rate_budget_is_one_budget_across_replicas() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(
        2,
        &store_url,
        "[limits]\nbackend = \"store\"\ncalls_per_minute = 100\n",
    );
    let servers: Vec<HttpServer> =
        futures_util::future::join_all(dirs.iter().map(|d| HttpServer::start(&d.path))).await;
    let token = dirs[0].token("agent", "db:read");
    let clients = [
        servers[0].client(&token).await,
        servers[1].client(&token).await,
    ];
    spend_one_budget(&clients, 300, 100).await;
    for c in clients {
        c.cancel().await.ok();
    }
    for s in servers {
        s.stop().await;
    }
    drop_pg_database(PG_ADMIN_URL, &db).await;
}

/// `n` calls from one subject, ten in flight at a time, alternating
/// between the replicas behind `clients`, against a budget of `budget` a
/// minute: the budget is granted once across both (plus what refilled
/// while the calls ran, one per 60/budget s), the rest `rate_limited`
/// with a receipt each.
async fn spend_one_budget(clients: &[Client; 2], n: usize, budget: u64) {
    let started = std::time::Instant::now();
    let mut ok = [0u64, 0];
    let mut limited = 0;
    for wave in (0..n).collect::<Vec<_>>().chunks(10) {
        let calls = wave.iter().map(|i| async move {
            let (env, _) = call(&clients[i % 2], "db.query", json!({ "sql": "SELECT 1" })).await;
            (i % 2, env)
        });
        for (replica, env) in futures_util::future::join_all(calls).await {
            match status(&env) {
                "ok" => ok[replica] += 1,
                _ => {
                    assert_eq!(error_code(&env), "rate_limited", "{env}");
                    assert!(env["receipt"].is_object(), "{env}");
                    limited += 1;
                }
            }
        }
    }
    let refilled = started.elapsed().as_millis() as u64 / (60_000 / budget) + 1;
    let served = ok[0] + ok[1];
    assert!(
        served >= budget && served <= budget + refilled,
        "the budget once: {ok:?} served, {refilled} refilled"
    );
    assert!(ok[0] > 0 && ok[1] > 0, "both replicas served: {ok:?}");
    assert_eq!(served + limited, n as u64);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A private PostgreSQL cluster of the test's own, so that stopping it does
/// not disturb the tests sharing the machine's server.
struct PrivateCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PrivateCluster {
    fn as_postgres(&self, program: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            // PostgreSQL refuses to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).output().expect("run a PostgreSQL program")
    }

    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).expect("mkdir");
        if is_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(out.status.success());
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            listener.local_addr().expect("addr").port()
        };
        let cluster = Self {
            _dir: dir,
            data,
            bin,
            port,
        };
        let out = cluster.as_postgres(
            "initdb",
            &[
                "-D",
                cluster.path(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.up();
        cluster
    }

    fn path(&self) -> &str {
        self.data.to_str().expect("utf8")
    }

    fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.path()
        );
        let out = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.path(),
                "-o",
                &options,
                "-w",
                "-l",
                &format!("{}/log", self.path()),
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn down(&self) {
        let out = self.as_postgres("pg_ctl", &["-D", self.path(), "-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.as_postgres("pg_ctl", &["-D", self.path(), "-m", "immediate", "stop"]);
    }
}

async fn read_call(client: &Client) -> Value {
    call(client, "db.query", json!({ "sql": "SELECT 1" }))
        .await
        .0
}

#[tokio::test]
async fn postgresql_restarted_mid_run_fails_closed_and_loses_nothing() {
    let cluster = PrivateCluster::start();
    let db = create_pg_database(&cluster.url("postgres")).await;
    let dirs = replicas(1, &cluster.url(&db), "");
    let data: &Path = &dirs[0].path;
    let server = HttpServer::start(data).await;
    let token = dirs[0].token("agent", "db:read");
    // stdio shows the in-band refusal; HTTP shows the status codes.
    let client = dirs[0].stdio_client(Some(&token)).await;
    for _ in 0..5 {
        assert_eq!(status(&read_call(&client).await), "ok");
    }

    cluster.down();
    let env = read_call(&client).await;
    assert_ne!(status(&env), "ok", "no receipt, no call: {env}");
    assert_eq!(error_code(&env), "audit_unavailable", "{env}");
    let ready = reqwest::get(format!("{}/readyz", server.base))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "not ready while the store is away");
    let refused = reqwest::Client::new()
        .post(server.mcp_url())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(
        refused.status(),
        503,
        "fail closed, and say it is temporary"
    );

    cluster.up();
    let mut recovered = false;
    for _ in 0..50 {
        if status(&read_call(&client).await) == "ok" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "calls succeed again once PostgreSQL is back");
    client.cancel().await.ok();
    server.stop().await;
    let receipts = export_and_verify(&dirs[0]);
    assert!(
        receipts >= 6,
        "the log before and after the outage verifies as one"
    );
}

#[tokio::test]
async fn an_approval_recorded_through_one_replica_counts_at_the_other() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(2, &store_url, "");
    let alice = dirs[0].approver("alice");
    let config = format!("[store]\nurl = \"{store_url}\"\n[quorum]\nk = 1\n");
    for d in &dirs {
        d.configure(&[(&alice, None)], &config);
    }
    let a = HttpServer::start(&dirs[0].path).await;
    let b = HttpServer::start(&dirs[1].path).await;
    let token = dirs[0].token("agent", "db:read db:write db:admin");
    let at_a = a.client(&token).await;
    let at_b = b.client(&token).await;
    let args = json!({ "sql": "DELETE FROM orders" });
    let (held, _) = call(&at_a, "db.query", args.clone()).await;
    assert_eq!(status(&held), "approval_required", "{held}");
    let lease = lease_of(&held);
    // Approved with the CLI beside replica B's configuration: same store.
    let out = dirs[1].approve(&lease, &alice);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut redeem = args;
    redeem["lease_id"] = json!(lease);
    let (env, _) = call(&at_b, "db.query", redeem.clone()).await;
    assert_eq!(status(&env), "ok", "redeemed at the other replica: {env}");
    let (again, _) = call(&at_a, "db.query", redeem).await;
    assert_eq!(status(&again), "denied", "and only once: {again}");
    at_a.cancel().await.ok();
    at_b.cancel().await.ok();
    a.stop().await;
    b.stop().await;
    export_and_verify(&dirs[0]);
    drop_pg_database(PG_ADMIN_URL, &db).await;
}

/// A private `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        // Owned by `Self` at once: dropped (killed and reaped) on any path.
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rate limits in Redis (`limits.backend = "redis://…"`): two replicas with
/// stores of their own grant one subject one budget; when Redis goes away,
/// a replica configured `closed` refuses with a receipt and one configured
/// `local` falls back to its own budget.
#[tokio::test]
async fn a_redis_rate_budget_is_shared_and_its_outage_handled_as_configured() {
    let redis = PrivateRedis::start();
    let first = DataDir::new();
    let second = DataDir::new();
    second.share_keys_of(&first);
    for (data, fallback) in [(&first, "closed"), (&second, "local")] {
        std::fs::write(
            data.path.join("dualtrust.toml"),
            format!(
                "[limits]\nbackend = \"{}\"\non_backend_failure = \"{fallback}\"\ncalls_per_minute = 100\n",
                redis.url
            ),
        )
        .expect("config");
    }
    let servers = [first.http_server().await, second.http_server().await];
    let token = first.token("agent", "db:read");
    let clients = [
        servers[0].client(&token).await,
        servers[1].client(&token).await,
    ];
    spend_one_budget(&clients, 300, 100).await;

    drop(redis);
    let (env, _) = call(&clients[0], "db.query", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(error_code(&env), "limits_unavailable", "closed: {env}");
    assert!(env["receipt"].is_object(), "{env}");
    // `local`: this replica's own, fresh budget (100 a minute) applies.
    let mut served = 0u64;
    let started = std::time::Instant::now();
    for _ in 0..150 {
        let (env, _) = call(&clients[1], "db.query", json!({ "sql": "SELECT 1" })).await;
        if status(&env) == "ok" {
            served += 1;
        } else {
            assert_eq!(error_code(&env), "rate_limited", "{env}");
        }
    }
    // One more refills every 600 ms while the calls run.
    let refilled = started.elapsed().as_millis() as u64 / 600 + 1;
    assert!(
        served >= 100 && served <= 100 + refilled,
        "the local fallback still limits: {served} served, {refilled} refilled"
    );
    for c in clients {
        c.cancel().await.ok();
    }
    for s in servers {
        s.stop().await;
    }
}

/// The terminal's per-subject concurrency cap with `limits.backend =
/// "store"`: one cap across replicas (each replica alone would run its own
/// two), and slots are given back when the commands end.
#[tokio::test]
async fn the_terminal_concurrency_cap_is_one_cap_across_replicas() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(
        2,
        &store_url,
        "[limits]\nbackend = \"store\"\ncalls_per_minute = 0\ntool_calls_per_minute = {}\n[terminal]\nmax_concurrent_per_subject = 2\n",
    );
    let servers: Vec<HttpServer> =
        futures_util::future::join_all(dirs.iter().map(|d| HttpServer::start(&d.path))).await;
    let token = dirs[0].token("erin", "terminal:execute");
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..6 {
        clients.push(servers[i % 2].client(&token).await);
    }
    // Long enough that all six are in flight together on a loaded machine.
    let slow = clients.iter().map(|client| async move {
        call(
            client,
            "terminal.execute",
            json!({ "argv": ["sleep", "3"] }),
        )
        .await
        .0
    });
    let outcomes = futures_util::future::join_all(slow).await;
    let ran = outcomes.iter().filter(|e| status(e) == "ok").count();
    assert_eq!(ran, 2, "{outcomes:?}");
    for e in outcomes.iter().filter(|e| status(e) != "ok") {
        assert_eq!(error_code(e), "too_many_concurrent", "{e}");
    }
    // The slots were given back: both replicas run commands again.
    for client in &clients[..2] {
        let (env, _) = call(client, "terminal.execute", json!({ "argv": ["true"] })).await;
        assert_eq!(status(&env), "ok", "{env}");
    }
    for c in clients {
        c.cancel().await.ok();
    }
    for s in servers {
        s.stop().await;
    }
    drop_pg_database(PG_ADMIN_URL, &db).await;
}

/// Two replicas appending as fast as 32 clients can call: no call fails
/// because the other replica's writer got to the log first (each batch is
/// built under the store's lock on what the other appended), and the
/// merged log verifies.
#[tokio::test]
async fn two_busy_replicas_never_fail_a_call_over_the_log() {
    let db = create_pg_database(PG_ADMIN_URL).await;
    let store_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dirs = replicas(2, &store_url, "[limits]\ncalls_per_minute = 0\n");
    let servers: Vec<HttpServer> =
        futures_util::future::join_all(dirs.iter().map(|d| HttpServer::start(&d.path))).await;
    let token = dirs[0].token("agent", "db:read");
    let mut clients = Vec::new();
    for i in 0..32 {
        clients.push(servers[i % 2].client(&token).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let load = clients.iter().map(|client| async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while std::time::Instant::now() < deadline {
            let (env, _) = call(client, "db.query", json!({ "sql": "SELECT 1 AS n" })).await;
            if status(&env) == "ok" {
                ok += 1;
            } else {
                failed.push(env);
            }
        }
        (ok, failed)
    });
    let results = futures_util::future::join_all(load).await;
    let ok: u32 = results.iter().map(|(ok, _)| ok).sum();
    let failed: Vec<&Value> = results.iter().flat_map(|(_, f)| f).collect();
    println!(
        "two replicas, 32 clients, 3 s: {ok} calls served, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} calls failed, e.g. {}",
        failed.len(),
        failed[0]
    );
    assert!(ok > 100, "{ok}");
    for c in clients {
        c.cancel().await.ok();
    }
    for s in servers {
        s.stop().await;
    }
    assert_eq!(export_and_verify(&dirs[0]) as u32, ok);
    drop_pg_database(PG_ADMIN_URL, &db).await;
}
