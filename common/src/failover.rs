//! Which members of a pool take new traffic when some of them cannot:
//! Apache mod_proxy_balancer's load balancer sets (`lbset`), hot spares
//! (status `R`) and hot standbys (status `H`).
//!
//! One pure rule, used by the effective state (for the L4 datapath) and by
//! the L7 proxy (which adds what only it observes: passive errors and the
//! members already tried for a request), so that both paths agree.
//!
//! The rule is Apache 2.4's `ap_proxy_balancer_get_best_worker`:
//!
//! 1. Sets are tried in increasing `lbset` order; the first set that yields
//!    a candidate is used and higher sets get nothing.
//! 2. Within a set, every usable *active* member (neither spare nor
//!    standby) is a candidate.
//! 3. Each active member of the set that is not usable (down, disabled,
//!    stopped, draining, in error) is replaced by one usable hot spare of
//!    the set, in configuration order: `k` unusable actives bring in the
//!    first `k` usable spares.
//! 4. Only when 2 and 3 give no candidate are the set's usable hot standbys
//!    candidates (all of them).
//!
//! "Usable" here means "may take a new request": a draining member counts
//! as unusable (a spare replaces it) even though its sticky sessions stay.
//! This module needs no allocation: a [`Rotation`] is three words, and
//! membership is decided per member.

/// A member's part in failover (Apache status flags `R` and `H`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// An ordinary member: takes traffic whenever it is usable.
    #[default]
    Active,
    /// Hot spare (`R`): replaces an unusable active member of its set,
    /// one for one.
    HotSpare,
    /// Hot standby (`H`): takes traffic only when no active member or
    /// spare of its set can.
    HotStandby,
}

/// The members that take new traffic now, as [`rotation`] computed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The set in use.
    pub lbset: u8,
    /// Spares of the set with an index below this (and usable) are in.
    pub spares_below: usize,
    /// The set's usable standbys are in (and, then, nothing else is).
    pub standby: bool,
}

impl Rotation {
    /// Whether member `index`, with `lbset`, `role`, and `usable` as given
    /// to [`rotation`], takes new traffic.
    pub fn contains(&self, index: usize, lbset: u8, role: Role, usable: bool) -> bool {
        usable
            && lbset == self.lbset
            && match role {
                Role::Active => !self.standby,
                Role::HotSpare => !self.standby && index < self.spares_below,
                Role::HotStandby => self.standby,
            }
    }
}

/// Applies the rule of the module docs to a pool of `n` members, given
/// each member's set, role and whether it is usable (takes new traffic).
/// `None`: no member of any set can take traffic.
pub fn rotation(
    n: usize,
    lbset: impl Fn(usize) -> u8,
    role: impl Fn(usize) -> Role,
    usable: impl Fn(usize) -> bool,
) -> Option<Rotation> {
    let mut set = (0..n).map(&lbset).min()?;
    loop {
        let mut unusable = 0usize;
        let mut active = false;
        for i in (0..n).filter(|&i| lbset(i) == set && role(i) == Role::Active) {
            if usable(i) {
                active = true;
            } else {
                unusable += 1;
            }
        }
        let mut spares_below = 0;
        let mut taken = 0;
        for i in (0..n).filter(|&i| lbset(i) == set && role(i) == Role::HotSpare) {
            if taken == unusable {
                break;
            }
            if usable(i) {
                taken += 1;
                spares_below = i + 1;
            }
        }
        if active || taken > 0 {
            return Some(Rotation { lbset: set, spares_below, standby: false });
        }
        if (0..n).any(|i| lbset(i) == set && role(i) == Role::HotStandby && usable(i)) {
            return Some(Rotation { lbset: set, spares_below: 0, standby: true });
        }
        set = (0..n).map(&lbset).filter(|&s| s > set).min()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (lbset, role, usable) per member; returns the members in rotation.
    fn members_in(pool: &[(u8, Role, bool)]) -> [bool; 8] {
        let r = rotation(pool.len(), |i| pool[i].0, |i| pool[i].1, |i| pool[i].2);
        let mut out = [false; 8];
        if let Some(r) = r {
            for (i, &(s, role, u)) in pool.iter().enumerate() {
                out[i] = r.contains(i, s, role, u);
            }
        }
        out
    }

    fn first(n: usize, bits: &[bool; 8]) -> [bool; 8] {
        let mut o = [false; 8];
        o[..n].copy_from_slice(&bits[..n]);
        o
    }

    const A: Role = Role::Active;
    const R: Role = Role::HotSpare;
    const H: Role = Role::HotStandby;

    #[test]
    fn spares_replace_failed_members_one_for_one() {
        let t = [true; 8];
        // All actives up: spares and standby idle.
        let all = members_in(&[(0, A, true), (0, A, true), (0, R, true), (0, R, true), (0, H, true)]);
        assert_eq!(all, first(2, &t));
        // One active down: the first usable spare replaces it.
        let one = members_in(&[(0, A, false), (0, A, true), (0, R, true), (0, R, true), (0, H, true)]);
        assert_eq!(&one[..5], &[false, true, true, false, false]);
        // Both down: both spares; the first spare down: the second.
        let two = members_in(&[(0, A, false), (0, A, false), (0, R, true), (0, R, true), (0, H, true)]);
        assert_eq!(&two[..5], &[false, false, true, true, false]);
        let skip = members_in(&[(0, A, false), (0, A, true), (0, R, false), (0, R, true), (0, H, true)]);
        assert_eq!(&skip[..5], &[false, true, false, true, false]);
    }

    #[test]
    fn standbys_only_when_nothing_else_is_usable() {
        let p = members_in(&[(0, A, false), (0, R, false), (0, H, true), (0, H, true)]);
        assert_eq!(&p[..4], &[false, false, true, true]);
        // A usable spare with nothing to replace is not used, standbys are.
        let p = members_in(&[(0, R, true), (0, H, true)]);
        assert_eq!(&p[..2], &[false, true]);
        assert_eq!(rotation(2, |_| 0, |_| H, |_| false), None);
        assert_eq!(rotation(0, |_| 0, |_| A, |_| true), None);
    }

    #[test]
    fn lowest_usable_set_wins() {
        // Set 0 up: set 1 idle even if larger.
        let p = members_in(&[(1, A, true), (0, A, true), (1, A, true)]);
        assert_eq!(&p[..3], &[false, true, false]);
        // Set 0 entirely down (its standby too): set 1 takes over.
        let p = members_in(&[(1, A, true), (0, A, false), (1, A, true), (0, H, false)]);
        assert_eq!(&p[..4], &[true, false, true, false]);
        // Set 0's standby is preferred to set 1 (standbys are per set).
        let p = members_in(&[(1, A, true), (0, A, false), (0, H, true)]);
        assert_eq!(&p[..3], &[false, false, true]);
        // Sets need not start at 0 or be contiguous.
        let p = members_in(&[(7, A, true), (3, A, false), (5, A, true)]);
        assert_eq!(&p[..3], &[false, false, true]);
    }
}
