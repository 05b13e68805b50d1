//! The `dualtrust` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use dualtrust::config::{Config, Mode};
use dualtrust::identity::DevTokenClaims;
use dualtrust::server::{self, App};

/// dualtrust: an MCP server that gates SQL and shell access for AI agents
/// behind a verified identity, single-use leases and signed quorum approval,
/// and leaves a verifiable receipt for every decision.
#[derive(Parser)]
#[command(name = "dualtrust", version, propagate_version = true)]
struct Cli {
    /// Directory holding keys, the state store, the demo database and dualtrust.toml.
    #[arg(
        long,
        env = "DUALTRUST_DATA_DIR",
        default_value = "./dualtrust-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Configuration file (default: DATA_DIR/dualtrust.toml when present).
    #[arg(long, env = "DUALTRUST_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory: keys, state store, demo database.
    Init,
    /// Serve MCP over stdio or streamable HTTP.
    Serve {
        /// Speak MCP on stdin/stdout; the token comes from DUALTRUST_TOKEN.
        #[arg(long, conflicts_with = "http")]
        stdio: bool,
        /// Listen for streamable HTTP on ADDR (MCP at /mcp), e.g. 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        http: Option<String>,
        /// Benchmark builds only: run every call with the gate switched off
        /// (no identity, scope, lease, quorum or receipt). Refused in production.
        #[cfg(feature = "bench")]
        #[arg(long)]
        bench_gate_off: bool,
    },
    /// Mint a short-lived development token (development mode only), or
    /// `token revoke --jti ID` to revoke any token.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
        /// The token's subject.
        #[arg(long, required = true)]
        sub: Option<String>,
        /// Space-separated scopes, e.g. "db:read audit:read".
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime in seconds (default: identity.dev_token_ttl_s).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Revoke a token by its `jti` (same as `token revoke`).
    Revoke {
        #[arg(long)]
        jti: String,
    },
    /// Print the server's public keys as a JWK Set.
    Keys,
    /// Create the server signing key if it does not exist, and print its JWK.
    Keygen,
    /// Internal: the launcher terminal.execute runs commands through
    /// (applies resource limits and no-new-privileges, then execs).
    #[command(hide = true)]
    SandboxExec {
        /// The command's sandbox plan, as JSON (see `sandbox::Plan`).
        #[arg(long)]
        plan: String,
    },
    /// Internal: report which sandbox layers this kernel offers (JSON).
    #[command(hide = true)]
    SandboxProbe,
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Create an approver's key pair and print its configuration entry.
    ApproverKeygen {
        /// The approver's id, as it will appear in [[approvers]].
        #[arg(long)]
        id: String,
        /// Where to write the approver's private key (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Held calls waiting for approval.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Review a held call, sign it with your approver key and record the
    /// approval (run beside the server, with its data directory).
    Approve {
        /// The lease id from the approval_required result.
        #[arg(long)]
        lease: String,
        /// Your approver id, as registered in [[approvers]].
        #[arg(long)]
        approver: String,
        /// Your approver private key file (from `approver-keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// List held calls waiting for approval, with what they would do.
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write the whole log as JSON lines, one receipt per line.
    Export {
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an exported log offline: signatures, sequence and chain.
    Verify {
        /// The JSONL file written by `audit export`.
        #[arg(long)]
        log: PathBuf,
        /// The server's JWKS (from `dualtrust keys` or /.well-known/jwks.json).
        #[arg(long)]
        jwks: PathBuf,
        /// Signed checkpoints you hold (from receipts or `audit checkpoint`):
        /// the exported log must contain each one as a prefix.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
    },
    /// Print a signed checkpoint (C2SP signed note) of the log as it is now.
    Checkpoint,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Revoke a token by its `jti`; checked on every call, by every replica.
    Revoke {
        #[arg(long)]
        jti: String,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn revoke(config: &Config, jti: &str) -> Result<(), BoxError> {
    server::ensure_data_dir(config)?;
    let store = dualtrust::store::Store::open(&config.store_target).await?;
    store.revoke(jti, dualtrust::now_unix()).await?;
    println!("revoked {jti}");
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DUALTRUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to the MCP stdio transport.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // One JSON object per line for log shippers; text for people.
    match std::env::var("DUALTRUST_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().flatten_event(true).init(),
        _ => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The launcher runs with a scrubbed environment and must not read
    // configuration or log: it only limits itself and execs.
    if let Command::SandboxProbe = &cli.command {
        let report: serde_json::Map<String, serde_json::Value> = dualtrust::sandbox::probe()
            .into_iter()
            .map(|(layer, offered)| {
                let value = match offered {
                    Ok(()) => "ok".to_string(),
                    Err(why) => why,
                };
                (layer.name().to_string(), value.into())
            })
            .collect();
        println!("{}", serde_json::Value::Object(report));
        return ExitCode::SUCCESS;
    }
    if let Command::SandboxExec { plan } = &cli.command {
        let outcome = serde_json::from_str::<dualtrust::sandbox::Plan>(plan)
            .map_err(|e| format!("bad plan: {e}"))
            .and_then(|plan| dualtrust::sandbox::run(&plan));
        return match outcome {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("sandbox-exec: {e}");
                ExitCode::from(126)
            }
        };
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let config = Config::load(&cli.data_dir, cli.config.as_deref(), std::env::vars())?;
    match cli.command {
        Command::Init => {
            let app = App::build(config).await?;
            println!("data directory: {}", app.config.data_dir.display());
            println!("server key id:  {}", app.server_key.kid());
            println!("state store:    {}", app.config.store_target.describe());
            println!("database:       {}", app.config.database_target.describe());
        }
        Command::Serve {
            stdio,
            http,
            #[cfg(feature = "bench")]
            bench_gate_off,
        } => {
            #[cfg(feature = "bench")]
            let app = if bench_gate_off {
                App::build_gate_off(config).await?
            } else {
                App::build(config).await?
            };
            #[cfg(not(feature = "bench"))]
            let app = App::build(config).await?;
            let app = Arc::new(app);
            if stdio {
                let token = std::env::var("DUALTRUST_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty());
                dualtrust::transport::stdio::serve(app, token).await?;
            } else {
                let bind = match http.as_deref() {
                    Some("") | None => app.config.http.bind.clone(),
                    Some(addr) => addr.to_string(),
                };
                dualtrust::transport::http::serve(app, &bind).await?;
            }
        }
        Command::Token {
            action: Some(TokenAction::Revoke { jti }),
            ..
        }
        | Command::Revoke { jti } => revoke(&config, &jti).await?,
        Command::Token {
            sub, scope, ttl, ..
        } => {
            let sub = sub.unwrap_or_default();
            if config.mode != Mode::Development || !config.identity.dev_tokens {
                return Err("development tokens are disabled (production mode or identity.dev_tokens = false)".into());
            }
            server::ensure_data_dir(&config)?;
            let issuer = server::load_dev_issuer(&config)?;
            let now = dualtrust::now_unix();
            let jti = dualtrust::random_id()?;
            let claims = DevTokenClaims {
                iss: &config.identity.issuer,
                aud: &config.identity.audience,
                sub: &sub,
                scope: &scope,
                iat: now,
                nbf: now,
                exp: now + ttl.unwrap_or(config.identity.dev_token_ttl_s),
                jti: &jti,
            };
            println!("{}", issuer.sign_jws("JWT", &claims)?);
        }
        Command::Keys => {
            let key = server::load_server_key(&config)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&dualtrust::keys::jwks(&[&key.verifying_key()]))?
            );
        }
        Command::Keygen => {
            server::ensure_data_dir(&config)?;
            let (key, created) =
                dualtrust::keys::KeyPair::load_or_create(&config.server_key_path(), true)?;
            eprintln!(
                "{} {}",
                if created {
                    "created"
                } else {
                    "existing key kept:"
                },
                config.server_key_path().display()
            );
            println!("{}", serde_json::to_string_pretty(&key.public_jwk())?);
        }
        Command::SandboxExec { .. } | Command::SandboxProbe => unreachable_launcher()?,
        Command::Audit { command } => audit(config, command).await?,
        Command::ApproverKeygen { id, out } => {
            let (key, created) = dualtrust::keys::KeyPair::load_or_create(&out, true)?;
            if !created {
                return Err(format!(
                    "{} already exists; not overwriting an approver key",
                    out.display()
                )
                .into());
            }
            let x = key.public_jwk()["x"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "wrote {} (keep it secret; it is your approval signature)",
                out.display()
            );
            println!(
                "[[approvers]]\nid = \"{id}\"\npublic_key = \"{x}\"\n# subject = \"{id}@your-idp\"  # your token subject, if you also call the server"
            );
        }
        Command::Approvals {
            command: ApprovalsCommand::List,
        } => {
            let app = App::build(config).await?;
            let now = dualtrust::now_unix();
            let pending = app.store.pending_leases(now).await?;
            if pending.is_empty() {
                println!("no calls are waiting for approval");
            }
            for lease in pending {
                let stored = app.store.approvals(&lease.id).await?;
                let approved = app.gate.approvers().tally(&lease, &stored);
                println!(
                    "{}  {}/{} approvals  expires in {}s  requested by {}\n    {}",
                    lease.id,
                    approved.len(),
                    lease.quorum_k,
                    lease.expires_at.saturating_sub(now),
                    lease.subject,
                    lease.summary
                );
            }
        }
        Command::Approve {
            lease,
            approver,
            key,
            yes,
        } => approve(config, &lease, &approver, &key, yes).await?,
    }
    Ok(())
}

fn unreachable_launcher() -> Result<(), BoxError> {
    Err("sandbox-exec is handled before configuration is loaded".into())
}

async fn approve(
    config: Config,
    lease_id: &str,
    approver: &str,
    key: &std::path::Path,
    yes: bool,
) -> Result<(), BoxError> {
    use std::io::Write;
    let app = App::build(config).await?;
    let lease = app
        .store
        .lease(lease_id)
        .await?
        .ok_or("no lease with this id exists")?;
    let now = dualtrust::now_unix();
    let stored = app.store.approvals(&lease.id).await?;
    let approved: Vec<String> = app
        .gate
        .approvers()
        .tally(&lease, &stored)
        .into_iter()
        .map(|a| a.approver().to_string())
        .collect();
    // Show the approver what they are about to sign, from the server's record.
    let mut out = std::io::stderr().lock();
    writeln!(out, "lease        {}", lease.id)?;
    writeln!(
        out,
        "state        {} ({} of {} approvals so far{})",
        lease.state.as_str(),
        approved.len(),
        lease.quorum_k,
        if approved.is_empty() {
            String::new()
        } else {
            format!(": {}", approved.join(", "))
        }
    )?;
    writeln!(out, "requested by {}", lease.subject)?;
    writeln!(out, "tool         {}", lease.tool)?;
    writeln!(out, "will         {}", lease.summary)?;
    writeln!(out, "arguments    {}", lease.args_json)?;
    writeln!(
        out,
        "expires in   {} s (unix {})",
        lease.expires_at.saturating_sub(now),
        lease.expires_at
    )?;
    if !yes {
        write!(out, "Approve this exact call? [y/N] ")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err("not approved".into());
        }
    }
    let (pair, _) = dualtrust::keys::KeyPair::load_or_create(key, false)?;
    let signature = {
        use base64::Engine;
        let message = dualtrust::gate::quorum::approval_message(&lease);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.sign(message.as_bytes()))
    };
    let status = app
        .gate
        .submit_approval("cli", None, &lease.id, approver, &signature)
        .await
        .map_err(|e| format!("approval not recorded: {e}"))?;
    println!(
        "approval recorded: {} of {} for lease {}{}",
        status.approvals,
        status.k,
        status.lease_id,
        if status.complete {
            "; the call can now be repeated with this lease_id"
        } else {
            ""
        }
    );
    Ok(())
}

async fn audit(config: Config, command: AuditCommand) -> Result<(), BoxError> {
    use std::io::Write;
    match command {
        AuditCommand::Export { out } => {
            let store = dualtrust::store::Store::open(&config.store_target).await?;
            let mut sink: Box<dyn Write> = match out {
                Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut next = 0u64;
            loop {
                let batch = dualtrust::audit::stored_receipts(&store, next, 1000).await?;
                let Some(last) = batch.last() else { break };
                next = last.body.seq + 1;
                for receipt in &batch {
                    serde_json::to_writer(&mut sink, receipt)?;
                    sink.write_all(b"\n")?;
                }
            }
            sink.flush()?;
        }
        AuditCommand::Checkpoint => {
            let store = dualtrust::store::Store::open(&config.store_target).await?;
            let key = Arc::new(server::load_server_key(&config)?);
            let log = dualtrust::audit::AuditLog::open(store, key.clone()).await?;
            eprintln!(
                "verifier key: {}",
                dualtrust::audit::checkpoint::verifier_key(log.origin(), &key.verifying_key())
            );
            print!("{}", log.current_checkpoint().await?);
        }
        AuditCommand::Verify {
            log,
            jwks,
            checkpoint,
        } => {
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&jwks)?)?;
            let keys = dualtrust::keys::ed25519_keys_from_jwks(&doc);
            if keys.is_empty() {
                return Err("the JWKS holds no Ed25519 key".into());
            }
            let text = std::fs::read_to_string(&log)?;
            let mut receipts = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                receipts.push(
                    serde_json::from_str(line)
                        .map_err(|e| format!("line {}: not a receipt: {e}", n + 1))?,
                );
            }
            let tree = dualtrust::audit::verify_log(receipts, &keys)
                .map_err(|(seq, error)| format!("receipt {seq}: {error}"))?;
            println!(
                "ok: {} receipts verified (signatures, sequence, chain); RFC 6962 root {}",
                tree.len(),
                tree.root(tree.len()).map(hex::encode).unwrap_or_default()
            );
            for path in checkpoint {
                let note = std::fs::read_to_string(&path)?;
                let verified = keys.iter().find_map(|(kid, key)| {
                    dualtrust::audit::checkpoint::Checkpoint::verify(
                        &note,
                        &dualtrust::audit::checkpoint::origin_for(kid),
                        key,
                    )
                    .ok()
                });
                let cp = verified.ok_or_else(|| {
                    format!(
                        "{}: not a checkpoint signed by a key in the JWKS",
                        path.display()
                    )
                })?;
                match tree.root(cp.size) {
                    Some(root) if root == cp.root => println!("ok: checkpoint {} (size {}) is a prefix of this log", path.display(), cp.size),
                    Some(_) => return Err(format!("{}: the log was rewritten: its first {} receipts do not match the checkpoint", path.display(), cp.size).into()),
                    None => return Err(format!("{}: the log was truncated: it holds {} receipts, the checkpoint {}", path.display(), tree.len(), cp.size).into()),
                }
            }
        }
    }
    Ok(())
}
