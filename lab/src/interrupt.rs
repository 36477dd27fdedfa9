//! Ctrl-C handling for long-running lab programs (the demo): SIGINT and
//! SIGTERM only raise a flag, so the program notices it at its next wait,
//! returns an error, and its guards tear the lab down in order.
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers that set the flag.
pub fn install() -> Result<()> {
    // SA_RESTART: a blocking read in progress carries on; waits poll the flag.
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &action)? };
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived after [`install`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Errors if interrupted; call it in every wait loop.
pub fn check() -> Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
