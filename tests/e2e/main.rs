//! End-to-end tests: the built `dualtrust` binary as a real process, driven
//! by rmcp's own MCP client over stdio and streamable HTTP.
//!
//! Modules:
//! - `common`: data directories, tokens, spawning servers and clients.
//! - `idp`: a local identity provider (JWKS, OAuth authorization code + PKCE).
//! - `replicas`: two servers sharing a PostgreSQL store; a private PostgreSQL stopped and restarted.
//! - `rotation`: `keys rotate` mid-run on two replicas; old and new receipts verify, a leaked
//!   retired key signs nothing that verifies.
//! - `witness`: two `dualtrust witness` processes cosign two replicas' log; a split view
//!   forked with the server key is refused by a witness and by `audit verify --witness`.
//! - `stdio`: the gate through the stdio transport, allowed and denied calls.
//! - `http`: the HTTP front door (401/403 answers, metadata, JWKS) and MCP over it.
//! - `identity`: a local IdP (RSA, EC, Ed25519, JWKS rotation) and the token attack battery,
//!   403 scope challenges, CORS, rate limits, graceful shutdown, production refusals.
//! - `postgres`: db.query on the real PostgreSQL: types, least-privilege roles, the bypass corpus.
//! - `row_security`: the verified identity in the database: PostgreSQL row-level security
//!   that holds however a query is written, SQLite's server-bound `:dt_…` parameters.
//! - `quorum`: leases and k-of-n approval, the happy path and the attacks.
//! - `inbox`: the approvers' web inbox in headless Chromium (tests/browser).
//! - `passkeys`: passkey approvers over HTTP with a software authenticator: registration,
//!   confirmation, k passkey signatures over one call, each ceremony attack, offline re-check.
//! - `audit_log`: the RFC 6962 log: proofs, checkpoints, tampering, kill -9.
//! - `schema`: the database schema as MCP resources (and `db.schema`) on SQLite and PostgreSQL.
//! - `sandbox`: the kernel boundary of terminal.execute: escapes, an approved shell, each layer.
//! - `cli`: the command line: init, token, keys, audit export and offline verify.
//! - `sql_differential`: statements the SQL classifier calls `read` change nothing in a real
//!   PostgreSQL or SQLite (seeded grammar, the fuzz corpus, known state-changing calls).

// A benchmark or test harness: a failed set-up step ends the run loudly.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

mod audit_log;
mod cli;
mod common;
mod http;
mod identity;
mod idp;
mod inbox;
mod notifications;
mod passkeys;
mod postgres;
mod quorum;
mod replicas;
mod rotation;
mod row_security;
mod sandbox;
mod schema;
mod sql_differential;
mod stdio;
mod witness;
