//! dualtrust: an MCP server that lets AI agents reach a SQL database and a
//! shell only through one gate — a verified identity reduced to scopes, a
//! single-use lease bound to the exact call, quorum approval for destructive
//! calls — and leaves a signed, verifiable receipt for every decision.
//!
//! The pipeline lives in [`gate`]; a tool's code can only run with an
//! [`gate::Authorized`] value, which nothing but the gate constructs.
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod tools;
pub mod transport;

/// Seconds since the Unix epoch. Every expiry in dualtrust is compared with this.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, for receipt timestamps.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 128 random bits, hex encoded: lease ids, token ids, passport ids.
pub fn random_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
