//! Identity-bound data access: every statement runs with the verified
//! caller in the database, so row-level security written by the operator
//! holds however the SQL is written. PostgreSQL sees `dualtrust.subject`
//! and `dualtrust.<claim>` as transaction-local settings; SQLite sees the
//! server-bound parameters `:dt_subject` and `:dt_<claim>`.

use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::{
    Client, DataDir, PG_ADMIN_URL, call, create_pg_database, drop_pg_database, error_code, receipt,
    status,
};

/// The README's row-level security example, on a role that is neither
/// superuser nor owner (either would bypass the policies).
const POLICIES: &str = "
CREATE TABLE invoices (id serial PRIMARY KEY, tenant text NOT NULL, customer text NOT NULL, amount numeric NOT NULL);
INSERT INTO invoices (tenant, customer, amount) VALUES
  ('a', 'alpha', 10), ('a', 'acme', 20), ('b', 'bravo', 30), ('b', 'beta', 40), ('b', 'bolt', 50);
CREATE TABLE notes (
  id serial PRIMARY KEY,
  tenant text NOT NULL DEFAULT current_setting('dualtrust.tenant'),
  author text NOT NULL DEFAULT current_setting('dualtrust.subject'),
  body text);
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoices
  USING (tenant = current_setting('dualtrust.tenant', true))
  WITH CHECK (tenant = current_setting('dualtrust.tenant', true));
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes
  USING (tenant = current_setting('dualtrust.tenant', true))
  WITH CHECK (tenant = current_setting('dualtrust.tenant', true));
CREATE VIEW invoice_totals WITH (security_invoker = true) AS
  SELECT tenant, sum(amount) AS total, count(*) AS n FROM invoices GROUP BY tenant;
CREATE FUNCTION invoice_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM invoices $$;
-- A careless operator function that rebinds the tenant: the classifier
-- cannot see into it, so the check after the statement must catch it.
CREATE FUNCTION rebind(t text) RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT set_config('dualtrust.tenant', t, true) $$;
";

struct RlsFixture {
    database: String,
    role: String,
}

impl RlsFixture {
    async fn create() -> Self {
        let database = create_pg_database(PG_ADMIN_URL).await;
        let role = database.replacen("dt_", "dt_agent_", 1);
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
            .execute(&mut admin)
            .await
            .expect("role");
        let mut db = sqlx::PgConnection::connect(&url("postgres", &database))
            .await
            .expect("connect");
        let grants = format!(
            "REVOKE ALL ON SCHEMA public FROM PUBLIC;
             GRANT CONNECT ON DATABASE {database} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{POLICIES}{grants}")))
            .execute(&mut db)
            .await
            .expect("tables, policies and grants");
        Self { database, role }
    }

    fn data_dir(&self) -> DataDir {
        let data = DataDir::new();
        std::fs::write(
            data.path.join("dualtrust.toml"),
            format!(
                "[identity]\nclaims = [\"tenant\"]\n\n[database]\nurl = \"{}\"\nstatement_timeout_ms = 2000\n",
                url(&self.role, &self.database)
            ),
        )
        .expect("config");
        data
    }

    /// Every row, read as the owner: what an attack would want to change.
    async fn all_rows(&self) -> (i64, Vec<(String, String)>) {
        let mut db = sqlx::PgConnection::connect(&url("postgres", &self.database))
            .await
            .expect("connect");
        let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
            .fetch_one(&mut db)
            .await
            .expect("count");
        let notes = sqlx::query_as("SELECT tenant, author FROM notes ORDER BY id")
            .fetch_all(&mut db)
            .await
            .expect("notes");
        (invoices, notes)
    }

    async fn drop_all(self) {
        drop_pg_database(PG_ADMIN_URL, &self.database).await;
        if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP ROLE IF EXISTS {}",
                self.role
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

fn url(role: &str, database: &str) -> String {
    format!("postgres://{role}@127.0.0.1:5432/{database}")
}

/// A stdio client whose token carries `claims` (a `db:admin` token unless
/// the claims say otherwise: the isolation must not rest on scopes).
async fn client_with(data: &DataDir, claims: Value) -> Client {
    let token = data.forged_token(|c| {
        c["scope"] = json!("db:read db:write db:admin");
        for (k, v) in claims.as_object().expect("claims object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
    });
    data.stdio_client(Some(&token)).await
}

async fn rows(client: &Client, sql: &str) -> Value {
    let (env, _) = call(client, "db.query", json!({ "sql": sql })).await;
    assert_eq!(status(&env), "ok", "{sql}: {env}");
    env["result"]["rows"].clone()
}

#[tokio::test]
async fn tenant_a_reads_only_its_own_rows_however_the_query_is_written() {
    let fixture = RlsFixture::create().await;
    let data = fixture.data_dir();
    let alice = client_with(&data, json!({ "sub": "alice", "tenant": "a" })).await;
    let shapes: &[(&str, Value)] = &[
        (
            "SELECT customer FROM invoices ORDER BY customer",
            json!([["acme"], ["alpha"]]),
        ),
        (
            "SELECT customer FROM invoices WHERE tenant = 'b'",
            json!([]),
        ),
        ("SELECT count(*) FROM invoices", json!([[2]])),
        (
            "SELECT customer FROM invoices WHERE tenant <> 'a' OR true ORDER BY 1",
            json!([["acme"], ["alpha"]]),
        ),
        (
            "SELECT i.customer, j.customer FROM invoices i JOIN invoices j ON j.id <> i.id ORDER BY 1",
            json!([["acme", "alpha"], ["alpha", "acme"]]),
        ),
        (
            "SELECT count(*) FROM invoices i FULL JOIN (SELECT id FROM invoices WHERE tenant = 'b') b ON b.id = i.id",
            json!([[2]]),
        ),
        (
            "WITH everything AS (SELECT * FROM invoices) SELECT count(*) FROM everything",
            json!([[2]]),
        ),
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) \
             SELECT count(*) FROM invoices JOIN n ON n.i = invoices.id",
            json!([[2]]),
        ),
        (
            "SELECT customer FROM invoices WHERE id IN (SELECT id FROM invoices WHERE tenant = 'b')",
            json!([]),
        ),
        (
            "SELECT (SELECT string_agg(customer, ',' ORDER BY customer) FROM invoices)",
            json!([["acme,alpha"]]),
        ),
        (
            "SELECT EXISTS (SELECT 1 FROM invoices WHERE tenant = 'b')",
            json!([[false]]),
        ),
        (
            "SELECT customer FROM invoices UNION SELECT customer FROM public.invoices ORDER BY 1",
            json!([["acme"], ["alpha"]]),
        ),
        (
            "SELECT tenant, total::text, n FROM invoice_totals",
            json!([["a", "30", 2]]),
        ),
        ("SELECT invoice_count()", json!([[2]])),
        ("SELECT sum(amount)::text FROM invoices", json!([["30"]])),
        (
            "SELECT count(*) FROM json_array_elements((SELECT json_agg(i) FROM invoices i))",
            json!([[2]]),
        ),
        (
            "SELECT customer FROM invoices, LATERAL (SELECT amount * 2 AS twice) l WHERE twice > 0 ORDER BY 1",
            json!([["acme"], ["alpha"]]),
        ),
        (
            "SELECT count(*) OVER () FROM invoices LIMIT 1",
            json!([[2]]),
        ),
        (
            "SELECT customer FROM invoices WHERE customer LIKE 'b%'",
            json!([]),
        ),
        (
            "SELECT t.customer FROM (SELECT * FROM invoices ORDER BY amount DESC) t ORDER BY 1",
            json!([["acme"], ["alpha"]]),
        ),
        (
            "SELECT customer FROM invoices TABLESAMPLE SYSTEM (100) ORDER BY 1",
            json!([["acme"], ["alpha"]]),
        ),
        (
            r#"SELECT "customer" FROM "public"."invoices" ORDER BY 1"#,
            json!([["acme"], ["alpha"]]),
        ),
        (
            "SELECT count(*) FROM pg_catalog.pg_class c, invoices WHERE c.relname = 'invoices'",
            json!([[2]]),
        ),
        (
            "SELECT position('bravo' IN table_to_xml('invoices', true, false, '')::text) > 0",
            json!([[false]]),
        ),
        (
            "SELECT current_setting('dualtrust.subject'), current_setting('dualtrust.tenant')",
            json!([["alice", "a"]]),
        ),
    ];
    for (sql, expected) in shapes {
        assert_eq!(&rows(&alice, sql).await, expected, "{sql}");
    }

    // Writes: another tenant's rows can be neither made nor changed.
    let (env, _) = call(
        &alice,
        "db.query",
        json!({ "sql": "INSERT INTO invoices (tenant, customer, amount) VALUES ('b', 'forged', 1)" }),
    )
    .await;
    assert_eq!(error_code(&env), "permission_denied", "{env}");
    receipt(&env);
    for sql in [
        "UPDATE invoices SET tenant = 'a' WHERE tenant = 'b'",
        "DELETE FROM invoices WHERE customer = 'bravo'",
    ] {
        let (env, _) = call(&alice, "db.query", json!({ "sql": sql })).await;
        assert_eq!(status(&env), "ok", "{sql}: {env}");
        assert_eq!(env["result"]["rows_affected"], 0, "{sql}");
    }
    assert_eq!(
        rows(
            &alice,
            "INSERT INTO notes (body) VALUES ('hello') RETURNING tenant, author"
        )
        .await,
        json!([["a", "alice"]])
    );

    // Tenant b, on the same server, sees its own rows: the binding is
    // per call, not "nothing visible".
    let bob = client_with(&data, json!({ "sub": "bob", "tenant": "b" })).await;
    assert_eq!(
        rows(&bob, "SELECT customer FROM invoices ORDER BY 1").await,
        json!([["beta"], ["bolt"], ["bravo"]])
    );
    assert_eq!(rows(&bob, "SELECT count(*) FROM notes").await, json!([[0]]));
    bob.cancel().await.ok();

    // A token without the bound claim is refused, not run unbound.
    let nobody = client_with(&data, json!({ "sub": "carol", "tenant": null })).await;
    let (env, _) = call(
        &nobody,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM invoices" }),
    )
    .await;
    assert_eq!(error_code(&env), "identity_claim_missing", "{env}");
    receipt(&env);
    nobody.cancel().await.ok();

    alice.cancel().await.ok();
    assert_eq!(
        fixture.all_rows().await,
        (5, vec![("a".to_string(), "alice".to_string())])
    );
    fixture.drop_all().await;
}

#[tokio::test]
async fn no_statement_can_rebind_the_tenant_even_with_db_admin() {
    let fixture = RlsFixture::create().await;
    let data = fixture.data_dir();
    let alice = client_with(&data, json!({ "sub": "alice", "tenant": "a" })).await;
    let attempts = [
        (
            "SELECT set_config('dualtrust.tenant', 'b', true), customer FROM invoices",
            "identity_setting",
        ),
        (
            "WITH x AS (SELECT set_config('dualtrust.tenant', 'b', true) AS s) SELECT customer FROM x, invoices",
            "identity_setting",
        ),
        (
            "SELECT customer FROM invoices, LATERAL pg_catalog.set_config('DUALTRUST.TENANT', 'b', true) s",
            "identity_setting",
        ),
        (
            "SELECT set_config('dualtrust' || '.tenant', 'b', true)",
            "identity_setting",
        ),
        ("SET dualtrust.tenant = 'b'", "identity_setting"),
        ("RESET ALL", "identity_setting"),
        (
            "SELECT query_to_xml('SELECT set_config(''dualtrust.tenant'', ''b'', true), * FROM invoices', true, false, '')",
            "sql_from_string",
        ),
        // Past the classifier (an operator function it cannot see into):
        // the check after the statement withholds the result.
        (
            "SELECT rebind('b'), (SELECT string_agg(customer, ',') FROM invoices)",
            "identity_setting",
        ),
        (
            "UPDATE invoices SET amount = amount + 1 WHERE rebind('b') IS NOT NULL",
            "identity_setting",
        ),
    ];
    for (sql, code) in attempts {
        let (env, is_error) = call(&alice, "db.query", json!({ "sql": sql })).await;
        assert!(is_error, "{sql}: {env}");
        assert_eq!(error_code(&env), code, "{sql}: {env}");
        assert!(env["result"].is_null(), "{sql}: a result leaked: {env}");
        for other in ["bravo", "beta", "bolt"] {
            assert!(!env.to_string().contains(other), "{sql}: {env}");
        }
        receipt(&env);
    }
    alice.cancel().await.ok();
    // The rolled-back update changed nothing.
    let mut db = sqlx::PgConnection::connect(&url("postgres", &fixture.database))
        .await
        .expect("connect");
    let total: String = sqlx::query_scalar("SELECT sum(amount)::text FROM invoices")
        .fetch_one(&mut db)
        .await
        .expect("sum");
    assert_eq!(total, "150");
    fixture.drop_all().await;
}

/// SQLite has no row-level security; what the server offers there is the
/// verified identity as parameters only it binds.
#[tokio::test]
async fn sqlite_statements_name_the_verified_identity_as_server_bound_parameters() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[identity]\nclaims = [\"tenant\"]\n",
    )
    .expect("config");
    // `dualtrust token --claim` mints what an IdP would put in the token.
    let out = data.cli(&[
        "token", "--sub", "alice", "--scope", "db:read", "--claim", "tenant=a",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let alice = data.stdio_client(Some(token.trim())).await;
    let (env, _) = call(
        &alice,
        "db.query",
        json!({ "sql": "SELECT ? AS first, :dt_subject AS who, :dt_tenant AS tenant, ? AS second", "params": [1, "two"] }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["rows"], json!([[1, "alice", "a", "two"]]));
    // A caller cannot fill the server's slots with values of its own.
    let (env, _) = call(
        &alice,
        "db.query",
        json!({ "sql": "SELECT :dt_subject", "params": ["mallory"] }),
    )
    .await;
    assert_eq!(error_code(&env), "too_many_params", "{env}");
    for (sql, code) in [
        ("SELECT :dt_region", "named_parameter"),
        ("SELECT :name", "named_parameter"),
        ("SELECT @dt_subject", "named_parameter"),
    ] {
        let (env, _) = call(&alice, "db.query", json!({ "sql": sql })).await;
        assert_eq!(error_code(&env), code, "{sql}: {env}");
        receipt(&env);
    }
    alice.cancel().await.ok();
}
