//! The one implementation of [`Backend`], generic over sqlx's `Database`:
//! every statement is the same text on SQLite and PostgreSQL (`$n`
//! placeholders, which SQLite reads as numbered parameters too; the
//! multi-row INSERTs are built by sqlx's `QueryBuilder`, which writes each
//! database's own), and what differs (how a writing transaction starts, how replicas are kept from
//! appending at once) is the backend's [`Dialect`].

use futures_util::future::BoxFuture;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row,
    Transaction, Type,
};

use super::{
    Backend, BuildBatch, KeyRecord, Lease, LeaseState, LogHead, LogKeys, LogRow,
    POSTGRES_MIGRATIONS, RejectionTally, SQLITE_MIGRATIONS, StoreError, StoredApproval,
    StoredPasskey, StoredRejection,
};

/// What one database does its own way.
pub(super) trait Dialect: Database {
    const MIGRATIONS: &'static [(i64, &'static str)];

    /// Run first in a transaction that appends to the log or migrates, so
    /// that replicas sharing the store take turns.
    const SERIALIZE: Option<&'static str>;
    /// Serializes one subject's lease issuance across every replica for
    /// the rest of the transaction (`$1`: the subject), so the open-lease
    /// cap is counted and kept in one step; `None` where `begin_write`
    /// already takes the database's only write lock.
    const SERIALIZE_SUBJECT: Option<&'static str>;

    /// A transaction that will write.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>>;

    fn rows_affected(result: &Self::QueryResult) -> u64;
}

impl Dialect for sqlx::Sqlite {
    const MIGRATIONS: &'static [(i64, &'static str)] = SQLITE_MIGRATIONS;
    // One writer at a time already: the write lock of `BEGIN IMMEDIATE`.
    const SERIALIZE: Option<&'static str> = None;
    const SERIALIZE_SUBJECT: Option<&'static str> = None;

    /// `BEGIN IMMEDIATE` takes the write lock (waiting up to the busy
    /// timeout) before the first read; a deferred transaction that reads and
    /// then writes fails at once with SQLITE_BUSY when another connection is
    /// writing.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        Box::pin(pool.begin_with("BEGIN IMMEDIATE"))
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

impl Dialect for sqlx::Postgres {
    const MIGRATIONS: &'static [(i64, &'static str)] = POSTGRES_MIGRATIONS;
    // An advisory lock shared by all replicas, released with the
    // transaction; the key is "dualtrst" in ASCII.
    const SERIALIZE: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(7238799094505960308)");
    // Keyed by ("leas" in ASCII, the subject's hash): two subjects rarely
    // share a key, and when they do they only wait for each other.
    const SERIALIZE_SUBJECT: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(1818583411, hashtext($1))");

    fn begin_write(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        Box::pin(pool.begin())
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

pub(super) struct SqlBackend<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> SqlBackend<DB> {
    pub(super) fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

fn failed(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
    {
        return StoreError::Duplicate;
    }
    tracing::error!(%error, "state store error");
    StoreError::Unavailable
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt)
}

// A macro so that the column list is part of each statement's constant text.
macro_rules! log_columns {
    () => {
        "seq, hash, leaf_hash, receipt, lease"
    };
}
macro_rules! lease_columns {
    () => {
        "id, subject, tool, args_digest, scope, issued_at, expires_at, state, summary, args_json, quorum_k, requester_token, requester_address"
    };
}

/// Rows per multi-row INSERT: far below SQLite's 32,766 and PostgreSQL's
/// 65,535 bound parameters at 14 columns.
const ROWS_PER_INSERT: usize = 500;

/// The single-use compare-and-set: only the one caller that moves this
/// lease to `consumed`, for its own subject, tool and argument digest,
/// before expiry, changes a row. Quorum is checked by the gate before it
/// calls this; approvals can only be added, never withdrawn.
const CONSUME_LEASE: &str = "UPDATE leases SET state = 'consumed', consumed_at = $1 \
     WHERE id = $2 AND state IN ('ready', 'pending_approval') AND subject = $3 AND tool = $4 AND args_digest = $5 AND expires_at > $1";

fn lease_from_row<R>(row: &R) -> Result<Lease, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let get_u64 = |name: &str| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(name).map_err(|_| StoreError::Corrupt)?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt)
    };
    let get_str = |name: &str| -> Result<String, StoreError> {
        row.try_get(name).map_err(|_| StoreError::Corrupt)
    };
    Ok(Lease {
        id: get_str("id")?,
        subject: get_str("subject")?,
        tool: get_str("tool")?,
        args_digest: get_str("args_digest")?,
        scope: get_str("scope")?,
        issued_at: get_u64("issued_at")?,
        expires_at: get_u64("expires_at")?,
        state: LeaseState::parse(&get_str("state")?).ok_or(StoreError::Corrupt)?,
        summary: get_str("summary")?,
        args_json: get_str("args_json")?,
        quorum_k: u32::try_from(get_u64("quorum_k")?).map_err(|_| StoreError::Corrupt)?,
        requester_token: row
            .try_get("requester_token")
            .map_err(|_| StoreError::Corrupt)?,
        requester_address: row
            .try_get("requester_address")
            .map_err(|_| StoreError::Corrupt)?,
    })
}

/// Stores `leases` with as few statements as the bound-parameter limits
/// allow: each statement is a hand-off to the database's worker.
async fn insert_leases<DB>(conn: &mut DB::Connection, leases: &[&Lease]) -> Result<(), StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
{
    for chunk in leases.chunks(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO leases (id, subject, tool, args_digest, scope, issued_at, expires_at, state, summary, args_json, quorum_k, consumed_at, requester_token, requester_address) ",
        );
        insert.push_values(chunk, |mut row, lease| {
            row.push_bind(lease.id.clone())
                .push_bind(lease.subject.clone())
                .push_bind(lease.tool.clone())
                .push_bind(lease.args_digest.clone())
                .push_bind(lease.scope.clone())
                .push_bind(to_i64(lease.issued_at))
                .push_bind(to_i64(lease.expires_at))
                .push_bind(lease.state.as_str().to_string())
                .push_bind(lease.summary.clone())
                .push_bind(lease.args_json.clone())
                .push_bind(i64::from(lease.quorum_k))
                // A lease stored already consumed was minted and used at once.
                .push_bind((lease.state == LeaseState::Consumed).then(|| to_i64(lease.issued_at)))
                .push_bind(lease.requester_token.clone())
                .push_bind(lease.requester_address.clone());
        });
        insert.build().execute(&mut *conn).await.map_err(failed)?;
    }
    Ok(())
}

type KeyColumns = (
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);

async fn read_log_keys<DB>(conn: &mut DB::Connection) -> Result<LogKeys, StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let origin: Option<(String,)> = sqlx::query_as("SELECT origin FROM log_origin")
        .fetch_optional(&mut *conn)
        .await
        .map_err(failed)?;
    let rows: Vec<KeyColumns> = sqlx::query_as(
        "SELECT kid, public_key, from_seq, until_seq, until_root, activated_ms, retired_ms \
         FROM server_keys ORDER BY from_seq, activated_ms",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(failed)?;
    let keys = rows
        .into_iter()
        .map(
            |(kid, public_key, from_seq, until_seq, until_root, activated_ms, retired_ms)| {
                Ok(KeyRecord {
                    kid,
                    public_key,
                    from_seq: to_u64(from_seq)?,
                    until_seq: until_seq.map(to_u64).transpose()?,
                    until_root,
                    activated_ms: to_u64(activated_ms)?,
                    retired_ms: retired_ms.map(to_u64).transpose()?,
                })
            },
        )
        .collect::<Result<_, StoreError>>()?;
    Ok(LogKeys {
        origin: origin.map(|(o,)| o),
        keys,
    })
}

async fn insert_key<DB>(conn: &mut DB::Connection, key: &KeyRecord) -> Result<(), StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO server_keys (kid, public_key, from_seq, activated_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(key.kid.clone())
    .bind(key.public_key.clone())
    .bind(to_i64(key.from_seq))
    .bind(to_i64(key.activated_ms))
    .execute(conn)
    .await
    .map_err(failed)?;
    Ok(())
}

async fn serialize<DB>(conn: &mut DB::Connection) -> Result<(), StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
{
    if let Some(statement) = DB::SERIALIZE {
        sqlx::query(statement).execute(conn).await.map_err(failed)?;
    }
    Ok(())
}

impl<DB> Backend for SqlBackend<DB>
where
    DB: Dialect,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await.map_err(failed)?;
            serialize::<DB>(&mut tx).await?;
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            for (version, text) in DB::MIGRATIONS {
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                        .bind(*version)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(failed)?;
                if done.is_some() {
                    continue;
                }
                sqlx::raw_sql(*text)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(*version)
                    .bind(to_i64(crate::now_unix()))
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            tx.commit().await.map_err(failed)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(failed)
        })
    }

    fn issue_lease<'a>(
        &'a self,
        lease: &'a Lease,
        max_open: u32,
        now: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            if let Some(lock) = DB::SERIALIZE_SUBJECT {
                sqlx::query(lock)
                    .bind(lease.subject.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM leases WHERE subject = $1 AND state IN ('pending_approval', 'ready') AND expires_at > $2",
            )
            .bind(lease.subject.clone())
            .bind(to_i64(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
            if open >= i64::from(max_open) {
                return Err(StoreError::TooManyOpenLeases);
            }
            insert_leases::<DB>(&mut tx, &[lease]).await?;
            tx.commit().await.map_err(failed)
        })
    }

    fn consume_lease<'a>(
        &'a self,
        lease: &'a Lease,
        now: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let result = sqlx::query(CONSUME_LEASE)
                .bind(to_i64(now))
                .bind(lease.id.clone())
                .bind(lease.subject.clone())
                .bind(lease.tool.clone())
                .bind(lease.args_digest.clone())
                .execute(&self.pool)
                .await
                .map_err(failed)?;
            Ok(DB::rows_affected(&result) == 1)
        })
    }

    fn lease<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                lease_columns!(),
                " FROM leases WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(failed)?;
            row.as_ref().map(lease_from_row).transpose()
        })
    }

    fn pending_leases(&self, now: u64) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                lease_columns!(),
                " FROM leases WHERE state = 'pending_approval' AND expires_at > $1 ORDER BY issued_at"
            ))
            .bind(to_i64(now))
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.iter().map(lease_from_row).collect()
        })
    }

    fn expire_held(&self, now: u64) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            let rows = sqlx::query(concat!(
                "UPDATE leases SET state = 'expired' WHERE state = 'pending_approval' AND expires_at <= $1 RETURNING ",
                lease_columns!()
            ))
            .bind(to_i64(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            rows.iter().map(lease_from_row).collect()
        })
    }

    fn decided_leases(
        &self,
        now: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                lease_columns!(),
                " FROM leases WHERE quorum_k > 0 AND (state <> 'pending_approval' OR expires_at <= $1) ORDER BY issued_at DESC, id LIMIT $2"
            ))
            .bind(to_i64(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.iter().map(lease_from_row).collect()
        })
    }

    fn record_approval<'a>(
        &'a self,
        approval: &'a StoredApproval,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO approvals (lease_id, approver_id, signature, signed_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(lease_id.to_string())
            .bind(approval.approver_id.clone())
            .bind(approval.signature.clone())
            .bind(to_i64(approval.signed_at))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(failed)
        })
    }

    fn approvals<'a>(
        &'a self,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredApproval>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT approver_id, signature, signed_at FROM approvals WHERE lease_id = $1 ORDER BY signed_at, approver_id",
            )
            .bind(lease_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.into_iter()
                .map(|(approver_id, signature, signed_at)| {
                    Ok(StoredApproval {
                        approver_id,
                        signature,
                        signed_at: to_u64(signed_at)?,
                    })
                })
                .collect()
        })
    }

    fn register_passkey<'a>(
        &'a self,
        passkey: &'a StoredPasskey,
        sign_count: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            let known: Option<i64> = sqlx::query_scalar(
                "SELECT sign_count FROM passkey_counters WHERE credential_id = $1",
            )
            .bind(passkey.credential_id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(failed)?;
            if known.is_some() {
                return Err(StoreError::Duplicate);
            }
            sqlx::query(
                "INSERT INTO passkeys (credential_id, approver_id, public_key, state, registered_at) \
                 VALUES ($1, $2, $3, 'pending', $4)",
            )
            .bind(passkey.credential_id.clone())
            .bind(passkey.approver_id.clone())
            .bind(passkey.public_key.clone())
            .bind(to_i64(passkey.registered_at))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            sqlx::query("INSERT INTO passkey_counters (credential_id, sign_count) VALUES ($1, $2)")
                .bind(passkey.credential_id.clone())
                .bind(i64::from(sign_count))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)
        })
    }

    fn passkeys<'a>(
        &'a self,
        approver_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredPasskey>, StoreError>> {
        Box::pin(async move {
            type Row = (
                String,
                String,
                String,
                String,
                i64,
                Option<i64>,
                Option<i64>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT credential_id, approver_id, public_key, state, registered_at, confirmed_at, revoked_at \
                 FROM passkeys WHERE $1 IS NULL OR approver_id = $1 ORDER BY registered_at, credential_id",
            )
            .bind(approver_id.map(String::from))
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.into_iter()
                .map(
                    |(
                        credential_id,
                        approver_id,
                        public_key,
                        state,
                        registered_at,
                        confirmed_at,
                        revoked_at,
                    )| {
                        Ok(StoredPasskey {
                            credential_id,
                            approver_id,
                            public_key,
                            confirmed: state == "active",
                            registered_at: to_u64(registered_at)?,
                            confirmed_at: confirmed_at.map(to_u64).transpose()?,
                            revoked_at: revoked_at.map(to_u64).transpose()?,
                        })
                    },
                )
                .collect()
        })
    }

    fn confirm_passkey<'a>(
        &'a self,
        credential_id: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let result = sqlx::query(
                "UPDATE passkeys SET state = 'active', confirmed_at = $2 \
                 WHERE credential_id = $1 AND state = 'pending'",
            )
            .bind(credential_id.to_string())
            .bind(to_i64(now))
            .execute(&self.pool)
            .await
            .map_err(failed)?;
            Ok(DB::rows_affected(&result) == 1)
        })
    }

    fn revoke_passkey<'a>(
        &'a self,
        credential_id: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<StoredPasskey>, StoreError>> {
        Box::pin(async move {
            let before = self
                .passkeys(None)
                .await?
                .into_iter()
                .find(|p| p.credential_id == credential_id);
            let result = sqlx::query(
                "UPDATE passkeys SET state = 'revoked', revoked_at = $2 \
                 WHERE credential_id = $1 AND state IN ('pending', 'active')",
            )
            .bind(credential_id.to_string())
            .bind(to_i64(now))
            .execute(&self.pool)
            .await
            .map_err(failed)?;
            Ok(before.filter(|_| DB::rows_affected(&result) == 1))
        })
    }

    fn advance_passkey_counter<'a>(
        &'a self,
        credential_id: &'a str,
        reported: u32,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // One statement, so two replicas given the same assertion
            // cannot both see the old counter.
            let advanced: Option<i64> = sqlx::query_scalar(
                "INSERT INTO passkey_counters (credential_id, sign_count) VALUES ($1, $2) \
                 ON CONFLICT (credential_id) DO UPDATE SET sign_count = excluded.sign_count \
                 WHERE passkey_counters.sign_count < excluded.sign_count \
                    OR (passkey_counters.sign_count = 0 AND excluded.sign_count = 0) \
                 RETURNING sign_count",
            )
            .bind(credential_id.to_string())
            .bind(i64::from(reported))
            .fetch_optional(&self.pool)
            .await
            .map_err(failed)?;
            Ok(advanced.is_some())
        })
    }

    fn reject_lease<'a>(
        &'a self,
        lease_id: &'a str,
        rejection: &'a StoredRejection,
        now: u64,
        needed: u32,
    ) -> BoxFuture<'a, Result<Option<RejectionTally>, StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            // Touching the row checks it still waits and, on PostgreSQL,
            // holds its lock to the end, so rejections of one lease count
            // one after the other.
            let pending = sqlx::query(
                "UPDATE leases SET state = state WHERE id = $1 AND state = 'pending_approval' AND expires_at > $2",
            )
            .bind(lease_id.to_string())
            .bind(to_i64(now))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            if DB::rows_affected(&pending) != 1 {
                return Ok(None);
            }
            sqlx::query(
                "INSERT INTO rejections (lease_id, approver_id, signature, reason, signed_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(lease_id.to_string())
            .bind(rejection.approver_id.clone())
            .bind(rejection.signature.clone())
            .bind(rejection.reason.clone())
            .bind(to_i64(rejection.signed_at))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            let count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM rejections WHERE lease_id = $1")
                    .bind(lease_id.to_string())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(failed)?;
            let rejections = u32::try_from(count).map_err(|_| StoreError::Corrupt)?;
            let ended = rejections >= needed;
            if ended {
                sqlx::query("UPDATE leases SET state = 'revoked' WHERE id = $1")
                    .bind(lease_id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            tx.commit().await.map_err(failed)?;
            Ok(Some(RejectionTally { rejections, ended }))
        })
    }

    fn rejections<'a>(
        &'a self,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredRejection>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT approver_id, signature, reason, signed_at FROM rejections WHERE lease_id = $1 ORDER BY signed_at, approver_id",
            )
            .bind(lease_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.into_iter()
                .map(|(approver_id, signature, reason, signed_at)| {
                    Ok(StoredRejection {
                        approver_id,
                        signature,
                        reason,
                        signed_at: to_u64(signed_at)?,
                    })
                })
                .collect()
        })
    }

    fn revoked_since(&self, since: u64) -> BoxFuture<'_, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT jti, revoked_at FROM revoked_tokens WHERE revoked_at >= $1")
                    .bind(to_i64(since))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(failed)?;
            rows.into_iter()
                .map(|(jti, at)| Ok((jti, to_u64(at)?)))
                .collect()
        })
    }

    fn revoke<'a>(&'a self, jti: &'a str, now: u64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO revoked_tokens (jti, revoked_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
            )
            .bind(jti.to_string())
            .bind(to_i64(now))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(failed)
        })
    }

    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        now_ms: u64,
        interval_ms: u64,
        burst_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            // GCRA in one statement: the new arrival time is
            // max(tat, now) + interval, taken only if it lies within the
            // burst of now; a refused call changes nothing.
            let taken: Option<i64> = sqlx::query_scalar(
                "INSERT INTO rate_limits (key, tat_ms) VALUES ($1, $2 + $3) \
                 ON CONFLICT (key) DO UPDATE SET tat_ms = \
                   (CASE WHEN rate_limits.tat_ms > $2 THEN rate_limits.tat_ms ELSE $2 END) + $3 \
                 WHERE (CASE WHEN rate_limits.tat_ms > $2 THEN rate_limits.tat_ms ELSE $2 END) + $3 - $4 <= $2 \
                 RETURNING tat_ms",
            )
            .bind(key.to_string())
            .bind(to_i64(now_ms))
            .bind(to_i64(interval_ms))
            .bind(to_i64(burst_ms))
            .fetch_optional(&self.pool)
            .await
            .map_err(failed)?;
            if taken.is_some() {
                return Ok(None);
            }
            let tat: i64 = sqlx::query_scalar("SELECT tat_ms FROM rate_limits WHERE key = $1")
                .bind(key.to_string())
                .fetch_one(&self.pool)
                .await
                .map_err(failed)?;
            let allowed_at = (tat.max(0) as u64 + interval_ms).saturating_sub(burst_ms);
            Ok(Some(allowed_at.saturating_sub(now_ms).max(1)))
        })
    }

    fn take_slot<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        max: usize,
        now_ms: u64,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            // Count and insert as one step for this subject, across replicas.
            if let Some(lock) = DB::SERIALIZE_SUBJECT {
                sqlx::query(lock)
                    .bind(subject.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            sqlx::query("DELETE FROM terminal_slots WHERE subject = $1 AND expires_ms <= $2")
                .bind(subject.to_string())
                .bind(to_i64(now_ms))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            let held: i64 =
                sqlx::query_scalar("SELECT count(*) FROM terminal_slots WHERE subject = $1")
                    .bind(subject.to_string())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(failed)?;
            if u64::try_from(held).unwrap_or(u64::MAX) >= max as u64 {
                return Ok(false);
            }
            sqlx::query("INSERT INTO terminal_slots (id, subject, expires_ms) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(subject.to_string())
                .bind(to_i64(expires_ms))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            Ok(true)
        })
    }

    fn release_slot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM terminal_slots WHERE id = $1")
                .bind(id.to_string())
                .execute(&self.pool)
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn prune_rates(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let result = sqlx::query("DELETE FROM rate_limits WHERE tat_ms < $1")
                .bind(to_i64(now_ms))
                .execute(&self.pool)
                .await
                .map_err(failed)?;
            let lapsed = sqlx::query("DELETE FROM terminal_slots WHERE expires_ms <= $1")
                .bind(to_i64(now_ms))
                .execute(&self.pool)
                .await
                .map_err(failed)?;
            Ok(DB::rows_affected(&result) + DB::rows_affected(&lapsed))
        })
    }

    fn log_head(&self) -> BoxFuture<'_, Result<Option<LogHead>, StoreError>> {
        Box::pin(async move {
            let row: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(failed)?;
            row.map(|(seq, hash)| {
                Ok(LogHead {
                    seq: to_u64(seq)?,
                    hash,
                })
            })
            .transpose()
        })
    }

    fn append_receipts<'a>(
        &'a self,
        signer: &'a str,
        base: u64,
        rebuild: bool,
        build: &'a mut BuildBatch<'_>,
        consumed_leases: &'a [&'a Lease],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            serialize::<DB>(&mut tx).await?;
            let end: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
                .fetch_one(&mut *tx)
                .await
                .map_err(failed)?;
            let behind = u64::try_from(end).unwrap_or(0).saturating_sub(base);
            if behind > 0 && (!rebuild || behind > MAX_TAIL as u64) {
                // Catch up outside the lock (always, when far behind).
                return Err(StoreError::LogMoved);
            }
            // What other writers committed since the caller's view, read
            // under the lock: the batch is built on it and cannot lose.
            let tail: Vec<LogRow> = if behind == 0 {
                Vec::new()
            } else {
                let rows: Vec<LogColumns> = sqlx::query_as(concat!(
                    "SELECT ",
                    log_columns!(),
                    " FROM audit_log WHERE seq >= $1 ORDER BY seq"
                ))
                .bind(to_i64(base))
                .fetch_all(&mut *tx)
                .await
                .map_err(failed)?;
                rows.into_iter().map(log_row).collect::<Result<_, _>>()?
            };
            let batch = build(&tail)?;
            let Some(first) = batch.first() else {
                return Ok(());
            };
            let next = base + tail.len() as u64;
            if first.seq != next {
                return Err(StoreError::LogMoved);
            }
            // Under the same lock as a rotation: no batch signed by a key
            // retired a moment ago lands after its retirement.
            let active: Option<(String, i64)> =
                sqlx::query_as("SELECT kid, from_seq FROM server_keys WHERE until_seq IS NULL")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
            if !active.is_some_and(|(kid, from)| kid == signer && from <= to_i64(next)) {
                return Err(StoreError::KeyRotated);
            }
            insert_leases::<DB>(&mut tx, consumed_leases).await?;
            for chunk in batch.chunks(ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<DB>::new(
                    "INSERT INTO audit_log (seq, hash, receipt, leaf_hash, lease) ",
                );
                insert.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(to_i64(row.seq))
                        .push_bind(row.hash.clone())
                        .push_bind(row.receipt.clone())
                        .push_bind(row.leaf_hash.clone().unwrap_or_default())
                        .push_bind(row.lease.clone());
                });
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    // Serialized, a taken seq cannot happen; if it does,
                    // another writer was there first.
                    .map_err(|e| match failed(e) {
                        StoreError::Duplicate => StoreError::LogMoved,
                        other => other,
                    })?;
            }
            tx.commit().await.map_err(failed)
        })
    }

    fn record_cosigned<'a>(
        &'a self,
        size: u64,
        cosigners: u64,
        note: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // Replicas gather for the same size; one that reached fewer
            // witnesses does not replace a fuller note.
            sqlx::query(
                "INSERT INTO cosigned_checkpoints (size, cosigners, note) VALUES ($1, $2, $3) \
                 ON CONFLICT (size) DO UPDATE SET note = excluded.note, cosigners = excluded.cosigners \
                 WHERE excluded.cosigners > cosigned_checkpoints.cosigners",
            )
            .bind(to_i64(size))
            .bind(to_i64(cosigners))
            .bind(note.to_string())
            .execute(&self.pool)
            .await
            .map_err(failed)?;
            Ok(())
        })
    }

    fn latest_cosigned(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT note FROM cosigned_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(failed)
        })
    }

    fn log_keys(&self) -> BoxFuture<'_, Result<LogKeys, StoreError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(failed)?;
            read_log_keys::<DB>(&mut conn).await
        })
    }

    fn adopt_log_keys<'a>(
        &'a self,
        origin: &'a str,
        first: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<LogKeys, StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            serialize::<DB>(&mut tx).await?;
            let mut recorded = read_log_keys::<DB>(&mut tx).await?;
            let empty: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
                .fetch_one(&mut *tx)
                .await
                .map_err(failed)?;
            // Only a registry never rotated, whose one key signed nothing.
            let unused = recorded.keys.len() == 1
                && recorded.keys[0].until_seq.is_none()
                && recorded.keys[0].kid != first.kid;
            if empty == 0 && unused {
                for table in ["DELETE FROM server_keys", "DELETE FROM log_origin"] {
                    sqlx::query(table).execute(&mut *tx).await.map_err(failed)?;
                }
                recorded = LogKeys::default();
            }
            if recorded.origin.is_none() {
                sqlx::query("INSERT INTO log_origin (only_row, origin) VALUES (1, $1)")
                    .bind(origin.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            if recorded.keys.is_empty() {
                insert_key::<DB>(&mut tx, first).await?;
            }
            let adopted = read_log_keys::<DB>(&mut tx).await?;
            tx.commit().await.map_err(failed)?;
            Ok(adopted)
        })
    }

    fn rotate_key<'a>(
        &'a self,
        retiring: &'a str,
        at_seq: u64,
        until_root: &'a str,
        next: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = DB::begin_write(&self.pool).await.map_err(failed)?;
            serialize::<DB>(&mut tx).await?;
            let size: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
                .fetch_one(&mut *tx)
                .await
                .map_err(failed)?;
            if size != to_i64(at_seq) {
                return Err(StoreError::LogMoved);
            }
            let retired = sqlx::query(
                "UPDATE server_keys SET until_seq = $1, until_root = $2, retired_ms = $3 \
                 WHERE kid = $4 AND until_seq IS NULL",
            )
            .bind(size)
            .bind(until_root.to_string())
            .bind(to_i64(next.activated_ms))
            .bind(retiring.to_string())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            if DB::rows_affected(&retired) != 1 {
                return Err(StoreError::KeyRotated);
            }
            insert_key::<DB>(&mut tx, next).await?;
            tx.commit().await.map_err(failed)
        })
    }

    fn log_rows(
        &self,
        from_seq: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<LogRow>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<LogColumns> = sqlx::query_as(concat!(
                "SELECT ",
                log_columns!(),
                " FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ))
            .bind(to_i64(from_seq))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.into_iter().map(log_row).collect()
        })
    }

    fn lease_receipts<'a>(
        &'a self,
        lease_id: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<LogRow>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<LogColumns> = sqlx::query_as(concat!(
                "SELECT ",
                log_columns!(),
                " FROM audit_log WHERE lease = $1 ORDER BY seq LIMIT $2"
            ))
            .bind(lease_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
            rows.into_iter().map(log_row).collect()
        })
    }
}

type LogColumns = (i64, String, String, String, Option<String>);

/// The most rows of other writers a batch is rebuilt on inside the lock;
/// a writer further behind catches up outside it.
const MAX_TAIL: usize = 1_000;

fn log_row((seq, hash, leaf_hash, receipt, lease): LogColumns) -> Result<LogRow, StoreError> {
    Ok(LogRow {
        seq: to_u64(seq)?,
        hash,
        leaf_hash: Some(leaf_hash).filter(|h| !h.is_empty()),
        receipt,
        lease,
    })
}
