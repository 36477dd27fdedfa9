//! fulcrum's L7 HTTP reverse proxy core (issue 10): thread-per-core
//! workers on compio (io_uring), hyper 1.x HTTP/1.1 on both sides, routing
//! by Host and path prefix, pools balanced with Apache's method names.
//!
//! The proxy never runs inside the control plane's tokio runtime. The
//! control plane gives it a [`SharedSnapshot`] (an `ArcSwap<Snapshot>`)
//! and swaps whole snapshots in from its own thread; it reads per-member
//! counters back from [`MemberStats`] atomics.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fulcrum_l7::*;
//! let snap = shared(Snapshot::default());
//! let proxy = Proxy::start(ProxyConfig::new(vec!["0.0.0.0:8080".parse().unwrap()]), snap.clone())
//!     .expect("start");
//! // later, from the control plane:
//! snap.store(Arc::new(Snapshot::default()));
//! proxy.shutdown();
//! ```
//!
//! # Design record
//!
//! (To move to `docs/l7.md`.)
//!
//! ## Runtime: compio 0.19
//!
//! compio 0.19.2 is the newest non-beta release (0.20 is a beta) and
//! builds on Rust 1.95. Its `Runtime` is single-threaded with one driver
//! (one ring) each, which is exactly thread-per-core: [`Proxy::start`]
//! starts [`ProxyConfig::workers`] OS threads, each with its own runtime
//! and its own listening socket per address, all with `SO_REUSEPORT` so
//! the kernel spreads connections over the workers. Sockets are built
//! with socket2 on the starting thread (so errors surface before any
//! thread starts and port 0 resolves once for all workers) and handed to
//! each runtime with `TcpListener::from_std`. A worker can be pinned to a
//! CPU ([`ProxyConfig::cpu_affinity`], via compio's `thread_affinity`).
//! Nothing is shared between workers on the request path except the
//! snapshot load (one atomic) and the counters (relaxed atomics).
//!
//! ## Drivers and the io_uring probe
//!
//! With both compio features `io-uring` and `polling`, compio builds its
//! "fusion" driver, which picks io_uring or polling *at runtime* per
//! runtime. Left to itself (no `driver_type`), compio probes opcode
//! support and silently falls back to polling when a ring cannot be
//! created (its only notice is a `compio-log` line, which is off unless
//! its `enable_log` feature is set). fulcrum does not rely on that: at
//! start it probes once by creating a ring with the driver type forced to
//! io_uring ([`probe_io_uring`]); `io_uring_setup` fails with EPERM when
//! `kernel.io_uring_disabled` forbids it and with ENOSYS under a seccomp
//! filter. With [`DriverChoice::Auto`] a failure gives one warning line
//! and every worker is built with the driver forced to polling; the
//! workers are then never left to compio's own per-runtime choice, so all
//! run the same driver and [`Proxy::driver`] says which. Tests force
//! [`DriverChoice::Polling`] to run the whole suite on the fallback; the
//! decision itself is tested with an injected probe ([`choose_driver`]).
//!
//! ## HTTP over completions: the adapter
//!
//! hyper's `rt::Read`/`rt::Write` are readiness-style (`poll_read` into a
//! borrowed buffer); io_uring needs the buffer to stay owned by the
//! kernel operation until its completion. Our adapter (`io::Stream`, in
//! place of cyper-core's `HyperStream` and the compio-io `compat` layer
//! under it) works directly on compio's operations:
//!
//! - Reads: the stream owns a read buffer (`Vec<u8>`, 4 KiB on client
//!   connections, 16 KiB to members). `poll_read` serves hyper from what is
//!   buffered; if empty it submits a `Recv` that *moves* the buffer into the
//!   operation and gets it back with the completion, then copies into
//!   hyper's slice. So hyper's borrowed buffer is never handed to the
//!   kernel. Cost: one copy per read. The slice is hyper's uninitialised
//!   memory, written without zero-filling it first (cyper zero-fills 8 KiB
//!   or more per read).
//! - Writes: `poll_write_vectored` copies hyper's queued buffers (head and
//!   body) into the stream's write buffer and returns; `poll_flush` (or
//!   64 KiB buffered) submits the owned buffer as one `Send` and completes
//!   when it is back, resubmitting the rest after a short send.
//! - The operation futures (`compio::runtime::Submit`) live unboxed in the
//!   stream: no allocation per read or write, no waker bookkeeping, no
//!   `SendWrapper` thread check (connections never leave their worker).
//! - hyper's executor and timer: http1 needs no executor (we spawn the
//!   connection futures ourselves with `compio::runtime::spawn`); the
//!   timer (`header_read_timeout`) is cyper's `CompioTimer` over
//!   `compio::time::sleep`.
//!
//! ## io_uring setup
//!
//! Each worker's ring is created with `IORING_SETUP_SINGLE_ISSUER` and
//! `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1; on a kernel that refuses them,
//! a plain ring): completions that the network stack produces on another
//! CPU no longer interrupt the worker with an IPI to run their task work;
//! the worker reaps them in a batch when it enters the ring to wait. This
//! was the largest single gain in `cargo xtask bench l7` (see
//! bench/RESULTS.md).
//!
//! ## Cancellation and timeouts
//!
//! Dropping a compio operation future does not cancel the kernel
//! operation by itself; compio's `Submit` future, when dropped while
//! submitted, asks the driver to cancel (an `IORING_OP_ASYNC_CANCEL`) and
//! hands the operation (its owned buffer and a clone of the socket's
//! `SharedFd`) to the driver, which frees it only when the completion
//! (success, error or `ECANCELED`) arrives. The descriptor is closed when
//! the last `SharedFd` clone is dropped, so never while an operation that
//! names it is in flight: a late completion cannot land on a descriptor
//! number reused by a newer socket. Our timeouts rely on exactly this:
//! `compio::time::timeout` drops the inner future at the deadline. For a
//! backend response timeout (504) the proxy also drops the connection's
//! [`JoinHandle`](compio::runtime::JoinHandle), which cancels the task
//! that drives it; the connection is never returned to the pool. A
//! response body broken midway likewise discards its connection.
//!
//! ## Request path
//!
//! One snapshot load per request (`load_full`, an `Arc` kept until the
//! request ends, so a swap never affects requests in flight); the
//! listener's routes in order (Host exact or `*.suffix`, then path
//! prefix): no route gives 404. In a sticky pool the member the request
//! names is used if it is usable (see Sticky sessions); otherwise the
//! worker's balancer for the pool picks a usable member (none: 503). A connection comes from the worker's idle
//! pool for that member (checked open and ready; a closed one is dropped
//! and costs nothing since nothing was sent) or is opened within
//! [`ProxyConfig::connect_timeout`]. A connect failure counts a failure
//! and tries another member not yet tried; when all were tried, 502. The
//! request goes out with hop-by-hop fields removed (RFC 9110 7.6.1, and
//! fields named in Connection except Host and Content-Length),
//! X-Forwarded-For appended, X-Forwarded-Proto and -Host set, Host kept
//! or replaced by the member's ([`Route::preserve_host`]), and an
//! origin-form target. No response head within
//! [`ProxyConfig::response_timeout`] gives 504; another exchange error,
//! 502. The response's hop-by-hop fields are removed and its body relayed
//! as it arrives; at its end the connection returns to the idle pool
//! (at most [`ProxyConfig::max_idle_per_member`] per member and worker),
//! unless the member said `Connection: close`. Malformed requests are
//! answered by hyper (400, 431 for too large a head) and that connection
//! is closed; other connections are unaffected.
//!
//! ## Balancing
//!
//! [`Balancer`] is a small pure trait (pick among members that a
//! predicate allows, given the client's address). Each worker keeps its
//! own balancer per pool of the current snapshot (no shared state, no
//! lock); scheduling state restarts with a new snapshot. The live inputs
//! (`outstanding`, bytes, the `p2c` latency) are the members'
//! [`MemberStats`] atomics, shared by all workers, so `bybusyness` and
//! `p2c` see the load every worker puts on a member. The methods, their
//! formulas and sources are in [`balancer`]: `byrequests` (nginx's smooth
//! weighted round robin), `bybusyness`, `bytraffic` (Apache's), `byip`
//! (weighted rendezvous hashing) and `p2c` (Mitzenmacher's two choices
//! over Finagle's Peak-EWMA load). The proxy measures latency (request
//! sent to response head) only in `p2c` pools, so the others pay no clock
//! reads.
//!
//! ## Sticky sessions
//!
//! A pool with [`Pool::sticky`] (Apache `stickysession=`) reads a route
//! from the request: the URL parameter ([`Sticky::param`], `;name=v` in
//! the path or `name=v` in the query) first, then the cookie
//! ([`Sticky::cookie`]), as mod_proxy_balancer's `find_session_route`
//! does; the route is what follows the value's first `.`
//! (`ROUTEID=.r1`, `JSESSIONID=abc.r1`). The member with that
//! [`Member::route`] takes the request when it is usable, even at weight
//! 0 (draining stops new sessions, not existing ones). When the route is
//! unknown, the member unusable, or its connect fails, the request goes
//! to the balancer like a new session, unless [`Sticky::nofailover`]: then
//! 503, as Apache's `nofailover=On` (which also covers an unknown route).
//!
//! The proxy sets `COOKIE=session.route; Path=/; HttpOnly` (plus `Secure`
//! with [`Sticky::secure`]) on a response whenever the member that served
//! it has a route and the request did not name that route: a new session,
//! a failover (re-stamp), or an unknown route. The session id in front of
//! the dot is kept from the request, so `JSESSIONID=abc.r1` failing over
//! becomes `abc.r2` (what a replicated Tomcat cluster expects). If the
//! response already sets a cookie of that name, the application's wins
//! and nothing is added. Apache itself sets no cookie (operators add one
//! with mod_headers and `BALANCER_ROUTE_CHANGED`); fulcrum does it built
//! in, like HAProxy's `cookie ... insert`. Members without a route are
//! never named and get no cookie.
//!
//! ## Members and failover
//!
//! Draining, `lbset`, hot spares and standbys, passive health (In error
//! for `retry`), slow start and the choice of a member for a retry are in
//! [`members`]; every balancer is wrapped in that rule by
//! [`balancer::new_balancer`].
//!
//! ## Not yet (rest of issue 10)
//!
//! Retry of idempotent requests on a reset,
//! ProxyPassReverse, `Forwarded` (RFC 7239), the full set of timeouts and
//! limits with their statuses, request hygiene beyond hyper's parser,
//! WebSocket, `Expect: 100-continue` checks, access log, graceful drain,
//! TLS, HTTP/2, benchmarks.

#![warn(missing_docs)]

use std::{net::SocketAddr, time::Duration};

pub mod balancer;
pub mod headers;
mod io;
pub mod limits;
pub mod members;
mod proxy;
mod runtime;
pub mod snapshot;

pub use balancer::{Balancer, ByBusyness, ByIp, ByRequests, ByTraffic, P2c};
pub use limits::{ProxyStats, Violation};
pub use proxy::{BoxError, ProxyBody};
pub use runtime::{choose_driver, probe_io_uring, DriverChoice, DriverKind, Proxy, StartError};
pub use snapshot::{
    shared, HostMatch, LbMethod, ListenerRoutes, Member, MemberStats, Pool, Route, SharedSnapshot,
    Snapshot, Sticky,
};

/// How the proxy runs: sockets, threads, driver, timeouts. Fixed for the
/// life of a [`Proxy`] (what may change at runtime is in the
/// [`Snapshot`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Addresses to listen on; every worker opens its own `SO_REUSEPORT`
    /// socket on each. Port 0 picks one port for all workers.
    pub listen: Vec<SocketAddr>,
    /// Worker threads, each with its own runtime (at least 1).
    pub workers: usize,
    /// CPUs to pin workers to: worker `i` runs on `cpus[i % len]`. `None`
    /// (or empty) leaves scheduling to the kernel.
    pub cpu_affinity: Option<Vec<usize>>,
    /// io_uring, polling, or io_uring with fallback.
    pub driver: DriverChoice,
    /// `listen(2)` backlog per socket.
    pub backlog: i32,
    /// Time to establish a TCP connection to a member. Default 5 s.
    pub connect_timeout: Duration,
    /// Time from sending a request to a member until its response head
    /// arrives; past it the client gets 504. Default 60 s.
    pub response_timeout: Duration,
    /// Time from a request's first byte to the end of its head (bounds
    /// slowloris), and for a new connection to send its first byte. Past
    /// it the client gets 408 and the connection closes; a connection
    /// that sent nothing at all is closed silently (a browser's
    /// preconnect, as nginx and HAProxy's `http-ignore-probes` treat it).
    /// Default 10 s (HAProxy `timeout http-request`, nginx
    /// `client_header_timeout`).
    pub header_read_timeout: Duration,
    /// How long a client's keep-alive connection may wait for its next
    /// request; then it is closed silently. Default 15 s (HAProxy `timeout
    /// http-keep-alive`, Apache `KeepAliveTimeout`, nginx
    /// `keepalive_timeout`).
    pub keepalive_timeout: Duration,
    /// Time from a request's first byte until its body has been received
    /// in full (bounds a slow upload, "R-U-Dead-Yet"); past it 408 and the
    /// connection closes. Default 60 s (Apache `Timeout`).
    pub request_timeout: Duration,
    /// Largest request head (request line and fields), bytes; larger gets
    /// 431. Default 32 KiB (nginx's `large_client_header_buffers` 4 8k).
    /// hyper needs its read buffer to hold the head, so it is at least
    /// 8 KiB.
    pub max_header_size: usize,
    /// Most header fields in a request; more gets 431. Default 100
    /// (Apache `LimitRequestFields`).
    pub max_headers: usize,
    /// Longest request target, bytes; longer gets 414. Default 8190
    /// (Apache `LimitRequestLine`, which includes the method and version).
    pub max_uri_len: usize,
    /// Largest request body, bytes, declared (Content-Length) or counted
    /// as it streams (chunked); larger gets 413 and the connection
    /// closes. 0: no limit. Default 1 GiB (Apache `LimitRequestBody`
    /// since 2.4.54).
    pub max_body_size: u64,
    /// Idle keep-alive connections kept per member and per worker.
    /// Default 32.
    pub max_idle_per_member: usize,
}

impl ProxyConfig {
    /// Defaults: one worker, automatic driver, no pinning, the timeouts
    /// documented on each field.
    pub fn new(listen: Vec<SocketAddr>) -> ProxyConfig {
        ProxyConfig {
            listen,
            workers: 1,
            cpu_affinity: None,
            driver: DriverChoice::Auto,
            backlog: 1024,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_uri_len: 8190,
            max_body_size: 1 << 30,
            max_idle_per_member: 32,
        }
    }
}
