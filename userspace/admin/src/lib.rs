//! The admin HTTP server on `[admin] listen` (default 127.0.0.1:9180).
//!
//! Owns no state: each request is forwarded to the daemon loop over a
//! channel as an [`AdminRequest`], and the answer is serialised here, so
//! the loop stays the single owner of the running state.
//!
//! The server shares the process with the health checker, so it must never
//! be able to starve it of file descriptors or memory (issue 9: 1100 idle
//! admin connections exhausted the descriptors, every health check failed
//! and every backend went down). Hence every connection is bounded in
//! number, in time and in buffer size by [`Limits`], and what the bounds cut
//! off is counted in [`AdminCounters`].
//!
//! Routes: `GET /stats` (200, JSON), `HEAD /stats` (200, same headers, no
//! body), any other method on `/stats` (405 with `Allow: GET, HEAD`), any
//! other path (404). When the daemon loop is gone or does not answer within
//! [`Limits::reply_timeout`], `/stats` answers 503.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fulcrum_api::StatsReport;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, Semaphore},
    task::JoinSet,
};

mod connection;
mod routes;
#[cfg(test)]
mod tests;

/// A request from the admin server to the daemon loop.
pub enum AdminRequest {
    /// Reply with the current counters and state. The admin server stops
    /// waiting after [`Limits::reply_timeout`] and drops the receiver, so a
    /// failed `send` on this sender is normal and needs no handling.
    Stats(oneshot::Sender<StatsReport>),
}

/// Bounds on the admin server's connections. Every field has a safe
/// default ([`Limits::default`]); there is no "unlimited".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once. A connection over the limit is accepted,
    /// answered `503` in a single non-blocking write and closed at once; it
    /// is never queued, so the admin server holds at most this many
    /// descriptors plus the listener and one being refused. Counted in
    /// [`AdminCountersSnapshot::refused`]. 0 refuses every connection.
    /// Default 64.
    pub max_connections: usize,
    /// Time allowed for a whole request head (request line and headers).
    /// For the first request it runs from the accept, so a client that
    /// connects and sends nothing is closed after it too; on a keep-alive
    /// connection it runs from the first byte of the next request (the wait
    /// before that byte is [`Limits::idle_timeout`]). On expiry the
    /// connection is closed without an answer and counted in
    /// [`AdminCountersSnapshot::header_timeouts`]. Default 5 s.
    pub header_read_timeout: Duration,
    /// Time a connection may go with no request being answered and no
    /// byte moving in either direction: an idle keep-alive connection, or a
    /// client that stopped reading its answer. On expiry the connection is
    /// closed and counted in [`AdminCountersSnapshot::idle_timeouts`].
    /// Default 30 s.
    pub idle_timeout: Duration,
    /// Time to wait for the daemon loop's answer, including the wait for
    /// room in its request channel. On expiry the request is answered 503
    /// and counted in [`AdminCountersSnapshot::reply_timeouts`]; a wedged
    /// loop thus ties up a connection for at most this long. Default 5 s.
    pub reply_timeout: Duration,
    /// Lifetime of a connection, however busy. It is then shut down
    /// gracefully (a request in progress is still answered, then the
    /// connection closes) and dropped at the latest
    /// `reply_timeout + idle_timeout` later. A backstop for clients that
    /// keep a connection alive by trickling bytes; counted in
    /// [`AdminCountersSnapshot::age_limited`]. Default 300 s.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(5),
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// How the admin server's connection bounds are doing, for the daemon to
/// report. Cloning shares the same counters; they only grow, except
/// [`AdminCountersSnapshot::open`].
#[derive(Debug, Clone, Default)]
pub struct AdminCounters(Arc<Cells>);

#[derive(Debug, Default)]
struct Cells {
    accepted: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    age_limited: AtomicU64,
    reply_timeouts: AtomicU64,
}

/// A copy of the counters at one moment: the admin API's own figures,
/// in the API's wire type.
pub use fulcrum_api::AdminStats as AdminCountersSnapshot;

impl AdminCounters {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current values.
    pub fn snapshot(&self) -> AdminCountersSnapshot {
        let c = &*self.0;
        let get = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        AdminCountersSnapshot {
            accepted: get(&c.accepted),
            open: get(&c.open),
            refused: get(&c.refused),
            header_timeouts: get(&c.header_timeouts),
            idle_timeouts: get(&c.idle_timeouts),
            age_limited: get(&c.age_limited),
            reply_timeouts: get(&c.reply_timeouts),
        }
    }

    fn bump(cell: &AtomicU64) {
        cell.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves the admin API on `listener` within `limits` until the future is
/// dropped; dropping it also closes every admin connection it opened.
/// Never returns on its own: accept errors (such as `EMFILE`) are logged
/// and retried after 100 ms. Use [`serve_with_counters`] to observe what
/// the limits cut off.
pub async fn serve(listener: TcpListener, limits: Limits, requests: mpsc::Sender<AdminRequest>) {
    serve_with_counters(listener, limits, AdminCounters::new(), requests).await;
}

/// [`serve`], counting into `counters` (keep a clone to read them).
pub async fn serve_with_counters(
    listener: TcpListener,
    limits: Limits,
    counters: AdminCounters,
    requests: mpsc::Sender<AdminRequest>,
) {
    // Semaphore::new panics above MAX_PERMITS; nobody means more than that.
    let slots = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let ctx = Arc::new(routes::Ctx::new(limits, counters, requests));
    let refusal_warnings = RateLimit::new(WARN_INTERVAL);
    // Owning the connection tasks ties their life to this future's.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reaps finished tasks so the set does not grow with every connection.
            Some(_) = connections.join_next() => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            AdminCounters::bump(&ctx.counters.0.refused);
            connection::refuse(stream);
            if let Some(suppressed) = refusal_warnings.check() {
                tracing::warn!(
                    %peer,
                    max_connections = ctx.limits.max_connections,
                    refused_since_last_warning = suppressed + 1,
                    "admin: connection limit reached, refusing new admin connections"
                );
            }
            continue;
        };
        AdminCounters::bump(&ctx.counters.0.accepted);
        let open = OpenGuard::new(ctx.counters.clone(), permit);
        let ctx = ctx.clone();
        connections.spawn(async move {
            // Bound before the connection's future, so dropped after it, also
            // when the task is aborted: the slot is freed once the socket is.
            let _open = open;
            connection::run(stream, peer, ctx).await;
        });
    }
}

/// At most one warning per this interval for each kind of overload.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Holds a connection slot and the `open` gauge for one connection.
struct OpenGuard {
    counters: AdminCounters,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl OpenGuard {
    fn new(counters: AdminCounters, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        counters.0.open.fetch_add(1, Ordering::Relaxed);
        Self { counters, _permit: permit }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.counters.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets an event through at most once per interval, counting the rest.
struct RateLimit {
    interval: Duration,
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new(interval: Duration) -> Self {
        Self { interval, last: std::sync::Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(events suppressed since the last one let through)` if this one
    /// may be logged.
    fn check(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}
