//! The HTTP front door behind a real-looking identity provider: the test
//! plays the IdP (RSA, EC and Ed25519 signing keys, a JWKS served on
//! loopback, rotated mid-run) and attacks the server with the tokens an
//! attacker would try. Every rejection is checked for its status, its
//! receipt, and that nothing changed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{DataDir, HttpServer, call, status, www_authenticate};
use crate::idp::{AUDIENCE, ISSUER, Idp, fixture};

fn initialize_body(version: &str) -> String {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": version, "capabilities": {}, "clientInfo": { "name": "raw", "version": "1" } }
    })
    .to_string()
}

fn tool_call_body(tool: &str, arguments: Value) -> String {
    json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": tool, "arguments": arguments }
    })
    .to_string()
}

async fn post(
    url: &str,
    token: Option<&str>,
    body: String,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("http request")
}

fn reasons(receipts: &[Value]) -> Vec<String> {
    receipts
        .iter()
        .map(|r| r["body"]["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn customers(server: &HttpServer, token: &str) -> i64 {
    let client = server.client(token).await;
    let (envelope, _) = call(
        &client,
        "db.query",
        json!({ "sql": "SELECT count(*) AS n FROM customers" }),
    )
    .await;
    assert_eq!(status(&envelope), "ok", "{envelope}");
    client.cancel().await.ok();
    envelope["result"]["rows"][0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("count in {envelope}"))
}

#[tokio::test]
async fn rsa_ec_and_eddsa_tokens_from_a_jwks_url_and_rotation_mid_run() {
    let idp = Idp::start(&["rsa-1", "ec-1", "ed-1"]).await;
    let data = DataDir::new();
    idp.configure(&data, "jwks_min_refresh_s = 1\n");
    let server = data.http_server().await;
    let url = server.mcp_url();
    assert_eq!(idp.hits(), 1, "the JWKS is fetched once at start");

    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let token = idp.mint(kid, "db:read", |_| {});
        let response = post(&url, Some(&token), initialize_body("2025-06-18"), &[]).await;
        assert_eq!(response.status(), 200, "{kid}");
    }
    // A real MCP client with an RS256 token runs a gated call.
    let token = idp.mint("rsa-1", "db:read", |_| {});
    assert!(customers(&server, &token).await > 0);
    assert_eq!(idp.hits(), 1, "known keys are served from the cache");

    // The IdP rotates: rsa-2 in, rsa-1 out.
    idp.publish(&["rsa-2", "ec-1", "ed-1"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = idp.mint("rsa-2", "db:read", |_| {});
    let response = post(&url, Some(&fresh), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(response.status(), 200, "a new kid triggers a refresh");
    assert_eq!(idp.hits(), 2);
    let retired = idp.mint("rsa-1", "db:read", |_| {});
    let response = post(&url, Some(&retired), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(
        response.status(),
        401,
        "a key the IdP withdrew no longer verifies"
    );
    let response = post(&url, Some(&token), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(
        response.status(),
        401,
        "a token verified (and remembered) under the withdrawn key is refused too"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_idp_nothing() {
    let idp = Idp::start(&["rsa-1"]).await;
    let data = DataDir::new();
    idp.configure(
        &data,
        "jwks_min_refresh_s = 60\n[limits]\nauth_failures_per_minute = 0\n",
    );
    let server = data.http_server().await;
    let url = server.mcp_url();
    let honest = idp.mint("rsa-1", "db:read", |_| {});
    let mut flood = Vec::new();
    for i in 0..200 {
        let (_, payload, signature) = {
            let parts: Vec<String> = honest.split('.').map(String::from).collect();
            (parts[0].clone(), parts[1].clone(), parts[2].clone())
        };
        let header = B64.encode(format!(
            r#"{{"alg":"RS256","typ":"JWT","kid":"bogus-{i}"}}"#
        ));
        let token = format!("{header}.{payload}.{signature}");
        let url = url.clone();
        flood.push(tokio::spawn(async move {
            post(&url, Some(&token), initialize_body("2025-06-18"), &[])
                .await
                .status()
        }));
    }
    for request in flood {
        assert_eq!(request.await.expect("join"), 401);
    }
    assert_eq!(
        idp.hits(),
        1,
        "unknown kids within the minimum interval fetch nothing"
    );
    let response = post(&url, Some(&honest), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(response.status(), 200, "honest tokens still pass");
    let unknown = reasons(&data.receipts())
        .iter()
        .filter(|r| *r == "unknown_key")
        .count();
    assert_eq!(unknown, 200, "every rejected token left a receipt");
    server.stop().await;
}

#[tokio::test]
async fn attack_battery_is_rejected_with_receipts_and_no_state_change() {
    let idp = Idp::start(&["rsa-1", "ec-1"]).await;
    let data = DataDir::new();
    idp.configure(
        &data,
        "max_token_bytes = 4096\nrevocation_refresh_ms = 100\n",
    );
    let server = data.http_server().await;
    let url = server.mcp_url();
    let writer = idp.mint("rsa-1", "db:write", |_| {});
    let before = customers(&server, &writer).await;

    let honest = idp.mint("rsa-1", "db:write", |_| {});
    let parts: Vec<&str> = honest.split('.').collect();
    let now = dualtrust::now_unix();
    let alg_none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        parts[1]
    );
    // Key confusion: HS256 "signed" with the RSA public key as the secret.
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &Idp::claims("agent-7", "db:write"),
            &EncodingKey::from_secret(&fixture("rsa1.pub.pem")),
        )
        .expect("sign")
    };
    let tampered = {
        let mut claims: Value =
            serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("claims");
        claims["sub"] = json!("root");
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        )
    };
    let revoked_jti = dualtrust::random_id().expect("id");
    let revoked = idp.mint("rsa-1", "db:write", |c| c["jti"] = json!(revoked_jti));
    let out = data.cli(&["token", "revoke", "--jti", &revoked_jti]);
    assert!(out.status.success());
    // The revocation list is served from memory: a revocation takes effect
    // within twice its reload interval (docs/identity.md).
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;

    let attacks: Vec<(&str, String, &str)> = vec![
        ("alg none", alg_none, "malformed_token"),
        (
            "HS256 with the RSA public key",
            confused,
            "algorithm_mismatch",
        ),
        (
            "expired",
            idp.mint("ec-1", "db:write", |c| c["exp"] = json!(now - 3600)),
            "expired",
        ),
        (
            "not yet valid",
            idp.mint("ec-1", "db:write", |c| c["nbf"] = json!(now + 3600)),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            idp.mint("rsa-1", "db:write", |c| {
                c["iss"] = json!("https://evil.test")
            }),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            idp.mint("rsa-1", "db:write", |c| {
                c["aud"] = json!("https://other.test")
            }),
            "wrong_audience",
        ),
        (
            "audience list without us",
            idp.mint("rsa-1", "db:write", |c| {
                c["aud"] = json!(["https://a.test", "https://b.test"])
            }),
            "wrong_audience",
        ),
        (
            "missing sub",
            idp.mint("rsa-1", "db:write", |c| {
                c.as_object_mut().map(|o| o.remove("sub"));
            }),
            "missing_claim",
        ),
        (
            "oversized",
            idp.mint("rsa-1", "db:write", |c| c["pad"] = json!("x".repeat(5000))),
            "token_too_large",
        ),
        ("tampered payload", tampered, "bad_signature"),
        ("revoked jti", revoked, "revoked"),
        (
            "not a JWT",
            "definitely-not-a-jwt".into(),
            "malformed_token",
        ),
    ];
    let insert = tool_call_body(
        "db.query",
        json!({ "sql": "INSERT INTO customers (name, email, country, created_at) VALUES ('mallory', 'm@evil.test', 'XX', '2026-01-01')" }),
    );
    let receipts_before = data.receipts().len();
    for (name, token, _) in &attacks {
        let response = post(&url, Some(token), insert.clone(), &[]).await;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = www_authenticate(&response);
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{name}: {challenge}"
        );
        let body = response.text().await.expect("body");
        for leak in ["jsonwebtoken", "InvalidSignature", "Error(", token.as_str()] {
            assert!(!body.contains(leak), "{name}: body leaks {leak}: {body}");
        }
    }
    // A token in the query string is refused even when it is valid.
    let response = post(
        &format!("{url}?access_token={writer}"),
        None,
        insert.clone(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 401, "query-string token");
    // Bad Origin and a DNS-rebinding Host are refused before authentication.
    for headers in [
        [("origin", "https://evil.example")],
        [("host", "attacker.example")],
    ] {
        let response = post(&url, Some(&writer), insert.clone(), &headers).await;
        assert_eq!(response.status(), 403, "{headers:?}");
    }

    let after = data.receipts();
    let got = reasons(&after[receipts_before..]);
    let mut want: Vec<String> = attacks.iter().map(|(_, _, r)| r.to_string()).collect();
    want.push("malformed_token".into());
    want.extend(["origin_not_allowed".into(), "host_not_allowed".into()]);
    assert_eq!(
        got, want,
        "one denial receipt per refused request, with its reason"
    );
    assert_eq!(
        customers(&server, &writer).await,
        before,
        "nothing was inserted"
    );
    server.stop().await;
}

#[tokio::test]
async fn insufficient_scope_is_a_403_challenge_and_hierarchies_hold() {
    let idp = Idp::start(&["ed-1"]).await;
    let data = DataDir::new();
    idp.configure(&data, "");
    let server = data.http_server().await;
    let url = server.mcp_url();
    let reader = idp.mint("ed-1", "db:read", |_| {});
    let before = customers(&server, &reader).await;

    let insert = tool_call_body(
        "db.query",
        json!({ "sql": "INSERT INTO customers (name, email, country, created_at) VALUES ('x', 'x@example.test', 'XX', '2026-01-01')" }),
    );
    let response = post(
        &url,
        Some(&reader),
        insert,
        &[("mcp-protocol-version", "2026-07-28")],
    )
    .await;
    assert_eq!(response.status(), 403);
    let challenge = www_authenticate(&response);
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="db:write""#), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    let last = data.receipts().pop().expect("a receipt");
    assert_eq!(last["body"]["reason"], "insufficient_scope");
    assert_eq!(last["body"]["subject"], "agent-7");
    assert_eq!(
        customers(&server, &reader).await,
        before,
        "nothing was inserted"
    );

    // db:admin implies db:write implies db:read.
    let admin = idp.mint("ed-1", "db:admin", |_| {});
    let client = server.client(&admin).await;
    let (envelope, _) = call(
        &client,
        "db.query",
        json!({ "sql": "INSERT INTO customers (name, email, country, created_at) VALUES ('y', 'y@example.test', 'XX', '2026-01-01')" }),
    )
    .await;
    assert_eq!(status(&envelope), "ok", "{envelope}");
    client.cancel().await.ok();
    assert_eq!(customers(&server, &admin).await, before + 1);
    server.stop().await;
}

#[tokio::test]
async fn readiness_recovers_without_a_request_when_the_jwks_comes_back() {
    let idp = Idp::start(&["ed-1"]).await;
    idp.set_up(false);
    let data = DataDir::new();
    idp.configure(&data, "jwks_min_refresh_s = 1\n");
    let server = data.http_server().await;
    let readyz = format!("{}/readyz", server.base);
    let ready = || async {
        let response = reqwest::get(&readyz).await.expect("readyz");
        let code = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        (code, body["keys"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(ready().await, (503, "unavailable".to_string()));
    idp.set_up(true);
    // Only /readyz is asked, as a load balancer would: no token arrives.
    let mut answer = ready().await;
    for _ in 0..60 {
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        answer = ready().await;
    }
    assert_eq!(answer, (200, "loaded".to_string()));
    server.stop().await;
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address_without_receipts() {
    let idp = Idp::start(&["rsa-1"]).await;
    let data = DataDir::new();
    idp.configure(&data, "[limits]\nauth_failures_per_minute = 5\n");
    let server = data.http_server().await;
    let url = server.mcp_url();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = post(&url, Some("garbage"), initialize_body("2025-06-18"), &[]).await;
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let denials = reasons(&data.receipts())
        .iter()
        .filter(|r| *r == "malformed_token")
        .count();
    assert_eq!(denials, 5, "throttled requests do not grow the log");
    let honest = idp.mint("rsa-1", "db:read", |_| {});
    let response = post(&url, Some(&honest), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(
        response.status(),
        200,
        "a valid token from the address still passes"
    );

    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("dualtrust_auth_failures_total{reason=\"malformed_token\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dualtrust_auth_throttled_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dualtrust_jwks_fetches_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn hs256_secret_and_pem_public_keys() {
    let data = DataDir::new();
    let secret = "k3J9vQ2xLm8RzT5wY1pN7bC4dF6gH0sA";
    let pem = data.path.join("ec.pub.pem");
    std::fs::write(&pem, fixture("ec.pub.pem")).expect("pem");
    std::fs::write(
        data.path.join("dualtrust.toml"),
        format!(
            "[identity]\ndev_tokens = false\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n[[identity.public_keys]]\nkid = \"ec-1\"\nalg = \"ES256\"\npem_file = \"ec.pub.pem\"\n"
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(crate::common::BIN)
        .arg("--data-dir")
        .arg(&data.path)
        .args(["serve", "--http", "127.0.0.1:0"])
        .env("DUALTRUST_IDENTITY__HS256_SECRET", secret)
        .env("DUALTRUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let base = crate::common::listening_address(&mut child).await;
    let url = format!("{base}/mcp");

    let hs = |key: &[u8], edit: fn(&mut Value)| {
        let mut claims = Idp::claims("hs-agent", "db:read");
        edit(&mut claims);
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .expect("sign")
    };
    let good = hs(secret.as_bytes(), |_| {});
    let wrong = hs(b"another-secret-another-secret-123456", |_| {});
    let response = post(&url, Some(&good), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(response.status(), 200);
    let response = post(&url, Some(&wrong), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(response.status(), 401);

    let idp = Idp::start(&[]).await;
    let ec = idp.mint("ec-1", "db:read", |_| {});
    let response = post(&url, Some(&ec), initialize_body("2025-11-25"), &[]).await;
    assert_eq!(response.status(), 200, "the PEM key verifies ES256");
    let rsa = idp.mint("rsa-1", "db:read", |_| {});
    let response = post(&url, Some(&rsa), initialize_body("2025-11-25"), &[]).await;
    assert_eq!(response.status(), 401, "keys not configured do not verify");
    let _ = child.kill().await;
}

#[tokio::test]
async fn cors_is_explicit_and_preflight_needs_no_token() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[http]\nallowed_origins = [\"http://localhost:*\", \"https://inspector.example\"]\ncors_origins = [\"https://inspector.example\"]\n",
    )
    .expect("config");
    let server = data.http_server().await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, server.mcp_url())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let response = preflight("https://inspector.example")
        .await
        .expect("preflight");
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://inspector.example"
    );
    assert!(
        response.headers()["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .contains("authorization")
    );
    let response = preflight("http://localhost:3000").await.expect("preflight");
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin"),
        "origins not listed for CORS get no CORS headers"
    );
    // A 401 to a listed origin is readable by the page (WWW-Authenticate exposed).
    let response = post(
        &server.mcp_url(),
        None,
        initialize_body("2025-06-18"),
        &[("origin", "https://inspector.example")],
    )
    .await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .expect("ascii")
            .contains("www-authenticate")
    );
    assert_ne!(response.headers()["access-control-allow-origin"], "*");
    server.stop().await;
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_and_flushes_the_log() {
    let data = DataDir::new();
    let server = data.http_server().await;
    let token = data.token("alice", "terminal:execute");
    let client = server.client(&token).await;
    let slow = tokio::spawn(async move {
        let (envelope, _) = call(
            &client,
            "terminal.execute",
            json!({ "argv": ["sleep", "1.5"] }),
        )
        .await;
        envelope
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.pid().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let envelope = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the call finished within the grace period")
        .expect("join");
    assert_eq!(status(&envelope), "ok", "{envelope}");
    let exit = server.wait().await;
    assert!(exit.success(), "clean exit after draining: {exit:?}");
    let seq = envelope["receipt"]["body"]["seq"].as_u64().expect("seq");
    let all = data.receipts();
    assert!(
        all.iter().any(|r| r["body"]["seq"].as_u64() == Some(seq)),
        "the in-flight call's receipt is durable"
    );
}

#[tokio::test]
async fn production_mode_refuses_dev_tokens_and_weak_secrets() {
    let data = DataDir::new();
    for (env, key) in [
        (
            vec![("DUALTRUST_MODE", "production")],
            "identity.dev_tokens",
        ),
        (
            vec![
                ("DUALTRUST_MODE", "production"),
                ("DUALTRUST_IDENTITY__DEV_TOKENS", "false"),
                ("DUALTRUST_IDENTITY__HS256_SECRET", "changeme"),
            ],
            "identity.hs256_secret",
        ),
        (
            vec![
                ("DUALTRUST_MODE", "production"),
                ("DUALTRUST_IDENTITY__DEV_TOKENS", "false"),
            ],
            "identity.jwks_url",
        ),
    ] {
        let out = std::process::Command::new(crate::common::BIN)
            .arg("--data-dir")
            .arg(&data.path)
            .args(["serve", "--http", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("changeme"),
            "the secret is not echoed: {stderr}"
        );
    }
}

#[tokio::test]
async fn rate_limits_per_subject_and_tool_answer_clearly() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[limits]\ncalls_per_minute = 100\n[limits.tool_calls_per_minute]\n\"db.query\" = 3\n",
    )
    .expect("config");
    let server = data.http_server().await;
    let token = data.token("alice", "db:read audit:read");
    let client = server.client(&token).await;
    let sql = json!({ "sql": "SELECT 1" });
    for _ in 0..3 {
        let (envelope, _) = call(&client, "db.query", sql.clone()).await;
        assert_eq!(status(&envelope), "ok", "{envelope}");
    }
    let (envelope, is_error) = call(&client, "db.query", sql.clone()).await;
    assert!(is_error);
    assert_eq!(envelope["error"]["code"], "rate_limited", "{envelope}");
    assert!(
        envelope["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry in")),
        "{envelope}"
    );
    assert_eq!(envelope["receipt"]["body"]["reason"], "rate_limited");
    let other = data.token("bob", "db:read");
    let bob = server.client(&other).await;
    let (envelope, _) = call(&bob, "db.query", sql).await;
    assert_eq!(
        status(&envelope),
        "ok",
        "another subject has its own budget"
    );
    server.stop().await;
}

#[tokio::test]
async fn json_logs_identify_rejected_tokens_without_echoing_them() {
    let data = DataDir::new();
    let mut child = tokio::process::Command::new(crate::common::BIN)
        .arg("--data-dir")
        .arg(&data.path)
        .args(["serve", "--http", "127.0.0.1:0"])
        .env("DUALTRUST_LOG_FORMAT", "json")
        .env("DUALTRUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut base = None;
    while let Some(line) = lines.next_line().await.expect("line") {
        if let Some(rest) = line.strip_prefix("dualtrust listening on ") {
            base = Some(rest.trim_end_matches("/mcp").to_string());
            break;
        }
    }
    let url = format!("{}/mcp", base.expect("listening"));
    let forged = data.forged_token(|c| c["aud"] = json!("someone-else"));
    let response = post(&url, Some(&forged), initialize_body("2025-06-18"), &[]).await;
    assert_eq!(response.status(), 401);
    // An oversized body is refused before it reaches MCP.
    let token = data.token("alice", "db:read");
    let huge = tool_call_body("db.query", json!({ "sql": "x".repeat(2 * 1024 * 1024) }));
    let response = post(&url, Some(&token), huge, &[]).await;
    assert_eq!(response.status(), 413);

    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("line") {
            if line.contains("not authenticated") {
                return line;
            }
        }
        panic!("no log line for the rejected token");
    })
    .await
    .expect("log line in time");
    let event: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["reason"], "wrong_audience", "{event}");
    assert_eq!(event["claimed_subject"], "mallory", "{event}");
    let prefix = event["token_sha256_prefix"].as_str().expect("hash prefix");
    assert_eq!(prefix, &dualtrust::sha256_hex(forged.as_bytes())[..12]);
    let signature = forged.rsplit('.').next().expect("signature");
    assert!(
        !line.contains(signature),
        "the token is never logged: {line}"
    );
    let _ = child.kill().await;
}

/// The Grafana dashboard in deploy/grafana queries only metrics the server
/// exports: each name its expressions use is a family in `/metrics` (a
/// server with a JWKS URL, so the identity provider's counters exist too).
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let idp = Idp::start(&["rsa-1"]).await;
    let data = DataDir::new();
    idp.configure(&data, "");
    let server = data.http_server().await;
    let token = idp.mint("rsa-1", "db:read", |_| {});
    assert!(customers(&server, &token).await > 0);
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dualtrust.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("dualtrust_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name.trim_end_matches("_bucket").to_string());
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        assert!(
            families.contains(name.as_str()),
            "the dashboard queries `{name}`, which /metrics does not export"
        );
    }
    server.stop().await;
}
