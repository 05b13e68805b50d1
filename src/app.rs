//! The composition root: builds the running server from a validated
//! [`Config`] (keys, store, log, gate, tools), and the lighter [`Desk`] for
//! command-line work on the store that needs none of the tools.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rmcp::model::RequestStateCodec;

use crate::audit::AuditLog;
use crate::config::{Config, DatabaseConfig, DatabaseTarget, Mode};
use crate::gate::{Gate, Policy};
use crate::identity::TokenVerifier;
use crate::keyring::{KeySource, ServerKeys};
use crate::keys::KeyPair;
use crate::notify::Notifier;
use crate::store::Store;
use crate::tools::{AuditVerify, DbQuery, DbSchema, PassportIssuer, Terminal, ToolSet};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("server keys: {0}")]
    Keyring(#[from] crate::keyring::KeyringError),
    #[error(transparent)]
    Verifier(#[from] crate::identity::VerifierSetupError),
    #[error("state store {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("database {path}: {message}")]
    Database { path: String, message: String },
    #[error("terminal roots: {0}")]
    Terminal(std::io::Error),
    #[error("{0}")]
    Witness(String),
    #[error("internal: policy names no scope for any class of `{0}`, so it could never be called")]
    NoPolicy(&'static str),
    #[cfg(feature = "bench")]
    #[error(
        "--bench-gate-off is for benchmarks in development mode; this configuration is production"
    )]
    GateOffInProduction,
    #[cfg(feature = "bench")]
    #[error("internal: the gate was shared before it could be switched off")]
    GateShared,
    #[cfg(feature = "conformance")]
    #[error(
        "this is a conformance-suite build (its test_… fixture tools are not a product); this configuration is production"
    )]
    ConformanceInProduction,
}

/// Everything a running server holds.
pub struct App {
    pub config: Config,
    pub keys: Arc<ServerKeys>,
    pub store: Store,
    pub gate: Arc<Gate>,
    pub tools: Arc<ToolSet>,
    /// The terminal tool again, for the sandbox status `/readyz` reports.
    pub terminal: Arc<Terminal>,
    /// Seals `requestState` for 2026-07-28 multi-round-trip calls.
    pub(crate) request_state: RequestStateCodec,
    /// The witnesses the log's checkpoints go to, until serving starts.
    witnesses: std::sync::Mutex<Vec<crate::audit::witnessing::Witness>>,
}

const REQUEST_STATE_LABEL: &str = "dualtrust-request-state-v1";

/// The codec [`App`] seals `requestState` with, for a server key.
#[doc(hidden)]
pub fn request_state_codec(
    server_key: &KeyPair,
) -> Result<RequestStateCodec, crate::keys::KeyError> {
    let secret = server_key.derive_secret(REQUEST_STATE_LABEL)?;
    Ok(RequestStateCodec::new_unchecked(secret.to_vec()))
}

async fn open_store(config: &Config) -> Result<Store, StartupError> {
    Store::open(&config.store_target)
        .await
        .map_err(|source| StartupError::Store {
            path: config.store_target.describe(),
            source,
        })
}

async fn open_log(
    config: &Config,
    store: &Store,
    keys: &Arc<ServerKeys>,
) -> Result<AuditLog, StartupError> {
    AuditLog::open(store.clone(), keys.clone())
        .await
        .map_err(|source| StartupError::Store {
            path: config.store_target.describe(),
            source,
        })
}

/// The server keys of the configured source and the store's registry
/// (registering the first key on a new log). With `require_active`, a
/// source that does not hold the log's active key is refused at start.
pub async fn open_keys(
    config: &Config,
    store: &Store,
    require_active: bool,
) -> Result<Arc<ServerKeys>, StartupError> {
    Ok(ServerKeys::open(
        store,
        KeySource::from_config(config),
        config.log.origin.as_deref(),
        require_active,
    )
    .await?)
}

/// What command-line work on held calls needs (listing them, approving one
/// beside the server): the store, the log and a gate that records each
/// approval as a receipt. Not the tools, the target database or the
/// identity provider: an operator's approval must not wait on them.
pub struct Desk {
    pub store: Store,
    pub gate: Gate,
}

impl Desk {
    pub async fn open(config: &Config) -> Result<Self, StartupError> {
        ensure_data_dir(config)?;
        let store = open_store(config).await?;
        let keys = open_keys(config, &store, true).await?;
        let log = Arc::new(open_log(config, &store, &keys).await?);
        // Approvals here are the operator's, not a token's: nobody is
        // authenticated, so no key is trusted.
        let verifier = Arc::new(TokenVerifier::trusting_no_one(&config.identity));
        // What is decided here is announced like what the server decides;
        // the command waits for delivery before it exits (`Desk::finish`).
        let gate = Gate::new(verifier, store.clone(), log, Policy::from_config(config))
            .with_notifier(Notifier::start(&config.notifications, keys));
        Ok(Self { store, gate })
    }

    /// Gives the notifications of this command time to be delivered.
    pub async fn finish(&self) {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(15);
        if !self.gate.notifier().flush(LIMIT).await {
            tracing::warn!("some notifications were not delivered before the command exited");
        }
    }
}

/// Creates the data directory (mode 0700) if it is missing.
pub fn ensure_data_dir(config: &Config) -> Result<(), StartupError> {
    let dir = &config.data_dir;
    let err = |source| StartupError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Loads (creating if missing) the development token-issuer key.
pub fn load_dev_issuer(config: &Config) -> Result<KeyPair, StartupError> {
    let (key, created) = KeyPair::load_or_create(&config.dev_issuer_key_path(), true)?;
    if created {
        tracing::warn!(path = %config.dev_issuer_key_path().display(), "DEVELOPMENT MODE: generated a development token-issuer key");
    }
    Ok(key)
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        #[cfg(feature = "conformance")]
        if config.mode == Mode::Production {
            return Err(StartupError::ConformanceInProduction);
        }
        ensure_data_dir(&config)?;
        let dev_issuer = if config.identity.dev_tokens && config.mode == Mode::Development {
            tracing::warn!(
                "DEVELOPMENT MODE: accepting tokens minted by `dualtrust token`; never expose this server"
            );
            Some(load_dev_issuer(&config)?)
        } else {
            None
        };
        let verifier = Arc::new(TokenVerifier::new(
            &config.identity,
            dev_issuer.as_ref(),
            &config.scopes.implies,
        )?);
        verifier.prime().await;
        verifier.retry_until_loaded();
        let store = open_store(&config).await?;
        let db_error = |message: String| StartupError::Database {
            path: config.database_target.describe(),
            message,
        };
        if config.database.url.expose() == DatabaseConfig::default().url.expose()
            && let DatabaseTarget::Sqlite(path) = &config.database_target
            && crate::demo::ensure_demo_database(path)
                .await
                .map_err(|e| db_error(e.to_string()))?
        {
            tracing::info!(path = %path.display(), "created the demo database");
        }
        let keys = open_keys(&config, &store, true).await?;
        let log = Arc::new(open_log(&config, &store, &keys).await?);
        #[allow(unused_mut)]
        let mut policy = Policy::from_config(&config);
        #[cfg(feature = "conformance")]
        for fixture in crate::tools::conformance::NAMES {
            policy = policy.with_scope(
                fixture,
                crate::gate::Class::Read,
                crate::tools::conformance::SCOPE,
            );
        }
        let gate = Arc::new(
            Gate::new(verifier, store.clone(), log.clone(), policy)
                .with_notifier(Notifier::start(&config.notifications, keys.clone()))
                .with_revocation_refresh(std::time::Duration::from_millis(
                    config.identity.revocation_refresh_ms,
                )),
        );
        // A slot lapses after the longest a command may run, and a margin.
        let slot_lifetime_ms = config.terminal.max_timeout_ms + 30_000;
        let terminal = Arc::new(
            Terminal::new(config.terminal.clone(), config.mode)
                .map_err(StartupError::Terminal)?
                .with_shared_slots(crate::gate::rate::SharedSlots::new(
                    &config.limits,
                    store.clone(),
                    slot_lifetime_ms,
                )),
        );
        let mut tools = ToolSet::default();
        let database = Arc::new(
            DbQuery::open(
                &config.database_target,
                config.database.clone(),
                config.identity.claims.clone(),
            )
            .await
            .map_err(|e| db_error(e.to_string()))?,
        );
        tools.register(database.clone());
        tools.register(Arc::new(DbSchema::new(database)));
        tools.register(terminal.clone());
        tools.register(Arc::new(PassportIssuer::new(
            keys.clone(),
            config.passport.clone(),
        )));
        tools.register(Arc::new(AuditVerify::new(log, config.passport.clone())));
        #[cfg(feature = "bench")]
        tools.register(Arc::new(crate::tools::BenchEcho));
        #[cfg(feature = "conformance")]
        crate::tools::conformance::register(&mut tools);
        if let Some(tool) = tools.names().find(|name| !gate.has_policy_for(name)) {
            return Err(StartupError::NoPolicy(tool));
        }
        // Derived from the key active at start: a state sealed before a
        // rotation still opens here until this process restarts.
        let request_state = request_state_codec(&*keys.signing()?)?;
        let witnesses = crate::audit::witnessing::Witness::from_config(&config.log.witnesses)
            .map_err(StartupError::Witness)?;
        Ok(Self {
            witnesses: std::sync::Mutex::new(witnesses),
            config,
            keys,
            store,
            gate,
            tools: Arc::new(tools),
            terminal,
            request_state,
        })
    }

    /// While serving, keeps the in-memory revocation list fresh, so no
    /// call waits for the store to learn its token was not revoked; and
    /// picks up server key rotations recorded by another process.
    pub fn refresh_revocations(&self) {
        if !self.gate.is_off() {
            self.gate.revocations().spawn_refresher(self.store.clone());
        }
        self.keys.spawn_refresher(
            self.store.clone(),
            std::time::Duration::from_millis(self.config.keys.refresh_ms),
        );
    }

    /// While serving, takes the log's checkpoints to its witnesses.
    pub fn witness_checkpoints(&self) {
        let witnesses =
            std::mem::take(&mut *self.witnesses.lock().unwrap_or_else(|e| e.into_inner()));
        if self.gate.is_off() {
            return;
        }
        crate::audit::witnessing::spawn(
            self.gate.log().clone(),
            self.store.clone(),
            witnesses,
            std::time::Duration::from_millis(self.config.log.witness_interval_ms),
        );
    }

    /// While serving, ends held calls whose approval window closed, every
    /// few seconds, so approvers and webhooks learn of it (the gate refuses
    /// an expired lease either way; this only records and announces it).
    pub fn sweep_expired_leases(&self) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        if self.gate.is_off() {
            return;
        }
        let gate = self.gate.clone();
        let shared_limits = (self.config.limits.backend == crate::config::LimitsBackend::Store)
            .then(|| self.store.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                match gate.expire_held().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "held calls expired without quorum"),
                    Err(e) => tracing::warn!(error = %e, "expired held calls could not be swept"),
                }
                // A refilled bucket says nothing a missing one does not.
                if let Some(store) = &shared_limits
                    && let Err(e) = store.prune_rates(crate::now_unix_ms()).await
                {
                    tracing::warn!(error = %e, "refilled rate-limit buckets could not be pruned");
                }
            }
        });
    }

    /// A benchmark's baseline: the same server with the gate switched off.
    /// Exists only in `bench` builds and refuses production configurations.
    #[cfg(feature = "bench")]
    pub async fn build_gate_off(config: Config) -> Result<Self, StartupError> {
        if config.mode == Mode::Production {
            return Err(StartupError::GateOffInProduction);
        }
        let mut app = Self::build(config).await?;
        // Nothing else holds the gate yet.
        Arc::get_mut(&mut app.gate)
            .ok_or(StartupError::GateShared)?
            .switch_off_for_benchmark();
        tracing::warn!(
            "BENCHMARK BUILD: the gate is OFF; calls run with no identity, scope, lease, quorum or receipt"
        );
        Ok(app)
    }

    /// The server's public keys as an RFC 7517 JWK Set: the active key and
    /// every retired one, each with the span it signs.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }
}

/// A valid production configuration over `dir`, for the tests that show a
/// build which must not be deployed refuses one.
#[cfg(all(test, any(feature = "conformance", feature = "bench")))]
#[allow(clippy::expect_used)]
fn production_config(dir: &std::path::Path) -> Config {
    let env = [
        ("DUALTRUST_MODE", "production"),
        ("DUALTRUST_IDENTITY__DEV_TOKENS", "false"),
        ("DUALTRUST_IDENTITY__JWKS_FILE", "idp-jwks.json"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(dir, None, env).expect("a valid production config")
}

#[cfg(all(test, feature = "conformance"))]
mod conformance_build_tests {
    use super::*;

    #[tokio::test]
    async fn a_fixture_build_refuses_production_before_anything_is_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = production_config(dir.path());
        assert!(matches!(
            App::build(config).await,
            Err(StartupError::ConformanceInProduction)
        ));
        assert!(!dir.path().join("server.key").exists());
    }
}

#[cfg(all(test, feature = "bench"))]
mod bench_build_tests {
    use super::*;

    #[tokio::test]
    async fn gate_off_is_refused_in_production_before_anything_is_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = production_config(dir.path());
        assert!(matches!(
            App::build_gate_off(config).await,
            Err(StartupError::GateOffInProduction)
        ));
        assert!(!dir.path().join("server.key").exists());
    }
}
