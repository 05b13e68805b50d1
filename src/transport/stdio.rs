//! MCP over stdio. As the MCP specification says for stdio, credentials come
//! from the environment that launched the process (`DUALTRUST_TOKEN`); the
//! token is verified again, with expiry and revocation, on every call.
//!
//! Lines are read here, not by rmcp: each is screened
//! ([`super::jsonrpc::screen`]) and only well-formed messages reach rmcp,
//! so a line rmcp would silently drop is answered with its JSON-RPC error
//! and a receipt. One writer owns stdout, so answers never interleave.

use std::sync::Arc;

use rmcp::ServiceExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::app::App;
use crate::server::{McpServer, Transport};

/// Lines in flight between the reader, rmcp and the stdout writer.
const PIPE_BYTES: usize = 64 * 1024;

pub async fn serve(
    app: Arc<App>,
    token: Option<String>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let principal = match app.gate.authenticate(token.as_deref()).await {
        Ok(caller) => {
            let p = caller.principal();
            tracing::info!(subject = p.subject(), scopes = ?p.scopes(), "stdio token accepted");
            Some(p.clone())
        }
        Err(e) => {
            tracing::warn!(
                reason = e.code(),
                "stdio token not accepted ({e}); every tool call will be denied until DUALTRUST_TOKEN holds a valid token"
            );
            None
        }
    };
    let (rmcp_in, mut to_rmcp) = tokio::io::duplex(PIPE_BYTES);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(PIPE_BYTES);
    let (lines, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(64);

    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = outgoing.recv().await {
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let answers = lines.clone();
    let relay = tokio::spawn(async move {
        let mut from_rmcp = tokio::io::BufReader::new(from_rmcp);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from_rmcp.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if answers.send(line.clone()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let max_line = app.config.http.max_body_bytes;
    let reader_app = app.clone();
    let reader = tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        loop {
            let line = match read_line(&mut stdin, max_line).await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => return,
            };
            let verdict = match &line {
                Line::TooLong => Err(super::jsonrpc::Rejected::too_large(max_line)),
                Line::Message(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
                Line::Message(bytes) => super::jsonrpc::screen(bytes),
            };
            match (verdict, line) {
                (Ok(()), Line::Message(mut bytes)) => {
                    bytes.push(b'\n');
                    if to_rmcp.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                (Ok(()), Line::TooLong) => {}
                (Err(rejected), _) => {
                    tracing::info!(
                        code = rejected.code,
                        reason = rejected.reason(),
                        "stdio message refused: {}",
                        rejected.message
                    );
                    reader_app
                        .gate
                        .record_refusal(
                            "stdio",
                            "jsonrpc",
                            principal.as_ref(),
                            &crate::gate::Denial::MalformedMessage(rejected.reason()),
                        )
                        .await;
                    if rejected.notification {
                        continue;
                    }
                    let mut answer = rejected.response().to_string().into_bytes();
                    answer.push(b'\n');
                    if lines.send(answer).await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    let server = McpServer::new(app.clone(), Transport::Stdio { token });
    let running = server.serve((rmcp_in, rmcp_out)).await?;
    running.waiting().await?;
    reader.abort();
    let _ = relay.await;
    let _ = writer.await;
    app.gate.log().flush().await;
    Ok(())
}

enum Line {
    Message(Vec<u8>),
    /// Longer than the limit; its bytes were read and discarded.
    TooLong,
}

/// The next newline-terminated line, holding at most `max` bytes of it;
/// `None` at the end of input.
async fn read_line(
    input: &mut (impl tokio::io::AsyncBufRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (line.is_empty() && !too_long, too_long) {
                (true, _) => None,
                (_, true) => Some(Line::TooLong),
                _ => Some(Line::Message(line)),
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(available.len());
        input.consume(consumed);
        if done.is_some() {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Message(line)
            }));
        }
    }
}
