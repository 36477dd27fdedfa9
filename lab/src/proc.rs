//! Child processes that are stopped when their guard goes away.
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A started child process. Dropping it stops the process (SIGTERM, then
/// SIGKILL after 2 s) and reaps it, so no exit path leaves it running.
pub struct Proc {
    /// `None` once detached.
    child: Option<Child>,
    /// Set once the process has been reaped.
    status: Option<ExitStatus>,
    /// The command line, for messages.
    line: String,
}

impl Proc {
    /// Spawns `cmd` in a process group of its own, so that a Ctrl-C at the
    /// terminal reaches only the controlling program, which then stops its
    /// children in order (the balancer before the lab, for instance).
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let line = format!("{cmd:?}");
        let child = cmd.process_group(0).spawn().with_context(|| format!("starting {line}"))?;
        Ok(Proc { child: Some(child), status: None, line })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The read end of the child's stdout, if it was set to
    /// `Stdio::piped()` (read it after the process exited, or concurrently).
    pub fn stdout(&mut self) -> Option<&mut std::process::ChildStdout> {
        self.child.as_mut()?.stdout.as_mut()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait()?;
            }
        }
        Ok(self.status)
    }

    /// Waits for the process to exit by itself, at most `limit`; `None` if
    /// it still runs.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the process to stop with SIGTERM, waits up to `grace`, then
    /// kills it; returns its exit status. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let child = self.child.as_mut().context("process was detached")?;
        // The child is not reaped yet, so the pid is still ours.
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        let child = self.child.as_mut().context("process was detached")?;
        child.kill()?;
        let status = child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM without waiting (see [`Proc::wait_timeout`]); nothing
    /// if it has exited already.
    pub fn terminate(&mut self) -> Result<()> {
        if self.try_wait()?.is_none() {
            let child = self.child.as_ref().context("process was detached")?;
            // Not reaped yet, so the pid is still ours.
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        }
        Ok(())
    }

    /// Kills the process with SIGKILL, as a crash would (no cleanup of its
    /// own), and reaps it; returns its exit status. Idempotent.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let child = self.child.as_mut().context("process was detached")?;
        child.kill()?;
        let status = child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Forgets the process without stopping it (it keeps running after
    /// this program exits).
    pub(crate) fn detach(mut self) {
        self.child = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() && self.status.is_none() {
            if let Err(e) = self.stop(Duration::from_secs(2)) {
                eprintln!("fulcrum-lab: stopping {}: {e:#}", self.line);
            }
        }
    }
}

/// Stops a process this program did not start (a backend of a lab brought
/// up by another process), but only if its command line still contains
/// `expect`: a recorded pid may have been reused since. SIGTERM, then
/// SIGKILL after `grace`. A pid that is gone is fine.
pub(crate) fn stop_foreign(pid: i32, expect: &str, grace: Duration) {
    let is_ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(expect))
        .unwrap_or(false);
    if pid <= 0 || !is_ours {
        return;
    }
    // Gone, or a zombie waiting for whoever inherited it to reap it: either
    // way it has let go of its sockets and its namespace.
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
    };
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if exited() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}
