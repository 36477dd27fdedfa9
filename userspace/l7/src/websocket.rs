//! WebSocket (and only WebSocket) HTTP/1.1 upgrades: after the member
//! answers `101 Switching Protocols`, the client's and the member's
//! connections are joined and bytes copied both ways until either side
//! closes or nothing moves for [`crate::ProxyConfig::websocket_idle_timeout`]
//! (HAProxy `timeout tunnel`, Apache mod_proxy_wstunnel's
//! `ProxyWebsocketIdleTimeout`).
//!
//! hyper's own upgrade mechanism (`hyper::upgrade::on`) needs a `Send` IO
//! object, and our streams are `!Send` by design (they never leave their
//! worker). So both sides use hyper's manual path instead: the server and
//! client connections return `Ok` after the 101 without shutting the IO
//! down, and `into_parts` gives back each stream with the bytes hyper had
//! already read past the head (the first frames), which are forwarded
//! first.

use std::{
    future::{poll_fn, Future},
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Version};
use hyper::rt::{Read, ReadBuf, Write};

use crate::io::Stream;

/// Copy buffer per direction, bytes.
const BUF: usize = 16 * 1024;

/// Whether `req` asks to upgrade to WebSocket (RFC 6455 section 4.1:
/// HTTP/1.1, `Upgrade: websocket`, `Connection` naming `upgrade`). Other
/// upgrade tokens (`h2c`, ...) are not tunnelled: their Upgrade field is
/// dropped as hop-by-hop and the request proxied as a plain one.
pub(crate) fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && tokens(req.headers(), header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && tokens(req.headers(), header::UPGRADE).any(|t| {
            t.split('/')
                .next()
                .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
        })
}

fn tokens(h: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// One direction of the tunnel: bytes read from one side not yet written
/// to the other.
struct Half {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
}

impl Half {
    /// Starts with `pending`, bytes read past the 101 exchange's head.
    fn new(pending: Bytes) -> Half {
        let mut buf = vec![0; BUF.max(pending.len())];
        buf[..pending.len()].copy_from_slice(&pending);
        Half {
            buf,
            start: 0,
            end: pending.len(),
            eof: false,
            done: false,
        }
    }

    /// Moves bytes from `from` to `to` until `from` is pending or at its
    /// end (then `to` is shut down for writing). Sets `moved` when a byte
    /// went through.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Stream,
        to: &mut Stream,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.start < self.end {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                *moved = true;
                continue;
            }
            // Our stream buffers writes: send them before reading more.
            ready!(Pin::new(&mut *to).poll_flush(cx))?;
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut *from).poll_read(cx, rb.unfilled()))?;
            let n = rb.filled().len();
            (self.start, self.end) = (0, n);
            if n == 0 {
                self.eof = true;
            } else {
                *moved = true;
            }
        }
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A side failed (reset, ...).
    Failed(io::Error),
}

/// Copies between `client` and `member` (each with the bytes already read
/// from it) until both directions end, one fails, or `idle` passes
/// without a byte moving either way.
pub(crate) async fn tunnel(
    (mut client, from_client): (Stream, Bytes),
    (mut member, from_member): (Stream, Bytes),
    idle: Duration,
) -> End {
    let mut up = Half::new(from_client);
    let mut down = Half::new(from_member);
    let mut deadline = Instant::now() + idle;
    let mut timer: Pin<Box<dyn Future<Output = ()>>> =
        Box::pin(compio::time::sleep_until(deadline));
    poll_fn(|cx| {
        let mut moved = false;
        if !up.done {
            if let Poll::Ready(Err(e)) = up.poll(cx, &mut client, &mut member, &mut moved) {
                return Poll::Ready(End::Failed(e));
            }
        }
        if !down.done {
            if let Poll::Ready(Err(e)) = down.poll(cx, &mut member, &mut client, &mut moved) {
                return Poll::Ready(End::Failed(e));
            }
        }
        if up.done && down.done {
            return Poll::Ready(End::Closed);
        }
        if moved {
            deadline = Instant::now() + idle;
        }
        // The timer is re-armed only when it fires before the (moved)
        // deadline: one timer per idle period, not per frame.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(End::Idle);
            }
            timer = Box::pin(compio::time::sleep_until(deadline));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_requests() {
        let req = |v: Version, conn: &str, up: &str| {
            Request::get("/")
                .version(v)
                .header(header::CONNECTION, conn)
                .header(header::UPGRADE, up)
                .body(())
                .unwrap()
        };
        assert!(is_websocket(&req(Version::HTTP_11, "Upgrade", "websocket")));
        assert!(is_websocket(&req(Version::HTTP_11, "keep-alive, upgrade", "WebSocket")));
        assert!(!is_websocket(&req(Version::HTTP_11, "keep-alive", "websocket")));
        assert!(!is_websocket(&req(Version::HTTP_11, "upgrade", "h2c")));
        assert!(!is_websocket(&req(Version::HTTP_10, "upgrade", "websocket")));
    }
}
