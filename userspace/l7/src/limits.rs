//! Client-side timeouts and request limits: the per-connection clock that
//! bounds idle keep-alive and request-head time, the request body guard
//! (maximum size, whole-request deadline), the request hygiene checks
//! hyper's parser leaves to us, and the proxy-wide counters with a
//! rate-limited log of every violation.
//!
//! Why our own clock instead of hyper's `header_read_timeout`: in hyper
//! 1.12 that timer starts whenever the dispatcher begins to read a head,
//! that is on a keep-alive connection as soon as the previous exchange
//! ends, not at the next request's first byte; it would close idle
//! connections at the header timeout and an idle timeout longer than it
//! could never apply. hyper also closes without a response where the
//! operator expects a 408. So the stream (`io::Stream`) and the
//! service report what they see to a `ConnClock`, and `watch` runs
//! next to the connection with a timer at the deadline that implies.

use std::{
    cell::Cell,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What the proxy refused or cut, each with its HTTP status. Counted in
/// [`ProxyStats`] and logged (at most [`LOG_BURST`] lines per second and
/// worker, then a summary of what was suppressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 400: a request hyper could not parse, or one the hygiene checks
    /// refuse (missing or repeated Host, Host disagreeing with an
    /// absolute-form target, repeated Content-Length).
    BadRequest,
    /// 405: `CONNECT`: a reverse proxy opens no tunnels to hosts the
    /// client names (nginx and HAProxy refuse it too).
    MethodNotAllowed,
    /// 408: the request head, or the whole request with its body, did not
    /// arrive in time ([`crate::ProxyConfig::header_read_timeout`],
    /// [`crate::ProxyConfig::request_timeout`]).
    RequestTimeout,
    /// 413: a body larger than [`crate::ProxyConfig::max_body_size`].
    PayloadTooLarge,
    /// 414: a target longer than [`crate::ProxyConfig::max_uri_len`].
    UriTooLong,
    /// 431: a head larger than [`crate::ProxyConfig::max_header_size`] or
    /// with more than [`crate::ProxyConfig::max_headers`] fields.
    HeaderFieldsTooLarge,
    /// 502: no member could be connected to, or a member's answer broke.
    BadGateway,
    /// 503: no usable member (or a sticky route with `nofailover`).
    ServiceUnavailable,
    /// 504: no response head within [`crate::ProxyConfig::response_timeout`].
    GatewayTimeout,
}

impl Violation {
    /// Every violation, in the order of [`ProxyStats`]'s counters.
    pub const ALL: [Violation; 9] = [
        Violation::BadRequest,
        Violation::MethodNotAllowed,
        Violation::RequestTimeout,
        Violation::PayloadTooLarge,
        Violation::UriTooLong,
        Violation::HeaderFieldsTooLarge,
        Violation::BadGateway,
        Violation::ServiceUnavailable,
        Violation::GatewayTimeout,
    ];

    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Violation::BadRequest => StatusCode::BAD_REQUEST,
            Violation::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Violation::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Violation::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Violation::UriTooLong => StatusCode::URI_TOO_LONG,
            Violation::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Violation::BadGateway => StatusCode::BAD_GATEWAY,
            Violation::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Violation::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short name for logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::BadRequest => "bad_request",
            Violation::MethodNotAllowed => "method_not_allowed",
            Violation::RequestTimeout => "request_timeout",
            Violation::PayloadTooLarge => "payload_too_large",
            Violation::UriTooLong => "uri_too_long",
            Violation::HeaderFieldsTooLarge => "header_fields_too_large",
            Violation::BadGateway => "bad_gateway",
            Violation::ServiceUnavailable => "service_unavailable",
            Violation::GatewayTimeout => "gateway_timeout",
        }
    }

    fn index(self) -> usize {
        Violation::ALL
            .iter()
            .position(|v| *v == self)
            .expect("every violation is in ALL")
    }
}

/// Proxy-wide counters (all workers, relaxed atomics), read by the
/// control plane for its stats.
#[derive(Debug, Default)]
pub struct ProxyStats {
    violations: [AtomicU64; Violation::ALL.len()],
    /// Keep-alive connections closed for idling past
    /// [`crate::ProxyConfig::keepalive_timeout`], and connections that
    /// sent nothing within the header read timeout (closed silently, as
    /// nginx does and HAProxy with `option http-ignore-probes`).
    pub idle_closed: AtomicU64,
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Times an idle keep-alive client connection was parked: its HTTP
    /// state and buffers freed while it waits for its next request (see
    /// [`crate::ProxyConfig::park_after`]).
    pub parked: AtomicU64,
    /// Access log records dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
}

impl ProxyStats {
    /// How many times `v` happened.
    pub fn violations(&self, v: Violation) -> u64 {
        self.violations[v.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, v: Violation) {
        self.violations[v.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Log lines per second and worker before the rest is only counted.
pub const LOG_BURST: u32 = 10;

/// A per-worker budget of log lines: a flood of malformed requests must
/// not turn into a flood of log writes (the counters still count all).
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Cell<Instant>,
    used: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    pub(crate) fn new() -> LogLimiter {
        LogLimiter {
            window: Cell::new(Instant::now()),
            used: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Whether a line may be written now; when a new one-second window
    /// opens, first reports how many lines the previous ones suppressed.
    pub(crate) fn allow(&self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.get()) >= Duration::from_secs(1) {
            self.window.set(now);
            self.used.set(0);
            let s = self.suppressed.replace(0);
            if s > 0 {
                tracing::warn!(suppressed = s, "L7 request errors: log lines suppressed");
            }
        }
        if self.used.get() < LOG_BURST {
            self.used.set(self.used.get() + 1);
            true
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            false
        }
    }
}

/// Where a client connection is between requests, as the stream and the
/// service report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No request in progress: waiting for the first byte of the next.
    Idle,
    /// Bytes of a request head have arrived; its head is not complete.
    Head,
    /// A request is being handled (its body read, its response written).
    Busy,
}

/// The activity of one client connection (see the module docs). Shared by
/// the connection's stream, service and watchdog, all on one worker.
#[derive(Debug)]
pub(crate) struct ConnClock {
    phase: Cell<Phase>,
    /// When the current phase began.
    since: Cell<Instant>,
    /// How long `Idle` may last: the header read timeout until the first
    /// request, then the keep-alive timeout.
    idle_limit: Cell<Duration>,
    /// Response bytes buffered or on their way to the socket: a 408 must
    /// not be written into the middle of a response.
    unsent: Cell<bool>,
}

impl ConnClock {
    pub(crate) fn new(header_read_timeout: Duration) -> ConnClock {
        ConnClock {
            phase: Cell::new(Phase::Idle),
            since: Cell::new(Instant::now()),
            idle_limit: Cell::new(header_read_timeout),
            unsent: Cell::new(false),
        }
    }

    /// The clock of a connection coming back from the parking lot
    /// (`crate::park`): idle since `idle_since` (the end of its last
    /// response), with the keep-alive limit.
    pub(crate) fn resumed(idle_since: Instant, keepalive_timeout: Duration) -> ConnClock {
        ConnClock {
            phase: Cell::new(Phase::Idle),
            since: Cell::new(idle_since),
            idle_limit: Cell::new(keepalive_timeout),
            unsent: Cell::new(false),
        }
    }

    /// The stream received bytes.
    pub(crate) fn received(&self) {
        if self.phase.get() == Phase::Idle {
            self.phase.set(Phase::Head);
            self.since.set(Instant::now());
        }
    }

    /// A request head was parsed: returns when the request began (its
    /// first byte, or now for a head that was already buffered).
    pub(crate) fn request_started(&self) -> Instant {
        let start = match self.phase.get() {
            Phase::Head => self.since.get(),
            _ => Instant::now(),
        };
        self.phase.set(Phase::Busy);
        self.since.set(start);
        start
    }

    /// The response has been handed to the connection in full.
    pub(crate) fn response_done(&self, keepalive_timeout: Duration) {
        self.phase.set(Phase::Idle);
        self.since.set(Instant::now());
        self.idle_limit.set(keepalive_timeout);
    }

    pub(crate) fn set_unsent(&self, unsent: bool) {
        self.unsent.set(unsent);
    }

    pub(crate) fn unsent(&self) -> bool {
        self.unsent.get()
    }

    /// When the connection became idle (no request in progress, not a
    /// byte of the next one received), or `None` while it is not idle.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        (self.phase.get() == Phase::Idle).then(|| self.since.get())
    }

    /// When an idle connection's idle limit runs out (see [`watch`]), or
    /// `None` while it is not idle.
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        self.idle_since().map(|t| t + self.idle_limit.get())
    }

    /// When the request head in progress began (its first byte), or
    /// `None` when no head is in progress.
    pub(crate) fn head_since(&self) -> Option<Instant> {
        (self.phase.get() == Phase::Head).then(|| self.since.get())
    }
}

/// Why [`watch`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Idle past its limit with no byte of a new request: close silently.
    Idle,
    /// A request head started and did not complete in time: 408.
    Head,
}

/// Resolves when the connection described by `clock` has been idle, or
/// reading one request head, for too long. Sleeps to the current phase's
/// deadline but never longer than the shortest limit, so a phase that
/// starts while it sleeps is never overslept (a new phase's deadline is
/// at least that far away).
///
/// The watchdog is polled beside hyper's connection, so on every wake-up
/// of the connection's task; it is [`Gated`], so its timer is looked at
/// only when that timer woke the task.
pub(crate) fn watch(
    clock: &ConnClock,
    header_read_timeout: Duration,
) -> impl Future<Output = Expired> + '_ {
    Gated::new(watch_ungated(clock, header_read_timeout))
}

async fn watch_ungated(clock: &ConnClock, header_read_timeout: Duration) -> Expired {
    let step = header_read_timeout.min(clock.idle_limit.get());
    loop {
        let now = Instant::now();
        let (deadline, what) = match clock.phase.get() {
            Phase::Idle => (
                Some(clock.since.get() + clock.idle_limit.get()),
                Expired::Idle,
            ),
            Phase::Head => (
                Some(clock.since.get() + header_read_timeout),
                Expired::Head,
            ),
            Phase::Busy => (None, Expired::Idle),
        };
        if let Some(d) = deadline {
            if now >= d {
                return what;
            }
        }
        let step = step.min(clock.idle_limit.get());
        let wake = deadline.map_or(now + step, |d| d.min(now + step));
        compio::time::sleep_until(wake).await;
    }
}

/// A future that is polled only when it woke its task itself (or the
/// task's waker changed), whatever else wakes the task in between.
///
/// For a future that waits long and sits beside a busy one in the same
/// task: a compio timer costs two map searches in the runtime's timer map
/// per poll, and the connection's task is woken several times per
/// request (bench/RESULTS.md, "l7cpu"). The inner future is polled with
/// a waker of its own that records the wake-up and forwards it.
pub(crate) struct Gated<F> {
    inner: F,
    gate: Option<std::sync::Arc<Gate>>,
    /// The task's waker the gate forwards to, as last registered.
    task: Option<Waker>,
}

/// The inner future's waker: marks that it was woken, then wakes the
/// task.
struct Gate {
    woken: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl std::task::Wake for Gate {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().expect("gate waker").as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F> Gated<F> {
    pub(crate) fn new(inner: F) -> Gated<F> {
        Gated {
            inner,
            gate: None,
            task: None,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is never moved out of the pinned `Gated`; the
        // other fields are not structurally pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let fresh = !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        let gate = this.gate.get_or_insert_with(|| {
            std::sync::Arc::new(Gate {
                woken: std::sync::atomic::AtomicBool::new(false),
                task: std::sync::Mutex::new(None),
            })
        });
        if fresh {
            *gate.task.lock().expect("gate waker") = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        } else if !gate.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the poll: a wake-up during it is seen next time.
        gate.woken.store(false, Ordering::Release);
        let waker = Waker::from(gate.clone());
        // SAFETY: as above, `inner` stays pinned in place.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        inner.poll(&mut Context::from_waker(&waker))
    }
}

/// The fixed 408 written when a request head times out (RFC 9110 section
/// 15.5.9: the server closes the connection).
pub(crate) const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\r\n408 Request Timeout\n";

/// Checks the parts of a request hyper's parser accepts but a proxy must
/// not forward ambiguously. hyper itself already refuses (400) differing
/// Content-Length values, an invalid Content-Length, a Transfer-Encoding
/// whose last coding is not `chunked`, Transfer-Encoding in HTTP/1.0 and
/// obs-fold; and with both Transfer-Encoding and Content-Length it drops
/// Content-Length and reads the body chunked (RFC 9112 section 6.3 rule
/// 3), which the proxy then forwards chunked only (see
/// [`must_close_after`]).
///
/// Refused here with 400 (RFC 9112 section 3.2: "A server MUST respond
/// with a 400 ... to any HTTP/1.1 request message that lacks a Host
/// header field and to any request message that contains more than one
/// Host header field line or a Host header field with an invalid
/// field value"; section 3.2.2 for the absolute form):
/// - an HTTP/1.1 request without Host, or with more than one;
/// - an absolute-form target whose authority's host differs from Host
///   (RFC 9112 says to ignore Host then; refusing is stricter and never
///   lets the two parts of the proxy chain disagree);
/// - a target longer than `max_uri_len` gets 414 instead;
/// - `CONNECT` gets 405.
pub(crate) fn check_request<B>(req: &Request<B>, max_uri_len: usize) -> Result<(), Violation> {
    if req.method() == http::Method::CONNECT {
        return Err(Violation::MethodNotAllowed);
    }
    let uri_len = req
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if uri_len > max_uri_len {
        return Err(Violation::UriTooLong);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Violation::BadRequest);
    }
    if host.is_none() && req.version() == http::Version::HTTP_11 {
        return Err(Violation::BadRequest);
    }
    if let Some(h) = host {
        // Compared case-insensitively in place: this runs on every request.
        let named = h.to_str().ok().and_then(crate::headers::host_part);
        if named.is_none() && !h.is_empty() {
            return Err(Violation::BadRequest);
        }
        if let Some(authority) = req.uri().authority() {
            let uri_host = crate::headers::host_part(authority.as_str());
            let same = match (uri_host, named) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a.is_none() && b.is_none(),
            };
            if !same {
                return Err(Violation::BadRequest);
            }
        }
    }
    Ok(())
}

/// Whether the client connection must close after this request's
/// response: a request that came with Transfer-Encoding may also have
/// had a Content-Length that hyper removed (RFC 9112 section 6.1: "the
/// server MUST close the connection after responding to such a request"),
/// and hyper leaves no trace of it, so every such request closes.
pub(crate) fn must_close_after<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Why the request body stopped short; read by the request path to pick
/// the status.
#[derive(Debug, Default)]
pub(crate) struct BodyFault(Cell<Option<Violation>>);

impl BodyFault {
    pub(crate) fn get(&self) -> Option<Violation> {
        self.0.get()
    }
}

/// The error a [`GuardedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body refused: {0:?}")]
pub(crate) struct BodyRefused(Violation);

/// A client's request body on its way to a member, cut at `max` bytes
/// (413) or at the whole-request deadline (408); a body the client breaks
/// itself is a 400.
pub(crate) struct GuardedBody {
    /// `None`: no body (a replayed request).
    inner: Option<Incoming>,
    /// Bytes still allowed; `u64::MAX` for no limit.
    left: u64,
    deadline: Instant,
    timer: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Where the request path reads why the body stopped short. `None`
    /// for a request without a body (nothing to report, and no
    /// allocation per request for it).
    fault: Option<std::rc::Rc<BodyFault>>,
    /// Set when the body was cut here: nothing more is read.
    cut: bool,
    peer: SocketAddr,
}

impl GuardedBody {
    pub(crate) fn new(
        inner: Option<Incoming>,
        max: u64,
        deadline: Instant,
        fault: Option<std::rc::Rc<BodyFault>>,
        peer: SocketAddr,
    ) -> GuardedBody {
        GuardedBody {
            inner,
            left: if max == 0 { u64::MAX } else { max },
            deadline,
            timer: None,
            fault,
            cut: false,
            peer,
        }
    }

    fn set_fault(&mut self, v: Violation) {
        self.cut = true;
        if let Some(f) = &self.fault {
            f.0.set(Some(v));
        }
    }

    fn refuse(&mut self, v: Violation) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.set_fault(v);
        Poll::Ready(Some(Err(Box::new(BodyRefused(v)))))
    }
}

type BoxError = crate::BoxError;

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if n > this.left {
                        tracing::debug!(client = %this.peer, "request body over the limit");
                        return this.refuse(Violation::PayloadTooLarge);
                    }
                    if this.left != u64::MAX {
                        this.left -= n;
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The client broke its own body (malformed chunk, reset
                // mid-body): its fault, never counted against the member.
                this.set_fault(Violation::BadRequest);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(compio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return this.refuse(Violation::RequestTimeout);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that counts its wake-ups.
    struct Count(AtomicU64);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `Gated` polls its future on the first poll, after the future woke
    /// the task itself, and when the task's waker changes; not when
    /// something else woke the task. The future's wake-up reaches the
    /// task.
    #[test]
    fn gated_polls_only_on_its_own_wake() {
        let polls = Cell::new(0);
        let slot: std::cell::RefCell<Option<Waker>> = Default::default();
        let inner = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            *slot.borrow_mut() = Some(cx.waker().clone());
            if polls.get() == 4 {
                Poll::Ready(7)
            } else {
                Poll::Pending
            }
        });
        let mut g = std::pin::pin!(Gated::new(inner));
        let task = std::sync::Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "first poll reaches the future");
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "other wake-ups do not");
        slot.borrow_mut().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "its wake-up reaches the task");
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 2, "its own wake-up does");
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 2);
        let other = std::sync::Arc::new(Count(AtomicU64::new(0)));
        let other_waker = Waker::from(other.clone());
        assert!(g.as_mut().poll(&mut Context::from_waker(&other_waker)).is_pending());
        assert_eq!(polls.get(), 3, "a new task waker does");
        slot.borrow_mut().take().unwrap().wake();
        assert_eq!(other.0.load(Ordering::Relaxed), 1, "and gets the next wake-up");
        assert_eq!(g.as_mut().poll(&mut Context::from_waker(&other_waker)), Poll::Ready(7));
    }

    fn req(target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(target);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        assert_eq!(check_request(&req("/", &["a"]), 100), Ok(()));
        assert_eq!(
            check_request(&req("/", &[]), 100),
            Err(Violation::BadRequest)
        );
        assert_eq!(
            check_request(&req("/", &["a", "a"]), 100),
            Err(Violation::BadRequest)
        );
        assert_eq!(
            check_request(&req("http://a:8080/x", &["A"]), 100),
            Ok(())
        );
        assert_eq!(
            check_request(&req("http://b/x", &["a"]), 100),
            Err(Violation::BadRequest)
        );
        let mut old = req("/", &[]);
        *old.version_mut() = http::Version::HTTP_10;
        assert_eq!(check_request(&old, 100), Ok(()));
        assert_eq!(
            check_request(&req("/0123456789", &["a"]), 10),
            Err(Violation::UriTooLong)
        );
        assert_eq!(check_request(&req("/012345678", &["a"]), 10), Ok(()));
        let mut connect = req("/", &["a:443"]);
        *connect.method_mut() = http::Method::CONNECT;
        assert_eq!(check_request(&connect, 100), Err(Violation::MethodNotAllowed));
    }

    #[test]
    fn statuses_and_names_are_distinct() {
        let mut s: Vec<_> = Violation::ALL.iter().map(|v| v.status().as_u16()).collect();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), Violation::ALL.len());
        let mut n: Vec<_> = Violation::ALL.iter().map(|v| v.as_str()).collect();
        n.sort_unstable();
        n.dedup();
        assert_eq!(n.len(), Violation::ALL.len());
        let stats = ProxyStats::default();
        stats.count(Violation::UriTooLong);
        assert_eq!(stats.violations(Violation::UriTooLong), 1);
        assert_eq!(stats.violations(Violation::BadRequest), 0);
    }

    #[test]
    fn log_limiter_allows_a_burst_per_second() {
        let l = LogLimiter::new();
        let allowed = (0..100).filter(|_| l.allow()).count();
        assert_eq!(allowed, LOG_BURST as usize);
    }
}
