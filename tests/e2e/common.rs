use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

pub type Client = RunningService<RoleClient, ()>;

pub const BIN: &str = env!("CARGO_BIN_EXE_dualtrust");

/// A fresh data directory, initialised by `dualtrust init`.
pub struct DataDir {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl DataDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let out = std::process::Command::new(BIN)
            .args(["--data-dir"])
            .arg(&path)
            .arg("init")
            .output()
            .expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { _dir: dir, path }
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.path)
            .args(args)
            .env_remove("DUALTRUST_TOKEN")
            .output()
            .expect("run dualtrust")
    }

    /// Makes this data directory another replica of `first`'s deployment:
    /// the same server key and token issuer, as an operator distributes
    /// them (over the key `init` made here, which signed nothing).
    pub fn share_keys_of(&self, first: &DataDir) {
        for file in ["server.key", "dev-issuer.key"] {
            std::fs::copy(first.path.join(file), self.path.join(file)).expect("copy key");
        }
    }

    /// A development token minted by `dualtrust token`.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        let out = self.cli(&["token", "--sub", sub, "--scope", scope]);
        assert!(
            out.status.success(),
            "token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }

    /// A token signed by the development issuer key with hand-edited claims,
    /// for the attacks `dualtrust token` would never mint.
    pub fn forged_token(&self, edit: impl FnOnce(&mut Value)) -> String {
        let (issuer, _) =
            dualtrust::keys::KeyPair::load_or_create(&self.path.join("dev-issuer.key"), false)
                .expect("dev issuer key");
        let now = dualtrust::now_unix();
        let mut claims = json!({
            "iss": "dualtrust-dev", "aud": "dualtrust", "sub": "mallory",
            "scope": "db:read db:write db:admin terminal:execute terminal:admin passport:issue audit:read",
            "iat": now, "exp": now + 600, "jti": dualtrust::random_id().expect("id"),
        });
        edit(&mut claims);
        issuer.sign_jws("JWT", &claims).expect("sign")
    }

    pub fn workspace(&self) -> PathBuf {
        self.path.join("workspace")
    }

    pub async fn stdio_client(&self, token: Option<&str>) -> Client {
        let data = self.path.clone();
        let token = token.map(String::from);
        let transport =
            TokioChildProcess::new(tokio::process::Command::new(BIN).configure(|cmd| {
                cmd.arg("--data-dir").arg(&data).args(["serve", "--stdio"]);
                cmd.env_remove("DUALTRUST_TOKEN");
                cmd.env("DUALTRUST_LOG", "warn");
                if let Some(t) = &token {
                    cmd.env("DUALTRUST_TOKEN", t);
                }
            }))
            .expect("spawn stdio server");
        ().serve(transport).await.expect("initialize over stdio")
    }

    pub async fn http_server(&self) -> HttpServer {
        HttpServer::start(&self.path).await
    }
}

/// `dualtrust serve --http 127.0.0.1:0`, killed on drop.
pub struct HttpServer {
    child: tokio::process::Child,
    pub base: String,
}

impl HttpServer {
    pub async fn start(data: &Path) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--http", "127.0.0.1:0"])
            .env("DUALTRUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn http server");
        let base = listening_address(&mut child).await;
        Self { child, base }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub async fn client(&self, token: &str) -> Client {
        let config =
            StreamableHttpClientTransportConfig::with_uri(self.mcp_url()).auth_header(token);
        let transport = StreamableHttpClientTransport::from_config(config);
        ().serve(transport).await.expect("initialize over http")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the server to exit by itself.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("server exited in time")
            .expect("wait")
    }
}

/// The base URL a starting `serve --http` prints on stderr; keeps draining
/// stderr afterwards so the server never blocks on a full pipe.
pub async fn listening_address(child: &mut tokio::process::Child) -> String {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(rest) = line.strip_prefix("dualtrust listening on ") {
                return rest.trim_end_matches("/mcp").to_string();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server did not start in time");
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("SERVER: {l}");
        }
    });
    base
}

/// Calls a tool; returns the structured envelope and whether it was an error.
pub async fn call(client: &rmcp::Peer<RoleClient>, tool: &str, args: Value) -> (Value, bool) {
    let Value::Object(arguments) = args else {
        panic!("arguments must be an object")
    };
    let result: CallToolResult = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
        .await
        .expect("tools/call answered");
    let envelope = result
        .structured_content
        .clone()
        .expect("structured content");
    (envelope, result.is_error.unwrap_or(false))
}

/// The `WWW-Authenticate` challenge of a refused HTTP request.
pub fn www_authenticate(response: &reqwest::Response) -> String {
    response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string()
}

pub fn status(envelope: &Value) -> &str {
    envelope["status"].as_str().unwrap_or("missing")
}

pub fn error_code(envelope: &Value) -> &str {
    envelope["error"]["code"].as_str().unwrap_or("none")
}

/// Every answer carries a receipt naming the decision.
pub fn receipt(envelope: &Value) -> &Value {
    let r = &envelope["receipt"];
    assert!(r.is_object(), "no receipt in {envelope}");
    r
}

/// An approver created with `dualtrust approver-keygen`.
pub struct Approver {
    pub id: String,
    pub key: PathBuf,
    pub public_key: String,
}

impl DataDir {
    pub fn approver(&self, id: &str) -> Approver {
        let key = self.path.join(format!("{id}.approver.key"));
        let out = self.cli(&[
            "approver-keygen",
            "--id",
            id,
            "--out",
            key.to_str().expect("utf8"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf8");
        let public_key = text
            .lines()
            .find_map(|l| l.strip_prefix("public_key = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("public_key line")
            .to_string();
        Approver {
            id: id.into(),
            key,
            public_key,
        }
    }

    /// Writes `dualtrust.toml` registering `approvers` (with optional token
    /// subjects) plus any extra TOML.
    pub fn configure(&self, approvers: &[(&Approver, Option<&str>)], extra: &str) {
        let mut text = String::new();
        for (a, subject) in approvers {
            text.push_str(&format!(
                "[[approvers]]\nid = \"{}\"\npublic_key = \"{}\"\n",
                a.id, a.public_key
            ));
            if let Some(s) = subject {
                text.push_str(&format!("subject = \"{s}\"\n"));
            }
        }
        text.push_str(extra);
        std::fs::write(self.path.join("dualtrust.toml"), text).expect("write config");
    }

    /// `dualtrust approve … --yes`, beside the store.
    pub fn approve(&self, lease: &str, approver: &Approver) -> std::process::Output {
        self.cli(&[
            "approve",
            "--lease",
            lease,
            "--approver",
            &approver.id,
            "--key",
            approver.key.to_str().expect("utf8"),
            "--yes",
        ])
    }

    pub fn sign(&self, approver: &Approver, message: &str) -> String {
        use base64::Engine;
        let (key, _) =
            dualtrust::keys::KeyPair::load_or_create(&approver.key, false).expect("approver key");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.sign(message.as_bytes()))
    }
}

/// Approves a held call by each of `approvers` (the CLI, beside the store)
/// and repeats it with its lease; returns the result of the repeat.
pub async fn approve_and_redeem(
    data: &DataDir,
    client: &rmcp::Peer<RoleClient>,
    tool: &str,
    held: &Value,
    args: Value,
    approvers: &[&Approver],
) -> Value {
    let lease = lease_of(held);
    for approver in approvers {
        assert!(data.approve(&lease, approver).status.success());
    }
    let mut redeem = args;
    redeem["lease_id"] = serde_json::json!(lease);
    call(client, tool, redeem).await.0
}

/// The lease id of a held (`approval_required`) or `lease_issued` result.
pub fn lease_of(envelope: &Value) -> String {
    envelope["approval"]["lease_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no lease id in {envelope}"))
        .to_string()
}

impl DataDir {
    /// The receipts in the store, oldest first (`audit export`; works beside
    /// a running server).
    pub fn receipts(&self) -> Vec<Value> {
        let out = self.cli(&["audit", "export"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("receipt json"))
            .collect()
    }

    /// `audit export` + `audit verify` against this server's JWKS and the
    /// `checkpoints` given: Ok(stdout) or Err(stderr).
    pub fn offline_verify(&self, checkpoints: &[&Path]) -> Result<String, String> {
        let mut extra = Vec::new();
        for checkpoint in checkpoints {
            extra.push("--checkpoint");
            extra.push(checkpoint.to_str().expect("utf8"));
        }
        self.offline_verify_with(&extra)
    }

    /// The same, re-checking every approval against the approvers document
    /// at `approvers` (`audit verify --approvers`).
    pub fn offline_verify_approvals(&self, approvers: &Path) -> Result<String, String> {
        self.offline_verify_with(&["--approvers", approvers.to_str().expect("utf8")])
    }

    fn offline_verify_with(&self, extra: &[&str]) -> Result<String, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, jwks) = (dir.path().join("log.jsonl"), dir.path().join("jwks.json"));
        let out = self.cli(&["audit", "export", "--out", log.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&jwks, self.cli(&["keys"]).stdout).expect("jwks");
        let mut args = vec![
            "audit".to_string(),
            "verify".into(),
            "--log".into(),
            log.to_str().expect("utf8").into(),
            "--jwks".into(),
            jwks.to_str().expect("utf8").into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cli(&args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// The machine's PostgreSQL (trust auth), as its superuser.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh, uniquely named database on the server at `admin_url`.
pub async fn create_pg_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("dt_{}", &dualtrust::random_id().expect("id")[..12]);
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("PostgreSQL reachable (start it: pg_ctlcluster … main start)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    name
}

pub async fn drop_pg_database(admin_url: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}
