//! Process limits the daemon sets for itself at start.
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the
/// (soft, hard) pair now in force.
///
/// Health checks open one socket per check and the admin API one per
/// client; the common default soft limit of 1024 is far below what the
/// kernel allows (the hard limit, often 524288), and running out makes
/// every health check fail at once, taking every backend down.
///
/// # Errors
/// The kernel refused to read or set the limit.
pub fn raise_open_files() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    getrlimit(Resource::RLIMIT_NOFILE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let (soft, hard) = super::raise_open_files().unwrap();
        assert_eq!(soft, hard);
    }
}
