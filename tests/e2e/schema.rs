//! The schema as MCP resources (and the `db.schema` tool behind them), read
//! by rmcp's client from SQLite and PostgreSQL: only for `db:read`, each
//! read a receipt, with private caching hints.

use rmcp::model::{CacheScope, ReadResourceRequestParams, ResourceContents};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::{
    Client, DataDir, PG_ADMIN_URL, call, create_pg_database, drop_pg_database, error_code,
};

/// The text of a resource, parsed, and the decision that came with it.
async fn read(client: &Client, uri: &str) -> Result<(Value, Value), rmcp::ServiceError> {
    let result = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await?;
    assert_eq!(result.cache_scope, Some(CacheScope::Private));
    assert!(result.ttl_ms.is_some_and(|ttl| ttl > 0));
    let [
        ResourceContents::TextResourceContents {
            text, mime_type, ..
        },
    ] = result.contents.as_slice()
    else {
        panic!("one text content: {:?}", result.contents)
    };
    assert_eq!(mime_type.as_deref(), Some("application/json"));
    let outcome = result
        .meta
        .as_ref()
        .and_then(|m| m.get("io.dualtrust/outcome"))
        .cloned()
        .expect("the decision in _meta");
    Ok((serde_json::from_str(text).expect("JSON"), outcome))
}

fn error_text(error: rmcp::ServiceError) -> String {
    match error {
        rmcp::ServiceError::McpError(e) => format!("{} {}", e.code.0, e.message),
        other => panic!("an MCP error, not {other}"),
    }
}

#[tokio::test]
async fn an_agent_reads_the_sqlite_schema_as_resources_before_writing_sql() {
    let data = DataDir::new();
    let token = data.token("agent", "db:read");
    let client = data.stdio_client(Some(&token)).await;

    let listed = client
        .list_all_resources_with_cache_hint()
        .await
        .expect("resources/list");
    assert_eq!(listed.cache_scope, Some(CacheScope::Private));
    let uris: Vec<&str> = listed.items.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "dualtrust://db/schema",
            "dualtrust://db/tables/customers",
            "dualtrust://db/tables/orders",
            "dualtrust://db/tables/products",
        ]
    );
    let templates = client
        .list_all_resource_templates()
        .await
        .expect("templates");
    assert_eq!(templates[0].uri_template, "dualtrust://db/tables/{table}");

    let (overview, outcome) = read(&client, "dualtrust://db/schema").await.expect("read");
    assert_eq!(overview["dialect"], "sqlite");
    assert_eq!(overview["tables"].as_array().map(Vec::len), Some(3));
    assert_eq!(outcome["status"], "ok");
    assert_eq!(outcome["receipt"]["body"]["tool"], "db.schema");
    assert_eq!(outcome["receipt"]["body"]["decision"], "allowed");

    let (orders, _) = read(&client, "dualtrust://db/tables/orders")
        .await
        .expect("read");
    assert_eq!(orders["kind"], "table");
    assert_eq!(
        orders["columns"][1],
        json!({ "name": "customer_id", "type": "INTEGER", "nullable": false, "default": null, "primary_key": false })
    );
    assert_eq!(orders["columns"][0]["primary_key"], true);
    assert!(
        orders["foreign_keys"]
            .as_array()
            .expect("keys")
            .contains(&json!({ "columns": ["customer_id"], "references": { "table": "customers", "columns": ["id"] } })),
        "{orders}"
    );
    assert_eq!(
        orders["indexes"][0],
        json!({ "name": "orders_customer", "unique": false, "primary_key": false, "columns": ["customer_id"] })
    );

    // Every listing carries 2026-07-28 caching hints; there are no prompts,
    // and saying so is a cacheable empty list, not an error.
    let tools = client.list_tools(None).await.expect("tools/list");
    assert_eq!(tools.cache_scope, Some(CacheScope::Private));
    let prompts = client.list_prompts(None).await.expect("prompts/list");
    assert!(prompts.prompts.is_empty() && prompts.ttl_ms.is_some());

    // The same through the tool, for clients without resources.
    let (env, _) = call(&client, "db.schema", json!({ "table": "customers" })).await;
    assert_eq!(env["result"]["columns"][2]["name"], "email", "{env}");

    // Unknown names, hostile names, unknown URIs: "not found", nothing run.
    for uri in [
        "dualtrust://db/tables/nope",
        "dualtrust://db/tables/customers%27%3B%20DROP%20TABLE%20customers%3B--",
        "dualtrust://db/tables/%ff",
        "dualtrust://db/tables/",
        "file:///etc/passwd",
    ] {
        let error = read(&client, uri).await.expect_err(uri);
        let text = error_text(error);
        assert!(
            text.starts_with("-32602") || text.starts_with("-32002"),
            "{uri}: {text}"
        );
    }
    // Each refusal left a receipt: unknown tables through db.schema, a URI
    // this server does not serve as unknown_resource.
    let receipts = data.receipts();
    let reasons: Vec<&str> = receipts[receipts.len() - 5..]
        .iter()
        .map(|r| r["body"]["reason"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        reasons,
        [
            "unknown_table",
            "unknown_table",
            "unknown_resource",
            "unknown_resource",
            "unknown_resource"
        ]
    );
    let (env, _) = call(&client, "db.schema", json!({ "table": "x\u{0}y" })).await;
    assert_eq!(error_code(&env), "invalid_table");
    let (env, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) FROM customers" }),
    )
    .await;
    assert_eq!(env["result"]["rows"], json!([[10]]));
    client.cancel().await.ok();

    // Without db:read there is nothing to list, and a read is refused with
    // a receipt in the error.
    let token = data.token("auditor", "audit:read");
    let client = data.stdio_client(Some(&token)).await;
    assert!(client.list_all_resources().await.expect("list").is_empty());
    assert!(
        client
            .list_all_resource_templates()
            .await
            .expect("templates")
            .is_empty()
    );
    let error = read(&client, "dualtrust://db/schema")
        .await
        .expect_err("no scope");
    let rmcp::ServiceError::McpError(e) = error else {
        panic!("an MCP error");
    };
    assert!(e.message.contains("insufficient_scope"), "{}", e.message);
    assert_eq!(
        e.data
            .as_ref()
            .map(|d| d["receipt"]["body"]["decision"].clone()),
        Some(json!("denied"))
    );
    client.cancel().await.ok();
}

#[tokio::test]
async fn the_postgresql_schema_shows_what_the_role_may_use_with_keys_indexes_and_views() {
    let name = create_pg_database(PG_ADMIN_URL).await;
    let role = name.replacen("dt_", "dt_schema_", 1);
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(&mut admin)
        .await
        .expect("role");
    let mut db = sqlx::PgConnection::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.customers (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, created timestamptz DEFAULT now());
         CREATE TABLE shop.orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint NOT NULL REFERENCES shop.customers (id),
                                   total numeric(10, 2), tags text[]);
         CREATE INDEX orders_by_customer ON shop.orders (customer_id, total DESC);
         CREATE VIEW shop.big_orders AS SELECT id, total FROM shop.orders WHERE total > 100;
         CREATE TABLE shop.secrets (k text);
         REVOKE ALL ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA shop TO {role};
         GRANT SELECT ON shop.customers, shop.orders, shop.big_orders TO {role};"
    )))
    .execute(&mut db)
    .await
    .expect("tables");
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        format!("[database]\nurl = \"postgres://{role}@127.0.0.1:5432/{name}\"\n"),
    )
    .expect("config");
    let token = data.token("agent", "db:read");
    let client = data.stdio_client(Some(&token)).await;

    let uris: Vec<String> = client
        .list_all_resources()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.uri)
        .collect();
    // `shop.secrets` is not the role's to use, so it is not listed.
    assert_eq!(
        uris,
        [
            "dualtrust://db/schema",
            "dualtrust://db/tables/shop.big_orders",
            "dualtrust://db/tables/shop.customers",
            "dualtrust://db/tables/shop.orders",
        ]
    );
    let (orders, _) = read(&client, "dualtrust://db/tables/shop.orders")
        .await
        .expect("read");
    assert_eq!(orders["dialect"], "postgresql");
    let columns: Vec<(String, String, bool)> = orders["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["type"].as_str().unwrap_or_default().to_string(),
                c["nullable"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("id".into(), "integer".into(), false),
            ("customer_id".into(), "bigint".into(), false),
            ("total".into(), "numeric(10,2)".into(), true),
            ("tags".into(), "text[]".into(), true),
        ]
    );
    assert_eq!(orders["columns"][0]["primary_key"], true);
    assert_eq!(
        orders["foreign_keys"][0]["references"]["table"],
        "shop.customers"
    );
    let index_definitions: Vec<&str> = orders["indexes"]
        .as_array()
        .expect("indexes")
        .iter()
        .filter_map(|i| i["definition"].as_str())
        .collect();
    assert!(
        index_definitions
            .iter()
            .any(|d| d.contains("orders_by_customer") && d.contains("(customer_id, total DESC)")),
        "{index_definitions:?}"
    );
    // An unqualified name that is unambiguous works too.
    let (customers, _) = read(&client, "dualtrust://db/tables/customers")
        .await
        .expect("read");
    assert_eq!(customers["name"], "shop.customers");
    assert!(
        customers["columns"][2]["default"]
            .as_str()
            .is_some_and(|d| d.contains("now()"))
    );
    let (view, _) = read(&client, "dualtrust://db/tables/shop.big_orders")
        .await
        .expect("read");
    assert_eq!(view["kind"], "view");
    assert!(
        view["definition"]
            .as_str()
            .is_some_and(|d| d.contains("total > 100")),
        "{view}"
    );
    let error = read(&client, "dualtrust://db/tables/shop.secrets")
        .await
        .expect_err("not the role's");
    assert!(error_text(error).contains("unknown_table"));
    client.cancel().await.ok();
    drop_pg_database(PG_ADMIN_URL, &name).await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await;
}
