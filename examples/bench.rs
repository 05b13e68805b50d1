//! The benchmark driver behind `tools/bench`: a real MCP client (rmcp's)
//! that starts each server, loads it over streamable HTTP on loopback and
//! over stdio, reads its memory from /proc, and prints one side-by-side
//! table (also written as JSON, with the machine's core count).
//!
//! Servers, each on its own port, one at a time:
//! - `dualtrust` (the `bench` build), gated: RS256 bearer token verified on
//!   every request, scope, rate limit, lease, durable receipt;
//! - the same binary with `--bench-gate-off`;
//! - `bench_bare_rmcp`: rmcp alone, no authentication;
//! - FastMCP with `JWTVerifier` (RS256), when a Python with fastmcp is given.
//!
//! Every HTTP server is called with the same bearer token; the servers
//! without authentication ignore it.

// A benchmark or test harness: a failed set-up step ends the run loudly.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Client = RunningService<RoleClient, ClientConfig>;

const ISSUER: &str = "https://idp.bench.invalid";
const AUDIENCE: &str = "dualtrust";
const READ_SQL: &str = "SELECT id, name, country FROM customers WHERE id = 7";

#[derive(Parser)]
struct Args {
    /// The dualtrust binary, built with `--features bench`.
    #[arg(long)]
    dualtrust: PathBuf,
    /// The bare rmcp server (examples/bench_bare_rmcp.rs).
    #[arg(long)]
    bare: PathBuf,
    /// A Python interpreter with fastmcp installed; FastMCP is skipped without it.
    #[arg(long)]
    python: Option<PathBuf>,
    /// benches/fastmcp_server.py
    #[arg(long)]
    fastmcp_script: Option<PathBuf>,
    /// Directory with rsa1.pem / rsa1.pub.pem (the test IdP's key).
    #[arg(long)]
    idp_keys: PathBuf,
    /// Seconds measured per cell (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Concurrent clients, comma separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Open HTTP sessions for the memory figure.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Cold starts measured over stdio.
    #[arg(long, default_value_t = 20)]
    cold_starts: usize,
    /// The audit benchmark's JSON (`cargo bench --bench audit` with
    /// BENCH_JSON), merged into the table when present.
    #[arg(long)]
    audit_json: Option<PathBuf>,
    /// Only these servers: gated, gate-off, bare, fastmcp (comma separated).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Skip the stdio figures.
    #[arg(long)]
    skip_stdio: bool,
    /// Where to write the JSON results.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum ServerKind {
    DualtrustGated,
    DualtrustGateOff,
    BareRmcp,
    Fastmcp,
}

impl ServerKind {
    fn label(self) -> &'static str {
        match self {
            Self::DualtrustGated => "dualtrust (gated)",
            Self::DualtrustGateOff => "gate off",
            Self::BareRmcp => "bare rmcp",
            Self::Fastmcp => "FastMCP + JWT",
        }
    }

    fn short_name(self) -> &'static str {
        match self {
            Self::DualtrustGated => "gated",
            Self::DualtrustGateOff => "gate-off",
            Self::BareRmcp => "bare",
            Self::Fastmcp => "fastmcp",
        }
    }

    fn serves_db_query(self) -> bool {
        matches!(self, Self::DualtrustGated | Self::DualtrustGateOff)
    }
}

#[derive(Clone, Serialize)]
struct Cell {
    server: ServerKind,
    tool: &'static str,
    clients: usize,
    calls: usize,
    failed: usize,
    calls_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct Memory {
    server: ServerKind,
    idle_rss_mb: f64,
    sessions: usize,
    rss_with_sessions_mb: Option<f64>,
}

#[derive(Serialize)]
struct StdioFigures {
    cold_start_ms_median: f64,
    cold_start_ms_min: f64,
    cold_start_ms_max: f64,
    cold_starts: usize,
    /// Start to the first gated call's result (the tree loaded by then).
    first_call_ms_median: f64,
    /// Receipts in the log the server started on.
    log_receipts: u64,
    echo_calls_per_s: f64,
    db_query_calls_per_s: f64,
}

/// One server process, started and announced.
struct Server {
    child: tokio::process::Child,
    mcp_url: String,
}

impl Server {
    /// Spawns `command` and waits for its `listening on http://…/mcp` line.
    async fn start(mut command: tokio::process::Command) -> Result<Self, BoxError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (found, announced) = tokio::sync::oneshot::channel();
        // Keep draining stderr for the server's lifetime so it never blocks.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut found = Some(found);
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(sender) = found.take()
                {
                    let _ = sender.send(Ok(rest.trim().to_string()));
                } else if found.is_some() && seen.len() < 40 {
                    seen.push(line);
                }
            }
            if let Some(sender) = found {
                let _ = sender.send(Err(seen.join("\n")));
            }
        });
        let mcp_url = match tokio::time::timeout(Duration::from_secs(60), announced).await {
            Ok(Ok(Ok(url))) => url,
            Ok(Ok(Err(output))) => return Err(format!("server exited:\n{output}").into()),
            _ => return Err("server did not announce its address in 60 s".into()),
        };
        Ok(Self { child, mcp_url })
    }

    fn rss_mb(&self) -> Option<f64> {
        rss_mb(self.child.id()?)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Resident set size from /proc, in MiB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn rs256_token(idp_keys: &Path) -> Result<String, BoxError> {
    let pem = std::fs::read(idp_keys.join("rsa1.pem"))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?;
    let now = dualtrust::now_unix();
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-agent",
        "scope": "bench:echo db:read",
        "iat": now,
        "exp": now + 3600,
        "jti": dualtrust::random_id()?,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )?)
}

/// A data directory configured to trust the test IdP's RS256 key, with
/// rate limits far above what the benchmark can reach (they are still
/// checked on every call).
fn dualtrust_data_dir(root: &Path, idp_keys: &Path) -> Result<PathBuf, BoxError> {
    let dir = root.join("dualtrust");
    std::fs::create_dir_all(&dir)?;
    let config = format!(
        r#"[identity]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
dev_tokens = false

[[identity.public_keys]]
alg = "RS256"
pem_file = "{}"

[limits]
calls_per_minute = 100000000
"#,
        idp_keys.join("rsa1.pub.pem").display()
    );
    std::fs::write(dir.join("dualtrust.toml"), config)?;
    Ok(dir)
}

fn arguments(tool: &str) -> Map<String, Value> {
    let value = match tool {
        "db.query" => json!({ "sql": READ_SQL }),
        _ => json!({ "text": "hello from the benchmark" }),
    };
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn client_config(version: ProtocolVersion) -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("dualtrust-bench", "1"),
    )
    .with_protocol_version(version)
}

async fn connect_http(
    url: &str,
    token: &str,
    version: ProtocolVersion,
    http: &reqwest::Client,
) -> Result<Client, BoxError> {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
    Ok(client_config(version).serve(transport).await?)
}

/// One call; `Ok(false)` when the server answered with a tool error.
async fn call_once(client: &Client, tool: &'static str) -> Result<bool, BoxError> {
    let result = client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments(tool)))
        .await?;
    Ok(!result.is_error.unwrap_or(false))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// `clients` sessions calling `tool` back to back; the calls that start
/// after one second of warm-up and end inside the window are counted.
async fn load(
    server: ServerKind,
    url: &str,
    token: &str,
    tool: &'static str,
    clients: usize,
    secs: f64,
) -> Result<Cell, BoxError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients.max(1) * 2)
        .build()?;
    let mut sessions = Vec::with_capacity(clients);
    for _ in 0..clients {
        sessions.push(connect_http(url, token, ProtocolVersion::LATEST, &http).await?);
    }
    let warm = Duration::from_secs(1);
    let window = Duration::from_secs_f64(secs);
    let origin = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut failed = 0usize;
                loop {
                    let started = origin.elapsed();
                    if started >= warm + window {
                        break;
                    }
                    let ok = matches!(call_once(&client, tool).await, Ok(true));
                    let ended = origin.elapsed();
                    if started >= warm && ended <= warm + window {
                        if ok {
                            samples.push(ended - started);
                        } else {
                            failed += 1;
                        }
                    }
                }
                let _ = client.cancel().await;
                (samples, failed)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (samples, f) = task.await?;
        latencies.extend(samples);
        failed += f;
    }
    latencies.sort_unstable();
    Ok(Cell {
        server,
        tool,
        clients,
        calls: latencies.len(),
        failed,
        calls_per_s: latencies.len() as f64 / secs,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
    })
}

/// RSS with `n` initialized sessions held open (protocol 2025-11-25, the
/// newest with server-side sessions).
async fn rss_with_sessions(server: &Server, token: &str, n: usize) -> Result<f64, BoxError> {
    let http = reqwest::Client::new();
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(
            connect_http(&server.mcp_url, token, ProtocolVersion::V_2025_11_25, &http).await?,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = server.rss_mb().ok_or("server has no RSS")?;
    for client in open {
        let _ = client.cancel().await;
    }
    Ok(rss)
}

fn stdio_command(binary: &Path, data_dir: &Path, token: &str) -> tokio::process::Command {
    tokio::process::Command::new(binary).configure(|cmd| {
        cmd.args(["serve", "--stdio"])
            .env("DUALTRUST_DATA_DIR", data_dir)
            .env("DUALTRUST_TOKEN", token)
            .env("RUST_LOG", "warn");
    })
}

async fn stdio_figures(
    binary: &Path,
    data_dir: &Path,
    token: &str,
    cold_starts: usize,
    secs: f64,
) -> Result<StdioFigures, BoxError> {
    let mut starts = Vec::with_capacity(cold_starts);
    let mut first_calls = Vec::with_capacity(cold_starts);
    let mut log_size = 0;
    for _ in 0..cold_starts {
        let started = Instant::now();
        let transport = TokioChildProcess::builder(stdio_command(binary, data_dir, token))
            .stderr(Stdio::null())
            .spawn()?
            .0;
        let client = client_config(ProtocolVersion::V_2025_11_25)
            .serve(transport)
            .await?;
        starts.push(started.elapsed());
        let result = client
            .call_tool(
                CallToolRequestParams::new("bench.echo").with_arguments(arguments("bench.echo")),
            )
            .await?;
        first_calls.push(started.elapsed());
        log_size = result
            .structured_content
            .as_ref()
            .and_then(|c| c["log"]["tree_size"].as_u64())
            .unwrap_or(0);
        let _ = client.cancel().await;
    }
    starts.sort_unstable();
    first_calls.sort_unstable();
    let transport = TokioChildProcess::builder(stdio_command(binary, data_dir, token))
        .stderr(Stdio::null())
        .spawn()?
        .0;
    let client = client_config(ProtocolVersion::LATEST)
        .serve(transport)
        .await?;
    let mut rates = [0.0; 2];
    for (rate, tool) in rates.iter_mut().zip(["bench.echo", "db.query"]) {
        let window = Duration::from_secs_f64(secs);
        let started = Instant::now();
        let mut calls = 0usize;
        while started.elapsed() < window {
            if !call_once(&client, tool).await? {
                return Err(format!("{tool} over stdio was refused").into());
            }
            calls += 1;
        }
        *rate = calls as f64 / started.elapsed().as_secs_f64();
    }
    let _ = client.cancel().await;
    Ok(StdioFigures {
        cold_start_ms_median: percentile(&starts, 50.0),
        cold_start_ms_min: percentile(&starts, 0.0),
        cold_start_ms_max: percentile(&starts, 100.0),
        cold_starts,
        first_call_ms_median: percentile(&first_calls, 50.0),
        log_receipts: log_size,
        echo_calls_per_s: rates[0],
        db_query_calls_per_s: rates[1],
    })
}

fn server_command(kind: ServerKind, args: &Args, data_dir: &Path) -> tokio::process::Command {
    match kind {
        ServerKind::DualtrustGated | ServerKind::DualtrustGateOff => {
            let mut command = tokio::process::Command::new(&args.dualtrust);
            command
                .args(["serve", "--http", "127.0.0.1:0"])
                .env("DUALTRUST_DATA_DIR", data_dir)
                .env("RUST_LOG", "warn");
            if kind == ServerKind::DualtrustGateOff {
                command.arg("--bench-gate-off");
            }
            command
        }
        ServerKind::BareRmcp => {
            let mut command = tokio::process::Command::new(&args.bare);
            command.arg("127.0.0.1:0");
            command
        }
        ServerKind::Fastmcp => {
            let mut command = tokio::process::Command::new(
                args.python.as_deref().unwrap_or(Path::new("python3")),
            );
            let port = free_port().unwrap_or(18765);
            command
                .arg(args.fastmcp_script.as_deref().unwrap_or(Path::new("")))
                .arg(port.to_string())
                .arg(args.idp_keys.join("rsa1.pub.pem"))
                .arg(ISSUER)
                .arg(AUDIENCE);
            command
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn fmt_cell(cell: Option<&Cell>) -> String {
    match cell {
        None => format!("{:>22}", "-"),
        Some(c) if c.failed > 0 && c.calls == 0 => format!("{:>22}", "failed"),
        Some(c) => format!("{:>8.0} {:>6.2} {:>6.2}", c.calls_per_s, c.p50_ms, c.p99_ms),
    }
}

fn print_table(
    machine: &Value,
    secs: f64,
    kinds: &[ServerKind],
    cells: &[Cell],
    memory: &[Memory],
    stdio: Option<&StdioFigures>,
    audit: Option<&Value>,
) {
    println!();
    println!(
        "dualtrust benchmark: {} cores ({}), loopback, {secs} s per cell; server and driver share the cores",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?")
    );
    println!();
    print!("{:<12} {:>7} ", "tools/call", "clients");
    for kind in kinds {
        print!(" {:>22}", kind.label());
    }
    println!();
    print!("{:<12} {:>7} ", "", "");
    for _ in kinds {
        print!(" {:>8} {:>6} {:>6}", "calls/s", "p50ms", "p99ms");
    }
    println!();
    let find = |kind, tool: &str, clients| {
        cells
            .iter()
            .find(|c| c.server == kind && c.tool == tool && c.clients == clients)
    };
    let mut clients: Vec<usize> = cells.iter().map(|c| c.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    for tool in ["bench.echo", "db.query"] {
        for &n in &clients {
            print!("{tool:<12} {n:>7} ");
            for &kind in kinds {
                print!(" {}", fmt_cell(find(kind, tool, n)));
            }
            println!();
        }
    }
    println!();
    for tool in ["bench.echo", "db.query"] {
        for &n in &clients {
            let gated = find(ServerKind::DualtrustGated, tool, n);
            let ratio = |other: ServerKind| {
                gated
                    .zip(find(other, tool, n))
                    .map(|(g, o)| g.calls_per_s / o.calls_per_s)
            };
            let mut line = format!("{tool:<12} {n:>3} clients: gated/gate-off ");
            line += &ratio(ServerKind::DualtrustGateOff)
                .map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
            if let Some(r) = ratio(ServerKind::BareRmcp) {
                line += &format!(", gated/bare rmcp {:.0}%", r * 100.0);
            }
            if let Some(r) = ratio(ServerKind::Fastmcp) {
                line += &format!(", gated/FastMCP {r:.1}x");
            }
            println!("{line}");
        }
    }
    let failed: usize = cells.iter().map(|c| c.failed).sum();
    if failed > 0 {
        println!("WARNING: {failed} calls failed (not counted above)");
    }
    println!();
    println!(
        "{:<20} {:>12} {:>22}",
        "memory", "idle RSS MB", "RSS MB with sessions"
    );
    for m in memory {
        println!(
            "{:<20} {:>12.1} {:>22}",
            m.server.label(),
            m.idle_rss_mb,
            m.rss_with_sessions_mb
                .map_or("-".into(), |r| format!("{r:.1} ({} sessions)", m.sessions))
        );
    }
    if let Some(s) = stdio {
        println!();
        println!(
            "stdio: cold start to initialize result {:.1} ms median (min {:.1}, max {:.1}, {} starts), to the first gated call's result {:.1} ms, on a log of {} receipts",
            s.cold_start_ms_median,
            s.cold_start_ms_min,
            s.cold_start_ms_max,
            s.cold_starts,
            s.first_call_ms_median,
            s.log_receipts,
        );
        println!(
            "stdio, one session: bench.echo {:.0} calls/s, db.query {:.0} calls/s",
            s.echo_calls_per_s, s.db_query_calls_per_s
        );
    }
    if let Some(a) = audit {
        println!();
        if let Some(appends) = a["appends"].as_array() {
            let list: Vec<String> = appends
                .iter()
                .map(|x| {
                    format!(
                        "{} appenders {:.0}/s",
                        x["concurrency"],
                        x["receipts_per_s"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            println!(
                "audit appends (SQLite, synchronous=FULL): {}",
                list.join(", ")
            );
        }
        println!(
            "audit verify: {} receipts in {:.2} s ({:.0}/s)",
            a["verify"]["receipts"],
            a["verify"]["seconds"].as_f64().unwrap_or(f64::NAN),
            a["verify"]["receipts_per_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

async fn run(mut args: Args) -> Result<(), BoxError> {
    // The server resolves relative key paths against its data directory.
    args.idp_keys = std::fs::canonicalize(&args.idp_keys)?;
    let scratch = tempfile::tempdir()?;
    let data_dir = dualtrust_data_dir(scratch.path(), &args.idp_keys)?;
    let init = tokio::process::Command::new(&args.dualtrust)
        .arg("init")
        .env("DUALTRUST_DATA_DIR", &data_dir)
        .stdout(Stdio::null())
        .status()
        .await?;
    if !init.success() {
        return Err("dualtrust init failed".into());
    }
    let token = rs256_token(&args.idp_keys)?;
    let mut kinds = vec![
        ServerKind::DualtrustGated,
        ServerKind::DualtrustGateOff,
        ServerKind::BareRmcp,
    ];
    if args.python.is_some() && args.fastmcp_script.is_some() {
        kinds.push(ServerKind::Fastmcp);
    }
    if !args.servers.is_empty() {
        kinds.retain(|k| args.servers.iter().any(|s| s == k.short_name()));
    }
    let mut cells = Vec::new();
    let mut memory = Vec::new();
    for &kind in &kinds {
        eprintln!("== {}", kind.label());
        let server = Server::start(server_command(kind, &args, &data_dir)).await?;
        // One call proves the server answers this token before measuring.
        let probe = connect_http(
            &server.mcp_url,
            &token,
            ProtocolVersion::LATEST,
            &reqwest::Client::new(),
        )
        .await?;
        if !call_once(&probe, "bench.echo").await? {
            return Err(format!("{}: bench.echo was refused", kind.label()).into());
        }
        let _ = probe.cancel().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = server.rss_mb().unwrap_or(f64::NAN);
        let sessions = rss_with_sessions(&server, &token, args.sessions).await;
        if let Err(e) = &sessions {
            eprintln!("   {} open sessions: {e}", args.sessions);
        }
        memory.push(Memory {
            server: kind,
            idle_rss_mb: idle,
            sessions: args.sessions,
            rss_with_sessions_mb: sessions.ok(),
        });
        for tool in ["bench.echo", "db.query"] {
            if tool == "db.query" && !kind.serves_db_query() {
                continue;
            }
            for &n in &args.clients {
                let cell = load(kind, &server.mcp_url, &token, tool, n, args.secs).await?;
                eprintln!(
                    "   {tool} x{n}: {:.0} calls/s p50 {:.2} ms p99 {:.2} ms ({} failed)",
                    cell.calls_per_s, cell.p50_ms, cell.p99_ms, cell.failed
                );
                cells.push(cell);
            }
        }
        server.stop().await;
    }
    let stdio = if args.skip_stdio {
        None
    } else {
        eprintln!("== stdio");
        Some(
            stdio_figures(
                &args.dualtrust,
                &data_dir,
                &token,
                args.cold_starts,
                args.secs,
            )
            .await?,
        )
    };
    let audit: Option<Value> = args
        .audit_json
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let machine = machine();
    print_table(
        &machine,
        args.secs,
        &kinds,
        &cells,
        &memory,
        stdio.as_ref(),
        audit.as_ref(),
    );
    let results = json!({
        "machine": machine,
        "unix_time": dualtrust::now_unix(),
        "secs_per_cell": args.secs,
        "http": cells,
        "memory": memory,
        "stdio": stdio,
        "audit": audit,
    });
    std::fs::write(&args.out, serde_json::to_vec_pretty(&results)?)?;
    println!();
    println!("results written to {}", args.out.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
