//! The kernel is the boundary of `terminal.execute`: the escapes found
//! through options of allow-listed programs, and an approved shell trying
//! everything, all fail, with every layer shown to do work of its own.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::{Approver, DataDir, approve_and_redeem, call, error_code, status};

fn setup(extra: &str) -> (DataDir, Approver, Approver) {
    let data = DataDir::new();
    let (alice, bob) = (data.approver("alice"), data.approver("bob"));
    data.configure(
        &[(&alice, None), (&bob, None)],
        &format!("[quorum]\nk = 2\n{extra}"),
    );
    (data, alice, bob)
}

fn host_git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git");
    assert!(out.status.success(), "{out:?}");
}

/// Every file beneath `dir` with its mode and content, to compare the world
/// outside the roots before and after.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).expect("meta");
            let content = if meta.is_file() {
                std::fs::read(entry.path()).expect("read")
            } else {
                Vec::new()
            };
            out.insert(entry.path(), (meta.permissions().mode(), content));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn options_of_allow_listed_programs_do_not_escape() {
    let (data, _, _) = setup("");
    let ws = data.workspace();
    std::fs::create_dir_all(&ws).expect("mkdir");
    let outside = data.path.parent().expect("parent").join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("shadow"), "SECRET-OUTSIDE\n").expect("write");
    let marker = outside.join("pwned");

    // A repository whose own config runs shell commands from filters and
    // textconv drivers, as an untrusted clone would.
    let repo = ws.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    host_git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("a.txt"), "one\n").expect("write");
    host_git(&repo, &["add", "a.txt"]);
    host_git(&repo, &["commit", "-qm", "one"]);
    let evil = format!("sh -c 'touch {}; cat'", marker.display());
    host_git(&repo, &["config", "filter.evil.clean", &evil]);
    host_git(&repo, &["config", "filter.evil.smudge", &evil]);
    host_git(&repo, &["config", "diff.evil.textconv", &evil]);
    std::fs::write(
        repo.join(".gitattributes"),
        "a.txt filter=evil\nb.txt diff=evil\n",
    )
    .expect("write");
    std::fs::write(repo.join("a.txt"), "two\n").expect("write");
    let config_before = std::fs::read(repo.join(".git/config")).expect("config");

    // An interpreter copied into the root, and input it would run as a script.
    std::fs::copy("/usr/bin/dash", ws.join("mysh")).expect("copy");
    std::fs::set_permissions(ws.join("mysh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let script: String = (0..20_000)
        .map(|i| format!("touch {}/sorted-{i}\n", ws.display()))
        .collect();
    std::fs::write(ws.join("lines.txt"), script).expect("write");

    let client = data
        .stdio_client(Some(&data.token("agent", "terminal:execute")))
        .await;
    let run = |argv: Vec<&str>, cwd: &str| json!({ "argv": argv, "cwd": cwd });
    let mut outputs = Vec::new();
    for (argv, cwd) in [
        (vec!["git", "diff", "--", "a.txt"], "repo"),
        (vec!["git", "blame", "a.txt"], "repo"),
        (vec!["git", "grep", "--textconv", "one"], "repo"),
        (vec!["git", "status", "--short"], "repo"),
        (vec!["git", "add", "a.txt"], "repo"),
        (vec!["git", "commit", "-qm", "two"], "repo"),
        (vec!["git", "log", "--format=%an %s"], "repo"),
        (
            vec![
                "sort",
                "-S",
                "64K",
                "--compress-program=./mysh",
                "lines.txt",
            ],
            ".",
        ),
        (
            vec!["sort", "-S", "64K", "--compress-prog=mysh", "lines.txt"],
            ".",
        ),
        (vec!["date", "-f", "../../outside/shadow"], "."),
        (vec!["date", "--file=../dualtrust.toml"], "."),
        (vec!["cp", "a.txt", ".git/config"], "repo"),
        (vec!["mv", ".git", "moved"], "repo"),
        (vec!["mv", "repo", "repo2"], "."),
    ] {
        let (env, _) = call(&client, "terminal.execute", run(argv.clone(), cwd)).await;
        assert_eq!(status(&env), "ok", "{argv:?}: {env}");
        outputs.push((argv, env));
    }
    let exit = |i: usize| outputs[i].1["result"]["exit_code"].clone();
    // Ordinary git work succeeds in the hostile repository (filters that
    // cannot run pass content through), and commits carry the subject.
    for (i, (argv, env)) in outputs.iter().enumerate().take(7) {
        if argv[1] != "grep" {
            assert_eq!(exit(i), 0, "{argv:?}: {env}");
        }
    }
    assert!(
        outputs[0].1["result"]["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("+two"),
        "{}",
        outputs[0].1
    );
    assert!(
        outputs[6].1["result"]["stdout"]
            .as_str()
            .unwrap_or("")
            .starts_with("agent two"),
        "{}",
        outputs[6].1
    );
    assert!(!marker.exists(), "a repository filter ran a shell");
    // sort could not start either compressor.
    for i in [7, 8] {
        assert_ne!(exit(i), 0, "{}", outputs[i].1);
    }
    let sorted = std::fs::read_dir(&ws)
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sorted-"))
        .count();
    assert_eq!(sorted, 0, "the copied interpreter ran");
    // date read nothing outside the roots: neither the secret nor the config.
    for i in [9, 10] {
        let text = outputs[i].1["result"].to_string();
        assert!(!text.contains("SECRET-OUTSIDE"), "{text}");
        assert!(!text.contains("approvers"), "{text}");
        assert_ne!(exit(i), 0, "{text}");
    }
    // The repository's code-running metadata is pinned and read-only.
    for i in [11, 12, 13] {
        assert_ne!(exit(i), 0, "{}", outputs[i].1);
    }
    assert_eq!(
        std::fs::read(repo.join(".git/config")).expect("config"),
        config_before
    );
    assert!(repo.join(".git").is_dir());
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn an_approved_recursive_chmod_through_a_symlink_stays_inside() {
    let (data, alice, bob) = setup("");
    let ws = data.workspace();
    std::fs::create_dir_all(&ws).expect("mkdir");
    let outside = data.path.parent().expect("parent").join("outside");
    std::fs::create_dir_all(outside.join("deep")).expect("mkdir");
    std::fs::write(outside.join("deep/keep.txt"), "keep").expect("write");
    std::os::unix::fs::symlink(&outside, ws.join("link")).expect("symlink");
    let before = snapshot(&outside);
    let client = data
        .stdio_client(Some(
            &data.token("agent", "terminal:execute terminal:admin"),
        ))
        .await;
    for argv in [
        vec!["chmod", "-R", "777", "link/"],
        vec!["chown", "-R", "65534", "link/"],
    ] {
        let args = json!({ "argv": argv });
        let (held, _) = call(&client, "terminal.execute", args.clone()).await;
        assert_eq!(status(&held), "approval_required", "{held}");
        // The approvers are told where the target really is.
        let summary = held["approval"]["summary"].as_str().unwrap_or("");
        assert!(summary.contains("OUTSIDE the roots"), "{summary}");
        let env = approve_and_redeem(
            &data,
            &client,
            "terminal.execute",
            &held,
            args,
            &[&alice, &bob],
        )
        .await;
        assert_eq!(status(&env), "ok", "{env}");
        assert_ne!(env["result"]["exit_code"], 0, "{env}");
    }
    assert_eq!(
        snapshot(&outside),
        before,
        "the world outside the roots changed"
    );
    client.cancel().await.expect("close");
}

/// Each attempt prints `name=ok` when it succeeded, `name=fail` otherwise.
fn escape_script(outside: &Path, data_dir: &Path, tcp: u16, udp: u16) -> String {
    let o = outside.display();
    let d = data_dir.display();
    format!(
        r#"
t() {{ name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name=ok"; else echo "$name=fail"; fi; }}
t exec_unlisted /usr/bin/tar --version
t read_outside cat {o}/shadow
t read_data_dir cat {d}/dualtrust.toml
t write_outside sh -c 'echo x > {o}/new.txt'
t chmod_outside chmod 777 {o}/shadow
t hardlink_outside ln {o}/shadow ./hard
t tcp_connect perl -MIO::Socket::INET -e 'IO::Socket::INET->new(PeerAddr => "127.0.0.1:{tcp}", Timeout => 2) or exit 1'
t udp_send perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:{udp}", Proto => "udp") or exit 1; $s->send("x") or exit 1'
t ptrace perl -e 'my $p = fork; if (!$p) {{ sleep 3; exit 0 }} my $r = syscall(101, 16, $p, 0, 0); kill 9, $p; exit($r == -1 ? 1 : 0)'
t mount perl -e 'exit(syscall(165, "none", "/tmp", "tmpfs", 0, 0) == -1 ? 1 : 0)'
t new_namespace perl -e 'exit(syscall(272, 0x10000000) == -1 ? 1 : 0)'
t outside_pids perl -e 'exit($$ > 200 ? 0 : 1)'
"#
    )
}

/// Runs the escape script through an approved shell; returns each attempt's
/// result and whether the world outside changed.
async fn run_escapes(disabled: Option<&str>) -> BTreeMap<String, bool> {
    let extra = match disabled {
        Some(layer) => format!("[terminal]\nallow_shell = true\ndisable_layers = [\"{layer}\"]\n"),
        None => "[terminal]\nallow_shell = true\n".to_string(),
    };
    let (data, alice, bob) = setup(&extra);
    let outside = data.path.parent().expect("parent").join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("shadow"), "SECRET\n").expect("write");
    std::fs::set_permissions(
        outside.join("shadow"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let before = snapshot(&outside);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    tcp.set_nonblocking(true).expect("nonblocking");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_nonblocking(true).expect("nonblocking");
    let script = escape_script(
        &outside,
        &data.path,
        tcp.local_addr().expect("addr").port(),
        udp.local_addr().expect("addr").port(),
    );
    let client = data
        .stdio_client(Some(
            &data.token("agent", "terminal:execute terminal:admin"),
        ))
        .await;
    let args = json!({ "argv": ["sh", "-c", script], "timeout_ms": 20000 });
    let (held, _) = call(&client, "terminal.execute", args.clone()).await;
    assert_eq!(status(&held), "approval_required", "{held}");
    let env = approve_and_redeem(
        &data,
        &client,
        "terminal.execute",
        &held,
        args,
        &[&alice, &bob],
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    // The receipt records the call.
    assert_eq!(env["receipt"]["body"]["decision"], "allowed", "{env}");
    let stdout = env["result"]["stdout"].as_str().unwrap_or("").to_string();
    let mut results: BTreeMap<String, bool> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v == "ok"))
        .collect();
    assert_eq!(results.len(), 12, "{env}");
    let mut buf = [0u8; 8];
    results.insert("tcp_arrived".into(), tcp.accept().is_ok());
    results.insert("udp_arrived".into(), udp.recv(&mut buf).is_ok());
    results.insert("outside_changed".into(), snapshot(&outside) != before);
    client.cancel().await.expect("close");
    results
}

fn succeeded(results: &BTreeMap<String, bool>) -> Vec<&str> {
    results
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(k, _)| k.as_str())
        .collect()
}

#[tokio::test]
async fn an_approved_shell_cannot_reach_anything_policy_did_not_grant() {
    let results = run_escapes(None).await;
    assert_eq!(succeeded(&results), Vec::<&str>::new(), "{results:?}");
}

/// With one layer switched off, the attempt only that layer stops succeeds:
/// each layer does work the others do not.
#[tokio::test]
async fn every_sandbox_layer_stops_something_the_others_do_not() {
    for (layer, expected) in [
        ("landlock", "exec_unlisted"),
        ("seccomp", "new_namespace"),
        ("mount", "chmod_outside"),
        ("network", "udp_send"),
        ("pid", "outside_pids"),
    ] {
        let results = run_escapes(Some(layer)).await;
        let ok = succeeded(&results);
        assert!(
            ok.contains(&expected),
            "without {layer}, {expected} should succeed: {results:?}"
        );
        // The attempts every other layer stops still fail.
        for always in [
            "read_outside",
            "read_data_dir",
            "write_outside",
            "tcp_arrived",
        ] {
            assert!(!ok.contains(&always), "without {layer}: {results:?}");
        }
    }
}

#[tokio::test]
async fn an_operator_can_allow_any_program_and_it_runs_confined() {
    let (data, _, _) =
        setup("[terminal]\nallow = [\"printenv\", \"diff\", \"cat\"]\ndestructive = [\"diff\"]\n");
    let ws = data.workspace();
    std::fs::create_dir_all(&ws).expect("mkdir");
    let client = data
        .stdio_client(Some(&data.token("agent", "terminal:execute")))
        .await;
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["printenv", "PATH"] }),
    )
    .await;
    assert_eq!(status(&env), "ok", "{env}");
    assert_eq!(env["result"]["exit_code"], 0, "{env}");
    // Policy marks diff destructive: held, not run.
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["diff", "a", "b"] }),
    )
    .await;
    assert_eq!(error_code(&env), "insufficient_scope", "{env}");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn a_required_sandbox_with_a_layer_missing_refuses_commands() {
    let (data, _, _) =
        setup("[terminal]\nrequire_sandbox = true\ndisable_layers = [\"seccomp\"]\n");
    let server = data.http_server().await;
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["terminal_sandbox"], "missing: seccomp", "{ready}");
    assert_eq!(
        ready["terminal_sandbox_missing"][0]["layer"], "seccomp",
        "{ready}"
    );
    let client = server
        .client(&data.token("agent", "terminal:execute"))
        .await;
    let tools = client.list_all_tools().await.expect("tools");
    let terminal = tools
        .iter()
        .find(|t| t.name == "terminal.execute")
        .expect("terminal tool");
    let description = terminal.description.as_deref().unwrap_or("");
    assert!(
        description.contains("does not enforce: seccomp"),
        "{description}"
    );
    let (env, _) = call(
        &client,
        "terminal.execute",
        json!({ "argv": ["echo", "hi"] }),
    )
    .await;
    assert_eq!(status(&env), "denied", "{env}");
    assert_eq!(error_code(&env), "sandbox_unavailable", "{env}");
    assert_eq!(
        env["receipt"]["body"]["reason"], "sandbox_unavailable",
        "{env}"
    );
    client.cancel().await.expect("close");
    server.stop().await;
}

#[test]
fn a_root_holding_the_servers_own_state_is_refused() {
    let data = DataDir::new();
    data.configure(&[], "[terminal]\nroots = [\".\"]\n");
    let out = data.cli(&["approvals", "list"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("terminal.roots[0]"), "{text}");
}
