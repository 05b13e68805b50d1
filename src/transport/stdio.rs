//! MCP over stdio. As the MCP specification says for stdio, credentials come
//! from the environment that launched the process (`DUALTRUST_TOKEN`); the
//! token is verified again, with expiry and revocation, on every call.

use std::sync::Arc;

use rmcp::ServiceExt;

use crate::server::{App, McpServer, Transport};

pub async fn serve(
    app: Arc<App>,
    token: Option<String>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match app.gate.authenticate(token.as_deref()).await {
        Ok(p) => {
            tracing::info!(subject = p.subject(), scopes = ?p.scopes(), "stdio token accepted")
        }
        Err(e) => tracing::warn!(
            reason = e.code(),
            "stdio token not accepted ({e}); every tool call will be denied until DUALTRUST_TOKEN holds a valid token"
        ),
    }
    let server = McpServer::new(app.clone(), Transport::Stdio { token });
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    app.gate.log().flush().await;
    Ok(())
}
