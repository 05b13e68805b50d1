//! Differential check of the SQL classifier against the engines: every
//! statement it calls `read`, run the way `db.query` runs a read (its
//! canonical text; PostgreSQL in `BEGIN READ ONLY`, here committed rather
//! than rolled back to be stricter; SQLite on a read-only `query_only`
//! connection), must leave the database and the session as they were.
//!
//! The statements come from a small seeded grammar (reproducible: the seed
//! is printed), from the fuzz corpus `fuzz/corpus/sql/`, and from a list of
//! known state-changing calls. What the engine refuses is fine; what it
//! lets through and changes state is a classifier bug.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use dualtrust::gate::Class;
use dualtrust::tools::db_query::classify::{SqlDialect, classify_sql};
use sqlx::Connection;

use crate::common::PG_ADMIN_URL;

/// xorshift64*: enough randomness for a grammar, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Calls the grammar draws from: ordinary ones and ones that change
/// something outside the result (`{c}` is the run's notification channel).
const PG_CALLS: &[&str] = &[
    "abs(a)",
    "length(b)",
    "upper(b)",
    "coalesce(a, 0)",
    "md5(b)",
    "now()",
    "random()",
    "greatest(a, id)",
    "current_setting('search_path')",
    "pg_backend_pid()",
    "txid_current()",
    "to_char(a, '999')",
    "nextval('s1')",
    "currval('s1')",
    "setval('s1', 77)",
    "set_config('application_name', 'dt_pwn', false)",
    "set_config('application_name', 'dt_local', true)",
    "pg_advisory_lock(11)",
    "pg_try_advisory_lock(12)",
    "pg_advisory_lock_shared(13)",
    "pg_try_advisory_lock_shared(14)",
    "pg_advisory_xact_lock(15)",
    "pg_try_advisory_xact_lock(16)",
    "pg_advisory_unlock_all()",
    "pg_notify('{c}', 'x')",
    "lo_create(0)",
    "lo_from_bytea(0, 'x')",
    "query_to_xml('SELECT pg_try_advisory_lock(21)', true, true, '')",
    "query_to_xml('SELECT set_config(''application_name'', ''dt_xml'', false)', true, true, '')",
    "query_to_xml('SELECT nextval(''s1'')', true, true, '')",
    "query_to_xml('DELETE FROM t1 RETURNING 1', true, true, '')",
    "ts_stat('SELECT to_tsvector(pg_try_advisory_lock(22)::text)')",
    "pg_sleep(0)",
    "dblink_connect('dbname=test')",
    "pg_cancel_backend(0)",
    "pg_stat_reset()",
];

const SQLITE_CALLS: &[&str] = &[
    "abs(a)",
    "length(b)",
    "upper(b)",
    "coalesce(a, 0)",
    "random()",
    "randomblob(4)",
    "hex(b)",
    "typeof(a)",
    "changes()",
    "total_changes()",
    "last_insert_rowid()",
    "sqlite_version()",
    "json_extract('{\"k\":1}', '$.k')",
    "printf('%d', a)",
    "date('now')",
    "zeroblob(2)",
    "quote(b)",
    "instr(b, 'a')",
    "load_extension('x')",
    "likely(a)",
];

struct Grammar<'a> {
    rng: Rng,
    calls: &'a [&'a str],
    channel: String,
    pg: bool,
}

impl Grammar<'_> {
    fn expr(&mut self, depth: u32) -> String {
        match self.rng.below(if depth > 2 { 3 } else { 7 }) {
            0 => self.rng.below(100).to_string(),
            1 => self.rng.pick(&["a", "b", "id", "'x'", "NULL"]).to_string(),
            2 | 3 => self.rng.pick(self.calls).replace("{c}", &self.channel),
            4 => format!("({})", self.select(depth + 1, true)),
            5 => format!(
                "CASE WHEN {} IS NULL THEN {} ELSE {} END",
                self.expr(depth + 1),
                self.expr(depth + 1),
                self.expr(depth + 1)
            ),
            _ => format!(
                "{} {} {}",
                self.expr(depth + 1),
                self.rng.pick(&["=", "<", "<>", "||", "+"]),
                self.expr(depth + 1)
            ),
        }
    }

    fn from(&mut self, depth: u32) -> String {
        let mut options = vec!["t1", "t2", "v1", "t1 JOIN t2 ON t1.id = t2.id"];
        if self.pg {
            options.extend(["generate_series(1, 3) AS g(a)", "LATERAL_CALL"]);
        }
        match self.rng.pick(&options) {
            "LATERAL_CALL" => format!(
                "t1, LATERAL {} AS l",
                self.rng.pick(self.calls).replace("{c}", &self.channel)
            ),
            _ if depth < 2 && self.rng.chance(20) => {
                format!("({}) AS q", self.select(depth + 1, false))
            }
            table => table.to_string(),
        }
    }

    fn select(&mut self, depth: u32, scalar: bool) -> String {
        let columns = if scalar {
            self.expr(depth + 1)
        } else {
            (0..=self.rng.below(3))
                .map(|i| format!("{} AS c{i}", self.expr(depth + 1)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!("SELECT {columns}");
        if !scalar && depth == 0 && self.rng.chance(5) {
            sql.push_str(&format!(" INTO new_{}", self.rng.below(1000)));
        }
        if self.rng.chance(80) {
            sql.push_str(&format!(" FROM {}", self.from(depth)));
            if self.rng.chance(40) {
                sql.push_str(&format!(" WHERE {}", self.expr(depth + 1)));
            }
        }
        if scalar || self.rng.chance(30) {
            sql.push_str(" LIMIT 1");
        }
        if self.pg && !scalar && self.rng.chance(4) {
            sql.push_str(
                self.rng
                    .pick(&[" FOR UPDATE", " FOR SHARE", " FOR KEY SHARE"]),
            );
        }
        sql
    }

    fn statement(&mut self) -> String {
        match self.rng.below(10) {
            0 => format!("{} UNION {}", self.select(1, false), self.select(1, false)),
            1 => format!(
                "WITH w AS ({}) SELECT * FROM w",
                match self.rng.below(3) {
                    0 => "DELETE FROM t1 WHERE id = 1 RETURNING id".to_string(),
                    1 => "UPDATE t1 SET a = 0 WHERE id = 2 RETURNING id".to_string(),
                    _ => self.select(1, false),
                }
            ),
            2 => format!("EXPLAIN {}", self.select(0, false)),
            _ => self.select(0, false),
        }
    }
}

fn known_dangerous(pg: bool, channel: &str) -> Vec<String> {
    let common = [
        "SELECT * INTO t_into FROM t1",
        "SELECT 1 AS a INTO t_into2 UNION SELECT 2",
        "WITH d AS (DELETE FROM t1 RETURNING *) SELECT * FROM d",
        "SELECT a FROM t1 UNION SELECT a FROM (SELECT 1 AS a INTO t_into3) q",
    ];
    let pg_only = [
        "SELECT nextval('s1')",
        "SELECT setval('s1', 42)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock(1)",
        "SELECT pg_advisory_lock_shared(1)",
        "SELECT pg_try_advisory_lock_shared(1)",
        "SELECT pg_catalog.pg_try_advisory_lock(2)",
        "SELECT \"pg_try_advisory_lock\"(3)",
        "SELECT * FROM pg_try_advisory_lock(4)",
        "SELECT * FROM LATERAL pg_try_advisory_lock(5)",
        "SELECT set_config('search_path', 'pg_catalog', false)",
        "SELECT set_config('application_name', 'dt_pwn', false)",
        "SELECT x FROM t1, LATERAL set_config('application_name', 'dt_pwn2', false) x",
        "SELECT dblink_connect('dbname=test')",
        "SELECT dblink('dbname=test', 'SELECT 1')",
        "COPY t1 TO STDOUT",
        "SELECT * FROM t1 FOR UPDATE",
        "SELECT lo_create(0)",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT query_to_xml('SELECT pg_try_advisory_lock(6)', true, true, '')",
        "SELECT query_to_xml('SELECT set_config(''application_name'', ''dt_xml'', false)', true, true, '')",
        "SELECT query_to_xml('DELETE FROM t1 RETURNING 1', true, true, '')",
        "SELECT query_to_xml_and_xmlschema('SELECT pg_try_advisory_lock(7)', true, true, '')",
        "SELECT ts_stat('SELECT to_tsvector(pg_try_advisory_lock(8)::text)')",
        "EXPLAIN ANALYZE SELECT pg_try_advisory_lock(9)",
        "EXPLAIN (ANALYZE) SELECT pg_try_advisory_lock(10)",
        "SELECT txid_current()",
        "SELECT pg_stat_reset()",
        "SELECT pg_cancel_backend(0)",
        "SELECT * FROM t1 WHERE a = (SELECT pg_advisory_lock(11))",
        r#"SELECT U&"\0070g_try_advisory_lock"(12)"#,
    ];
    let mut all: Vec<String> = common.iter().map(|s| s.to_string()).collect();
    if pg {
        all.extend(pg_only.iter().map(|s| s.to_string()));
        all.push(format!("SELECT pg_notify('{channel}', 'x')"));
    } else {
        all.extend(
            [
                "SELECT load_extension('x')",
                "SELECT [load_extension]('x')",
                "SELECT writefile('/tmp/dt-x', 'y')",
                "SELECT * FROM pragma_table_info('t1')",
            ]
            .map(String::from),
        );
    }
    all
}

/// The fuzz corpus for one dialect (selector byte: even SQLite, odd PostgreSQL).
fn corpus(pg: bool) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sql");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        if let Some((&selector, rest)) = bytes.split_first()
            && (selector & 1 == 1) == pg
            && let Ok(text) = std::str::from_utf8(rest)
        {
            out.push(text.to_string());
        }
    }
    out.sort();
    out
}

fn seed() -> u64 {
    std::env::var("DT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| dualtrust::now_unix() | 1)
}

/// Everything a read could leave behind in its session or its schema.
async fn pg_snapshot(conn: &mut sqlx::PgConnection, schema: &str) -> Vec<String> {
    let queries = [
        "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') || count(*) FROM t1 t".to_string(),
        "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') || count(*) FROM t2 t".to_string(),
        format!(
            "SELECT coalesce(string_agg(relname || ':' || relkind::text, ',' ORDER BY relname), '') FROM pg_class \
             WHERE relnamespace IN ('{schema}'::regnamespace, coalesce(pg_my_temp_schema(), 0::oid))"
        ),
        format!("SELECT count(*)::text FROM pg_proc WHERE pronamespace = '{schema}'::regnamespace"),
        "SELECT last_value::text || is_called::text FROM s1".to_string(),
        "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            .to_string(),
        "SELECT md5(string_agg(name || '=' || setting, ',' ORDER BY name)) FROM pg_settings".to_string(),
        "SELECT count(*)::text FROM pg_largeobject_metadata".to_string(),
        "SELECT count(*)::text FROM pg_prepared_statements".to_string(),
        "SELECT count(*)::text FROM pg_cursors".to_string(),
        "SELECT count(*)::text FROM pg_listening_channels()".to_string(),
    ];
    let mut out = Vec::new();
    for q in queries {
        let value: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(q.clone()))
            .persistent(false)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("snapshot {q}: {e}"));
        out.push(format!("{q} => {}", value.unwrap_or_default()));
    }
    out
}

async fn pg_reset(conn: &mut sqlx::PgConnection, schema: &str) {
    // One statement per message: a multi-statement one is a transaction.
    for sql in [
        "DISCARD ALL".to_string(),
        format!("SET search_path = {schema}"),
        "SET statement_timeout = '500ms'".to_string(),
        "SET lock_timeout = '200ms'".to_string(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .expect("reset session");
    }
}

#[derive(Default)]
struct Tally {
    run: usize,
    refused_by_classifier: usize,
    refused_by_engine: usize,
    findings: Vec<String>,
}

#[tokio::test]
async fn reads_change_nothing_in_postgresql() {
    let id = &dualtrust::random_id().expect("id")[..10];
    let (role, schema) = (format!("dt_diff_{id}"), format!("dt_diff_{id}"));
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL reachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN; CREATE SCHEMA {schema} AUTHORIZATION {role};"
    )))
    .execute(&mut admin)
    .await
    .expect("role and schema");
    let url = PG_ADMIN_URL.replacen("postgres@", &format!("{role}@"), 1);
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect as the role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path = {schema};
         CREATE TABLE t1 (id serial PRIMARY KEY, a int, b text);
         INSERT INTO t1 (a, b) VALUES (1, 'one'), (2, 'two'), (NULL, 'three');
         CREATE TABLE t2 (id int, c text);
         INSERT INTO t2 VALUES (1, 'x'), (3, 'y');
         CREATE VIEW v1 AS SELECT t1.id, a, b, c FROM t1 LEFT JOIN t2 USING (id);
         CREATE SEQUENCE s1;"
    )))
    .execute(&mut conn)
    .await
    .expect("fixture tables");
    let mut listener = sqlx::postgres::PgListener::connect(&url)
        .await
        .expect("listener");
    listener.listen(&schema).await.expect("listen");
    pg_reset(&mut conn, &schema).await;

    let seed = seed();
    let mut grammar = Grammar {
        rng: Rng(seed),
        calls: PG_CALLS,
        channel: schema.clone(),
        pg: true,
    };
    let mut statements = known_dangerous(true, &schema);
    statements.extend(corpus(true));
    statements.extend((0..1500).map(|_| grammar.statement()));

    let mut tally = Tally::default();
    let mut baseline = pg_snapshot(&mut conn, &schema).await;
    for sql in &statements {
        let classified = match classify_sql(sql, SqlDialect::Postgres) {
            Ok(c) if c.class == Class::Read => c,
            _ => {
                tally.refused_by_classifier += 1;
                continue;
            }
        };
        tally.run += 1;
        sqlx::raw_sql("BEGIN READ ONLY")
            .execute(&mut conn)
            .await
            .expect("begin");
        let ran = sqlx::query(sqlx::AssertSqlSafe(classified.canonical_sql.clone()))
            .persistent(false)
            .fetch_all(&mut conn)
            .await;
        let end = if ran.is_ok() { "COMMIT" } else { "ROLLBACK" };
        if ran.is_err() {
            tally.refused_by_engine += 1;
        }
        sqlx::raw_sql(end).execute(&mut conn).await.expect("end");
        let after = pg_snapshot(&mut conn, &schema).await;
        let notified = tokio::time::timeout(Duration::from_millis(2), listener.recv())
            .await
            .is_ok();
        if after != baseline || notified {
            let changed: Vec<&String> = after.iter().filter(|a| !baseline.contains(a)).collect();
            tally.findings.push(format!(
                "{sql}\n    ran as: {}\n    changed: {changed:?}{}",
                classified.canonical_sql,
                if notified {
                    " and sent a notification"
                } else {
                    ""
                }
            ));
            pg_reset(&mut conn, &schema).await;
            baseline = pg_snapshot(&mut conn, &schema).await;
        }
    }
    drop(conn);
    drop(listener);
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role};"
    )))
    .execute(&mut admin)
    .await;
    eprintln!(
        "PostgreSQL differential (seed {seed}): {} statements, {} classified read and run ({} refused by the engine), {} not read",
        statements.len(),
        tally.run,
        tally.refused_by_engine,
        tally.refused_by_classifier
    );
    assert!(
        tally.findings.is_empty(),
        "classified read, yet changed state (seed {seed}):\n{}",
        tally.findings.join("\n")
    );
}

fn sqlite_snapshot(dir: &Path, conn_state: String) -> Vec<String> {
    let mut out = vec![conn_state];
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let bytes = std::fs::read(&path).unwrap_or_default();
        out.push(format!(
            "{} {}",
            path.display(),
            dualtrust::sha256_hex(&bytes)
        ));
    }
    out
}

/// What a read could leave in a SQLite connection: temp objects, attached databases.
async fn sqlite_state(conn: &mut sqlx::sqlite::SqliteConnection) -> String {
    let temp: i64 = sqlx::query_scalar("SELECT count(*) FROM temp.sqlite_master")
        .fetch_one(&mut *conn)
        .await
        .expect("temp schema");
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pragma_database_list")
        .fetch_one(&mut *conn)
        .await
        .expect("databases");
    format!("temp objects {temp}, databases {databases}")
}

#[tokio::test]
async fn reads_change_nothing_in_sqlite() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("db.sqlite");
    let base = SqliteConnectOptions::from_str("sqlite://")
        .expect("options")
        .filename(&file)
        .create_if_missing(true);
    let mut setup = SqliteConnection::connect_with(&base).await.expect("create");
    sqlx::raw_sql(
        "CREATE TABLE t1 (id INTEGER PRIMARY KEY, a INT, b TEXT);
         INSERT INTO t1 (a, b) VALUES (1, 'one'), (2, 'two'), (NULL, 'three');
         CREATE TABLE t2 (id INT, c TEXT);
         INSERT INTO t2 VALUES (1, 'x'), (3, 'y');
         CREATE VIEW v1 AS SELECT t1.id, a, b, c FROM t1 LEFT JOIN t2 USING (id);",
    )
    .execute(&mut setup)
    .await
    .expect("fixture");
    setup.close().await.expect("close");
    // As db.query opens its read pool.
    let options = base
        .create_if_missing(false)
        .read_only(true)
        .pragma("query_only", "ON");
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("read-only");
    let seed = seed();
    let mut grammar = Grammar {
        rng: Rng(seed),
        calls: SQLITE_CALLS,
        channel: String::new(),
        pg: false,
    };
    let mut statements = known_dangerous(false, "");
    statements.extend(corpus(false));
    statements.extend((0..1500).map(|_| grammar.statement()));

    let mut tally = Tally::default();
    let mut baseline = sqlite_snapshot(dir.path(), sqlite_state(&mut conn).await);
    for sql in &statements {
        let classified = match classify_sql(sql, SqlDialect::Sqlite) {
            Ok(c) if c.class == Class::Read => c,
            _ => {
                tally.refused_by_classifier += 1;
                continue;
            }
        };
        tally.run += 1;
        let ran = sqlx::query(sqlx::AssertSqlSafe(classified.canonical_sql.clone()))
            .fetch_all(&mut conn)
            .await;
        if ran.is_err() {
            tally.refused_by_engine += 1;
        }
        let after = sqlite_snapshot(dir.path(), sqlite_state(&mut conn).await);
        if after != baseline {
            tally.findings.push(format!(
                "{sql}\n    ran as: {}\n    changed: {:?}",
                classified.canonical_sql,
                after
                    .iter()
                    .filter(|a| !baseline.contains(a))
                    .collect::<Vec<_>>()
            ));
            baseline = after;
        }
    }
    eprintln!(
        "SQLite differential (seed {seed}): {} statements, {} classified read and run ({} refused by the engine), {} not read",
        statements.len(),
        tally.run,
        tally.refused_by_engine,
        tally.refused_by_classifier
    );
    assert!(
        tally.findings.is_empty(),
        "classified read, yet changed state (seed {seed}):\n{}",
        tally.findings.join("\n")
    );
}
