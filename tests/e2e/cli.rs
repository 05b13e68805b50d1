use serde_json::json;

use crate::common::{DataDir, call};

#[test]
fn help_names_every_subcommand() {
    let out = std::process::Command::new(crate::common::BIN)
        .arg("--help")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "init", "serve", "token", "revoke", "keys", "keygen", "audit",
    ] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
    }
}

/// The gate can only be switched off in a benchmark build; a deployable
/// build does not even parse the switch.
#[cfg(not(feature = "bench"))]
#[test]
fn a_deployable_build_has_no_gate_off_switch() {
    let data = DataDir::new();
    let out = data.cli(&["serve", "--stdio", "--bench-gate-off"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unexpected argument '--bench-gate-off'"),
        "{err}"
    );
}

#[test]
fn bad_configuration_names_the_key() {
    let data = DataDir::new();
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[database]\nrow_cap = \"lots\"\n",
    )
    .expect("write");
    let out = data.cli(&["keys"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database.row_cap"), "{err}");
}

#[test]
fn production_mode_refuses_dev_tokens() {
    let data = DataDir::new();
    let out = std::process::Command::new(crate::common::BIN)
        .arg("--data-dir")
        .arg(&data.path)
        .args(["token", "--sub", "x"])
        .env("DUALTRUST_MODE", "production")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity.dev_tokens"));
}

#[tokio::test]
async fn exported_log_verifies_offline_and_tampering_is_detected() {
    let data = DataDir::new();
    let client = data
        .stdio_client(Some(&data.token("alice", "db:read")))
        .await;
    for sql in [
        "SELECT 1",
        "DELETE FROM orders",
        "SELECT count(*) FROM products",
    ] {
        call(&client, "db.query", json!({ "sql": sql })).await;
    }
    client.cancel().await.expect("close");

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log.jsonl");
    let jwks = dir.path().join("jwks.json");
    let out = data.cli(&["audit", "export", "--out", log.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = data.cli(&["keys"]);
    std::fs::write(&jwks, &keys.stdout).expect("write jwks");

    let verify = |log: &std::path::Path| {
        data.cli(&[
            "audit",
            "verify",
            "--log",
            log.to_str().expect("utf8"),
            "--jwks",
            jwks.to_str().expect("utf8"),
        ])
    };
    let out = verify(&log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 receipts"));

    let text = std::fs::read_to_string(&log).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let tampered = dir.path().join("tampered.jsonl");
    for edit in [lines[1].replace("\"denied\"", "\"allowed\""), String::new()] {
        let mut copy: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        if edit.is_empty() {
            copy.remove(1);
        } else {
            copy[1] = edit;
        }
        std::fs::write(&tampered, copy.join("\n")).expect("write");
        let out = verify(&tampered);
        assert!(!out.status.success(), "tampering went unnoticed");
    }
    let mut reordered: Vec<&str> = lines.clone();
    reordered.swap(0, 2);
    std::fs::write(&tampered, reordered.join("\n")).expect("write");
    assert!(!verify(&tampered).status.success());
}

/// An approver's command line talking to a server that answers without end
/// (here 8 MiB, chunked, no length announced) stops reading at its cap.
#[test]
fn the_remote_command_line_does_not_read_an_oversized_answer() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..8 {
                let _ = write!(stream, "{:x}\r\n", chunk.len());
                let _ = stream.write_all(&chunk);
                let _ = stream.write_all(b"\r\n");
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
    });
    let home = DataDir::new();
    let out = std::process::Command::new(crate::common::BIN)
        .arg("--data-dir")
        .arg(&home.path)
        .args([
            "approvals",
            "list",
            "--server",
            &format!("http://{address}"),
        ])
        .env("DUALTRUST_APPROVER_TOKEN", "a-token")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("over 4194304 bytes"), "{stderr}");
}

/// `keys.env`: the key text from a variable (a secret manager's), the file
/// ignored; a missing variable is named, its would-be contents never shown.
#[test]
fn the_server_key_can_come_from_an_environment_variable() {
    let data = DataDir::new();
    let key_text = std::fs::read_to_string(data.path.join("server.key")).expect("key");
    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[keys]\nenv = \"DT_TEST_SERVER_KEY\"\n[log]\norigin = \"example.com/audit\"\n",
    )
    .expect("config");
    let keys = |value: Option<&str>| {
        let mut command = std::process::Command::new(crate::common::BIN);
        command.arg("--data-dir").arg(&data.path).arg("keys");
        if let Some(v) = value {
            command.env("DT_TEST_SERVER_KEY", v);
        }
        command.output().expect("run")
    };
    // The log init opened is named after its key; a new origin is refused.
    let out = keys(Some(&key_text));
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("log.origin"), "{said}");

    std::fs::write(
        data.path.join("dualtrust.toml"),
        "[keys]\nenv = \"DT_TEST_SERVER_KEY\"\n",
    )
    .expect("config");
    std::fs::remove_file(data.path.join("server.key")).expect("the file is not needed");
    let out = keys(Some(&key_text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("jwks");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    let out = keys(None);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("$DT_TEST_SERVER_KEY"), "{said}");
    let out = keys(Some("not a key"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !said.contains("not a key"),
        "{said}"
    );
}
