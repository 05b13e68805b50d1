//! dualtrust: an MCP server that lets AI agents reach a SQL database and a
//! shell only through one gate — a verified identity reduced to scopes, a
//! single-use lease bound to the exact call, quorum approval for destructive
//! calls — and leaves a signed, verifiable receipt for every decision.
//!
//! The pipeline lives in [`gate`]; a tool's code can only run with an
//! [`gate::Authorized`] value, which nothing but the gate constructs.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod identity;
pub mod keyring;
pub mod keys;
pub mod metrics;
pub mod notify;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod tools;
pub mod trace;
pub mod transport;
#[cfg(test)]
mod vectors;
pub mod webauthn;
pub mod witness;

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

/// Whether `origin` is admitted by the `allowed` patterns (`scheme://host`,
/// `scheme://host:port`, or `scheme://host:*` for any port).
pub fn origin_matches(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| {
        if let Some(prefix) = a.strip_suffix(":*") {
            origin.eq_ignore_ascii_case(prefix)
                || origin
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|port| {
                        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                    })
        } else {
            a.eq_ignore_ascii_case(origin)
        }
    })
}

/// The module graph: every module may use only modules in layers below its
/// own, so the graph has no cycle and a reader can learn the crate bottom-up.
#[cfg(test)]
mod module_graph {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    /// Lowest first. Modules in one layer do not use each other.
    const LAYERS: &[&[&str]] = &[
        &[
            "keys", "metrics", "sandbox", "demo", "clock", "trace", "webauthn",
        ],
        &["config"],
        &["store"],
        &["keyring"],
        &["audit", "identity", "notify"],
        &["gate", "witness"],
        &["tools"],
        &["app"],
        &["server"],
        &["transport"],
        &["cli"],
        // Test support (the fuzz targets, the shared vectors): may reach everything.
        &["fuzzing", "vectors"],
    ];

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code of a file without its comments and its unit tests (a test
    /// may drive its module from above).
    fn code(text: &str) -> String {
        let body = match text.find("#[cfg(test)]\nmod tests") {
            Some(end) => &text[..end],
            None => text,
        };
        body.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The top-level modules named by `crate::…` paths in `code`, including
    /// every branch of a `use crate::{a::X, b}` group.
    fn used_modules(code: &str) -> BTreeSet<String> {
        let mut used = BTreeSet::new();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut start_of_path = true;
                let mut name = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 1 => {
                            if !name.is_empty() {
                                used.insert(std::mem::take(&mut name));
                            }
                            start_of_path = true;
                        }
                        c if depth == 1 && start_of_path && (c.is_alphanumeric() || c == '_') => {
                            name.push(c)
                        }
                        _ if depth == 1 && start_of_path && !name.is_empty() => {
                            used.insert(std::mem::take(&mut name));
                            start_of_path = false;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                }
                if !name.is_empty() {
                    used.insert(name);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
        used
    }

    #[test]
    fn the_group_parser_sees_every_branch() {
        let used =
            used_modules("use crate::{audit::{A, B}, config, gate::quorum::X};\ncrate::keys::f()");
        let expected: BTreeSet<String> = ["audit", "config", "gate", "keys"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(used, expected);
    }

    #[test]
    fn every_module_uses_only_layers_below_its_own() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
        for line in lib.lines() {
            if let Some(module) = line
                .trim()
                .strip_prefix("pub mod ")
                .and_then(|m| m.strip_suffix(';'))
            {
                assert!(
                    layer_of(module).is_some(),
                    "module `{module}` is not placed in LAYERS"
                );
            }
        }
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut upward = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&root).expect("under src");
            let Some(module) = relative
                .iter()
                .next()
                .and_then(|m| m.to_str())
                .map(|m| m.trim_end_matches(".rs").to_string())
            else {
                continue;
            };
            let Some(own) = layer_of(&module) else {
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("source");
            for used in used_modules(&code(&text)) {
                if used == module {
                    continue;
                }
                if let Some(layer) = layer_of(&used)
                    && layer >= own
                {
                    upward.push(format!("{} uses crate::{used}", relative.display()));
                }
            }
        }
        assert!(
            upward.is_empty(),
            "dependencies that are not downward: {upward:#?}"
        );
    }
}
