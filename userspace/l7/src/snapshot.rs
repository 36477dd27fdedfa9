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

use crate::members::{PassiveConfig, PassiveState, Role};

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
    /// Rewrite Location, Content-Location and URI response fields that
    /// point at a member of the pool back to the client's Host (Apache
    /// `ProxyPassReverse`); see [`crate::headers::reverse_location`].
    pub proxy_pass_reverse: bool,
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

/// Balancing method of a pool, with Apache's `lbmethod` names (and
/// `p2c`, which Apache does not have). See [`crate::balancer`] for each
/// algorithm and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbMethod {
    /// Smooth weighted round robin (nginx's algorithm), weight = loadfactor.
    #[default]
    ByRequests,
    /// Least outstanding requests; ties by smooth weighted round robin.
    ByBusyness,
    /// Least bytes transferred (sent + received) per unit of weight.
    ByTraffic,
    /// Weighted rendezvous (HRW) hash of the client's IP address.
    ByIp,
    /// Power of two choices over outstanding requests and a Peak-EWMA
    /// latency with a failure penalty.
    P2c,
}

impl LbMethod {
    /// Apache's name for the method.
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::ByRequests => "byrequests",
            LbMethod::ByBusyness => "bybusyness",
            LbMethod::ByTraffic => "bytraffic",
            LbMethod::ByIp => "byip",
            LbMethod::P2c => "p2c",
        }
    }
}

/// Sticky sessions of a pool (Apache `stickysession=`, `nofailover=`).
///
/// A request names a member by its [`Member::route`]: the part after the
/// first `.` of the value of the URL parameter [`Sticky::param`] (a path
/// parameter `;name=value` or a query parameter `name=value`), else of the
/// cookie [`Sticky::cookie`]. So `ROUTEID=.r1` and `JSESSIONID=abc.r1`
/// both name route `r1`, as in mod_proxy_balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    /// The cookie that carries the route; the proxy also sets it (see
    /// [`crate::balancer`] and the crate docs for when).
    pub cookie: String,
    /// The URL parameter that carries the route (Apache: the part after
    /// `|` in `stickysession=JSESSIONID|jsessionid`; the cookie name when
    /// only one name is given).
    pub param: String,
    /// Apache `nofailover=On`: when the named member cannot take the
    /// request, answer 503 instead of choosing another member.
    pub nofailover: bool,
    /// Add `Secure` to the cookie the proxy sets.
    pub secure: bool,
}

impl Sticky {
    /// Parses Apache's `stickysession` value: `NAME` (cookie and URL
    /// parameter both called `NAME`) or `COOKIE|param`. Returns `None`
    /// when a name is empty or is not an HTTP token.
    pub fn parse(stickysession: &str) -> Option<Sticky> {
        let (cookie, param) = stickysession
            .split_once('|')
            .unwrap_or((stickysession, stickysession));
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|c| {
                    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c) && c != b'|'
                })
        };
        (token(cookie) && token(param)).then(|| Sticky {
            cookie: cookie.to_owned(),
            param: param.to_owned(),
            nofailover: false,
            secure: false,
        })
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
    /// Sticky sessions, if the pool has them.
    pub sticky: Option<Sticky>,
    /// Passive health checks, if the pool has them (see
    /// [`crate::members`]).
    pub passive: Option<PassiveConfig>,
}

impl Pool {
    /// A pool without sticky sessions.
    pub fn new(name: impl Into<String>, lbmethod: LbMethod, members: Vec<Member>) -> Pool {
        Pool {
            name: name.into(),
            lbmethod,
            members,
            sticky: None,
            passive: None,
        }
    }

    /// The index of the member whose route is `route` (never a member
    /// without a route).
    pub fn member_by_route(&self, route: &str) -> Option<usize> {
        if route.is_empty() {
            return None;
        }
        self.members.iter().position(|m| m.route == route)
    }
}

/// One backend of a pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// Where to connect.
    pub address: SocketAddr,
    /// Apache `loadfactor`: the relative share of requests. 0 takes nothing.
    pub weight: u32,
    /// Whether the member may take requests (healthy, neither disabled nor
    /// stopped, as the control plane decided). An unusable member gets
    /// nothing, not even its sticky sessions.
    pub usable: bool,
    /// Apache Draining (`N`, or weight 0 from the control plane): no new
    /// sessions, but requests that name it through a sticky session still
    /// go to it.
    pub draining: bool,
    /// Apache `lbset`: lower sets serve first (see [`crate::members`]).
    pub lbset: u8,
    /// Hot spare (`R`), hot standby (`H`) or neither.
    pub role: Role,
    /// Slow start (the pool's `slow_start`) in milliseconds; 0: none. See
    /// [`crate::members::effective_weight`].
    pub slow_start_ms: u32,
    /// Apache `route`: the member's name in sticky cookies and URL
    /// parameters. Empty: the member is never named by a sticky session
    /// (and the proxy sets no cookie for it).
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
            draining: false,
            lbset: 0,
            role: Role::Active,
            slow_start_ms: 0,
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
    /// fully relayed or failed). `bybusyness` and `p2c` read it.
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
    /// The Peak-EWMA latency estimate that `p2c` reads, packed into one
    /// word so that workers update it with one compare-and-swap: the high
    /// 32 bits are the estimate in microseconds, the low 32 bits the time
    /// of the last update in milliseconds since [`clock_ms`]'s epoch
    /// (wrapping after 49 days; only differences are used). 0: no sample
    /// yet. Written only for pools balanced with `p2c`. Read it with
    /// [`MemberStats::latency_us`].
    pub latency: AtomicU64,
    /// Passive health (In error) and comeback time for slow start; see
    /// [`crate::members`].
    pub passive: PassiveState,
}

/// Milliseconds since a process-wide monotonic epoch (the first call),
/// truncated to 32 bits: the clock of [`MemberStats::latency`].
pub fn clock_ms() -> u32 {
    clock_ms64() as u32
}

/// Milliseconds since the same epoch as [`clock_ms`], not truncated: the
/// clock of passive health and slow start ([`crate::members`]).
pub fn clock_ms64() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Time constant of the Peak-EWMA decay, in milliseconds: linkerd's and
/// Finagle's default decay time of 10 s. A sample `dt` after the previous
/// one keeps `exp(-dt / tau)` of the old estimate.
pub const EWMA_TAU_MS: f64 = 10_000.0;

/// The latency, in microseconds, that `p2c` records for a failed
/// exchange (connect failure, timeout, broken exchange) or a 5xx response
/// when it came faster: 1 s. Through the "peak" rule it lifts the estimate
/// at once, so a member answering 5xx in 1 ms does not look fast; it then
/// decays with [`EWMA_TAU_MS`] as good responses arrive.
pub const FAILURE_PENALTY_US: u32 = 1_000_000;

impl MemberStats {
    /// Records one latency sample of `sample_us` microseconds at `now_ms`
    /// ([`clock_ms`]) into the Peak-EWMA estimate, as Finagle's
    /// `PeakEwma` and linkerd's (tower's) `PeakEwma` do: a sample above the
    /// current estimate replaces it (react to a slowdown at once); a lower
    /// one is averaged in with weight `1 - exp(-dt / tau)`, `dt` the time
    /// since the previous update, so the estimate falls at the pace of
    /// time, not of request rate.
    pub fn observe_latency(&self, sample_us: u32, now_ms: u32) {
        let sample_us = sample_us.max(1); // 0 means "no sample"
        let _ = self
            .latency
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let (est, at) = ((old >> 32) as u32, old as u32);
                let new = if old == 0 || sample_us >= est {
                    sample_us
                } else {
                    let w = (-(f64::from(now_ms.wrapping_sub(at)) / EWMA_TAU_MS)).exp();
                    (f64::from(est) * w + f64::from(sample_us) * (1.0 - w)).round() as u32
                };
                Some((u64::from(new.max(1)) << 32) | u64::from(now_ms))
            });
    }

    /// The latency estimate in microseconds as of `now_ms`, decayed toward
    /// zero for the time since its last update (Finagle decays the cost
    /// on read the same way, so that a member that was slow long ago is
    /// tried again). `None` before the first sample.
    pub fn latency_us(&self, now_ms: u32) -> Option<f64> {
        let v = self.latency.load(Ordering::Relaxed);
        if v == 0 {
            return None;
        }
        let (est, at) = ((v >> 32) as u32, v as u32);
        let w = (-(f64::from(now_ms.wrapping_sub(at)) / EWMA_TAU_MS)).exp();
        Some(f64::from(est) * w)
    }

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
                    proxy_pass_reverse: false,
                }],
            }],
            pools: vec![],
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn sticky_parse_follows_apache() {
        let s = Sticky::parse("ROUTEID").unwrap();
        assert_eq!(
            (s.cookie.as_str(), s.param.as_str()),
            ("ROUTEID", "ROUTEID")
        );
        let s = Sticky::parse("JSESSIONID|jsessionid").unwrap();
        assert_eq!(
            (s.cookie.as_str(), s.param.as_str()),
            ("JSESSIONID", "jsessionid")
        );
        for bad in ["", "|x", "x|", "a b", "a|b|c", "a;b", "a=b"] {
            assert_eq!(Sticky::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn peak_ewma_takes_peaks_and_decays_with_time() {
        let s = MemberStats::default();
        assert_eq!(s.latency_us(0), None);
        s.observe_latency(1_000, 0);
        assert_eq!(s.latency_us(0), Some(1_000.0));
        // A peak replaces the estimate at once.
        s.observe_latency(50_000, 10);
        assert_eq!(s.latency_us(10), Some(50_000.0));
        // A lower sample one tau later keeps exp(-1) of the old estimate.
        s.observe_latency(1_000, 10 + EWMA_TAU_MS as u32);
        let e = s.latency_us(10 + EWMA_TAU_MS as u32).unwrap();
        let want = 50_000.0 * (-1f64).exp() + 1_000.0 * (1.0 - (-1f64).exp());
        assert!((e - want).abs() < 1.0, "{e} vs {want}");
        // Samples in quick succession barely move it down.
        s.observe_latency(1, 11 + EWMA_TAU_MS as u32);
        assert!(s.latency_us(11 + EWMA_TAU_MS as u32).unwrap() > 0.99 * want);
        // Unobserved, it decays on read.
        let later = s.latency_us(11 + 3 * EWMA_TAU_MS as u32).unwrap();
        assert!(later < want * 0.14 && later > want * 0.13, "{later}");
    }
}
