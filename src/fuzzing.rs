//! Entry points for the cargo-fuzz targets in `fuzz/`: one function per
//! parser or classifier that request data reaches, each taking the raw
//! fuzzer input. Not an API; it is public only so the fuzz crate can call it.
//!
//! Each entry point asserts a property beyond "does not crash", checked by
//! code of its own rather than by the code under test (a re-parse, a path
//! resolver, a signature recomputed by hand), and panics when it does not
//! hold, so libFuzzer reports the input. Fixtures (keys, a terminal root, a
//! signed log) are built once per process and are fixed, so that committed
//! seeds stay valid: the keys are derived from constant seeds and must never
//! be used for anything else.

// A property that does not hold must panic: that is how libFuzzer learns
// of the input. Fixture set-up failing is a broken harness, not a finding.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::audit::checkpoint::{Checkpoint, origin_for};
use crate::audit::merkle::{self, Hash, MerkleTree};
use crate::audit::{GENESIS_PREV, RECEIPT_TYPE, Receipt, ReceiptBody, canonical_bytes};
use crate::config::{IdentityConfig, Mode, ScopeConfig, TerminalConfig};
use crate::gate::{Class, Tool};
use crate::identity::TokenVerifier;
use crate::keys::KeyPair;
use crate::keys::PublishedKey;
use crate::tools::audit_verify::AuditVerifyArgs;
use crate::tools::db_query::classify::{SqlDialect, classify_sql};
use crate::tools::terminal::{NO_PATH_PROGRAMS, Terminal, TerminalArgs};

// ---------------------------------------------------------------------------
// Terminal: argv classification and path confinement
// ---------------------------------------------------------------------------

/// Where the terminal fixture lives: a fixed path, so seeds can name it.
pub const TERMINAL_BASE: &str = "dualtrust-fuzz-terminal";

/// Programs the design always holds for quorum, whatever their arguments.
const ALWAYS_DESTRUCTIVE: &[&str] = &[
    "rm",
    "rmdir",
    "shred",
    "truncate",
    "dd",
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "kill",
    "pkill",
    "killall",
    "mkfs",
    "mkfs.ext4",
];

/// Never runnable: they run another program past its rule, or are shells.
const NEVER_ALLOWED: &[&str] = &[
    "env", "sudo", "xargs", "nice", "timeout", "nohup", "sh", "bash", "python3", "perl", "awk",
];

struct TerminalFixture {
    terminal: Terminal,
    root: PathBuf,
}

fn terminal_fixture() -> &'static TerminalFixture {
    static FIXTURE: OnceLock<TerminalFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = std::env::temp_dir().join(TERMINAL_BASE);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub/deep")).expect("fixture: terminal root");
        std::fs::create_dir_all(base.join("outside")).expect("fixture: outside dir");
        std::fs::write(root.join("notes.txt"), "notes\n").expect("fixture: file");
        // Links a checkout or an operator could leave in a root: out of it
        // by absolute and relative paths, under names that look like an
        // option or a `key=value` operand, one dangling, one back inside.
        for (link, target) in [
            ("etc-link", "/etc"),
            ("-etc", "/etc"),
            ("x=etc", "/etc"),
            ("dangling", "../outside/new-file"),
            ("sub/escape", "../.."),
            ("sub/up", ".."),
        ] {
            let at = root.join(link);
            if std::fs::symlink_metadata(&at).is_err() {
                std::os::unix::fs::symlink(target, &at).expect("fixture: symlink");
            }
        }
        let config = TerminalConfig {
            roots: vec![root.clone()],
            ..TerminalConfig::default()
        };
        let terminal = Terminal::new(config, Mode::Development).expect("fixture: terminal");
        let root = std::fs::canonicalize(&root).expect("fixture: canonical root");
        TerminalFixture { terminal, root }
    })
}

/// Where `path`, taken relative to `cwd`, lands when a program opens or
/// creates it: every symlink that exists is followed (dangling ones too,
/// since creating through one creates its target), a missing component is
/// taken as a directory a program could create, `..` steps up. `None` when
/// links loop.
fn landing(cwd: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut out = if path.starts_with('/') {
        PathBuf::from("/")
    } else {
        cwd.to_path_buf()
    };
    let push_components = |pending: &mut VecDeque<OsString>, p: &Path, front: bool| {
        let parts: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        if front {
            for part in parts.into_iter().rev() {
                pending.push_front(part);
            }
        } else {
            pending.extend(parts);
        }
    };
    push_components(&mut pending, Path::new(path), false);
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            out.pop();
            continue;
        }
        out.push(&part);
        if let Ok(target) = std::fs::read_link(&out) {
            hops += 1;
            if hops > 40 {
                return None;
            }
            out.pop();
            if target.is_absolute() {
                out = PathBuf::from("/");
            }
            push_components(&mut pending, &target, true);
        }
    }
    Some(out)
}

/// Every reading of an argument as a file a program might take: an operand
/// whole (after `--` every argument is one), the value of `--opt=VALUE`, the
/// value attached to a short option `-oVALUE`, and the value of a
/// `key=value` operand (`dd if=…`) as well as the operand itself.
fn path_readings(arg: &str, operand: bool) -> Vec<&str> {
    let mut readings = Vec::new();
    if operand {
        readings.push(arg);
    } else if let Some(long) = arg.strip_prefix("--") {
        readings.extend(long.split_once('=').map(|(_, v)| v));
    } else if let Some(short) = arg.strip_prefix('-') {
        let mut chars = short.chars();
        if chars.next().is_some() {
            readings.push(chars.as_str());
        }
    } else {
        readings.push(arg);
        // `a/b=c` is a file name; only a key without a slash takes a value.
        readings.extend(
            arg.split_once('=')
                .filter(|(k, _)| !k.contains('/'))
                .map(|(_, v)| v),
        );
    }
    readings.retain(|r| !r.is_empty());
    readings
}

/// Input: fields separated by NUL; the first is the working directory
/// (empty for the default), the rest the argv.
///
/// Properties: a command classified ordinary names no file outside the
/// roots under any reading of its arguments (for programs whose arguments
/// can be paths); a destructive command whose operand lies outside the roots
/// says so in its summary; wrappers and shells never classify; the programs
/// the design calls destructive are never ordinary; the scope follows the
/// class.
pub fn terminal(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let cwd = fields.next().filter(|c| !c.is_empty()).map(String::from);
    let argv: Vec<String> = fields.map(String::from).collect();
    let fixture = terminal_fixture();
    let args = TerminalArgs {
        argv: argv.clone(),
        cwd: cwd.clone(),
        timeout_ms: None,
    };
    let Ok(classification) = fixture.terminal.classify(&args) else {
        return;
    };
    let name = Path::new(&argv[0])
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        !NEVER_ALLOWED.contains(&name),
        "{argv:?}: `{name}` must never classify"
    );
    let cwd_path = landing(&fixture.root, cwd.as_deref().unwrap_or("."))
        .unwrap_or_else(|| panic!("{argv:?}: cwd {cwd:?} classified but loops"));
    assert!(
        cwd_path.starts_with(&fixture.root),
        "{argv:?}: cwd {cwd:?} lands at {} outside the root",
        cwd_path.display()
    );
    let paths_matter = !NO_PATH_PROGRAMS.contains(&name);
    match classification.class {
        Class::Write => {
            assert!(
                !ALWAYS_DESTRUCTIVE.contains(&name) && !name.starts_with("mkfs"),
                "{argv:?}: `{name}` classified ordinary"
            );
            if paths_matter {
                let mut operands = false;
                for arg in &argv[1..] {
                    let readings = path_readings(arg, operands);
                    operands |= arg == "--";
                    for reading in readings {
                        let inside = landing(&cwd_path, reading)
                            .is_some_and(|p| p.starts_with(&fixture.root));
                        assert!(
                            inside,
                            "{argv:?} (cwd {cwd:?}) classified ordinary, but `{reading}` lands outside the root"
                        );
                    }
                }
            }
        }
        Class::Destructive => {
            if paths_matter {
                let targets = classification
                    .summary
                    .rsplit_once("; targets: ")
                    .map(|(_, t)| t)
                    .unwrap_or_default();
                for arg in argv[1..].iter().take(8) {
                    if arg.starts_with('-') || arg.contains('=') {
                        continue;
                    }
                    let outside =
                        landing(&cwd_path, arg).is_none_or(|p| !p.starts_with(&fixture.root));
                    assert!(
                        !outside || targets.contains("OUTSIDE"),
                        "{argv:?}: `{arg}` lies outside the root but the approvers are not told: {}",
                        classification.summary
                    );
                }
            }
        }
        other => panic!("{argv:?}: terminal class {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// SQL classification
// ---------------------------------------------------------------------------

/// Functions the classifier says it refuses to call a `read`: a small list
/// of the plainly dangerous ones, kept apart from the classifier's own.
const SQL_DENY: &[&str] = &[
    "nextval",
    "setval",
    "set_config",
    "pg_advisory_lock",
    "pg_sleep",
    "pg_read_file",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "load_extension",
    "writefile",
];

fn sql_parser_dialect(dialect: SqlDialect) -> Box<dyn sqlparser::dialect::Dialect> {
    match dialect {
        SqlDialect::Sqlite => Box::new(sqlparser::dialect::SQLiteDialect {}),
        SqlDialect::Postgres => Box::new(sqlparser::dialect::PostgreSqlDialect {}),
    }
}

/// What a read may not contain, found by a walk of its own over the tree.
#[derive(Default)]
struct ReadCheck {
    violation: Option<String>,
}

impl ReadCheck {
    fn flag(&mut self, what: String) {
        self.violation.get_or_insert(what);
    }

    fn check_name(&mut self, name: &sqlparser::ast::ObjectName) {
        let last = name.0.last().and_then(|part| part.as_ident());
        if let Some(ident) = last {
            let lower = ident.value.to_lowercase();
            if SQL_DENY.contains(&lower.as_str()) {
                self.flag(format!("calls {lower}"));
            }
        }
    }
}

impl sqlparser::ast::Visitor for ReadCheck {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &sqlparser::ast::Statement) -> ControlFlow<()> {
        use sqlparser::ast::Statement;
        match statement {
            // EXPLAIN's own statement is visited too.
            Statement::Query(_) | Statement::Explain { .. } | Statement::ExplainTable { .. } => {}
            other => {
                let text = other.to_string();
                self.flag(format!(
                    "statement `{}`",
                    text.split_whitespace().next().unwrap_or_default()
                ));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.flag("locking clause".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &sqlparser::ast::Select) -> ControlFlow<()> {
        if select.into.is_some() {
            self.flag("SELECT INTO".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &sqlparser::ast::TableFactor) -> ControlFlow<()> {
        if let sqlparser::ast::TableFactor::Function { name, .. } = factor {
            self.check_name(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        self.check_name(relation);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &sqlparser::ast::Expr) -> ControlFlow<()> {
        if let sqlparser::ast::Expr::Function(function) = expr {
            self.check_name(&function.name);
        }
        ControlFlow::Continue(())
    }
}

/// Input: one selector byte (even: SQLite, odd: PostgreSQL), then the SQL.
///
/// Properties: the canonical text the server executes parses back to the
/// very statement that was classified, and classifies the same; a statement
/// classified `read` holds no statement but a query, no `SELECT INTO`, no
/// data-modifying CTE, no locking clause and no call of a denied function
/// anywhere in its tree.
pub fn sql(data: &[u8]) {
    use sqlparser::ast::Visit;
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let dialect = if selector & 1 == 0 {
        SqlDialect::Sqlite
    } else {
        SqlDialect::Postgres
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(classified) = classify_sql(text, dialect) else {
        return;
    };
    let parser_dialect = sql_parser_dialect(dialect);
    let canonical = &classified.canonical_sql;
    let prepared = crate::tools::db_query::classify::prepared_text(text, dialect)
        .unwrap_or_else(|r| panic!("{text:?} classified but not prepared: {}", r.message));
    let Ok(original) = sqlparser::parser::Parser::parse_sql(parser_dialect.as_ref(), &prepared)
    else {
        // A statement judged on its tokens (DO, CHECKPOINT, REINDEX,
        // VACUUM INTO): never a read, and what runs judges the same again.
        assert!(
            classified.class >= Class::Admin,
            "{text:?}: a statement without a syntax tree classified {:?}",
            classified.class
        );
        let again = classify_sql(canonical, dialect)
            .unwrap_or_else(|r| panic!("{text:?}: canonical {canonical:?} refused: {}", r.message));
        assert_eq!(
            (again.class, &again.canonical_sql),
            (classified.class, canonical),
            "{text:?}: canonical {canonical:?} judges differently"
        );
        return;
    };
    let reparsed = sqlparser::parser::Parser::parse_sql(parser_dialect.as_ref(), canonical)
        .unwrap_or_else(|e| panic!("{text:?}: canonical {canonical:?} does not parse: {e}"));
    assert_eq!(
        reparsed, original,
        "{text:?}: canonical {canonical:?} is another statement"
    );
    let again = classify_sql(canonical, dialect)
        .unwrap_or_else(|r| panic!("{text:?}: canonical {canonical:?} refused: {}", r.message));
    assert_eq!(
        again.class, classified.class,
        "{text:?}: canonical {canonical:?} classifies differently"
    );
    if classified.class == Class::Read {
        let mut check = ReadCheck::default();
        let _ = original.visit(&mut check);
        if let Some(violation) = check.violation {
            panic!("{text:?} ({dialect:?}) classified read, but it has {violation}");
        }
    }
}

// ---------------------------------------------------------------------------
// Bearer header and access-token verification
// ---------------------------------------------------------------------------

/// The HS256 secret the token fixture trusts (fixed, for fuzzing only).
pub const FUZZ_HS256_SECRET: &str = "dualtrust-fuzz-hs256-secret-not-for-any-real-use";

/// Seed of the development issuer key the token fixture trusts.
pub const FUZZ_ISSUER_SEED: [u8; 32] = [0x17; 32];

struct TokenFixture {
    runtime: tokio::runtime::Runtime,
    verifier: TokenVerifier,
    issuer: KeyPair,
    config: IdentityConfig,
}

fn token_fixture() -> &'static TokenFixture {
    static FIXTURE: OnceLock<TokenFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let issuer = KeyPair::from_seed(&FUZZ_ISSUER_SEED);
        let config = IdentityConfig {
            hs256_secret: serde_json::from_value(serde_json::json!(FUZZ_HS256_SECRET))
                .expect("fixture: secret"),
            ..IdentityConfig::default()
        };
        let verifier = TokenVerifier::new(&config, Some(&issuer), &ScopeConfig::default().implies)
            .expect("fixture: verifier");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("fixture: runtime");
        TokenFixture {
            runtime,
            verifier,
            issuer,
            config,
        }
    })
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A token signed by the fixture's keys: `header.payload.signature`, the
/// signature by the issuer key (EdDSA) or the HS256 secret.
fn sign_token(fixture: &TokenFixture, header: &[u8], payload: &[u8], hs256: bool) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = if hs256 {
        hmac_sha256(FUZZ_HS256_SECRET.as_bytes(), input.as_bytes()).to_vec()
    } else {
        fixture.issuer.sign(input.as_bytes()).to_vec()
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Checks, independently of the verifier, that an accepted token is one the
/// configured keys signed and whose claims hold now.
fn assert_token_sound(fixture: &TokenFixture, token: &str, principal: &crate::identity::Principal) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token:?} accepted without three segments");
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|_| panic!("{token:?} accepted with a segment that is not base64url"))
    };
    let (header, payload, signature) = (decode(parts[0]), decode(parts[1]), decode(parts[2]));
    let header: serde_json::Value = serde_json::from_slice(&header)
        .unwrap_or_else(|_| panic!("{token:?} accepted with a header that is not JSON"));
    let claims: serde_json::Value = serde_json::from_slice(&payload)
        .unwrap_or_else(|_| panic!("{token:?} accepted with claims that are not JSON"));
    let input = format!("{}.{}", parts[0], parts[1]);
    let signed = match header["alg"].as_str() {
        Some("EdDSA") => <[u8; 64]>::try_from(signature.as_slice()).is_ok_and(|sig| {
            fixture
                .issuer
                .verifying_key()
                .verify_strict(
                    input.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig),
                )
                .is_ok()
        }),
        Some("HS256") => signature == hmac_sha256(FUZZ_HS256_SECRET.as_bytes(), input.as_bytes()),
        _ => false,
    };
    assert!(
        signed,
        "{token:?} accepted but not signed by a configured key"
    );
    assert!(
        header.get("crit").is_none(),
        "{token:?} accepted with `crit`"
    );
    if let Some(typ) = header.get("typ") {
        let typ = typ
            .as_str()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        assert!(
            typ == "jwt" || typ == "at+jwt",
            "{token:?} accepted with typ {typ:?}"
        );
    }
    let now = crate::now_unix();
    let leeway = fixture.config.leeway_s;
    let exp = claims["exp"]
        .as_u64()
        .unwrap_or_else(|| panic!("{token:?} accepted without a numeric exp"));
    assert!(exp + leeway >= now, "{token:?} accepted after its exp");
    assert_eq!(principal.expires_at(), exp, "{token:?}: principal's expiry");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf
            .as_u64()
            .unwrap_or_else(|| panic!("{token:?} accepted with a non-numeric nbf"));
        assert!(nbf <= now + leeway, "{token:?} accepted before its nbf");
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat
            .as_u64()
            .unwrap_or_else(|| panic!("{token:?} accepted with a non-numeric iat"));
        assert!(
            iat <= now + leeway,
            "{token:?} accepted with iat in the future"
        );
    }
    assert_eq!(
        claims["iss"].as_str(),
        Some(fixture.config.issuer.as_str()),
        "{token:?}: issuer"
    );
    let audience = fixture.config.audience.as_str();
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == audience,
        serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    assert!(aud_ok, "{token:?} accepted for another audience");
    let sub = claims["sub"]
        .as_str()
        .unwrap_or_else(|| panic!("{token:?} accepted without a string sub"));
    assert!(
        !sub.trim().is_empty(),
        "{token:?} accepted with a blank sub"
    );
    assert_eq!(principal.subject(), sub, "{token:?}: subject");
}

/// Input: one selector byte, then
/// - 0: `Authorization` header values separated by `\n`, through the HTTP
///   front door's bearer parser, then the verifier;
/// - 1: a raw token for the verifier;
/// - 2: header JSON, NUL, claims JSON: signed by the fixture's issuer key
///   (or, when the selector's bit 2 is set, its HS256 secret), then verified.
///
/// Properties: nothing verifies unless the configured key signed it and its
/// claims hold now (checked here with a hand-rolled HMAC and Ed25519); a
/// request with more than one `Authorization` header yields no token; the
/// token handed on is what the header carried after `Bearer `.
pub fn token(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = token_fixture();
    let token = match selector % 3 {
        0 => {
            let mut headers = http::HeaderMap::new();
            for value in rest.split(|b| *b == b'\n') {
                if let Ok(value) = http::HeaderValue::from_bytes(value) {
                    headers.append(http::header::AUTHORIZATION, value);
                }
            }
            let count = headers.get_all(http::header::AUTHORIZATION).iter().count();
            let Ok(Some(token)) = crate::transport::http::bearer(&headers) else {
                return;
            };
            assert!(
                count <= 1,
                "{count} Authorization headers, and the first one's token was taken: {headers:?}"
            );
            let value = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let scheme_ok = value
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer "));
            assert!(
                scheme_ok && value[7..].contains(token),
                "token {token:?} taken from {value:?}"
            );
            token.to_string()
        }
        1 => match std::str::from_utf8(rest) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        },
        _ => {
            let (header, payload) = match rest.iter().position(|b| *b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b""[..]),
            };
            sign_token(fixture, header, payload, selector & 4 != 0)
        }
    };
    let verified = fixture.runtime.block_on(fixture.verifier.verify(&token));
    if let Ok(principal) = verified {
        assert_token_sound(fixture, &token, &principal);
    }
}

// ---------------------------------------------------------------------------
// Audit: signed-note checkpoints, receipts, proofs
// ---------------------------------------------------------------------------

/// Seed of the server key of the audit fixture.
pub const FUZZ_LOG_SEED: [u8; 32] = [0x29; 32];
/// Receipts in the fixture's log.
pub const FUZZ_LOG_SIZE: u64 = 13;
/// The `time` line of the fixture's checkpoints.
pub const FUZZ_CHECKPOINT_TIME: u64 = 1_700_000_000;

struct AuditFixture {
    key: KeyPair,
    origin: String,
    receipts: Vec<Receipt>,
    tree: MerkleTree,
    /// Every MTH(D[lo:hi]) of the fixture's tree: what a forged proof
    /// would be assembled from.
    pool: Vec<Hash>,
}

fn audit_fixture() -> &'static AuditFixture {
    static FIXTURE: OnceLock<AuditFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = KeyPair::from_seed(&FUZZ_LOG_SEED);
        let origin = origin_for(key.kid());
        let mut receipts = Vec::new();
        let mut tree = MerkleTree::new();
        let mut prev = GENESIS_PREV.to_string();
        for seq in 0..FUZZ_LOG_SIZE {
            let body = fixture_body(&key, seq, &prev);
            let receipt = Receipt::seal(body, &key).expect("fixture: seal");
            tree.push(merkle::leaf_hash(
                &canonical_bytes(&receipt.body).expect("fixture: canonical"),
            ));
            prev = receipt.hash.clone();
            receipts.push(receipt);
        }
        let mut pool = Vec::new();
        for lo in 0..FUZZ_LOG_SIZE {
            for hi in lo + 1..=FUZZ_LOG_SIZE {
                pool.push(range_root(&tree, lo, hi));
            }
        }
        pool.push(merkle::empty_root());
        AuditFixture {
            key,
            origin,
            receipts,
            tree,
            pool,
        }
    })
}

fn fixture_body(key: &KeyPair, seq: u64, prev: &str) -> ReceiptBody {
    ReceiptBody {
        kind: RECEIPT_TYPE.into(),
        seq,
        prev: prev.into(),
        ts_ms: 1_700_000_000_000 + seq,
        kid: key.kid().into(),
        subject: Some("alice".into()),
        token_id: None,
        transport: "stdio".into(),
        tool: "db.query".into(),
        class: Some("read".into()),
        scope: Some("db:read".into()),
        args_digest: Some(crate::sha256_hex(&seq.to_be_bytes())),
        lease: None,
        decision: crate::audit::Decision::Allowed,
        reason: None,
        outcome: Some(serde_json::json!({ "rows": seq, "note": "é" })),
        trace_id: None,
    }
}

/// MTH of leaves `[lo, hi)`, from the leaves themselves.
fn range_root(tree: &MerkleTree, lo: u64, hi: u64) -> Hash {
    let mut sub = MerkleTree::new();
    for i in lo..hi {
        sub.push(tree.leaf(i).expect("fixture: leaf"));
    }
    sub.root(hi - lo).expect("fixture: root")
}

impl AuditFixture {
    fn checkpoint(&self, size: u64) -> Checkpoint {
        Checkpoint {
            origin: self.origin.clone(),
            size,
            root: self.tree.root(size).expect("fixture: size"),
            time: FUZZ_CHECKPOINT_TIME,
        }
    }

    fn keys(&self) -> Vec<PublishedKey> {
        vec![PublishedKey::unbounded(self.key.verifying_key())]
    }

    /// The signed-note signature line for `body` (which ends in `\n`).
    fn signature_line(&self, body: &str) -> String {
        let vk = self.key.verifying_key();
        let key_hash = Sha256::new()
            .chain_update(self.origin.as_bytes())
            .chain_update(b"\n")
            .chain_update([0x01])
            .chain_update(vk.as_bytes())
            .finalize();
        let mut blob = key_hash[..4].to_vec();
        blob.extend_from_slice(&self.key.sign(body.as_bytes()));
        format!("\u{2014} {} {}\n", self.origin, STANDARD.encode(blob))
    }

    /// Picks a hash from the pool by one input byte.
    fn pick(&self, byte: u8) -> Hash {
        self.pool[usize::from(byte) % self.pool.len()]
    }
}

/// The fixture's checkpoint notes for some sizes, and receipts with their
/// proofs, as `audit.verify` arguments: the seeds of the `audit` target.
#[doc(hidden)]
pub fn audit_seeds() -> Vec<(String, Vec<u8>)> {
    let fixture = audit_fixture();
    let mut seeds = Vec::new();
    for size in [1, 2, 7, 8, FUZZ_LOG_SIZE] {
        let note = fixture.checkpoint(size).sign(&fixture.key);
        seeds.push((
            format!("note-{size}"),
            [&[0u8][..], note.as_bytes()].concat(),
        ));
        let body = note.split_once("\n\n").map(|(b, _)| b).unwrap_or_default();
        seeds.push((
            format!("body-{size}"),
            [&[1u8][..], body.as_bytes()].concat(),
        ));
    }
    for seq in [0, 5, 12] {
        let receipt = &fixture.receipts[seq as usize];
        let size = FUZZ_LOG_SIZE;
        let proof = fixture.tree.inclusion_proof(seq, size).unwrap_or_default();
        let args = serde_json::json!({
            "receipt": receipt,
            "log": {
                "leaf_index": seq,
                "tree_size": size,
                "inclusion": proof.iter().map(hex::encode).collect::<Vec<_>>(),
                "checkpoint": fixture.checkpoint(size).sign(&fixture.key),
            }
        });
        seeds.push((
            format!("receipt-{seq}"),
            [&[2u8][..], args.to_string().as_bytes()].concat(),
        ));
        seeds.push((
            format!("body-json-{seq}"),
            [
                &[3u8][..],
                serde_json::to_vec(&receipt.body)
                    .unwrap_or_default()
                    .as_slice(),
            ]
            .concat(),
        ));
    }
    let consistency = serde_json::json!({
        "checkpoint": fixture.checkpoint(7).sign(&fixture.key),
        "checkpoint_new": fixture.checkpoint(FUZZ_LOG_SIZE).sign(&fixture.key),
    });
    seeds.push((
        "consistency".into(),
        [&[2u8][..], consistency.to_string().as_bytes()].concat(),
    ));
    let proof: String = fixture
        .tree
        .consistency_proof(7, FUZZ_LOG_SIZE)
        .unwrap_or_default()
        .iter()
        .map(|h| format!("{}\n", STANDARD.encode(h)))
        .collect();
    let submission = format!(
        "old 7\n{proof}\n{}",
        fixture.checkpoint(FUZZ_LOG_SIZE).sign(&fixture.key)
    );
    seeds.push((
        "witness-submission".into(),
        [&[6u8][..], submission.as_bytes()].concat(),
    ));
    seeds.push(("inclusion".into(), vec![4, 5, 13, 0, 1, 2, 3, 4]));
    seeds.push(("consistency-proof".into(), vec![5, 7, 13, 0, 1, 2, 3]));
    seeds
}

fn audit_note(fixture: &AuditFixture, note: &str) {
    let Ok(cp) = Checkpoint::verify(note, &fixture.origin, &fixture.keys()) else {
        return;
    };
    let resigned = cp.sign(&fixture.key);
    let signed_body = note.split_once("\n\n").map(|(b, _)| b);
    assert_eq!(
        signed_body,
        resigned.split_once("\n\n").map(|(b, _)| b),
        "{note:?} verified as {cp:?}, which is another note"
    );
    assert_eq!(
        Checkpoint::verify(&resigned, &fixture.origin, &fixture.keys()).as_ref(),
        Ok(&cp),
        "{cp:?} does not round-trip"
    );
}

fn audit_signed_body(fixture: &AuditFixture, body: &str) {
    let signed = format!("{body}\n");
    let note = format!("{signed}\n{}", fixture.signature_line(&signed));
    let Ok(cp) = Checkpoint::verify(&note, &fixture.origin, &fixture.keys()) else {
        return;
    };
    // The fields mean exactly what the signed bytes say: a checkpoint that
    // verifies is the one its text spells, digit for digit.
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.first().copied(), Some(cp.origin.as_str()), "{body:?}");
    assert_eq!(
        lines.get(1).copied(),
        Some(cp.size.to_string().as_str()),
        "{body:?}: the size line is not the size {}",
        cp.size
    );
    assert_eq!(
        lines.get(2).copied(),
        Some(STANDARD.encode(cp.root).as_str()),
        "{body:?}: the root line"
    );
    let time_line = lines.iter().skip(3).find_map(|l| l.strip_prefix("time "));
    if let Some(time) = time_line.filter(|_| cp.time != 0) {
        assert_eq!(
            time,
            cp.time.to_string(),
            "{body:?}: the time line is not the time {}",
            cp.time
        );
    }
}

fn audit_arguments(fixture: &AuditFixture, json: &[u8]) {
    let Ok(args) = serde_json::from_slice::<AuditVerifyArgs>(json) else {
        return;
    };
    let vk = fixture.keys();
    if let Some(receipt) = &args.receipt
        && receipt.check_signature(&fixture.keys()).is_ok()
    {
        // Ed25519 is deterministic: a receipt that verifies is exactly the
        // one the server sealed from that body, hash and signature alike.
        let resealed = Receipt::seal(receipt.body.clone(), &fixture.key)
            .unwrap_or_else(|_| panic!("{receipt:?} verified but cannot be resealed"));
        assert_eq!(
            &resealed, receipt,
            "a verified receipt is not its own reseal"
        );
        if let Some(proof) = &args.log
            && let Ok(cp) = Checkpoint::verify(&proof.checkpoint, &fixture.origin, &vk)
            && crate::audit::verify_log_proof(receipt, proof, &cp).is_ok()
        {
            let seq = receipt.body.seq;
            let ours = fixture.receipts.get(seq as usize);
            assert_eq!(ours, Some(receipt), "a receipt not in the log proved in it");
            let path: Vec<String> = fixture
                .tree
                .inclusion_proof(seq, cp.size)
                .unwrap_or_default()
                .iter()
                .map(hex::encode)
                .collect();
            let given: Vec<String> = proof.inclusion.iter().map(|h| h.to_lowercase()).collect();
            assert_eq!(
                given, path,
                "receipt {seq}: another inclusion proof verified"
            );
        }
    }
    if let Some(old) = &args.checkpoint
        && let Ok(old) = Checkpoint::verify(old, &fixture.origin, &vk)
    {
        let new = match &args.checkpoint_new {
            Some(n) => Checkpoint::verify(n, &fixture.origin, &vk)
                .ok()
                .map(|cp| (*cp).clone()),
            None => Some(fixture.checkpoint(FUZZ_LOG_SIZE)),
        };
        // Every checkpoint the fixture signs is of its one linear log, so
        // honest proofs between any two of them must verify.
        if let Some(new) = new
            && old.size <= new.size
            && new.size <= FUZZ_LOG_SIZE
        {
            let proof = fixture
                .tree
                .consistency_proof(old.size, new.size)
                .unwrap_or_default();
            assert!(
                merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof),
                "honest consistency {} -> {} fails",
                old.size,
                new.size
            );
        }
    }
}

fn audit_sealed_body(fixture: &AuditFixture, json: &[u8]) {
    let Ok(mut body) = serde_json::from_slice::<ReceiptBody>(json) else {
        return;
    };
    body.kid = fixture.key.kid().to_string();
    let Ok(receipt) = Receipt::seal(body, &fixture.key) else {
        return;
    };
    let Ok(bytes) = canonical_bytes(&receipt.body) else {
        return;
    };
    // What was signed says what the receipt says: the canonical bytes read
    // back as the same body, so no two bodies share one signature. JSON
    // numbers are compared as values (RFC 8785: `1.0` is `1`), so the
    // outcome is compared through its canonical form.
    let reread: ReceiptBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "canonical body {:?} does not parse: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    let shown = String::from_utf8_lossy(&bytes);
    assert_eq!(
        canonical_bytes(&reread).ok().as_deref(),
        Some(bytes.as_slice()),
        "canonical bytes {shown:?} are not a fixed point"
    );
    let (mut a, mut b) = (reread, receipt.body.clone());
    a.outcome = None;
    b.outcome = None;
    assert_eq!(a, b, "canonical bytes {shown:?} mean another body");
    // The receipt as a client gets it comes back intact and still verifies.
    let wire = serde_json::to_vec(&receipt).expect("a sealed receipt serializes");
    let back: Receipt = serde_json::from_slice(&wire).expect("a sealed receipt parses");
    assert_eq!(back, receipt, "a receipt does not survive its JSON");
    assert!(
        back.check_signature(&fixture.keys()).is_ok(),
        "a sealed receipt does not verify after its JSON round trip"
    );
}

fn audit_inclusion(fixture: &AuditFixture, bytes: &[u8]) {
    let [index, size, leaf, root, path @ ..] = bytes else {
        return;
    };
    let size = u64::from(*size) % (FUZZ_LOG_SIZE + 1);
    let index = u64::from(*index) % (FUZZ_LOG_SIZE + 1);
    let leaf = fixture.pick(*leaf);
    let root = fixture.pick(*root);
    let proof: Vec<Hash> = path.iter().take(16).map(|b| fixture.pick(*b)).collect();
    // Only a real head says anything: any hash is the head of a tree whose
    // one leaf it is.
    if Some(root) != fixture.tree.root(size)
        || !merkle::verify_inclusion(index, size, &leaf, &proof, &root)
    {
        return;
    }
    assert_eq!(
        Some(leaf),
        fixture.tree.leaf(index),
        "another leaf proved at {index}"
    );
    assert_eq!(
        Some(proof),
        fixture.tree.inclusion_proof(index, size),
        "another inclusion proof for {index} in {size} verified"
    );
}

fn audit_consistency(fixture: &AuditFixture, bytes: &[u8]) {
    let [old, new, old_root, new_root, path @ ..] = bytes else {
        return;
    };
    let old = u64::from(*old) % (FUZZ_LOG_SIZE + 1);
    let new = u64::from(*new) % (FUZZ_LOG_SIZE + 1);
    let (old_root, new_root) = (fixture.pick(*old_root), fixture.pick(*new_root));
    let proof: Vec<Hash> = path.iter().take(16).map(|b| fixture.pick(*b)).collect();
    // Against the real later head, as `audit.verify` checks a held
    // checkpoint against the log's own.
    if Some(new_root) != fixture.tree.root(new)
        || !merkle::verify_consistency(old, new, &old_root, &new_root, &proof)
    {
        return;
    }
    // From the empty tree nothing binds either head, and between equal sizes
    // only their equality is proved (RFC 9162, and every other verifier).
    if old == 0 || old == new {
        assert!(proof.is_empty(), "a non-empty proof for {old} -> {new}");
        assert!(
            old == 0 || old_root == new_root,
            "unequal heads of one size"
        );
        return;
    }
    assert_eq!(Some(old_root), fixture.tree.root(old), "another old root");
    assert_eq!(
        Some(proof),
        fixture.tree.consistency_proof(old, new),
        "another consistency proof for {old} -> {new} verified"
    );
}

/// Input: one selector byte, then
/// - 0: a signed-note checkpoint, verified against the fixture's key;
/// - 1: a checkpoint body, signed here with the fixture's key, then verified;
/// - 2: `audit.verify` arguments (JSON): a receipt with its `log` proof, or
///   a checkpoint with `checkpoint_new`;
/// - 3: a receipt body (JSON), sealed here;
/// - 4, 5: an inclusion or consistency proof assembled from real tree
///   hashes picked by the bytes (index, size, leaf, root, path…);
/// - 6: a body submitted to `dualtrust witness` (`add-checkpoint`).
///
/// Properties: a checkpoint that verifies re-serializes to the bytes that
/// were signed and its fields are those the text spells; a receipt that
/// verifies is the server's own seal of its body; canonical receipt bytes
/// read back as the same body; against a real head only the real leaf, the
/// real earlier head and the one true proof verify; honest checkpoints are
/// consistent; a witness submission that parses is the one its text
/// spells, and so is any checkpoint in it.
/// The relying party, statement and registered authenticator the
/// `webauthn` target checks against; fixed so that seeds stay valid.
struct WebauthnFixture {
    rp: crate::webauthn::RelyingParty,
    device: SoftAuthenticator,
    key: crate::webauthn::CredentialKey,
}

const WEBAUTHN_STATEMENT: &str = "dualtrust-approval-v1\nlease=fuzz\n";
const WEBAUTHN_CHALLENGE: [u8; 32] = [0x5a; 32];

fn webauthn_fixture() -> &'static WebauthnFixture {
    static FIXTURE: OnceLock<WebauthnFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let device = SoftAuthenticator::from_seed(
            crate::webauthn::ES256,
            [0x42; 32],
            b"fuzz-credential",
            "http://localhost:8080",
            "localhost",
        );
        let key = device.key();
        WebauthnFixture {
            rp: crate::webauthn::RelyingParty::default(),
            device,
            key,
        }
    })
}

/// WebAuthn ceremonies from the browser's bytes. The first byte picks:
/// 0, a COSE_Key; 1, a registration (client data JSON and the attestation
/// object); otherwise an assertion over the fixture statement by the
/// fixture credential (client data, authenticator data, signature); each
/// part after a 2-byte big-endian length. Property: whatever is accepted has, by a check of its own
/// here, the relying party's RP id hash, user presence and verification,
/// the right ceremony type, challenge and origin, and (for an assertion) a
/// signature that verifies directly with p256 over authenticator data and
/// the client data hash.
pub fn webauthn(data: &[u8]) {
    use crate::webauthn::{Assertion, CredentialKey, RegistrationResponse};
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = webauthn_fixture();
    let mut parts = length_prefixed(rest);
    match selector {
        0 => {
            if let Ok(key) = CredentialKey::from_cose(rest) {
                assert_eq!(key.cose(), rest, "the key is kept as registered");
                assert!(matches!(
                    key.alg(),
                    crate::webauthn::ES256 | crate::webauthn::EDDSA
                ));
            }
        }
        1 => {
            let (Some(client), Some(object)) = (parts.next(), parts.next()) else {
                return;
            };
            let response = RegistrationResponse {
                client_data_json: URL_SAFE_NO_PAD.encode(client),
                attestation_object: URL_SAFE_NO_PAD.encode(object),
            };
            if crate::webauthn::verify_registration(&fixture.rp, &WEBAUTHN_CHALLENGE, &response)
                .is_ok()
            {
                assert_client_data(client, "webauthn.create", &WEBAUTHN_CHALLENGE);
                let object: coset::cbor::value::Value =
                    coset::cbor::de::from_reader(object).expect("accepted CBOR");
                let auth_data = object
                    .as_map()
                    .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("authData")))
                    .and_then(|(_, v)| v.as_bytes())
                    .expect("authData");
                assert_flags(auth_data, 0x40);
            }
        }
        _ => {
            let (Some(client), Some(auth_data), Some(signature)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return;
            };
            let assertion = Assertion {
                credential_id: fixture.device.credential_id_b64(),
                authenticator_data: URL_SAFE_NO_PAD.encode(auth_data),
                client_data_json: URL_SAFE_NO_PAD.encode(client),
                signature: URL_SAFE_NO_PAD.encode(signature),
            };
            if let Ok(count) = assertion.verify(&fixture.rp, &fixture.key, WEBAUTHN_STATEMENT) {
                assert_client_data(
                    client,
                    "webauthn.get",
                    &crate::webauthn::statement_challenge(WEBAUTHN_STATEMENT),
                );
                assert_flags(auth_data, 0);
                assert_eq!(count.to_be_bytes(), auth_data[33..37]);
                use p256::ecdsa::signature::Verifier;
                let SoftSigner::Es256(key) = &fixture.device.signer else {
                    unreachable!("the fixture is ES256")
                };
                let mut signed = auth_data.to_vec();
                signed.extend_from_slice(&Sha256::digest(client));
                let signature = p256::ecdsa::Signature::from_der(signature).expect("DER");
                assert!(key.verifying_key().verify(&signed, &signature).is_ok());
            }
        }
    }
}

/// Splits `data` into parts that each follow their 2-byte length.
fn length_prefixed(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return None;
        }
        let (part, rest) = rest.split_at(len);
        data = rest;
        Some(part)
    })
}

fn assert_client_data(json: &[u8], kind: &str, challenge: &[u8]) {
    let data: serde_json::Value = serde_json::from_slice(json).expect("accepted JSON");
    assert_eq!(data["type"], kind);
    assert_eq!(data["challenge"], URL_SAFE_NO_PAD.encode(challenge));
    let origin = data["origin"].as_str().expect("origin");
    let port = origin
        .strip_prefix("http://localhost")
        .expect("a localhost origin");
    assert!(port.is_empty() || port[1..].bytes().all(|b| b.is_ascii_digit()));
    assert_ne!(data["crossOrigin"], true);
    assert!(data.get("topOrigin").is_none());
}

fn assert_flags(auth_data: &[u8], also: u8) {
    assert_eq!(auth_data[..32], Sha256::digest(b"localhost")[..]);
    assert_eq!(auth_data[32] & (0x05 | also), 0x05 | also);
}

/// Seeds for the `webauthn` target: a registration and an assertion by
/// the fixture authenticator, and its COSE key.
pub fn webauthn_seeds() -> Vec<(String, Vec<u8>)> {
    let fixture = webauthn_fixture();
    let mut device = fixture.device.clone();
    let registration = device.register(&WEBAUTHN_CHALLENGE);
    let assertion = device.assert(WEBAUTHN_STATEMENT);
    let raw = |b64: &str| URL_SAFE_NO_PAD.decode(b64).expect("b64");
    let joined = |selector: u8, parts: &[Vec<u8>]| {
        let mut out = vec![selector];
        for part in parts {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    };
    vec![
        ("cose-key".into(), [&[0u8][..], &device.cose_key()].concat()),
        (
            "registration".into(),
            joined(
                1,
                &[
                    raw(&registration.client_data_json),
                    raw(&registration.attestation_object),
                ],
            ),
        ),
        (
            "assertion".into(),
            joined(
                2,
                &[
                    raw(&assertion.client_data_json),
                    raw(&assertion.authenticator_data),
                    raw(&assertion.signature),
                ],
            ),
        ),
    ]
}

pub fn audit(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = audit_fixture();
    match selector % 7 {
        0 => {
            if let Ok(note) = std::str::from_utf8(rest) {
                audit_note(fixture, note);
            }
        }
        1 => {
            if let Ok(body) = std::str::from_utf8(rest) {
                audit_signed_body(fixture, body);
            }
        }
        2 => audit_arguments(fixture, rest),
        3 => audit_sealed_body(fixture, rest),
        4 => audit_inclusion(fixture, rest),
        5 => audit_consistency(fixture, rest),
        _ => audit_witness_submission(rest),
    }
}

fn audit_witness_submission(body: &[u8]) {
    let Ok(request) = crate::witness::Request::parse(body) else {
        return;
    };
    let mut text = format!("old {}\n", request.old);
    for hash in &request.proof {
        text.push_str(&STANDARD.encode(hash));
        text.push('\n');
    }
    text.push('\n');
    text.push_str(request.note);
    assert_eq!(
        crate::witness::Request::parse(text.as_bytes()).as_ref(),
        Ok(&request),
        "{body:?} does not re-encode to itself"
    );
    let Ok(checkpoint) = crate::audit::checkpoint::ForeignCheckpoint::parse(request.note) else {
        return;
    };
    assert!(request.note.starts_with(&checkpoint.body), "{body:?}");
    let mut lines = checkpoint.body.split('\n');
    assert_eq!(lines.next(), Some(checkpoint.origin.as_str()), "{body:?}");
    assert_eq!(
        lines.next(),
        Some(checkpoint.size.to_string().as_str()),
        "{body:?}"
    );
    assert_eq!(
        lines.next(),
        Some(STANDARD.encode(checkpoint.root).as_str()),
        "{body:?}"
    );
}

// ---------------------------------------------------------------------------
// requestState
// ---------------------------------------------------------------------------

/// Seed of the server key whose derived secret seals the fixture's states.
pub const FUZZ_SERVER_SEED: [u8; 32] = [0x3b; 32];

fn request_state_codec() -> &'static rmcp::model::RequestStateCodec {
    static CODEC: OnceLock<rmcp::model::RequestStateCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        crate::app::request_state_codec(&KeyPair::from_seed(&FUZZ_SERVER_SEED))
            .expect("fixture: the request-state key derives")
    })
}

/// Input: one selector byte, then
/// - even: a `requestState` a client sent back, opened as `call_tool` does
///   for the tool `terminal.execute`;
/// - odd: lease id, NUL, tool name, NUL, one position byte: sealed here,
///   opened, then opened again with the byte at that position changed.
///
/// Properties: a state opens only in the exact form the server sealed
/// (re-encoding what it opened gives back the input); a sealed state opens
/// to the held call it was sealed for, for that tool only; a state with any
/// byte changed does not open.
pub fn request_state(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let codec = request_state_codec();
    if selector & 1 == 0 {
        let Ok(state) = std::str::from_utf8(rest) else {
            return;
        };
        if crate::server::open_request_state(codec, state, "terminal.execute").is_none() {
            return;
        }
        let parts: Vec<&str> = state.split('.').collect();
        let canonical = match parts.as_slice() {
            ["rs1", body, tag] => URL_SAFE_NO_PAD
                .decode(body)
                .ok()
                .zip(URL_SAFE_NO_PAD.decode(tag).ok())
                .map(|(b, t)| {
                    format!(
                        "rs1.{}.{}",
                        URL_SAFE_NO_PAD.encode(b),
                        URL_SAFE_NO_PAD.encode(t)
                    )
                }),
            _ => None,
        };
        assert_eq!(
            canonical.as_deref(),
            Some(state),
            "{state:?} opened but is not in the form the server seals"
        );
        return;
    }
    let mut fields = rest.splitn(3, |b| *b == 0);
    let (Some(lease), Some(tool)) = (fields.next(), fields.next()) else {
        return;
    };
    let position = fields.next().and_then(|p| p.first()).copied().unwrap_or(0);
    let (lease, tool) = (
        String::from_utf8_lossy(lease),
        String::from_utf8_lossy(tool),
    );
    let Some(state) = crate::server::seal_request_state(
        codec,
        &lease,
        &tool,
        std::time::Duration::from_secs(3600),
    ) else {
        return;
    };
    assert_eq!(
        crate::server::open_request_state(codec, &state, &tool).as_deref(),
        Some(lease.as_ref()),
        "a sealed state does not open to its lease"
    );
    let other = format!("{tool}x");
    assert!(
        crate::server::open_request_state(codec, &state, &other).is_none(),
        "a state for `{tool}` opens for `{other}`"
    );
    let mut bytes = state.clone().into_bytes();
    let at = usize::from(position) % bytes.len();
    let replacement = if bytes[at] == b'A' { b'B' } else { b'A' };
    bytes[at] = replacement;
    let tampered = String::from_utf8_lossy(&bytes);
    assert!(
        crate::server::open_request_state(codec, &tampered, &tool).is_none(),
        "{state:?} with byte {at} changed still opens: {tampered:?}"
    );
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Input: a TOML file's text, then optionally NUL and `NAME=VALUE` lines
/// for the environment.
///
/// Properties: loading returns errors, never panics; a configuration that
/// loads has the invariants its validation promises.
pub fn config(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("dualtrust-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fixture: config dir");
        dir
    });
    let (toml, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let file = dir.join("fuzz.toml");
    if std::fs::write(&file, toml).is_err() {
        return;
    }
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Ok(config) = crate::config::Config::load(dir, Some(&file), env) else {
        return;
    };
    let t = &config.terminal;
    assert!(t.default_timeout_ms <= t.max_timeout_ms, "{config:?}");
    assert!(
        t.default_timeout_ms > 0 && t.output_cap_bytes > 0,
        "{config:?}"
    );
    assert!(!t.roots.is_empty(), "{config:?}");
    assert!(t.path.iter().all(|p| p.is_absolute()), "{config:?}");
    assert!(
        config.mode != Mode::Production || t.disable_layers.is_empty(),
        "{config:?}"
    );
    assert!(config.database.row_cap > 0, "{config:?}");
    assert!(!config.identity.audience.trim().is_empty(), "{config:?}");
    assert!(!config.identity.issuer.trim().is_empty(), "{config:?}");
    assert!(
        !config.http.allowed_origins.iter().any(|o| o.trim() == "*"),
        "{config:?}"
    );
    assert!(
        config.passport.default_ttl_s <= config.passport.max_ttl_s,
        "{config:?}"
    );
}

// ---------------------------------------------------------------------------
// JSON-RPC: the screen both transports run before rmcp
// ---------------------------------------------------------------------------

/// Input: one client message, as a stdio line or an HTTP body. Property:
/// what the screen lets through, rmcp parses as a client message (so it is
/// never dropped unanswered); what it refuses gets a JSON-RPC error with one
/// of the four codes, a short fixed message, and an id that is null or the
/// request's own string or number id.
pub fn jsonrpc(data: &[u8]) {
    use crate::transport::jsonrpc::{
        INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, screen,
    };
    let unprefixed = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    match screen(data) {
        Ok(()) => {
            assert!(
                serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(unprefixed).is_ok(),
                "let through what rmcp cannot parse"
            );
        }
        Err(rejected) => {
            assert!(
                [
                    PARSE_ERROR,
                    INVALID_REQUEST,
                    METHOD_NOT_FOUND,
                    INVALID_PARAMS
                ]
                .contains(&rejected.code)
            );
            assert!(rejected.message.len() <= 200, "{}", rejected.message);
            assert!(!rejected.notification || rejected.code == INVALID_PARAMS);
            let response = rejected.response();
            assert_eq!(response["jsonrpc"], "2.0");
            let id = &response["id"];
            assert!(id.is_null() || id.is_string() || id.is_number());
            if !id.is_null() {
                let sent: serde_json::Value =
                    serde_json::from_slice(unprefixed).expect("an id came from valid JSON");
                assert_eq!(&sent["id"], id, "the id is the request's own");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_follows_links_and_parents() {
        let f = terminal_fixture();
        let inside = |p: &str| landing(&f.root, p).is_some_and(|l| l.starts_with(&f.root));
        assert!(inside("notes.txt"));
        assert!(inside("sub/up/notes.txt"));
        assert!(inside("missing/../notes.txt"));
        assert!(!inside("etc-link/passwd"));
        assert!(!inside("sub/escape"));
        assert!(!inside("dangling"));
        assert!(!inside("missing/../../x"));
        assert!(!inside("/etc"));
        assert_eq!(path_readings("--file=/etc/x", false), vec!["/etc/x"]);
        assert_eq!(path_readings("-é/x", false), vec!["/x"]);
        assert_eq!(path_readings("-é/x", true), vec!["-é/x"]);
        assert_eq!(path_readings("if=a", false), vec!["if=a", "a"]);
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn every_target_takes_its_seeds() {
        terminal(b"\0ls\0-la");
        sql(b"\x01SELECT 1");
        token(b"\x01not.a.token");
        for (_, seed) in audit_seeds() {
            audit(&seed);
        }
        request_state(b"\x01lease\0terminal.execute\0\x05");
        config(b"[database]\nrow_cap = 3\n");
        for (_, seed) in webauthn_seeds() {
            webauthn(&seed);
        }
    }

    /// The `webauthn` seeds are ceremonies the server accepts, so the
    /// fuzzer starts inside the checks rather than at their first refusal.
    #[test]
    fn the_webauthn_seeds_verify() {
        let fixture = webauthn_fixture();
        let seeds = webauthn_seeds();
        let parts = |name: &str| -> Vec<Vec<u8>> {
            let (_, seed) = seeds.iter().find(|(n, _)| n == name).expect("seed");
            length_prefixed(&seed[1..]).map(<[u8]>::to_vec).collect()
        };
        let registration = parts("registration");
        let response = crate::webauthn::RegistrationResponse {
            client_data_json: URL_SAFE_NO_PAD.encode(&registration[0]),
            attestation_object: URL_SAFE_NO_PAD.encode(&registration[1]),
        };
        crate::webauthn::verify_registration(&fixture.rp, &WEBAUTHN_CHALLENGE, &response)
            .expect("the registration seed verifies");
        let assertion = parts("assertion");
        let assertion = crate::webauthn::Assertion {
            credential_id: fixture.device.credential_id_b64(),
            client_data_json: URL_SAFE_NO_PAD.encode(&assertion[0]),
            authenticator_data: URL_SAFE_NO_PAD.encode(&assertion[1]),
            signature: URL_SAFE_NO_PAD.encode(&assertion[2]),
        };
        assert_eq!(
            assertion.verify(&fixture.rp, &fixture.key, WEBAUTHN_STATEMENT),
            Ok(1)
        );
    }

    /// Writes the seeds that need the fixtures' keys into `fuzz/corpus/`:
    /// `cargo test --lib fuzzing -- --ignored write_signed_seeds`.
    #[test]
    #[ignore = "writes files under fuzz/corpus"]
    fn write_signed_seeds() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = corpus.join(target);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write");
        };
        for (name, bytes) in audit_seeds() {
            write("audit", &name, &bytes);
        }
        for (name, bytes) in webauthn_seeds() {
            write("webauthn", &name, &bytes);
        }
        let f = token_fixture();
        let far = 4_102_444_800u64;
        let claims = serde_json::json!({
            "iss": f.config.issuer, "aud": f.config.audience, "sub": "alice",
            "scope": "db:read audit:read", "iat": 1_700_000_000u64, "exp": far, "jti": "fuzz"
        });
        let eddsa = f.issuer.sign_jws("JWT", &claims).expect("sign");
        let hs = sign_token(
            f,
            br#"{"alg":"HS256","typ":"JWT"}"#,
            claims.to_string().as_bytes(),
            true,
        );
        write(
            "token",
            "eddsa",
            [&[1u8][..], eddsa.as_bytes()].concat().as_slice(),
        );
        write(
            "token",
            "hs256",
            [&[1u8][..], hs.as_bytes()].concat().as_slice(),
        );
        write("token", "header", format!("\0Bearer {eddsa}").as_bytes());
        write(
            "token",
            "two-headers",
            format!("\0Bearer {eddsa}\nBearer garbage").as_bytes(),
        );
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, f.issuer.kid());
        write(
            "token",
            "claims",
            [
                &[2u8][..],
                header.as_bytes(),
                &[0],
                claims.to_string().as_bytes(),
            ]
            .concat()
            .as_slice(),
        );
        write(
            "token",
            "claims-hs256",
            [
                &[6u8][..],
                br#"{"alg":"HS256"}"#,
                &[0],
                claims.to_string().as_bytes(),
            ]
            .concat()
            .as_slice(),
        );
        let codec = request_state_codec();
        let century = std::time::Duration::from_secs(100 * 365 * 86_400);
        let state =
            crate::server::seal_request_state(codec, "lease-1", "terminal.execute", century)
                .expect("seal");
        write(
            "request_state",
            "sealed",
            [&[0u8][..], state.as_bytes()].concat().as_slice(),
        );
    }
}

/// A software WebAuthn authenticator, for tests and fuzz seeds: it makes
/// the registration and assertion bytes a browser hands back, signed with
/// a fresh ES256 or EdDSA key, and each public field turns one property a
/// relying party must check into something a test can get wrong.
#[derive(Clone)]
pub struct SoftAuthenticator {
    signer: SoftSigner,
    credential_id: Vec<u8>,
    /// The page origin the client data names.
    pub origin: String,
    /// The RP id whose hash the authenticator data carries.
    pub rp_id: String,
    pub user_verified: bool,
    pub cross_origin: bool,
    /// The client data `type` of assertions.
    pub ceremony: &'static str,
    /// The signature counter; each assertion adds one first.
    pub counter: u32,
}

#[derive(Clone)]
enum SoftSigner {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

impl SoftAuthenticator {
    pub fn new(alg: i64, origin: &str, rp_id: &str) -> Self {
        let mut seed = [0u8; 32];
        let mut credential_id = [0u8; 16];
        getrandom::getrandom(&mut seed).expect("randomness");
        getrandom::getrandom(&mut credential_id).expect("randomness");
        Self::from_seed(alg, seed, &credential_id, origin, rp_id)
    }

    /// The same authenticator every time, for fixtures and seeds.
    pub fn from_seed(
        alg: i64,
        seed: [u8; 32],
        credential_id: &[u8],
        origin: &str,
        rp_id: &str,
    ) -> Self {
        let credential_id = credential_id.to_vec();
        let signer = match alg {
            crate::webauthn::ES256 => {
                SoftSigner::Es256(p256::ecdsa::SigningKey::from_slice(&seed).expect("scalar"))
            }
            _ => SoftSigner::EdDsa(ed25519_dalek::SigningKey::from_bytes(&seed)),
        };
        Self {
            signer,
            credential_id,
            origin: origin.into(),
            rp_id: rp_id.into(),
            user_verified: true,
            cross_origin: false,
            ceremony: "webauthn.get",
            counter: 0,
        }
    }

    /// The same key under another credential id.
    pub fn with_credential_id(mut self, id: &[u8]) -> Self {
        self.credential_id = id.to_vec();
        self
    }

    pub fn credential_id(&self) -> Vec<u8> {
        self.credential_id.clone()
    }

    pub fn credential_id_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.credential_id)
    }

    /// The COSE_Key of the public key, as a registration carries it.
    pub fn cose_key(&self) -> Vec<u8> {
        use coset::CborSerializable;
        use coset::iana;
        let key = match &self.signer {
            SoftSigner::Es256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                coset::CoseKeyBuilder::new_ec2_pub_key(
                    iana::EllipticCurve::P_256,
                    point.x().expect("x").to_vec(),
                    point.y().expect("y").to_vec(),
                )
                .algorithm(iana::Algorithm::ES256)
                .build()
            }
            SoftSigner::EdDsa(key) => coset::CoseKeyBuilder::new_okp_key()
                .param(
                    iana::OkpKeyParameter::Crv as i64,
                    coset::cbor::value::Value::from(iana::EllipticCurve::Ed25519 as i64),
                )
                .param(
                    iana::OkpKeyParameter::X as i64,
                    coset::cbor::value::Value::Bytes(key.verifying_key().to_bytes().to_vec()),
                )
                .algorithm(iana::Algorithm::EdDSA)
                .build(),
        };
        key.to_vec().expect("COSE encoding")
    }

    pub fn key(&self) -> crate::webauthn::CredentialKey {
        crate::webauthn::CredentialKey::from_cose(&self.cose_key()).expect("own key")
    }

    fn flags(&self) -> u8 {
        0x01 | if self.user_verified { 0x04 } else { 0 }
    }

    fn client_data(&self, kind: &str, challenge: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": kind,
            "challenge": URL_SAFE_NO_PAD.encode(challenge),
            "origin": self.origin,
            "crossOrigin": self.cross_origin,
        }))
        .expect("json")
    }

    /// `navigator.credentials.create()` for `challenge`, attestation `none`.
    pub fn register(&mut self, challenge: &[u8]) -> crate::webauthn::RegistrationResponse {
        use coset::cbor::value::Value;
        let mut auth_data = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        auth_data.push(self.flags() | 0x40);
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        auth_data.extend_from_slice(&[0u8; 16]);
        auth_data.extend_from_slice(&(self.credential_id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&self.credential_id);
        auth_data.extend_from_slice(&self.cose_key());
        let object = Value::Map(vec![
            (Value::Text("fmt".into()), Value::Text("none".into())),
            (Value::Text("attStmt".into()), Value::Map(Vec::new())),
            (Value::Text("authData".into()), Value::Bytes(auth_data)),
        ]);
        let mut attestation = Vec::new();
        coset::cbor::ser::into_writer(&object, &mut attestation).expect("cbor");
        crate::webauthn::RegistrationResponse {
            client_data_json: URL_SAFE_NO_PAD
                .encode(self.client_data("webauthn.create", challenge)),
            attestation_object: URL_SAFE_NO_PAD.encode(attestation),
        }
    }

    /// `navigator.credentials.get()` with the challenge derived from
    /// `statement`, as the inbox asks for it.
    pub fn assert(&mut self, statement: &str) -> crate::webauthn::Assertion {
        self.counter += 1;
        let client_data = self.client_data(
            self.ceremony,
            &crate::webauthn::statement_challenge(statement),
        );
        let mut auth_data = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        auth_data.push(self.flags());
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let signature = match &self.signer {
            SoftSigner::Es256(key) => {
                use p256::ecdsa::signature::Signer;
                let signature: p256::ecdsa::Signature = key.sign(&signed);
                signature.to_der().as_bytes().to_vec()
            }
            SoftSigner::EdDsa(key) => {
                use ed25519_dalek::Signer;
                key.sign(&signed).to_bytes().to_vec()
            }
        };
        crate::webauthn::Assertion {
            credential_id: self.credential_id_b64(),
            authenticator_data: URL_SAFE_NO_PAD.encode(auth_data),
            client_data_json: URL_SAFE_NO_PAD.encode(client_data),
            signature: URL_SAFE_NO_PAD.encode(signature),
        }
    }
}
