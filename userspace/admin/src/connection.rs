//! One admin connection: hyper's HTTP/1 state machine, driven under our
//! own deadlines.
//!
//! Why not hyper's `header_read_timeout`: in hyper 1.12 its timer starts
//! whenever the dispatcher begins to read a head (`Conn::poll_read_head`):
//! at the first poll of a new connection, and on a keep-alive connection
//! as soon as the previous exchange is complete (`State::idle` sets
//! `notify_read` just for this), not at the next request's first byte. It
//! therefore also closes idle keep-alive connections after the header
//! timeout, and an `idle_timeout` longer than that could never take
//! effect. hyper has no idle timeout of its own either. So the IO and the service report
//! activity to an [`Activity`], and [`run`] polls the connection next to a
//! timer set to the earliest deadline that activity implies.
use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{ready, Context, Poll},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};

use crate::{routes, routes::Ctx, AdminCounters, Limits};

/// Per-connection buffer cap (hyper's default is 400 KiB). A request head
/// that does not fit is rejected; admin requests are a few hundred bytes,
/// and 64 connections at the default would pin 25 MiB.
const MAX_BUF_SIZE: usize = 16 * 1024;

/// Written, without waiting, to a connection refused for the limit.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 32\r\n\
connection: close\r\n\
\r\n\
too many admin connections open\n";

/// Answers `503` if the socket takes it at once, and closes. Never waits:
/// a refused client must not hold anything of ours.
pub(crate) fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSED);
}

/// What the deadlines are computed from.
#[derive(Debug)]
struct Activity {
    /// Requests whose head is parsed and whose answer is not yet produced.
    in_service: u32,
    /// When the pending request head began: the accept for the first
    /// request, its first byte for later ones. `None` between requests.
    head_started: Option<Instant>,
    /// The last byte moved either way, or the last answer produced.
    last_activity: Instant,
}

type Shared = Arc<Mutex<Activity>>;

fn lock(activity: &Shared) -> MutexGuard<'_, Activity> {
    // The data stays meaningful whatever panicked while holding it.
    activity.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderRead,
    Idle,
    /// `max_connection_age` reached: time to shut down gracefully.
    Age,
    /// The graceful shutdown's grace is over too.
    AgeGraceOver,
}

fn later(at: Instant, by: Duration) -> Instant {
    // A Duration::MAX limit means "practically never", not a panic.
    at.checked_add(by).unwrap_or_else(|| at + Duration::from_secs(30 * 365 * 86_400))
}

/// The earliest deadline and what it is for. Ties go to the first in
/// `HeaderRead, Idle, Age` order, so the counters name the tighter limit.
fn next_deadline(activity: &Activity, limits: &Limits, accepted: Instant, draining: bool) -> (Instant, Expiry) {
    let age = later(accepted, limits.max_connection_age);
    let age = if draining {
        (later(age, limits.reply_timeout.saturating_add(limits.idle_timeout)), Expiry::AgeGraceOver)
    } else {
        (age, Expiry::Age)
    };
    let header = activity.head_started.map(|at| (later(at, limits.header_read_timeout), Expiry::HeaderRead));
    // While the daemon is being asked, only reply_timeout bounds the wait.
    let idle = (activity.in_service == 0).then(|| (later(activity.last_activity, limits.idle_timeout), Expiry::Idle));
    [header, idle, Some(age)]
        .into_iter()
        .flatten()
        .fold(None, |best: Option<(Instant, Expiry)>, candidate| match best {
            Some(best) if best.0 <= candidate.0 => Some(best),
            _ => Some(candidate),
        })
        .expect("the age deadline is always there")
}

/// Serves one connection until the client leaves, hyper ends it, or a
/// deadline of [`Limits`] passes; the socket is closed on return.
pub(crate) async fn run(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    let accepted = Instant::now();
    let activity: Shared =
        Arc::new(Mutex::new(Activity { in_service: 0, head_started: Some(accepted), last_activity: accepted }));
    let io = TokioIo::new(TrackedIo { inner: stream, activity: activity.clone() });
    let service = {
        let (activity, ctx) = (activity.clone(), ctx.clone());
        service_fn(move |req| {
            // hyper calls this once the head is parsed, so the head deadline
            // ends here, synchronously, not when the future is first polled.
            let in_service = InService::enter(&activity);
            let ctx = ctx.clone();
            async move {
                let resp = routes::handle(req, &ctx).await;
                drop(in_service);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut conn = Box::pin(
        http1::Builder::new()
            // Ours, in `next_deadline`; see the module docs for why.
            .header_read_timeout(None)
            .max_buf_size(MAX_BUF_SIZE)
            .serve_connection(io, service),
    );
    let limits = &ctx.limits;
    let mut timer = Box::pin(tokio::time::sleep_until(later(accepted, limits.header_read_timeout)));
    let mut draining = false;
    let end = poll_fn(|cx| loop {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ok(result));
        }
        // Recomputed after every poll of the connection, because only that
        // poll (its reads, writes and service) changes the activity.
        let (deadline, expiry) = next_deadline(&lock(&activity), limits, accepted, draining);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        if expiry == Expiry::Age {
            AdminCounters::bump(&ctx.counters.0.age_limited);
            draining = true;
            // Closes an idle connection at once; lets one in progress answer first.
            conn.as_mut().graceful_shutdown();
            continue;
        }
        return Poll::Ready(Err(expiry));
    })
    .await;
    // Counted before the socket closes, so whoever sees the close sees the count.
    match end {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "admin: connection ended with an error"),
        Err(expiry) => {
            let counters = &ctx.counters.0;
            match expiry {
                Expiry::HeaderRead => AdminCounters::bump(&counters.header_timeouts),
                Expiry::Idle => AdminCounters::bump(&counters.idle_timeouts),
                Expiry::Age | Expiry::AgeGraceOver => {}
            }
            tracing::debug!(%peer, ?expiry, "admin: connection closed by a time limit");
        }
    }
    drop(conn);
}

/// Marks a request as being answered for as long as it lives.
struct InService(Shared);

impl InService {
    fn enter(activity: &Shared) -> Self {
        let mut a = lock(activity);
        a.in_service += 1;
        a.head_started = None;
        drop(a);
        Self(activity.clone())
    }
}

impl Drop for InService {
    fn drop(&mut self) {
        let mut a = lock(&self.0);
        a.in_service -= 1;
        // The answer still has to be written; idling starts from here.
        a.last_activity = Instant::now();
    }
}

/// A socket that reports moving bytes to an [`Activity`].
struct TrackedIo {
    inner: TcpStream,
    activity: Shared,
}

impl TrackedIo {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            lock(&self.activity).last_activity = Instant::now();
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now();
            let mut a = lock(&this.activity);
            a.last_activity = now;
            // Bytes between requests start the next head. Bytes read while a
            // request is answered (a pipelined head, a body) do not: at worst
            // such a head gets idle_timeout, then header_read_timeout from
            // its next byte, and max_connection_age bounds it all. Body
            // bytes after the answer count as a head: no route takes a body.
            if a.in_service == 0 && a.head_started.is_none() {
                a.head_started = Some(now);
            }
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(5),
            max_connection_age: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_new_connection_has_the_header_deadline_from_the_accept() {
        let t0 = Instant::now();
        let a = Activity { in_service: 0, head_started: Some(t0), last_activity: t0 };
        assert_eq!(next_deadline(&a, &limits(), t0, false), (t0 + Duration::from_secs(5), Expiry::HeaderRead));
    }

    #[test]
    fn an_idle_keep_alive_connection_has_only_the_idle_deadline() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let a = Activity { in_service: 0, head_started: None, last_activity: t1 };
        assert_eq!(next_deadline(&a, &limits(), t0, false), (t1 + Duration::from_secs(30), Expiry::Idle));
    }

    #[test]
    fn a_request_being_answered_is_bounded_only_by_the_age() {
        let t0 = Instant::now();
        let a = Activity { in_service: 1, head_started: None, last_activity: t0 };
        assert_eq!(next_deadline(&a, &limits(), t0, false), (t0 + Duration::from_secs(300), Expiry::Age));
        assert_eq!(next_deadline(&a, &limits(), t0, true), (t0 + Duration::from_secs(335), Expiry::AgeGraceOver));
    }

    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let t0 = Instant::now();
        let huge = Limits {
            header_read_timeout: Duration::MAX,
            idle_timeout: Duration::MAX,
            reply_timeout: Duration::MAX,
            max_connection_age: Duration::MAX,
            ..limits()
        };
        let a = Activity { in_service: 0, head_started: Some(t0), last_activity: t0 };
        assert!(next_deadline(&a, &huge, t0, true).0 > t0 + Duration::from_secs(365 * 86_400));
    }
}
