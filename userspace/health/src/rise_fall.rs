//! Rise/fall hysteresis: when a series of check results changes a backend's
//! health.
//!
//! The semantics are those of HAProxy (`rise`/`fall` on `server`) and Apache
//! `mod_proxy_hcheck` (`hcpasses`/`hcfails`):
//!
//! - The health starts unknown. The **first** result decides at once (a
//!   pass makes the backend UP, a failure DOWN), so a daemon that starts
//!   does not hold every backend out for `rise` × interval.
//! - After that, a DOWN backend goes UP after `rise` consecutive passes, and
//!   an UP backend goes DOWN after `fall` consecutive failures.
//! - A result that agrees with the current health resets the count: an UP
//!   backend that fails twice, passes once, then fails twice more with
//!   `fall` = 3 stays UP.

use std::fmt;


/// A backend's health as decided by its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Passing: may receive traffic.
    Up,
    /// Failing: receives no new traffic.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "UP",
            Health::Down => "DOWN",
        })
    }
}

/// The rise/fall state machine of one backend (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    health: Option<Health>,
    /// Consecutive results against `health` so far.
    streak: u32,
}

impl RiseFall {
    /// A machine in the unknown state. `rise`: consecutive passes that
    /// bring a DOWN backend UP; `fall`: consecutive failures that take an UP
    /// backend DOWN. 0 is treated as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            health: None,
            streak: 0,
        }
    }

    /// Records one check result (`ok`: the check passed). Returns the new
    /// health when it changed, including the first determination.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        let seen = if ok { Health::Up } else { Health::Down };
        let Some(current) = self.health else {
            self.health = Some(seen);
            return Some(seen);
        };
        if seen == current {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match seen {
            Health::Up => self.rise,
            Health::Down => self.fall,
        };
        if self.streak < needed {
            return None;
        }
        self.health = Some(seen);
        self.streak = 0;
        Some(seen)
    }

    /// The current health; `None` until the first result.
    pub fn health(&self) -> Option<Health> {
        self.health
    }

    /// Consecutive passes needed to go UP (at least 1).
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// Consecutive failures needed to go DOWN (at least 1).
    pub fn fall(&self) -> u32 {
        self.fall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(machine: &mut RiseFall, results: &str) -> Vec<Option<Health>> {
        results.chars().map(|c| machine.observe(c == '+')).collect()
    }

    #[test]
    fn first_result_decides_immediately() {
        assert_eq!(RiseFall::new(3, 3).observe(true), Some(Health::Up));
        let mut m = RiseFall::new(3, 3);
        assert_eq!(m.health(), None);
        assert_eq!(m.observe(false), Some(Health::Down));
        assert_eq!(m.health(), Some(Health::Down));
    }

    #[test]
    fn fall_then_rise() {
        use Health::*;
        let mut m = RiseFall::new(2, 3);
        assert_eq!(run(&mut m, "+---"), [Some(Up), None, None, Some(Down)]);
        assert_eq!(run(&mut m, "-++"), [None, None, Some(Up)]);
    }

    #[test]
    fn a_result_against_the_trend_resets_the_count() {
        use Health::*;
        let mut m = RiseFall::new(2, 3);
        assert_eq!(
            run(&mut m, "+--+--"),
            [Some(Up), None, None, None, None, None]
        );
        assert_eq!(m.health(), Some(Up));
        assert_eq!(m.observe(false), Some(Down));
        assert_eq!(run(&mut m, "+-+-"), [None; 4]);
        assert_eq!(m.health(), Some(Down));
        assert_eq!(run(&mut m, "++"), [None, Some(Up)]);
    }

    #[test]
    fn zero_counts_mean_one() {
        use Health::*;
        let mut m = RiseFall::new(0, 0);
        assert_eq!((m.rise(), m.fall()), (1, 1));
        assert_eq!(run(&mut m, "+-+"), [Some(Up), Some(Down), Some(Up)]);
    }
}
