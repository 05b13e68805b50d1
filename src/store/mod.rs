//! The state store: leases, the receipt log, revoked token ids.
//!
//! One interface, [`Backend`], in domain rows, implemented once over sqlx
//! (`sql.rs`) for two databases: SQLite, embedded (one file, WAL,
//! `synchronous = FULL` so a returned receipt is on disk), and PostgreSQL,
//! shared by several replicas.
//! Every guarantee that matters (single-use leases, one linear log) is
//! enforced by a constraint or a compare-and-set in the database itself, not
//! by process memory, so it holds across restarts and processes.

mod sql;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::StoreTarget;
use sql::SqlBackend;

pub(crate) const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_quorum.sql")),
    (3, include_str!("../../migrations/sqlite/0003_merkle.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_rejections.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_lease_requester_token.sql"),
    ),
    (6, include_str!("../../migrations/sqlite/0006_inbox.sql")),
    (
        7,
        include_str!("../../migrations/sqlite/0007_rate_limits.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_server_keys.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_cosigned_checkpoints.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_terminal_slots.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_passkeys.sql"),
    ),
];

pub(crate) const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_leaf_hash_required.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_rejections.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_lease_requester_token.sql"),
    ),
    (5, include_str!("../../migrations/postgres/0005_inbox.sql")),
    (
        6,
        include_str!("../../migrations/postgres/0006_rate_limits.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_server_keys.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_cosigned_checkpoints.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_terminal_slots.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_passkeys.sql"),
    ),
];

/// Store failures. `Display` is safe to show a caller; the underlying
/// database error goes to the log only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or failed; the call fails closed.
    #[error("the state store is unavailable")]
    Unavailable,
    /// The row exists already (an approver approving twice, a lease id
    /// used twice): retrying cannot help.
    #[error("the record exists already")]
    Duplicate,
    /// Another writer (a replica, `dualtrust approve`) appended to the log
    /// first: re-read the log and rebuild the batch.
    #[error("another writer appended to the log first")]
    LogMoved,
    /// A stored row does not parse: the store was edited outside dualtrust.
    #[error("the state store holds a corrupt record")]
    Corrupt,
    /// The batch was signed by a key that is no longer the log's active
    /// server key (another process rotated it): load the active key, re-sign.
    #[error("the server key was rotated; the batch is not signed by the active key")]
    KeyRotated,
    /// The subject already holds the maximum number of open leases.
    #[error("too many open leases for this subject; redeem or let some expire first")]
    TooManyOpenLeases,
}

/// Where a lease is in its life. Only `ready`/`pending_approval` can be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    PendingApproval,
    Ready,
    Consumed,
    Expired,
    Revoked,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Ready => "ready",
            Self::Consumed => "consumed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_approval" => Self::PendingApproval,
            "ready" => Self::Ready,
            "consumed" => Self::Consumed,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// One stored receipt as the store holds it, derived columns included. The
/// store does not interpret the receipt: the audit log writes and reads it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: u64,
    /// The `hash` column (the receipt's hash when it was written).
    pub hash: String,
    /// The RFC 6962 leaf hash column; `None` for receipts a SQLite store
    /// holds from before the column existed (stored as '', which only the
    /// backend knows).
    pub leaf_hash: Option<String>,
    /// The receipt's JSON, the bytes everything else derives from.
    pub receipt: String,
    /// The lease the receipt names (an index for approvers' history).
    pub lease: Option<String>,
}

/// The newest receipt of the log: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    pub seq: u64,
    pub hash: String,
}

/// A server key as the log's key registry holds it: which positions of the
/// log it may sign (receipts `from_seq..until_seq`, checkpoints of sizes
/// `from_seq..=until_seq`) and when it was active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub kid: String,
    /// The Ed25519 public key, base64url (a JWK's `x`).
    pub public_key: String,
    pub from_seq: u64,
    /// `None` for the active key.
    pub until_seq: Option<u64>,
    /// The RFC 6962 root (hex) of the log at `until_seq`.
    pub until_root: Option<String>,
    pub activated_ms: u64,
    pub retired_ms: Option<u64>,
}

/// The log's origin and the keys that signed it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogKeys {
    pub origin: Option<String>,
    pub keys: Vec<KeyRecord>,
}

/// A lease for one exact call: (subject, tool, argument digest) until expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub subject: String,
    pub tool: String,
    pub args_digest: String,
    pub scope: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub state: LeaseState,
    /// What the call does, for approvers.
    pub summary: String,
    /// The canonical arguments, for approvers to read.
    pub args_json: String,
    /// Approvals needed; 0 for an explicit lease without quorum.
    pub quorum_k: u32,
    /// The `jti` of the token that asked, when it had one.
    pub requester_token: Option<String>,
    /// The client address the call came from, over HTTP.
    pub requester_address: Option<String>,
}

/// A rejection as stored: who refused a held call, why, and their signature
/// over the lease and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRejection {
    pub approver_id: String,
    pub signature: String,
    pub reason: String,
    pub signed_at: u64,
}

/// Where a held call's rejections stand after one more was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionTally {
    pub rejections: u32,
    /// The last rejection needed: the lease is revoked.
    pub ended: bool,
}

/// An approval as stored: the signature is checked again at every use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApproval {
    pub approver_id: String,
    pub signature: String,
    pub signed_at: u64,
}

/// A passkey an approver registered in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    /// base64url, as the browser reports it.
    pub credential_id: String,
    pub approver_id: String,
    /// The COSE_Key, base64url.
    pub public_key: String,
    /// Counted only once an operator confirmed it, and not once revoked.
    pub confirmed: bool,
    pub registered_at: u64,
    pub confirmed_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

/// What the store does, in domain rows. Every guarantee is the database's:
/// a lease is consumed by one compare-and-set, a batch of receipts lands
/// only where the log ends.
pub trait Backend: Send + Sync {
    /// Creates the schema, or brings it up to date.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Stores a lease for later redemption, unless its subject holds
    /// `max_open` open leases already (`TooManyOpenLeases`).
    fn issue_lease<'a>(
        &'a self,
        lease: &'a Lease,
        max_open: u32,
        now: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// True only for the one caller that moves `lease` (by id, for its own
    /// subject, tool and digest, before expiry) from ready or pending to
    /// consumed.
    fn consume_lease<'a>(
        &'a self,
        lease: &'a Lease,
        now: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn lease<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Lease>, StoreError>>;
    /// Leases waiting for approval and not yet expired, oldest first.
    fn pending_leases(&self, now: u64) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>>;
    /// Held calls (leases that needed approvals) no longer waiting, because
    /// they ran, were rejected or expired: newest first, at most `limit`.
    fn decided_leases(&self, now: u64, limit: u32)
    -> BoxFuture<'_, Result<Vec<Lease>, StoreError>>;
    /// Marks the held calls whose approval window closed as `expired` and
    /// returns them: each lease is returned once, to one caller, however
    /// many replicas sweep at once.
    fn expire_held(&self, now: u64) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>>;
    /// The first `limit` stored receipts that name `lease_id`, in log order.
    fn lease_receipts<'a>(
        &'a self,
        lease_id: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<LogRow>, StoreError>>;
    /// A second approval by the same approver is `Duplicate`.
    fn record_approval<'a>(
        &'a self,
        approval: &'a StoredApproval,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn approvals<'a>(
        &'a self,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredApproval>, StoreError>>;
    /// Records a rejection of a lease still pending approval and not
    /// expired, and ends it (revoked) once `needed` approvers have rejected
    /// it. `None` if the lease no longer waits; a second rejection by the
    /// same approver is `Duplicate`.
    fn reject_lease<'a>(
        &'a self,
        lease_id: &'a str,
        rejection: &'a StoredRejection,
        now: u64,
        needed: u32,
    ) -> BoxFuture<'a, Result<Option<RejectionTally>, StoreError>>;
    /// The rejections of a lease, oldest first.
    fn rejections<'a>(
        &'a self,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredRejection>, StoreError>>;
    /// Records a newly registered, unconfirmed passkey and its first
    /// counter; a credential id already known is `Duplicate`.
    fn register_passkey<'a>(
        &'a self,
        passkey: &'a StoredPasskey,
        sign_count: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Registered passkeys, of one approver or of all, oldest first.
    fn passkeys<'a>(
        &'a self,
        approver_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredPasskey>, StoreError>>;
    /// Confirms a pending registration: whether one was pending.
    fn confirm_passkey<'a>(
        &'a self,
        credential_id: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Revokes a pending or confirmed registration: the passkey it was
    /// before, if there was one to revoke.
    fn revoke_passkey<'a>(
        &'a self,
        credential_id: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<StoredPasskey>, StoreError>>;
    /// Moves a credential's counter to `reported` if that is an advance
    /// ([`crate::webauthn::counter_advances`]), atomically across replicas:
    /// whether it advanced.
    fn advance_passkey_counter<'a>(
        &'a self,
        credential_id: &'a str,
        reported: u32,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The revoked ids with `revoked_at >= since`, and when.
    fn revoked_since(&self, since: u64) -> BoxFuture<'_, Result<Vec<(String, u64)>, StoreError>>;
    fn revoke<'a>(&'a self, jti: &'a str, now: u64) -> BoxFuture<'a, Result<(), StoreError>>;
    /// One call against the shared GCRA bucket `key` (one arrival per
    /// `interval_ms`, bursts up to `burst_ms` of them), taken atomically for
    /// every replica: `None` when allowed, else how many ms until it would be.
    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        now_ms: u64,
        interval_ms: u64,
        burst_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// Takes one of `subject`'s at most `max` concurrency slots, as `id`,
    /// lapsing at `expires_ms`, atomically for every replica (slots lapsed
    /// by `now_ms` do not count): whether it was taken.
    fn take_slot<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        max: usize,
        now_ms: u64,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn release_slot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Forgets buckets that have refilled (their state says nothing more)
    /// and terminal slots that lapsed.
    fn prune_rates(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// The newest receipt's place: `None` for an empty log.
    fn log_head(&self) -> BoxFuture<'_, Result<Option<LogHead>, StoreError>>;
    /// Appends a batch of receipts (with their RFC 6962 leaf hashes), and
    /// stores the already-consumed leases of the ordinary calls they
    /// record, in one transaction: all become durable together or none
    /// does. `build` is called once, under the log's lock, with the rows
    /// other writers appended from `base` on, and returns the batch
    /// continuing after them. Without `rebuild`, any such rows end the
    /// attempt (`LogMoved`: catch up and retry); with it, they are handed
    /// to `build`, so the batch cannot lose to another replica (unless the
    /// caller is too far behind). `signer` must be the registry's active
    /// key, active from before the batch (`KeyRotated` otherwise).
    fn append_receipts<'a>(
        &'a self,
        signer: &'a str,
        base: u64,
        rebuild: bool,
        build: &'a mut BuildBatch<'_>,
        consumed_leases: &'a [&'a Lease],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The log's origin and key registry.
    fn log_keys(&self) -> BoxFuture<'_, Result<LogKeys, StoreError>>;
    /// Fixes the log's origin and first key where none is recorded yet
    /// (the first start, or a log from before the registry), or afresh
    /// while the log holds no receipt (its key signed nothing: `init` ran
    /// before the deployment's key was put in place). Otherwise what is
    /// recorded stays. Returns what is recorded.
    fn adopt_log_keys<'a>(
        &'a self,
        origin: &'a str,
        first: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<LogKeys, StoreError>>;
    /// Retires the active key `retiring` at log size `at_seq` (whose root is
    /// `until_root`) and activates `next` from there, atomically with
    /// respect to appends: `LogMoved` if the log no longer ends at
    /// `at_seq`, `KeyRotated` if `retiring` is not the active key.
    fn rotate_key<'a>(
        &'a self,
        retiring: &'a str,
        at_seq: u64,
        until_root: &'a str,
        next: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Keeps a checkpoint with the cosignatures of `cosigners` witnesses
    /// gathered for it; for one size, the note with the most is kept.
    fn record_cosigned<'a>(
        &'a self,
        size: u64,
        cosigners: u64,
        note: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The largest cosigned checkpoint kept.
    fn latest_cosigned(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    /// The stored rows of the log from `from_seq` on, in order, at most `limit`.
    fn log_rows(&self, from_seq: u64, limit: u32)
    -> BoxFuture<'_, Result<Vec<LogRow>, StoreError>>;
}

/// Builds a batch of log rows on the rows other writers appended (given
/// in order); called once, under the log's lock.
pub type BuildBatch<'b> = dyn FnMut(&[LogRow]) -> Result<Vec<LogRow>, StoreError> + Send + 'b;

/// The state store the server opened: a [`Backend`] behind a cheap handle.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Appends `batch` exactly where the log ends (`LogMoved` if another
    /// writer appended since `batch` was built): for callers that build
    /// rows themselves rather than on what the lock finds.
    pub async fn insert_receipts(
        &self,
        signer: &str,
        batch: &[LogRow],
        consumed_leases: &[&Lease],
    ) -> Result<(), StoreError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let mut build = |tail: &[LogRow]| {
            if tail.is_empty() {
                Ok(batch.to_vec())
            } else {
                Err(StoreError::LogMoved)
            }
        };
        self.append_receipts(signer, first.seq, false, &mut build, consumed_leases)
            .await
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    /// Opens the store named by `target`, creating and migrating it.
    pub async fn open(target: &StoreTarget) -> Result<Self, StoreError> {
        match target {
            StoreTarget::Sqlite(path) => Self::open_sqlite(path).await,
            StoreTarget::Postgres {
                url,
                max_connections,
            } => Self::open_postgres(url.expose(), *max_connections).await,
        }
    }

    /// Opens (creating if missing) the SQLite store at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|_| StoreError::Unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unreachable)?;
        Self::migrated(SqlBackend::new(pool)).await
    }

    /// Connects to a PostgreSQL store shared by replicas and migrates it
    /// (serialized, so replicas starting together agree).
    pub async fn open_postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // A connection broken while PostgreSQL was away is replaced,
            // not handed to the next call.
            .test_before_acquire(true)
            .connect(url)
            .await
            .map_err(unreachable)?;
        Self::migrated(SqlBackend::new(pool)).await
    }

    async fn migrated(backend: impl Backend + 'static) -> Result<Self, StoreError> {
        backend.migrate().await?;
        Ok(Self {
            backend: Arc::new(backend),
        })
    }
}

fn unreachable(error: sqlx::Error) -> StoreError {
    tracing::error!(%error, "the state store cannot be opened");
    StoreError::Unavailable
}

/// A throwaway database on the test PostgreSQL (127.0.0.1:5432, trust
/// auth), for the store's and the gate's unit tests.
#[cfg(test)]
pub(crate) struct TempPgDatabase {
    admin: sqlx::PgPool,
    name: String,
    pub url: String,
}

#[cfg(test)]
#[allow(clippy::expect_used)]
impl TempPgDatabase {
    pub(crate) async fn create() -> Self {
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
            .await
            .expect("the test PostgreSQL on 127.0.0.1:5432");
        let name = format!("dt_unit_{}", crate::random_id().expect("id"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { admin, name, url }
    }

    /// Drops it at once, connections and all (also what an outage looks
    /// like to a store still holding a pool on it).
    pub(crate) async fn remove(self) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str) -> Lease {
        Lease {
            id: id.into(),
            subject: "alice".into(),
            tool: "db.query".into(),
            args_digest: "d".into(),
            scope: "db:read".into(),
            issued_at: 100,
            expires_at: 200,
            state: LeaseState::Ready,
            summary: String::new(),
            args_json: "{}".into(),
            quorum_k: 0,
            requester_token: None,
            requester_address: None,
        }
    }

    fn consumed_draft(lease_id: &str) -> crate::audit::ReceiptDraft {
        crate::audit::ReceiptDraft {
            tool: "db.query".into(),
            lease: Some(lease_id.into()),
            consumed_lease: Some(Lease {
                state: LeaseState::Consumed,
                ..lease(lease_id)
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_ordinary_lease_is_stored_consumed_with_its_receipt_once_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = Store::open_sqlite(&path).await.expect("open");
        let key = crate::keys::KeyPair::generate().expect("key");
        let keys = crate::keyring::ServerKeys::single(&store, key)
            .await
            .expect("keys");
        let log = crate::audit::AuditLog::open(store.clone(), keys.clone())
            .await
            .expect("log");
        log.append(consumed_draft("l1")).await.expect("first");
        // The same lease again: the whole batch fails at once, the receipt
        // with it (a duplicate is not retried as if the log had moved).
        assert!(matches!(
            log.append(consumed_draft("l1")).await,
            Err(StoreError::Duplicate)
        ));
        assert_eq!(
            store.log_head().await.expect("head").map(|h| h.seq),
            Some(0)
        );
        // A consumed lease cannot be redeemed.
        assert!(
            !store
                .consume_lease(&lease("l1"), 150)
                .await
                .expect("consume")
        );
        drop(log);
        drop(store);
        let store = Store::open_sqlite(&path).await.expect("reopen");
        assert_eq!(
            store.lease("l1").await.expect("q").map(|l| l.state),
            Some(LeaseState::Consumed)
        );
        assert_eq!(
            store.log_head().await.expect("head").map(|h| h.seq),
            Some(0)
        );
    }

    /// Held calls end once when their window closes, however many sweep;
    /// the decided ones are listed newest first with the receipts naming
    /// them. Run on both backends.
    async fn held_leases_expire_once_and_are_listed_with_their_receipts(store: Store) {
        let held = |id: &str, issued_at: u64| Lease {
            state: LeaseState::PendingApproval,
            quorum_k: 2,
            issued_at,
            expires_at: issued_at + 100,
            ..lease(id)
        };
        for (id, at) in [("old", 100), ("new", 150), ("open", 1_000)] {
            let lease = held(id, at);
            store.issue_lease(&lease, 10, at).await.expect("issue");
        }
        let key = crate::keys::KeyPair::generate().expect("key");
        let keys = crate::keyring::ServerKeys::single(&store, key)
            .await
            .expect("keys");
        let log = crate::audit::AuditLog::open(store.clone(), keys)
            .await
            .expect("log");
        for id in ["old", "new", "old"] {
            let draft = crate::audit::ReceiptDraft {
                tool: "db.query".into(),
                lease: Some(id.into()),
                ..Default::default()
            };
            log.append(draft).await.expect("append");
        }
        let (one, other) = (store.clone(), store.clone());
        let (first, second) = tokio::join!(one.expire_held(300), other.expire_held(300));
        let mut ended: Vec<String> = first
            .expect("sweep")
            .into_iter()
            .chain(second.expect("sweep"))
            .map(|l| l.id)
            .collect();
        ended.sort();
        assert_eq!(ended, ["new", "old"], "each ended exactly once");
        assert!(store.expire_held(300).await.expect("sweep").is_empty());
        let decided: Vec<String> = store
            .decided_leases(300, 10)
            .await
            .expect("decided")
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(decided, ["new", "old"], "newest first, the open one not");
        let first: Vec<u64> = store
            .lease_receipts("old", 1)
            .await
            .expect("receipts")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(first, [0], "at most the limit, oldest first");
        let seqs: Vec<u64> = store
            .lease_receipts("old", 10)
            .await
            .expect("receipts")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [0, 2]);
        assert_eq!(
            store.lease("old").await.expect("lease").map(|l| l.state),
            Some(LeaseState::Expired)
        );
    }

    #[tokio::test]
    async fn held_leases_expire_once_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("open");
        held_leases_expire_once_and_are_listed_with_their_receipts(store).await;
    }

    /// A shared GCRA bucket: the burst, then one call per interval, the
    /// wait it names; on both backends.
    async fn rate_buckets_refill_at_their_rate(store: Store) {
        let (interval, burst) = (12_000, 60_000); // 5 per minute
        for _ in 0..5 {
            assert_eq!(
                store
                    .take_rate("k", 1_000_000, interval, burst)
                    .await
                    .expect("take"),
                None
            );
        }
        let wait = store
            .take_rate("k", 1_000_000, interval, burst)
            .await
            .expect("take");
        assert_eq!(wait, Some(12_000));
        assert_eq!(
            store
                .take_rate("other", 1_000_000, interval, burst)
                .await
                .expect("take"),
            None,
            "buckets are per key"
        );
        assert_eq!(
            store
                .take_rate("k", 1_012_000, interval, burst)
                .await
                .expect("take"),
            None
        );
        assert!(
            store
                .take_rate("k", 1_012_000, interval, burst)
                .await
                .expect("take")
                .is_some()
        );
        // Refilled buckets are pruned; a pruned bucket starts full again.
        assert_eq!(store.prune_rates(2_000_000).await.expect("prune"), 2);
        assert_eq!(
            store
                .take_rate("k", 2_000_000, interval, burst)
                .await
                .expect("take"),
            None
        );
    }

    #[tokio::test]
    async fn rate_buckets_refill_at_their_rate_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("store.db"))
            .await
            .expect("open");
        rate_buckets_refill_at_their_rate(store).await;
    }

    /// Two replicas taking one subject's budget at once: exactly the budget
    /// passes, whichever replica each call reached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_shared_rate_budget_holds_across_racing_replicas() {
        let database = TempPgDatabase::create().await;
        let url = database.url.clone();
        let replicas = [
            Store::open_postgres(&url, 8).await.expect("open"),
            Store::open_postgres(&url, 8).await.expect("open"),
        ];
        rate_buckets_refill_at_their_rate(replicas[0].clone()).await;
        let takes = (0..60).map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move { store.take_rate("race", 5_000_000, 6_000, 60_000).await })
        });
        let mut allowed = 0;
        for take in futures_util::future::join_all(takes).await {
            if take.expect("task").expect("take").is_none() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10);
        drop(replicas);
        database.remove().await;
    }

    /// Two replicas issuing one subject's leases at once: the cap holds
    /// exactly (counting and inserting are one step per subject).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_open_lease_cap_holds_across_racing_replicas() {
        let database = TempPgDatabase::create().await;
        let url = database.url.clone();
        let replicas = [
            Store::open_postgres(&url, 8).await.expect("open"),
            Store::open_postgres(&url, 8).await.expect("open"),
        ];
        let attempts = (0..40).map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move {
                let lease = Lease {
                    expires_at: 10_000,
                    ..lease(&format!("lease-{i}"))
                };
                store.issue_lease(&lease, 5, 100).await
            })
        });
        let mut issued = 0;
        for attempt in futures_util::future::join_all(attempts).await {
            match attempt.expect("task") {
                Ok(()) => issued += 1,
                Err(StoreError::TooManyOpenLeases) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(issued, 5);
        drop(replicas);
        database.remove().await;
    }

    /// The terminal's concurrency cap as one cap across racing replicas:
    /// exactly `max` of 40 concurrent takes win; a released slot and a
    /// lapsed one are free again.
    #[tokio::test]
    async fn the_terminal_slot_cap_holds_across_racing_replicas() {
        let database = TempPgDatabase::create().await;
        let replicas = [
            Store::open_postgres(&database.url, 8).await.expect("open"),
            Store::open_postgres(&database.url, 8).await.expect("open"),
        ];
        let attempts = (0..40).map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move {
                let id = format!("slot-{i}");
                store
                    .take_slot("alice", &id, 3, 1_000, 5_000)
                    .await
                    .map(|taken| taken.then_some(id))
            })
        });
        let mut taken = Vec::new();
        for attempt in futures_util::future::join_all(attempts).await {
            if let Some(id) = attempt.expect("task").expect("store") {
                taken.push(id);
            }
        }
        assert_eq!(taken.len(), 3, "{taken:?}");
        let store = &replicas[0];
        assert!(
            !store
                .take_slot("alice", "x", 3, 1_000, 5_000)
                .await
                .expect("take")
        );
        assert!(
            store
                .take_slot("bob", "b", 3, 1_000, 5_000)
                .await
                .expect("take"),
            "per subject"
        );
        store.release_slot(&taken[0]).await.expect("release");
        assert!(
            store
                .take_slot("alice", "y", 3, 1_000, 5_000)
                .await
                .expect("take")
        );
        assert!(
            !store
                .take_slot("alice", "z", 3, 1_000, 5_000)
                .await
                .expect("take")
        );
        // After their lifetime, slots a dead replica held no longer count.
        assert!(
            store
                .take_slot("alice", "z", 3, 5_000, 9_000)
                .await
                .expect("take")
        );
        drop(replicas);
        database.remove().await;
    }

    /// Replicas gathering cosignatures for one size: the fuller note stays.
    #[tokio::test]
    async fn the_cosigned_checkpoint_with_most_witnesses_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("store");
        store.record_cosigned(5, 2, "two").await.expect("record");
        store.record_cosigned(5, 1, "one").await.expect("record");
        assert_eq!(
            store.latest_cosigned().await.expect("read").as_deref(),
            Some("two")
        );
        store.record_cosigned(5, 3, "three").await.expect("record");
        store.record_cosigned(4, 3, "older").await.expect("record");
        assert_eq!(
            store.latest_cosigned().await.expect("read").as_deref(),
            Some("three")
        );
    }

    #[tokio::test]
    async fn held_leases_expire_once_on_postgres() {
        let database = TempPgDatabase::create().await;
        let url = database.url.clone();
        let store = Store::open_postgres(&url, 4).await.expect("open");
        held_leases_expire_once_and_are_listed_with_their_receipts(store.clone()).await;
        drop(store);
        database.remove().await;
    }

    /// A registration waits for its confirmation, a credential id is taken
    /// once, and of many replicas handed the same counter value only one
    /// moves the counter on (the rest see a replay).
    async fn passkeys_register_confirm_and_count_once(replicas: [Store; 2]) {
        let store = &replicas[0];
        let passkey = StoredPasskey {
            credential_id: "cred-1".into(),
            approver_id: "alice".into(),
            public_key: "cose".into(),
            confirmed: false,
            registered_at: 10,
            confirmed_at: None,
            revoked_at: None,
        };
        store.register_passkey(&passkey, 3).await.expect("register");
        assert!(matches!(
            replicas[1].register_passkey(&passkey, 0).await,
            Err(StoreError::Duplicate)
        ));
        assert_eq!(
            store.passkeys(Some("alice")).await.expect("list"),
            std::slice::from_ref(&passkey)
        );
        assert!(store.passkeys(Some("bob")).await.expect("list").is_empty());
        assert!(store.confirm_passkey("cred-1", 11).await.expect("confirm"));
        assert!(!store.confirm_passkey("cred-1", 12).await.expect("once"));
        assert!(!store.confirm_passkey("nope", 12).await.expect("unknown"));
        let listed = store.passkeys(None).await.expect("list");
        assert!(listed[0].confirmed && listed[0].confirmed_at == Some(11));
        assert!(
            !store
                .advance_passkey_counter("cred-1", 3)
                .await
                .expect("same")
        );
        let racing = (0..20).map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move { store.advance_passkey_counter("cred-1", 4).await })
        });
        let advanced = futures_util::future::join_all(racing)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(true))))
            .count();
        assert_eq!(advanced, 1, "one assertion, one count");
        assert!(
            !store
                .advance_passkey_counter("cred-1", 2)
                .await
                .expect("back")
        );
        let revoked = store.revoke_passkey("cred-1", 13).await.expect("revoke");
        assert!(revoked.is_some_and(|p| p.confirmed));
        assert_eq!(
            store.revoke_passkey("cred-1", 14).await.expect("once"),
            None
        );
        let listed = store.passkeys(None).await.expect("list");
        assert!(!listed[0].confirmed && listed[0].revoked_at == Some(13));
        assert!(
            !store
                .confirm_passkey("cred-1", 15)
                .await
                .expect("not again")
        );
        // A pinned credential's first use starts its row; a counter-less
        // authenticator keeps reporting zero.
        assert!(
            store
                .advance_passkey_counter("pinned", 0)
                .await
                .expect("first")
        );
        assert!(
            store
                .advance_passkey_counter("pinned", 0)
                .await
                .expect("zero again")
        );
        assert!(
            store
                .advance_passkey_counter("pinned", 1)
                .await
                .expect("starts counting")
        );
        assert!(
            !store
                .advance_passkey_counter("pinned", 0)
                .await
                .expect("then never zero")
        );
    }

    #[tokio::test]
    async fn passkeys_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let first = Store::open_sqlite(&path).await.expect("store");
        let second = Store::open_sqlite(&path).await.expect("store");
        passkeys_register_confirm_and_count_once([first, second]).await;
    }

    #[tokio::test]
    async fn passkeys_on_postgres() {
        let database = TempPgDatabase::create().await;
        let replicas = [
            Store::open_postgres(&database.url, 8).await.expect("open"),
            Store::open_postgres(&database.url, 8).await.expect("open"),
        ];
        passkeys_register_confirm_and_count_once(replicas.clone()).await;
        drop(replicas);
        database.remove().await;
    }
}
