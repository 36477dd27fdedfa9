//! Choosing a member of a pool: a small pure interface that every
//! balancing method implements.
//!
//! A balancer holds only its own scheduling state (for `byrequests`, the
//! current weights); it reads members' weights and counters from the
//! snapshot it is given and does no I/O, so its distribution is tested
//! without sockets. Each worker thread has its own balancer per pool
//! (thread-per-core: no shared lock on the request path). Each worker's
//! sequence follows the weights, so the sum over workers does too. A new
//! snapshot starts new balancers (the current weights restart at zero).
//!
//! `bybusyness`, `bytraffic`, `byip` and `p2c` will join `byrequests` here.

use crate::snapshot::{LbMethod, Member};

/// Chooses a member for the next request.
pub trait Balancer {
    /// Returns the index (into `members`) of the member to use, among those
    /// for which `eligible(index)` is true, or `None` if there is none.
    ///
    /// `eligible` lets the caller exclude members already tried for this
    /// request (retry after a connect failure) besides unusable ones; the
    /// caller's predicate decides, so every method excludes the same way.
    fn pick(&mut self, members: &[Member], eligible: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// A new balancer for `method` over a pool of `members` members.
pub fn new_balancer(method: LbMethod, members: usize) -> Box<dyn Balancer> {
    match method {
        LbMethod::ByRequests => Box::new(ByRequests::new(members)),
    }
}

/// Whether a member may take a new request at all: usable and with a
/// weight. Callers add their own conditions (not yet tried).
pub fn takes_traffic(m: &Member) -> bool {
    m.usable && m.weight > 0
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
}

impl Balancer for ByRequests {
    fn pick(&mut self, members: &[Member], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
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
            let w = i64::from(m.weight);
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

#[cfg(test)]
mod tests {
    use super::*;

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
            c[b.pick(members, &|_| true).unwrap()] += 1;
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
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&m, &|_| true).unwrap()).collect();
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
        assert_eq!(b.pick(&m, &|i| i != 0), Some(2));
        assert_eq!(b.pick(&m, &|i| i != 0 && i != 2), None);
        m.iter_mut().for_each(|x| x.usable = false);
        assert_eq!(b.pick(&m, &|_| true), None);
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
}
