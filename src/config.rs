//! One validated configuration, from a TOML file plus `DUALTRUST_*`
//! environment overrides.
//!
//! Loading has two phases (as in ripgrep's flags): the raw TOML table is
//! collected and overridden from the environment, then deserialized and
//! validated once into [`Config`], the only value the rest of the program
//! reads. Every error names the key that is wrong.
//!
//! Environment overrides use `DUALTRUST_<SECTION>__<KEY>`, for example
//! `DUALTRUST_DATABASE__URL=sqlite:///srv/app.db` or `DUALTRUST_MODE=production`.
//! `DUALTRUST_TOKEN`, `DUALTRUST_APPROVER_TOKEN`, `DUALTRUST_DATA_DIR`,
//! `DUALTRUST_CONFIG`, `DUALTRUST_LOG` and `DUALTRUST_LOG_FORMAT` are not
//! configuration keys; any other unknown
//! `DUALTRUST_*` variable is an error, so a typo cannot silently do nothing.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Environment variables that carry inputs other than configuration keys.
pub const NON_CONFIG_ENV: &[&str] = &[
    "DUALTRUST_TOKEN",
    "DUALTRUST_APPROVER_TOKEN",
    "DUALTRUST_DATA_DIR",
    "DUALTRUST_CONFIG",
    "DUALTRUST_LOG",
    "DUALTRUST_LOG_FORMAT",
];

pub const CONFIG_FILE_NAME: &str = "dualtrust.toml";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error(
        "unknown environment variable {name}: expected DUALTRUST_<SECTION>__<KEY> naming a configuration key"
    )]
    UnknownEnv { name: String },
}

impl ConfigError {
    fn key(key: &str, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Generated keys and locally minted tokens are allowed, loudly.
    #[default]
    Development,
    /// Everything must be provisioned; there is no bypass of any kind.
    Production,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Required `iss` of access tokens.
    pub issuer: String,
    /// Required `aud` of access tokens: this server (RFC 8707 resource).
    pub audience: String,
    /// Accept tokens signed by the data directory's development issuer key
    /// (`dualtrust token`). Refused in production.
    pub dev_tokens: bool,
    /// A JWKS file holding the identity provider's public keys.
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS URL (`https://`, or `http://` on
    /// loopback), cached and refreshed on expiry and on an unknown `kid`.
    pub jwks_url: Option<String>,
    /// How long fetched JWKS keys are used before they are fetched again.
    pub jwks_cache_s: u64,
    /// How often the revocation list is reloaded from the store: a revoked
    /// token is refused everywhere within this (at worst twice this).
    pub revocation_refresh_ms: u64,
    /// The JWKS URL is fetched at most once per this many seconds, whatever
    /// tokens arrive (a flood of unknown `kid`s cannot hammer the provider).
    pub jwks_min_refresh_s: u64,
    pub jwks_timeout_ms: u64,
    /// PEM public keys, each with the one algorithm it verifies.
    pub public_keys: Vec<PublicKeyConfig>,
    /// HS256 shared secret (set it with DUALTRUST_IDENTITY__HS256_SECRET);
    /// at least 32 bytes. Only tokens whose header says HS256 use it.
    pub hs256_secret: Option<Secret>,
    /// The `kid` HS256 tokens carry, if the provider sets one.
    pub hs256_kid: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// Larger bearer tokens are rejected before any parsing.
    pub max_token_bytes: usize,
    /// Lifetime of tokens minted by `dualtrust token` when none is given.
    pub dev_token_ttl_s: u64,
    /// Token claims kept on the verified caller besides `sub` (e.g. a tenant
    /// id). Each is bound into every SQL statement `db.query` runs: on
    /// PostgreSQL as the transaction-local setting `dualtrust.<claim>`
    /// (next to `dualtrust.subject`), on SQLite as the named parameter
    /// `:dt_<claim>` (next to `:dt_subject`). A call whose token lacks one
    /// is refused.
    pub claims: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            issuer: "dualtrust-dev".into(),
            audience: "dualtrust".into(),
            dev_tokens: true,
            jwks_file: None,
            jwks_url: None,
            jwks_cache_s: 300,
            revocation_refresh_ms: 1000,
            jwks_min_refresh_s: 30,
            jwks_timeout_ms: 5000,
            public_keys: Vec::new(),
            hs256_secret: None,
            hs256_kid: None,
            leeway_s: 30,
            max_token_bytes: 8 * 1024,
            dev_token_ttl_s: 3600,
            claims: Vec::new(),
        }
    }
}

/// A PEM public key of the identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// Tokens naming this `kid` use this key; without one, tokens without a
    /// `kid` do.
    pub kid: Option<String>,
    pub alg: PemAlgorithm,
    pub pem_file: PathBuf,
}

/// The one algorithm a PEM public key verifies (RFC 8725 section 3.1: a
/// key is bound to its algorithm, never taken from the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PemAlgorithm {
    RS256,
    ES256,
    EdDSA,
}

impl PemAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// A secret from configuration: never printed, not even by `Debug`. Clones
/// share one buffer, which is zeroed when the last of them is dropped.
#[derive(Clone)]
pub struct Secret(std::sync::Arc<zeroize::Zeroizing<String>>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(std::sync::Arc::new(zeroize::Zeroizing::new(value)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value.to_string())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Shortest HS256 secret accepted: RFC 7518 section 3.2 asks for a key at
/// least as long as the hash output.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub bind: String,
    /// The URL clients use to reach this server; defaults to `http://<bind>`.
    pub public_url: Option<String>,
    /// `Host` values accepted (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin` values accepted; any other `Origin` gets 403.
    /// Entries are `scheme://host[:port]`, with `:*` for any port. Empty means
    /// no browser origin is accepted. The default admits loopback pages only,
    /// which is what a DNS-rebinding attack cannot forge.
    pub allowed_origins: Vec<String>,
    /// OAuth authorization servers advertised in RFC 9728 metadata.
    pub authorization_servers: Vec<String>,
    pub max_body_bytes: usize,
    /// Origins that get CORS headers (browser-based MCP clients). Each must
    /// also be admitted by `allowed_origins`; a wildcard is never accepted.
    pub cors_origins: Vec<String>,
    /// On SIGTERM/SIGINT, how long in-flight requests may run before the
    /// server closes them.
    pub shutdown_grace_s: u64,
    /// A request's line and headers must arrive within this; it also bounds
    /// the silence between requests on a kept-alive connection.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this once its headers have.
    pub body_timeout_ms: u64,
    /// Connections held open at once (lowered to what the open-file limit
    /// allows); past it a new connection is closed unread.
    pub max_connections: usize,
    /// Connections held open at once from one client address.
    pub max_connections_per_address: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: None,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: vec![
                "http://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "http://[::1]:*".into(),
            ],
            authorization_servers: Vec::new(),
            max_body_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
            shutdown_grace_s: 10,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 4096,
            max_connections_per_address: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative to the data directory), or
    /// `postgres://…` for a store shared by several replicas.
    pub url: Secret,
    /// PostgreSQL only: connections in the store's pool.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: Secret::from("sqlite://state.db"),
            max_connections: 8,
        }
    }
}

/// Where leases, approvals, revocations and the audit log live.
#[derive(Debug, Clone)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres { url: Secret, max_connections: u32 },
}

impl StoreTarget {
    /// The store's file, when it is one.
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            StoreTarget::Sqlite(path) => Some(path.clone()),
            StoreTarget::Postgres { .. } => None,
        }
    }

    /// For logs and `init`: the location without credentials.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres { url, .. } => redact_url(url.expose()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The database `db.query` runs against: `sqlite://PATH` (relative to
    /// the data directory) or `postgres://USER@HOST:PORT/DB`. Writes and
    /// admin statements use this URL's role.
    pub url: Secret,
    /// PostgreSQL only: a separate URL (a read-only role) for reads.
    pub read_url: Option<Secret>,
    /// PostgreSQL only: connections per pool.
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing.
    pub acquire_timeout_ms: u64,
    /// Rows returned by one query at most; more set `truncated`.
    pub row_cap: usize,
    /// Bytes of result cells returned by one query at most.
    pub max_result_bytes: usize,
    pub statement_timeout_ms: u64,
    /// Largest SQL text accepted.
    pub max_sql_bytes: usize,
    /// Bound parameters accepted per statement.
    pub max_params: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::from("sqlite://demo.db"),
            read_url: None,
            max_connections: 4,
            acquire_timeout_ms: 5_000,
            row_cap: 500,
            max_result_bytes: 1024 * 1024,
            statement_timeout_ms: 5_000,
            max_sql_bytes: 64 * 1024,
            max_params: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// Directories a command may run in (relative to the data directory).
    pub roots: Vec<PathBuf>,
    /// Directories programs are looked up in; the child's `PATH` too.
    pub path: Vec<PathBuf>,
    /// Programs that may be run at all. Destructive ones still need quorum.
    pub allow: Vec<String>,
    /// Allow shells and interpreters (each call is then destructive).
    pub allow_shell: bool,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// Bytes kept of stdout and of stderr each.
    pub output_cap_bytes: usize,
    /// CPU seconds a command may use (RLIMIT_CPU).
    pub cpu_limit_s: u64,
    /// Address space a command may map (RLIMIT_AS).
    pub memory_limit_bytes: u64,
    /// Largest file a command may write (RLIMIT_FSIZE).
    pub max_file_bytes: u64,
    /// Open files a command may hold (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Commands one subject may run at the same time.
    pub max_concurrent_per_subject: usize,
    /// Processes one command may have alive at once (a pids cgroup per
    /// command, where the host offers one).
    pub max_processes: u64,
    /// Refuse to run commands unless every sandbox layer is enforced.
    /// Default: `true` in production, `false` in development.
    pub require_sandbox: Option<bool>,
    /// Read-only paths beyond the system read set (absolute), e.g. a
    /// toolchain outside `/usr`.
    pub read_paths: Vec<PathBuf>,
    /// Programs granted the network (no network namespace, no TCP rule).
    pub network: Vec<String>,
    /// Programs that are always destructive (held for quorum).
    pub destructive: Vec<String>,
    /// Further programs a program may execute, by name: allow-listed names
    /// or absolute paths (e.g. `tar = ["gzip"]`).
    pub helpers: std::collections::BTreeMap<String, Vec<String>>,
    /// Bind each repository's `.git/config` and `.git/hooks` read-only, so
    /// a command cannot plant code that the next human `git` runs.
    pub protect_git: bool,
    /// Size of each command's private `/tmp`.
    pub tmp_bytes: u64,
    /// Development only: sandbox layers to leave off (`landlock`,
    /// `seccomp`, `mount`, `network`, `pid`), to show what each one stops.
    /// Refused in production.
    pub disable_layers: Vec<String>,
}

impl TerminalConfig {
    /// Whether commands may run only with every sandbox layer in force.
    pub fn sandbox_required(&self, mode: Mode) -> bool {
        self.require_sandbox.unwrap_or(mode == Mode::Production)
    }
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self {
            roots: vec![PathBuf::from("workspace")],
            path: vec!["/usr/local/bin".into(), "/usr/bin".into(), "/bin".into()],
            allow: [
                "ls",
                "cat",
                "head",
                "tail",
                "wc",
                "grep",
                "echo",
                "pwd",
                "date",
                "true",
                "false",
                "sort",
                "uniq",
                "cut",
                "find",
                "stat",
                "du",
                "uname",
                "whoami",
                "id",
                "git",
                "cargo",
                "rustc",
                "sleep",
                "rm",
                "rmdir",
                "dd",
                "kill",
                "pkill",
                "killall",
                "shutdown",
                "reboot",
                "halt",
                "poweroff",
                "mkfs",
                "mkfs.ext4",
                "chmod",
                "chown",
                "truncate",
                "shred",
                "mkdir",
                "touch",
                "cp",
                "mv",
                "yes",
            ]
            .map(String::from)
            .to_vec(),
            allow_shell: false,
            default_timeout_ms: 10_000,
            max_timeout_ms: 60_000,
            output_cap_bytes: 64 * 1024,
            cpu_limit_s: 30,
            memory_limit_bytes: 2 * 1024 * 1024 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
            max_open_files: 256,
            max_concurrent_per_subject: 4,
            max_processes: 64,
            require_sandbox: None,
            read_paths: Vec::new(),
            network: Vec::new(),
            destructive: Vec::new(),
            helpers: std::collections::BTreeMap::new(),
            protect_git: true,
            tmp_bytes: 64 * 1024 * 1024,
            disable_layers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassportConfig {
    /// `iss` of passports.
    pub issuer: String,
    pub default_ttl_s: u64,
    pub max_ttl_s: u64,
}

impl Default for PassportConfig {
    fn default() -> Self {
        Self {
            issuer: "dualtrust".into(),
            default_ttl_s: 300,
            max_ttl_s: 3600,
        }
    }
}

/// Scope names required per operation class: policy, in one place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    pub db_read: String,
    pub db_write: String,
    pub db_admin: String,
    pub terminal_execute: String,
    pub terminal_admin: String,
    pub passport_issue: String,
    pub audit_read: String,
    /// Held by human approvers submitting approvals over HTTP.
    pub approvals_write: String,
    /// Scope hierarchy: a granted scope implies the listed ones,
    /// transitively. Replaces the default hierarchy when set.
    pub implies: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        Self {
            db_read: "db:read".into(),
            db_write: "db:write".into(),
            db_admin: "db:admin".into(),
            terminal_execute: "terminal:execute".into(),
            terminal_admin: "terminal:admin".into(),
            passport_issue: "passport:issue".into(),
            audit_read: "audit:read".into(),
            approvals_write: "approvals:write".into(),
            implies: [
                ("db:admin", vec!["db:write"]),
                ("db:write", vec!["db:read"]),
                ("terminal:admin", vec!["terminal:execute"]),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect(),
        }
    }
}

impl ScopeConfig {
    pub fn all(&self) -> Vec<String> {
        vec![
            self.db_read.clone(),
            self.db_write.clone(),
            self.db_admin.clone(),
            self.terminal_execute.clone(),
            self.terminal_admin.clone(),
            self.passport_issue.clone(),
            self.audit_read.clone(),
            self.approvals_write.clone(),
        ]
    }
}

/// A human who can approve destructive calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverConfig {
    /// Stable name, e.g. `alice`. Letters, digits, `-_.@`.
    pub id: String,
    /// Ed25519 public key: base64url of the 32 raw bytes (a JWK's `x`).
    /// An approver who signs only with passkeys has none.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The approver's subject at the identity provider, if they also hold
    /// tokens: they can never approve a call they requested, and over HTTP
    /// only a token with this subject may submit their approvals (and
    /// register passkeys).
    #[serde(default)]
    pub subject: Option<String>,
    /// Passkeys pinned here rather than registered in the inbox.
    #[serde(default)]
    pub passkeys: Vec<PinnedPasskeyConfig>,
}

/// A passkey credential trusted by configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedPasskeyConfig {
    /// The credential id, base64url (as `dualtrust passkeys list` prints it).
    pub credential_id: String,
    /// The credential's COSE_Key, base64url (ES256 or EdDSA).
    pub public_key: String,
}

/// A passkey credential, its key parsed once.
#[derive(Debug, Clone)]
pub struct PinnedPasskey {
    pub credential_id: String,
    pub key: crate::webauthn::CredentialKey,
}

/// A registered approver, its key parsed once at start-up.
#[derive(Debug, Clone)]
pub struct Approver {
    pub id: String,
    pub key: Option<ed25519_dalek::VerifyingKey>,
    /// See [`ApproverConfig::subject`].
    pub subject: Option<String>,
    pub passkeys: Vec<PinnedPasskey>,
}

/// k-of-n for one tool's destructive calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumRule {
    pub k: usize,
    /// Approver ids eligible; empty means every registered approver.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Rejections that end a held call of this tool; unset: `quorum.rejections`.
    #[serde(default)]
    pub rejections: Option<usize>,
    /// Of the k approvals, how many must be passkey signatures; unset:
    /// `quorum.passkeys`.
    #[serde(default)]
    pub passkeys: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuorumConfig {
    /// Approvals needed for a destructive call.
    pub k: usize,
    /// Approver ids eligible; empty means every registered approver.
    pub approvers: Vec<String>,
    /// Per-tool rules, keyed by tool name (`db.query`, `terminal.execute`).
    pub overrides: std::collections::BTreeMap<String, QuorumRule>,
    /// Signed rejections by distinct eligible approvers that end a held
    /// call at once (until then each is recorded and shown).
    pub rejections: usize,
    /// Of the k approvals, how many must be passkey (WebAuthn) signatures
    /// rather than Ed25519 key files.
    pub passkeys: usize,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        Self {
            k: 3,
            rejections: 1,
            passkeys: 0,
            approvers: Vec::new(),
            overrides: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Lifetime of a lease minted and consumed within one ordinary call.
    pub ordinary_ttl_s: u64,
    /// Lifetime of a lease issued for later redemption (approval window).
    pub ttl_s: u64,
    /// Leases a subject may hold open (pending or ready) at once.
    pub max_open_per_subject: u32,
    /// `tool:class` pairs that need an explicit lease: the first call
    /// returns a lease id, the call runs when repeated with it.
    pub explicit: Vec<String>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ordinary_ttl_s: 60,
            ttl_s: 900,
            max_open_per_subject: 20,
            explicit: Vec::new(),
        }
    }
}

/// The WebAuthn relying party approvers' passkeys belong to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasskeysConfig {
    /// The RP id: the inbox's host name or a registrable suffix of it.
    /// Unset: the host of `http.public_url`, else `localhost`.
    pub rp_id: Option<String>,
    /// Page origins a ceremony may come from (`scheme://host[:port]`,
    /// `:*` for any port). Unset: the origin of `http.public_url`, else
    /// `http://localhost:*`.
    pub origins: Option<Vec<String>>,
}

/// The approvers' web inbox at `/approvals/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Sign-in through the deployment's identity provider; without it,
    /// approvers paste a token the provider issued them.
    pub oauth: Option<InboxOAuthConfig>,
}

/// OAuth 2.1 authorization code with PKCE (S256), the page being a public
/// client: the provider redirects back to `<public_url>/approvals/` and the
/// page redeems the code at the token endpoint itself (which must allow
/// the inbox's origin by CORS). The access token it gets must pass this
/// server's `[identity]` checks like any other.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxOAuthConfig {
    pub client_id: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    /// Scopes asked for; empty means the approvals scope
    /// (`scopes.approvals_write`).
    #[serde(default)]
    pub scope: String,
}

/// Who is told when a call is held, approved or rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// Delivery attempts per event and webhook before it is given up.
    pub attempts: u32,
    /// The first retry's delay; each next one doubles it.
    pub retry_base_ms: u64,
    /// Events waiting for delivery; past it new ones are dropped (and
    /// counted), never waited for.
    pub queue: usize,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            attempts: 5,
            retry_base_ms: 1000,
            queue: 1000,
        }
    }
}

/// One receiver: `json` (dualtrust's payload) or `slack` (an incoming-webhook
/// body). Both are signed with the server key (`Dualtrust-Signature`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// Rate limits, each a number of calls per minute (with a burst of the same
/// size). Zero turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Tool calls per subject, all tools together.
    pub calls_per_minute: u32,
    /// Tool calls per subject for one tool, by tool name.
    pub tool_calls_per_minute: std::collections::BTreeMap<String, u32>,
    /// Failed HTTP authentications per client address; beyond it the
    /// address gets 429 without its tokens being examined or logged.
    pub auth_failures_per_minute: u32,
    /// Approval and rejection submissions per approver (per submitting
    /// token subject over HTTP), valid or not.
    pub approvals_per_minute: u32,
    /// Where the call budgets are kept: `local` (each replica its own, in
    /// memory), `store` (one budget for every replica, in the shared state
    /// store) or `redis://HOST:PORT` (one budget, in Redis; the password
    /// may go in the URL, set with DUALTRUST_LIMITS__BACKEND).
    pub backend: LimitsBackend,
    /// With a shared backend, what a call meets while it cannot be reached:
    /// `closed` (refused, `limits_unavailable`) or `local` (this replica's
    /// own in-memory budget).
    pub on_backend_failure: LimitsFallback,
    /// How long one shared-budget check may take before it counts as the
    /// backend being unreachable.
    pub backend_timeout_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum LimitsBackend {
    #[default]
    Local,
    Store,
    Redis(Secret),
}

impl PartialEq for LimitsBackend {
    fn eq(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (Self::Local, Self::Local)
                | (Self::Store, Self::Store)
                | (Self::Redis(_), Self::Redis(_))
        )
    }
}

impl TryFrom<String> for LimitsBackend {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "local" => Ok(Self::Local),
            "store" => Ok(Self::Store),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(Self::Redis(Secret::new(value)))
            }
            _ => Err("expected \"local\", \"store\" or a redis:// URL".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsFallback {
    #[default]
    Closed,
    Local,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            calls_per_minute: 600,
            tool_calls_per_minute: [("terminal.execute".to_string(), 120)]
                .into_iter()
                .collect(),
            auth_failures_per_minute: 60,
            approvals_per_minute: 30,
            backend: LimitsBackend::Local,
            on_backend_failure: LimitsFallback::Closed,
            backend_timeout_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub approvers: Vec<ApproverConfig>,
    pub quorum: QuorumConfig,
    pub leases: LeaseConfig,
    pub limits: LimitsConfig,
    pub mode: Mode,
    pub identity: IdentityConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub database: DatabaseConfig,
    pub terminal: TerminalConfig,
    pub passport: PassportConfig,
    pub scopes: ScopeConfig,
    pub notifications: NotificationsConfig,
    pub inbox: InboxConfig,
    pub passkeys: PasskeysConfig,
    pub keys: KeysConfig,
    pub log: LogConfig,
}

/// Where the server's signing keys come from, and how often a rotation
/// recorded by another process is looked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The key file, relative to the data directory: one key per line, each
    /// a 64-character hex Ed25519 seed, or PKCS#8 PEM blocks. During a
    /// rotation it holds the next key beside the current one.
    pub file: PathBuf,
    /// When set, the name of an environment variable holding the keys in
    /// the same form, read instead of the file (a secret manager's env).
    pub env: Option<String>,
    /// How often the key registry is re-read (and, after a rotation, the
    /// keys), so every replica signs with the rotated key within this.
    pub refresh_ms: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("server.key"),
            env: None,
            refresh_ms: 1000,
        }
    }
}

/// The receipt log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The checkpoint origin (the log's name in every checkpoint and
    /// witness cosignature). Fixed when the log is first opened; when
    /// unset, `dualtrust/<kid of the first key>`, as logs before it had.
    pub origin: Option<String>,
    /// Witnesses asked to cosign the log's checkpoints (C2SP tlog-witness).
    pub witnesses: Vec<WitnessEndpoint>,
    /// How often the newest checkpoint is taken to the witnesses.
    pub witness_interval_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            origin: None,
            witnesses: Vec::new(),
            witness_interval_ms: 1000,
        }
    }
}

/// One witness: where to submit (its `add-checkpoint` prefix) and its
/// cosigner verifier key (`name+hash+base64(0x04||key)`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEndpoint {
    pub url: String,
    pub vkey: String,
}

/// The validated configuration. Paths are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub mode: Mode,
    pub identity: IdentityConfig,
    pub http: HttpConfig,
    pub store_target: StoreTarget,
    pub database: DatabaseConfig,
    pub database_target: DatabaseTarget,
    pub terminal: TerminalConfig,
    pub passport: PassportConfig,
    pub scopes: ScopeConfig,
    pub approvers: Vec<Approver>,
    pub quorum: QuorumConfig,
    pub leases: LeaseConfig,
    pub limits: LimitsConfig,
    pub notifications: NotificationsConfig,
    pub inbox: InboxConfig,
    /// The relying party of approvers' passkeys, resolved.
    pub passkeys: crate::webauthn::RelyingParty,
    pub keys: KeysConfig,
    pub log: LogConfig,
}

impl Config {
    pub fn server_key_path(&self) -> PathBuf {
        self.data_dir.join(&self.keys.file)
    }

    pub fn dev_issuer_key_path(&self) -> PathBuf {
        self.data_dir.join("dev-issuer.key")
    }

    /// Loads `config_file` (or `<data_dir>/dualtrust.toml` when present),
    /// applies the `DUALTRUST_*` variables from `env`, and validates.
    pub fn load(
        data_dir: &Path,
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let default_file = data_dir.join(CONFIG_FILE_NAME);
        let file = match config_file {
            Some(path) => Some(path.to_path_buf()),
            None => default_file.exists().then_some(default_file),
        };
        let mut table = match &file {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: shown.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: shown,
                        message: e.message().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let raw: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::key(&e.path().to_string(), e.inner().to_string()))?;
        Self::validate(data_dir, raw)
    }

    fn validate(data_dir: &Path, raw: FileConfig) -> Result<Self, ConfigError> {
        let data_dir = absolute(data_dir);
        let store_target = if is_postgres_url(raw.store.url.expose()) {
            StoreTarget::Postgres {
                url: raw.store.url.clone(),
                max_connections: raw.store.max_connections,
            }
        } else {
            StoreTarget::Sqlite(sqlite_path(&data_dir, "store.url", raw.store.url.expose())?)
        };
        let database_target = database_target(&data_dir, &raw.database)?;
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::key(key, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive("database.row_cap", raw.database.row_cap as u64)?;
        positive(
            "store.max_connections",
            u64::from(raw.store.max_connections),
        )?;
        positive(
            "database.max_connections",
            u64::from(raw.database.max_connections),
        )?;
        positive(
            "database.acquire_timeout_ms",
            raw.database.acquire_timeout_ms,
        )?;
        positive(
            "database.max_result_bytes",
            raw.database.max_result_bytes as u64,
        )?;
        positive(
            "database.statement_timeout_ms",
            raw.database.statement_timeout_ms,
        )?;
        positive("database.max_sql_bytes", raw.database.max_sql_bytes as u64)?;
        positive(
            "terminal.default_timeout_ms",
            raw.terminal.default_timeout_ms,
        )?;
        positive(
            "terminal.output_cap_bytes",
            raw.terminal.output_cap_bytes as u64,
        )?;
        positive("terminal.cpu_limit_s", raw.terminal.cpu_limit_s)?;
        positive(
            "terminal.memory_limit_bytes",
            raw.terminal.memory_limit_bytes,
        )?;
        positive("terminal.max_file_bytes", raw.terminal.max_file_bytes)?;
        positive("terminal.max_open_files", raw.terminal.max_open_files)?;
        positive("terminal.max_processes", raw.terminal.max_processes)?;
        positive(
            "terminal.max_concurrent_per_subject",
            raw.terminal.max_concurrent_per_subject as u64,
        )?;
        positive("passport.default_ttl_s", raw.passport.default_ttl_s)?;
        positive("keys.refresh_ms", raw.keys.refresh_ms)?;
        positive("log.witness_interval_ms", raw.log.witness_interval_ms)?;
        for (i, witness) in raw.log.witnesses.iter().enumerate() {
            if !(witness.url.starts_with("http://") || witness.url.starts_with("https://")) {
                return Err(ConfigError::key(
                    &format!("log.witnesses[{i}].url"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if let Some(origin) = &raw.log.origin
            && !is_valid_note_name(origin)
        {
            return Err(ConfigError::key(
                "log.origin",
                "must be non-empty printable text without spaces or '+' (a signed-note key name)",
            ));
        }
        if raw
            .keys
            .env
            .as_ref()
            .is_some_and(|name| name.is_empty() || name.contains('='))
        {
            return Err(ConfigError::key(
                "keys.env",
                "must name an environment variable",
            ));
        }
        positive(
            "identity.max_token_bytes",
            raw.identity.max_token_bytes as u64,
        )?;
        positive("identity.dev_token_ttl_s", raw.identity.dev_token_ttl_s)?;
        positive("http.max_body_bytes", raw.http.max_body_bytes as u64)?;
        positive("http.header_timeout_ms", raw.http.header_timeout_ms)?;
        positive("http.body_timeout_ms", raw.http.body_timeout_ms)?;
        positive("http.max_connections", raw.http.max_connections as u64)?;
        positive(
            "http.max_connections_per_address",
            raw.http.max_connections_per_address as u64,
        )?;
        if raw.terminal.default_timeout_ms > raw.terminal.max_timeout_ms {
            return Err(ConfigError::key(
                "terminal.default_timeout_ms",
                "must not exceed terminal.max_timeout_ms",
            ));
        }
        if raw.passport.default_ttl_s > raw.passport.max_ttl_s {
            return Err(ConfigError::key(
                "passport.default_ttl_s",
                "must not exceed passport.max_ttl_s",
            ));
        }
        if raw.identity.audience.trim().is_empty() {
            return Err(ConfigError::key("identity.audience", "must not be empty"));
        }
        if raw.identity.issuer.trim().is_empty() {
            return Err(ConfigError::key("identity.issuer", "must not be empty"));
        }
        if raw.terminal.roots.is_empty() {
            return Err(ConfigError::key(
                "terminal.roots",
                "must name at least one directory",
            ));
        }
        for (i, dir) in raw.terminal.path.iter().enumerate() {
            if !dir.is_absolute() {
                return Err(ConfigError::key(
                    &format!("terminal.path[{i}]"),
                    "program directories must be absolute",
                ));
            }
        }
        for (i, dir) in raw.terminal.read_paths.iter().enumerate() {
            if !dir.is_absolute() {
                return Err(ConfigError::key(
                    &format!("terminal.read_paths[{i}]"),
                    "read paths must be absolute",
                ));
            }
        }
        positive("terminal.tmp_bytes", raw.terminal.tmp_bytes)?;
        for (i, name) in raw.terminal.disable_layers.iter().enumerate() {
            let key = format!("terminal.disable_layers[{i}]");
            if crate::sandbox::Layer::from_name(name).is_none() {
                return Err(ConfigError::key(
                    &key,
                    "expected one of landlock, seccomp, mount, network, pid",
                ));
            }
            if raw.mode == Mode::Production {
                return Err(ConfigError::key(
                    &key,
                    "sandbox layers cannot be switched off in production",
                ));
            }
        }
        if raw.http.allowed_origins.iter().any(|o| o.trim() == "*") {
            return Err(ConfigError::key(
                "http.allowed_origins",
                "a wildcard origin is never accepted; list the origins",
            ));
        }
        validate_identity(&raw)?;
        validate_limits(&raw)?;
        for (i, origin) in raw.http.cors_origins.iter().enumerate() {
            let key = format!("http.cors_origins[{i}]");
            if origin.contains('*') {
                return Err(ConfigError::key(
                    &key,
                    "a wildcard CORS origin is never accepted; list the origins",
                ));
            }
            if !crate::origin_matches(&raw.http.allowed_origins, origin) {
                return Err(ConfigError::key(
                    &key,
                    "must also be admitted by http.allowed_origins",
                ));
            }
        }
        positive("http.shutdown_grace_s", raw.http.shutdown_grace_s)?;
        let approvers = validate_quorum(&raw)?;
        for (i, hook) in raw.notifications.webhooks.iter().enumerate() {
            let url = reqwest::Url::parse(&hook.url).map_err(|_| {
                ConfigError::key(&format!("notifications.webhooks[{i}].url"), "not a URL")
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::key(
                    &format!("notifications.webhooks[{i}].url"),
                    "must be http:// or https://",
                ));
            }
        }
        let inbox = validate_inbox(raw.inbox, raw.mode, &raw.scopes)?;
        let passkeys = relying_party(&raw.passkeys, &raw.http, raw.mode)?;
        positive(
            "notifications.attempts",
            u64::from(raw.notifications.attempts),
        )?;
        positive("notifications.queue", raw.notifications.queue as u64)?;
        positive("leases.ttl_s", raw.leases.ttl_s)?;
        positive("leases.ordinary_ttl_s", raw.leases.ordinary_ttl_s)?;
        positive(
            "leases.max_open_per_subject",
            u64::from(raw.leases.max_open_per_subject),
        )?;
        for (i, entry) in raw.leases.explicit.iter().enumerate() {
            let valid = entry.split_once(':').is_some_and(|(tool, class)| {
                !tool.is_empty() && matches!(class, "read" | "write" | "admin" | "destructive")
            });
            if !valid {
                return Err(ConfigError::key(
                    &format!("leases.explicit[{i}]"),
                    "expected TOOL:CLASS, e.g. \"db.query:write\"",
                ));
            }
        }
        let terminal = TerminalConfig {
            roots: raw
                .terminal
                .roots
                .iter()
                .map(|r| data_dir.join(r))
                .collect(),
            ..raw.terminal
        };
        confine_roots(
            &terminal,
            &data_dir,
            &[&store_target.file(), &database_target.file()],
        )?;
        let identity = IdentityConfig {
            jwks_file: raw.identity.jwks_file.map(|p| data_dir.join(p)),
            public_keys: raw
                .identity
                .public_keys
                .into_iter()
                .map(|k| PublicKeyConfig {
                    pem_file: data_dir.join(&k.pem_file),
                    ..k
                })
                .collect(),
            ..raw.identity
        };
        Ok(Self {
            data_dir,
            mode: raw.mode,
            identity,
            http: raw.http,
            store_target,
            database: raw.database,
            database_target,
            terminal,
            passport: raw.passport,
            scopes: raw.scopes,
            approvers,
            quorum: raw.quorum,
            leases: raw.leases,
            limits: raw.limits,
            notifications: raw.notifications,
            inbox,
            passkeys,
            keys: raw.keys,
            log: raw.log,
        })
    }
}

fn validate_inbox(
    inbox: InboxConfig,
    mode: Mode,
    scopes: &ScopeConfig,
) -> Result<InboxConfig, ConfigError> {
    let Some(mut oauth) = inbox.oauth else {
        return Ok(InboxConfig { oauth: None });
    };
    if oauth.client_id.trim().is_empty() {
        return Err(ConfigError::key(
            "inbox.oauth.client_id",
            "must not be empty",
        ));
    }
    for (key, value) in [
        (
            "inbox.oauth.authorization_endpoint",
            &oauth.authorization_endpoint,
        ),
        ("inbox.oauth.token_endpoint", &oauth.token_endpoint),
    ] {
        let url = reqwest::Url::parse(value).map_err(|_| ConfigError::key(key, "not a URL"))?;
        let loopback = url
            .host_str()
            .is_some_and(|h| matches!(h, "localhost" | "127.0.0.1" | "[::1]"));
        let acceptable = match url.scheme() {
            "https" => true,
            "http" => loopback && mode != Mode::Production,
            _ => false,
        };
        if !acceptable {
            return Err(ConfigError::key(
                key,
                "must be https:// (plain http only to a loopback provider in development)",
            ));
        }
    }
    if oauth.scope.trim().is_empty() {
        oauth.scope = scopes.approvals_write.clone();
    }
    Ok(InboxConfig { oauth: Some(oauth) })
}

/// Claims whose meaning is fixed (RFC 7519 and the scope claims): they
/// cannot be bound under a name of their own.
pub(crate) const REGISTERED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "scp",
    "permissions",
    "subject",
];

fn validate_limits(raw: &FileConfig) -> Result<(), ConfigError> {
    if let LimitsBackend::Redis(url) = &raw.limits.backend
        && redis::Client::open(url.expose()).is_err()
    {
        return Err(ConfigError::key(
            "limits.backend",
            "not a Redis URL (redis://[:PASSWORD@]HOST[:PORT][/DB])",
        ));
    }
    if raw.limits.backend_timeout_ms == 0 {
        return Err(ConfigError::key(
            "limits.backend_timeout_ms",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn validate_identity(raw: &FileConfig) -> Result<(), ConfigError> {
    let identity = &raw.identity;
    for (i, claim) in identity.claims.iter().enumerate() {
        // The name becomes part of a PostgreSQL setting name and a SQLite
        // parameter name, so it is held to what both accept unquoted.
        let well_formed = claim.len() <= 32
            && claim.starts_with(|c: char| c.is_ascii_lowercase())
            && claim
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !well_formed {
            return Err(ConfigError::key(
                "identity.claims",
                format!(
                    "{claim:?}: a claim name is 1–32 of a-z, 0-9 and _, starting with a letter"
                ),
            ));
        }
        if REGISTERED_CLAIMS.contains(&claim.as_str()) {
            return Err(ConfigError::key(
                "identity.claims",
                format!(
                    "{claim:?} is a registered claim with its own meaning; the subject is always bound"
                ),
            ));
        }
        if identity.claims[..i].contains(claim) {
            return Err(ConfigError::key(
                "identity.claims",
                format!("{claim:?} is listed twice"),
            ));
        }
    }
    if let Some(secret) = &identity.hs256_secret {
        let bytes = secret.expose().as_bytes();
        let distinct = bytes
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if bytes.len() < MIN_HS256_SECRET_BYTES || distinct < 12 {
            return Err(ConfigError::key(
                "identity.hs256_secret",
                format!(
                    "too weak: use at least {MIN_HS256_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`)"
                ),
            ));
        }
    }
    if let Some(url) = &identity.jwks_url {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| ConfigError::key("identity.jwks_url", "not a URL"))?;
        let loopback = matches!(
            uri.host(),
            Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
        );
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => {
                return Err(ConfigError::key(
                    "identity.jwks_url",
                    "must be https:// (plain http only on loopback)",
                ));
            }
        }
    }
    for (key, value) in [
        ("identity.jwks_cache_s", identity.jwks_cache_s),
        (
            "identity.revocation_refresh_ms",
            identity.revocation_refresh_ms,
        ),
        ("identity.jwks_min_refresh_s", identity.jwks_min_refresh_s),
        ("identity.jwks_timeout_ms", identity.jwks_timeout_ms),
    ] {
        if value == 0 {
            return Err(ConfigError::key(key, "must be greater than zero"));
        }
    }
    if raw.mode == Mode::Production {
        if identity.dev_tokens {
            return Err(ConfigError::key(
                "identity.dev_tokens",
                "development tokens are refused in production; set it to false and configure identity.jwks_url (or jwks_file, public_keys)",
            ));
        }
        let has_keys = identity.jwks_file.is_some()
            || identity.jwks_url.is_some()
            || !identity.public_keys.is_empty()
            || identity.hs256_secret.is_some();
        if !has_keys {
            return Err(ConfigError::key(
                "identity.jwks_url",
                "production needs the identity provider's keys: set identity.jwks_url, jwks_file, public_keys or hs256_secret",
            ));
        }
    }
    Ok(())
}

/// The server's own state must be out of every command's reach: no root may
/// contain the data directory (its keys, configuration and store), the
/// store or the SQLite database `db.query` guards, and no read path may
/// expose them.
fn confine_roots(
    terminal: &TerminalConfig,
    data_dir: &Path,
    files: &[&Option<PathBuf>],
) -> Result<(), ConfigError> {
    let resolve = |p: &Path| {
        let p = absolute(p);
        std::fs::canonicalize(&p).unwrap_or(p)
    };
    let data_dir = resolve(data_dir);
    let mut guarded = vec![data_dir.clone()];
    guarded.extend(files.iter().filter_map(|f| f.as_deref()).map(resolve));
    for (i, root) in terminal.roots.iter().enumerate() {
        let root = resolve(root);
        if let Some(hit) = guarded.iter().find(|g| g.starts_with(&root)) {
            return Err(ConfigError::key(
                &format!("terminal.roots[{i}]"),
                format!(
                    "contains the server's own state ({}); commands could read or rewrite it",
                    hit.display()
                ),
            ));
        }
    }
    for (i, path) in terminal.read_paths.iter().enumerate() {
        let path = resolve(path);
        if path.starts_with(&data_dir) || guarded.iter().any(|g| g.starts_with(&path)) {
            return Err(ConfigError::key(
                &format!("terminal.read_paths[{i}]"),
                "overlaps the server's own state (data directory, store or database)",
            ));
        }
    }
    Ok(())
}

fn validate_quorum(raw: &FileConfig) -> Result<Vec<Approver>, ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut approvers = Vec::with_capacity(raw.approvers.len());
    for (i, approver) in raw.approvers.iter().enumerate() {
        let valid_id = !approver.id.is_empty()
            && approver.id.len() <= 64
            && approver
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !valid_id {
            return Err(ConfigError::key(
                &format!("approvers[{i}].id"),
                "1-64 characters of A-Z a-z 0-9 - _ . @",
            ));
        }
        if !seen.insert(approver.id.as_str()) {
            return Err(ConfigError::key(
                &format!("approvers[{i}].id"),
                format!("`{}` is registered twice", approver.id),
            ));
        }
        let key = match &approver.public_key {
            None => None,
            Some(text) => Some(crate::keys::parse_public_key(text).ok_or_else(|| {
                ConfigError::key(
                    &format!("approvers[{i}].public_key"),
                    "not a base64url-encoded 32-byte Ed25519 public key",
                )
            })?),
        };
        let mut passkeys = Vec::with_capacity(approver.passkeys.len());
        for (j, pinned) in approver.passkeys.iter().enumerate() {
            let at = format!("approvers[{i}].passkeys[{j}]");
            let id_valid = URL_SAFE_NO_PAD
                .decode(pinned.credential_id.trim())
                .is_ok_and(|id| !id.is_empty() && id.len() <= 1023);
            if !id_valid {
                return Err(ConfigError::key(
                    &format!("{at}.credential_id"),
                    "not a base64url credential id",
                ));
            }
            let key = crate::webauthn::CredentialKey::from_cose_b64(&pinned.public_key)
                .map_err(|e| ConfigError::key(&format!("{at}.public_key"), e.to_string()))?;
            passkeys.push(PinnedPasskey {
                credential_id: pinned.credential_id.trim().to_string(),
                key,
            });
        }
        // Passkey approvals arrive over HTTP, under the approver's subject.
        if key.is_none() && approver.subject.is_none() {
            return Err(ConfigError::key(
                &format!("approvers[{i}]"),
                "needs a public_key, or a subject to approve with passkeys under",
            ));
        }
        for (j, pinned) in passkeys.iter().enumerate() {
            let taken = approvers
                .iter()
                .flat_map(|a: &Approver| &a.passkeys)
                .chain(&passkeys[..j])
                .any(|other| {
                    other.credential_id == pinned.credential_id
                        || other.key.cose() == pinned.key.cose()
                });
            if taken {
                return Err(ConfigError::key(
                    &format!("approvers[{i}].passkeys[{j}]"),
                    "this credential is pinned already: one passkey belongs to one approver",
                ));
            }
        }
        approvers.push(Approver {
            id: approver.id.clone(),
            key,
            subject: approver.subject.clone(),
            passkeys,
        });
    }
    let mut rules: Vec<(String, usize, usize, usize, &Vec<String>)> = vec![(
        "quorum".into(),
        raw.quorum.k,
        raw.quorum.rejections,
        raw.quorum.passkeys,
        &raw.quorum.approvers,
    )];
    for (tool, rule) in &raw.quorum.overrides {
        rules.push((
            format!("quorum.overrides.\"{tool}\""),
            rule.k,
            rule.rejections.unwrap_or(raw.quorum.rejections),
            rule.passkeys.unwrap_or(raw.quorum.passkeys),
            &rule.approvers,
        ));
    }
    for (key, k, rejections, passkeys, eligible) in rules {
        if passkeys > k {
            return Err(ConfigError::key(
                &format!("{key}.passkeys"),
                format!("{passkeys} passkey approvals can never be among {k} approvals"),
            ));
        }
        if k == 0 {
            return Err(ConfigError::key(
                &format!("{key}.k"),
                "must be at least 1: destructive calls always need approval",
            ));
        }
        if rejections == 0 {
            return Err(ConfigError::key(
                &format!("{key}.rejections"),
                "must be at least 1",
            ));
        }
        if let Some(unknown) = eligible.iter().find(|id| !seen.contains(id.as_str())) {
            return Err(ConfigError::key(
                &format!("{key}.approvers"),
                format!("`{unknown}` is not a registered approver"),
            ));
        }
        let n = if eligible.is_empty() {
            seen.len()
        } else {
            eligible.len()
        };
        // With no approvers at all, destructive calls simply cannot run.
        if !seen.is_empty() && k > n {
            return Err(ConfigError::key(
                &format!("{key}.k"),
                format!("{k} approvals can never be reached with {n} eligible approvers"),
            ));
        }
        if !seen.is_empty() && rejections > n {
            return Err(ConfigError::key(
                &format!("{key}.rejections"),
                format!("{rejections} rejections can never be reached with {n} eligible approvers"),
            ));
        }
    }
    Ok(approvers)
}

/// The relying party from `[passkeys]`, defaulting to the public URL.
fn relying_party(
    passkeys: &PasskeysConfig,
    http: &HttpConfig,
    mode: Mode,
) -> Result<crate::webauthn::RelyingParty, ConfigError> {
    let public = match &http.public_url {
        Some(url) => Some(
            reqwest::Url::parse(url)
                .map_err(|_| ConfigError::key("http.public_url", "not a URL"))?,
        ),
        None => None,
    };
    let valid_id = |id: &str| {
        !id.is_empty()
            && id.len() <= 253
            && id.parse::<std::net::IpAddr>().is_err()
            && id.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    // A public URL at an IP address cannot be a relying party (browsers
    // refuse one); passkeys then work only on a page opened as localhost.
    let public = public.filter(|url| {
        url.host_str()
            .is_some_and(|h| valid_id(&h.to_ascii_lowercase()))
    });
    let id = match (&passkeys.rp_id, &public) {
        (Some(id), _) => id.trim().to_ascii_lowercase(),
        (None, Some(url)) => url.host_str().unwrap_or("localhost").to_ascii_lowercase(),
        (None, None) => "localhost".into(),
    };
    if !valid_id(&id) {
        return Err(ConfigError::key(
            "passkeys.rp_id",
            "must be a DNS name (WebAuthn does not accept IP addresses)",
        ));
    }
    let origins = match (&passkeys.origins, &public) {
        (Some(origins), _) => origins.clone(),
        (None, Some(url)) if passkeys.rp_id.is_none() => vec![url.origin().ascii_serialization()],
        // In development, the inbox on any loopback port; in production no
        // page at all until its origin is named, as any local program could
        // serve a lookalike inbox on another port.
        (None, _) if id == "localhost" && mode != Mode::Production => {
            vec!["http://localhost:*".into()]
        }
        (None, _) if id == "localhost" => Vec::new(),
        (None, _) => {
            return Err(ConfigError::key(
                "passkeys.origins",
                "name the inbox's origins when passkeys.rp_id is set",
            ));
        }
    };
    for (i, origin) in origins.iter().enumerate() {
        let host = reqwest::Url::parse(origin.trim_end_matches(":*"))
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        // A browser only runs a ceremony for an RP id that is the page's
        // host or a suffix of it; any other origin could never succeed.
        let fits = host.is_some_and(|h| h == id || h.ends_with(&format!(".{id}")));
        if mode == Mode::Production && origin.ends_with(":*") {
            return Err(ConfigError::key(
                &format!("passkeys.origins[{i}]"),
                "production names the inbox's exact origin (no `:*`)",
            ));
        }
        if !fits {
            return Err(ConfigError::key(
                &format!("passkeys.origins[{i}]"),
                format!("an origin whose host is `{id}` or under it"),
            ));
        }
    }
    Ok(crate::webauthn::RelyingParty { id, origins })
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Where `db.query` runs.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres {
        /// Writes and admin statements.
        url: Secret,
        /// Reads; the write URL when no read URL is configured.
        read_url: Secret,
    },
}

impl DatabaseTarget {
    /// The database's file, when it is one.
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            DatabaseTarget::Sqlite(path) => Some(path.clone()),
            DatabaseTarget::Postgres { .. } => None,
        }
    }

    /// For logs and `init`: the location without credentials.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres { url, .. } => redact_url(url.expose()),
        }
    }
}

/// `scheme://user:password@host/db?sslpassword=…&password=…` →
/// `scheme://user@host/db?sslpassword=[redacted]&password=[redacted]`:
/// libpq takes a password in the query as well as in the userinfo.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparseable url]".into();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let location = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    };
    let Some(query) = query else {
        return location;
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                format!("{key}=[redacted]")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{location}?{}", parameters.join("&"))
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn database_target(data_dir: &Path, db: &DatabaseConfig) -> Result<DatabaseTarget, ConfigError> {
    if is_postgres_url(db.url.expose()) {
        let read_url = match &db.read_url {
            Some(r) if is_postgres_url(r.expose()) => r.clone(),
            Some(_) => {
                return Err(ConfigError::key(
                    "database.read_url",
                    "must be a postgres:// URL like database.url",
                ));
            }
            None => db.url.clone(),
        };
        return Ok(DatabaseTarget::Postgres {
            url: db.url.clone(),
            read_url,
        });
    }
    if db.read_url.is_some() {
        return Err(ConfigError::key(
            "database.read_url",
            "only PostgreSQL takes a separate read URL; SQLite reads use a read-only connection",
        ));
    }
    Ok(DatabaseTarget::Sqlite(sqlite_path(
        data_dir,
        "database.url",
        db.url.expose(),
    )?))
}

/// Whether `name` can name a log or a witness in a signed note: the key
/// name rules (non-empty, no Unicode spaces, no `+`), printable ASCII besides.
pub fn is_valid_note_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.bytes().all(|b| b.is_ascii_graphic() && b != b'+')
}

fn sqlite_path(data_dir: &Path, key: &str, url: &str) -> Result<PathBuf, ConfigError> {
    let rest = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| ConfigError::key(key, "expected sqlite://PATH or postgres://…"))?;
    if rest.is_empty() {
        return Err(ConfigError::key(key, "sqlite:// needs a file path"));
    }
    Ok(data_dir.join(rest))
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("DUALTRUST_") else {
            continue;
        };
        if NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::UnknownEnv { name });
        }
        let value = parse_env_value(&value);
        let (last, parents) = path
            .split_last()
            .ok_or(ConfigError::UnknownEnv { name: name.clone() })?;
        let mut cursor = &mut *table;
        for part in parents {
            let entry = cursor
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::UnknownEnv { name: name.clone() })?;
        }
        cursor.insert(last.clone(), value);
    }
    Ok(())
}

/// An override is read as a TOML value when it parses as one (numbers,
/// booleans, arrays), and as a plain string otherwise.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).expect("write");
        Config::load(
            dir.path(),
            Some(&file),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid_development() {
        let c = load("", &[]).expect("defaults");
        assert_eq!(c.mode, Mode::Development);
        assert!(matches!(&c.store_target, StoreTarget::Sqlite(p) if p.ends_with("state.db")));
    }

    #[test]
    fn database_and_store_passwords_appear_in_no_log_line_or_debug_output() {
        let c = load(
            "[database]\nurl = \"postgres://app:hunter2@db:5432/prod?sslmode=require&password=hunter3\"\n\
             [store]\nurl = \"postgres://dt:hunter4@db/dt?sslpassword=hunter5\"\n",
            &[],
        )
        .expect("config");
        let shown = format!(
            "{c:?} {} {}",
            c.database_target.describe(),
            c.store_target.describe()
        );
        for password in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!shown.contains(password), "{password} leaked: {shown}");
        }
        assert!(shown.contains("postgres://app@db:5432/prod?sslmode=require&password=[redacted]"));
        assert!(shown.contains("postgres://dt@db/dt?sslpassword=[redacted]"));
        // A clone shares the secret; it does not copy it.
        let url = match &c.database_target {
            DatabaseTarget::Postgres { url, .. } => url.clone(),
            DatabaseTarget::Sqlite(_) => panic!("postgres expected"),
        };
        assert!(std::ptr::eq(url.expose(), c.database.url.expose()));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[database]\nrow_capp = 3\n", &[]).expect_err("typo");
        assert!(err.to_string().contains("row_capp"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load("[database]\nrow_cap = \"many\"\n", &[]).expect_err("type");
        assert!(err.to_string().contains("database.row_cap"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_typos_fail() {
        let c = load(
            "[database]\nrow_cap = 3\n",
            &[("DUALTRUST_DATABASE__ROW_CAP", "7")],
        )
        .expect("override");
        assert_eq!(c.database.row_cap, 7);
        let err = load("", &[("DUALTRUST_DATABASE__ROWCAP", "7")]).expect_err("typo");
        assert!(err.to_string().contains("rowcap"), "{err}");
        load("", &[("DUALTRUST_TOKEN", "x")]).expect("token var is not config");
    }

    #[test]
    fn production_refuses_dev_tokens_and_wildcard_origins() {
        let err = load("mode = \"production\"\n", &[]).expect_err("dev tokens");
        assert!(err.to_string().contains("identity.dev_tokens"), "{err}");
        let err = load("[http]\nallowed_origins = [\"*\"]\n", &[]).expect_err("wildcard");
        assert!(err.to_string().contains("allowed_origins"), "{err}");
    }

    #[test]
    fn the_passkey_relying_party_follows_the_public_url_and_refuses_what_cannot_work() {
        let c = load("", &[]).expect("defaults");
        assert_eq!(c.passkeys, crate::webauthn::RelyingParty::default());
        let c = load(
            "[http]\npublic_url = \"https://Approvals.Example.com/\"\n",
            &[],
        )
        .expect("public url");
        assert_eq!(c.passkeys.id, "approvals.example.com");
        assert_eq!(c.passkeys.origins, ["https://approvals.example.com"]);
        let c = load(
            "[passkeys]\nrp_id = \"example.com\"\norigins = [\"https://a.example.com\", \"https://example.com:8443\"]\n",
            &[],
        )
        .expect("a registrable suffix");
        assert_eq!(c.passkeys.id, "example.com");
        let c = load("[http]\npublic_url = \"http://127.0.0.1:8080\"\n", &[])
            .expect("an IP public URL still starts");
        assert_eq!(c.passkeys, crate::webauthn::RelyingParty::default());
        let production = "mode = \"production\"\n[identity]\ndev_tokens = false\njwks_url = \"https://idp.example/jwks\"\n";
        let c = load(production, &[]).expect("production");
        assert!(
            c.passkeys.origins.is_empty(),
            "production admits no page by default"
        );
        let err = load(
            &format!("{production}[passkeys]\norigins = [\"http://localhost:*\"]\n"),
            &[],
        )
        .expect_err("a wildcard origin in production");
        assert!(err.to_string().contains("passkeys.origins[0]"), "{err}");
        for (text, key) in [
            ("[passkeys]\nrp_id = \"127.0.0.1\"\n", "passkeys.rp_id"),
            (
                "[passkeys]\nrp_id = \"example.com\"\norigins = [\"https://evil-example.com\"]\n",
                "passkeys.origins[0]",
            ),
        ] {
            let err = load(text, &[]).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn an_approver_may_sign_with_passkeys_only_and_pins_are_checked() {
        let mut device = crate::fuzzing::SoftAuthenticator::new(
            crate::webauthn::ES256,
            "http://localhost:8080",
            "localhost",
        );
        let _ = device.register(&[0; 32]);
        let cose = URL_SAFE_NO_PAD.encode(device.cose_key());
        let pinned = format!(
            "[[approvers]]\nid = \"alice\"\nsubject = \"alice@idp\"\n[[approvers.passkeys]]\ncredential_id = \"{}\"\npublic_key = \"{cose}\"\n\
             [quorum]\nk = 1\npasskeys = 1\n",
            device.credential_id_b64()
        );
        let c = load(&pinned, &[]).expect("passkey-only approver");
        assert!(c.approvers[0].key.is_none());
        assert_eq!(c.approvers[0].passkeys.len(), 1);
        let err = load(&pinned.replace(&cose, "AAAA"), &[]).expect_err("bad key");
        assert!(
            err.to_string()
                .contains("approvers[0].passkeys[0].public_key"),
            "{err}"
        );
        let err = load("[[approvers]]\nid = \"bob\"\n", &[]).expect_err("nothing to sign with");
        assert!(err.to_string().contains("approvers[0]"), "{err}");
        let err = load(&pinned.replace("passkeys = 1", "passkeys = 2"), &[]).expect_err("p > k");
        assert!(err.to_string().contains("quorum.passkeys"), "{err}");
        let err = load(&pinned.replace("subject = \"alice@idp\"\n", ""), &[])
            .expect_err("no subject to submit under");
        assert!(err.to_string().contains("approvers[0]"), "{err}");
        let twice = pinned.replace(
            "[quorum]",
            &format!(
                "[[approvers]]\nid = \"bob\"\nsubject = \"bob@idp\"\n[[approvers.passkeys]]\ncredential_id = \"b3RoZXI\"\npublic_key = \"{cose}\"\n[quorum]"
            ),
        );
        let err = load(&twice, &[]).expect_err("one passkey, two approvers");
        assert!(
            err.to_string().contains("approvers[1].passkeys[0]"),
            "{err}"
        );
    }

    #[test]
    fn rejections_needed_must_be_reachable() {
        let mut approvers = String::new();
        for id in ["alice", "bob"] {
            let key = crate::keys::KeyPair::generate().expect("key");
            let x = key.public_jwk()["x"].as_str().expect("x").to_string();
            approvers.push_str(&format!(
                "[[approvers]]\nid = \"{id}\"\npublic_key = \"{x}\"\n"
            ));
        }
        let with = |quorum: &str| format!("{approvers}[quorum]\nk = 1\n{quorum}");
        let config = load(&with("rejections = 2\n"), &[]).expect("two of two");
        assert_eq!(config.quorum.rejections, 2);
        for (quorum, key) in [
            ("rejections = 0\n", "quorum.rejections"),
            ("rejections = 3\n", "quorum.rejections"),
            (
                "[quorum.overrides.\"db.query\"]\nk = 1\nrejections = 3\n",
                "quorum.overrides.\"db.query\".rejections",
            ),
        ] {
            let err = load(&with(quorum), &[]).expect_err(quorum);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn inbox_sign_in_needs_a_client_and_https_endpoints() {
        let oauth = |client: &str, authorize: &str| {
            format!(
                "[inbox.oauth]\nclient_id = \"{client}\"\nauthorization_endpoint = \"{authorize}\"\ntoken_endpoint = \"https://idp.example/token\"\n"
            )
        };
        let config = load(&oauth("inbox", "https://idp.example/authorize"), &[]).expect("valid");
        let loaded = config.inbox.oauth.expect("oauth");
        assert_eq!(
            loaded.scope, "approvals:write",
            "defaults to the approvals scope"
        );
        load(&oauth("inbox", "http://127.0.0.1:9/authorize"), &[])
            .expect("loopback in development");
        for (text, key) in [
            (
                oauth(" ", "https://idp.example/authorize"),
                "inbox.oauth.client_id",
            ),
            (
                oauth("inbox", "http://idp.example/authorize"),
                "inbox.oauth.authorization_endpoint",
            ),
            (
                oauth("inbox", "javascript:alert(1)"),
                "inbox.oauth.authorization_endpoint",
            ),
            (
                oauth("inbox", "not a url"),
                "inbox.oauth.authorization_endpoint",
            ),
        ] {
            let err = load(&text, &[]).expect_err(&text);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    /// A bound claim becomes part of a setting and a parameter name.
    #[test]
    fn bound_claims_are_plain_names_of_their_own() {
        let loaded = load("[identity]\nclaims = [\"tenant\", \"org_id\"]\n", &[]).expect("valid");
        assert_eq!(loaded.identity.claims, ["tenant", "org_id"]);
        for bad in [
            "\"Tenant\"",
            "\"tenant.id\"",
            "\"x'); DROP TABLE t; --\"",
            "\"\"",
            "\"sub\"",
            "\"scope\"",
            "\"subject\"",
            "\"tenant\", \"tenant\"",
        ] {
            let err = load(&format!("[identity]\nclaims = [{bad}]\n"), &[]).expect_err(bad);
            assert!(err.to_string().contains("identity.claims"), "{bad}: {err}");
        }
    }

    #[test]
    fn identity_sources_are_validated() {
        let weak = load(
            "",
            &[(
                "DUALTRUST_IDENTITY__HS256_SECRET",
                "secretsecretsecretsecretsecretsecret",
            )],
        )
        .expect_err("weak secret");
        assert!(weak.to_string().contains("identity.hs256_secret"), "{weak}");
        assert!(!weak.to_string().contains("secretsecret"), "{weak}");
        let ok = load(
            "",
            &[(
                "DUALTRUST_IDENTITY__HS256_SECRET",
                "q8Vt3LzR0pXw7NcY2mKd5HsJ9bFa6GuE",
            )],
        )
        .expect("strong secret");
        assert!(
            !format!("{ok:?}").contains("q8Vt3LzR"),
            "secret in Debug output"
        );
        let plain = load("[identity]\njwks_url = \"http://idp.example/jwks\"\n", &[])
            .expect_err("plain http");
        assert!(plain.to_string().contains("identity.jwks_url"), "{plain}");
        load("[identity]\njwks_url = \"http://127.0.0.1:9/jwks\"\n", &[]).expect("loopback");
        let alg = load(
            "[[identity.public_keys]]\nalg = \"HS512\"\npem_file = \"k.pem\"\n",
            &[],
        )
        .expect_err("alg");
        assert!(alg.to_string().contains("public_keys[0].alg"), "{alg}");
        let prod = load(
            "mode = \"production\"\n[identity]\ndev_tokens = false\n",
            &[],
        )
        .expect_err("no keys");
        assert!(prod.to_string().contains("production needs"), "{prod}");
    }

    #[test]
    fn database_and_store_urls_are_validated_and_printed_without_passwords() {
        let err = load("[database]\nread_url = \"postgres://ro@h/db\"\n", &[])
            .expect_err("read_url on sqlite");
        assert!(err.to_string().contains("database.read_url"), "{err}");
        let err = load(
            "[database]\nurl = \"postgres://rw@h/db\"\nread_url = \"sqlite://x.db\"\n",
            &[],
        )
        .expect_err("mixed backends");
        assert!(err.to_string().contains("database.read_url"), "{err}");
        let c = load(
            "[store]\nurl = \"postgresql://app:hunter2@db:5432/state\"\n[database]\nurl = \"postgres://rw:pw2@h/app\"\n",
            &[],
        )
        .expect("postgres urls");
        assert_eq!(c.store_target.describe(), "postgresql://app@db:5432/state");
        assert_eq!(c.database_target.describe(), "postgres://rw@h/app");
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "no password in Debug"
        );
    }

    #[test]
    fn cors_origins_are_explicit() {
        let wild = load("[http]\ncors_origins = [\"*\"]\n", &[]).expect_err("wildcard");
        assert!(wild.to_string().contains("cors_origins[0]"), "{wild}");
        let outside = load("[http]\ncors_origins = [\"https://app.example\"]\n", &[])
            .expect_err("not allowed");
        assert!(outside.to_string().contains("allowed_origins"), "{outside}");
        load(
            "[http]\nallowed_origins = [\"https://app.example\"]\ncors_origins = [\"https://app.example\"]\n",
            &[],
        )
        .expect("listed");
    }
}
