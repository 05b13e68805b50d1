//! The soak driver behind `tools/soak/run`: real MCP clients (rmcp's, over
//! streamable HTTP on loopback) against one dualtrust server, as operators
//! will load it. Three phases, figures printed and written as JSON:
//!
//! 1. **Soak.** `--clients` sessions for `--secs`, one subject each, with
//!    the default per-subject rate limit on, mixing reads, writes, scope
//!    denials (a read-only token writing) and held destructive calls. Every
//!    answer must be a success, a documented refusal or a 429. RSS is
//!    sampled throughout; open descriptors, threads and connections are
//!    counted before and after the clients go.
//! 2. **Idle connections and a flood.** The p99 of 50 reading clients
//!    alone, then again while `--idle` connections sit open without sending
//!    a byte (from other loopback addresses) and one address floods the
//!    server with invalid tokens.
//! 3. **kill -9.** `--kills` times: clients write, the server is killed
//!    with SIGKILL mid-stream and restarted; the exported log must verify
//!    offline, and every receipt a client was given must be in it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Client = RunningService<RoleClient, ClientConfig>;

#[derive(Parser)]
struct Args {
    /// The dualtrust binary (a release build).
    #[arg(long)]
    binary: PathBuf,
    #[arg(long, default_value_t = 60)]
    secs: u64,
    #[arg(long, default_value_t = 500)]
    clients: usize,
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Where the figures go (merged under the `soak` key).
    #[arg(long)]
    out: PathBuf,
}

/// One server process on a fixed port, so a restart keeps its URL.
struct Server {
    child: tokio::process::Child,
    base: String,
}

impl Server {
    async fn start(binary: &Path, data: &Path, port: u16) -> Result<Self, BoxError> {
        let mut child = tokio::process::Command::new(binary)
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .env("DUALTRUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (found, announced) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut found = Some(found);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(sender) = found.take()
                {
                    let url = rest.trim().trim_end_matches("/mcp").to_string();
                    let _ = sender.send(url);
                }
            }
        });
        let base = tokio::time::timeout(Duration::from_secs(60), announced)
            .await
            .map_err(|_| "the server did not start in 60 s")??;
        Ok(Self { child, base })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn kill_9(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

fn proc_count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn cli(binary: &Path, data: &Path, args: &[&str]) -> Result<String, BoxError> {
    let out = std::process::Command::new(binary)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "dualtrust {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A development data directory with one approver (k = 1), the default
/// per-subject rate limits, and connection limits that admit the soak's
/// clients, which all come from 127.0.0.1.
fn prepare(binary: &Path, data: &Path) -> Result<(), BoxError> {
    std::fs::create_dir_all(data)?;
    let key = data.join("soak-approver.key");
    let out = cli(
        binary,
        data,
        &[
            "approver-keygen",
            "--id",
            "soak",
            "--out",
            key.to_str().ok_or("path")?,
        ],
    )?;
    let public_key = out
        .lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .ok_or("no public key")?;
    std::fs::write(
        data.join("dualtrust.toml"),
        format!(
            "[[approvers]]\nid = \"soak\"\npublic_key = \"{public_key}\"\n[quorum]\nk = 1\n\
             [http]\nmax_connections = 8192\nmax_connections_per_address = 2048\n"
        ),
    )?;
    // Creates the development issuer key the tokens below are signed with.
    cli(
        binary,
        data,
        &["token", "--sub", "soak", "--scope", "db:read"],
    )?;
    Ok(())
}

fn mint(data: &Path, subject: &str, scope: &str) -> Result<String, BoxError> {
    let (issuer, _) =
        dualtrust::keys::KeyPair::load_or_create(&data.join("dev-issuer.key"), false)?;
    let config = dualtrust::config::IdentityConfig::default();
    let now = dualtrust::now_unix();
    Ok(issuer.sign_jws(
        "JWT",
        &json!({
            "iss": config.issuer, "aud": config.audience, "sub": subject, "scope": scope,
            "iat": now, "exp": now + 7200, "jti": dualtrust::random_id()?,
        }),
    )?)
}

async fn connect(base: &str, token: &str) -> Result<Client, BoxError> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token);
    let transport = StreamableHttpClientTransport::from_config(config);
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("dualtrust-soak", "1"),
    )
    .serve(transport)
    .await?;
    Ok(client)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// How an answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Ok,
    Held,
    /// A tool result with status `denied`: the gate's documented refusal.
    Denied(&'static str),
    /// The HTTP scope challenge (403 insufficient_scope).
    ScopeChallenge,
    TooManyRequests,
    Other,
}

fn denial_code(code: &str) -> &'static str {
    match code {
        "rate_limited" => "rate_limited",
        "insufficient_scope" => "insufficient_scope",
        "too_many_open_leases" => "too_many_open_leases",
        _ => "other_denial",
    }
}

/// One call and what it was answered; the receipt's `(seq, hash)` for a
/// call that succeeded.
async fn call(
    client: &Client,
    sql: String,
    params: Vec<Value>,
) -> (Answer, Option<(u64, String)>, String) {
    let request = CallToolRequestParams::new("db.query")
        .with_arguments(object(json!({ "sql": sql, "params": params })));
    // A dead server (the kill phase) must not hold a client forever.
    let answered = tokio::time::timeout(Duration::from_secs(30), client.call_tool(request)).await;
    let Ok(answered) = answered else {
        return (Answer::Other, None, "no answer in 30 s".into());
    };
    match answered {
        Ok(result) => {
            let envelope = result.structured_content.unwrap_or(Value::Null);
            let receipt = envelope["receipt"]["body"]["seq"]
                .as_u64()
                .zip(envelope["receipt"]["hash"].as_str().map(String::from));
            match envelope["status"].as_str() {
                Some("ok") => (Answer::Ok, receipt, String::new()),
                Some("approval_required") => (Answer::Held, receipt, String::new()),
                Some("denied") => (
                    Answer::Denied(denial_code(
                        envelope["error"]["code"].as_str().unwrap_or(""),
                    )),
                    None,
                    envelope["error"]["code"].to_string(),
                ),
                _ => (Answer::Other, None, envelope.to_string()),
            }
        }
        Err(e) => {
            let text = format!("{e:?}");
            if text.contains("InsufficientScope") || text.contains("insufficient_scope") {
                (Answer::ScopeChallenge, None, String::new())
            } else if text.contains("429") {
                (Answer::TooManyRequests, None, String::new())
            } else {
                (Answer::Other, None, text)
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    answers: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    others: Vec<String>,
    /// Receipts handed to clients for calls that succeeded.
    receipts: Vec<(u64, String)>,
}

impl Tally {
    fn add(
        &mut self,
        answer: Answer,
        took: Duration,
        receipt: Option<(u64, String)>,
        detail: String,
    ) {
        *self.answers.entry(format!("{answer:?}")).or_default() += 1;
        self.latencies.push(took);
        if answer == Answer::Other && self.others.len() < 5 {
            self.others.push(detail.chars().take(300).collect());
        }
        if matches!(answer, Answer::Ok) {
            self.receipts.extend(receipt);
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.answers {
            *self.answers.entry(k).or_default() += v;
        }
        self.latencies.extend(other.latencies);
        self.others.extend(other.others);
        self.receipts.extend(other.receipts);
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies.sort();
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }

    fn others(&self) -> u64 {
        self.answers.get("Other").copied().unwrap_or(0)
    }
}

static SKU: AtomicU64 = AtomicU64::new(0);
/// Calls answered `ok` so far, by every client.
static SUCCEEDED: AtomicU64 = AtomicU64::new(0);
/// Set once the server was killed: the clients stop calling a dead server.
static HALT: AtomicBool = AtomicBool::new(false);
/// Every receipt a client was handed for a call that succeeded, as it was
/// handed (so a client cut off by the kill has already said what it was told).
static TOLD: std::sync::Mutex<Vec<(u64, String)>> = std::sync::Mutex::new(Vec::new());

/// One client: a session with a full token and one with a read-only
/// token for the same subject; calls in a fixed mix until `until`.
async fn client_loop(
    base: String,
    full: String,
    read_only: String,
    until: Instant,
    mix: bool,
) -> Tally {
    let mut tally = Tally::default();
    let connect = |token: String| {
        let base = base.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), connect(&base, &token))
                .await
                .map_err(|_| BoxError::from("connect: no answer in 30 s"))?
        }
    };
    let (writer, reader) = match (connect(full).await, connect(read_only).await) {
        (Ok(w), Ok(r)) => (w, r),
        (Err(e), _) | (_, Err(e)) => {
            tally.add(Answer::Other, Duration::ZERO, None, format!("connect: {e}"));
            return tally;
        }
    };
    let mut i = 0u64;
    while Instant::now() < until && !HALT.load(Ordering::Relaxed) {
        let started = Instant::now();
        let (answer, receipt, detail) = match (mix, i % 20) {
            (true, 12..=14) => {
                let sku = SKU.fetch_add(1, Ordering::Relaxed);
                call(
                    &writer,
                    "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, 'soak', 1, 1)"
                        .into(),
                    vec![json!(format!("SOAK-{sku}"))],
                )
                .await
            }
            (true, 15..=17) => {
                call(
                    &reader,
                    "UPDATE products SET stock = stock WHERE id = 1".into(),
                    vec![],
                )
                .await
            }
            (true, 18..=19) => call(&writer, "DELETE FROM orders".into(), vec![]).await,
            _ => {
                call(
                    &reader,
                    "SELECT id, name FROM customers WHERE id = ?".into(),
                    vec![json!(i % 50 + 1)],
                )
                .await
            }
        };
        if answer == Answer::Ok {
            SUCCEEDED.fetch_add(1, Ordering::Relaxed);
            if let Some(receipt) = &receipt {
                TOLD.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(receipt.clone());
            }
        }
        tally.add(answer, started.elapsed(), receipt, detail);
        i += 1;
    }
    let _ = writer.cancel().await;
    let _ = reader.cancel().await;
    tally
}

async fn run_clients(
    base: &str,
    data: &Path,
    clients: usize,
    secs: f64,
    mix: bool,
    tag: &str,
) -> Result<Tally, BoxError> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let subject = format!("{tag}-{c}");
        let full = mint(data, &subject, "db:read db:write db:admin")?;
        let read_only = mint(data, &subject, "db:read")?;
        tasks.push(tokio::spawn(client_loop(
            base.to_string(),
            full,
            read_only,
            until,
            mix,
        )));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await?);
    }
    Ok(total)
}

async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

async fn soak(args: &Args, data: &Path, port: u16) -> Result<Value, BoxError> {
    let server = Server::start(&args.binary, data, port).await?;
    let pid = server.pid();
    // Warm up: the first sessions, the pools and the log.
    run_clients(&server.base, data, 4, 1.0, true, "warmup").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_before, threads_before, rss_start) =
        (proc_count(pid, "fd"), proc_count(pid, "task"), rss_mb(pid));
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak: f64 = 0.0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        }
    });
    let started = Instant::now();
    let mut tally = run_clients(
        &server.base,
        data,
        args.clients,
        args.secs as f64,
        true,
        "soak",
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    // Let sessions close and idle connections time out (header timeout 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    sampling.store(false, Ordering::Relaxed);
    let rss_peak = peak.await?;
    let (fds_after, threads_after, rss_end) =
        (proc_count(pid, "fd"), proc_count(pid, "task"), rss_mb(pid));
    let open = metric(&server.base, "dualtrust_http_connections_open").await;
    let calls: u64 = tally.answers.values().sum();
    let figures = json!({
        "clients": args.clients,
        "seconds": elapsed,
        "calls": calls,
        "calls_per_s": calls as f64 / elapsed,
        "answers": tally.answers,
        "unexpected_answers": tally.others(),
        "unexpected_examples": tally.others,
        "p50_ms": tally.percentile_ms(0.50),
        "p99_ms": tally.percentile_ms(0.99),
        "rss_mb": { "start": rss_start, "peak": rss_peak, "end": rss_end },
        "fds": { "before": fds_before, "after": fds_after },
        "threads": { "before": threads_before, "after": threads_after },
        "connections_open_after": open,
    });
    server.stop().await;
    Ok(figures)
}

async fn flood(args: &Args, data: &Path, port: u16) -> Result<Value, BoxError> {
    let server = Server::start(&args.binary, data, port).await?;
    let base = server.base.clone();
    let mut quiet = run_clients(&base, data, 50, 15.0, false, "quiet").await?;
    let address: SocketAddr = base.trim_start_matches("http://").parse()?;
    // Idle connections from 127.0.0.2 … 127.0.0.9, not a byte sent.
    let mut idle = Vec::new();
    let mut idle_refused = 0usize;
    for i in 0..args.idle {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        match socket.connect(address).await {
            Ok(stream) => idle.push(stream),
            Err(_) => idle_refused += 1,
        }
    }
    // Invalid tokens, as fast as 32 connections from 127.0.0.10 can send them.
    let stop = Arc::new(AtomicBool::new(false));
    let flood_counts: Arc<std::sync::Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let mut flooders = Vec::new();
    for _ in 0..32 {
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)))
            .build()?;
        let (stop, counts, url) = (stop.clone(), flood_counts.clone(), format!("{base}/mcp"));
        flooders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = match http
                    .post(&url)
                    .bearer_auth("not.a.token")
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                *counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open_during = metric(&base, "dualtrust_http_connections_open").await;
    let mut loud = run_clients(&base, data, 50, 15.0, false, "loud").await?;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    // Which idle connections did the server close (header timeout)?
    let mut closed_by_server = 0usize;
    for stream in &idle {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut buf)).await
        {
            closed_by_server += 1;
        }
    }
    drop(idle);
    let figures = json!({
        "clients": 50,
        "without_flood": { "p50_ms": quiet.percentile_ms(0.5), "p99_ms": quiet.percentile_ms(0.99), "calls": quiet.latencies.len(), "unexpected_answers": quiet.others() },
        "with_flood": { "p50_ms": loud.percentile_ms(0.5), "p99_ms": loud.percentile_ms(0.99), "calls": loud.latencies.len(), "unexpected_answers": loud.others(), "unexpected_examples": loud.others },
        "idle_connections": { "opened": args.idle - idle_refused, "refused_at_connect": idle_refused, "closed_by_server_within_15_s": closed_by_server, "open_on_server_at_flood_start": open_during },
        "flood_statuses": *flood_counts.lock().unwrap_or_else(|e| e.into_inner()),
    });
    server.stop().await;
    Ok(figures)
}

async fn kills(args: &Args, data: &Path, port: u16) -> Result<Value, BoxError> {
    let mut rounds = Vec::new();
    let mut told: Vec<(u64, String)> = Vec::new();
    for round in 0..args.kills {
        let mut server = Server::start(&args.binary, data, port).await?;
        let base = server.base.clone();
        let data_owned = data.to_path_buf();
        let before = SUCCEEDED.load(Ordering::Relaxed);
        HALT.store(false, Ordering::Relaxed);
        let writers = tokio::spawn(async move {
            run_clients(&base, &data_owned, 32, 30.0, true, &format!("kill{round}")).await
        });
        // Mid-stream: once the clients are well into their calls.
        let waiting = Instant::now();
        while SUCCEEDED.load(Ordering::Relaxed) < before + 200
            && waiting.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill_9();
        HALT.store(true, Ordering::Relaxed);
        let _ = server.child.wait().await;
        // Calls in flight to a dead server are not waited for.
        tokio::time::sleep(Duration::from_millis(200)).await;
        writers.abort();
        let _ = writers.await;
        let told_before = told.len();
        told = TOLD.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Restarted, the log verifies offline and holds every receipt told.
        let server = Server::start(&args.binary, data, port).await?;
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("log.jsonl");
        let jwks = dir.path().join("jwks.json");
        cli(
            &args.binary,
            data,
            &["audit", "export", "--out", log.to_str().ok_or("path")?],
        )?;
        std::fs::write(&jwks, cli(&args.binary, data, &["keys"])?)?;
        let verified = cli(
            &args.binary,
            data,
            &[
                "audit",
                "verify",
                "--log",
                log.to_str().ok_or("path")?,
                "--jwks",
                jwks.to_str().ok_or("path")?,
            ],
        )
        .is_ok();
        let stored: BTreeMap<u64, String> = std::fs::read_to_string(&log)?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| Some((r["body"]["seq"].as_u64()?, r["hash"].as_str()?.to_string())))
            .collect();
        let missing = told
            .iter()
            .filter(|(seq, hash)| stored.get(seq) != Some(hash))
            .count();
        eprintln!(
            "kill {round}: {} receipts told in this round, log {} receipts, verified {verified}, missing {missing}",
            told.len() - told_before,
            stored.len()
        );
        rounds.push(json!({ "round": round, "receipts_told": told.len(), "log_size": stored.len(), "verified": verified, "missing": missing }));
        server.stop().await;
    }
    let all_verified = rounds.iter().all(|r| r["verified"] == true);
    let missing: u64 = rounds.iter().filter_map(|r| r["missing"].as_u64()).sum();
    Ok(
        json!({ "kills": args.kills, "all_verified": all_verified, "missing_total": missing, "receipts_told": told.len(), "rounds": rounds }),
    )
}

async fn run(args: Args) -> Result<bool, BoxError> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    prepare(&args.binary, &data)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    println!("== soak: {} clients for {} s", args.clients, args.secs);
    let soak = soak(&args, &data, port).await?;
    println!("{}", serde_json::to_string_pretty(&soak)?);
    println!(
        "== {} idle connections and an invalid-token flood",
        args.idle
    );
    let flood = flood(&args, &data, port).await?;
    println!("{}", serde_json::to_string_pretty(&flood)?);
    println!("== kill -9 x {}", args.kills);
    let kills = kills(&args, &data, port).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({ "kills": kills["kills"], "all_verified": kills["all_verified"], "missing_total": kills["missing_total"], "receipts_told": kills["receipts_told"] })
        )?
    );
    let passed = soak["unexpected_answers"] == 0
        && flood["with_flood"]["unexpected_answers"] == 0
        && kills["all_verified"] == true
        && kills["missing_total"] == 0;
    let mut results: Value = std::fs::read_to_string(&args.out)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    results["soak"] = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load": soak, "idle_and_flood": flood, "kill_9": kills, "passed": passed,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")?;
    Ok(passed)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "soak: an answer was neither a success, a documented refusal nor a 429, or the log lost a receipt"
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
