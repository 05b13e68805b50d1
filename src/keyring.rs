//! The server's signing keys over the life of its log: which key signs now,
//! which signed before and where, and rotation without a restart.
//!
//! The registry lives in the state store (`server_keys`), shared by every
//! replica: one active key, and each retired key with the log size and
//! RFC 6962 root at which it stopped. The private keys live outside it, in
//! a key file (a secret the orchestrator mounts) or an environment
//! variable, holding the active key and, during a rotation, the next one
//! beside it. Every process re-reads the registry each `keys.refresh_ms`;
//! when the active key changed it re-reads its keys and signs with the new
//! one. An append signed by a key the registry retired is refused by the
//! store under the lock the rotation takes, so no receipt lands past its
//! key's span, and verifiers refuse anything a retired key signs past it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::keys::{KeyError, KeyPair, PublishedKey, parse_keys, parse_public_key};
use crate::store::{KeyRecord, LogKeys, Store, StoreError};

/// Where the private keys come from.
pub enum KeySource {
    /// A key file; `create` makes one when missing (development only),
    /// `private` refuses one that group or others may read (production).
    File {
        path: PathBuf,
        create: bool,
        private: bool,
    },
    /// An environment variable holding the key text.
    Env(String),
    /// Keys already in memory (tests, a command that made them).
    Held(Vec<Arc<KeyPair>>),
}

impl KeySource {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let production = config.mode == crate::config::Mode::Production;
        match &config.keys.env {
            Some(name) => Self::Env(name.clone()),
            None => Self::File {
                path: config.server_key_path(),
                create: !production,
                private: production,
            },
        }
    }

    /// What the source is called in messages (never its contents).
    pub fn describe(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Env(name) => format!("${name}"),
            Self::Held(_) => "the keys in memory".into(),
        }
    }

    /// Reads the keys; the first of a new file is created when allowed.
    pub fn load(&self) -> Result<Vec<Arc<KeyPair>>, KeyError> {
        match self {
            Self::File {
                path,
                create,
                private,
            } => {
                if *create && !path.exists() {
                    let (key, _) = KeyPair::load_or_create(path, true)?;
                    tracing::warn!(path = %path.display(), kid = key.kid(), "DEVELOPMENT MODE: generated a new server signing key");
                }
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        KeyError::Missing {
                            path: shown.clone(),
                        }
                    } else {
                        KeyError::Io {
                            path: shown.clone(),
                            source,
                        }
                    }
                })?;
                let text = Zeroizing::new(text);
                if *private {
                    crate::keys::check_private_mode(path)?;
                }
                Ok(parse_keys(&text, &shown)?
                    .into_iter()
                    .map(Arc::new)
                    .collect())
            }
            Self::Env(name) => {
                let shown = format!("${name}");
                let text = Zeroizing::new(std::env::var(name).map_err(|_| KeyError::Missing {
                    path: shown.clone(),
                })?);
                Ok(parse_keys(&text, &shown)?
                    .into_iter()
                    .map(Arc::new)
                    .collect())
            }
            Self::Held(keys) => Ok(keys.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the log's origin is {recorded:?}, but log.origin says {configured:?}; an origin is fixed when the log is first opened"
    )]
    OriginMismatch {
        recorded: String,
        configured: String,
    },
    #[error(
        "the log's first receipt was signed by key {kid}, which is not among the keys in {keys_in}"
    )]
    ForeignLog { kid: String, keys_in: String },
    #[error(
        "the log's active server key is {kid}, which is not among the keys in {keys_in}; after `dualtrust keys rotate`, every replica's key file (or variable) must hold the new key"
    )]
    ActiveKeyMissing { kid: String, keys_in: String },
    #[error(
        "this process does not hold the log's active server key {0} (rotated; its key file has not caught up)"
    )]
    NotHeld(String),
}

struct KeyState {
    held: Vec<Arc<KeyPair>>,
    /// The held key the registry marks active; `None` while this process
    /// lags a rotation (nothing it signs would verify).
    signing: Option<Arc<KeyPair>>,
    active_kid: String,
    published: Arc<[PublishedKey]>,
}

/// The server keys of one log, shared by everything that signs or verifies.
pub struct ServerKeys {
    source: KeySource,
    origin: String,
    state: RwLock<KeyState>,
}

impl ServerKeys {
    /// Loads the keys and the store's registry, registering the first key
    /// (and fixing the origin) on a log that has none yet. With
    /// `require_active`, fails unless a loaded key is the active one.
    pub async fn open(
        store: &Store,
        source: KeySource,
        configured_origin: Option<&str>,
        require_active: bool,
    ) -> Result<Arc<Self>, KeyringError> {
        let held = source.load()?;
        let mut recorded = store.log_keys().await?;
        let holds_active = recorded
            .keys
            .iter()
            .any(|k| k.until_seq.is_none() && held.iter().any(|h| h.kid() == k.kid));
        let unrecorded = recorded.keys.is_empty() || recorded.origin.is_none();
        if unrecorded || (!holds_active && store.log_head().await?.is_none()) {
            recorded = adopt(store, &source, &held, configured_origin).await?;
        }
        let origin = recorded.origin.clone().unwrap_or_default();
        if let Some(configured) = configured_origin
            && configured != origin
        {
            return Err(KeyringError::OriginMismatch {
                recorded: origin,
                configured: configured.to_string(),
            });
        }
        let state = KeyState::new(held, &recorded);
        if require_active && state.signing.is_none() {
            return Err(KeyringError::ActiveKeyMissing {
                kid: state.active_kid,
                keys_in: source.describe(),
            });
        }
        Ok(Arc::new(Self {
            source,
            origin,
            state: RwLock::new(state),
        }))
    }

    /// A keyring over one key on a fresh store (tests, fuzz fixtures).
    pub async fn single(store: &Store, key: KeyPair) -> Result<Arc<Self>, KeyringError> {
        Self::open(store, KeySource::Held(vec![Arc::new(key)]), None, true).await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The log's checkpoint origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The key to sign with now: the active one, if this process holds it.
    pub fn signing(&self) -> Result<Arc<KeyPair>, KeyringError> {
        let state = self.read();
        state
            .signing
            .clone()
            .ok_or_else(|| KeyringError::NotHeld(state.active_kid.clone()))
    }

    pub fn active_kid(&self) -> String {
        self.read().active_kid.clone()
    }

    /// Every key that signed this log, with its span.
    pub fn published(&self) -> Arc<[PublishedKey]> {
        self.read().published.clone()
    }

    /// The JWK Set of every key that signed this log, with its span.
    pub fn jwks(&self) -> serde_json::Value {
        crate::keys::published_jwks(&self.published())
    }

    /// Re-reads the registry and, when the active key changed, the keys:
    /// picks up a rotation recorded by another process.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let recorded = store.log_keys().await?;
        let changed = {
            let state = self.read();
            let active = recorded
                .keys
                .iter()
                .find(|k| k.until_seq.is_none())
                .map(|k| k.kid.as_str());
            active != Some(state.active_kid.as_str())
                || recorded.keys.len() != state.published.len()
        };
        if !changed {
            return Ok(());
        }
        let held = match self.source.load() {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "the server keys could not be re-read after a rotation");
                self.read().held.clone()
            }
        };
        let next = KeyState::new(held, &recorded);
        match &next.signing {
            Some(key) => tracing::info!(kid = key.kid(), "signing with the rotated server key"),
            None => tracing::error!(
                kid = next.active_kid,
                source = self.source.describe(),
                "the server key was rotated to a key this process does not hold; nothing is signed until it does"
            ),
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// While serving, picks up rotations every `every`.
    pub fn spawn_refresher(self: &Arc<Self>, store: Store, every: std::time::Duration) {
        let keys = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(keys) = keys.upgrade() else { return };
                if let Err(e) = keys.refresh(&store).await {
                    tracing::warn!(error = %e, "the server key registry could not be re-read");
                }
            }
        });
    }
}

/// Records the origin and first key of a log that has none: the key that
/// signed its first receipt, or for an empty log the first key loaded.
async fn adopt(
    store: &Store,
    source: &KeySource,
    held: &[Arc<KeyPair>],
    configured_origin: Option<&str>,
) -> Result<LogKeys, KeyringError> {
    let first_signer = match store.log_rows(0, 1).await?.first() {
        Some(row) => {
            let receipt: serde_json::Value =
                serde_json::from_str(&row.receipt).map_err(|_| StoreError::Corrupt)?;
            let kid = receipt["body"]["kid"].as_str().ok_or(StoreError::Corrupt)?;
            Some(kid.to_string())
        }
        None => None,
    };
    let first = match &first_signer {
        Some(kid) => {
            held.iter()
                .find(|k| k.kid() == kid)
                .ok_or_else(|| KeyringError::ForeignLog {
                    kid: kid.clone(),
                    keys_in: source.describe(),
                })?
        }
        None => held.first().ok_or_else(|| KeyError::Missing {
            path: source.describe(),
        })?,
    };
    let named = origin_for(first.kid());
    // A log with receipts had this name in every checkpoint it signed.
    if let (Some(_), Some(configured)) = (&first_signer, configured_origin)
        && configured != named
    {
        return Err(KeyringError::OriginMismatch {
            recorded: named,
            configured: configured.to_string(),
        });
    }
    let origin = configured_origin.map_or(named, str::to_string);
    let record = record_for(first, 0);
    Ok(store.adopt_log_keys(&origin, &record).await?)
}

impl KeyState {
    fn new(held: Vec<Arc<KeyPair>>, recorded: &LogKeys) -> Self {
        let published: Vec<PublishedKey> = recorded.keys.iter().filter_map(published).collect();
        let active_kid = recorded
            .keys
            .iter()
            .find(|k| k.until_seq.is_none())
            .map(|k| k.kid.clone())
            .unwrap_or_default();
        let signing = held.iter().find(|k| k.kid() == active_kid).cloned();
        Self {
            held,
            signing,
            active_kid,
            published: published.into(),
        }
    }
}

/// A registry row as a verifier uses it; a row whose key does not parse or
/// does not have its `kid` is left out (what it signed then fails to verify).
fn published(record: &KeyRecord) -> Option<PublishedKey> {
    let key = parse_public_key(&record.public_key)?;
    let until_root = match &record.until_root {
        Some(root) => Some(<[u8; 32]>::try_from(hex::decode(root).ok()?.as_slice()).ok()?),
        None => None,
    };
    let published = PublishedKey {
        from_seq: record.from_seq,
        until_seq: record.until_seq,
        until_root,
        not_before: record.activated_ms / 1000,
        not_after: record.retired_ms.map(|ms| ms.div_ceil(1000)),
        ..PublishedKey::unbounded(key)
    };
    if published.kid != record.kid {
        tracing::error!(
            kid = record.kid,
            "a server key in the registry does not match its kid"
        );
        return None;
    }
    Some(published)
}

/// The origin a log gets when none is configured: the one every log had
/// before origins were configurable, named after its first key.
pub fn origin_for(kid: &str) -> String {
    format!("dualtrust/{kid}")
}

/// The registry row that activates `key` at log size `from_seq`, now.
pub fn record_for(key: &KeyPair, from_seq: u64) -> KeyRecord {
    KeyRecord {
        kid: key.kid().to_string(),
        public_key: key.public_jwk()["x"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        from_seq,
        until_seq: None,
        until_root: None,
        activated_ms: crate::now_unix_ms(),
        retired_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::{Checkpoint, CheckpointError};
    use crate::audit::{
        AuditLog, GENESIS_PREV, Receipt, ReceiptCheckError, ReceiptDraft, verify_log,
    };

    fn draft(n: u64) -> ReceiptDraft {
        ReceiptDraft {
            tool: format!("t{n}"),
            transport: "stdio",
            ..Default::default()
        }
    }

    async fn receipts(log: &AuditLog) -> Vec<Receipt> {
        log.receipts(0, 1000).await.expect("receipts")
    }

    #[tokio::test]
    async fn a_rotated_key_signs_nothing_that_verifies_past_its_retirement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("store");
        let old = Arc::new(KeyPair::generate().expect("key"));
        let new = Arc::new(KeyPair::generate().expect("key"));
        let keys = ServerKeys::open(
            &store,
            KeySource::Held(vec![old.clone(), new.clone()]),
            Some("example.com/audit"),
            true,
        )
        .await
        .expect("keys");
        assert_eq!(keys.active_kid(), old.kid(), "the first key loaded");
        let log = AuditLog::open(store.clone(), keys.clone())
            .await
            .expect("log");
        for n in 0..3 {
            log.append(draft(n)).await.expect("append");
        }
        assert_eq!(log.rotate_key(&new).await.expect("rotate"), 3);
        for n in 3..5 {
            log.append(draft(n)).await.expect("append");
        }
        let all = receipts(&log).await;
        let kids: Vec<&str> = all.iter().map(|r| r.body.kid.as_str()).collect();
        assert_eq!(
            kids,
            [old.kid(), old.kid(), old.kid(), new.kid(), new.kid()]
        );
        let published = keys.published();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].until_seq, Some(3));
        let tree = verify_log(all.clone(), &published).expect("every receipt verifies");

        // The retired key, leaked, signs the next receipt: refused by the
        // store (nothing lands) and by every verifier.
        let mut forged_body = all[4].body.clone();
        forged_body.seq = 5;
        forged_body.prev = all[4].hash.clone();
        forged_body.kid = old.kid().to_string();
        let forged = Receipt::seal(forged_body, &old).expect("seal");
        assert_eq!(
            forged.check_signature(&published),
            Err(ReceiptCheckError::KeyRetired)
        );
        let mut extended = all.clone();
        extended.push(forged);
        assert_eq!(
            verify_log(extended, &published).map(|t| t.len()),
            Err((5, ReceiptCheckError::KeyRetired))
        );
        let row = crate::store::LogRow {
            seq: 5,
            hash: "f".repeat(64),
            leaf_hash: Some("0".repeat(64)),
            receipt: "{}".into(),
            lease: None,
        };
        assert!(matches!(
            store.insert_receipts(old.kid(), &[row], &[]).await,
            Err(StoreError::KeyRotated)
        ));

        // A checkpoint past the retirement by the old key is refused; one
        // at the retirement size verifies; the new key's verifies.
        let at = |size: u64, key: &KeyPair| {
            Checkpoint {
                origin: keys.origin().to_string(),
                size,
                root: tree.root(size).expect("root"),
                time: 1,
            }
            .sign(key)
        };
        assert_eq!(
            Checkpoint::verify(&at(4, &old), keys.origin(), &published).err(),
            Some(CheckpointError::KeyRetired)
        );
        assert!(Checkpoint::verify(&at(3, &old), keys.origin(), &published).is_ok());
        // At its retirement size, only the root it was retired at.
        let forked = Checkpoint {
            origin: keys.origin().to_string(),
            size: 3,
            root: [9u8; 32],
            time: 1,
        }
        .sign(&old);
        assert_eq!(
            Checkpoint::verify(&forked, keys.origin(), &published).err(),
            Some(CheckpointError::KeyRetired)
        );
        assert!(Checkpoint::verify(&at(5, &new), keys.origin(), &published).is_ok());
        assert_eq!(
            Checkpoint::verify(&at(2, &new), keys.origin(), &published).err(),
            Some(CheckpointError::KeyRetired),
            "the new key does not sign the old key's span either"
        );

        // History rewritten with the retired key (a consistent chain, every
        // signature good) no longer hashes to the root it was retired at.
        let mut prev = GENESIS_PREV.to_string();
        let mut rewritten = Vec::new();
        for receipt in &all[..3] {
            let mut body = receipt.body.clone();
            body.prev = prev.clone();
            body.subject = Some("mallory".into());
            let sealed = Receipt::seal(body, &old).expect("seal");
            prev = sealed.hash.clone();
            rewritten.push(sealed);
        }
        assert_eq!(
            verify_log(rewritten, &published).map(|t| t.len()),
            Err((3, ReceiptCheckError::RetirementRoot))
        );

        // Published and read back as JWKs, the spans are the same.
        let jwks = keys.jwks();
        assert_eq!(
            crate::keys::published_keys_from_jwks(&jwks),
            published.to_vec()
        );
        assert_eq!(jwks["keys"][0]["log_until"], 3);
        assert!(jwks["keys"][1].get("log_until").is_none());
    }

    #[tokio::test]
    async fn another_process_rotating_is_picked_up_and_a_lagging_one_signs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("store");
        let old = Arc::new(KeyPair::generate().expect("key"));
        let new = Arc::new(KeyPair::generate().expect("key"));
        // Two processes: one holds both keys, one only the old.
        let both = ServerKeys::open(
            &store,
            KeySource::Held(vec![old.clone(), new.clone()]),
            None,
            true,
        )
        .await
        .expect("keys");
        let lagging = ServerKeys::open(&store, KeySource::Held(vec![old.clone()]), None, true)
            .await
            .expect("keys");
        assert_eq!(both.origin(), origin_for(old.kid()));
        let rotator = AuditLog::open(store.clone(), both.clone())
            .await
            .expect("log");
        let behind = AuditLog::open(store.clone(), lagging.clone())
            .await
            .expect("log");
        behind.append(draft(0)).await.expect("append");
        rotator.rotate_key(&new).await.expect("rotate");
        // The lagging process learns of the rotation at its next append,
        // holds no active key, and fails closed: nothing is written.
        assert!(matches!(
            behind.append(draft(1)).await,
            Err(StoreError::KeyRotated)
        ));
        assert!(matches!(lagging.signing(), Err(KeyringError::NotHeld(_))));
        assert_eq!(receipts(&rotator).await.len(), 1);
        rotator.append(draft(2)).await.expect("append");
        assert_eq!(
            receipts(&rotator).await[1].body.kid,
            new.kid(),
            "signed with the new key"
        );
        // A JWK of a retired key without its retirement root is refused.
        let mut jwk = both.jwks()["keys"][0].clone();
        jwk.as_object_mut()
            .expect("object")
            .remove("log_until_root");
        assert_eq!(crate::keys::PublishedKey::from_jwk(&jwk), None);
        // Starting with a configured origin other than the recorded one is refused.
        assert!(matches!(
            ServerKeys::open(
                &store,
                KeySource::Held(vec![new.clone()]),
                Some("other"),
                true
            )
            .await,
            Err(KeyringError::OriginMismatch { .. })
        ));
        // Starting without the active key is refused when it is required.
        assert!(matches!(
            ServerKeys::open(&store, KeySource::Held(vec![old.clone()]), None, true).await,
            Err(KeyringError::ActiveKeyMissing { .. })
        ));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_where_keys_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.key");
        let (key, _) = KeyPair::load_or_create(&path, true).expect("create");
        let private = KeySource::File {
            path: path.clone(),
            create: false,
            private: true,
        };
        assert_eq!(private.load().expect("0600 loads")[0].kid(), key.kid());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            private.load(),
            Err(KeyError::Exposed { mode: 0o644, .. })
        ));
        // PKCS#8 PEM (what `openssl genpkey -algorithm ed25519` writes) and
        // several hex lines both load, in order.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        std::fs::write(&path, pem).expect("write");
        let from_pem = private.load().expect("pem loads");
        // RFC 8410 section 10.3's example key.
        assert_eq!(
            hex::encode(from_pem[0].verifying_key().as_bytes()),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        let other = KeyPair::generate().expect("key");
        crate::keys::write_keys(&path, &[&key, &other], true).expect("write");
        let two: Vec<String> = private
            .load()
            .expect("two keys")
            .iter()
            .map(|k| k.kid().to_string())
            .collect();
        assert_eq!(two, [key.kid(), other.kid()]);
        std::fs::write(&path, "not a key\n").expect("write");
        assert!(matches!(private.load(), Err(KeyError::Malformed { .. })));
    }
}
