//! Running things inside a network namespace: commands through
//! `ip netns exec`, closures on a thread that has `setns`-ed.
use std::ffi::OsStr;
use std::fs::File;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// A command that runs `program` inside the named network namespace via
/// `ip netns exec` (which also remounts `/sys` for that namespace, so tools
/// reading `/sys/class/net` see its interfaces). `ip` execs the program,
/// so a spawned child's pid is the program's own.
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Runs `cmd` to completion and returns its stdout; a failure to start or
/// a non-zero exit is an error carrying the command line and its stderr.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!("{line} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a new thread that has joined the network namespace `ns`
/// (by its name under /run/netns) and returns what `f` returns. Sockets
/// opened by `f` belong to that namespace; the calling thread's namespace
/// is untouched. A panic in `f` is resumed on the caller.
pub fn in_netns<F, R>(ns: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<R> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| anyhow!("setns into {ns}: {e}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(res) => res,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
