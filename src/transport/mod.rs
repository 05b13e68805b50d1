//! The two front doors: stdio (a subprocess of the MCP client, token from
//! the launching environment) and streamable HTTP (bearer token on every
//! request). Both lead to the same [`crate::server::McpServer`] and gate.

pub mod connections;
pub mod http;
pub mod jsonrpc;
pub mod stdio;
