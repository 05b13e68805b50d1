//! The benchmark's floor: a bare rmcp streamable HTTP server exposing the
//! same `bench.echo` tool as dualtrust's `bench` build, with no
//! authentication, gate or receipts. Built and started by `tools/bench`.
//!
//!     bench_bare_rmcp 127.0.0.1:0
//!
//! Prints `listening on http://ADDR/mcp` on stderr once it accepts.

// A benchmark or test harness: a failed set-up step ends the run loudly.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use axum::serve::ListenerExt;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_router};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(Serialize, schemars::JsonSchema)]
struct EchoOutput {
    text: String,
}

#[derive(Clone)]
struct Bare;

#[tool_router(server_handler)]
impl Bare {
    #[tool(name = "bench.echo", description = "Returns its text unchanged.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> Json<EchoOutput> {
        Json(EchoOutput { text })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let address = listener.local_addr()?;
    // As dualtrust does: without it every response waits ~40 ms for a
    // delayed ACK, which would hide everything else measured here.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let service = StreamableHttpService::new(
        || Ok(Bare),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_allowed_hosts(["127.0.0.1", "localhost"]),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    eprintln!("listening on http://{address}/mcp");
    axum::serve(listener, router).await?;
    Ok(())
}
