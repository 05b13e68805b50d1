//! The terminal's rules: which programs and options are refused, which
//! commands are destructive, which arguments name files. Pure functions of
//! the argv and the configuration, with no I/O, so they are read, tested
//! and fuzzed on their own; resolving programs and paths is `mod.rs`'s.

use crate::config::TerminalConfig;
use crate::gate::Refusal;

use super::refuse;

pub(super) const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "python",
    "python3", "perl", "ruby", "node", "php", "lua", "awk", "gawk", "mawk", "tclsh",
];

pub(super) const WRAPPERS: &[&str] = &[
    "env", "sudo", "doas", "su", "xargs", "nice", "ionice", "timeout", "nohup", "command", "exec",
    "setsid", "stdbuf", "chroot", "strace", "ltrace", "taskset", "time", "watch", "unshare",
    "nsenter", "flock", "script", "parallel",
];

/// Programs whose arguments are never paths: their arguments are not
/// confined (the kernel still is the wall for whatever they open).
#[doc(hidden)]
pub const NO_PATH_PROGRAMS: &[&str] = &[
    "echo", "date", "true", "false", "uname", "whoami", "id", "sleep", "yes", "pwd", "git",
    "cargo", "rustc", "kill", "pkill", "killall", "shutdown", "reboot", "halt", "poweroff",
];

/// Which rule a program falls under.
pub(super) enum Verdict {
    Ordinary,
    Destructive(String),
}

/// Splits `-abc` into `a`, `b`, `c`; long options are returned whole.
pub(super) fn short_flags(args: &[String]) -> impl Iterator<Item = char> + '_ {
    args.iter()
        .take_while(|a| a.as_str() != "--")
        .filter(|a| a.starts_with('-') && !a.starts_with("--") && a.len() > 1)
        .flat_map(|a| a.chars().skip(1))
}

pub(super) fn has_long(args: &[String], names: &[&str]) -> bool {
    args.iter().take_while(|a| a.as_str() != "--").any(|a| {
        names
            .iter()
            .any(|n| a == n || a.starts_with(&format!("{n}=")))
    })
}

pub(super) fn judge(
    name: &str,
    args: &[String],
    config: &TerminalConfig,
) -> Result<Verdict, Refusal> {
    // Wrappers would run another allow-listed program (`env rm -rf …`) past
    // its rule; the kernel would let them, so the rule refuses them first.
    if WRAPPERS.contains(&name) {
        return Err(refuse(
            "wrapper_not_allowed",
            format!("`{name}` runs another program and is not allowed; call the program directly"),
        ));
    }
    if SHELLS.contains(&name) {
        return if config.allow_shell {
            Ok(Verdict::Destructive(format!(
                "runs the interpreter `{name}`, whose effect cannot be checked"
            )))
        } else {
            Err(refuse(
                "shell_not_allowed",
                format!("`{name}` is a shell or interpreter; policy does not allow shells"),
            ))
        };
    }
    if config.destructive.iter().any(|d| d == name) {
        return Ok(Verdict::Destructive(format!(
            "policy marks `{name}` as destructive"
        )));
    }
    if name.starts_with("mkfs") {
        return Ok(Verdict::Destructive(format!(
            "`{name}` formats a filesystem"
        )));
    }
    let verdict = match name {
        "rm" => {
            let recursive = short_flags(args).any(|c| matches!(c, 'r' | 'R'))
                || has_long(args, &["--recursive"]);
            let force = short_flags(args).any(|c| c == 'f') || has_long(args, &["--force"]);
            Verdict::Destructive(match (recursive, force) {
                (true, true) => "deletes files recursively and without confirmation".into(),
                (true, false) => "deletes files recursively".into(),
                (false, true) => "deletes files without confirmation".into(),
                (false, false) => "deletes files".into(),
            })
        }
        "rmdir" => Verdict::Destructive("removes directories".into()),
        "shred" => Verdict::Destructive("overwrites files irrecoverably".into()),
        "truncate" => Verdict::Destructive("truncates files".into()),
        "dd" => Verdict::Destructive("copies raw blocks and can overwrite devices".into()),
        "shutdown" | "reboot" | "halt" | "poweroff" => {
            Verdict::Destructive(format!("`{name}` stops or restarts the host"))
        }
        "kill" | "pkill" | "killall" => Verdict::Destructive("sends signals to processes".into()),
        "chmod" | "chown" | "chgrp"
            if short_flags(args).any(|c| c == 'R') || has_long(args, &["--recursive"]) =>
        {
            Verdict::Destructive(format!(
                "changes ownership or modes recursively (`{name} -R`)"
            ))
        }
        "find" => {
            // The kernel refuses the program `-exec` would start; these are
            // refused first because they delete or write outside the rule.
            const FORBIDDEN: &[&str] = &[
                "-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf",
                "-fls",
            ];
            if let Some(bad) = args.iter().find(|a| FORBIDDEN.contains(&a.as_str())) {
                return Err(refuse(
                    "forbidden_flag",
                    format!("`find {bad}` runs programs or writes files and is not allowed"),
                ));
            }
            Verdict::Ordinary
        }
        "git" => judge_git(args)?,
        // Setting the clock changes the host, not a file under the roots.
        "date" if short_flags(args).any(|c| c == 's') || has_long(args, &["--set"]) => {
            return Err(refuse(
                "forbidden_flag",
                "`date --set` changes the system clock and is not allowed",
            ));
        }
        "cargo" | "rustc" => {
            if matches!(args, [only] if only == "--version" || only == "-V" || only == "version") {
                Verdict::Ordinary
            } else {
                Verdict::Destructive(format!(
                    "`{name}` with these arguments compiles and may run arbitrary build code"
                ))
            }
        }
        // Anything else the operator allow-listed runs under the generic
        // kernel confinement: it can only touch what the sandbox grants.
        _ => Verdict::Ordinary,
    };
    Ok(verdict)
}

pub(super) fn judge_git(args: &[String]) -> Result<Verdict, Refusal> {
    // Options that change configuration or leave the root: global ones
    // before the subcommand (after it `-c` is `switch -c`), the others
    // anywhere. (What a repository's own config names, filters and textconv
    // drivers alike, the kernel refuses to execute.)
    const GLOBAL: &[&str] = &[
        "-c",
        "-C",
        "--config-env",
        "--exec-path",
        "--git-dir",
        "--work-tree",
        "--namespace",
        "--super-prefix",
    ];
    const ANYWHERE: &[&str] = &[
        "--upload-pack",
        "--receive-pack",
        "--ext-diff",
        "--output",
        "-o",
        "--no-index",
        "-O",
        "--open-files-in-pager",
        "--contents",
    ];
    let subcommand_at = args
        .iter()
        .position(|a| !a.starts_with('-'))
        .unwrap_or(args.len());
    let matches = |a: &str, f: &str| {
        let short = f.len() == 2 && !a.starts_with("--");
        // `-Ocmd` and `-c x=y` alike: a short option takes its value attached.
        a == f || a.starts_with(&format!("{f}=")) || (short && a.starts_with(f))
    };
    if let Some(bad) = args.iter().enumerate().find_map(|(i, a)| {
        let global = i < subcommand_at && GLOBAL.iter().any(|f| matches(a, f));
        (global || ANYWHERE.iter().any(|f| matches(a, f))).then_some(a)
    }) {
        return Err(refuse(
            "forbidden_flag",
            format!("`git {bad}` can run programs or escape the working root and is not allowed"),
        ));
    }
    let Some(position) = args.iter().position(|a| !a.starts_with('-')) else {
        return if matches!(args, [only] if only == "--version") {
            Ok(Verdict::Ordinary)
        } else {
            Err(refuse("program_not_allowed", "`git` needs a subcommand"))
        };
    };
    let subcommand = args[position].as_str();
    let rest = &args[position + 1..];
    let flag = |names: &[&str]| rest.iter().any(|a| names.contains(&a.as_str()));
    let short = |c: char| short_flags(rest).any(|f| f == c);
    // Destructive means irreversible loss: work that no commit or reflog
    // keeps. Everything else in a repository is ordinary.
    let loss: Option<&str> = match subcommand {
        "reset" if flag(&["--hard", "--merge", "--keep"]) => {
            Some("discards uncommitted changes (`git reset --hard`)")
        }
        "clean" if !(short('n') || flag(&["--dry-run"])) => Some("deletes untracked files"),
        "checkout" | "restore" => {
            let staged_only = subcommand == "restore"
                && (short('S') || flag(&["--staged"]))
                && !(short('W') || flag(&["--worktree"]));
            (!staged_only).then_some("can overwrite uncommitted changes in the working tree")
        }
        "switch" if short('f') || flag(&["--force", "--discard-changes"]) => {
            Some("discards uncommitted changes")
        }
        "push"
            if short('f')
                || short('d')
                || flag(&["--force", "--delete", "--mirror", "--prune"])
                || rest
                    .iter()
                    .any(|a| a.starts_with("--force-with-lease") || a.starts_with('+')) =>
        {
            Some("rewrites or deletes remote history")
        }
        "branch" if short('D') || (flag(&["--delete"]) && flag(&["--force"])) => {
            Some("deletes an unmerged branch")
        }
        "tag" if short('d') || flag(&["--delete"]) => Some("deletes tags"),
        "stash" if matches!(rest.first().map(String::as_str), Some("drop" | "clear")) => {
            Some("drops stashed changes")
        }
        "rm" if short('f') || flag(&["--force"]) => Some("removes modified files"),
        "reflog" if matches!(rest.first().map(String::as_str), Some("expire" | "delete")) => {
            Some("expires the reflog that recovery depends on")
        }
        "gc" if rest.iter().any(|a| a.starts_with("--prune")) => Some("prunes unreachable objects"),
        "prune" | "filter-branch" | "filter-repo" | "replace" => Some("rewrites or prunes history"),
        "update-ref" if short('d') => Some("deletes a ref"),
        "worktree" if rest.first().is_some_and(|a| a == "remove") && flag(&["--force", "-f"]) => {
            Some("removes a worktree with its changes")
        }
        _ => None,
    };
    Ok(match loss {
        Some(why) => Verdict::Destructive(format!("`git {subcommand}` {why}")),
        None => Verdict::Ordinary,
    })
}

/// The arguments that can name a file: `PATH`, `--opt=PATH`, `-oPATH`
/// (even without a slash: `cp -t..`), `if=PATH` and the operand `if=PATH`
/// itself, and after `--` every argument whole (`cat -- -x/y`).
/// Programs whose arguments are never paths name none.
pub(super) fn path_arguments<'a>(name: &str, args: &'a [String]) -> Vec<&'a str> {
    if NO_PATH_PROGRAMS.contains(&name) {
        return Vec::new();
    }
    let mut paths = Vec::new();
    let mut operands = false;
    for arg in args {
        if operands {
            paths.push(arg.as_str());
        } else if arg == "--" {
            operands = true;
        } else if let Some(rest) = arg.strip_prefix("--") {
            paths.extend(rest.split_once('=').map(|(_, v)| v));
        } else if let Some(attached) = arg
            .strip_prefix('-')
            .and_then(|r| r.char_indices().nth(1).map(|(i, _)| &r[i..]))
        {
            paths.push(attached);
        } else if !arg.starts_with('-') {
            // A file may be named `if=x` (a link, even), so both count.
            paths.push(arg.as_str());
            paths.extend(
                arg.split_once('=')
                    .filter(|(k, _)| !k.contains('/'))
                    .map(|(_, v)| v),
            );
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

/// The argv as a human would type it, for summaries only (never executed).
pub(super) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
