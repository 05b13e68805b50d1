//! The launcher every `terminal.execute` command runs through.
//!
//! The server spawns `dualtrust sandbox-exec … -- PROGRAM ARGS…` with the
//! scrubbed environment, working directory and process group already set.
//! The launcher applies resource limits (CPU seconds, address space, file
//! size, open files, no core dumps), `PR_SET_NO_NEW_PRIVS`, and a Landlock
//! ruleset (read anywhere, write only beneath the roots and to `/dev/null`)
//! to itself, then `exec`s the program, which inherits them all: they are in
//! force before the program's first instruction, with no `unsafe` `pre_exec`
//! hook. Where the kernel lacks Landlock the ruleset is not enforced; the
//! server probes this at start-up and reports it in `/readyz` and its logs.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use nix::sys::resource::{Resource, setrlimit};

/// The newest Landlock ABI we ask for; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V5;

/// How far the kernel enforced the filesystem ruleset.
pub fn landlock_status_name(status: RulesetStatus) -> &'static str {
    match status {
        RulesetStatus::FullyEnforced => "fully_enforced",
        RulesetStatus::PartiallyEnforced => "partially_enforced",
        RulesetStatus::NotEnforced => "not_enforced",
    }
}

/// Restricts this process: reads anywhere, writes only beneath `roots`
/// (and `/dev/null`).
pub fn restrict_writes(
    roots: &[impl AsRef<Path>],
) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi = LANDLOCK_ABI;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(["/dev/null"], AccessFs::from_all(abi)))?
        .add_rules(path_beneath_rules(roots, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(status.ruleset)
}

/// Per-command resource limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cpu_s: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub open_files: u64,
}

impl Limits {
    /// The launcher's flags for these limits.
    pub fn to_args(self) -> Vec<String> {
        vec![
            format!("--cpu-s={}", self.cpu_s),
            format!("--memory-bytes={}", self.memory_bytes),
            format!("--file-bytes={}", self.file_bytes),
            format!("--open-files={}", self.open_files),
        ]
    }
}

/// Applies `limits` and no-new-privileges to this process and replaces it
/// with `program`. Returns only if something failed; the caller exits.
pub fn exec(
    limits: Limits,
    write_roots: &[std::path::PathBuf],
    program: &Path,
    argv0: &str,
    args: &[OsString],
) -> std::io::Error {
    let applied = setrlimit(Resource::RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1)
        .and_then(|()| {
            setrlimit(
                Resource::RLIMIT_AS,
                limits.memory_bytes,
                limits.memory_bytes,
            )
        })
        .and_then(|()| setrlimit(Resource::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes))
        .and_then(|()| {
            setrlimit(
                Resource::RLIMIT_NOFILE,
                limits.open_files,
                limits.open_files,
            )
        })
        .and_then(|()| setrlimit(Resource::RLIMIT_CORE, 0, 0))
        .and_then(|()| nix::sys::prctl::set_no_new_privs());
    if let Err(errno) = applied {
        return std::io::Error::from_raw_os_error(errno as i32);
    }
    if let Err(e) = restrict_writes(write_roots) {
        return std::io::Error::other(e.to_string());
    }
    std::process::Command::new(program)
        .arg0(argv0)
        .args(args)
        .exec()
}
