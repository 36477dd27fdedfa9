//! The request path of one worker thread: route, pick a member, get an
//! upstream connection (pooled or new), forward, relay the response.
//!
//! Everything here runs on one compio runtime and is `!Send` by design
//! (`Rc`, `RefCell`): a worker's balancers and idle connections belong to
//! it alone, so nothing on the request path takes a lock.

use std::{
    cell::RefCell,
    collections::HashMap,
    convert::Infallible,
    future::{poll_fn, Future},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    rc::Rc,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use compio::{net::TcpStream, runtime::JoinHandle};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
};

use crate::{
    access_log,
    balancer::{new_balancer, Balancer},
    deadline::Deadlines,
    headers,
    websocket,
    limits::{self, BodyFault, ConnClock, GuardedBody, LogLimiter, ProxyStats, Violation},
    members::{Outcome, Tried},
    snapshot::{
        clock_ms, HostMatch, LbMethod, MemberStats, SharedSnapshot, Snapshot, Sticky,
        FAILURE_PENALTY_US,
    },
    ProxyConfig,
};

/// Initial capacity of the owned read buffer of a connection to a
/// member (see [`crate::io`]): responses can be large, and there are few
/// such connections.
const UPSTREAM_BUF: usize = 16 * 1024;

/// Error type of the bodies the proxy produces.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-worker state shared by all connections of that worker.
pub(crate) struct Worker {
    snapshot: SharedSnapshot,
    connect_timeout: Duration,
    /// The response timeout of every exchange (see [`crate::deadline`]).
    response_deadlines: Rc<Deadlines>,
    /// Runs `response_deadlines`' sweeper; dropped with the worker.
    _sweeper: JoinHandle<()>,
    request_timeout: Duration,
    max_uri_len: usize,
    max_body_size: u64,
    forwarded: headers::ForwardedFields,
    max_idle_per_member: usize,
    /// Proxy-wide counters, shared by all workers.
    pub(crate) stats: Arc<ProxyStats>,
    /// This worker's budget of log lines for refused requests.
    log: LogLimiter,
    /// The access log's queue, if one is configured.
    pub(crate) access_log: Option<access_log::Sender>,
    balancers: RefCell<Balancers>,
    /// Seeds this worker's `p2c` generators (distinct per worker).
    seed: u64,
    idle: RefCell<AddrMap<Vec<Upstream>>>,
    /// The Host value for each member address, rendered once.
    host_values: RefCell<AddrMap<HeaderValue>>,
}

/// A map keyed by member address, looked up twice per request (idle
/// pool, Host value). The keys come from the configuration, not from
/// clients, so the std map's SipHash (a defence against chosen keys)
/// buys nothing here; FNV-1a with a final mix is a fraction of its cost.
type AddrMap<V> = HashMap<SocketAddr, V, std::hash::BuildHasherDefault<AddrHasher>>;

/// FNV-1a over the bytes a `SocketAddr` hashes, then the splitmix64
/// finaliser (hashbrown takes its tag from the top bits).
struct AddrHasher(u64);

impl Default for AddrHasher {
    fn default() -> AddrHasher {
        AddrHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The balancers of the snapshot they were built for, one per pool.
struct Balancers {
    snapshot: Option<Arc<Snapshot>>,
    per_pool: Vec<Box<dyn Balancer>>,
}

/// An HTTP/1.1 connection to a member: the hyper handle to send on and the
/// task driving the connection. Dropping it cancels the task, which drops
/// the socket; compio keeps the descriptor open until every operation
/// still in flight on it has completed (see the crate docs).
pub(crate) struct Upstream {
    sender: SendRequest<Counted<GuardedBody>>,
    /// Ends with the stream (and the bytes read past the 101 head) when
    /// the connection was upgraded, see [`crate::websocket`].
    task: JoinHandle<Option<(crate::io::Stream, Bytes)>>,
    /// Set before sending a WebSocket upgrade request.
    upgrading: Rc<std::cell::Cell<bool>>,
    /// Bytes received from the member so far: unchanged across a failed
    /// exchange means it answered nothing.
    received: Rc<std::cell::Cell<u64>>,
}

/// Where the request path leaves the member's connection after a `101
/// Switching Protocols`, for the client connection to join the two.
pub(crate) type UpgradeSlot = Rc<RefCell<Option<Upstream>>>;

/// The member's side of an upgraded connection: its stream and the bytes
/// it sent past the 101 head, once hyper has let go of it.
pub(crate) async fn upgraded(up: Upstream) -> Option<(crate::io::Stream, Bytes)> {
    up.task.await.ok().flatten()
}

impl Worker {
    /// Call on the worker's runtime: it spawns the worker's response
    /// timeout sweeper there.
    pub(crate) fn new(
        snapshot: SharedSnapshot,
        config: &ProxyConfig,
        stats: Arc<ProxyStats>,
        access_log: Option<access_log::Sender>,
    ) -> Worker {
        let response_deadlines = Deadlines::new(config.response_timeout);
        Worker {
            snapshot,
            connect_timeout: config.connect_timeout,
            response_deadlines: response_deadlines.clone(),
            _sweeper: compio::runtime::spawn(response_deadlines.sweep()),
            request_timeout: config.request_timeout,
            max_uri_len: config.max_uri_len,
            max_body_size: config.max_body_size,
            forwarded: config.forwarded,
            stats,
            log: LogLimiter::new(),
            access_log,
            max_idle_per_member: config.max_idle_per_member,
            balancers: RefCell::new(Balancers {
                snapshot: None,
                per_pool: Vec::new(),
            }),
            seed: {
                // Distinct per worker and per process: a counter and the
                // time. Only `p2c` draws from it; no secret is needed.
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t
            },
            idle: RefCell::new(AddrMap::default()),
            host_values: RefCell::new(AddrMap::default()),
        }
    }

    /// Counts `v` and logs it (rate-limited per worker).
    pub(crate) fn refused(&self, v: Violation, client: SocketAddr, why: &dyn std::fmt::Display) {
        self.stats.count(v);
        if self.log.allow() {
            tracing::warn!(client = %client, status = v.status().as_u16(), violation = v.as_str(), "{why}");
        }
    }

    /// [`Worker::refused`] and the response for it. The client's
    /// connection closes after a 4xx: the request's body was not read, so
    /// where the next request would start is unknown.
    fn refuse(&self, v: Violation, client: SocketAddr, why: &dyn std::fmt::Display) -> Response<ProxyBody> {
        self.refused(v, client, why);
        let mut resp = local(v.status());
        if v.status().is_client_error() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Picks a member of pool `pool` of `snap` with this worker's balancer
    /// for it, rebuilding the balancers when the snapshot changed.
    fn pick(
        &self,
        snap: &Arc<Snapshot>,
        pool: usize,
        client: IpAddr,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut b = self.balancers.borrow_mut();
        if !b.snapshot.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
            b.per_pool = snap
                .pools
                .iter()
                .enumerate()
                .map(|(i, p)| new_balancer(p.lbmethod, p.members.len(), self.seed ^ i as u64))
                .collect();
            b.snapshot = Some(snap.clone());
        }
        b.per_pool[pool].pick(&snap.pools[pool].members, client, eligible)
    }

    /// Takes an idle connection to `addr` that is still open, newest first
    /// (the most recently used is the least likely to have been closed by
    /// the member's idle timeout).
    fn checkout(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(u) = list.pop() {
            if !u.sender.is_closed() {
                return Some(u);
            }
        }
        None
    }

    /// Returns a connection whose last response was fully relayed. Beyond
    /// the idle limit the connection is closed.
    fn checkin(&self, addr: SocketAddr, u: Upstream) {
        if u.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle_per_member {
            list.push(u);
        }
    }

    /// Opens a new connection to `addr` within the connect timeout.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Upstream> {
        let stream = compio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        // Small requests and responses: do not wait for Nagle.
        stream.set_nodelay(true)?;
        let received = Rc::new(std::cell::Cell::new(0));
        let (sender, conn) = hyper::client::conn::http1::handshake(
            crate::io::Stream::new(stream, UPSTREAM_BUF).counting(received.clone()),
        )
        .await
        .map_err(std::io::Error::other)?;
        let upgrading = Rc::new(std::cell::Cell::new(false));
        let flag = upgrading.clone();
        let task = compio::runtime::spawn(async move {
            // The connection ends when the member closes it, on an error,
            // after a 101 (hyper then leaves the stream to us), or when
            // `Upstream` is dropped (which cancels this task).
            let mut conn = conn;
            let r = poll_fn(|cx| Pin::new(&mut conn).poll(cx)).await;
            if r.is_ok() && flag.get() {
                let parts = conn.into_parts();
                Some((parts.io, parts.read_buf))
            } else {
                None
            }
        });
        Ok(Upstream {
            sender,
            task,
            upgrading,
            received,
        })
    }

    /// Handles one client request and never fails: every error becomes a
    /// response with the proper status.
    /// `peer` is the client's address (its IP is what `byip` hashes) and
    /// `client_ip` that IP as a header value (rendered once per
    /// connection, for X-Forwarded-For); `clock` the connection's (see
    /// [`crate::limits`]).
    pub(crate) async fn handle(
        self: Rc<Self>,
        req: Request<Incoming>,
        listener: SocketAddr,
        peer: SocketAddr,
        client_ip: HeaderValue,
        clock: Rc<ConnClock>,
        upgrade: UpgradeSlot,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = clock.request_started();
        let client = peer.ip();
        if let Err(v) = limits::check_request(&req, self.max_uri_len) {
            return Ok(self.refuse(v, peer, &format_args!("{} {} refused", req.method(), v.as_str())));
        }
        if self.max_body_size > 0
            && req.body().size_hint().exact().is_some_and(|n| n > self.max_body_size)
        {
            return Ok(self.refuse(Violation::PayloadTooLarge, peer, &"declared request body over the limit"));
        }
        // A chunked request may have come with a Content-Length hyper
        // dropped: close after it (RFC 9112 section 6.1).
        let close_after = limits::must_close_after(&req);
        let snap = self.snapshot.load_full();
        let Some(routes) = snap.listener(listener) else {
            return Ok(local(StatusCode::NOT_FOUND));
        };
        // The Host is parsed (and lowercased) only if a route looks at it.
        let host = if routes
            .routes
            .iter()
            .any(|r| !matches!(r.host, HostMatch::Any))
        {
            request_host(&req)
        } else {
            None
        };
        let Some(route) = routes
            .routes
            .iter()
            .find(|r| r.matches(host.as_deref(), req.uri().path()))
        else {
            return Ok(local(StatusCode::NOT_FOUND));
        };
        let Some(pool) = snap.pools.get(route.pool) else {
            return Ok(local(StatusCode::SERVICE_UNAVAILABLE));
        };

        // The member the request names through its sticky session, if the
        // pool has them and the request carries a route.
        let sticky = pool.sticky.as_ref();
        let named = sticky.and_then(|s| session_route(&req, s));
        let named_idx = named.as_ref().and_then(|n| pool.member_by_route(&n.route));
        let p2c = pool.lbmethod == LbMethod::P2c;

        // Rewrite the request for the member: everything but Host, which
        // depends on the member, is done once.
        let websocket = websocket::is_websocket(&req);
        let (mut parts, body) = req.into_parts();
        let client_host = parts.headers.get(header::HOST).cloned();
        let upgrade_to = websocket.then(|| parts.headers.get(header::UPGRADE).cloned()).flatten();
        headers::remove_hop_by_hop(&mut parts.headers);
        if let Some(u) = &upgrade_to {
            // Upgrade is hop-by-hop: asked again of the member, by us.
            parts.headers.insert(header::UPGRADE, u.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            // An expectation the proxy has met itself: hyper answers the
            // client's `Expect: 100-continue` when the body is first read
            // (after a member was found), and the body then follows at
            // once, so the member must not wait for it twice.
            parts.headers.remove(header::EXPECT);
        }
        match self.forwarded {
            headers::ForwardedFields::XForwarded => {
                headers::add_forwarded_value(&mut parts.headers, &client_ip, "http", client_host.as_ref());
            }
            headers::ForwardedFields::Rfc7239 => {
                parts.headers.remove("x-forwarded-proto");
                parts.headers.remove("x-forwarded-host");
                headers::add_rfc7239(&mut parts.headers, client, "http", client_host.as_ref());
            }
            headers::ForwardedFields::Both => {
                headers::add_forwarded_value(&mut parts.headers, &client_ip, "http", client_host.as_ref());
                headers::add_rfc7239(&mut parts.headers, client, "http", client_host.as_ref());
            }
        }
        parts.uri = origin_form(&parts.uri);
        parts.version = http::Version::HTTP_11;
        // An idempotent request without a body can be sent again to
        // another member if the first resets before answering a byte
        // (RFC 9110 section 9.2.2); a body is streamed, not kept, so a
        // request with one is never replayed.
        // The copy is kept only where another member could take it.
        let replay = (is_idempotent(&parts.method)
            && body.is_end_stream()
            && !websocket
            && pool.members.len() > 1)
            .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
        // Only a body can fail on the client's side.
        let fault = (!body.is_end_stream()).then(|| Rc::new(BodyFault::default()));
        let mut first = Some((parts, body));

        // Pick a member and get a connection; on a connect failure try
        // another member (the request has not left the proxy yet, so this
        // is safe for every method), until none is left.
        let mut tried = Tried::new(pool.members.len());
        let (idx, up, resp, outstanding, upstream_us) = loop {
            let (idx, mut up) = loop {
                // A named member is honoured while it is usable, whatever its
                // weight: weight 0 drains a member of *new* sessions only
                // (Apache's Draining), its existing sessions stay.
                let choice = match named_idx {
                    Some(i) if !tried.contains(i) && pool.members[i].takes_sessions() => Some(i),
                    // Apache: a route that cannot be honoured (unknown, member
                    // unusable or failing) with nofailover is 503.
                    _ if named.is_some() && sticky.is_some_and(|s| s.nofailover) => {
                        return Ok(self.refuse(Violation::ServiceUnavailable, peer, &format_args!("pool {}: sticky route unusable and nofailover", pool.name)));
                    }
                    _ => self.pick(&snap, route.pool, client, &|i| !tried.contains(i)),
                };
                let Some(idx) = choice else {
                    let v = if tried.any() {
                        Violation::BadGateway
                    } else {
                        Violation::ServiceUnavailable
                    };
                    return Ok(self.refuse(v, peer, &format_args!("pool {}: no member left to try", pool.name)));
                };
                let member = &pool.members[idx];
                match self.ready_connection(member.address).await {
                    Ok(up) => break (idx, up),
                    Err(e) => {
                        MemberStats::add(&member.stats.failures, 1);
                        pool.observe(idx, Outcome::ConnectFailed);
                        if p2c {
                            member.stats.observe_latency(FAILURE_PENALTY_US, clock_ms());
                        }
                        tracing::warn!(pool = %pool.name, member = %member.address, error = %e, "connect failed; trying another member");
                        tried.insert(idx);
                    }
                }
            };
            let member = &pool.members[idx];
            let stats = &member.stats;
            let (mut parts, body) = match first.take() {
                Some((parts, body)) => (parts, Some(body)),
                None => {
                    let (method, uri, headers) = replay.as_ref().expect("only replayable requests are sent twice");
                    let (mut parts, ()) = Request::new(()).into_parts();
                    (parts.method, parts.uri, parts.headers) = (method.clone(), uri.clone(), headers.clone());
                    parts.version = http::Version::HTTP_11;
                    (parts, None)
                }
            };
            if !route.preserve_host || client_host.is_none() {
                let v = self
                    .host_values
                    .borrow_mut()
                    .entry(member.address)
                    .or_insert_with(|| member_host(member.address))
                    .clone();
                parts.headers.insert(header::HOST, v);
            }
            let body = GuardedBody::new(
                body,
                self.max_body_size,
                started + self.request_timeout,
                fault.clone(),
                peer,
            );
            let up_req = Request::from_parts(
                parts,
                Counted {
                    inner: body,
                    stats: stats.clone(),
                    sent: true,
                },
            );

            MemberStats::add(&stats.requests, 1);
            up.upgrading.set(websocket);
            let outstanding = Outstanding::new(stats.clone());
            let received_before = up.received.get();
            // Only p2c and the access log read latency: otherwise no clock
            // reads.
            let t0 = (p2c || self.access_log.is_some()).then(Instant::now);
            let mut upstream_us = None;
            let sent = self
                .response_deadlines
                .timeout(up.sender.send_request(up_req))
                .await;
            if let Some(t) = t0 {
                // Time to the response head, in microseconds; a failure or a
                // 5xx counts as at least the penalty (see `P2c`).
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                upstream_us = Some(u64::from(us));
                if p2c {
                    let ok = matches!(&sent, Ok(Ok(r)) if !r.status().is_server_error());
                    let sample = if ok { us } else { us.max(FAILURE_PENALTY_US) };
                    stats.observe_latency(sample, clock_ms());
                }
            }
            match sent {
                Err(_) => {
                    // Dropping `up` cancels its connection task: the late
                    // response, if any, is discarded with the connection.
                    MemberStats::add(&stats.failures, 1);
                    pool.observe(idx, Outcome::Timeout);
                    return Ok(self.refuse(Violation::GatewayTimeout, peer, &format_args!("pool {}: member {}: response timeout", pool.name, member.address)));
                }
                Ok(Err(e)) => {
                    // The client's body broke the exchange (too large, too
                    // slow): the client's fault, not the member's.
                    if let Some(v) = fault.as_ref().and_then(|f| f.get()) {
                        return Ok(self.refuse(v, peer, &"request body refused while forwarding"));
                    }
                    MemberStats::add(&stats.failures, 1);
                    pool.observe(idx, Outcome::Broken);
                    if replay.is_some() && up.received.get() == received_before {
                        // Not a byte of an answer: the member did not
                        // act on it in a way the client could see.
                        tracing::warn!(pool = %pool.name, member = %member.address, error = %e, "no response; retrying the idempotent request on another member");
                        tried.insert(idx);
                        continue;
                    }
                    return Ok(self.refuse(Violation::BadGateway, peer, &format_args!("pool {}: member {}: upstream error: {e}", pool.name, member.address)));
                }
                Ok(Ok(resp)) => break (idx, up, resp, outstanding, upstream_us),
            }
        };
        let member = &pool.members[idx];
        let stats = member.stats.clone();
        // The cookie to set on the response: the pool is sticky, the
        // member has a route, and the request did not already name it
        // (new session, unknown route, or failover from another member).
        let stamp = sticky.and_then(|s| {
            let n = named.as_ref();
            if member.route.is_empty() || n.is_some_and(|n| n.route == member.route) {
                return None;
            }
            set_cookie_value(s, n.map_or("", |n| n.session.as_str()), &member.route)
        });
        let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        MemberStats::add(&stats.responses[class], 1);
        pool.observe(idx, Outcome::Status(resp.status().as_u16()));

        let (mut parts, body) = resp.into_parts();
        if websocket && parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The member agreed: answer 101 to the client and leave the
            // member's connection for the client connection to join.
            let member_upgrade = parts.headers.get(header::UPGRADE).cloned();
            headers::remove_hop_by_hop(&mut parts.headers);
            parts.headers.insert(
                header::UPGRADE,
                member_upgrade.or(upgrade_to).unwrap_or(HeaderValue::from_static("websocket")),
            );
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            drop(body);
            *upgrade.borrow_mut() = Some(up);
            return Ok(Response::from_parts(parts, ProxyBody::Full(None)));
        }
        up.upgrading.set(false);
        let reusable = !headers::wants_close(&parts.headers);
        headers::remove_hop_by_hop(&mut parts.headers);
        if let (Some(s), Some(v)) = (sticky, stamp) {
            // The application's own cookie of that name wins (it may
            // carry the route already, as Tomcat's jvmRoute does).
            if !sets_cookie(&parts.headers, &s.cookie) {
                parts.headers.append(header::SET_COOKIE, v);
            }
        }
        let relay = Relay {
            body: Counted {
                inner: body,
                stats,
                sent: false,
            },
            conn: if reusable {
                Some((self.clone(), member.address, up))
            } else {
                None
            },
            _outstanding: outstanding,
            p2c,
            passive: pool.passive.is_some().then(|| (snap.clone(), route.pool, idx)),
        };
        if let (true, Some(public)) = (route.proxy_pass_reverse, &client_host) {
            let is_member = |ip: IpAddr, port: u16| {
                pool.members.iter().any(|m| m.address.ip() == ip && m.address.port() == port)
            };
            for name in headers::reverse_fields() {
                if !parts.headers.contains_key(&name) {
                    continue;
                }
                let values: Vec<HeaderValue> = parts
                    .headers
                    .get_all(&name)
                    .iter()
                    .map(|v| headers::reverse_location(v, is_member, public, "http").unwrap_or_else(|| v.clone()))
                    .collect();
                parts.headers.remove(&name);
                for v in values {
                    parts.headers.append(&name, v);
                }
            }
        }
        if close_after {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.access_log.is_some() {
            parts.extensions.insert(Answered {
                member: member.address,
                upstream_us,
            });
        }
        let mut resp = Response::from_parts(parts, ProxyBody::Relay(relay));
        if let ProxyBody::Relay(r) = resp.body_mut() {
            // A body-less response (204, 304, empty) is complete already.
            r.release_if_done();
        }
        Ok(resp)
    }

    /// A connection to `addr` that is ready to send: an idle one whose
    /// readiness is confirmed, or a new one. An idle connection that turns
    /// out closed is discarded without counting a failure: nothing was
    /// sent on it, so trying the next is safe.
    async fn ready_connection(&self, addr: SocketAddr) -> std::io::Result<Upstream> {
        while let Some(mut up) = self.checkout(addr) {
            match poll_fn(|cx| poll_ready_now(&mut up.sender, cx)).await {
                Some(true) => return Ok(up),
                Some(false) => continue,
                None => {
                    // Still finishing the previous exchange: wait for it,
                    // bounded like a connect.
                    match compio::time::timeout(self.connect_timeout, up.sender.ready()).await {
                        Ok(Ok(())) => return Ok(up),
                        _ => continue,
                    }
                }
            }
        }
        // Boxed: the connect and handshake futures are most of this
        // future's size, which every request's handler future (moved into
        // place by hyper per request) would otherwise carry.
        Box::pin(self.connect(addr)).await
    }
}

/// Polls a sender's readiness once: `Some(true)` ready, `Some(false)`
/// closed, `None` not yet.
fn poll_ready_now<B>(s: &mut SendRequest<B>, cx: &mut Context<'_>) -> Poll<Option<bool>> {
    Poll::Ready(match s.poll_ready(cx) {
        Poll::Ready(Ok(())) => Some(true),
        Poll::Ready(Err(_)) => Some(false),
        Poll::Pending => None,
    })
}

/// Methods a client may repeat with the same effect (RFC 9110 section
/// 9.2.2), so the proxy may too.
fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// The Host the request named: the Host field, or the authority of an
/// absolute-form URI; lowercase, without port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(headers::host_without_port)
        .or_else(|| req.uri().host().map(|h| h.to_ascii_lowercase()))
}

/// The Host field for a member: `address:port`, without the port when it
/// is 80 (RFC 9110 section 7.2: the default port may be omitted).
fn member_host(addr: SocketAddr) -> HeaderValue {
    let s = if addr.port() == 80 {
        match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    } else {
        addr.to_string()
    };
    HeaderValue::from_str(&s).expect("a socket address is a valid header value")
}

/// The origin-form (path and query) of a request target, which is what a
/// member expects; an absolute-form target's authority has already been
/// used for routing.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    }
}

/// The route a request names for a sticky pool, and the session id in
/// front of it (`abc` in `JSESSIONID=abc.r1`; empty for `ROUTEID=.r1`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    session: String,
    route: String,
}

/// Splits a sticky value at its first `.` as mod_proxy_balancer does:
/// no dot or nothing after it names no route.
fn split_route(value: &str) -> Option<Named> {
    let (session, route) = value.split_once('.')?;
    (!route.is_empty()).then(|| Named {
        session: session.to_owned(),
        route: route.to_owned(),
    })
}

/// The route named by the request: the URL parameter first (a path
/// parameter `;param=value` or a query parameter), then the cookie, in
/// mod_proxy_balancer's order (`find_session_route`: `get_path_param`,
/// then `get_cookie_param`).
fn session_route<B>(req: &Request<B>, s: &Sticky) -> Option<Named> {
    url_param(req.uri(), &s.param)
        .and_then(split_route)
        .or_else(|| request_cookie(req.headers(), &s.cookie).and_then(split_route))
}

/// The value of `;name=` in the path or `name=` in the query, up to the
/// next `;`, `&`, `/` or `?`.
fn url_param<'u>(uri: &'u Uri, name: &str) -> Option<&'u str> {
    let value_after = |text: &'u str, at: usize| {
        let v = &text[at + name.len() + 1..];
        let end = v.find([';', '&', '/', '?']).unwrap_or(v.len());
        &v[..end]
    };
    let path = uri.path();
    let mut from = 0;
    while let Some(pos) = path[from..].find(';').map(|p| p + from) {
        let rest = &path[pos + 1..];
        if rest.starts_with(name) && rest[name.len()..].starts_with('=') {
            return Some(value_after(path, pos + 1));
        }
        from = pos + 1;
    }
    let query = uri.query()?;
    let mut at = 0;
    for part in query.split(['&', ';']) {
        if part.starts_with(name) && part[name.len()..].starts_with('=') {
            return Some(value_after(query, at));
        }
        at += part.len() + 1;
    }
    None
}

/// The value of cookie `name` in the request's Cookie fields (RFC 6265
/// section 4.2: `name=value` pairs separated by `; `), without the
/// optional double quotes.
fn request_cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Whether the response already sets cookie `name`.
fn sets_cookie(headers: &http::HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split_once('=').is_some_and(|(n, _)| n.trim() == name))
}

/// `COOKIE=session.route; Path=/; HttpOnly[; Secure]`. The session id
/// part is kept from the request (so `JSESSIONID=abc.r1` failing over to
/// `r2` becomes `abc.r2`, which a cluster with session replication
/// accepts); it is dropped if it is not a valid cookie value.
fn set_cookie_value(s: &Sticky, session: &str, route: &str) -> Option<HeaderValue> {
    let valid = |c: u8| c.is_ascii_graphic() && !b"\",;".contains(&c);
    let session = if session.bytes().all(valid) {
        session
    } else {
        ""
    };
    let secure = if s.secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={session}.{route}; Path=/; HttpOnly{secure}",
        s.cookie
    ))
    .ok()
}

/// A response generated by the proxy itself (errors).
fn local(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Counts a member's `outstanding` requests: up on creation, down when the
/// exchange ends (response relayed, failed or abandoned by the client).
struct Outstanding(Arc<MemberStats>);

impl Outstanding {
    fn new(stats: Arc<MemberStats>) -> Outstanding {
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(stats)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A body that adds the length of each data frame to the member's
/// `bytes_sent` (request bodies) or `bytes_received` (response bodies).
pub struct Counted<B> {
    inner: B,
    stats: Arc<MemberStats>,
    sent: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                let c = if self.sent {
                    &self.stats.bytes_sent
                } else {
                    &self.stats.bytes_received
                };
                MemberStats::add(c, d.len() as u64);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A member's response body on its way to the client. When it has been
/// read to the end, the connection goes back to the worker's idle pool.
pub struct Relay {
    body: Counted<Incoming>,
    conn: Option<(Rc<Worker>, SocketAddr, Upstream)>,
    _outstanding: Outstanding,
    /// Record a broken body as a latency penalty (`p2c` pools).
    p2c: bool,
    /// Where to report a broken body to passive health (pools with it):
    /// the request's snapshot, pool index, member index.
    passive: Option<(Arc<Snapshot>, usize, usize)>,
}

impl Relay {
    fn release_if_done(&mut self) {
        if self.body.is_end_stream() {
            if let Some((w, addr, up)) = self.conn.take() {
                w.checkin(addr, up);
            }
        }
    }
}

/// Which member answered a relayed response (a response extension, set
/// only when the access log is on).
#[derive(Debug, Clone, Copy)]
struct Answered {
    member: SocketAddr,
    upstream_us: Option<u64>,
}

/// An access log record waiting for its response to be written.
pub(crate) struct PendingLog {
    record: access_log::Record,
    started: Instant,
    sender: access_log::Sender,
}

impl PendingLog {
    /// Takes what is logged of the request before the proxy consumes it.
    pub(crate) fn new<B>(req: &Request<B>, client: IpAddr, sender: access_log::Sender) -> PendingLog {
        let field = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        PendingLog {
            record: access_log::Record {
                client,
                time: std::time::SystemTime::now(),
                method: req.method().clone(),
                target: req.uri().to_string(),
                version: req.version(),
                host: field(header::HOST),
                referer: field(header::REFERER),
                user_agent: field(header::USER_AGENT),
                status: 0,
                bytes: 0,
                upstream: None,
                request_us: 0,
                upstream_us: None,
            },
            started: Instant::now(),
            sender,
        }
    }

    /// Notes the status and the member of the response.
    pub(crate) fn responded<B>(mut self, resp: &Response<B>) -> PendingLog {
        self.record.status = resp.status().as_u16();
        if let Some(a) = resp.extensions().get::<Answered>() {
            self.record.upstream = Some(a.member);
            self.record.upstream_us = a.upstream_us;
        }
        self
    }
}

/// A response body on its way to the client: when hyper drops it (fully
/// written to the connection's buffer, or abandoned), the connection
/// becomes idle for its clock and the request is logged.
pub(crate) struct Tracked {
    pub(crate) body: ProxyBody,
    pub(crate) clock: Rc<ConnClock>,
    pub(crate) keepalive: Duration,
    pub(crate) log: Option<PendingLog>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clock.response_done(self.keepalive);
        if let Some(mut l) = self.log.take() {
            l.record.request_us = u64::try_from(l.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            l.sender.send(l.record);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(l), Poll::Ready(Some(Ok(f)))) = (this.log.as_mut(), &r) {
            if let Some(d) = f.data_ref() {
                l.record.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body of every response the proxy sends.
pub enum ProxyBody {
    /// Generated by the proxy (errors); `None` once sent.
    Full(Option<Bytes>),
    /// Relayed from a member.
    Relay(Relay),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Relay(r) => {
                let res = Pin::new(&mut r.body).poll_frame(cx);
                match &res {
                    Poll::Ready(None) | Poll::Ready(Some(Ok(_))) => r.release_if_done(),
                    Poll::Ready(Some(Err(_))) => {
                        // The exchange broke mid-body: the connection's
                        // framing is unknown, never reuse it.
                        r.conn = None;
                        MemberStats::add(&r.body.stats.failures, 1);
                        if r.p2c {
                            r.body.stats.observe_latency(FAILURE_PENALTY_US, clock_ms());
                        }
                        if let Some((snap, pool, member)) = &r.passive {
                            snap.pools[*pool].observe(*member, Outcome::Broken);
                        }
                    }
                    Poll::Pending => {}
                }
                res.map(|o| o.map(|r| r.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Relay(r) => r.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Relay(r) => r.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_host_omits_default_port() {
        assert_eq!(member_host("10.0.0.1:80".parse().unwrap()), "10.0.0.1");
        assert_eq!(
            member_host("10.0.0.1:8080".parse().unwrap()),
            "10.0.0.1:8080"
        );
        assert_eq!(member_host("[::1]:80".parse().unwrap()), "[::1]");
        assert_eq!(member_host("[::1]:81".parse().unwrap()), "[::1]:81");
    }

    fn req(uri: &str, cookie: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn session_routes_from_url_and_cookie() {
        let rid = Sticky::parse("ROUTEID").unwrap();
        let js = Sticky::parse("JSESSIONID|jsessionid").unwrap();
        let named = |r: &Request<()>, s: &Sticky| session_route(r, s).map(|n| (n.session, n.route));
        let n = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(
            named(&req("/", Some("a=1; ROUTEID=.r1; b=2")), &rid),
            n("", "r1")
        );
        assert_eq!(named(&req("/", Some("ROUTEID=\".r1\"")), &rid), n("", "r1"));
        assert_eq!(named(&req("/", Some("ROUTEIDX=.r1")), &rid), None);
        assert_eq!(named(&req("/", Some("ROUTEID=r1")), &rid), None); // no dot
        assert_eq!(named(&req("/", Some("ROUTEID=x.")), &rid), None);
        assert_eq!(
            named(&req("/", Some("JSESSIONID=abc.r2")), &js),
            n("abc", "r2")
        );
        assert_eq!(
            named(&req("/app;jsessionid=abc.r3", None), &js),
            n("abc", "r3")
        );
        assert_eq!(
            named(&req("/app;jsessionid=abc.r3/x?y=1", None), &js),
            n("abc", "r3")
        );
        assert_eq!(
            named(&req("/app?x=1&jsessionid=abc.r4&z=2", None), &js),
            n("abc", "r4")
        );
        assert_eq!(named(&req("/app?xjsessionid=abc.r4", None), &js), None);
        assert_eq!(named(&req("/app;jsessionidx=abc.r4", None), &js), None);
        // The URL parameter comes first, as in mod_proxy_balancer.
        assert_eq!(
            named(&req("/;jsessionid=a.r5", Some("JSESSIONID=b.r6")), &js),
            n("a", "r5")
        );
        // The cookie name is the first part only; the URL parameter the second.
        assert_eq!(named(&req("/;JSESSIONID=a.r5", None), &js), None);
        assert_eq!(named(&req("/;ROUTEID=.r7", None), &rid), n("", "r7"));
    }

    #[test]
    fn cookie_stamp() {
        let mut s = Sticky::parse("ROUTEID").unwrap();
        assert_eq!(
            set_cookie_value(&s, "", "r1").unwrap(),
            "ROUTEID=.r1; Path=/; HttpOnly"
        );
        s.secure = true;
        assert_eq!(
            set_cookie_value(&s, "abc", "r2").unwrap(),
            "ROUTEID=abc.r2; Path=/; HttpOnly; Secure"
        );
        s.secure = false;
        assert_eq!(
            set_cookie_value(&s, "a,b", "r2").unwrap(),
            "ROUTEID=.r2; Path=/; HttpOnly"
        );
        let mut h = http::HeaderMap::new();
        h.append(header::SET_COOKIE, HeaderValue::from_static("other=1"));
        assert!(!sets_cookie(&h, "ROUTEID"));
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("ROUTEID=x.r1; Path=/"),
        );
        assert!(sets_cookie(&h, "ROUTEID"));
    }

    #[test]
    fn origin_form_of_targets() {
        assert_eq!(
            origin_form(&"http://a.example/x?y=1".parse().unwrap()),
            "/x?y=1"
        );
        assert_eq!(origin_form(&"/p".parse().unwrap()), "/p");
        assert_eq!(origin_form(&"*".parse().unwrap()), "/");
    }
}
