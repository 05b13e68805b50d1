//! `db.query` against the real PostgreSQL on 127.0.0.1:5432, set up the way
//! docs/tools.md tells operators to: the server connects as a read-only role
//! for reads and a read-write (not superuser) role for writes. The known
//! bypasses of "read-only" database MCP servers are each tried; the database
//! must come out unchanged.

use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::{
    Client, DataDir, PG_ADMIN_URL, call, create_pg_database, drop_pg_database, error_code, receipt,
    status,
};

/// A fresh database with the demo tables, a read-only role and a
/// read-write role; dropped by [`PgFixture::drop_all`].
struct PgFixture {
    name: String,
    reader: String,
    writer: String,
}

impl PgFixture {
    async fn create() -> Self {
        let name = create_pg_database(PG_ADMIN_URL).await;
        let fixture = Self {
            reader: name.replacen("dt_", "dt_ro_", 1),
            writer: name.replacen("dt_", "dt_rw_", 1),
            name,
        };
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
            .await
            .expect("connect");
        for sql in [
            format!("CREATE ROLE {} LOGIN", fixture.reader),
            format!("CREATE ROLE {} LOGIN", fixture.writer),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .expect("setup");
        }
        let mut db = sqlx::PgConnection::connect(&fixture.url("postgres"))
            .await
            .expect("connect");
        let setup = format!(
            "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, vip boolean NOT NULL DEFAULT false, meta jsonb);
             INSERT INTO customers (name, vip, meta) VALUES ('Ada Lovelace', true, '{{\"tier\": 1}}'), ('Alan Turing', false, NULL);
             CREATE PROCEDURE wipe() LANGUAGE SQL AS $$ DELETE FROM customers $$;
             CREATE FUNCTION purge() RETURNS bigint LANGUAGE SQL VOLATILE AS $$ WITH d AS (DELETE FROM customers RETURNING 1) SELECT count(*) FROM d $$;
             REVOKE ALL ON SCHEMA public FROM PUBLIC;
             GRANT CONNECT ON DATABASE {db} TO {ro}, {rw};
             GRANT USAGE ON SCHEMA public TO {ro}, {rw};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ro};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {rw};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {rw};",
            db = fixture.name,
            ro = fixture.reader,
            rw = fixture.writer
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut db)
            .await
            .expect("tables and grants");
        fixture
    }

    fn url(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:5432/{}", self.name)
    }

    /// The setup docs/tools.md describes: writes as the read-write role, reads as the
    /// read-only role (or, with `separate_reader` false, as the writer too).
    fn configure(&self, data: &DataDir, separate_reader: bool) {
        let read_url = if separate_reader {
            format!("read_url = \"{}\"\n", self.url(&self.reader))
        } else {
            String::new()
        };
        std::fs::write(
            data.path.join("dualtrust.toml"),
            format!(
                "[database]\nurl = \"{}\"\n{read_url}statement_timeout_ms = 1000\n",
                self.url(&self.writer)
            ),
        )
        .expect("config");
    }

    /// What an attacker would want to change, read as the owner.
    async fn state(&self) -> Value {
        let mut db = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect");
        let row: (i64, i64, bool) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM customers), (SELECT last_value FROM customers_id_seq), \
             (SELECT count(*) = 1 FROM pg_tables WHERE tablename = 'customers')",
        )
        .fetch_one(&mut db)
        .await
        .expect("state");
        let tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                .fetch_one(&mut db)
                .await
                .expect("tables");
        json!({ "customers": row.0, "sequence": row.1, "table": row.2, "tables": tables })
    }

    async fn drop_all(self) {
        drop_pg_database(PG_ADMIN_URL, &self.name).await;
        let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await else {
            return;
        };
        for role in [&self.reader, &self.writer] {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
                .execute(&mut admin)
                .await;
        }
    }
}

/// Over stdio, where a scope refusal is an in-band tool error with a receipt
/// (HTTP answers it with a 403 challenge before MCP).
async fn start(fixture: &PgFixture, scope: &str) -> (DataDir, Client) {
    start_with(fixture, scope, true).await
}

async fn start_with(fixture: &PgFixture, scope: &str, separate_reader: bool) -> (DataDir, Client) {
    let data = DataDir::new();
    fixture.configure(&data, separate_reader);
    let token = data.token("agent", scope);
    let client = data.stdio_client(Some(&token)).await;
    (data, client)
}

#[tokio::test]
async fn reads_and_writes_run_on_postgresql_with_types_and_params() {
    let fixture = PgFixture::create().await;
    let (_data, client) = start(&fixture, "db:write").await;
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT id, name, vip, meta, 1.5::float8 AS f FROM customers WHERE name = $1", "params": ["Ada Lovelace"] }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(
        env["result"]["rows"],
        json!([[1, "Ada Lovelace", true, { "tier": 1 }, 1.5]])
    );
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "INSERT INTO customers (name) VALUES ($1), ($2)", "params": ["Grace Hopper", "Edsger Dijkstra"] }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["rows_affected"], 2, "{env}");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "UPDATE customers SET vip = true WHERE id > 2 RETURNING id" }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["rows"], json!([[3], [4]]));
    assert_eq!(env["result"]["rows_affected"], 2);
    assert_eq!(fixture.state().await["customers"], 4);
    // Types without a JSON form say how to get one.
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT int4range(1, 5)" }),
    )
    .await;
    assert_eq!(
        env["result"]["rows"][0][0]["hint"],
        "cast the column to text, e.g. col::text"
    );
    client.cancel().await.ok();
    fixture.drop_all().await;
}

/// Values without a native JSON form come back as the strings a client
/// expects, checked against PostgreSQL's own text for the same values.
#[tokio::test]
async fn dates_times_numerics_uuids_addresses_enums_and_arrays_are_json_values() {
    let fixture = PgFixture::create().await;
    {
        use sqlx::Connection;
        let url = PG_ADMIN_URL.replace("/test", &format!("/{}", fixture.name));
        let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin");
        sqlx::raw_sql("CREATE TYPE mood AS ENUM ('calm', 'alarmed')")
            .execute(&mut admin)
            .await
            .expect("enum");
    }
    let (_data, client) = start(&fixture, "db:read").await;
    let values = [
        ("'alarmed'::mood", json!("alarmed")),
        ("12345.678::numeric", json!("12345.678")),
        ("(-0.5)::numeric(10,2)", json!("-0.50")),
        (
            "123456789012345678901234567890.000000000000000001::numeric",
            json!("123456789012345678901234567890.000000000000000001"),
        ),
        ("0.0001::numeric", json!("0.0001")),
        ("100000000::numeric", json!("100000000")),
        ("'NaN'::numeric", json!("NaN")),
        (
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        ("'10.0.0.1'::inet", json!("10.0.0.1")),
        ("'10.0.0.0/24'::cidr", json!("10.0.0.0/24")),
        ("'2001:db8::1/64'::inet", json!("2001:db8::1/64")),
        ("'2026-11-30'::date", json!("2026-11-30")),
        ("'1969-07-20'::date", json!("1969-07-20")),
        ("'infinity'::date", json!("infinity")),
        (
            "'2026-11-30 01:02:03.5'::timestamp",
            json!("2026-11-30T01:02:03.5"),
        ),
        (
            "'2026-11-30 01:02:03+02'::timestamptz",
            json!("2026-11-29T23:02:03Z"),
        ),
        ("'13:14:15.25'::time", json!("13:14:15.25")),
        (
            "'1 year 2 mons 3 days 04:05:06.5'::interval",
            json!("P1Y2M3DT4H5M6.5S"),
        ),
        ("'-3 days'::interval", json!("P-3D")),
        // Arrays of any of these, nested by dimension, NULLs kept.
        ("ARRAY[1, NULL, 3]", json!([1, null, 3])),
        ("ARRAY[[1, 2], [3, 4]]::int8[]", json!([[1, 2], [3, 4]])),
        ("'{}'::text[]", json!([])),
        ("ARRAY['a', 'b c', NULL]::text[]", json!(["a", "b c", null])),
        ("ARRAY[true, false]", json!([true, false])),
        ("ARRAY[1.5, 2]::float8[]", json!([1.5, 2.0])),
        ("ARRAY['1.10', '-2']::numeric[]", json!(["1.10", "-2"])),
        (
            "ARRAY['2026-11-30', 'infinity']::date[]",
            json!(["2026-11-30", "infinity"]),
        ),
        (
            "ARRAY['alarmed', 'calm']::mood[]",
            json!(["alarmed", "calm"]),
        ),
        (
            "ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']::uuid[]",
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        ),
        ("ARRAY['{\"a\": 1}']::jsonb[]", json!([{ "a": 1 }])),
        ("ARRAY['\\x0102']::bytea[]", json!([{ "base64": "AQI=" }])),
        (
            "ARRAY['10.0.0.1', '::1']::inet[]",
            json!(["10.0.0.1", "::1"]),
        ),
    ];
    for (expression, expected) in values {
        let (env, _) = call(
            &client,
            "db.query",
            json!({ "sql": format!("SELECT {expression} AS v") }),
        )
        .await;
        assert_eq!(status(&env), "ok", "{expression}: {env}");
        assert_eq!(env["result"]["rows"][0][0], expected, "{expression}");
    }
    client.cancel().await.expect("close");
    fixture.drop_all().await;
}

/// Valid PostgreSQL the parser misreads or has no grammar for: a
/// Unicode-escaped identifier runs as the name it spells; a DO block is
/// classified (destructive: held), not refused as unparseable.
#[tokio::test]
async fn valid_postgresql_the_parser_misreads_is_classified_and_runs() {
    let fixture = PgFixture::create().await;
    let (_data, client) = start(&fixture, "db:admin").await;
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": r#"SELECT U&"n\0061me" FROM customers WHERE id = 1"# }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["rows"], json!([["Ada Lovelace"]]));
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "DO $$ BEGIN DELETE FROM customers; END $$" }),
    )
    .await;
    // Destructive: quorum, which this server (no approvers) cannot reach.
    assert_eq!(error_code(&env), "no_approvers", "{env}");
    assert_eq!(receipt(&env)["body"]["class"], "destructive");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("anonymous code block"),
        "{env}"
    );
    client.cancel().await.expect("close");
    fixture.drop_all().await;
}

#[tokio::test]
async fn read_only_bypasses_are_refused_and_change_nothing() {
    let fixture = PgFixture::create().await;
    let before = fixture.state().await;
    let (_data, client) = start(&fixture, "db:read").await;
    let bypasses = [
        "SELECT 1; COMMIT; DROP TABLE customers",
        "END; DELETE FROM customers",
        "COMMIT",
        "SET TRANSACTION READ WRITE",
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "WITH gone AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT * FROM gone",
        "SELECT * INTO stolen FROM customers",
        "SELECT * FROM customers FOR UPDATE",
        "SELECT purge()",
        "EXPLAIN ANALYZE DELETE FROM customers WHERE id = 1",
        "PREPARE p AS DELETE FROM customers WHERE id = 1",
        "EXECUTE p",
        "DO $$ BEGIN DELETE FROM customers; END $$",
        "CALL wipe()",
        "COPY customers TO PROGRAM 'touch /tmp/dualtrust-pwned'",
        "COPY customers FROM '/etc/passwd'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT lo_export(1, '/tmp/dualtrust-pwned')",
        "SELECT dblink_exec('dbname=test', 'DROP TABLE customers')",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT nextval('customers_id_seq')",
        "SELECT setval('customers_id_seq', 1000)",
        "SELECT pg_sleep(30)",
        // Unicode-escaped identifiers: the classifier may not see the name,
        // the read-only role still may not read server files.
        r#"SELECT U&"\0070g_read_file"('/etc/passwd')"#,
        r#"SELECT * FROM U&"\0063ustomers" FOR UPDATE"#,
        // SQL that runs SQL: the classifier sees a read, the read-only
        // transaction refuses the write inside it.
        "SELECT query_to_xml('DELETE FROM customers RETURNING 1', true, true, '')",
        "SET ROLE postgres",
        "RESET ALL",
        "LOCK TABLE customers",
        "CREATE TEMP TABLE t AS SELECT * FROM customers",
        "NOTIFY channel",
        "VACUUM customers",
        "TRUNCATE customers",
        "DROP TABLE customers",
        "DELETE FROM customers",
    ];
    for sql in bypasses {
        let (env, is_error) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert_ne!(status(&env), "ok", "{sql} ran: {env}");
        assert!(
            is_error || status(&env) == "approval_required",
            "{sql}: {env}"
        );
        assert!(
            env["receipt"].is_object(),
            "{sql}: a receipt for the refusal"
        );
    }
    // A long-running read is cancelled at its deadline.
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM generate_series(1, 10000000000)" }),
    )
    .await;
    assert_eq!(error_code(&env), "statement_timeout", "{env}");
    // Quoting tricks are data, not statements: they run as reads and return text.
    for (sql, text) in [
        (
            "SELECT $$; DROP TABLE customers; --$$",
            "; DROP TABLE customers; --",
        ),
        (
            r"SELECT E'\x27; DROP TABLE customers; --'",
            "'; DROP TABLE customers; --",
        ),
    ] {
        let (env, _) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert_eq!(status(&env), "ok", "{sql}: {env}");
        assert_eq!(env["result"]["rows"][0][0], text, "{sql}");
    }
    assert_eq!(fixture.state().await, before, "nothing changed");
    assert!(!std::path::Path::new("/tmp/dualtrust-pwned").exists());
    client.cancel().await.ok();
    fixture.drop_all().await;
}

#[tokio::test]
async fn the_role_is_the_wall_even_for_db_admin() {
    let fixture = PgFixture::create().await;
    let before = fixture.state().await;
    let (_data, client) = start(&fixture, "db:read db:write db:admin").await;
    for (sql, refused_by) in [
        (
            "COPY customers TO PROGRAM 'touch /tmp/dualtrust-pwned'",
            "permission_denied",
        ),
        ("SELECT pg_read_file('/etc/passwd')", "permission_denied"),
        ("CREATE EXTENSION IF NOT EXISTS dblink", "permission_denied"),
        ("CREATE TABLE planted (a int)", "permission_denied"),
        ("SET ROLE postgres", "permission_denied"),
        ("SELECT purge()", "read_only_violation"),
    ] {
        let (env, _) = call(&client, "db.query", json!({ "sql": sql })).await;
        assert_eq!(error_code(&env), refused_by, "{sql}: {env}");
    }
    assert_eq!(fixture.state().await, before, "nothing changed");
    assert!(!std::path::Path::new("/tmp/dualtrust-pwned").exists());
    client.cancel().await.ok();
    fixture.drop_all().await;
}

#[tokio::test]
async fn reads_run_read_only_even_on_a_role_that_may_write() {
    // No read_url: reads use the writer's role, which may DELETE. A function
    // the classifier cannot see into still cannot write: the transaction is
    // READ ONLY.
    let fixture = PgFixture::create().await;
    let before = fixture.state().await;
    let (_data, client) = start_with(&fixture, "db:read", false).await;
    let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT purge()" })).await;
    assert_eq!(error_code(&env), "read_only_violation", "{env}");
    // The deadline is set for the read's own transaction.
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT current_setting('statement_timeout')" }),
    )
    .await;
    assert_eq!(env["result"]["rows"][0][0], "1s", "{env}");
    assert_eq!(fixture.state().await, before);
    client.cancel().await.ok();
    fixture.drop_all().await;
}

#[tokio::test]
async fn nothing_a_call_does_to_its_session_survives_on_the_pooled_connection() {
    let fixture = PgFixture::create().await;
    let mut owner = sqlx::PgConnection::connect(&fixture.url("postgres"))
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION grab() RETURNS int LANGUAGE sql AS $$ SELECT pg_advisory_lock(4242); SELECT 1 $$",
    )
    .execute(&mut owner)
    .await
    .expect("function");
    let data = DataDir::new();
    fixture.configure(&data, false);
    // One connection per pool, so every call reuses the previous call's session.
    let config = std::fs::read_to_string(data.path.join("dualtrust.toml")).expect("config");
    std::fs::write(
        data.path.join("dualtrust.toml"),
        config.replace("[database]\n", "[database]\nmax_connections = 1\n"),
    )
    .expect("config");
    // set_config is an admin statement to the classifier.
    let token = data.token("agent", "db:admin");
    let client = data.stdio_client(Some(&token)).await;
    // A read whose function takes a session advisory lock.
    let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT grab()" })).await;
    assert_eq!(status(&env), "ok", "{env}");
    // The next read can only have the connection once it has been reset.
    let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status(&env), "ok", "{env}");
    let advisory_locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
    )
    .fetch_one(&mut owner)
    .await
    .expect("locks");
    assert_eq!(advisory_locks, 0, "the lock went with the call");

    // A committed write that changes a session setting.
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "UPDATE customers SET vip = vip WHERE set_config('search_path', 'pg_temp', false) IS NOT NULL" }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["rows_affected"], 2, "{env}");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "UPDATE customers SET vip = vip WHERE current_setting('search_path') = 'pg_temp'" }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(
        env["result"]["rows_affected"], 0,
        "the next call's session has the default search_path: {env}"
    );
    client.cancel().await.ok();
    drop(owner);
    fixture.drop_all().await;
}

#[tokio::test]
async fn an_unreachable_postgresql_fails_closed_with_a_receipt() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[database]\nurl = \"postgres://nobody:secret-pw@127.0.0.1:1/app\"\nacquire_timeout_ms = 500\n",
    )
    .expect("config");
    let token = data.token("agent", "db:read");
    let client = data.stdio_client(Some(&token)).await;
    let (env, is_error) = call(&client, "db.query", json!({ "sql": "SELECT 1" })).await;
    assert!(is_error);
    assert!(
        matches!(error_code(&env), "database_unavailable" | "database_busy"),
        "{env}"
    );
    assert!(
        !env.to_string().contains("secret-pw"),
        "no credentials: {env}"
    );
    assert!(env["receipt"].is_object(), "{env}");
    client.cancel().await.ok();
    let out = data.cli(&["init"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("postgres://nobody@127.0.0.1:1/app") && !printed.contains("secret-pw"),
        "{printed}"
    );
}

/// Values bind as the type the statement gives their placeholder: strings
/// for timestamps, dates, UUIDs, numerics, addresses, intervals, enums,
/// arrays and JSON, and NULL for any column, with no cast in the SQL.
#[tokio::test]
async fn parameters_bind_as_the_type_of_their_placeholder() {
    let fixture = PgFixture::create().await;
    {
        let mut owner = sqlx::PgConnection::connect(&fixture.url("postgres"))
            .await
            .expect("owner");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TYPE mood AS ENUM ('calm', 'alarmed');
             CREATE TABLE events (id uuid PRIMARY KEY, at timestamptz NOT NULL, day date, amount numeric(12, 2),
                                  source inet, took interval, feeling mood, tags int4[], doc jsonb, n int4);
             GRANT SELECT, INSERT ON events TO {rw};
             GRANT SELECT ON events TO {ro};",
            rw = fixture.writer,
            ro = fixture.reader
        )))
        .execute(&mut owner)
        .await
        .expect("table");
    }
    let (_data, client) = start(&fixture, "db:write").await;
    let (env, _) = call(
        &client,
        "db.query",
        json!({
            "sql": "INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            "params": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2026-11-30T01:02:03.5+02:00", "2026-11-30",
                       "12.50", "10.0.0.1", "1 day 2 hours", "alarmed", "{1,2,3}", "{\"k\": [1, 2]}", 7],
        }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    let (env, _) = call(
        &client,
        "db.query",
        json!({
            "sql": "INSERT INTO events (id, at, day, amount, source, took, feeling, tags, doc, n) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            "params": ["b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2026-12-01T00:00:00Z", null, null, null, null, null, null, null, null],
        }),
    )
    .await;
    assert_eq!(status(&env), "ok", "NULL binds for any column: {env}");
    let (env, _) = call(
        &client,
        "db.query",
        json!({
            "sql": "SELECT id, at, day, amount, source, took, feeling, tags, doc, n FROM events WHERE at < $1 AND id = $2 AND feeling = $3",
            "params": ["2026-11-30T12:00:00Z", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "alarmed"],
        }),
    )
    .await;
    assert_eq!(
        env["result"]["rows"],
        json!([["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2026-11-29T23:02:03.5Z", "2026-11-30", "12.50",
                "10.0.0.1", "P1DT2H", "alarmed", [1, 2, 3], { "k": [1, 2] }, 7]]),
        "{env}"
    );
    // A string its type does not accept: a clear refusal, nothing written.
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "INSERT INTO events (id, at) VALUES ($1, $2)", "params": ["not-a-uuid", "2026-01-01T00:00:00Z"] }),
    )
    .await;
    assert_eq!(error_code(&env), "invalid_arguments", "{env}");
    let message = env["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("$1") && message.contains("uuid"),
        "{message}"
    );
    receipt(&env);
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM events" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[2]]));
    client.cancel().await.expect("close");
    fixture.drop_all().await;
}
