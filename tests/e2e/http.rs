use serde_json::{Value, json};

use crate::common::{DataDir, call, receipt, status, www_authenticate};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

async fn post_mcp(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INIT);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("http request")
}

#[tokio::test]
async fn unauthenticated_requests_get_401_with_resource_metadata() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let url = server.mcp_url();

    let response = post_mcp(&url, &[]).await;
    assert_eq!(response.status(), 401);
    let challenge = www_authenticate(&response);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!(
            r#"resource_metadata="{}/.well-known/oauth-protected-resource""#,
            server.base
        )),
        "{challenge}"
    );
    assert!(
        !challenge.contains("error="),
        "no error code without credentials: {challenge}"
    );
    assert!(
        challenge.contains(r#"scope="db:read "#),
        "the scopes to ask for: {challenge}"
    );

    let now = dualtrust::now_unix();
    let expired = data.forged_token(|c| c["exp"] = json!(now - 3600));
    let other_audience = data.forged_token(|c| c["aud"] = json!("not-us"));
    for token in [expired.as_str(), other_audience.as_str(), "not-a-jwt"] {
        let response = post_mcp(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(response.status(), 401);
        let challenge = www_authenticate(&response);
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
        let body: Value = response.json().await.expect("json body");
        assert_eq!(body["error"], "invalid_token");
        assert!(
            !body.to_string().contains("jsonwebtoken"),
            "no verifier internals: {body}"
        );
    }

    // A token in the query string is never accepted (RFC 6750 section 2.3 is off).
    let good = data.token("alice", "db:read");
    let response = post_mcp(&format!("{url}?access_token={good}"), &[]).await;
    assert_eq!(response.status(), 401);

    // Wrong scheme.
    let response = post_mcp(&url, &[("authorization", &format!("Basic {good}"))]).await;
    assert_eq!(response.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn dns_rebinding_defences_answer_403() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let token = data.token("alice", "db:read");
    let auth = format!("Bearer {token}");
    let response = post_mcp(
        &server.mcp_url(),
        &[("authorization", &auth), ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(response.status(), 403);
    let response = post_mcp(
        &server.mcp_url(),
        &[("authorization", &auth), ("host", "evil.example")],
    )
    .await;
    assert_eq!(response.status(), 403);
    let response = post_mcp(&server.mcp_url(), &[("authorization", &auth)]).await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn well_known_documents_are_served() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!(
            "{}/.well-known/oauth-protected-resource",
            server.base
        ))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["resource"], server.mcp_url());
    assert!(
        meta["scopes_supported"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("db:read")))
    );
    assert_eq!(meta["bearer_methods_supported"], json!(["header"]));

    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", server.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    for path in ["/healthz", "/readyz"] {
        let response = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("probe");
        assert_eq!(response.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn mcp_over_http_with_a_token_and_receipts_verify_against_the_jwks() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let client = server
        .client(&data.token("alice", "db:read audit:read"))
        .await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        ["db.query", "db.schema", "audit.verify"],
        "what these scopes can use"
    );

    let (env, is_error) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT sku, price_cents FROM products ORDER BY price_cents DESC LIMIT 2" }),
    )
    .await;
    assert!(!is_error, "{env}");
    assert_eq!(
        env["result"]["rows"],
        json!([["MN-003", 32900], ["HD-004", 19900]])
    );
    let r = receipt(&env).clone();
    assert_eq!(r["body"]["transport"], "http");

    let (verdict, _) = call(&client, "audit.verify", json!({ "receipt": r.clone() })).await;
    assert_eq!(verdict["result"]["valid"], true, "{verdict}");

    // Independently: the receipt verifies with the published JWKS alone.
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", server.base))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let keys = dualtrust::keys::published_keys_from_jwks(&jwks);
    let receipt: dualtrust::audit::Receipt = serde_json::from_value(r).expect("receipt");
    receipt
        .check_signature(&keys)
        .expect("verifies with the JWKS");

    // Missing scope over HTTP: 403 insufficient_scope naming the scope, which
    // rmcp's client surfaces as a step-up challenge; nothing ran.
    let Value::Object(args) = json!({ "argv": ["ls"] }) else {
        unreachable!()
    };
    let refused = client
        .call_tool(rmcp::model::CallToolRequestParams::new("terminal.execute").with_arguments(args))
        .await
        .expect_err("403");
    let text = format!("{refused:?}");
    assert!(text.contains("InsufficientScope"), "{text}");
    assert!(text.contains(r#"scope=\"terminal:execute\""#), "{text}");
    client.cancel().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn each_supported_protocol_version_is_negotiated_over_http() {
    use rmcp::ServiceExt;
    use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let data = DataDir::new();
    let server = data.http_server().await;
    let token = data.token("alice", "db:read");
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let config = StreamableHttpClientTransportConfig::with_uri(server.mcp_url())
            .auth_header(token.clone());
        let transport = StreamableHttpClientTransport::from_config(config);
        let client = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("e2e", "1"),
        )
        .with_protocol_version(version.clone())
        .serve(transport)
        .await
        .expect("initialize");
        let agreed = client.peer_info().map(|i| i.protocol_version.clone());
        assert_eq!(agreed, Some(version.clone()));
        let (env, _) = call(&client, "db.query", json!({ "sql": "SELECT 1 AS one" })).await;
        assert_eq!(status(&env), "ok", "{version:?}: {env}");
        client.cancel().await.expect("close");
    }
    server.stop().await;
}

/// One HTTP/1.1 request written byte for byte, as a hostile client would;
/// the status code of the answer.
async fn raw_status(base: &str, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(request.replace('\n', "\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

fn same_decision(body: &Value) -> Value {
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        for varying in ["seq", "prev", "ts_ms", "transport"] {
            map.remove(varying);
        }
    }
    body
}

#[tokio::test]
async fn every_front_door_refusal_leaves_one_receipt_with_the_fields_stdio_records() {
    let data = DataDir::new();
    let reader = data.token("alice", "db:read");
    let insert = json!({ "sql": "INSERT INTO customers (name, email, country, created_at) VALUES ('x', 'x@example.test', 'XX', '2026-01-01')" });

    // The same scope refusal over stdio and over HTTP: the same receipt.
    let stdio = data.stdio_client(Some(&reader)).await;
    let (envelope, _) = call(&stdio, "db.query", insert.clone()).await;
    assert_eq!(status(&envelope), "denied", "{envelope}");
    stdio.cancel().await.ok();
    let over_stdio = data.receipts().pop().expect("a receipt");

    let server = data.http_server().await;
    let http = reqwest::Client::new();
    let tool_call = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "db.query", "arguments": insert }
    });
    let response = http
        .post(server.mcp_url())
        .bearer_auth(&reader)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .json(&tool_call)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 403);
    let over_http = data.receipts().pop().expect("a receipt");
    assert_eq!(over_http["body"]["transport"], "http");
    assert_eq!(over_http["body"]["class"], "write");
    assert_eq!(
        same_decision(&over_http["body"]),
        same_decision(&over_stdio["body"]),
        "one decision, one receipt, whichever the transport"
    );

    // Each refusal below adds exactly one receipt with this reason.
    let mut expected = data.receipts().len();
    let mut refused = |reason: &str, subject: Option<&str>| {
        let receipts = data.receipts();
        expected += 1;
        assert_eq!(receipts.len(), expected, "one receipt for {reason}");
        let last = &receipts[expected - 1]["body"];
        assert_eq!(last["reason"], reason, "{last}");
        assert_eq!(last["decision"], "denied", "{last}");
        assert_eq!(last["subject"].as_str(), subject, "{last}");
    };

    // POST /approvals: without approvals:write; then bodies that are not
    // an approval.
    let approvals = format!("{}/approvals", server.base);
    let approver = data.token("bob", "approvals:write");
    let response = http
        .post(&approvals)
        .bearer_auth(&reader)
        .json(&json!({ "lease_id": "0".repeat(32), "approver_id": "bob", "signature": "x" }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 403);
    refused("insufficient_scope", Some("alice"));
    let response = http
        .get(format!("{approvals}/{}", "0".repeat(32)))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 403);
    refused("insufficient_scope", Some("alice"));
    for body in [
        "not json".to_string(),
        json!({ "lease_id": "0".repeat(32), "approver_id": "bob" }).to_string(),
        json!({ "lease_id": "0".repeat(32), "approver_id": "bob", "signature": 7 }).to_string(),
    ] {
        let response = http
            .post(&approvals)
            .bearer_auth(&approver)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400, "{body}");
        refused("invalid_request", Some("bob"));
    }

    // Two Authorization headers, the valid one first: neither is used.
    let response = http
        .post(server.mcp_url())
        .header("authorization", format!("Bearer {reader}"))
        .header("authorization", "Bearer garbage")
        .header("accept", "application/json, text/event-stream")
        .json(&tool_call)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    refused("duplicate_credentials", None);

    // A token issued a year from now.
    let future = data.forged_token(|claims| {
        claims["iat"] = json!(claims["exp"].as_u64().unwrap_or(0) + 365 * 86_400);
    });
    let response = http
        .post(server.mcp_url())
        .bearer_auth(&future)
        .header("accept", "application/json, text/event-stream")
        .json(&tool_call)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 401);
    refused("issued_in_future", None);

    // Ambiguous hosts (RFC 9112 section 3.2), written on a raw socket.
    let host = server.base.trim_start_matches("http://").to_string();
    let body = INIT;
    let length = body.len();
    let head = |extra: &str, target: &str| {
        format!(
            "POST {target} HTTP/1.1\nHost: {host}\n{extra}Authorization: Bearer {reader}\ncontent-type: application/json\naccept: application/json, text/event-stream\ncontent-length: {length}\n\n{body}"
        )
    };
    assert_eq!(
        raw_status(&server.base, &head("Host: evil.example\n", "/mcp")).await,
        400
    );
    refused("ambiguous_host", None);
    assert_eq!(
        raw_status(&server.base, &head("", "http://other.example/mcp")).await,
        400
    );
    refused("ambiguous_host", None);
    assert_eq!(raw_status(&server.base, &head("", "/mcp")).await, 200);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_rpc_over_http_is_a_400_with_the_json_rpc_error() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let token = data.token("alice", "db:read");
    let http = reqwest::Client::new();
    for (body, code, id) in [
        (r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\ud800"}}"#.to_string(), -32700, Value::Null),
        (format!("{}{}", "[".repeat(300), "]".repeat(300)), -32700, Value::Null),
        (r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"n":1e999}}"#.to_string(), -32700, Value::Null),
        (r#"[{"jsonrpc":"2.0","id":3,"method":"ping"}]"#.to_string(), -32600, Value::Null),
        (r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"db.query","arguments":[1]}}"#.to_string(), -32602, json!(4)),
    ] {
        let response = http
            .post(server.mcp_url())
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400, "{body:.60}");
        assert!(
            response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
        );
        let answer: Value = response.json().await.expect("a JSON-RPC error");
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert_eq!(answer["id"], id, "{answer}");
    }
    let refusals = data
        .receipts()
        .iter()
        .filter(|r| r["body"]["tool"] == "jsonrpc" && r["body"]["subject"] == "alice")
        .count();
    assert_eq!(refusals, 5);
    server.stop().await;
}

/// A connection from `source` (any 127/8 address is loopback) to the server.
async fn connect_from(base: &str, source: [u8; 4]) -> tokio::net::TcpStream {
    let server: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .expect("bind source");
    socket.connect(server).await.expect("connect")
}

/// What the server sends before it closes, waiting at most `patience`;
/// `None` if it neither answers nor closes in that time.
async fn until_closed(
    stream: &mut tokio::net::TcpStream,
    patience: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).to_string()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_idle_and_numerous_connections_cannot_hold_the_server() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[http]\nheader_timeout_ms = 600\nbody_timeout_ms = 600\nmax_connections = 12\nmax_connections_per_address = 4\n",
    )
    .expect("config");
    let server = data.http_server().await;
    let token = data.token("alice", "db:read");
    let host = server.base.trim_start_matches("http://").to_string();
    let patience = Duration::from_secs(5);

    // Headers that never finish.
    let mut slow = connect_from(&server.base, [127, 0, 0, 1]).await;
    slow.write_all(format!("POST /mcp HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    assert!(until_closed(&mut slow, patience).await.is_some(), "closed");
    assert!(started.elapsed() < Duration::from_secs(4));

    // A valid token and a body that never finishes: declared, then chunked.
    for framing in ["content-length: 1000\r\n", "transfer-encoding: chunked\r\n"] {
        let mut stream = connect_from(&server.base, [127, 0, 0, 1]).await;
        stream
            .write_all(
                format!(
                    "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{framing}\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        let partial: &[u8] = if framing.starts_with("content") {
            b"{\"jsonrpc\""
        } else {
            b"a\r\n{\"jsonrpc\""
        };
        stream.write_all(partial).await.expect("write");
        let answer = until_closed(&mut stream, patience)
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{framing}: {answer}");
    }

    // An idle kept-alive connection is closed after the header timeout.
    let mut idle = connect_from(&server.base, [127, 0, 0, 1]).await;
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let answer = until_closed(&mut idle, patience)
        .await
        .expect("closed when idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Four connections from one address are all it may hold; another
    // address still gets in, until the total is reached.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(&server.base, [127, 0, 0, 2]).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect_from(&server.base, [127, 0, 0, 2]).await;
    let answer = until_closed(&mut fifth, Duration::from_millis(400))
        .await
        .unwrap_or_default();
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After: 1"),
        "closed unread: {answer}"
    );
    for source in 3..=4 {
        for _ in 0..4 {
            held.push(connect_from(&server.base, [127, 0, 0, source]).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over_total = connect_from(&server.base, [127, 0, 0, 5]).await;
    let answer = until_closed(&mut over_total, Duration::from_millis(400))
        .await
        .unwrap_or_default();
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After: 1"),
        "past the total, closed unread: {answer}"
    );
    drop(held);
    // Once they are gone, the server takes clients again.
    let mut ok = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(response) = reqwest::get(format!("{}/metrics", server.base)).await
            && response.status() == 200
        {
            let text = response.text().await.unwrap_or_default();
            assert!(
                text.contains("dualtrust_http_connections_refused_total 2"),
                "{text}"
            );
            ok = true;
            break;
        }
    }
    assert!(ok, "the server serves again once the connections are gone");
    let receipts = data.receipts();
    let reasons: Vec<&str> = receipts
        .iter()
        .filter_map(|r| r["body"]["reason"].as_str())
        .collect();
    assert_eq!(reasons.iter().filter(|r| **r == "body_timeout").count(), 2);
    server.stop().await;
}

/// An agent's W3C trace joins the audit log: `traceparent` from the request
/// `_meta` (SEP-414) or the HTTP header lands in the receipt and in the
/// JSON log line of the decision; a malformed one is ignored.
#[tokio::test]
async fn the_trace_id_of_a_request_is_in_its_receipt_and_its_log_line() {
    use rmcp::ServiceExt;
    use rmcp::model::{CallToolRequestParams, RequestMetaObject};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let data = DataDir::new();
    let token = data.token("alice", "db:read");
    let traced_call = |traceparent: &str| {
        let mut meta = RequestMetaObject::new();
        meta.0.insert("traceparent".into(), json!(traceparent));
        let mut params = CallToolRequestParams::new("db.query").with_arguments(
            json!({ "sql": "SELECT 1" })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        params.meta = Some(meta);
        params
    };

    // stdio, with JSON logs at info.
    let log_path = data.path.join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let (transport, _) = TokioChildProcess::builder(
        tokio::process::Command::new(crate::common::BIN).configure(|cmd| {
            cmd.arg("--data-dir")
                .arg(&data.path)
                .args(["serve", "--stdio"])
                .env("DUALTRUST_TOKEN", &token)
                .env("DUALTRUST_LOG", "info")
                .env("DUALTRUST_LOG_FORMAT", "json");
        }),
    )
    .stderr(log)
    .spawn()
    .expect("spawn");
    let client = ().serve(transport).await.expect("initialize");
    let traced = client
        .call_tool(traced_call(&format!("00-{TRACE}-00f067aa0ba902b7-01")))
        .await
        .expect("call");
    let envelope = traced.structured_content.expect("envelope");
    assert_eq!(receipt(&envelope)["body"]["trace_id"], TRACE);
    let untraced = client
        .call_tool(traced_call("00-not-a-trace-01"))
        .await
        .expect("call");
    let envelope = untraced.structured_content.expect("envelope");
    assert!(
        receipt(&envelope)["body"].get("trace_id").is_none(),
        "{envelope}"
    );
    client.cancel().await.ok();
    let lines = std::fs::read_to_string(&log_path).expect("log");
    let decision: Value = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "decision")
        .unwrap_or_else(|| panic!("no decision line in {lines}"));
    assert_eq!(decision["trace_id"], TRACE, "{decision}");
    assert_eq!(decision["tool"], "db.query");
    assert_eq!(decision["receipt"], receipt(&envelope)["body"]["prev"]);

    // HTTP, from the header (rmcp's client sends no `_meta` trace).
    let server = data.http_server().await;
    let header = format!("00-{TRACE}-b7ad6b7169203331-00");
    let config = StreamableHttpClientTransportConfig::with_uri(server.mcp_url())
        .auth_header(token.clone())
        .custom_headers(
            [(
                http::HeaderName::from_static("traceparent"),
                http::HeaderValue::from_str(&header).expect("header"),
            )]
            .into_iter()
            .collect(),
        );
    let client =
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("initialize over http");
    let (envelope, _) = call(&client, "db.query", json!({ "sql": "SELECT 2" })).await;
    assert_eq!(receipt(&envelope)["body"]["trace_id"], TRACE);
    client.cancel().await.ok();
    server.stop().await;
}

/// 2026-07-28 (SEP-2575) answers a method the server does not serve with
/// 404 and -32601; earlier versions keep 400, where 404 means "session gone".
#[tokio::test]
async fn methods_nobody_serves_are_404_on_2026_07_28_and_400_before() {
    let data = DataDir::new();
    let token = data.token("alice", "db:read");
    let server = data.http_server().await;
    let http = reqwest::Client::new();
    let post = |method: &'static str, version: Option<&'static str>| {
        let mut body = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": {} });
        let mut request = http
            .post(server.mcp_url())
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-method", method);
        if let Some(version) = version {
            body["params"]["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": version,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
            body["params"]["level"] = json!("info");
            request = request.header("mcp-protocol-version", version);
        }
        request.json(&body).send()
    };
    for method in ["no/such/method", "logging/setLevel", "resources/subscribe"] {
        let response = post(method, Some("2026-07-28")).await.expect("post");
        assert_eq!(response.status(), 404, "{method}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["error"]["code"], -32601, "{method}: {answer}");
        assert_eq!(answer["id"], 7, "{answer}");
    }
    let response = post("no/such/method", None).await.expect("post");
    assert_eq!(response.status(), 400);
    server.stop().await;
}
