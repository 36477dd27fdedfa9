//! Choosing a member of a pool: a small pure interface that every
//! balancing method implements.
//!
//! A balancer holds only its own scheduling state (for `byrequests`, the
//! current weights); it reads members' weights and live counters
//! ([`MemberStats`], shared by all workers) from the
//! snapshot it is given and does no I/O, so its distribution is tested
//! without sockets. Each worker thread has its own balancer per pool
//! (thread-per-core: no shared lock on the request path). A new snapshot
//! starts new balancers (scheduling state restarts).
//!
//! | method | picks | source |
//! |---|---|---|
//! | `byrequests` | smooth weighted round robin | nginx |
//! | `bybusyness` | least outstanding requests, ties by `byrequests` | Apache mod_lbmethod_bybusyness |
//! | `bytraffic` | least bytes (sent + received) / weight | Apache mod_lbmethod_bytraffic |
//! | `byip` | weighted rendezvous hash of the client address | Thaler & Ravishankar (HRW) |
//! | `p2c` | best of two random members by Peak-EWMA latency x (outstanding + 1) / weight | Mitzenmacher; Finagle, linkerd |
//!
//! Sticky sessions are not a balancer's business: the proxy honours a
//! route first and asks the balancer only when there is none (or it
//! cannot be honoured); see "Sticky sessions" in the crate docs.
//!
//! Failover is not the methods' business either: [`new_balancer`] wraps
//! every method in the rule of [`crate::members`] (lbset, hot spares and
//! standbys, passive In error, Apache's forcerecovery), which narrows the
//! `eligible` predicate the method sees. Weights are read through
//! [`crate::members::weight_now`] (scaled by
//! [`crate::members::WEIGHT_SCALE`], ramped during slow start), except by
//! `byip`, which hashes by the configured weight.

use std::net::IpAddr;

use fulcrum_common::failover::rotation;

use crate::members::{is_flat, weight_now};
use crate::snapshot::{clock_ms, clock_ms64, LbMethod, Member, MemberStats};

/// Chooses a member for the next request.
pub trait Balancer {
    /// Returns the index (into `members`) of the member to use, among those
    /// for which `eligible(index)` is true, or `None` if there is none.
    /// `client` is the address of the client's TCP connection (what `byip`
    /// hashes; the others ignore it).
    ///
    /// `eligible` lets the caller exclude members already tried for this
    /// request (retry after a connect failure) besides unusable ones; the
    /// caller's predicate decides, so every method excludes the same way.
    fn pick(
        &mut self,
        members: &[Member],
        client: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize>;
}

/// A new balancer for `method` over a pool of `members` members. `seed`
/// seeds `p2c`'s random choices (give each worker its own).
/// The method is wrapped in [`Failover`], so every pick follows the
/// failover rule of [`crate::members`].
pub fn new_balancer(method: LbMethod, members: usize, seed: u64) -> Box<dyn Balancer> {
    let inner: Box<dyn Balancer> = match method {
        LbMethod::ByRequests => Box::new(ByRequests::new(members)),
        LbMethod::ByBusyness => Box::new(ByBusyness::new(members)),
        LbMethod::ByTraffic => Box::new(ByTraffic::new(members)),
        LbMethod::ByIp => Box::new(ByIp),
        LbMethod::P2c => Box::new(P2c::new(seed)),
    };
    Box::new(Failover { inner, flat: None })
}

/// Whether a member may take a new request at all, as far as the snapshot
/// says: usable, not draining, with a weight. Callers add their own
/// conditions (not yet tried); [`Failover`] adds In error and the rotation.
pub fn takes_traffic(m: &Member) -> bool {
    m.usable && !m.draining && m.weight > 0
}

/// A balancing method under the failover rule of [`crate::members`]:
/// the method picks only among the members in the current rotation
/// (lowest usable `lbset`, spares replacing unusable members one for one,
/// standbys last), with members In error left out unless every otherwise
/// eligible member is In error (then they are all tried again, Apache's
/// `forcerecovery`).
pub struct Failover {
    inner: Box<dyn Balancer>,
    /// Whether the pool has a single lbset and no spare or standby (then
    /// the rotation is every usable member). Computed at the first pick:
    /// a balancer serves one snapshot.
    flat: Option<bool>,
}

impl Failover {
    fn pick_with(
        &mut self,
        members: &[Member],
        client: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
        flat: bool,
    ) -> Option<usize> {
        if flat {
            return self.inner.pick(members, client, eligible);
        }
        let ok = |i: usize| takes_traffic(&members[i]) && eligible(i);
        let r = rotation(members.len(), |i| members[i].lbset, |i| members[i].role, ok)?;
        self.inner.pick(members, client, &|i| {
            let m = &members[i];
            r.contains(i, m.lbset, m.role, ok(i))
        })
    }
}

impl Balancer for Failover {
    fn pick(
        &mut self,
        members: &[Member],
        client: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let flat = *self.flat.get_or_insert_with(|| is_flat(members));
        // One clock read, and only for a pool that has known errors.
        let any_error_ever = members.iter().any(|m| m.stats.passive.ever_in_error());
        let now = if any_error_ever { clock_ms64() } else { 0 };
        let in_error = |i: usize| any_error_ever && members[i].stats.passive.in_error(now);
        self.pick_with(members, client, &|i| eligible(i) && !in_error(i), flat)
            .or_else(|| {
                // forcerecovery: everything left is In error.
                let forced = (0..members.len())
                    .any(|i| in_error(i) && takes_traffic(&members[i]) && eligible(i));
                if forced {
                    self.pick_with(members, client, eligible, flat)
                } else {
                    None
                }
            })
    }
}

/// `byrequests`: smooth weighted round robin, as nginx's
/// `ngx_http_upstream_get_peer` does it.
///
/// Each pick adds every eligible member's weight to its current weight,
/// takes the member with the largest current weight (the first on ties),
/// and subtracts the total of the eligible weights from the winner. Over
/// any window of `sum(weights)` picks each member gets exactly its share,
/// and the picks are interleaved (weights 5:1:1 give a a b a c a a rather
/// than a a a a a b c). Members not eligible for a pick are left out of
/// that pick's total, so the others share its traffic by their weights.
#[derive(Debug, Clone)]
pub struct ByRequests {
    current: Vec<i64>,
}

impl ByRequests {
    /// State for a pool of `members` members.
    pub fn new(members: usize) -> ByRequests {
        ByRequests {
            current: vec![0; members],
        }
    }

    fn pick_among(
        &mut self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.current.len() != members.len() {
            // Defensive: the worker rebuilds balancers with each snapshot,
            // so this only happens if a caller mixes pools.
            self.current = vec![0; members.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, m) in members.iter().enumerate() {
            if !takes_traffic(m) || !eligible(i) {
                continue;
            }
            let w = weight_now(m) as i64;
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

impl Balancer for ByRequests {
    fn pick(
        &mut self,
        members: &[Member],
        _: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        self.pick_among(members, eligible)
    }
}

/// `bybusyness`: the member with the fewest outstanding requests
/// ([`MemberStats::outstanding`], summed
/// over all workers); among equally busy members, smooth weighted round
/// robin ([`ByRequests`]) over those members only. This is Apache's
/// mod_lbmethod_bybusyness (lowest `busy`, ties by `lbstatus`, its
/// weighted round robin counter).
///
/// Weight matters only between equally busy members: a member twice as
/// fast finishes requests twice as fast and so is picked about twice as
/// often, whatever its weight. With no concurrency (each request ends
/// before the next starts) it is exactly `byrequests`.
#[derive(Debug, Clone)]
pub struct ByBusyness {
    ties: ByRequests,
}

impl ByBusyness {
    /// State for a pool of `members` members.
    pub fn new(members: usize) -> ByBusyness {
        ByBusyness {
            ties: ByRequests::new(members),
        }
    }
}

impl Balancer for ByBusyness {
    fn pick(
        &mut self,
        members: &[Member],
        _: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let busy = |i: usize| MemberStats::get(&members[i].stats.outstanding);
        let least = (0..members.len())
            .filter(|&i| takes_traffic(&members[i]) && eligible(i))
            .map(busy)
            .min()?;
        // The counter may move between the two reads (other workers); if
        // nobody is left at `least`, fall back to every eligible member.
        self.ties
            .pick_among(members, &|i| eligible(i) && busy(i) <= least)
            .or_else(|| self.ties.pick_among(members, eligible))
    }
}

/// `bytraffic`: the member with the least traffic per unit of weight,
/// `(bytes_sent + bytes_received) / weight` (body bytes, counted by every
/// worker as they flow), as Apache's mod_lbmethod_bytraffic does
/// (`(transferred + read) / lbfactor`). Ties, such as the all-zero start,
/// go by smooth weighted round robin among the tied members.
///
/// Traffic counts from when this balancer was created (the first pick
/// after a snapshot is published): the counters themselves live as long
/// as the member, so without this baseline a member added later (or back
/// from a long outage) would take every request until its total caught up
/// with the others'.
#[derive(Debug, Clone)]
pub struct ByTraffic {
    baseline: Option<Vec<u64>>,
    ties: ByRequests,
}

impl ByTraffic {
    /// State for a pool of `members` members.
    pub fn new(members: usize) -> ByTraffic {
        ByTraffic {
            baseline: None,
            ties: ByRequests::new(members),
        }
    }

    fn total(m: &Member) -> u64 {
        MemberStats::get(&m.stats.bytes_sent) + MemberStats::get(&m.stats.bytes_received)
    }
}

impl Balancer for ByTraffic {
    fn pick(
        &mut self,
        members: &[Member],
        _: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if self
            .baseline
            .as_ref()
            .is_none_or(|b| b.len() != members.len())
        {
            self.baseline = Some(members.iter().map(ByTraffic::total).collect());
        }
        let base = self.baseline.as_ref().expect("set above");
        let traffic = |i: usize| ByTraffic::total(&members[i]).saturating_sub(base[i]);
        let weight = |i: usize| u128::from(weight_now(&members[i]));
        // Compare a/wa with b/wb as a*wb vs b*wa, exactly, in u128.
        let mut best: Option<usize> = None;
        for (i, m) in members.iter().enumerate() {
            if !takes_traffic(m) || !eligible(i) {
                continue;
            }
            if best.is_none_or(|b| {
                u128::from(traffic(i)) * weight(b) < u128::from(traffic(b)) * weight(i)
            }) {
                best = Some(i);
            }
        }
        let b = best?;
        let (tb, wb) = (u128::from(traffic(b)), weight(b));
        self.ties
            .pick_among(members, &|i| {
                eligible(i) && u128::from(traffic(i)) * wb == tb * weight(i)
            })
            .or(Some(b))
    }
}

/// `byip`: weighted rendezvous hashing (highest random weight, Thaler and
/// Ravishankar 1998; the weighted form of Schindelhauer and Schomaker
/// 2005) of the client's IP address.
///
/// Every member gets a score for the client, `weight / -ln(u)`, where `u`
/// in (0, 1) is a hash of the member's address and the client's address;
/// the highest score wins. A client's scores do not depend on the other
/// members, so when a member leaves (unusable, weight 0, or already tried)
/// only the clients whose best it was move, each to its second best; when
/// it comes back exactly those return. With this score the chance that a
/// member wins is its share of the total weight. Cost: one hash per member
/// per request (no table to rebuild, which suits a snapshot that changes
/// with health), fine for pools of tens of members.
///
/// The hash is FNV-1a finished with MurmurHash3's 64-bit finaliser: fixed
/// and independent of the Rust version, so two fulcrum nodes (or a
/// restarted one) send a client to the same member. The member's key is
/// its address and port, not its position, so reordering the
/// configuration moves nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByIp;

/// FNV-1a over `parts` (64-bit), then MurmurHash3's `fmix64` so that every
/// input bit reaches every output bit.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    // IPv4 as its mapped IPv6 form, so both spellings of a client agree.
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl ByIp {
    /// The rendezvous score of `m` for `client` (higher wins).
    pub fn score(m: &Member, client: IpAddr) -> f64 {
        let ip = ip_bytes(m.address.ip());
        let h = hash64(&[&ip_bytes(client), &ip, &m.address.port().to_be_bytes()]);
        // u in (0, 1): the top 53 bits, centred in their interval.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        f64::from(m.weight) / -u.ln()
    }
}

impl Balancer for ByIp {
    fn pick(
        &mut self,
        members: &[Member],
        client: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, m) in members.iter().enumerate() {
            if !takes_traffic(m) || !eligible(i) {
                continue;
            }
            let s = ByIp::score(m, client);
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// `p2c`: the power of two choices (Mitzenmacher, "The Power of Two
/// Choices in Randomized Load Balancing", 2001) over a Peak-EWMA load, as
/// Finagle's `Balancers.p2cPeakEwma` and linkerd (tower's
/// `p2c::Balance` over `PeakEwma`) do.
///
/// Two distinct eligible members are drawn uniformly at random; the one
/// with the lower load takes the request (the first drawn on a tie). The
/// load of a member is
///
/// ```text
/// load = latency_us * (outstanding + 1) / weight
/// ```
///
/// - `latency_us`: the Peak-EWMA of the time from sending the request to
///   the response head, in microseconds, decayed for the time since its
///   last sample ([`MemberStats::observe_latency`],
///   [`MemberStats::latency_us`], time constant [`crate::snapshot::EWMA_TAU_MS`]).
///   A failed exchange, and a 5xx response, is recorded as at least
///   [`crate::snapshot::FAILURE_PENALTY_US`] (1 s), so a member that
///   answers errors fast looks slow, not fast.
/// - `outstanding`: requests in flight to the member from all workers.
///   Multiplying by it is Finagle's rule: the expected wait behind the
///   requests already queued there.
/// - A member with no latency sample yet costs 0 when idle (so a new
///   member is tried at once) and [`P2c::UNKNOWN_BUSY`] when it already
///   has requests in flight (Finagle's "penalty": one probe at a time
///   until it has answered).
/// - `weight` (Apache loadfactor) divides the load, so a member of weight
///   2 is preferred until its load is twice the other's.
///
/// Comparing two random members instead of all avoids the herd effect of
/// "least loaded" with stale information (every worker sending to the
/// same momentarily best member), while still leaving the worst members
/// almost idle. Each worker has its own generator (xorshift64*, seeded
/// per worker): the draws need no quality beyond not being correlated
/// between workers.
#[derive(Debug, Clone)]
pub struct P2c {
    rng: u64,
}

impl P2c {
    /// The load of a member with requests in flight but no latency sample
    /// yet: larger than any measured load (2^53 ≈ 9e15, while 1 s latency
    /// times 1e6 outstanding is 1e12).
    pub const UNKNOWN_BUSY: f64 = 9_007_199_254_740_992.0;

    /// A generator seeded with `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> P2c {
        P2c {
            rng: hash64(&[&seed.to_le_bytes()]) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64* (Vigna 2016).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias for small n is negligible.
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// The load of `m` at `now_ms` ([`clock_ms`]), as documented on [`P2c`].
    pub fn load(m: &Member, now_ms: u32) -> f64 {
        let outstanding = MemberStats::get(&m.stats.outstanding);
        let cost = match m.stats.latency_us(now_ms) {
            Some(l) => l * (outstanding + 1) as f64,
            None if outstanding == 0 => 0.0,
            None => P2c::UNKNOWN_BUSY,
        };
        cost / weight_now(m).max(1) as f64
    }

    /// [`Balancer::pick`] with an explicit clock, for tests.
    pub fn pick_at(
        &mut self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        now_ms: u32,
    ) -> Option<usize> {
        let ok = |i: usize| takes_traffic(&members[i]) && eligible(i);
        let n = (0..members.len()).filter(|&i| ok(i)).count();
        let nth = |k: usize| (0..members.len()).filter(|&i| ok(i)).nth(k);
        match n {
            0 => None,
            1 => nth(0),
            _ => {
                let a = self.below(n);
                // A second draw among the other n - 1: always distinct.
                let mut b = self.below(n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a)?, nth(b)?);
                if P2c::load(&members[b], now_ms) < P2c::load(&members[a], now_ms) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }
}

impl Balancer for P2c {
    fn pick(
        &mut self,
        members: &[Member],
        _: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        self.pick_at(members, eligible, clock_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn pool(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member::new(format!("127.0.0.1:{}", 1000 + i).parse().unwrap(), w))
            .collect()
    }

    fn counts(b: &mut dyn Balancer, members: &[Member], n: usize) -> Vec<usize> {
        let mut c = vec![0; members.len()];
        for _ in 0..n {
            c[b.pick(members, CLIENT, &|_| true).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn byrequests_follows_weights_exactly_per_cycle() {
        let m = pool(&[1, 2]);
        let mut b = ByRequests::new(m.len());
        assert_eq!(counts(&mut b, &m, 3), vec![1, 2]);
        assert_eq!(counts(&mut b, &m, 300), vec![100, 200]);
        let m = pool(&[5, 3, 2]);
        let mut b = ByRequests::new(m.len());
        assert_eq!(counts(&mut b, &m, 1000), vec![500, 300, 200]);
    }

    #[test]
    fn byrequests_is_smooth() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let m = pool(&[5, 1, 1]);
        let mut b = ByRequests::new(m.len());
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(&m, CLIENT, &|_| true).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn byrequests_skips_unusable_zero_weight_and_excluded() {
        let mut m = pool(&[1, 1, 1, 0]);
        m[1].usable = false;
        let mut b = ByRequests::new(m.len());
        let c = counts(&mut b, &m, 100);
        assert_eq!(c, vec![50, 0, 50, 0]);
        // Excluding member 0 for a pick (already tried) gives member 2.
        assert_eq!(b.pick(&m, CLIENT, &|i| i != 0), Some(2));
        assert_eq!(b.pick(&m, CLIENT, &|i| i != 0 && i != 2), None);
        m.iter_mut().for_each(|x| x.usable = false);
        assert_eq!(b.pick(&m, CLIENT, &|_| true), None);
    }

    #[test]
    fn byrequests_redistributes_when_a_member_leaves() {
        let mut m = pool(&[1, 2, 3]);
        let mut b = ByRequests::new(m.len());
        counts(&mut b, &m, 7); // leave the state mid-cycle
        m[2].usable = false;
        let c = counts(&mut b, &m, 300);
        // The remaining 1:2 share holds up to the one cycle of slack left
        // over from before the change.
        assert!((c[0] as i64 - 100).abs() <= 3, "{c:?}");
        assert!((c[1] as i64 - 200).abs() <= 3, "{c:?}");
        assert_eq!(c[2], 0);
    }

    #[test]
    fn bybusyness_prefers_the_least_busy_then_weights() {
        let m = pool(&[1, 3, 1]);
        let mut b = ByBusyness::new(m.len());
        m[0].stats.outstanding.store(2, Ordering::Relaxed);
        m[1].stats.outstanding.store(1, Ordering::Relaxed);
        m[2].stats.outstanding.store(1, Ordering::Relaxed);
        // Members 1 and 2 tie at 1 outstanding: weights 3:1 between them.
        assert_eq!(counts(&mut b, &m, 400), vec![0, 300, 100]);
        // Member 0 becomes idle: it takes everything while it stays so.
        m[0].stats.outstanding.store(0, Ordering::Relaxed);
        assert_eq!(counts(&mut b, &m, 10), vec![10, 0, 0]);
        // Outstanding counts as requests are sent and not finished: each
        // pick adds one, so the picks spread to even the queues, and the
        // excluded/unusable members are never chosen.
        let m = pool(&[1, 1, 1, 1]);
        let mut b = ByBusyness::new(m.len());
        for _ in 0..30 {
            let i = b.pick(&m, CLIENT, &|i| i != 3).unwrap();
            m[i].stats.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        let busy: Vec<u64> = m
            .iter()
            .map(|x| MemberStats::get(&x.stats.outstanding))
            .collect();
        assert_eq!(busy, vec![10, 10, 10, 0]);
    }

    #[test]
    fn bytraffic_evens_bytes_per_weight() {
        let m = pool(&[1, 2, 1]);
        let mut b = ByTraffic::new(m.len());
        // Requests of different sizes: 1000, 10 and 100 bytes by member.
        let size = [1000u64, 10, 100];
        for _ in 0..3000 {
            let i = b.pick(&m, CLIENT, &|_| true).unwrap();
            m[i].stats
                .bytes_received
                .fetch_add(size[i], Ordering::Relaxed);
        }
        let t: Vec<f64> = m
            .iter()
            .zip([1.0, 2.0, 1.0])
            .map(|(x, w)| ByTraffic::total(x) as f64 / w)
            .collect();
        // Bytes per weight agree within one request's worth.
        for x in &t {
            assert!((x - t[0]).abs() <= 1000.0, "{t:?}");
        }
        // Small requests go to the member that moves fewer bytes each.
        let reqs: Vec<u64> = t
            .iter()
            .zip([1.0, 2.0, 1.0])
            .zip(size)
            .map(|((x, w), s)| (x * w) as u64 / s)
            .collect();
        assert!(reqs[1] > reqs[2] && reqs[2] > reqs[0], "{reqs:?}");
    }

    #[test]
    fn bytraffic_counts_from_its_own_start() {
        // A member with a long history does not starve a new one's peers.
        let m = pool(&[1, 1]);
        m[0].stats.bytes_sent.store(1_000_000, Ordering::Relaxed);
        let mut b = ByTraffic::new(m.len());
        let mut c = [0; 2];
        for _ in 0..100 {
            let i = b.pick(&m, CLIENT, &|_| true).unwrap();
            c[i] += 1;
            m[i].stats.bytes_sent.fetch_add(10, Ordering::Relaxed);
        }
        assert_eq!(c, [50, 50]);
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919))
    }

    #[test]
    fn byip_is_stable_weighted_and_minimal_on_change() {
        let mut m = pool(&[1, 1, 2, 1]);
        let mut b = ByIp;
        let n = 20_000;
        let before: Vec<usize> = (0..n)
            .map(|i| b.pick(&m, client(i), &|_| true).unwrap())
            .collect();
        // Same client, same member, every time.
        for i in 0..100 {
            assert_eq!(b.pick(&m, client(i), &|_| true), Some(before[i as usize]));
        }
        // Shares follow weights 1:1:2:1 (within 5% of n).
        let mut c = vec![0usize; 4];
        before.iter().for_each(|&i| c[i] += 1);
        for (got, w) in c.iter().zip([1.0, 1.0, 2.0, 1.0]) {
            let want = n as f64 * w / 5.0;
            assert!((*got as f64 - want).abs() < 0.05 * n as f64, "{c:?}");
        }
        // Member 1 leaves: exactly its clients move, spread over the rest.
        m[1].usable = false;
        let mut moved_to = vec![0usize; 4];
        for i in 0..n {
            let now = b.pick(&m, client(i), &|_| true).unwrap();
            if before[i as usize] == 1 {
                moved_to[now] += 1;
            } else {
                assert_eq!(now, before[i as usize], "client {i} moved needlessly");
            }
        }
        assert_eq!(moved_to[1], 0);
        assert!(
            moved_to[0] > 0 && moved_to[2] > moved_to[0] && moved_to[3] > 0,
            "{moved_to:?}"
        );
        // It comes back: everyone is where they were.
        m[1].usable = true;
        for i in 0..n {
            assert_eq!(b.pick(&m, client(i), &|_| true), Some(before[i as usize]));
        }
        // Excluded (already tried) works like leaving, for that pick only.
        let c0 = (0..n).find(|&i| before[i as usize] == 0).unwrap();
        assert_ne!(b.pick(&m, client(c0), &|i| i != 0), Some(0));
        // Reordering the configuration moves nobody: keys are addresses.
        let rev: Vec<Member> = m.iter().rev().cloned().collect();
        for i in 0..200 {
            assert_eq!(
                b.pick(&rev, client(i), &|_| true),
                Some(3 - before[i as usize])
            );
        }
    }

    #[test]
    fn hash_is_fixed() {
        // Pinned so that two nodes (or versions) agree on byip placement.
        assert_eq!(hash64(&[b"a"]), hash64(&[b"a"]));
        assert_ne!(hash64(&[b"ab", b"c"]), hash64(&[b"a", b"bc"]));
        assert_eq!(hash64(&[b"192.0.2.1"]), 3_748_373_763_563_455_004);
    }

    #[test]
    fn p2c_spreads_uniformly_when_loads_are_equal() {
        let m = pool(&[1, 1, 1, 1]);
        let mut b = P2c::new(7);
        let c = counts(&mut b, &m, 40_000);
        for x in &c {
            assert!((*x as i64 - 10_000).abs() < 600, "{c:?}");
        }
    }

    #[test]
    fn p2c_avoids_slow_busy_and_failing_members() {
        let now = 1_000;
        let m = pool(&[1, 1, 1, 1]);
        for x in &m {
            x.stats.observe_latency(1_000, now); // 1 ms
        }
        // Member 0 is slow (50 ms): it loses every draw it is in.
        m[0].stats.observe_latency(50_000, now);
        // Member 1 answers in 0.1 ms but with 5xx: the proxy records the
        // penalty, so it looks slower than the healthy ones.
        m[1].stats.observe_latency(100, now);
        m[1].stats
            .observe_latency(crate::snapshot::FAILURE_PENALTY_US, now);
        // Member 3 has 3 requests in flight: load 4 ms vs 1 ms.
        m[3].stats.outstanding.store(3, Ordering::Relaxed);
        let mut b = P2c::new(1);
        let mut c = vec![0; 4];
        for _ in 0..6_000 {
            c[b.pick_at(&m, &|_| true, now).unwrap()] += 1;
        }
        // With 4 members, the worst is never picked, the second worst only
        // when drawn with the worst (1/6 of draws), and so on: in
        // expectation 0, 1/6, 1/3 and 1/2 by rank.
        assert_eq!(c[1], 0, "{c:?}"); // 1 s penalty: the worst
        assert!((c[0] as i64 - 1_000).abs() < 150, "{c:?}"); // 50 ms
        assert!((c[3] as i64 - 2_000).abs() < 200, "{c:?}"); // 1 ms x 4
        assert!((c[2] as i64 - 3_000).abs() < 200, "{c:?}"); // 1 ms x 1
                                                             // The penalty decays: ten time constants later without samples
                                                             // the failing member looks like a fresh one and gets probes again.
        let later = now + 10 * crate::snapshot::EWMA_TAU_MS as u32;
        assert!(P2c::load(&m[1], later) < 100.0);
    }

    #[test]
    fn p2c_probes_unknown_members_one_at_a_time_and_respects_weight() {
        let m = pool(&[1, 1]);
        m[0].stats.observe_latency(1_000, 0);
        let mut b = P2c::new(3);
        // Member 1 has no sample: idle it costs 0 and wins; busy it loses.
        assert_eq!(b.pick_at(&m, &|_| true, 0), Some(1));
        m[1].stats.outstanding.store(1, Ordering::Relaxed);
        assert_eq!(b.pick_at(&m, &|_| true, 0), Some(0));
        // Weight divides the load: 2 ms at weight 4 beats 1 ms at weight 1.
        let m = pool(&[1, 4]);
        m[0].stats.observe_latency(1_000, 0);
        m[1].stats.observe_latency(2_000, 0);
        assert_eq!(b.pick_at(&m, &|_| true, 0), Some(1));
        // Exclusion and the single-member case.
        assert_eq!(b.pick_at(&m, &|i| i == 0, 0), Some(0));
        assert_eq!(b.pick_at(&m, &|_| false, 0), None);
    }

    // ---------------------------------------------------------- failover

    use crate::members::{PassiveConfig, Role};

    fn roles(m: &mut [Member], r: &[(u8, Role)]) {
        for (x, &(lbset, role)) in m.iter_mut().zip(r) {
            x.lbset = lbset;
            x.role = role;
        }
    }

    /// Counts of `n` picks with every method, which must agree.
    fn all_methods(m: &[Member], n: usize, eligible: &dyn Fn(usize) -> bool) -> Vec<Vec<usize>> {
        [LbMethod::ByRequests, LbMethod::ByBusyness, LbMethod::ByTraffic, LbMethod::ByIp, LbMethod::P2c]
            .into_iter()
            .map(|method| {
                let mut b = new_balancer(method, m.len(), 9);
                let mut c = vec![0; m.len()];
                for k in 0..n {
                    if let Some(i) = b.pick(m, client(k as u32), eligible) {
                        c[i] += 1;
                    }
                }
                c
            })
            .collect()
    }

    /// Which members got any pick, per method.
    fn used(m: &[Member], eligible: &dyn Fn(usize) -> bool) -> Vec<Vec<bool>> {
        all_methods(m, 400, eligible).into_iter().map(|c| c.iter().map(|&x| x > 0).collect()).collect()
    }

    #[test]
    fn hot_spares_replace_unusable_members_one_for_one() {
        let (a, r, h) = (Role::Active, Role::HotSpare, Role::HotStandby);
        let mut m = pool(&[1, 1, 1, 1, 1]);
        roles(&mut m, &[(0, a), (0, a), (0, r), (0, r), (0, h)]);
        let want = |v: [bool; 5]| vec![v.to_vec(); 5];
        assert_eq!(used(&m, &|_| true), want([true, true, false, false, false]));
        // One down: one spare, the first, for every method.
        m[0].usable = false;
        assert_eq!(used(&m, &|_| true), want([false, true, true, false, false]));
        // Draining counts as unusable too (Apache), and so does a member
        // already tried for this request: both spares now.
        m[1].draining = true;
        assert_eq!(used(&m, &|_| true), want([false, false, true, true, false]));
        m[1].draining = false;
        assert_eq!(used(&m, &|i| i != 1), want([false, false, true, true, false]));
        // Everything else gone: the standby.
        assert_eq!(used(&m, &|i| i > 3), want([false, false, false, false, true]));
        assert_eq!(used(&m, &|i| i > 1 && i != 2 && i != 3), want([false, false, false, false, true]));
        // Nothing at all.
        let mut b = new_balancer(LbMethod::ByRequests, m.len(), 1);
        assert_eq!(b.pick(&m, CLIENT, &|_| false), None);
    }

    #[test]
    fn lowest_lbset_with_a_usable_member_serves() {
        let a = Role::Active;
        let mut m = pool(&[1, 1, 1, 1]);
        roles(&mut m, &[(1, a), (0, a), (2, a), (0, a)]);
        let want = |v: [bool; 4]| vec![v.to_vec(); 5];
        assert_eq!(used(&m, &|_| true), want([false, true, false, true]));
        m[1].usable = false;
        m[3].weight = 0; // drained
        assert_eq!(used(&m, &|_| true), want([true, false, false, false]));
        // Set 1 tried (a retry): set 2.
        assert_eq!(used(&m, &|i| i != 0), want([false, false, true, false]));
        // Within the serving set, weights still hold.
        let mut m = pool(&[1, 3, 9]);
        roles(&mut m, &[(0, a), (0, a), (1, a)]);
        let mut b = new_balancer(LbMethod::ByRequests, 3, 0);
        assert_eq!(counts(&mut *b, &m, 400), vec![100, 300, 0]);
    }

    #[test]
    fn members_in_error_are_skipped_until_all_are() {
        let mut m = pool(&[1, 1, 1]);
        let cfg = PassiveConfig { failonstatus: vec![], failontimeout: false, error_limit: 1, error_window_ms: 1_000, retry_ms: 60_000 };
        let now = clock_ms64();
        assert!(m[0].stats.passive.record_failure(&cfg, now));
        let want = |v: [bool; 3]| vec![v.to_vec(); 5];
        assert_eq!(used(&m, &|_| true), want([false, true, true]));
        // A spare replaces a member In error.
        roles(&mut m, &[(0, Role::Active), (0, Role::Active), (0, Role::HotSpare)]);
        assert_eq!(used(&m, &|_| true), want([false, true, true]));
        // All In error: forcerecovery tries them all again rather than 503.
        m[1].stats.passive.record_failure(&cfg, now);
        m[2].stats.passive.record_failure(&cfg, now);
        roles(&mut m, &[(0, Role::Active); 3]);
        assert_eq!(used(&m, &|_| true), want([true, true, true]));
        // ...but an unusable member stays out even then.
        m[2].usable = false;
        assert_eq!(used(&m, &|_| true), want([true, true, false]));
        // After retry, it is back (a fresh pool clock: just compare).
        assert!(!m[0].stats.passive.in_error(now + 60_000));
    }

    #[test]
    fn slow_start_ramps_a_returning_members_share() {
        let mut m = pool(&[1, 1]);
        for x in &mut m {
            x.slow_start_ms = 1_000_000; // long: the ramp barely moves during the test
        }
        for x in &m {
            x.stats.passive.track_usable(true, 0);
        }
        // Member 1 went down and came back just now: it starts near 1/16
        // of its weight (the ramp is 1/16 of a weight step per 62.5 s).
        m[1].stats.passive.track_usable(false, 0);
        m[1].stats.passive.track_usable(true, clock_ms64());
        let c = all_methods(&m, 1_700, &|_| true);
        // byrequests: exactly 16:1 (weights 16 and 1 in scaled units).
        assert_eq!(c[0], vec![1_600, 100]);
        // bytraffic and p2c follow the same ratio in their own ways.
        assert!(c[2][1] < 200, "{:?}", c[2]);
        // byip ignores slow start (a client's member must not move).
        assert!(c[3][1] > 600, "{:?}", c[3]);
        // Half way through the ramp: half the weight.
        let mid = clock_ms64() + 500_000;
        assert_eq!(crate::members::effective_weight(&m[1], mid), 8);
    }
}
