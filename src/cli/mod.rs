//! The `dualtrust` command line: its arguments and what each command does.
//! `main.rs` only parses, starts logging and the runtime, and calls [`run`].

mod approvals;
mod audit;
mod keys;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::app::{self, App};
use crate::config::{Config, Mode};
use crate::identity::DevTokenClaims;

/// dualtrust: an MCP server that gates SQL and shell access for AI agents
/// behind a verified identity, single-use leases and signed quorum approval,
/// and leaves a verifiable receipt for every decision.
#[derive(Parser)]
#[command(name = "dualtrust", version, propagate_version = true)]
pub struct Cli {
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
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// A further claim, NAME=VALUE (repeatable), e.g. `tenant=acme` for
        /// a claim `identity.claims` binds into SQL.
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, String)>,
    },
    /// Revoke a token by its `jti` (same as `token revoke`).
    Revoke {
        #[arg(long)]
        jti: String,
    },
    /// Print the server's public keys as a JWK Set (the active key and every
    /// retired one, with the span of the log each signs), or `keys rotate`.
    #[command(args_conflicts_with_subcommands = true)]
    Keys {
        #[command(subcommand)]
        action: Option<KeysAction>,
    },
    /// Create the server signing key if it does not exist, and print its JWK;
    /// with --out, write a new key to FILE (the next key of a rotation).
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
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
    /// Run a small reference witness (C2SP tlog-witness): cosigns a log's
    /// checkpoints only while they stay consistent with what it cosigned.
    Witness {
        /// Its name in cosignatures, e.g. witness.example.com/w1.
        #[arg(long)]
        name: String,
        /// Its Ed25519 key file (created, mode 0600, when missing).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where it remembers the latest checkpoint of each log.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// A log it witnesses: the log's verifier key (from `dualtrust audit
        /// checkpoint`); repeat for each log, and for each key after a rotation.
        #[arg(long = "log", value_name = "VKEY", required = true)]
        logs: Vec<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Approvers' passkeys: list them, confirm a registration, or print the
    /// approvers document offline verifiers check approvals against.
    Passkeys {
        #[command(subcommand)]
        command: PasskeysCommand,
    },
    /// Held calls waiting for approval.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Review a held call, sign it with your approver key and record the
    /// approval (beside the server, or from your machine with --server).
    Approve(#[command(flatten)] Signing),
    /// Refuse a held call: sign its rejection, with your reason, and record
    /// it; the call ends at once.
    Reject {
        #[command(flatten)]
        signing: Signing,
        /// Why, in one line: the agent is told, the receipt records it.
        #[arg(long)]
        reason: String,
    },
}

/// What an approver signs a held call with, and where it is recorded.
#[derive(clap::Args)]
pub struct Signing {
    /// The lease id from the approval_required result.
    #[arg(long)]
    pub lease: String,
    /// Your approver id, as registered in [[approvers]].
    #[arg(long)]
    pub approver: String,
    /// Your approver private key file (from `approver-keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Record it on this server (its base URL), from your own machine, with
    /// your approver token in DUALTRUST_APPROVER_TOKEN; without it, in the
    /// local data directory's store.
    #[arg(long)]
    pub server: Option<String>,
}

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// List held calls waiting for approval, with what they would do.
    List {
        /// Ask this server (its base URL) with your approver token in
        /// DUALTRUST_APPROVER_TOKEN, instead of reading the local store.
        #[arg(long)]
        server: Option<String>,
    },
    /// One held call's full review and the statement you would sign.
    Show {
        #[arg(long)]
        lease: String,
        /// As for `list`.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PasskeysCommand {
    /// Every approver's passkeys: pinned in the configuration, registered
    /// in the inbox, and whether each is confirmed.
    List,
    /// Confirm a registration made in the inbox: from this receipt on, the
    /// passkey counts for its approver. Check the credential id with the
    /// approver first (the inbox shows it after registering).
    Confirm {
        // A base64url id may begin with `-`.
        #[arg(long, value_name = "CREDENTIAL_ID", allow_hyphen_values = true)]
        credential: String,
    },
    /// Revoke a registered passkey (a lost or retired authenticator): from
    /// this receipt on it counts for nothing, even approvals it already gave.
    Revoke {
        #[arg(long, value_name = "CREDENTIAL_ID", allow_hyphen_values = true)]
        credential: String,
    },
    /// Print the approvers document (as `/.well-known/dualtrust-approvers.json`)
    /// for `audit verify --approvers`.
    Export,
}

#[derive(Subcommand)]
pub enum AuditCommand {
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
        /// The server's JWKS (from `dualtrust keys` or /.well-known/jwks.json):
        /// every key that signed the log, with the span each may sign.
        #[arg(long)]
        jwks: PathBuf,
        /// The log's origin, when you know it; otherwise a checkpoint's own.
        #[arg(long)]
        origin: Option<String>,
        /// Signed checkpoints you hold (from receipts or `audit checkpoint`):
        /// the exported log must contain each one as a prefix.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// A witness you trust (its cosigner verifier key); repeat for each.
        #[arg(long = "witness", value_name = "VKEY")]
        witnesses: Vec<String>,
        /// How many of those witnesses must have cosigned each checkpoint
        /// (default: all of them).
        #[arg(long, value_name = "K")]
        witnesses_required: Option<usize>,
        /// The approvers document (`dualtrust passkeys export` or
        /// /.well-known/dualtrust-approvers.json): re-check every approval
        /// a call ran with, Ed25519 and passkey.
        #[arg(long, value_name = "FILE")]
        approvers: Option<PathBuf>,
    },
    /// Print a signed checkpoint (C2SP signed note) of the log as it is now,
    /// or with --witnessed the newest one the witnesses cosigned.
    Checkpoint {
        #[arg(long)]
        witnessed: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Retire the active server key at the log's current size and sign
    /// with a new one from there on. Without --next, generates the new key
    /// into the key file; with --next, activates a key already added to
    /// every replica's key file or variable.
    Rotate {
        /// The next key (from `dualtrust keygen --out FILE`).
        #[arg(long, value_name = "FILE")]
        next: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Revoke a token by its `jti`; checked on every call, by every replica.
    Revoke {
        #[arg(long)]
        jti: String,
    },
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `NAME=VALUE`, where NAME is not one the token already sets.
fn parse_claim(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))?;
    if name.is_empty() || crate::config::REGISTERED_CLAIMS.contains(&name) {
        return Err(format!("{name:?}: not a claim this option may set"));
    }
    Ok((name.to_string(), value.to_string()))
}

async fn revoke(config: &Config, jti: &str) -> Result<(), BoxError> {
    app::ensure_data_dir(config)?;
    let store = crate::store::Store::open(&config.store_target).await?;
    store.revoke(jti, crate::now_unix()).await?;
    println!("revoked {jti}");
    Ok(())
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let config = Config::load(&cli.data_dir, cli.config.as_deref(), std::env::vars())?;
    match cli.command {
        Command::Init => {
            let app = App::build(config).await?;
            println!("data directory: {}", app.config.data_dir.display());
            println!("server key id:  {}", app.keys.active_kid());
            println!("log origin:     {}", app.keys.origin());
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
            app.sweep_expired_leases();
            app.refresh_revocations();
            app.witness_checkpoints();
            if stdio {
                let token = std::env::var("DUALTRUST_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty());
                crate::transport::stdio::serve(app, token).await?;
            } else {
                let bind = match http.as_deref() {
                    Some("") | None => app.config.http.bind.clone(),
                    Some(addr) => addr.to_string(),
                };
                crate::transport::http::serve(app, &bind).await?;
            }
        }
        Command::Token {
            action: Some(TokenAction::Revoke { jti }),
            ..
        }
        | Command::Revoke { jti } => revoke(&config, &jti).await?,
        Command::Token {
            sub,
            scope,
            ttl,
            claims: extra,
            ..
        } => {
            let sub = sub.unwrap_or_default();
            if config.mode != Mode::Development || !config.identity.dev_tokens {
                return Err("development tokens are disabled (production mode or identity.dev_tokens = false)".into());
            }
            app::ensure_data_dir(&config)?;
            let issuer = app::load_dev_issuer(&config)?;
            let now = crate::now_unix();
            let jti = crate::random_id()?;
            let claims = DevTokenClaims {
                iss: &config.identity.issuer,
                aud: &config.identity.audience,
                sub: &sub,
                scope: &scope,
                iat: now,
                nbf: now,
                exp: now + ttl.unwrap_or(config.identity.dev_token_ttl_s),
                jti: &jti,
                extra: extra.into_iter().collect(),
            };
            println!("{}", issuer.sign_jws("JWT", &claims)?);
        }
        Command::Keys { action: None } => keys::print(&config).await?,
        Command::Keys {
            action: Some(KeysAction::Rotate { next }),
        } => keys::rotate(&config, next.as_deref()).await?,
        Command::Keygen { out: Some(out) } => keys::generate(&out)?,
        Command::Keygen { out: None } => {
            app::ensure_data_dir(&config)?;
            let (key, created) =
                crate::keys::KeyPair::load_or_create(&config.server_key_path(), true)?;
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
        Command::Witness {
            name,
            key,
            state,
            logs,
            listen,
        } => {
            let logs = logs
                .iter()
                .map(|vkey| {
                    crate::audit::checkpoint::NoteVerifier::parse(vkey)
                        .ok_or_else(|| format!("--log {vkey}: not a log verifier key"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (key, _) = crate::keys::KeyPair::load_or_create(&key, true)?;
            let witness = Arc::new(crate::witness::Witness::open(name, key, logs, state)?);
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            eprintln!("witness key: {}", witness.verifier_key());
            eprintln!(
                "dualtrust witness listening on http://{}",
                listener.local_addr()?
            );
            crate::witness::serve(witness, listener).await?;
        }
        Command::SandboxExec { .. } | Command::SandboxProbe => unreachable_launcher()?,
        Command::Audit { command } => audit::run(config, command).await?,
        Command::ApproverKeygen { id, out } => {
            let (key, created) = crate::keys::KeyPair::load_or_create(&out, true)?;
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
        Command::Passkeys { command } => approvals::passkeys(&config, command).await?,
        Command::Approvals {
            command: ApprovalsCommand::List { server },
        } => approvals::list(&config, server.as_deref()).await?,
        Command::Approvals {
            command: ApprovalsCommand::Show { lease, server },
        } => approvals::show(&config, &lease, server.as_deref()).await?,
        Command::Approve(signing) => approvals::approve(&config, &signing).await?,
        Command::Reject { signing, reason } => {
            approvals::reject(&config, &signing, &reason).await?
        }
    }
    Ok(())
}

fn unreachable_launcher() -> Result<(), BoxError> {
    Err("sandbox-exec is handled before configuration is loaded".into())
}
