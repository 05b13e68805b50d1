//! The launcher every `terminal.execute` command runs through: the kernel,
//! not the argv rules, is the boundary.
//!
//! The server spawns `dualtrust sandbox-exec --plan JSON` with the scrubbed
//! environment, working directory and process group already set. The plan
//! ([`Plan`]) says exactly what the command may read, write and execute. The
//! launcher, a single-threaded process that has not started a runtime:
//!
//! 1. joins the command's pids cgroup (`pids.max`);
//! 2. sets resource limits (CPU, address space, file size, open files, no core);
//! 3. enters new user, mount, IPC, UTS, pid and network namespaces; outside
//!    it stays the server's user, inside it is a non-root user, so the
//!    program it starts holds no capability at all;
//! 4. builds a new root on a tmpfs: the documented system read set bound
//!    read-only, the roots bound writable (`nosuid,nodev,noexec`), protected
//!    paths under the roots (a repository's `.git/config` and hooks) bound
//!    read-only again, a private `/tmp`, a `/dev` with only the harmless
//!    devices; everything else does not exist; then `pivot_root` into it and
//!    detaches the host's tree;
//! 5. sets no-new-privileges and a Landlock ruleset: execute only the
//!    program of this call and the helpers it needs, read only the read set
//!    and the roots, write only beneath the roots and `/tmp`, no TCP, no
//!    signals or abstract sockets outside the sandbox;
//! 6. loads a seccomp filter that refuses ptrace, mount, new namespaces,
//!    keyrings, bpf, io_uring, module and clock changes;
//! 7. starts the program, which becomes pid 1 of the new pid namespace (so
//!    nothing it starts outlives it), waits, and exits as it did.
//!
//! Everything before step 7 runs before the program's first instruction and
//! is inherited by every process it starts, whatever its arguments. No
//! `unsafe` and no `pre_exec` hook: the launcher restricts itself.
//!
//! Each layer can be missing on a host (or switched off for the layer tests
//! in development); [`probe`] says which the kernel offers, and the server
//! reports the missing guarantees and, where policy requires the full set,
//! refuses to run commands.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::resource::{Resource, setrlimit};
use serde::{Deserialize, Serialize};

/// The newest Landlock ABI we ask for; older kernels get what they support
/// and the probe reports the difference.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Devices a command may open: all harmless, all read or written as data.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// One kernel mechanism of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Landlock: execute, read, write and TCP rules; signal and socket scopes.
    Landlock,
    /// seccomp: no ptrace, mount, namespaces, keyrings, bpf, io_uring.
    Seccomp,
    /// A private mount namespace whose root holds only the granted paths.
    Mount,
    /// A network namespace of its own (no interfaces but a down loopback).
    Network,
    /// A pid namespace of its own: nothing the command starts survives it.
    Pid,
}

impl Layer {
    pub const ALL: [Layer; 5] = [
        Layer::Landlock,
        Layer::Seccomp,
        Layer::Mount,
        Layer::Network,
        Layer::Pid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::Mount => "mount",
            Layer::Network => "network",
            Layer::Pid => "pid",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The guarantee a command loses without this layer, in words.
    pub fn guarantee(self) -> &'static str {
        match self {
            Layer::Landlock => {
                "execute only the allow-listed program, read only the roots and the system read set, no TCP"
            }
            Layer::Seccomp => "no ptrace, mount, new namespaces, keyrings, bpf or io_uring",
            Layer::Mount => {
                "nothing outside the roots is writable, chmod/chown-able or linkable, and unlisted paths do not exist"
            }
            Layer::Network => "no network at all",
            Layer::Pid => "no view of or signal to other processes; nothing outlives the command",
        }
    }
}

/// Per-command resource limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_s: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub open_files: u64,
}

/// Everything one command may touch, decided by the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub limits: Limits,
    /// The command's pids cgroup, joined before anything else.
    pub cgroup: Option<PathBuf>,
    /// The layers to apply (all of them unless the kernel lacks one or a
    /// development configuration switched one off).
    pub layers: Vec<Layer>,
    /// Whether this program was granted the network.
    pub network: bool,
    /// System paths readable by every command (directories or files).
    pub read_only: Vec<PathBuf>,
    /// The roots: readable and writable, never executable.
    pub writable: Vec<PathBuf>,
    /// Directories beneath the roots bound onto themselves, so that they
    /// cannot be renamed or removed.
    pub pinned: Vec<PathBuf>,
    /// Paths beneath the roots that stay read-only.
    pub protected: Vec<PathBuf>,
    /// Files (or directories of files) this command may execute.
    pub execute: Vec<PathBuf>,
    /// Size of the private `/tmp`.
    pub tmp_bytes: u64,
    pub cwd: PathBuf,
    pub program: PathBuf,
    pub argv0: String,
    pub args: Vec<String>,
}

impl Plan {
    fn has(&self, layer: Layer) -> bool {
        self.layers.contains(&layer)
    }
}

/// Runs `plan` and returns the exit code to leave with; an error means the
/// sandbox could not be set up and nothing ran.
pub fn run(plan: &Plan) -> Result<i32, String> {
    // Everything the command forks is counted (and later killed) here.
    if let Some(dir) = &plan.cgroup {
        std::fs::write(
            dir.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .map_err(|e| format!("cannot join the command's cgroup: {e}"))?;
    }
    set_limits(plan.limits).map_err(|e| format!("cannot set resource limits: {e}"))?;
    enter_namespaces(plan)?;
    if plan.has(Layer::Mount) {
        build_root(plan).map_err(|e| format!("cannot build the command's root: {e}"))?;
    }
    std::env::set_current_dir(&plan.cwd)
        .map_err(|e| format!("cannot enter the working directory: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    if plan.has(Layer::Landlock) {
        restrict(plan).map_err(|e| format!("Landlock: {e}"))?;
    }
    if plan.has(Layer::Seccomp) {
        seccomp::apply().map_err(|e| format!("seccomp: {e}"))?;
    }
    let mut child = match std::process::Command::new(&plan.program)
        .arg0(&plan.argv0)
        .args(&plan.args)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("sandbox-exec: cannot run {}: {e}", plan.program.display());
            return Ok(if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for the program: {e}"))?;
    if let Some(signal) = status.signal() {
        // Leave the way the program did, so the server sees the signal.
        if let Ok(signal) = nix::sys::signal::Signal::try_from(signal) {
            let _ = nix::sys::signal::raise(signal);
        }
        return Ok(128 + signal);
    }
    Ok(status.code().unwrap_or(1))
}

fn set_limits(limits: Limits) -> nix::Result<()> {
    setrlimit(Resource::RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1)?;
    setrlimit(
        Resource::RLIMIT_AS,
        limits.memory_bytes,
        limits.memory_bytes,
    )?;
    setrlimit(Resource::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes)?;
    setrlimit(
        Resource::RLIMIT_NOFILE,
        limits.open_files,
        limits.open_files,
    )?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}

/// The user the program runs as inside its namespace: never root, so
/// `execve` leaves it with no capability.
fn inside_uid(outside: u32) -> u32 {
    if outside == 0 { 65534 } else { outside }
}

fn enter_namespaces(plan: &Plan) -> Result<(), String> {
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::empty();
    if plan.has(Layer::Mount) {
        flags |= CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    }
    if plan.has(Layer::Network) && !plan.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if plan.has(Layer::Pid) {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if flags.is_empty() {
        return Ok(());
    }
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    nix::sched::unshare(flags | CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("cannot create namespaces: {e}"))?;
    let write = |file: &str, content: String| {
        std::fs::write(format!("/proc/self/{file}"), content)
            .map_err(|e| format!("cannot write {file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{} {uid} 1\n", inside_uid(uid)))?;
    write("gid_map", format!("{} {gid} 1\n", inside_uid(gid)))?;
    Ok(())
}

const OLD: &str = "/oldroot";
const NEW: &str = "/newroot";

fn under(base: &str, path: &Path) -> PathBuf {
    Path::new(base).join(path.strip_prefix("/").unwrap_or(path))
}

/// What goes where in the new root, mounted parents first.
enum Entry<'a> {
    ReadOnly(&'a Path),
    Writable(&'a Path),
    Pinned(&'a Path),
    Protected(&'a Path),
    Tmp,
    Dev,
}

impl Entry<'_> {
    fn path(&self) -> &Path {
        match self {
            Entry::ReadOnly(p) | Entry::Writable(p) | Entry::Pinned(p) | Entry::Protected(p) => p,
            Entry::Tmp => Path::new("/tmp"),
            Entry::Dev => Path::new("/dev"),
        }
    }
}

fn build_root(plan: &Plan) -> io::Result<()> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    // A tmpfs to build on; after the first pivot the host's tree is at
    // /oldroot (its /tmp included: the tmpfs moved away from it).
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )?;
    std::env::set_current_dir("/tmp")?;
    std::fs::create_dir("newroot")?;
    std::fs::create_dir("oldroot")?;
    nix::unistd::pivot_root(".", "oldroot")?;
    std::env::set_current_dir("/")?;
    mount(Some(NEW), NEW, none, MsFlags::MS_BIND, none)?;

    let mut entries: Vec<Entry> = plan
        .read_only
        .iter()
        .map(|p| Entry::ReadOnly(p))
        .chain([Entry::Tmp, Entry::Dev])
        .chain(plan.writable.iter().map(|p| Entry::Writable(p)))
        .chain(plan.pinned.iter().map(|p| Entry::Pinned(p)))
        .chain(plan.protected.iter().map(|p| Entry::Protected(p)))
        .collect();
    // Parents before children; at equal depth the order above holds.
    entries.sort_by_key(|e| e.path().components().count());
    for entry in &entries {
        let dest = under(NEW, entry.path());
        match entry {
            Entry::ReadOnly(path) => {
                let source = under(OLD, path);
                let Ok(meta) = std::fs::symlink_metadata(&source) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    // `/bin -> usr/bin` and friends: the same link, whose
                    // target is in the read set on its own.
                    let target = std::fs::read_link(&source)?;
                    create_parent(&dest)?;
                    if std::fs::symlink_metadata(&dest).is_err() {
                        std::os::unix::fs::symlink(target, &dest)?;
                    }
                    continue;
                }
                bind(&source, &dest, MsFlags::MS_RDONLY)?;
            }
            Entry::Writable(path) => bind(&under(OLD, path), &dest, MsFlags::MS_NOEXEC)?,
            Entry::Pinned(path) | Entry::Protected(path) => {
                // Bound from the new tree, never following a link: a
                // command may have replaced the path since it was planned.
                let source = under(NEW, path);
                let real = std::fs::symlink_metadata(&source)
                    .map(|m| !m.file_type().is_symlink())
                    .unwrap_or(false);
                if real {
                    let flags = match entry {
                        Entry::Protected(_) => MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC,
                        _ => MsFlags::MS_NOEXEC,
                    };
                    bind(&source, &dest, flags)?;
                }
            }
            Entry::Tmp => {
                mkdir_all(&dest)?;
                mount(
                    Some("tmpfs"),
                    &dest,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some(format!("mode=1777,size={}", plan.tmp_bytes).as_str()),
                )?;
            }
            Entry::Dev => {
                mkdir_all(&dest)?;
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
                mount(
                    Some("tmpfs"),
                    &dest,
                    Some("tmpfs"),
                    flags,
                    Some("mode=0755,size=64k"),
                )?;
                for device in DEVICES {
                    let source = Path::new(OLD).join("dev").join(device);
                    if source.exists() {
                        bind(&source, &dest.join(device), MsFlags::empty())?;
                    }
                }
                mount(
                    none,
                    &dest,
                    none,
                    flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    none,
                )?;
            }
        }
    }
    // Nothing may be created beside the granted paths.
    mount(
        none,
        NEW,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        none,
    )?;
    std::env::set_current_dir(NEW)?;
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn mkdir_all(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => mkdir_all(parent),
        None => Ok(()),
    }
}

/// Binds `source` (and what is mounted beneath it) at `dest`, then remounts
/// every mount there `nosuid,nodev` plus `extra`, keeping the flags the host
/// already locked on it.
fn bind(source: &Path, dest: &Path, extra: MsFlags) -> io::Result<()> {
    if source.is_dir() {
        mkdir_all(dest)?;
    } else if std::fs::symlink_metadata(dest).is_err() {
        create_parent(dest)?;
        std::fs::File::create(dest)?;
    }
    let none: Option<&str> = None;
    mount(
        Some(source),
        dest,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )?;
    let device = extra.is_empty();
    for point in mounts_beneath(dest)? {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | extra;
        if !device {
            flags |= MsFlags::MS_NODEV;
        }
        flags |= locked_flags(&point)?;
        mount(none, &point, none, flags, none)?;
    }
    Ok(())
}

/// The mount points at or beneath `dest`, from this namespace's mount table.
fn mounts_beneath(dest: &Path) -> io::Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string(Path::new(OLD).join("proc/self/mountinfo"))?;
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dest))
        .collect();
    points.dedup();
    if points.is_empty() {
        points.push(dest.to_path_buf());
    }
    Ok(points)
}

/// `\040` and friends: mountinfo escapes spaces, tabs, newlines, backslashes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Flags a user namespace may not clear on a mount it did not create.
fn locked_flags(point: &Path) -> io::Result<MsFlags> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let current = statvfs(point)?.flags();
    let mut flags = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(fs) {
            flags |= ms;
        }
    }
    Ok(flags)
}

/// The Landlock ruleset of one command.
fn restrict(plan: &Plan) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi = LANDLOCK_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_all(abi) & !AccessFs::Execute;
    let devices: Vec<PathBuf> = DEVICES.iter().map(|d| Path::new("/dev").join(d)).collect();
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
    if !plan.network {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    // Without the mount layer `/tmp` is the host's, not the command's own.
    let private_tmp: &[&str] = if plan.has(Layer::Mount) {
        &["/tmp"]
    } else {
        &[]
    };
    let status = ruleset
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .add_rules(path_beneath_rules(&plan.read_only, read))?
        .add_rules(path_beneath_rules(&plan.writable, write))?
        .add_rules(path_beneath_rules(private_tmp, write))?
        .add_rules(path_beneath_rules(
            &devices,
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
        ))?
        .add_rules(path_beneath_rules(
            &plan.execute,
            BitFlags::from(AccessFs::Execute) | read,
        ))?
        .restrict_self()?;
    Ok(status.ruleset)
}

mod seccomp {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };

    /// Calls a command never needs and an escape usually does.
    const DENIED: &[libc::c_long] = &[
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_ioperm,
    ];

    /// `clone` flags that would make a namespace.
    const NAMESPACE_FLAGS: &[libc::c_int] = &[
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
        0x80, // CLONE_NEWTIME
    ];

    fn arch() -> Result<seccompiler::TargetArch, String> {
        std::env::consts::ARCH
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())
    }

    fn compile(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        action: SeccompAction,
    ) -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
            .and_then(TryInto::try_into)
            .map_err(|e: seccompiler::BackendError| e.to_string())
    }

    fn flag_set(flag: libc::c_int) -> Result<SeccompRule, String> {
        let flag = u64::from(flag.unsigned_abs());
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| e.to_string())
    }

    fn ioctl_request(request: libc::c_ulong) -> Result<SeccompRule, String> {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| e.to_string())
    }

    pub fn apply() -> Result<(), String> {
        let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
        denied.insert(
            libc::SYS_clone,
            NAMESPACE_FLAGS
                .iter()
                .map(|&f| flag_set(f))
                .collect::<Result<_, _>>()?,
        );
        // Pushing input into a terminal another process reads.
        denied.insert(
            libc::SYS_ioctl,
            vec![
                ioctl_request(libc::TIOCSTI)?,
                ioctl_request(libc::TIOCLINUX)?,
            ],
        );
        let eperm = compile(denied, SeccompAction::Errno(libc::EPERM as u32))?;
        // clone3 passes its flags in memory a filter cannot read: answer
        // ENOSYS so the C library falls back to clone, which is checked.
        let clone3 = compile(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?;
        seccompiler::apply_filter(&clone3).map_err(|e| e.to_string())?;
        seccompiler::apply_filter(&eperm).map_err(|e| e.to_string())
    }
}

/// Which layers this kernel offers, each tried in a throwaway process (the
/// caller): `(layer, Ok(()) | Err(why))`.
pub fn probe() -> Vec<(Layer, Result<(), String>)> {
    let mut found = Vec::new();
    // Namespaces first: once seccomp is loaded nothing can create them.
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    use nix::sched::CloneFlags;
    let namespaces = nix::sched::unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| format!("unshare: {e}"))
    .and_then(|()| {
        std::fs::write("/proc/self/setgroups", "deny")
            .and_then(|()| {
                std::fs::write(
                    "/proc/self/uid_map",
                    format!("{} {uid} 1\n", inside_uid(uid)),
                )
            })
            .and_then(|()| {
                std::fs::write(
                    "/proc/self/gid_map",
                    format!("{} {gid} 1\n", inside_uid(gid)),
                )
            })
            .map_err(|e| format!("id maps: {e}"))
    });
    let mount_ok = namespaces.clone().and_then(|()| {
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .and_then(|()| {
                mount(
                    Some("tmpfs"),
                    "/tmp",
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("size=64k"),
                )
            })
            .map_err(|e| format!("mount: {e}"))
    });
    found.push((Layer::Mount, mount_ok));
    found.push((Layer::Network, namespaces.clone()));
    found.push((Layer::Pid, namespaces));
    let landlock = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(|r| r.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp))
        .and_then(|r| r.scope(Scope::AbstractUnixSocket | Scope::Signal))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_all(LANDLOCK_ABI))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())
        .and_then(|status| match status.ruleset {
            RulesetStatus::FullyEnforced => Ok(()),
            other => Err(format!(
                "the kernel enforces the ruleset only {}",
                landlock_status_name(other)
            )),
        });
    found.push((Layer::Landlock, landlock));
    let seccomp = nix::sys::prctl::set_no_new_privs()
        .map_err(|e| e.to_string())
        .and_then(|()| seccomp::apply())
        .and_then(|()| match nix::sched::unshare(CloneFlags::CLONE_NEWUTS) {
            Err(nix::errno::Errno::EPERM) => Ok(()),
            other => Err(format!("the filter did not refuse unshare: {other:?}")),
        });
    found.push((Layer::Seccomp, seccomp));
    found
}

/// How far the kernel enforced a Landlock ruleset.
pub fn landlock_status_name(status: RulesetStatus) -> &'static str {
    match status {
        RulesetStatus::FullyEnforced => "fully_enforced",
        RulesetStatus::PartiallyEnforced => "partially_enforced",
        RulesetStatus::NotEnforced => "not_enforced",
    }
}

/// The ELF interpreter or `#!` interpreter a program needs executed with it,
/// followed transitively (a script's interpreter is itself dynamic).
pub fn interpreters(program: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut next = Some(program.to_path_buf());
    while let Some(path) = next.take() {
        if found.len() >= 4 {
            break;
        }
        let Some(interp) = interpreter_of(&path).and_then(|p| std::fs::canonicalize(p).ok()) else {
            break;
        };
        if found.contains(&interp) {
            break;
        }
        found.push(interp.clone());
        next = Some(interp);
    }
    found
}

fn interpreter_of(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(8192)
        .read_to_end(&mut head)
        .ok()?;
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next()?;
        let text = std::str::from_utf8(line).ok()?.trim();
        return text.split_whitespace().next().map(PathBuf::from);
    }
    elf_interpreter(&head)
}

/// `PT_INTERP` of a little-endian ELF64 file whose program headers sit in
/// `head`.
fn elf_interpreter(head: &[u8]) -> Option<PathBuf> {
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        head.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if head.get(..4) != Some(b"\x7fELF") || head.get(4) != Some(&2) || head.get(5) != Some(&1) {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum.min(64) {
        let base = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let kind = head.get(base..base + 4)?;
        if kind == 3u32.to_le_bytes() {
            let offset = usize::try_from(u64_at(base + 8)?).ok()?;
            let size = usize::try_from(u64_at(base + 32)?).ok()?;
            let raw = head.get(offset..offset.checked_add(size)?)?;
            let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
            return std::str::from_utf8(raw).ok().map(PathBuf::from);
        }
    }
    None
}

/// Per-command pids cgroups (cgroup v1 `pids` hierarchy or a cgroup v2
/// directory with the `pids` controller), under one directory per server.
#[derive(Debug)]
pub struct PidsCgroups {
    base: PathBuf,
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
    pub fn create(&self, id: &str, max: u64) -> io::Result<PathBuf> {
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

/// Whether `path` (made executable or not) is an executable regular file.
pub fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trail\"), r"/trail\");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }

    #[test]
    fn the_loader_of_a_dynamic_program_is_found() {
        let found = interpreters(Path::new("/bin/ls"));
        assert!(
            found.iter().any(|p| p.to_string_lossy().contains("ld-")),
            "{found:?}"
        );
        assert!(elf_interpreter(b"\x7fELF\x02\x01").is_none());
        assert!(elf_interpreter(b"not an elf").is_none());
    }
}
