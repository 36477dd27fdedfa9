//! Members and failover, as in mod_proxy_balancer: status flags, `lbset`,
//! hot spares and standbys, passive health (In error, `E`), slow start,
//! and the choice of another member for a retry.
//!
//! # What decides whether a member takes a new request
//!
//! A member takes a *new* request (one that names no sticky route) when
//! all of these hold:
//!
//! - [`Member::usable`]: the control plane lets it take traffic (healthy,
//!   not disabled `D`, not stopped `S`);
//! - not [`Member::draining`] (status `N` or weight 0) and weight above 0;
//! - not In error (`E`) now ([`PassiveState::in_error`]), unless every
//!   member of the pool is (Apache's `forcerecovery`, on by default there:
//!   a pool whose members all had errors is retried rather than answering
//!   503 for the whole `retry` time);
//! - not already tried for this request (see [Retries](#retries));
//! - it is in the rotation that [`fulcrum_common::failover`] computes from
//!   the above: the lowest `lbset` with a usable member; in it every usable
//!   active member, one usable hot spare (`R`) per active member that is
//!   not usable (down, `D`, `S`, draining, `E`, tried), and the hot
//!   standbys (`H`) only when nothing else of the set is usable.
//!
//! Then the pool's method ([`crate::balancer`]) picks among those. The
//! control plane's effective state applies the same rule for the L4
//! datapath from what it observes; the proxy reapplies it per request
//! because it also sees `E` and the members tried.
//!
//! A request that names a member through its sticky session goes to it
//! when [`Member::takes_sessions`] (usable and not `E`): draining, spares
//! and standbys keep their sessions; otherwise it fails over (or 503 with
//! `nofailover`).
//!
//! # Passive health
//!
//! With [`Pool::passive`] set, the proxy reports each exchange's outcome
//! ([`Pool::observe`]): connect failures and broken exchanges (including a
//! response body cut short) always count as failures, a response timeout with [`PassiveConfig::failontimeout`],
//! a response status listed in [`PassiveConfig::failonstatus`]. When
//! [`PassiveConfig::error_limit`] failures fall within
//! [`PassiveConfig::error_window_ms`], the member is In error for
//! [`PassiveConfig::retry_ms`] (Apache `retry=`, HAProxy `observe layer7`
//! with `error-limit`), then takes traffic again (with slow start, if the
//! pool has it). This is the L7 proxy's own judgement: `E` does not take
//! the member out of L4 VIPs, which follow the active checks only (a
//! member failing HTTP requests may still serve its TCP VIP), and it does
//! not change the member's active health.
//!
//! The state lives in [`PassiveState`], inside the member's
//! [`MemberStats`] (shared by every worker and kept across snapshots):
//! a ring of the last `error_limit` failure times and the end of the error
//! interval, all atomics. A successful exchange touches none of it; the
//! request path reads one atomic per member to know whether it is In error.
//!
//! # Slow start
//!
//! With [`Member::slow_start_ms`] (the pool's `slow_start`, HAProxy's
//! `slowstart`), a member that comes back (usable again after being
//! unusable, or at the end of an `E` interval) has its weight ramped
//! linearly from 1/[`WEIGHT_SCALE`] of its weight to all of it over that
//! time ([`effective_weight`]). A member that is usable when first seen
//! (the proxy's start, a member added by a reload) starts at full weight,
//! as HAProxy does not slow-start at startup. It applies to `byrequests`,
//! `bybusyness` (ties), `bytraffic` and `p2c`; not to `byip`, whose point
//! is that a client's member does not change while the pool does not.
//!
//! # Retries
//!
//! To try another member after a failure, the proxy passes an
//! `eligible` predicate that excludes the members already tried (a
//! [`Tried`] set) to [`crate::Balancer::pick`] (through the worker's
//! balancer for the pool). A tried member counts as unusable for the
//! failover rule, so a hot spare replaces it and standbys or the next
//! `lbset` serve when everything else was tried. `None` means no member is
//! left: answer 502.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

pub use fulcrum_common::failover::Role;

#[allow(unused_imports)] // MemberStats: named in the docs
use crate::snapshot::{clock_ms64, Member, MemberStats, Pool};

/// Balancers work on weights scaled by this (HAProxy's `BE_WEIGHT_SCALE`),
/// so that slow start can ramp even a weight-1 member in 16 steps.
pub const WEIGHT_SCALE: u64 = 16;

/// Largest [`PassiveConfig::error_limit`]: the size of the failure ring.
pub const MAX_ERROR_LIMIT: u32 = 32;

/// Passive health settings of a pool (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Response statuses counted as failures (Apache `failonstatus=`).
    pub failonstatus: Vec<u16>,
    /// A response timeout counts as a failure (Apache `failontimeout=`).
    pub failontimeout: bool,
    /// Failures within `error_window_ms` that put a member In error,
    /// 1..=[`MAX_ERROR_LIMIT`] (larger values are clamped).
    pub error_limit: u32,
    /// The window, in milliseconds.
    pub error_window_ms: u64,
    /// How long a member stays In error, in milliseconds (Apache `retry=`).
    pub retry_ms: u64,
}

/// What happened to one exchange with a member, as the proxy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection: refused, unreachable, or the connect timeout.
    ConnectFailed,
    /// The exchange broke (reset, closed, invalid response).
    Broken,
    /// No response head within the response timeout (504).
    Timeout,
    /// A response head with this status arrived.
    Status(u16),
}

/// A member's passive health and comeback state, shared by all workers
/// (see the module docs). Times are milliseconds of [`clock_ms64`], stored
/// plus one so that 0 means "none".
#[derive(Debug)]
pub struct PassiveState {
    /// The last failure times, a ring of `error_limit` slots.
    failures: [AtomicU64; MAX_ERROR_LIMIT as usize],
    next: AtomicU32,
    /// The end of the current or last In error interval (+1), or 0.
    error_until: AtomicU64,
    /// Times the member was put In error.
    entered: AtomicU64,
    /// 0: never usable yet; 1: usable; 2: unusable after being usable.
    usable: AtomicU8,
    /// When it last became usable again (+1), or 0.
    back_since: AtomicU64,
}

impl Default for PassiveState {
    fn default() -> Self {
        PassiveState {
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            next: AtomicU32::new(0),
            error_until: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            usable: AtomicU8::new(0),
            back_since: AtomicU64::new(0),
        }
    }
}

impl PassiveState {
    /// Whether the member is In error at `now_ms`.
    pub fn in_error(&self, now_ms: u64) -> bool {
        let until = self.error_until.load(Ordering::Relaxed);
        until != 0 && now_ms + 1 < until
    }

    /// Whether it is In error now. Reads the clock only if it has ever
    /// been In error, so the request path of a healthy pool pays one
    /// atomic load.
    pub fn in_error_now(&self) -> bool {
        self.error_until.load(Ordering::Relaxed) != 0 && self.in_error(clock_ms64())
    }

    /// Whether the member was ever In error (one atomic load: lets a
    /// healthy pool skip the clock).
    pub fn ever_in_error(&self) -> bool {
        self.error_until.load(Ordering::Relaxed) != 0
    }

    /// Milliseconds of In error left at `now_ms` (0 when not In error).
    pub fn error_remaining_ms(&self, now_ms: u64) -> u64 {
        let until = self.error_until.load(Ordering::Relaxed);
        until.saturating_sub(now_ms + 1)
    }

    /// How many times the member was put In error.
    pub fn times_in_error(&self) -> u64 {
        self.entered.load(Ordering::Relaxed)
    }

    /// Records a failure at `now_ms`; returns true when this one put the
    /// member In error.
    pub fn record_failure(&self, cfg: &PassiveConfig, now_ms: u64) -> bool {
        let limit = cfg.error_limit.clamp(1, MAX_ERROR_LIMIT);
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % limit;
        let stamp = now_ms + 1;
        self.failures[slot as usize].store(stamp, Ordering::Relaxed);
        let recent = self.failures[..limit as usize]
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|&t| t != 0 && stamp - t.min(stamp) <= cfg.error_window_ms)
            .count();
        if recent < limit as usize {
            return false;
        }
        let old = self.error_until.load(Ordering::Relaxed);
        if old != 0 && stamp < old {
            return false; // already In error
        }
        // One worker wins the transition (and counts it).
        if self
            .error_until
            .compare_exchange(old, stamp + cfg.retry_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.entered.fetch_add(1, Ordering::Relaxed);
        // Failures before the error interval do not count after it.
        for f in &self.failures {
            f.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Tells the state whether the control plane lets the member take
    /// traffic in the snapshot being published at `now_ms`; a change from
    /// unusable to usable starts its slow start.
    pub fn track_usable(&self, usable: bool, now_ms: u64) {
        let was = self.usable.load(Ordering::Relaxed);
        match (was, usable) {
            (0, true) => self.usable.store(1, Ordering::Relaxed),
            (2, true) => {
                self.back_since.store(now_ms + 1, Ordering::Relaxed);
                self.usable.store(1, Ordering::Relaxed);
            }
            (1, false) => self.usable.store(2, Ordering::Relaxed),
            _ => {}
        }
    }

    /// When the member last came back (usable again, or the end of an
    /// In error interval), if it has, as of `now_ms`.
    pub fn back_since(&self, now_ms: u64) -> Option<u64> {
        let back = self.back_since.load(Ordering::Relaxed);
        let err = self.error_until.load(Ordering::Relaxed);
        let err = if err != 0 && err <= now_ms + 1 { err } else { 0 };
        let t = back.max(err);
        (t != 0).then(|| t - 1)
    }
}

/// The weight, scaled by [`WEIGHT_SCALE`], that weighted methods use for
/// `m` at `now_ms`: its configured weight, ramped over
/// [`Member::slow_start_ms`] after it came back, never below 1 (a member
/// that takes traffic at all takes some).
pub fn effective_weight(m: &Member, now_ms: u64) -> u64 {
    let full = u64::from(m.weight) * WEIGHT_SCALE;
    if m.slow_start_ms == 0 || full == 0 {
        return full;
    }
    let Some(since) = m.stats.passive.back_since(now_ms) else {
        return full;
    };
    let elapsed = now_ms.saturating_sub(since);
    let ramp = u64::from(m.slow_start_ms);
    if elapsed >= ramp {
        full
    } else {
        (full * elapsed / ramp).max(1)
    }
}

/// [`effective_weight`] at the current time, reading the clock only for a
/// member with slow start.
pub fn weight_now(m: &Member) -> u64 {
    if m.slow_start_ms == 0 {
        u64::from(m.weight) * WEIGHT_SCALE
    } else {
        effective_weight(m, clock_ms64())
    }
}

impl Member {
    /// Whether a request naming this member (sticky session) may go to it:
    /// usable and not In error. Draining, spare and standby members keep
    /// their sessions.
    pub fn takes_sessions(&self) -> bool {
        self.usable && !self.stats.passive.in_error_now()
    }
}

impl Pool {
    /// Reports the outcome of an exchange with member `member` (an index
    /// into [`Pool::members`]) to passive health; returns true when it put
    /// the member In error. Does nothing without [`Pool::passive`].
    pub fn observe(&self, member: usize, outcome: Outcome) -> bool {
        let (Some(cfg), Some(m)) = (self.passive.as_ref(), self.members.get(member)) else {
            return false;
        };
        let failed = match outcome {
            Outcome::ConnectFailed | Outcome::Broken => true,
            Outcome::Timeout => cfg.failontimeout,
            Outcome::Status(s) => cfg.failonstatus.contains(&s),
        };
        if !failed {
            return false;
        }
        let entered = m.stats.passive.record_failure(cfg, clock_ms64());
        if entered {
            tracing::warn!(
                pool = %self.name, member = %m.address, ?outcome, retry_ms = cfg.retry_ms,
                "member In error (passive health): {} failures within {} ms",
                cfg.error_limit, cfg.error_window_ms
            );
        }
        entered
    }

    /// Tells each member's [`PassiveState`] whether it is usable in this
    /// pool as about to be published (starts slow start for those coming
    /// back). The control plane calls it through [`publish`].
    pub fn track_usable(&self, now_ms: u64) {
        for m in &self.members {
            m.stats.passive.track_usable(m.usable, now_ms);
        }
    }
}

/// Stores `snapshot` in `shared` after noting which members came back
/// (for slow start). The way for the control plane to publish.
pub fn publish(shared: &crate::SharedSnapshot, snapshot: crate::Snapshot) {
    let now = clock_ms64();
    for p in &snapshot.pools {
        p.track_usable(now);
    }
    shared.store(std::sync::Arc::new(snapshot));
}

/// The members already tried for one request: a bit set over the pool's
/// `members` indices, without allocation for pools of up to 128 members.
/// Indices out of range are never members.
#[derive(Debug, Clone)]
pub struct Tried {
    len: usize,
    small: u128,
    large: Vec<bool>,
}

impl Tried {
    /// An empty set for a pool of `members` members.
    pub fn new(members: usize) -> Tried {
        Tried {
            len: members,
            small: 0,
            large: if members > 128 { vec![false; members] } else { Vec::new() },
        }
    }

    /// Marks member `i` tried.
    pub fn insert(&mut self, i: usize) {
        if i >= self.len {
        } else if self.len <= 128 {
            self.small |= 1 << i;
        } else {
            self.large[i] = true;
        }
    }

    /// Whether member `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        if i >= self.len {
            false
        } else if self.len <= 128 {
            self.small & (1 << i) != 0
        } else {
            self.large[i]
        }
    }

    /// Whether any member was tried.
    pub fn any(&self) -> bool {
        self.small != 0 || self.large.contains(&true)
    }
}

/// Whether a pool uses no failover roles at all (one `lbset`, no spare or
/// standby): then the rotation is every usable member and the per-request
/// rule can be skipped.
pub fn is_flat(members: &[Member]) -> bool {
    members
        .first()
        .is_none_or(|f| members.iter().all(|m| m.role == Role::Active && m.lbset == f.lbset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(limit: u32, window_ms: u64, retry_ms: u64) -> PassiveConfig {
        PassiveConfig {
            failonstatus: vec![503],
            failontimeout: false,
            error_limit: limit,
            error_window_ms: window_ms,
            retry_ms,
        }
    }

    #[test]
    fn n_failures_in_the_window_put_a_member_in_error_for_retry() {
        let s = PassiveState::default();
        let c = cfg(3, 1_000, 5_000);
        assert!(!s.record_failure(&c, 100));
        assert!(!s.record_failure(&c, 200));
        // The first failure leaves the window before the third arrives.
        assert!(!s.record_failure(&c, 1_150));
        assert!(!s.in_error(1_150));
        // Three within 1 s (200, 1150, 1190): In error until 1190 + 5000.
        assert!(s.record_failure(&c, 1_190));
        assert!(s.in_error(1_190) && s.in_error(6_189));
        assert_eq!(s.error_remaining_ms(1_190), 5_000);
        assert!(!s.in_error(6_190));
        assert_eq!(s.times_in_error(), 1);
        // Failures while In error do not extend it.
        assert!(!s.record_failure(&c, 2_000));
        // The ring was cleared: after retry, three new failures are needed.
        assert!(!s.record_failure(&c, 6_200));
        assert!(!s.record_failure(&c, 6_300));
        assert!(s.record_failure(&c, 6_400));
        assert_eq!(s.times_in_error(), 2);
        // A limit of 1 is Apache's: one failure.
        let s = PassiveState::default();
        assert!(s.record_failure(&cfg(1, 1, 60_000), 0));
    }

    #[test]
    fn slow_start_ramps_after_a_comeback_but_not_at_start() {
        let mut m = Member::new("127.0.0.1:1".parse().unwrap(), 4);
        m.slow_start_ms = 10_000;
        let p = &m.stats.passive;
        // First seen usable: full weight at once.
        p.track_usable(true, 0);
        assert_eq!(effective_weight(&m, 1), 4 * WEIGHT_SCALE);
        // Down, then back at t=100 s: ramps over 10 s.
        p.track_usable(false, 50_000);
        p.track_usable(true, 100_000);
        assert_eq!(effective_weight(&m, 100_000), 1);
        assert_eq!(effective_weight(&m, 102_500), WEIGHT_SCALE);
        assert_eq!(effective_weight(&m, 105_000), 2 * WEIGHT_SCALE);
        assert_eq!(effective_weight(&m, 110_000), 4 * WEIGHT_SCALE);
        // The end of an In error interval is a comeback too.
        let c = cfg(1, 1_000, 1_000);
        p.record_failure(&c, 200_000);
        assert_eq!(effective_weight(&m, 201_001 + 5_000), 2 * WEIGHT_SCALE);
        // Without slow start the weight is constant.
        m.slow_start_ms = 0;
        assert_eq!(effective_weight(&m, 201_001), 4 * WEIGHT_SCALE);
    }

    #[test]
    fn outcomes_count_as_configured() {
        let mut pool = Pool::new("p", crate::LbMethod::ByRequests, vec![Member::new("127.0.0.1:1".parse().unwrap(), 1)]);
        // Without passive health nothing counts.
        assert!(!pool.observe(0, Outcome::ConnectFailed));
        pool.passive = Some(cfg(1, 1_000, 60_000));
        assert!(!pool.observe(0, Outcome::Status(500)));
        assert!(!pool.observe(0, Outcome::Status(200)));
        assert!(!pool.observe(0, Outcome::Timeout));
        assert!(!pool.observe(7, Outcome::Broken)); // no such member
        assert!(pool.observe(0, Outcome::Status(503)));
        assert!(!pool.members[0].takes_sessions());
        let mut pool = Pool::new("q", crate::LbMethod::ByRequests, vec![Member::new("127.0.0.1:1".parse().unwrap(), 1)]);
        pool.passive = Some(PassiveConfig { failontimeout: true, ..cfg(1, 1_000, 60_000) });
        assert!(pool.observe(0, Outcome::Timeout));
        let mut pool = Pool::new("r", crate::LbMethod::ByRequests, vec![Member::new("127.0.0.1:1".parse().unwrap(), 1)]);
        pool.passive = Some(cfg(1, 1_000, 60_000));
        assert!(pool.observe(0, Outcome::ConnectFailed));
    }

    #[test]
    fn tried_sets() {
        for n in [3, 200] {
            let mut t = Tried::new(n);
            assert!(!t.any());
            t.insert(2);
            assert!(t.any() && t.contains(2) && !t.contains(1));
            t.insert(n + 5); // out of range: ignored
            assert!(!t.contains(n + 5));
        }
    }
}
