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
//! `docs/l7.md` records the design and why: the runtime (compio, one ring
//! per worker, the io_uring probe and the polling fallback), buffer
//! ownership in the hyper adapter (`io.rs`), cancellation (dropping an
//! operation never closes a descriptor under it), the timeouts and limits
//! with their statuses ([`limits`]), request hygiene, retries, forwarding
//! fields, ProxyPassReverse, WebSocket tunnels, the access log
//! ([`access_log`]) and the graceful drain. Member status, lbset, spares
//! and standbys, passive health and slow start are in [`members`].

#![warn(missing_docs)]

use std::{net::SocketAddr, time::Duration};

pub mod access_log;
pub mod balancer;
mod deadline;
pub mod headers;
mod io;
pub mod limits;
pub mod members;
mod park;
mod proxy;
mod runtime;
pub mod snapshot;
mod websocket;

pub use balancer::{Balancer, ByBusyness, ByIp, ByRequests, ByTraffic, P2c};
pub use access_log::{AccessLogConfig, AccessLogFormat};
pub use headers::ForwardedFields;
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
    /// How long a keep-alive client connection may sit idle between
    /// requests before it is parked: hyper's connection (its 8 KiB read
    /// and write buffers, the boxed request handler) and the receive
    /// buffer are freed, and the socket waits for readability holding no
    /// buffer (a few hundred bytes per connection instead of ~18 KB). The
    /// next request is then served by a new hyper connection over the same
    /// socket. Only connections idle this long pay that re-creation; a
    /// client under load (wrk, a browser mid-page) never waits that long.
    /// Default 250 ms. The idle timeout
    /// ([`ProxyConfig::keepalive_timeout`]) counts from the end of the last
    /// response, parked or not.
    pub park_after: Duration,
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
    /// Which forwarding fields requests get: X-Forwarded-*, RFC 7239
    /// `Forwarded`, or both. Default X-Forwarded-*.
    pub forwarded: headers::ForwardedFields,
    /// How long an upgraded (WebSocket) connection may carry no byte in
    /// either direction before both sides are closed. Default 1 h.
    pub websocket_idle_timeout: Duration,
    /// The access log, if any (see [`access_log`]).
    pub access_log: Option<AccessLogConfig>,
    /// How long [`Proxy::shutdown`] lets requests in flight finish
    /// before cutting them. Default 10 s.
    pub drain_timeout: Duration,
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
            park_after: Duration::from_millis(250),
            request_timeout: Duration::from_secs(60),
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_uri_len: 8190,
            max_body_size: 1 << 30,
            forwarded: headers::ForwardedFields::XForwarded,
            websocket_idle_timeout: Duration::from_secs(3600),
            access_log: None,
            drain_timeout: Duration::from_secs(10),
            max_idle_per_member: 32,
        }
    }
}
