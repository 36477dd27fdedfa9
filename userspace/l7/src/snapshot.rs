//! The proxy's input: an immutable description of listeners, routes and
//! pools that the control plane builds and swaps in as a whole.
//!
//! A [`Snapshot`] is never changed after it is published. The control plane
//! builds a new one and stores it in the [`SharedSnapshot`] (an
//! [`ArcSwap`]) from any thread; each request loads the current one once,
//! at its start, and keeps that `Arc` until it ends. So a swap takes
//! effect for new requests and never changes the rules under a request in
//! flight.
//!
//! Counters ([`MemberStats`]) are the exception to "immutable": they are
//! atomics behind an `Arc` that the proxy writes and the control plane
//! reads. The control plane should hand the same `Arc<MemberStats>` to the
//! same member in successive snapshots so that counts survive a swap.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use arc_swap::ArcSwap;

/// The cell the control plane swaps snapshots into and the workers read
/// from. `ArcSwap::store` from any thread; workers `load_full` per request.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Makes a [`SharedSnapshot`] holding `snapshot`.
pub fn shared(snapshot: Snapshot) -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(snapshot))
}

/// Everything the proxy needs to route and balance requests.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Route tables by listening address. A request arriving on an address
    /// without an entry gets 404. The set of addresses the proxy listens on
    /// is fixed at start ([`crate::ProxyConfig::listen`]); a snapshot
    /// cannot open new sockets.
    pub listeners: Vec<ListenerRoutes>,
    /// Pools, referred to by index from [`Route::pool`].
    pub pools: Vec<Pool>,
}

impl Snapshot {
    /// The routes of the listener bound to `addr`, if the snapshot has any.
    pub fn listener(&self, addr: SocketAddr) -> Option<&ListenerRoutes> {
        self.listeners.iter().find(|l| l.address == addr)
    }

    /// Checks that every route names an existing pool. A snapshot that
    /// fails this check must not be published; the proxy answers 503 for a
    /// route whose pool index is out of range rather than panicking.
    pub fn validate(&self) -> Result<(), String> {
        for l in &self.listeners {
            for (i, r) in l.routes.iter().enumerate() {
                if r.pool >= self.pools.len() {
                    return Err(format!(
                        "listener {} route {i}: pool index {} out of range ({} pools)",
                        l.address,
                        r.pool,
                        self.pools.len()
                    ));
                }
                if !r.path_prefix.starts_with('/') {
                    return Err(format!(
                        "listener {} route {i}: path prefix {:?} must start with '/'",
                        l.address, r.path_prefix
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The ordered routes of one listening address.
#[derive(Debug, Clone)]
pub struct ListenerRoutes {
    /// The address as configured (and as bound; for tests that bind port 0
    /// use [`crate::Proxy::local_addrs`]).
    pub address: SocketAddr,
    /// Tried in order; the first match wins (like Apache's `ProxyPass`
    /// order).
    pub routes: Vec<Route>,
}

/// One routing rule: Host and path prefix to a pool.
#[derive(Debug, Clone)]
pub struct Route {
    /// Which Host values match.
    pub host: HostMatch,
    /// A byte-wise prefix of the request path (`/` matches everything).
    /// `/app/` does not match `/app`; write `/app` for both.
    pub path_prefix: String,
    /// Index into [`Snapshot::pools`].
    pub pool: usize,
    /// Send the client's Host to the member (Apache `ProxyPreserveHost On`);
    /// otherwise the member's `address:port` (port omitted when 80).
    pub preserve_host: bool,
}

impl Route {
    /// Whether this route takes a request for `host` (lowercase, without
    /// port) and `path`.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        self.host.matches(host) && path.starts_with(self.path_prefix.as_str())
    }
}

/// A Host condition. Names are compared case-insensitively, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any Host, or none.
    Any,
    /// Exactly this name (stored lowercase).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` with at least one
    /// more label in front (stored as the lowercase suffix `.example.com`).
    /// The bare `example.com` does not match, as in nginx and HAProxy.
    Wildcard(String),
}

impl HostMatch {
    /// Parses `*`, `*.example.com` or `example.com`.
    pub fn parse(s: &str) -> HostMatch {
        let s = s.to_ascii_lowercase();
        if s == "*" {
            HostMatch::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            HostMatch::Wildcard(rest.to_string())
        } else {
            HostMatch::Exact(s)
        }
    }

    /// Whether `host` (already lowercase and without port) matches.
    pub fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(want), Some(h)) => h == want,
            (HostMatch::Wildcard(suffix), Some(h)) => {
                h.len() > suffix.len() && h.ends_with(suffix.as_str())
            }
            (_, None) => false,
        }
    }
}

/// Balancing method of a pool, with Apache's `lbmethod` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbMethod {
    /// Smooth weighted round robin (nginx's algorithm), weight = loadfactor.
    #[default]
    ByRequests,
}

impl LbMethod {
    /// Apache's name for the method.
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::ByRequests => "byrequests",
        }
    }
}

/// A set of members and how to choose among them.
#[derive(Debug, Clone)]
pub struct Pool {
    /// For logs and the control plane.
    pub name: String,
    /// How a member is chosen.
    pub lbmethod: LbMethod,
    /// In configuration order; balancer state is indexed by position.
    pub members: Vec<Member>,
}

/// One backend of a pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// Where to connect.
    pub address: SocketAddr,
    /// Apache `loadfactor`: the relative share of requests. 0 takes nothing.
    pub weight: u32,
    /// Whether the member may take new requests (healthy and not disabled,
    /// as the control plane decided). An unusable member gets nothing.
    pub usable: bool,
    /// Apache `route`: the member's name in sticky cookies (used later).
    pub route: String,
    /// Counters the proxy writes and the control plane reads.
    pub stats: Arc<MemberStats>,
}

impl Member {
    /// A usable member with the given weight and fresh counters.
    pub fn new(address: SocketAddr, weight: u32) -> Member {
        Member {
            address,
            weight,
            usable: true,
            route: String::new(),
            stats: Arc::default(),
        }
    }
}

/// Per-member counters, written by every worker with relaxed atomics (each
/// is an independent count; no reader needs them to agree with each other
/// at an instant).
#[derive(Debug, Default)]
pub struct MemberStats {
    /// Requests sent to the member (after a connection was obtained).
    pub requests: AtomicU64,
    /// Requests currently sent and not finished (response body not yet
    /// fully relayed or failed). The future `bybusyness` and `p2c` read it.
    pub outstanding: AtomicU64,
    /// Request body bytes sent to the member (body only, not headers).
    pub bytes_sent: AtomicU64,
    /// Response body bytes received from the member (body only).
    pub bytes_received: AtomicU64,
    /// Connect failures and timeouts (connect or response head), and
    /// errors while exchanging the request with the member.
    pub failures: AtomicU64,
    /// Responses whose head arrived, by class: index 0 for 1xx .. 4 for 5xx.
    pub responses: [AtomicU64; 5],
}

impl MemberStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter (relaxed).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching() {
        let w = HostMatch::parse("*.Example.com");
        assert!(w.matches(Some("a.example.com")));
        assert!(w.matches(Some("b.a.example.com")));
        assert!(!w.matches(Some("example.com")));
        assert!(!w.matches(Some("aexample.com")));
        assert!(!w.matches(None));
        let e = HostMatch::parse("Example.com");
        assert!(e.matches(Some("example.com")));
        assert!(!e.matches(Some("a.example.com")));
        assert!(HostMatch::parse("*").matches(None));
    }

    #[test]
    fn validate_rejects_bad_pool_index() {
        let s = Snapshot {
            listeners: vec![ListenerRoutes {
                address: "127.0.0.1:1".parse().unwrap(),
                routes: vec![Route {
                    host: HostMatch::Any,
                    path_prefix: "/".into(),
                    pool: 0,
                    preserve_host: false,
                }],
            }],
            pools: vec![],
        };
        assert!(s.validate().is_err());
    }
}
