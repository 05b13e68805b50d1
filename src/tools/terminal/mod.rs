//! `terminal.execute`: a program run from an argv vector, never through a
//! shell unless policy grants one.
//!
//! Programs come from an allow-list resolved once, at start-up, in the
//! configured program directories (never the caller's or the server's
//! `PATH`). A program named by path must resolve to the same file as the
//! allow-listed one. Each call is classified on its parsed argv: wrappers
//! (`env`, `sudo`, `xargs`, …) are refused, shells are refused or — when
//! policy allows them — destructive, known-dangerous flags are refused, and
//! destructive programs (`rm`, `dd`, `mkfs`, `kill`, …) are held for quorum.
//! A name the rules do not know is not allowed.
//!
//! The child gets an environment built from scratch, a working directory
//! confined to the configured roots (after resolving symlinks and `..`), its
//! own process group (killed whole on timeout and after exit, so background
//! children do not survive the call), closed stdin, and capped output.

mod rules;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::TerminalConfig;
use crate::gate::rate::{SharedSlots, SlotAnswer};
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};

const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 16 * 1024;
/// How long output readers may run after the process group was killed.
const READER_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalArgs {
    /// Program and arguments, e.g. `["git", "status"]`. No shell parses them.
    pub argv: Vec<String>,
    /// Working directory, inside one of the configured roots (default: the first root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Wall-clock limit in milliseconds (capped by policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

struct Program {
    path: PathBuf,
    canonical: PathBuf,
    /// What the kernel lets a call of this program execute: itself, its
    /// loader or interpreter, and the helpers policy grants it.
    execute: Vec<PathBuf>,
}

/// What every command may read besides the roots: the system's programs and
/// libraries, the loader's cache, time zones, the user and group names.
/// Nothing under `/root`, `/home`, `/var`, `/run`, `/proc` or the rest of
/// `/etc` exists for a command.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/alternatives",
];

pub struct Terminal {
    config: TerminalConfig,
    programs: HashMap<String, Program>,
    roots: Vec<PathBuf>,
    child_path: String,
    /// `dualtrust sandbox-exec`: this very binary.
    launcher: PathBuf,
    /// The read set of every command, resolved once.
    read_only: Vec<PathBuf>,
    /// The sandbox layers every command runs under.
    layers: Vec<Layer>,
    /// Layers not in force, and why.
    missing: Vec<(Layer, String)>,
    /// Whether commands are refused while a layer is missing.
    require_sandbox: bool,
    /// Per-command process limits, or why the host has none.
    cgroups: Result<crate::sandbox::PidsCgroups, String>,
    running: std::sync::Mutex<HashMap<String, usize>>,
    /// The same cap kept for every replica, when the limits are shared.
    shared_slots: Option<Arc<SharedSlots>>,
}

/// A slot of the shared cap; given back when the command ends (or its
/// call is dropped), else it lapses by itself.
struct SharedSlot {
    slots: Arc<SharedSlots>,
    subject: String,
    id: String,
}

impl SharedSlot {
    async fn release(mut self) {
        let id = std::mem::take(&mut self.id);
        self.slots.release(&self.subject, &id).await;
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let (slots, subject, id) = (
            self.slots.clone(),
            std::mem::take(&mut self.subject),
            std::mem::take(&mut self.id),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { slots.release(&subject, &id).await });
        }
    }
}

/// One running command of a subject; releases its slot when dropped.
struct Slot<'a> {
    running: &'a std::sync::Mutex<HashMap<String, usize>>,
    subject: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock()
            && let Some(n) = running.get_mut(&self.subject)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.subject);
            }
        }
    }
}

/// Configuration a repository cannot override from the command line side:
/// no hooks, no fsmonitor, no pager, no prompts, no remote protocols. What
/// its own config names (filters, textconv drivers, an external diff) the
/// kernel refuses to execute.
const GIT_SAFETY: &[&str] = &[
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.pager=cat",
    "-c",
    "core.sshCommand=false",
    "-c",
    "protocol.allow=never",
];

use crate::sandbox::{Layer, is_executable_file};
pub use rules::NO_PATH_PROGRAMS;
use rules::{SHELLS, Verdict, WRAPPERS, judge, shell_words};

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

impl Terminal {
    /// Resolves the allow-list in the configured program directories,
    /// creates the roots and asks the kernel which sandbox layers it offers.
    pub fn new(config: TerminalConfig, mode: crate::config::Mode) -> std::io::Result<Self> {
        let mut roots = Vec::new();
        for root in &config.roots {
            std::fs::create_dir_all(root)?;
            roots.push(std::fs::canonicalize(root)?);
        }
        let mut names: Vec<&str> = config.allow.iter().map(String::as_str).collect();
        if config.allow_shell {
            names.extend(SHELLS);
        }
        let mut found: Vec<(String, PathBuf, PathBuf)> = Vec::new();
        for name in names {
            if name.contains('/') {
                continue;
            }
            let path = config
                .path
                .iter()
                .map(|dir| dir.join(name))
                .find(|p| is_executable_file(p));
            if let Some(path) = path {
                let canonical = std::fs::canonicalize(&path)?;
                found.push((name.to_string(), path, canonical));
            }
        }
        let runnable = |canonical: &Path| {
            let mut files = vec![canonical.to_path_buf()];
            files.extend(crate::sandbox::interpreters(canonical));
            files
        };
        let by_name: HashMap<&str, &PathBuf> =
            found.iter().map(|(n, _, c)| (n.as_str(), c)).collect();
        // An approved shell may run any allow-listed program.
        let everything: Vec<PathBuf> = found.iter().flat_map(|(_, _, c)| runnable(c)).collect();
        let mut programs = HashMap::new();
        for (name, path, canonical) in &found {
            let mut execute = if SHELLS.contains(&name.as_str()) {
                everything.clone()
            } else {
                runnable(canonical)
            };
            for helper in config.helpers.get(name).into_iter().flatten() {
                let resolved = match by_name.get(helper.as_str()) {
                    Some(c) => Some((*c).clone()),
                    None if helper.starts_with('/') => std::fs::canonicalize(helper).ok(),
                    None => None,
                };
                match resolved {
                    Some(c) => execute.extend(runnable(&c)),
                    None => {
                        tracing::warn!(program = %name, %helper, "terminal.helpers names a program that was not found")
                    }
                }
            }
            if name == "git"
                && let Some(dir) = git_exec_path(canonical)
            {
                execute.push(dir);
            }
            execute.sort();
            execute.dedup();
            programs.insert(
                name.clone(),
                Program {
                    path: path.clone(),
                    canonical: canonical.clone(),
                    execute,
                },
            );
        }
        let child_path = config
            .path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut read_only: Vec<PathBuf> = SYSTEM_READ
            .iter()
            .map(PathBuf::from)
            .chain(config.path.iter().cloned())
            .chain(config.read_paths.iter().cloned())
            .chain(
                programs
                    .values()
                    .flat_map(|p| p.execute.iter())
                    .filter_map(|c| c.parent().map(Path::to_path_buf)),
            )
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .collect();
        read_only.sort();
        read_only.dedup();
        let launcher = std::env::current_exe()?;
        let disabled: Vec<Layer> = config
            .disable_layers
            .iter()
            .filter_map(|n| Layer::from_name(n))
            .collect();
        let mut layers = Vec::new();
        let mut missing = Vec::new();
        for (layer, offered) in probe_sandbox(&launcher) {
            match offered {
                Err(why) => missing.push((layer, why)),
                Ok(()) if disabled.contains(&layer) => {
                    missing.push((layer, "switched off by terminal.disable_layers".into()))
                }
                Ok(()) => layers.push(layer),
            }
        }
        layers.sort();
        missing.sort();
        let require_sandbox = config.sandbox_required(mode);
        if missing.is_empty() {
            tracing::info!(layers = ?layers.iter().map(|l| l.name()).collect::<Vec<_>>(), "terminal sandbox: every layer enforced");
        }
        for (layer, why) in &missing {
            tracing::warn!(
                layer = layer.name(),
                %why,
                lost = layer.guarantee(),
                refused = require_sandbox,
                "terminal sandbox: a layer is NOT enforced; commands {}",
                if require_sandbox { "are refused (terminal.require_sandbox)" } else { "run without its guarantee" }
            );
        }
        let cgroups = crate::sandbox::PidsCgroups::detect();
        match &cgroups {
            Ok(_) => tracing::info!(
                max = config.max_processes,
                "terminal sandbox: per-command pids cgroups"
            ),
            Err(why) => {
                tracing::warn!(%why, "terminal sandbox: no per-command process limit; a process storm is bounded only by the timeout")
            }
        }
        Ok(Self {
            config,
            programs,
            roots,
            child_path,
            launcher,
            read_only,
            layers,
            missing,
            require_sandbox,
            cgroups,
            running: std::sync::Mutex::new(HashMap::new()),
            shared_slots: None,
        })
    }

    /// `fully_enforced`, or `missing: LAYER, …`.
    pub fn sandbox_status(&self) -> String {
        if self.missing.is_empty() {
            "fully_enforced".into()
        } else {
            let names: Vec<&str> = self.missing.iter().map(|(l, _)| l.name()).collect();
            format!("missing: {}", names.join(", "))
        }
    }

    /// Each layer not in force: its name, the guarantee lost and why.
    pub fn sandbox_missing(&self) -> serde_json::Value {
        self.missing
            .iter()
            .map(|(layer, why)| {
                json!({ "layer": layer.name(), "guarantee": layer.guarantee(), "why": why })
            })
            .collect()
    }

    /// `pids_cgroup` when each command gets a process limit, else why not.
    pub fn process_limit_status(&self) -> String {
        match &self.cgroups {
            Ok(_) => "pids_cgroup".into(),
            Err(why) => format!("unavailable: {why}"),
        }
    }

    fn resolve_program(&self, argv0: &str) -> Result<(&str, &Program), Refusal> {
        let name = Path::new(argv0)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| refuse("program_not_allowed", "the program name is empty"))?;
        let (name, program) = self
            .programs
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| {
                if WRAPPERS.contains(&name) {
                    refuse(
                        "wrapper_not_allowed",
                        format!("`{name}` runs another program and is not allowed; call the program directly"),
                    )
                } else if SHELLS.contains(&name) && !self.config.allow_shell {
                    refuse(
                        "shell_not_allowed",
                        format!("`{name}` is a shell or interpreter; policy does not allow shells"),
                    )
                } else {
                    refuse("program_not_allowed", format!("`{name}` is not on the allow-list"))
                }
            })?;
        if argv0.contains('/') {
            let same = std::fs::canonicalize(argv0)
                .map(|c| c == program.canonical)
                .unwrap_or(false);
            if !same {
                return Err(refuse(
                    "program_not_allowed",
                    format!("`{argv0}` is not the allow-listed `{name}`"),
                ));
            }
        }
        Ok((name, program))
    }

    fn resolve_cwd(&self, cwd: Option<&str>) -> Result<PathBuf, Refusal> {
        let first = self
            .roots
            .first()
            .ok_or_else(|| refuse("cwd_not_allowed", "no working root is configured"))?;
        let Some(requested) = cwd else {
            return Ok(first.clone());
        };
        if requested.contains('\0') {
            return Err(refuse(
                "cwd_not_allowed",
                "the working directory contains a NUL byte",
            ));
        }
        let joined = first.join(requested);
        let canonical = std::fs::canonicalize(&joined)
            .map_err(|_| refuse("cwd_not_allowed", "the working directory does not exist"))?;
        if !canonical.is_dir() {
            return Err(refuse(
                "cwd_not_allowed",
                "the working directory is not a directory",
            ));
        }
        if !self.roots.iter().any(|root| canonical.starts_with(root)) {
            return Err(refuse(
                "cwd_not_allowed",
                "the working directory is outside the allowed roots",
            ));
        }
        Ok(canonical)
    }

    /// With shared limits, the subject's cap across every replica.
    async fn take_shared_slot(&self, subject: &str) -> Result<Option<SharedSlot>, Refusal> {
        let Some(slots) = &self.shared_slots else {
            return Ok(None);
        };
        let max = self.config.max_concurrent_per_subject;
        match slots.take(subject, max).await {
            SlotAnswer::Taken(id) => Ok(Some(SharedSlot {
                slots: slots.clone(),
                subject: subject.to_string(),
                id,
            })),
            SlotAnswer::Local => Ok(None),
            SlotAnswer::Full => Err(refuse(
                "too_many_concurrent",
                format!(
                    "at most {max} commands may run at once for one subject, across every replica"
                ),
            )),
            SlotAnswer::Unavailable => Err(refuse(
                "limits_unavailable",
                "the shared limits cannot be read now; retry shortly",
            )),
        }
    }

    /// Keeps the per-subject concurrency cap in the shared limits backend.
    pub fn with_shared_slots(mut self, slots: Option<SharedSlots>) -> Self {
        self.shared_slots = slots.map(Arc::new);
        self
    }

    fn take_slot(&self, subject: &str) -> Result<Slot<'_>, Refusal> {
        let mut running = self
            .running
            .lock()
            .map_err(|_| refuse("internal", "the execution table is unavailable"))?;
        let n = running.entry(subject.to_string()).or_insert(0);
        if *n >= self.config.max_concurrent_per_subject {
            return Err(refuse(
                "too_many_concurrent",
                format!(
                    "at most {} commands may run at once for one subject",
                    self.config.max_concurrent_per_subject
                ),
            ));
        }
        *n += 1;
        Ok(Slot {
            running: &self.running,
            subject: subject.to_string(),
        })
    }

    /// Every path argument of an ordinary command must resolve inside the
    /// roots (symlinks and `..` resolved). The kernel holds the same line;
    /// this answers early, with the path named.
    fn confine_paths(&self, name: &str, args: &[String], cwd: &Path) -> Result<(), Refusal> {
        for path in rules::path_arguments(name, args) {
            if !self.inside_roots(&cwd.join(path)) {
                return Err(refuse(
                    "path_outside_roots",
                    format!("`{path}` is outside the allowed roots"),
                ));
            }
        }
        Ok(())
    }

    /// What a destructive command would act on, resolved, for the
    /// approvers: each target, marked where it lies outside the roots.
    fn targets(&self, name: &str, args: &[String], cwd: &Path) -> Vec<String> {
        rules::path_arguments(name, args)
            .into_iter()
            .take(16)
            .map(|path| {
                let joined = cwd.join(path);
                let shown = std::fs::canonicalize(&joined).unwrap_or(joined);
                if self.inside_roots(&shown) {
                    shown.display().to_string()
                } else {
                    format!(
                        "{} (OUTSIDE the roots: the sandbox refuses any change there)",
                        shown.display()
                    )
                }
            })
            .collect()
    }

    /// Resolves the longest existing ancestor of `path` (symlinks and all)
    /// and checks the result, plus the not-yet-existing rest, is in a root.
    /// A dangling symlink exists: writing through it creates its target,
    /// which cannot be resolved here, so it is outside.
    fn inside_roots(&self, path: &Path) -> bool {
        // Rebuilt from its components, so a trailing `/` does not make the
        // lookup below follow a dangling link and miss it.
        let mut existing: PathBuf = path.components().collect();
        let mut rest = Vec::new();
        while std::fs::symlink_metadata(&existing).is_err() {
            match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => return false,
            }
        }
        let Ok(mut resolved) = std::fs::canonicalize(&existing) else {
            return false;
        };
        for part in rest.iter().rev() {
            if part == ".." || part == "." {
                return false;
            }
            resolved.push(part);
        }
        self.roots.iter().any(|root| resolved.starts_with(root))
    }

    fn timeout(&self, requested: Option<u64>) -> Result<Duration, Refusal> {
        let ms = requested.unwrap_or(self.config.default_timeout_ms);
        if ms == 0 || ms > self.config.max_timeout_ms {
            return Err(refuse(
                "invalid_timeout",
                format!(
                    "timeout_ms must be between 1 and {}",
                    self.config.max_timeout_ms
                ),
            ));
        }
        Ok(Duration::from_millis(ms))
    }
}

/// Asks the launcher, in a throwaway process, which layers this kernel
/// offers; a layer the probe cannot speak for is missing.
fn probe_sandbox(launcher: &Path) -> Vec<(Layer, Result<(), String>)> {
    let report: HashMap<String, String> = std::process::Command::new(launcher)
        .arg("sandbox-probe")
        .env_clear()
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    Layer::ALL
        .into_iter()
        .map(|layer| {
            let offered = match report.get(layer.name()).map(String::as_str) {
                Some("ok") => Ok(()),
                Some(why) => Err(why.to_string()),
                None => Err("the sandbox probe did not run".into()),
            };
            (layer, offered)
        })
        .collect()
}

/// The directory of git's helper programs (`git --exec-path`).
fn git_exec_path(git: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new(git)
        .arg("--exec-path")
        .env_clear()
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    std::fs::canonicalize(dir).ok().filter(|d| d.is_dir())
}

/// What a command must not change in the repositories of the roots, so it
/// cannot plant code that the next human `git` runs: `.git/config`
/// (filters, aliases, hooksPath, fsmonitor …), `.git/config.worktree` and
/// `.git/hooks` are bound read-only (a missing hooks directory is created
/// empty first). `.git` and every directory between it and its root are
/// pinned (bound onto themselves), because a mount point cannot be renamed
/// or removed: renaming an ancestor would otherwise swap in a repository of
/// the command's making. Repositories are looked for a few levels deep.
/// Symlinks are never followed. Returns `(pinned, read_only)`.
fn protected_git_paths(roots: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    const MAX_DEPTH: usize = 3;
    const MAX_DIRS: usize = 4096;
    let real = |p: &Path, dir: bool| {
        std::fs::symlink_metadata(p)
            .map(|m| if dir { m.is_dir() } else { m.is_file() })
            .unwrap_or(false)
    };
    let (mut pinned, mut read_only) = (Vec::new(), Vec::new());
    for root in roots {
        let mut queue: std::collections::VecDeque<(PathBuf, usize)> = [(root.clone(), 0)].into();
        let mut visited = 0;
        while let Some((dir, depth)) = queue.pop_front() {
            visited += 1;
            if visited > MAX_DIRS {
                break;
            }
            let git = dir.join(".git");
            if real(&git, true) && real(&git.join("config"), false) {
                let hooks = git.join("hooks");
                let _ = std::fs::create_dir(&hooks);
                let mut ancestor = git.as_path();
                while ancestor != root.as_path() {
                    pinned.push(ancestor.to_path_buf());
                    match ancestor.parent() {
                        Some(parent) => ancestor = parent,
                        None => break,
                    }
                }
                read_only.push(git.join("config"));
                if real(&git.join("config.worktree"), false) {
                    read_only.push(git.join("config.worktree"));
                }
                if real(&hooks, true) {
                    read_only.push(hooks);
                }
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir && entry.file_name() != ".git" {
                    queue.push_back((entry.path(), depth + 1));
                }
            }
        }
    }
    pinned.sort();
    pinned.dedup();
    (pinned, read_only)
}

/// Reads a pipe to its end, keeping at most `cap` bytes; says once on
/// `capped` when the cap is passed, so the program can be stopped rather
/// than left writing into the void until its timeout.
async fn read_capped(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    capped: tokio::sync::mpsc::Sender<()>,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room && !truncated {
                    truncated = true;
                    let _ = capped.try_send(());
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (group already gone) is the normal case after a clean exit.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Tool for Terminal {
    const NAME: &'static str = "terminal.execute";
    const TITLE: &'static str = "Run a program";
    const DESCRIPTION: &'static str = "Runs one allow-listed program from an argv vector, without a shell, \
        in a working directory inside the configured roots, with a timeout, capped output and a clean environment. \
        Needs `terminal:execute`. Destructive commands (rm, dd, mkfs, kill, shutdown, git reset …) need `terminal:admin` \
        and quorum approval; wrappers such as env, sudo or xargs are refused. The result holds the exit code, \
        stdout, stderr, truncation flags and a signed audit receipt.";
    const READ_ONLY: bool = false;
    type Args = TerminalArgs;
    type Plan = TerminalPlan;

    fn classify(&self, args: &TerminalArgs) -> Result<Classification<TerminalPlan>, Refusal> {
        let Some(argv0) = args.argv.first() else {
            return Err(refuse("empty_argv", "argv must name a program"));
        };
        if args.argv.len() > MAX_ARGS {
            return Err(refuse(
                "too_many_args",
                format!("at most {MAX_ARGS} arguments"),
            ));
        }
        if args
            .argv
            .iter()
            .any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0'))
        {
            return Err(refuse(
                "invalid_arguments",
                format!("arguments must be under {MAX_ARG_BYTES} bytes and contain no NUL"),
            ));
        }
        let timeout = self.timeout(args.timeout_ms)?;
        let cwd = self.resolve_cwd(args.cwd.as_deref())?;
        let (name, _) = self.resolve_program(argv0)?;
        let rest = &args.argv[1..];
        let shown = shell_words(&args.argv);
        if self.require_sandbox && !self.missing.is_empty() {
            return Err(refuse(
                "sandbox_unavailable",
                format!(
                    "commands are refused: this host does not enforce the sandbox layers {} (terminal.require_sandbox)",
                    self.sandbox_status().trim_start_matches("missing: ")
                ),
            ));
        }
        let verdict = judge(name, rest, &self.config)?;
        // Ordinary commands stay inside the roots; a destructive one is shown
        // to the approvers exactly as it would run, with its resolved
        // targets, and they decide.
        let verdict = match verdict {
            Verdict::Ordinary => {
                self.confine_paths(name, rest, &cwd)?;
                Verdict::Ordinary
            }
            Verdict::Destructive(why) => {
                let targets = self.targets(name, rest, &cwd);
                Verdict::Destructive(if targets.is_empty() {
                    why
                } else {
                    format!("{why}; targets: {}", targets.join(", "))
                })
            }
        };
        let (class, summary) = match verdict {
            Verdict::Ordinary => (Class::Write, format!("run `{shown}`")),
            Verdict::Destructive(why) => (Class::Destructive, format!("run `{shown}`: {why}")),
        };
        Ok(Classification {
            class,
            summary,
            plan: TerminalPlan {
                program: name.to_string(),
                cwd,
                timeout,
            },
        })
    }

    /// The tool's description, saying which guarantees this host lacks.
    fn description(&self) -> String {
        if self.missing.is_empty() {
            return Self::DESCRIPTION.to_string();
        }
        let lost: Vec<String> = self
            .missing
            .iter()
            .map(|(l, _)| format!("{} ({})", l.name(), l.guarantee()))
            .collect();
        format!(
            "{} WARNING: this host does not enforce: {}.{}",
            Self::DESCRIPTION,
            lost.join("; "),
            if self.require_sandbox {
                " Commands are refused until it does."
            } else {
                ""
            }
        )
    }

    async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
        let args = call.args();
        let TerminalPlan {
            program,
            cwd,
            timeout,
        } = call.plan();
        let (name, program) = self
            .programs
            .get_key_value(program)
            .map(|(name, program)| (name.as_str(), program))
            .ok_or_else(|| {
                refuse(
                    "internal",
                    "the classified program is not on the allow-list",
                )
            })?;
        let (cwd, timeout) = (cwd.clone(), *timeout);
        let cap = self.config.output_cap_bytes;
        let _slot = self.take_slot(call.principal().subject())?;
        // Released before the answer goes out; dropped with a cancelled
        // call, it is released in the background.
        let shared_slot = self.take_shared_slot(call.principal().subject()).await?;

        let limits = crate::sandbox::Limits {
            cpu_s: self.config.cpu_limit_s,
            memory_bytes: self.config.memory_limit_bytes,
            file_bytes: self.config.max_file_bytes,
            open_files: self.config.max_open_files,
        };
        let cgroup = match &self.cgroups {
            Ok(cgroups) => {
                let id = crate::random_id()
                    .map_err(|_| refuse("internal", "random source unavailable"))?;
                Some(
                    cgroups
                        .create(&id, self.config.max_processes)
                        .map_err(|e| {
                            tracing::error!(error = %e, "cannot create a command cgroup");
                            refuse(
                                "sandbox_unavailable",
                                "the command sandbox could not be prepared",
                            )
                        })?,
                )
            }
            Err(_) => None,
        };
        let (pinned, protected) = if self.config.protect_git {
            protected_git_paths(&self.roots)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut program_args: Vec<String> = Vec::new();
        if name == "git" {
            program_args.extend(GIT_SAFETY.iter().map(|s| s.to_string()));
        }
        program_args.extend(args.argv[1..].iter().cloned());
        let plan = crate::sandbox::Plan {
            limits,
            cgroup: cgroup.clone(),
            layers: self.layers.clone(),
            network: self.config.network.iter().any(|n| n == name),
            read_only: self.read_only.clone(),
            writable: self.roots.clone(),
            pinned,
            protected,
            execute: program.execute.clone(),
            tmp_bytes: self.config.tmp_bytes,
            cwd: cwd.clone(),
            program: program.path.clone(),
            argv0: name.to_string(),
            args: program_args,
        };
        let plan = serde_json::to_string(&plan)
            .map_err(|_| refuse("internal", "the command sandbox could not be prepared"))?;
        let mut command = tokio::process::Command::new(&self.launcher);
        command
            .arg("sandbox-exec")
            .arg("--plan")
            .arg(plan)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", &self.child_path)
            .env("HOME", &cwd)
            .env("TMPDIR", "/tmp")
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("PAGER", "cat")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if name == "git" {
            // Commits made through dualtrust carry the verified subject.
            let subject = call.principal().subject();
            command.envs([
                ("GIT_CONFIG_NOSYSTEM", "1"),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_TERMINAL_PROMPT", "0"),
                ("GIT_OPTIONAL_LOCKS", "0"),
                ("GIT_EDITOR", ":"),
            ]);
            command.envs([
                ("GIT_AUTHOR_NAME", subject),
                ("GIT_COMMITTER_NAME", subject),
                ("GIT_AUTHOR_EMAIL", "agent@dualtrust.invalid"),
                ("GIT_COMMITTER_EMAIL", "agent@dualtrust.invalid"),
            ]);
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|_| refuse("spawn_failed", format!("`{name}` could not be started")))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (capped, mut cap_reached) = tokio::sync::mpsc::channel(2);
        let out_capped = capped.clone();
        let out_reader = tokio::spawn(async move {
            match stdout {
                Some(p) => read_capped(p, cap, out_capped).await,
                None => (Vec::new(), false),
            }
        });
        let err_reader = tokio::spawn(async move {
            match stderr {
                Some(p) => read_capped(p, cap, capped).await,
                None => (Vec::new(), false),
            }
        });
        let mut stopped = None;
        let status = tokio::select! {
            status = child.wait() => status.ok(),
            () = tokio::time::sleep(timeout) => {
                stopped = Some("timeout");
                kill_group(pid);
                child.wait().await.ok()
            }
            Some(()) = cap_reached.recv() => {
                stopped = Some("output_cap");
                kill_group(pid);
                child.wait().await.ok()
            }
        };
        let timed_out = stopped == Some("timeout");
        // Whatever the program left running in its group goes with it.
        kill_group(pid);
        let collect = |handle: tokio::task::JoinHandle<(Vec<u8>, bool)>| async move {
            let abort = handle.abort_handle();
            match tokio::time::timeout(READER_GRACE, handle).await {
                Ok(Ok(v)) => v,
                _ => {
                    abort.abort();
                    (Vec::new(), true)
                }
            }
        };
        let (out, out_truncated) = collect(out_reader).await;
        let (err, err_truncated) = collect(err_reader).await;
        if let Some(dir) = cgroup {
            // Anything that escaped the process group (setsid) is still here.
            let _ = tokio::task::spawn_blocking(move || crate::sandbox::PidsCgroups::destroy(&dir))
                .await;
        }
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let exit_code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let result = json!({
            "exit_code": exit_code,
            "signal": signal,
            "timed_out": timed_out,
            // Why dualtrust stopped the program, if it did: `timeout`, or
            // `output_cap` once it had written more than the cap.
            "stopped": stopped,
            "duration_ms": duration_ms,
            "stdout": String::from_utf8_lossy(&out),
            "stderr": String::from_utf8_lossy(&err),
            "stdout_truncated": out_truncated,
            "stderr_truncated": err_truncated,
        });
        let outcome = json!({
            "exit_code": exit_code,
            "signal": signal,
            "timed_out": timed_out,
            "stopped": stopped,
            "duration_ms": duration_ms,
        });
        if let Some(slot) = shared_slot {
            slot.release().await;
        }
        Ok(Executed { result, outcome })
    }
}

/// What classification resolved, so execution does not resolve it again.
pub struct TerminalPlan {
    /// The allow-list entry the call's argv[0] resolved to.
    program: String,
    /// The canonical working directory inside the roots.
    cwd: PathBuf,
    timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(dir: &Path) -> Terminal {
        let config = TerminalConfig {
            roots: vec![dir.join("root")],
            ..TerminalConfig::default()
        };
        Terminal::new(config, crate::config::Mode::Development).expect("terminal")
    }

    fn classify(t: &Terminal, argv: &[&str]) -> Result<Class, &'static str> {
        t.classify(&TerminalArgs {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            timeout_ms: None,
        })
        .map(|c| c.class)
        .map_err(|r| r.code)
    }

    #[test]
    fn ordinary_commands_are_ordinary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        for argv in [
            &["ls", "-la"][..],
            &["cat", "notes.txt"],
            &["git", "status"],
            &["grep", "-r", "TODO", "."],
            &["/bin/ls"],
            &["/usr/bin/ls"],
        ] {
            assert_eq!(classify(&t, argv), Ok(Class::Write), "{argv:?}");
        }
    }

    #[test]
    fn destructive_in_any_spelling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        for argv in [
            &["rm", "-rf", "/"][..],
            &["rm", "-fr", "x"],
            &["rm", "-r", "-f", "x"],
            &["rm", "--recursive", "--force", "x"],
            &["rm", "-Rf", "x"],
            &["/bin/rm", "x"],
            &["dd", "if=/dev/zero", "of=/dev/sda"],
            &["kill", "-9", "1"],
            &["kill", "-s", "KILL", "1"],
            &["chmod", "-R", "777", "."],
            &["git", "reset", "--hard"],
            &["git", "clean", "-fdx"],
        ] {
            assert_eq!(classify(&t, argv), Ok(Class::Destructive), "{argv:?}");
        }
    }

    #[test]
    fn build_tools_run_code_so_only_version_queries_are_ordinary() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            judge("cargo", &args(&["--version"]), &TerminalConfig::default()),
            Ok(Verdict::Ordinary)
        ));
        assert!(matches!(
            judge("cargo", &args(&["build"]), &TerminalConfig::default()),
            Ok(Verdict::Destructive(_))
        ));
        assert!(matches!(
            judge("rustc", &args(&["x.rs"]), &TerminalConfig::default()),
            Ok(Verdict::Destructive(_))
        ));
    }

    #[test]
    fn bypasses_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        for (argv, code) in [
            (&["sh", "-c", "rm -rf /"][..], "shell_not_allowed"),
            (&["bash", "-c", "ls"], "shell_not_allowed"),
            (&["/bin/sh", "-c", "ls"], "shell_not_allowed"),
            (&["python3", "-c", "import os"], "shell_not_allowed"),
            (&["env", "rm", "-rf", "/"], "wrapper_not_allowed"),
            (&["sudo", "ls"], "wrapper_not_allowed"),
            (&["xargs", "rm"], "wrapper_not_allowed"),
            (&["nice", "rm", "-rf", "/"], "wrapper_not_allowed"),
            (&["find", ".", "-exec", "rm", "{}", ";"], "forbidden_flag"),
            (&["find", ".", "-delete"], "forbidden_flag"),
            (&["git", "-c", "core.pager=sh", "log"], "forbidden_flag"),
            (&["git", "--upload-pack=evil", "status"], "forbidden_flag"),
            (&["git", "grep", "-Osh", "x"], "forbidden_flag"),
            (
                &["git", "grep", "--open-files-in-pager=sh", "x"],
                "forbidden_flag",
            ),
            (&["date", "-s", "2030-01-01"], "forbidden_flag"),
            (&["date", "--set=2030-01-01"], "forbidden_flag"),
            (&["ls\nrm", "-rf", "/"], "program_not_allowed"),
            (&["timeout", "1", "rm", "x"], "wrapper_not_allowed"),
            (&["nohup", "rm", "x"], "wrapper_not_allowed"),
            (
                &[
                    "tar",
                    "--checkpoint=1",
                    "--checkpoint-action=exec=sh",
                    "-cf",
                    "x.tar",
                    ".",
                ],
                "program_not_allowed",
            ),
            (
                &["rsync", "-e", "sh -c id", "a", "b"],
                "program_not_allowed",
            ),
            (&["sed", "-n", "1e id", "notes.txt"], "program_not_allowed"),
            (&["'ls'"], "program_not_allowed"),
            (&["ls; rm -rf /"], "program_not_allowed"),
            (&["$(rm -rf /)"], "program_not_allowed"),
            (&["curl", "http://x"], "program_not_allowed"),
            (&[], "empty_argv"),
        ] {
            assert_eq!(classify(&t, argv), Err(code), "{argv:?}");
        }
    }

    #[test]
    fn multibyte_option_letters_do_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        for argv in [
            &["cat", "-é"][..],
            &["cat", "-éé/x"],
            &["cat", "-€"],
            &["ls", "-"],
        ] {
            let _ = classify(&t, argv);
        }
        assert_eq!(
            classify(&t, &["cat", "-é/../../../etc/passwd"]),
            Err("path_outside_roots")
        );
    }

    #[test]
    fn destructive_means_irreversible_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        for argv in [
            &["git", "init"][..],
            &["git", "add", "."],
            &["git", "commit", "-m", "x"],
            &["git", "switch", "-c", "topic"],
            &["git", "restore", "--staged", "a"],
            &["git", "clean", "-n"],
            &["git", "branch", "-d", "old"],
            &["chmod", "644", "a"],
        ] {
            assert_eq!(classify(&t, argv), Ok(Class::Write), "{argv:?}");
        }
        for argv in [
            &["git", "reset", "--hard"][..],
            &["git", "checkout", "a.txt"],
            &["git", "restore", "a.txt"],
            &["git", "push", "--force"],
            &["git", "push", "origin", "+main"],
            &["git", "branch", "-D", "old"],
            &["git", "stash", "drop"],
            &["git", "clean", "-fd"],
            &["chown", "-R", "x", "."],
        ] {
            assert_eq!(classify(&t, argv), Ok(Class::Destructive), "{argv:?}");
        }
    }

    #[test]
    fn a_copied_binary_is_not_the_allow_listed_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        let fake = dir.path().join("ls");
        std::fs::copy("/usr/bin/rm", &fake).expect("copy");
        let fake = fake.display().to_string();
        assert_eq!(classify(&t, &[fake.as_str()]), Err("program_not_allowed"));
    }

    #[test]
    fn path_arguments_are_confined_to_the_roots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).expect("symlink");
        // A sibling whose name merely starts with the root's is outside it.
        std::fs::create_dir_all(dir.path().join("root-evil")).expect("mkdir");
        for argv in [
            &["cat", "notes.txt"][..],
            &["touch", "sub/new-file"],
            &["cp", "a", "sub/b"],
            &["grep", "-r", "TODO", "."],
            &["ls", "-la", "sub"],
            &["find", ".", "-name", "*.rs"],
        ] {
            assert_eq!(classify(&t, argv), Ok(Class::Write), "{argv:?}");
        }
        for argv in [
            &["cat", "/etc/shadow"][..],
            &["touch", "/tmp/owned"],
            &["cp", "a", "/etc/cron.d/x"],
            &["mv", "a", "../escape"],
            &["cat", "etc-link/passwd"],
            &["mkdir", "sub/../../out"],
            &["grep", "--file=/etc/shadow", "x"],
            &["grep", "-f/etc/shadow", "x"],
            &["find", "/", "-name", "x"],
            &["ls", "etc-link"],
            &["git", "diff", "--no-index", "/etc/shadow", "x"],
            &["cat", "../root-evil/secret"],
        ] {
            assert!(
                matches!(
                    classify(&t, argv),
                    Err("path_outside_roots" | "forbidden_flag")
                ),
                "{argv:?}"
            );
        }
    }

    /// Found by `fuzz/` (target `terminal`): each of these named a file
    /// outside the root and was classified ordinary, or (shred) hid it
    /// from the approvers.
    #[test]
    fn fuzz_findings_paths_outside_the_roots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        let root = dir.path().join("root");
        std::fs::create_dir_all(dir.path().join("outside")).expect("mkdir");
        for (link, target) in [
            ("-etc", "/etc"),
            ("x=etc", "/etc"),
            ("dangling", "../outside/new-file"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).expect("symlink");
        }
        for argv in [
            &["cat", "--", "-etc/passwd"][..],
            &["cat", "x=etc/passwd"],
            &["cp", "-t..", "notes.txt"],
            &["sort", "-T..", "notes.txt"],
            &["touch", "dangling"],
        ] {
            assert_eq!(classify(&t, argv), Err("path_outside_roots"), "{argv:?}");
        }
        for target in ["dangling", "dangling/"] {
            let summary = t
                .classify(&TerminalArgs {
                    argv: vec!["shred".into(), target.into()],
                    cwd: None,
                    timeout_ms: None,
                })
                .expect("destructive")
                .summary;
            assert!(summary.contains("OUTSIDE"), "{summary}");
        }
        // Ordinary spellings stay ordinary.
        for argv in [
            &["ls", "-la"][..],
            &["cat", "--", "-notes"],
            &["head", "-n1", "notes.txt"],
        ] {
            assert_eq!(classify(&t, argv), Ok(Class::Write), "{argv:?}");
        }
    }

    #[test]
    fn cwd_is_confined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = terminal(dir.path());
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("escape")).expect("symlink");
        assert!(t.resolve_cwd(Some("sub")).is_ok());
        assert!(t.resolve_cwd(Some("..")).is_err());
        assert!(t.resolve_cwd(Some("/etc")).is_err());
        assert!(t.resolve_cwd(Some("escape")).is_err());
        assert!(t.resolve_cwd(Some("sub/../../")).is_err());
    }
}
