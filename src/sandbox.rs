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
//! Where the host offers a pids cgroup, each command gets its own, capped
//! with `pids.max`, which the launcher joins before anything else (see
//! [`PidsCgroups`]).

/// Per-command pids cgroups (cgroup v1 `pids` hierarchy or a cgroup v2
/// directory with the `pids` controller), under one directory per server.
#[derive(Debug)]
pub struct PidsCgroups {
    base: std::path::PathBuf,
}

impl PidsCgroups {
    /// Creates this server's directory, or says why it cannot.
    pub fn detect() -> Result<Self, String> {
        let candidates = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"];
        let root = candidates
            .iter()
            .map(Path::new)
            .find(|p| {
                p.join("cgroup.procs").exists() && (p.ends_with("pids") || has_pids_controller(p))
            })
            .ok_or_else(|| "no pids cgroup hierarchy on this host".to_string())?;
        remove_stale(root);
        let base = root.join(format!("dualtrust-{}", std::process::id()));
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        if !base.join("pids.max").exists() {
            let _ = std::fs::remove_dir(&base);
            return Err("the pids controller is not enabled for dualtrust's cgroup".into());
        }
        Ok(Self { base })
    }

    /// A fresh cgroup for one command, allowing at most `max` processes.
    pub fn create(&self, id: &str, max: u64) -> std::io::Result<std::path::PathBuf> {
        let dir = self.base.join(id);
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("pids.max"), format!("{max}\n"))?;
        Ok(dir)
    }

    /// Kills whatever is left in a command's cgroup and removes it.
    pub fn destroy(dir: &Path) {
        for _ in 0..100 {
            let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() && std::fs::remove_dir(dir).is_ok() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!(cgroup = %dir.display(), "a command's cgroup could not be emptied");
    }
}

impl Drop for PidsCgroups {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Removes the (empty) directories of dualtrust servers that are gone.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("dualtrust-")) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten() {
                if child.path().is_dir() {
                    PidsCgroups::destroy(&child.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn has_pids_controller(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|c| c.split_whitespace().any(|w| w == "pids"))
        .unwrap_or(false)
}

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
    cgroup: Option<&Path>,
    program: &Path,
    argv0: &str,
    args: &[OsString],
) -> std::io::Error {
    // Join the command's pids cgroup first: everything it forks is counted
    // (and later killed) there. Failing to join fails the command.
    if let Some(dir) = cgroup
        && let Err(e) = std::fs::write(
            dir.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
    {
        return e;
    }
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
