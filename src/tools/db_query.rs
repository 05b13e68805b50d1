//! `db.query`: one SQL statement against the configured database.
//!
//! Reads run on a separate read-only connection pool (`SQLITE_OPEN_READONLY`
//! plus `PRAGMA query_only`), writes and admin statements in their own
//! transaction on the read-write pool. Every statement runs under a
//! deadline enforced inside SQLite (a progress handler that interrupts it),
//! a row cap and a byte cap on the returned cells.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::TryStreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::config::{DatabaseConfig, ScopeConfig};
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};
use crate::tools::sql_classify::classify_sql;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DbQueryArgs {
    /// Exactly one SQL statement (SQLite dialect). Use `?` placeholders for values.
    pub sql: String,
    /// Values bound to the `?` placeholders, in order: null, boolean, number or string.
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

pub struct DbQuery {
    read_pool: SqlitePool,
    write_pool: SqlitePool,
    limits: DatabaseConfig,
    scopes: ScopeConfig,
}

fn engine_error(error: sqlx::Error, timeout_ms: u64) -> Refusal {
    match &error {
        sqlx::Error::Database(db) if db.message().contains("interrupted") => Refusal::new(
            "statement_timeout",
            format!("the statement ran past its {timeout_ms} ms deadline and was interrupted"),
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

impl DbQuery {
    pub async fn open(
        path: &Path,
        limits: DatabaseConfig,
        scopes: ScopeConfig,
    ) -> Result<Self, sqlx::Error> {
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
        Ok(Self {
            read_pool,
            write_pool,
            limits,
            scopes,
        })
    }

    fn bind(args: &[SqlParam]) -> Result<SqliteArguments, Refusal> {
        use sqlx::Arguments;
        let mut out = SqliteArguments::default();
        for p in args {
            let r = match p {
                SqlParam::Null => out.add(Option::<i64>::None),
                SqlParam::Bool(b) => out.add(i64::from(*b)),
                SqlParam::Int(i) => out.add(*i),
                SqlParam::Float(f) => out.add(*f),
                SqlParam::Text(s) => out.add(s.clone()),
            };
            r.map_err(|_| Refusal::new("invalid_arguments", "a parameter could not be bound"))?;
        }
        Ok(out)
    }

    async fn run(&self, sql: &str, class: Class, params: &[SqlParam]) -> Result<Value, Refusal> {
        let timeout_ms = self.limits.statement_timeout_ms;
        let pool = if class == Class::Read {
            &self.read_pool
        } else {
            &self.write_pool
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

        let arguments = Self::bind(params)?;
        // Running caller-written SQL is this tool's purpose; what makes it safe is
        // the classification, the scope check and the read-only connection, and
        // values travel as bound parameters, never spliced into the text.
        let outcome = if class == Class::Read {
            self.collect(
                sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments).fetch(&mut *conn),
                false,
            )
            .await
            .map(|(v, _)| v)
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
        let (mut value, _) = self
            .collect(
                sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments).fetch(&mut *tx),
                true,
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

    async fn collect<'e>(
        &self,
        mut stream: futures_util::stream::BoxStream<'e, Result<SqliteRow, sqlx::Error>>,
        drain: bool,
    ) -> Result<(Value, ()), sqlx::Error> {
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
            let cells: Vec<Value> = (0..row.len()).map(|i| cell(&row, i)).collect();
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
        Ok((
            json!({
                "columns": columns,
                "rows": rows,
                "row_count": rows.len(),
                "truncated": truncated,
                "rows_affected": 0,
            }),
            (),
        ))
    }
}

fn cell(row: &SqliteRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let kind = raw.type_info().name().to_ascii_uppercase();
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
            .map(|b| json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }))
            .unwrap_or(Value::Null),
        _ => row
            .try_get_unchecked::<String, _>(index)
            .map(Value::from)
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

    fn classify(&self, args: &DbQueryArgs) -> Result<Classification, Refusal> {
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
        let classified = classify_sql(&args.sql)?;
        let scope = match classified.class {
            Class::Read => &self.scopes.db_read,
            Class::Write => &self.scopes.db_write,
            Class::Admin | Class::Destructive => &self.scopes.db_admin,
        };
        Ok(Classification {
            class: classified.class,
            scope: scope.clone(),
            summary: classified.summary,
        })
    }

    async fn execute(&self, call: Authorized<'_, DbQueryArgs>) -> Result<Executed, Refusal> {
        // Re-derive the canonical statement from the authorized arguments:
        // what runs is exactly the one statement that was classified.
        let classified = classify_sql(&call.args().sql)?;
        let result = self
            .run(
                &classified.canonical_sql,
                call.action().class(),
                &call.args().params,
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
