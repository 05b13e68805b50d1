//! PostgreSQL parameters bound as the type the statement gives them, so
//! `WHERE created > $1` takes `"2026-01-01T00:00:00Z"`, `id = $1` a UUID
//! string and `VALUES ($1)` a NULL for any column, without casts.
//!
//! JSON numbers and booleans bind as `bigint`, `double precision` and
//! `boolean` (PostgreSQL converts them where a column differs). A string or
//! a NULL for a parameter PostgreSQL infers as another type is converted by
//! PostgreSQL itself: the statement is described, and each such string goes
//! through that type's own input function (`$1::text::<type>`, the type
//! named by `format_type` from the catalog), whose binary result is bound.
//! No value is ever spliced into SQL text.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgConnection, PgTypeInfo};
use sqlx::{Arguments, Executor, SqlSafeStr, Statement, TypeInfo, ValueRef};

use super::SqlParam;
use crate::gate::Refusal;

/// A value in its binary wire form, with the type it is of.
struct Typed {
    oid: Oid,
    bytes: Option<Vec<u8>>,
}

impl sqlx::Type<sqlx::Postgres> for Typed {
    // Never used: `produces` names each value's own type.
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Typed {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match &self.bytes {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(PgTypeInfo::with_oid(self.oid))
    }
}

/// Types a JSON string binds to as text.
fn is_text(info: &PgTypeInfo) -> bool {
    matches!(
        info.name().to_ascii_uppercase().as_str(),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" | "UNKNOWN"
    )
}

fn bind_failed() -> Refusal {
    Refusal::new("invalid_arguments", "a parameter could not be bound")
}

/// The caller's values as arguments for `sql`, each string and NULL of the
/// type PostgreSQL infers for its placeholder. The outer error is the
/// engine's; the inner a value that is not valid for its type.
pub(super) async fn bind(
    connection: &mut PgConnection,
    sql: &str,
    params: &[SqlParam],
) -> Result<Result<PgArguments, Refusal>, sqlx::Error> {
    let mut out = PgArguments::default();
    let needs_types = params
        .iter()
        .any(|p| matches!(p, SqlParam::Text(_) | SqlParam::Null));
    let types: Vec<PgTypeInfo> = if needs_types {
        let statement = (&mut *connection)
            .prepare(sqlx::AssertSqlSafe(sql.to_string()).into_sql_str())
            .await?;
        match statement.parameters() {
            Some(sqlx::Either::Left(types)) => types.to_vec(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    for (index, param) in params.iter().enumerate() {
        let inferred = types.get(index);
        let oid = inferred.and_then(PgTypeInfo::oid);
        let added = match (param, inferred, oid) {
            (SqlParam::Null, _, Some(oid)) => out.add(Typed { oid, bytes: None }),
            (SqlParam::Null, _, None) => out.add(Option::<String>::None),
            (SqlParam::Bool(b), _, _) => out.add(*b),
            (SqlParam::Int(i), _, _) => out.add(*i),
            (SqlParam::Float(f), _, _) => out.add(*f),
            (SqlParam::Text(s), Some(info), Some(oid)) if !is_text(info) => {
                match convert(connection, index, s, oid).await? {
                    Ok(typed) => out.add(typed),
                    Err(refusal) => return Ok(Err(refusal)),
                }
            }
            (SqlParam::Text(s), _, _) => out.add(s.clone()),
        };
        if added.is_err() {
            return Ok(Err(bind_failed()));
        }
    }
    Ok(Ok(out))
}

/// `text` through the input function of type `oid`, in binary.
async fn convert(
    connection: &mut PgConnection,
    index: usize,
    text: &str,
    oid: Oid,
) -> Result<Result<Typed, Refusal>, sqlx::Error> {
    let name: String = sqlx::query_scalar("SELECT pg_catalog.format_type($1::int8::oid, NULL)")
        .bind(i64::from(oid.0))
        .fetch_one(&mut *connection)
        .await?;
    // `format_type` writes the catalog's own name, quoted where it needs
    // to be: no caller text reaches this statement's SQL.
    let converted = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT $1::text::{name}")))
        .bind(text)
        .fetch_one(&mut *connection)
        .await;
    let row = match converted {
        Ok(row) => row,
        Err(sqlx::Error::Database(db)) => {
            return Ok(Err(Refusal::new(
                "invalid_arguments",
                format!(
                    "parameter ${} is a {name} here, and PostgreSQL refused the string for it: {}",
                    index + 1,
                    db.message()
                ),
            )));
        }
        Err(other) => return Err(other),
    };
    use sqlx::Row;
    let raw = row.try_get_raw(0)?;
    let bytes = if raw.is_null() {
        None
    } else {
        match raw.as_bytes() {
            Ok(bytes) => Some(bytes.to_vec()),
            Err(_) => return Ok(Err(bind_failed())),
        }
    };
    Ok(Ok(Typed { oid, bytes }))
}
