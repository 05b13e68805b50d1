//! `dualtrust approvals list`, `approve` and `reject`. Beside the server
//! they work on its store through the lighter [`Desk`] (no tools, target
//! database or identity provider); with `--server URL` they work from the
//! approver's own machine, with the approver's token
//! (`DUALTRUST_APPROVER_TOKEN`, scope `approvals:write`) and their key,
//! which never leaves it. Both print the same review, built from the
//! server's record, and sign the statement locally.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::app::Desk;
use crate::config::Config;
use crate::gate::args_digest;
use crate::gate::quorum::{Evidence, approval_message, rejection_message};
use crate::keys::KeyPair;
use crate::store::{Lease, LeaseState};

use super::{BoxError, Signing};

/// Where the held calls are: this host's store, or a server elsewhere.
enum HeldCalls {
    Local(Box<Desk>),
    Remote(Remote),
}

/// The most a server's answer is read to: the held calls with their
/// reviews are far smaller.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Text from the server or an agent, made safe for the approver's terminal:
/// control characters (escape sequences could rewrite what was shown) and
/// bidirectional overrides (which reorder it) are written as escapes.
fn shown(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    text.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

struct Remote {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    fn new(server: &str) -> Result<Self, BoxError> {
        let token = std::env::var("DUALTRUST_APPROVER_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or("set DUALTRUST_APPROVER_TOKEN to your approver token (scope approvals:write)")?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            base: server.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, BoxError> {
        let mut response = request.bearer_auth(&self.token).send().await?;
        let status = response.status();
        // Read with a cap: a broken or hostile server must not fill memory.
        let too_large =
            || format!("the server's answer is over {MAX_ANSWER_BYTES} bytes; not read");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large().into());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large().into());
            }
            bytes.extend_from_slice(&chunk);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "{}: {} {}",
                status.as_u16(),
                shown(body["error"].as_str().unwrap_or("error")),
                shown(body["error_description"].as_str().unwrap_or_default())
            )
            .into());
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> Result<Value, BoxError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, BoxError> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        )
        .await
    }
}

impl HeldCalls {
    async fn open(config: &Config, server: Option<&str>) -> Result<Self, BoxError> {
        Ok(match server {
            Some(server) => Self::Remote(Remote::new(server)?),
            None => Self::Local(Box::new(Desk::open(config).await?)),
        })
    }

    /// Lets what a local decision announced reach the webhooks before the
    /// command exits (the server announces remote ones itself).
    async fn finish(&self) {
        if let Self::Local(desk) = self {
            desk.finish().await;
        }
    }

    /// The approval view of one held call, as the server builds it.
    async fn view(&self, lease_id: &str) -> Result<Value, BoxError> {
        match self {
            Self::Remote(remote) => remote.get(&format!("/approvals/{lease_id}")).await,
            Self::Local(desk) => {
                let lease = desk
                    .store
                    .lease(lease_id)
                    .await?
                    .ok_or("no lease with this id exists")?;
                Ok(desk.gate.approval_view(&lease).await?)
            }
        }
    }
}

/// The lease a view describes, once the view is shown to say what it asks
/// to be signed: the shown arguments digest to the lease's digest, and the
/// statement is the one built from the shown fields. A server that shows
/// one call and asks for a signature over another is refused here.
fn lease_from_view(view: &Value) -> Result<Lease, String> {
    let text = |key: &str| {
        view[key]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("the server's view has no `{key}`"))
    };
    let tool = text("tool")?;
    let digest = text("args_digest")?;
    if args_digest(&tool, &view["arguments"]).as_deref() != Some(digest.as_str()) {
        return Err("the arguments shown do not digest to the lease's argument digest".into());
    }
    let lease = Lease {
        id: text("lease_id")?,
        subject: text("requested_by")?,
        tool,
        args_digest: digest,
        scope: String::new(),
        issued_at: 0,
        expires_at: view["expires_at"]
            .as_u64()
            .ok_or("the server's view has no `expires_at`")?,
        state: LeaseState::PendingApproval,
        summary: text("summary")?,
        args_json: String::new(),
        quorum_k: 0,
        requester_token: None,
        requester_address: None,
    };
    if view["sign"].as_str() != Some(approval_message(&lease).as_str()) {
        return Err("the statement to sign is not the one the view describes".into());
    }
    Ok(lease)
}

/// Shows the approver what they are about to sign and asks (unless `yes`).
fn review(view: &Value, question: &str, yes: bool) -> Result<Lease, BoxError> {
    let mut out = std::io::stderr().lock();
    let lease = describe(view, &mut out)?;
    if !yes {
        write!(out, "{question} [y/N] ")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err("nothing was signed".into());
        }
    }
    Ok(lease)
}

/// `approvals show`: one held call's review and the statements an approver
/// would sign, without signing anything.
pub(super) async fn show(
    config: &Config,
    lease_id: &str,
    server: Option<&str>,
) -> Result<(), BoxError> {
    let view = HeldCalls::open(config, server)
        .await?
        .view(lease_id)
        .await?;
    let mut out = std::io::stdout().lock();
    describe(&view, &mut out)?;
    if let Some(rejected) = view["rejected_by"].as_array().filter(|r| !r.is_empty()) {
        writeln!(
            out,
            "rejected by  {} ({} end it)",
            shown(
                &rejected
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            view["rejections_needed"]
        )?;
    }
    writeln!(
        out,
        "\nto approve, sign exactly:\n{}",
        view["sign"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .map(|line| format!("{}\n", shown(line)))
            .collect::<String>()
    )?;
    Ok(())
}

/// Writes the review of a held call to `out`; the lease it describes, once
/// the view's statement is checked to be the one its fields give.
fn describe(view: &Value, out: &mut impl Write) -> Result<Lease, BoxError> {
    let lease = lease_from_view(view)?;
    let now = crate::now_unix();
    let approved: Vec<&str> = view["approved_by"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    writeln!(out, "lease        {}", lease.id)?;
    writeln!(
        out,
        "state        {} ({} of {} approvals so far{})",
        view["state"].as_str().unwrap_or("pending_approval"),
        approved.len(),
        view["k"],
        if approved.is_empty() {
            String::new()
        } else {
            format!(": {}", approved.join(", "))
        }
    )?;
    writeln!(
        out,
        "requested by {} (token {}) from {}, {} s ago",
        shown(&lease.subject),
        shown(
            view["requested_by_token"]
                .as_str()
                .unwrap_or("without a jti")
        ),
        shown(view["requested_from"].as_str().unwrap_or("stdio")),
        now.saturating_sub(view["issued_at"].as_u64().unwrap_or(now))
    )?;
    writeln!(out, "tool         {}", shown(&lease.tool))?;
    writeln!(out, "will         {}", shown(&lease.summary))?;
    writeln!(out, "arguments    {}", view["arguments"])?;
    writeln!(
        out,
        "expires in   {} s (unix {})",
        lease.expires_at.saturating_sub(now),
        lease.expires_at
    )?;
    Ok(lease)
}

fn sign(key: &std::path::Path, message: &str) -> Result<String, BoxError> {
    let (pair, _) = KeyPair::load_or_create(key, false)?;
    Ok(URL_SAFE_NO_PAD.encode(pair.sign(message.as_bytes())))
}

pub(super) async fn list(config: &Config, server: Option<&str>) -> Result<(), BoxError> {
    let now = crate::now_unix();
    let views: Vec<Value> = match HeldCalls::open(config, server).await? {
        HeldCalls::Remote(remote) => remote.get("/approvals").await?["pending"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        HeldCalls::Local(desk) => {
            let mut views = Vec::new();
            for lease in desk.store.pending_leases(now).await? {
                views.push(desk.gate.approval_view(&lease).await?);
            }
            views
        }
    };
    if views.is_empty() {
        println!("no calls are waiting for approval");
    }
    for view in views {
        println!(
            "{}  {}/{} approvals  expires in {}s  requested by {}\n    {}",
            shown(view["lease_id"].as_str().unwrap_or_default()),
            view["approvals"],
            view["k"],
            view["expires_at"].as_u64().unwrap_or(0).saturating_sub(now),
            shown(view["requested_by"].as_str().unwrap_or_default()),
            shown(view["summary"].as_str().unwrap_or_default())
        );
    }
    Ok(())
}

pub(super) async fn approve(config: &Config, signing: &Signing) -> Result<(), BoxError> {
    let Signing {
        lease: lease_id,
        approver,
        key,
        yes,
        server,
    } = signing;
    let desk = HeldCalls::open(config, server.as_deref()).await?;
    let lease = review(
        &desk.view(lease_id).await?,
        "Approve this exact call?",
        *yes,
    )?;
    let signature = sign(key, &approval_message(&lease))?;
    let status = match &desk {
        HeldCalls::Remote(remote) => {
            let body =
                json!({ "lease_id": lease.id, "approver_id": approver, "signature": signature });
            remote
                .post("/approvals", &body)
                .await
                .map_err(|e| format!("approval not recorded: {e}"))?
        }
        HeldCalls::Local(desk) => serde_json::to_value(
            desk.gate
                .submit_approval(
                    "cli",
                    None,
                    &lease.id,
                    approver,
                    &Evidence::Key(signature.clone()),
                )
                .await
                .map_err(|e| format!("approval not recorded: {e}"))?,
        )?,
    };
    println!(
        "approval recorded: {} of {} for lease {}{}",
        status["approvals"],
        status["k"],
        lease.id,
        if status["complete"].as_bool() == Some(true) {
            "; the call can now be repeated with this lease_id"
        } else {
            ""
        }
    );
    desk.finish().await;
    Ok(())
}

pub(super) async fn reject(
    config: &Config,
    signing: &Signing,
    reason: &str,
) -> Result<(), BoxError> {
    let Signing {
        lease: lease_id,
        approver,
        key,
        yes,
        server,
    } = signing;
    let desk = HeldCalls::open(config, server.as_deref()).await?;
    let lease = review(&desk.view(lease_id).await?, "Reject this call?", *yes)?;
    let signature = sign(key, &rejection_message(&lease, reason))?;
    let status = match &desk {
        HeldCalls::Remote(remote) => {
            let body = json!({ "lease_id": lease.id, "approver_id": approver, "signature": signature, "reason": reason });
            remote
                .post("/rejections", &body)
                .await
                .map_err(|e| format!("rejection not recorded: {e}"))?
        }
        HeldCalls::Local(desk) => serde_json::to_value(
            desk.gate
                .submit_rejection(
                    "cli",
                    None,
                    &lease.id,
                    approver,
                    &Evidence::Key(signature.clone()),
                    reason,
                )
                .await
                .map_err(|e| format!("rejection not recorded: {e}"))?,
        )?,
    };
    if status["ended"].as_bool() == Some(true) {
        println!(
            "lease {} rejected by {approver}: the call will not run",
            lease.id
        );
    } else {
        println!(
            "rejection recorded: {} of {} needed to end lease {}; it still waits",
            status["rejections"], status["needed"], lease.id
        );
    }
    desk.finish().await;
    Ok(())
}

/// `dualtrust passkeys …`, beside the server's data directory.
pub async fn passkeys(config: &Config, command: super::PasskeysCommand) -> Result<(), BoxError> {
    let desk = Desk::open(config).await?;
    match command {
        super::PasskeysCommand::List => {
            let document = desk.gate.approvers_document().await?;
            let mut any = false;
            for approver in document["approvers"].as_array().into_iter().flatten() {
                for passkey in approver["passkeys"].as_array().into_iter().flatten() {
                    any = true;
                    let state = match (
                        passkey["source"].as_str(),
                        passkey["confirmed"].as_bool(),
                        passkey["revoked_at"].is_u64(),
                    ) {
                        (Some("config"), _, _) => "pinned",
                        (_, _, true) => "revoked",
                        (_, Some(true), _) => "confirmed",
                        _ => "PENDING (dualtrust passkeys confirm --credential …)",
                    };
                    println!(
                        "{}  {}  alg {}  {state}",
                        approver["id"].as_str().unwrap_or_default(),
                        passkey["credential_id"].as_str().unwrap_or_default(),
                        passkey["alg"],
                    );
                }
            }
            if !any {
                eprintln!("no passkeys: approvers register them in the inbox (/approvals/)");
            }
        }
        super::PasskeysCommand::Confirm { credential } => {
            let receipt = desk
                .gate
                .confirm_passkey(credential.trim())
                .await
                .map_err(|e| format!("not confirmed: {e}"))?;
            let approver = receipt
                .body
                .outcome
                .as_ref()
                .and_then(|o| o["approver"].as_str())
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "confirmed: {credential} now counts for approver {approver} (receipt {})",
                receipt.hash
            );
        }
        super::PasskeysCommand::Revoke { credential } => {
            let receipt = desk
                .gate
                .revoke_passkey(credential.trim())
                .await
                .map_err(|e| format!("not revoked: {e}"))?;
            eprintln!(
                "revoked: {credential} counts for nothing from receipt {} on",
                receipt.hash
            );
        }
        super::PasskeysCommand::Export => {
            println!(
                "{}",
                serde_json::to_string_pretty(&desk.gate.approvers_document().await?)?
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_reaches_the_terminal_cannot_steer_it() {
        assert_eq!(
            shown("DELETE FROM t WHERE x = '\u{1b}[2K\u{1b}[1Aok'\n\u{202e}cba"),
            "DELETE FROM t WHERE x = '\\u{1b}[2K\\u{1b}[1Aok'\\u{a}\\u{202e}cba"
        );
        assert_eq!(
            shown("plain `DROP TABLE orders` é"),
            "plain `DROP TABLE orders` é"
        );
    }

    fn view() -> Value {
        let arguments = json!({ "sql": "DROP TABLE orders", "params": [] });
        let mut lease = Lease {
            id: "0123456789abcdef0123456789abcdef".into(),
            subject: "agent".into(),
            tool: "db.query".into(),
            args_digest: args_digest("db.query", &arguments).expect("digest"),
            scope: String::new(),
            issued_at: 0,
            expires_at: 2_000_000_000,
            state: LeaseState::PendingApproval,
            summary: "destructive SQL statement: DROP".into(),
            args_json: String::new(),
            quorum_k: 1,
            requester_token: None,
            requester_address: None,
        };
        lease.summary.push_str(": `DROP TABLE orders`");
        json!({
            "lease_id": lease.id, "tool": lease.tool, "requested_by": lease.subject,
            "summary": lease.summary, "arguments": arguments, "args_digest": lease.args_digest,
            "expires_at": lease.expires_at, "sign": approval_message(&lease),
        })
    }

    #[test]
    fn a_view_that_shows_one_call_and_signs_another_is_refused() {
        assert!(lease_from_view(&view()).is_ok());
        let mut other_arguments = view();
        other_arguments["arguments"]["sql"] = json!("DROP TABLE customers");
        assert!(lease_from_view(&other_arguments).is_err());
        let mut other_statement = view();
        other_statement["expires_at"] = json!(2_000_000_001);
        assert!(lease_from_view(&other_statement).is_err());
        let mut other_requester = view();
        other_requester["requested_by"] = json!("someone-else");
        assert!(lease_from_view(&other_requester).is_err());
    }
}
