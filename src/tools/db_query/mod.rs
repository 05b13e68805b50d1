//! `db.query`: one SQL statement against the configured database.
//!
//! SQLite: reads run on a separate read-only connection pool
//! (`SQLITE_OPEN_READONLY` plus `PRAGMA query_only`), writes and admin
//! statements in their own transaction on the read-write pool; the deadline
//! is enforced inside SQLite (a progress handler that interrupts it).
//!
//! PostgreSQL: reads run in `BEGIN READ ONLY` on the read pool (which can
//! connect as a separate, read-only role) and are always rolled back, so not
//! even a session setting survives them; writes run in `BEGIN READ WRITE` and
//! commit. Every connection is reset (`DISCARD ALL`) when a call returns it
//! to its pool, so nothing a call did to its session reaches the next call. Both set `statement_timeout` for their transaction only, and the
//! statement goes through the extended protocol (one prepared statement,
//! never a simple-query batch), so a second statement cannot ride along.
//!
//! Both: a row cap and a byte cap on the returned cells.
//!
//! Which statements are which class is `classify.rs`: pure, parser only.

pub mod classify;
mod lexical;
mod pg_params;
mod pg_values;
pub mod schema;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::TryStreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::config::{DatabaseConfig, DatabaseTarget};
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};
use crate::identity::Principal;
use classify::{SqlDialect, classify_sql};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DbQueryArgs {
    /// Exactly one SQL statement in the database's dialect. Placeholders for
    /// values: `?` on SQLite, `$1`, `$2`… on PostgreSQL.
    pub sql: String,
    /// Values bound to the placeholders, in order: null, boolean, number or string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<SqlParam>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SqlParam {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

enum Backend {
    Sqlite {
        read_pool: SqlitePool,
        write_pool: SqlitePool,
    },
    Postgres {
        read_pool: PgPool,
        write_pool: PgPool,
    },
}

pub struct DbQuery {
    backend: Backend,
    limits: DatabaseConfig,
    /// The token claims bound into every statement besides the subject
    /// (`identity.claims`).
    bound_claims: Vec<String>,
}

/// What classification hands to execution.
pub struct SqlPlan {
    /// The statement re-rendered from its syntax tree: what runs.
    canonical_sql: String,
    /// SQLite: the `:dt_…` parameters the statement names, numbered.
    identity: Option<lexical::IdentityPlaceholders>,
}

/// The caller's identity as the database sees it: `subject` first, then
/// each bound claim, by name.
struct IdentityValues(Vec<(String, String)>);

impl IdentityValues {
    fn of(principal: &Principal, claims: &[String]) -> Result<Self, Refusal> {
        let mut values = vec![(SUBJECT.to_string(), principal.subject().to_string())];
        for claim in claims {
            let Some(value) = principal.claim(claim) else {
                return Err(Refusal::new(
                    "identity_claim_missing",
                    format!(
                        "this database binds the token claim `{claim}` into every statement, and the token carries none"
                    ),
                ));
            };
            values.push((claim.clone(), value.to_string()));
        }
        Ok(Self(values))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const SUBJECT: &str = "subject";

/// The PostgreSQL setting a bound value lives in.
fn pg_setting(name: &str) -> String {
    format!("dualtrust.{name}")
}

fn identity_changed() -> Refusal {
    Refusal::new(
        "identity_setting",
        "the statement changed the identity settings the server bound (dualtrust.*); \
         its result is withheld and its transaction rolled back",
    )
}

fn engine_error(error: sqlx::Error, timeout_ms: u64) -> Refusal {
    match &error {
        // SQLite's progress handler, PostgreSQL's query_canceled (57014).
        sqlx::Error::Database(db)
            if db.message().contains("interrupted") || db.code().as_deref() == Some("57014") =>
        {
            Refusal::new(
                "statement_timeout",
                format!("the statement ran past its {timeout_ms} ms deadline and was cancelled"),
            )
        }
        // read_only_sql_transaction: the engine's wall under the classifier.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("25006") => Refusal::new(
            "read_only_violation",
            format!(
                "the database refused a write in a read-only transaction: {}",
                db.message()
            ),
        ),
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => Refusal::new(
            "permission_denied",
            format!("the database role may not do this: {}", db.message()),
        ),
        sqlx::Error::PoolTimedOut => Refusal::new(
            "database_busy",
            "no database connection became free in time; retry",
        ),
        sqlx::Error::Database(db) => Refusal::new(
            "sql_error",
            format!("the database refused the statement: {}", db.message()),
        ),
        _ => {
            tracing::error!(%error, "database unavailable");
            Refusal::new("database_unavailable", "the database is unavailable")
        }
    }
}

/// Returns a pooled connection to the state of a new session before the
/// next call gets it. A read is rolled back, but some session state outlives
/// any transaction: session advisory locks (a function may take one),
/// `WITH HOLD` cursors, `LISTEN`, prepared statements, temporary tables,
/// and settings a committed write changed with `set_config(…, false)`.
/// `DISCARD ALL` clears all of them; a connection it fails on is closed.
async fn reset_session(connection: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::raw_sql("DISCARD ALL").execute(connection).await?;
    Ok(true)
}

impl DbQuery {
    pub async fn open(
        target: &DatabaseTarget,
        limits: DatabaseConfig,
        bound_claims: Vec<String>,
    ) -> Result<Self, sqlx::Error> {
        let backend = match target {
            DatabaseTarget::Sqlite(path) => Self::open_sqlite(path).await?,
            DatabaseTarget::Postgres { url, read_url } => {
                let pool = |url: &str| {
                    // No statement cache: `DISCARD ALL` below deallocates
                    // every prepared statement, sqlx's included.
                    let options = PgConnectOptions::from_str(url)?.statement_cache_capacity(0);
                    Ok::<_, sqlx::Error>(
                        PgPoolOptions::new()
                            .max_connections(limits.max_connections)
                            .acquire_timeout(Duration::from_millis(limits.acquire_timeout_ms))
                            // A connection that broke while PostgreSQL was
                            // away is dropped, not handed to the next call.
                            .test_before_acquire(true)
                            .after_release(|connection, _| Box::pin(reset_session(connection)))
                            .connect_lazy_with(options),
                    )
                };
                let backend = Backend::Postgres {
                    read_pool: pool(read_url.expose())?,
                    write_pool: pool(url.expose())?,
                };
                if let Backend::Postgres {
                    write_pool,
                    read_pool,
                } = &backend
                {
                    for pool in [write_pool, read_pool] {
                        // Row-level security does not apply to a superuser or
                        // a BYPASSRLS role, so policies written against the
                        // bound identity would silently not hold.
                        let bypass = sqlx::query_as::<_, (String, bool)>(
                            "SELECT current_user::text, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
                        )
                        .fetch_one(pool)
                        .await;
                        match bypass {
                            Ok((role, true)) => tracing::warn!(
                                role,
                                "db.query's PostgreSQL role bypasses row-level security (superuser or BYPASSRLS): \
                                 policies on the bound identity (dualtrust.subject, identity.claims) do not hold for it"
                            ),
                            Ok(_) => {}
                            // Not fatal: calls fail closed until PostgreSQL is back.
                            Err(e) => {
                                tracing::warn!(error = %e, "PostgreSQL is not reachable yet; db.query fails until it is")
                            }
                        }
                    }
                }
                backend
            }
        };
        Ok(Self {
            backend,
            limits,
            bound_claims,
        })
    }

    async fn open_sqlite(path: &Path) -> Result<Backend, sqlx::Error> {
        let base = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5));
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await?;
        // A crash mid-write leaves a hot rollback journal that read-only
        // connections cannot undo; taking the write lock once recovers it.
        sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK;")
            .execute(&write_pool)
            .await?;
        let read_pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(base.clone().read_only(true).pragma("query_only", "ON"))
            .await?;
        Ok(Backend::Sqlite {
            read_pool,
            write_pool,
        })
    }

    fn dialect(&self) -> SqlDialect {
        match self.backend {
            Backend::Sqlite { .. } => SqlDialect::Sqlite,
            Backend::Postgres { .. } => SqlDialect::Postgres,
        }
    }

    async fn run_pg(
        &self,
        read_pool: &PgPool,
        write_pool: &PgPool,
        sql: &str,
        class: Class,
        params: &[SqlParam],
        identity: &IdentityValues,
    ) -> Result<Value, Refusal> {
        let timeout_ms = self.limits.statement_timeout_ms;
        // The names are this server's own (`identity.claims` is validated to
        // plain lower-case words); the values travel as bound parameters.
        let settings: Vec<String> = std::iter::once("statement_timeout".to_string())
            .chain(identity.0.iter().map(|(name, _)| pg_setting(name)))
            .collect();
        let bind_sql = format!(
            "SELECT {}",
            settings
                .iter()
                .enumerate()
                .map(|(i, name)| format!("set_config('{name}', ${}, true)", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let check_sql = format!(
            "SELECT {}",
            settings[1..]
                .iter()
                .map(|name| format!("current_setting('{name}', true)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let read = class == Class::Read;
        let (pool, begin) = if read {
            (read_pool, "BEGIN READ ONLY")
        } else {
            (write_pool, "BEGIN READ WRITE")
        };
        let outcome = async {
            let mut tx = pool.begin_with(begin).await?;
            // Transaction-local: gone at commit or rollback, and `DISCARD
            // ALL` clears the connection before the next call anyway.
            let mut bind = sqlx::query(sqlx::AssertSqlSafe(bind_sql)).bind(timeout_ms.to_string());
            for (_, value) in &identity.0 {
                bind = bind.bind(value.as_str());
            }
            bind.execute(&mut *tx).await?;
            // Inside the transaction: describing the statement and
            // converting values run under its deadline and settings.
            let arguments = match pg_params::bind(&mut tx, sql, params).await? {
                Ok(arguments) => arguments,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let mut affected = 0u64;
            // Deprecated for SQLite's multi-statement behaviour; here it is
            // one prepared statement, and the only way to get both the rows
            // and the command tag's row count.
            #[allow(deprecated)]
            let stream = sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments)
                .fetch_many(&mut *tx)
                .try_filter_map(|item| {
                    let row = match item {
                        sqlx::Either::Left(done) => {
                            affected += done.rows_affected();
                            None
                        }
                        sqlx::Either::Right(row) => Some(row),
                    };
                    futures_util::future::ready(Ok(row))
                });
            let mut value = self.collect(Box::pin(stream), !read, pg_cell).await?;
            // The classifier refuses a statement that sets `dualtrust.*`;
            // this catches one that did anyway (through a function the
            // classifier cannot see into) before its rows leave or its
            // writes commit.
            let seen: PgRow = sqlx::query(sqlx::AssertSqlSafe(check_sql))
                .fetch_one(&mut *tx)
                .await?;
            let intact = identity.0.iter().enumerate().all(|(i, (_, expected))| {
                seen.try_get::<Option<String>, _>(i)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(expected.as_str())
            });
            if !intact {
                tx.rollback().await?;
                return Ok(Err(identity_changed()));
            }
            if read {
                // Nothing a read did, not even a session setting, survives.
                tx.rollback().await?;
            } else {
                tx.commit().await?;
                value["rows_affected"] = Value::from(affected);
            }
            Ok::<_, sqlx::Error>(Ok(value))
        }
        .await;
        outcome.map_err(|e| engine_error(e, timeout_ms))?
    }

    /// The caller's values, then (for a statement naming `:dt_…`) the
    /// identity values at the indices after every one the caller uses.
    fn bind(
        args: &[SqlParam],
        placeholders: Option<&lexical::IdentityPlaceholders>,
        identity: &IdentityValues,
    ) -> Result<SqliteArguments, Refusal> {
        use sqlx::Arguments;
        let mut out = SqliteArguments::default();
        let padding = match placeholders {
            Some(p) if args.len() > p.caller_slots => {
                return Err(Refusal::new(
                    "too_many_params",
                    format!(
                        "the statement takes {} parameter values and {} were given",
                        p.caller_slots,
                        args.len()
                    ),
                ));
            }
            Some(p) => p.caller_slots - args.len(),
            None => 0,
        };
        let unbound = std::iter::repeat_n(&SqlParam::Null, padding);
        for p in args.iter().chain(unbound) {
            let r = match p {
                SqlParam::Null => out.add(Option::<i64>::None),
                SqlParam::Bool(b) => out.add(i64::from(*b)),
                SqlParam::Int(i) => out.add(*i),
                SqlParam::Float(f) => out.add(*f),
                SqlParam::Text(s) => out.add(s.clone()),
            };
            r.map_err(|_| Refusal::new("invalid_arguments", "a parameter could not be bound"))?;
        }
        for name in placeholders.map(|p| p.names.as_slice()).unwrap_or_default() {
            // Classification refused names this server does not bind.
            let value = identity.get(name).unwrap_or_default().to_string();
            out.add(value)
                .map_err(|_| Refusal::new("invalid_arguments", "a parameter could not be bound"))?;
        }
        Ok(out)
    }

    async fn run(
        &self,
        plan: &SqlPlan,
        class: Class,
        params: &[SqlParam],
        identity: &IdentityValues,
    ) -> Result<Value, Refusal> {
        let sql = plan.canonical_sql.as_str();
        let (read_pool, write_pool) = match &self.backend {
            Backend::Sqlite {
                read_pool,
                write_pool,
            } => (read_pool, write_pool),
            Backend::Postgres {
                read_pool,
                write_pool,
            } => {
                return self
                    .run_pg(read_pool, write_pool, sql, class, params, identity)
                    .await;
            }
        };
        let timeout_ms = self.limits.statement_timeout_ms;
        let pool = if class == Class::Read {
            read_pool
        } else {
            write_pool
        };
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| engine_error(e, timeout_ms))?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        conn.lock_handle()
            .await
            .map_err(|e| engine_error(e, timeout_ms))?
            .set_progress_handler(1_000, move || Instant::now() < deadline);

        let arguments = Self::bind(params, plan.identity.as_ref(), identity)?;
        let sql = plan.identity.as_ref().map_or(sql, |p| p.sql.as_str());
        // Running caller-written SQL is this tool's purpose; what makes it safe is
        // the classification, the scope check and the read-only connection, and
        // values travel as bound parameters, never spliced into the text.
        let outcome = if class == Class::Read {
            self.collect(
                sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments).fetch(&mut *conn),
                false,
                sqlite_cell,
            )
            .await
        } else {
            self.run_in_transaction(&mut conn, sql, arguments).await
        };
        if let Ok(mut handle) = conn.lock_handle().await {
            handle.remove_progress_handler();
        }
        outcome.map_err(|e| engine_error(e, timeout_ms))
    }

    async fn run_in_transaction(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
        sql: &str,
        arguments: SqliteArguments,
    ) -> Result<Value, sqlx::Error> {
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        let mut value = self
            .collect(
                sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments).fetch(&mut *tx),
                true,
                sqlite_cell,
            )
            .await?;
        // sqlite3_changes(): rows changed by the statement that just ran.
        let changed: i64 = sqlx::query_scalar("SELECT changes()")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        value["rows_affected"] = Value::from(changed);
        Ok(value)
    }

    async fn collect<'e, R: Row>(
        &self,
        mut stream: futures_util::stream::BoxStream<'e, Result<R, sqlx::Error>>,
        drain: bool,
        cell: fn(&R, usize, usize) -> Value,
    ) -> Result<Value, sqlx::Error> {
        let mut columns: Vec<String> = Vec::new();
        let mut rows: Vec<Value> = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        while let Some(row) = stream.try_next().await? {
            if truncated {
                continue;
            }
            if columns.is_empty() {
                columns = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            let cells: Vec<Value> = (0..row.len())
                .map(|i| cell(&row, i, self.limits.max_result_bytes))
                .collect();
            let size: usize = cells.iter().map(|c| c.to_string().len()).sum();
            if rows.len() >= self.limits.row_cap || bytes + size > self.limits.max_result_bytes {
                truncated = true;
                if !drain {
                    break;
                }
                continue;
            }
            bytes += size;
            rows.push(Value::Array(cells));
        }
        Ok(json!({
            "columns": columns,
            "rows": rows,
            "row_count": rows.len(),
            "truncated": truncated,
            "rows_affected": 0,
        }))
    }
}

/// A value larger than the result byte cap is not encoded at all (a
/// `randomblob(900000000)` must not become a 1.2 GB base64 string): the
/// cell says how large it was instead.
fn omitted(len: usize, limit: usize) -> Option<Value> {
    (len > limit)
        .then(|| json!({ "omitted_bytes": len, "reason": "larger than the result byte cap" }))
}

fn text_cell(text: String, limit: usize) -> Value {
    omitted(text.len(), limit).unwrap_or(Value::String(text))
}

fn bytes_cell(bytes: Vec<u8>, limit: usize) -> Value {
    omitted(bytes.len(), limit).unwrap_or_else(
        || json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    )
}

/// A PostgreSQL cell as JSON: numbers, booleans, text and JSON natively;
/// dates, times, intervals, numerics, UUIDs, addresses and enums as the
/// strings `pg_values` writes; arrays of any of these as (nested) JSON
/// arrays. Others (ranges, geometry…) say so; cast them (`x::text`).
fn pg_cell(row: &PgRow, index: usize, limit: usize) -> Value {
    use sqlx::postgres::{PgTypeKind, PgValueFormat};
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let info = raw.type_info().into_owned();
    let kind = info.name().to_ascii_uppercase();
    let unsupported =
        || json!({ "unsupported_type": kind, "hint": "cast the column to text, e.g. col::text" });
    let is_enum = |info: &sqlx::postgres::PgTypeInfo| matches!(info.kind(), PgTypeKind::Enum(_));
    if raw.format() == PgValueFormat::Text {
        // Not sent by prepared statements; kept readable if it ever is.
        let known = is_enum(&info) || pg_values::STRING_TYPES.contains(&kind.as_str());
        return match raw.as_str() {
            Ok(text) if known => text_cell(text.to_string(), limit),
            _ => unsupported(),
        };
    }
    let Ok(bytes) = raw.as_bytes() else {
        return unsupported();
    };
    if let Some(omitted) = omitted(bytes.len(), limit) {
        return omitted;
    }
    let decoded = match info.kind() {
        PgTypeKind::Array(element) => {
            let name = element.name().to_ascii_uppercase();
            let element_is_enum = is_enum(element);
            pg_values::array(bytes, |b| pg_values::scalar(&name, b, element_is_enum))
        }
        _ => pg_values::scalar(&kind, bytes, is_enum(&info)),
    };
    decoded.unwrap_or_else(unsupported)
}

fn sqlite_cell(row: &SqliteRow, index: usize, limit: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let kind = raw.type_info().name().to_ascii_uppercase();
    // SQLite stores booleans as integers; a column declared BOOLEAN says
    // which ones are (an expression's column has no declared type).
    let declared_boolean = row
        .columns()
        .get(index)
        .is_some_and(|c| c.type_info().name() == "BOOLEAN");
    if declared_boolean
        && kind == "INTEGER"
        && let Ok(flag @ (0 | 1)) = row.try_get_unchecked::<i64, _>(index)
    {
        return Value::Bool(flag == 1);
    }
    match kind.as_str() {
        "INTEGER" | "BOOLEAN" | "INT" => row
            .try_get_unchecked::<i64, _>(index)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "REAL" | "NUMERIC" => row
            .try_get_unchecked::<f64, _>(index)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "BLOB" => row
            .try_get_unchecked::<Vec<u8>, _>(index)
            .map(|b| bytes_cell(b, limit))
            .unwrap_or(Value::Null),
        _ => row
            .try_get_unchecked::<String, _>(index)
            .map(|t| text_cell(t, limit))
            .unwrap_or(Value::Null),
    }
}

impl Tool for DbQuery {
    const NAME: &'static str = "db.query";
    const TITLE: &'static str = "Run one SQL statement";
    const DESCRIPTION: &'static str = "Runs exactly one SQL statement on the configured database. \
        The statement is classified by a SQL parser: reads need `db:read` and run read-only with a row cap; \
        INSERT/UPDATE/DELETE need `db:write`; DDL, PRAGMA, ATTACH need `db:admin`; DROP, TRUNCATE, ALTER, \
        GRANT and DELETE/UPDATE without WHERE are destructive and need quorum approval. \
        Bind values with `?` placeholders and `params`. The result holds columns, rows, a truncated flag and a signed audit receipt.";
    const READ_ONLY: bool = false;
    type Args = DbQueryArgs;
    type Plan = SqlPlan;

    fn classify(&self, args: &DbQueryArgs) -> Result<Classification<SqlPlan>, Refusal> {
        if args.sql.len() > self.limits.max_sql_bytes {
            return Err(Refusal::new(
                "sql_too_large",
                format!("SQL text is limited to {} bytes", self.limits.max_sql_bytes),
            ));
        }
        if args.params.len() > self.limits.max_params {
            return Err(Refusal::new(
                "too_many_params",
                format!(
                    "at most {} parameters per statement",
                    self.limits.max_params
                ),
            ));
        }
        let classified = classify_sql(&args.sql, self.dialect())?;
        if let Some(placeholders) = &classified.identity
            && let Some(unbound) = placeholders
                .names
                .iter()
                .find(|n| *n != SUBJECT && !self.bound_claims.contains(n))
        {
            return Err(Refusal::new(
                "named_parameter",
                format!(
                    "`:dt_{unbound}` is not bound here: the server binds `:dt_subject`{}",
                    self.bound_claims
                        .iter()
                        .map(|c| format!(", `:dt_{c}`"))
                        .collect::<String>()
                ),
            ));
        }
        Ok(Classification {
            class: classified.class,
            summary: classified.summary,
            plan: SqlPlan {
                canonical_sql: classified.canonical_sql,
                identity: classified.identity,
            },
        })
    }

    async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
        let identity = IdentityValues::of(call.principal(), &self.bound_claims)?;
        // What runs is exactly the one statement that was classified.
        let result = self
            .run(
                call.plan(),
                call.action().class(),
                &call.args().params,
                &identity,
            )
            .await?;
        let outcome = json!({
            "row_count": result.get("row_count"),
            "rows_affected": result.get("rows_affected"),
            "truncated": result.get("truncated"),
        });
        Ok(Executed { result, outcome })
    }
}
