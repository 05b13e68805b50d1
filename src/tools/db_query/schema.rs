//! `db.schema`: what the target database holds, for an agent to read before
//! it writes SQL (also served as MCP resources, see `crate::server`).
//!
//! Only relations the database role may use are described (PostgreSQL:
//! schema `USAGE` and any table privilege), read from the catalogs with
//! server-written queries on the read connection; the caller's text never
//! reaches SQL except as a bound value or as a name matched against the
//! catalog's own list.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

use super::{Backend, DbQuery, engine_error};
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};

/// Relations listed in one overview at most.
const MAX_RELATIONS: usize = 1000;
const MAX_NAME_BYTES: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DbSchemaArgs {
    /// One table or view to describe in full (columns, keys, indexes, view
    /// definition), as the overview names it (`schema.table` on
    /// PostgreSQL). Without it: every table and view with its columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

pub struct DbSchema {
    db: Arc<DbQuery>,
}

impl DbSchema {
    pub fn new(db: Arc<DbQuery>) -> Self {
        Self { db }
    }
}

/// One relation as the catalog names it.
#[derive(Debug, Clone)]
struct Relation {
    /// What callers use: `name` on SQLite, `schema.name` on PostgreSQL.
    name: String,
    kind: &'static str,
    /// PostgreSQL: the relation's oid.
    oid: i64,
}

fn column(name: String, kind: String, nullable: bool, default: Option<String>, key: bool) -> Value {
    json!({ "name": name, "type": kind, "nullable": nullable, "default": default, "primary_key": key })
}

fn unknown_table(name: &str) -> Refusal {
    let shown: String = name.chars().take(64).collect();
    Refusal::new(
        "unknown_table",
        format!(
            "no table or view named {shown:?} that this database role may use; list them with no `table`"
        ),
    )
}

impl DbQuery {
    async fn relations(&self) -> Result<Vec<Relation>, sqlx::Error> {
        match &self.backend {
            Backend::Sqlite { read_pool, .. } => {
                let rows = sqlx::query(
                    "SELECT name, type FROM sqlite_schema \
                     WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
                )
                .fetch_all(read_pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|row| Relation {
                        name: row.get(0),
                        kind: if row.get::<String, _>(1) == "view" {
                            "view"
                        } else {
                            "table"
                        },
                        oid: 0,
                    })
                    .collect())
            }
            Backend::Postgres { read_pool, .. } => {
                let rows = sqlx::query(
                    "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.oid::bigint \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                       AND n.nspname NOT LIKE 'pg\\_toast%' \
                       AND has_schema_privilege(n.oid, 'USAGE') \
                       AND has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') \
                     ORDER BY 1, 2",
                )
                .fetch_all(read_pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|row| Relation {
                        name: format!("{}.{}", row.get::<String, _>(0), row.get::<String, _>(1)),
                        kind: match row.get::<String, _>(2).as_str() {
                            "v" => "view",
                            "m" => "materialized view",
                            "f" => "foreign table",
                            _ => "table",
                        },
                        oid: row.get(3),
                    })
                    .collect())
            }
        }
    }

    async fn columns(&self, relation: &Relation) -> Result<Vec<Value>, sqlx::Error> {
        match &self.backend {
            Backend::Sqlite { read_pool, .. } => {
                let rows = sqlx::query(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?) ORDER BY cid",
                )
                .bind(&relation.name)
                .fetch_all(read_pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        column(
                            row.get(0),
                            row.get(1),
                            row.get::<i64, _>(2) == 0,
                            row.get(3),
                            row.get::<i64, _>(4) > 0,
                        )
                    })
                    .collect())
            }
            Backend::Postgres { read_pool, .. } => {
                let rows = sqlx::query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, \
                            pg_get_expr(d.adbin, d.adrelid), \
                            coalesce(a.attnum = ANY (i.indkey), false) \
                     FROM pg_attribute a \
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                     WHERE a.attrelid = $1::bigint::oid AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                )
                .bind(relation.oid)
                .fetch_all(read_pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|row| column(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
                    .collect())
            }
        }
    }

    /// Indexes, foreign keys and (for a view) its definition.
    async fn details(&self, relation: &Relation) -> Result<Value, sqlx::Error> {
        match &self.backend {
            Backend::Sqlite { read_pool, .. } => {
                let mut indexes = Vec::new();
                let listed = sqlx::query(
                    "SELECT name, \"unique\", origin FROM pragma_index_list(?) ORDER BY name",
                )
                .bind(&relation.name)
                .fetch_all(read_pool)
                .await?;
                for index in &listed {
                    let name: String = index.get(0);
                    let columns: Vec<Option<String>> =
                        sqlx::query_scalar("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                            .bind(&name)
                            .fetch_all(read_pool)
                            .await?;
                    indexes.push(json!({
                        "name": name,
                        "unique": index.get::<i64, _>(1) != 0,
                        "primary_key": index.get::<String, _>(2) == "pk",
                        // An expression column has no name.
                        "columns": columns,
                    }));
                }
                let keys = sqlx::query(
                    "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?) ORDER BY id, seq",
                )
                .bind(&relation.name)
                .fetch_all(read_pool)
                .await?;
                let mut foreign_keys: Vec<Value> = Vec::new();
                let mut last_id = None;
                for key in &keys {
                    let id: i64 = key.get(0);
                    if last_id != Some(id) {
                        last_id = Some(id);
                        foreign_keys.push(json!({
                            "columns": [],
                            "references": { "table": key.get::<String, _>(1), "columns": [] },
                        }));
                    }
                    if let Some(entry) = foreign_keys.last_mut() {
                        if let Some(from) = entry["columns"].as_array_mut() {
                            from.push(json!(key.get::<String, _>(2)));
                        }
                        if let Some(to) = entry["references"]["columns"].as_array_mut() {
                            to.push(json!(key.get::<Option<String>, _>(3)));
                        }
                    }
                }
                let definition: Option<String> = sqlx::query_scalar(
                    "SELECT sql FROM sqlite_schema WHERE type = 'view' AND name = ?",
                )
                .bind(&relation.name)
                .fetch_optional(read_pool)
                .await?
                .flatten();
                Ok(
                    json!({ "indexes": indexes, "foreign_keys": foreign_keys, "definition": definition }),
                )
            }
            Backend::Postgres { read_pool, .. } => {
                let indexes = sqlx::query(
                    "SELECT c.relname::text, i.indisunique, i.indisprimary, pg_get_indexdef(i.indexrelid) \
                     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     WHERE i.indrelid = $1::bigint::oid ORDER BY 1",
                )
                .bind(relation.oid)
                .fetch_all(read_pool)
                .await?
                .iter()
                .map(|row| {
                    json!({
                        "name": row.get::<String, _>(0),
                        "unique": row.get::<bool, _>(1),
                        "primary_key": row.get::<bool, _>(2),
                        "definition": row.get::<String, _>(3),
                    })
                })
                .collect::<Vec<_>>();
                let foreign_keys = sqlx::query(
                    "SELECT conname::text, pg_get_constraintdef(oid), confrelid::regclass::text \
                     FROM pg_constraint WHERE conrelid = $1::bigint::oid AND contype = 'f' ORDER BY 1",
                )
                .bind(relation.oid)
                .fetch_all(read_pool)
                .await?
                .iter()
                .map(|row| {
                    json!({
                        "name": row.get::<String, _>(0),
                        "definition": row.get::<String, _>(1),
                        "references": { "table": row.get::<String, _>(2) },
                    })
                })
                .collect::<Vec<_>>();
                let definition: Option<String> = if relation.kind.ends_with("view") {
                    sqlx::query_scalar("SELECT pg_get_viewdef($1::bigint::oid, true)")
                        .bind(relation.oid)
                        .fetch_one(read_pool)
                        .await?
                } else {
                    None
                };
                Ok(
                    json!({ "indexes": indexes, "foreign_keys": foreign_keys, "definition": definition }),
                )
            }
        }
    }

    /// Every relation with its columns, or one relation in full.
    async fn describe(&self, table: Option<&str>) -> Result<Value, Refusal> {
        let timeout_ms = self.limits.statement_timeout_ms;
        let failed = |e| engine_error(e, timeout_ms);
        let relations = self.relations().await.map_err(failed)?;
        let dialect = match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgresql",
        };
        let Some(wanted) = table else {
            let mut tables = Vec::new();
            for relation in relations.iter().take(MAX_RELATIONS) {
                tables.push(json!({
                    "name": relation.name,
                    "kind": relation.kind,
                    "columns": self.columns(relation).await.map_err(failed)?,
                }));
            }
            return Ok(json!({
                "dialect": dialect,
                "tables": tables,
                "truncated": relations.len() > MAX_RELATIONS,
            }));
        };
        // An unqualified PostgreSQL name is accepted when it names exactly
        // one relation the role may use.
        let unqualified: Vec<&Relation> = relations
            .iter()
            .filter(|r| {
                r.name
                    .rsplit_once('.')
                    .is_some_and(|(_, bare)| bare == wanted)
            })
            .collect();
        let relation = match relations.iter().find(|r| r.name == wanted) {
            Some(exact) => exact,
            None if dialect == "postgresql" && unqualified.len() == 1 => unqualified[0],
            None => return Err(unknown_table(wanted)),
        };
        let mut described = self.details(relation).await.map_err(failed)?;
        described["dialect"] = json!(dialect);
        described["name"] = json!(relation.name);
        described["kind"] = json!(relation.kind);
        described["columns"] = json!(self.columns(relation).await.map_err(failed)?);
        Ok(described)
    }
}

impl Tool for DbSchema {
    const NAME: &'static str = "db.schema";
    const TITLE: &'static str = "Describe the database schema";
    const DESCRIPTION: &'static str = "Lists the tables and views of the configured database that this server's \
        database role may use, each with its columns (type, nullability, default, primary key); with `table`, \
        one of them in full: columns, indexes, foreign keys and a view's definition. Needs `db:read`. \
        Also served as MCP resources (dualtrust://db/schema, dualtrust://db/tables/{table}).";
    const READ_ONLY: bool = true;
    type Args = DbSchemaArgs;
    type Plan = ();

    fn classify(&self, args: &DbSchemaArgs) -> Result<Classification, Refusal> {
        let summary = match &args.table {
            Some(table)
                if table.is_empty()
                    || table.len() > MAX_NAME_BYTES
                    || table.chars().any(char::is_control) =>
            {
                return Err(Refusal::new(
                    "invalid_table",
                    format!(
                        "a table name is 1 to {MAX_NAME_BYTES} bytes without control characters"
                    ),
                ));
            }
            Some(table) => format!("read the schema of {table:?}"),
            None => "read the schema: every table and view".into(),
        };
        Ok(Classification {
            class: Class::Read,
            summary,
            plan: (),
        })
    }

    async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
        // The catalog queries run outside a statement's transaction, so
        // the statement deadline is kept here.
        let deadline = self.db.limits.statement_timeout_ms;
        let result = tokio::time::timeout(
            std::time::Duration::from_millis(deadline),
            self.db.describe(call.args().table.as_deref()),
        )
        .await
        .map_err(|_| {
            Refusal::new(
                "statement_timeout",
                format!("reading the schema ran past its {deadline} ms deadline"),
            )
        })??;
        let outcome = match result.get("tables").and_then(Value::as_array) {
            Some(tables) => json!({ "tables": tables.len() }),
            None => json!({ "table": result.get("name") }),
        };
        Ok(Executed { result, outcome })
    }
}
