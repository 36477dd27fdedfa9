//! hyper's `rt::Read`/`rt::Write` over a compio `TcpStream`, directly on
//! compio's owned-buffer operations.
//!
//! Replaces cyper-core's `HyperStream` (and the compio-io `compat` layer
//! under it) on the request path. The stream owns one read and one write
//! buffer (`Vec<u8>`); an operation *moves* its buffer in and the
//! completion gives it back, so hyper's borrowed slices never reach the
//! kernel:
//!
//! - read: serve hyper from the read buffer; when it is empty, submit a
//!   `Recv` that owns the buffer, and when it completes copy into hyper's
//!   (uninitialised, not zero-filled) slice;
//! - write: copy hyper's queued buffers (head and body) into the write
//!   buffer; `poll_flush`, or a full buffer, submits one `Send` owning it.
//!
//! The operation futures (`compio::runtime::Submit`) are stored in the
//! stream unboxed, so a read or a write costs no allocation, and there is
//! no `SendWrapper` thread check (connections never leave their worker).
//! Dropping the stream with an operation in flight drops its `Submit`,
//! which asks the driver to cancel and keeps the buffer and the descriptor
//! until the completion arrives (see the crate docs).
use std::{
    future::Future,
    io,
    mem::{self, MaybeUninit},
    pin::Pin,
    rc::Rc,
    task::{ready, Context, Poll},
};

use compio::{
    driver::{
        op::{Recv, RecvFlags, Send, SendFlags},
        SharedFd, ToSharedFd,
    },
    net::TcpStream,
    runtime::Submit,
};

use crate::limits::ConnClock;

/// Initial capacity of a client connection's read buffer. The read buffer
/// is held by the `recv` in flight for as long as a keep-alive connection
/// is idle; most request heads fit, larger ones take more reads.
pub(crate) const CLIENT_BUF: usize = 4 * 1024;

/// Above this many buffered bytes a write starts sending instead of
/// buffering more (backpressure for large bodies).
const WRITE_HIGH_WATER: usize = 64 * 1024;

type Fd = SharedFd<socket2::Socket>;

/// A TCP stream for hyper (see the module docs).
pub(crate) struct Stream {
    stream: TcpStream,
    fd: Fd,
    buf_size: usize,
    /// Received bytes not yet given to hyper: `rbuf[rpos..]`. Empty (and
    /// capacity 0) while a `Recv` owns the buffer.
    rbuf: Vec<u8>,
    rpos: usize,
    recv: Option<Submit<Recv<Vec<u8>, Fd>>>,
    eof: bool,
    /// Bytes accepted from hyper and not yet sent: `wbuf[wpos..]`. Empty
    /// while a `Send` owns the buffer.
    wbuf: Vec<u8>,
    send: Option<Submit<Send<Vec<u8>, Fd>>>,
    /// A client connection's activity clock (`None` towards members).
    clock: Option<Rc<ConnClock>>,
    /// Total bytes received, for a member connection's retry decision.
    received: Option<Rc<std::cell::Cell<u64>>>,
}

impl Stream {
    /// `buf`: initial capacity of the read buffer (the write buffer grows
    /// with what hyper writes).
    pub(crate) fn new(stream: TcpStream, buf: usize) -> Stream {
        Stream::with_clock(stream, buf, None)
    }

    /// A stream that reports received bytes and unsent response bytes to
    /// `clock` (client connections, see [`crate::limits`]).
    pub(crate) fn with_clock(stream: TcpStream, buf: usize, clock: Option<Rc<ConnClock>>) -> Stream {
        let fd = stream.to_shared_fd();
        Stream {
            stream,
            fd,
            buf_size: buf,
            rbuf: Vec::new(),
            rpos: 0,
            recv: None,
            eof: false,
            wbuf: Vec::new(),
            send: None,
            clock,
            received: None,
        }
    }

    /// Adds every received byte count to `total`.
    pub(crate) fn counting(mut self, total: Rc<std::cell::Cell<u64>>) -> Stream {
        self.received = Some(total);
        self
    }

    /// Drives the `Send` in flight, if any, to completion. A short send
    /// puts the rest back in front of the buffer.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.send.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let compio::BufResult(res, op) = ready!(Pin::new(op).poll(cx));
        self.send = None;
        let mut buf = compio::buf::IntoInner::into_inner(op);
        let sent = match res {
            Ok(0) if !buf.is_empty() => {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(e)),
        };
        buf.drain(..sent.min(buf.len()));
        if buf.is_empty() && buf.capacity() > WRITE_HIGH_WATER {
            // Do not keep a large body's buffer on an idle connection.
            buf = Vec::new();
        }
        // Bytes hyper wrote while the send was in flight cannot exist (the
        // write path waits for it), so the buffer is the rest of this one.
        debug_assert!(self.wbuf.is_empty());
        self.wbuf = buf;
        self.note_unsent();
        Poll::Ready(Ok(()))
    }

    fn note_unsent(&self) {
        if let Some(c) = &self.clock {
            c.set_unsent(!self.wbuf.is_empty() || self.send.is_some());
        }
    }

    /// Submits the write buffer as one `Send`.
    fn start_send(&mut self) {
        let buf = mem::take(&mut self.wbuf);
        let op = Send::new(self.fd.clone(), buf, SendFlags::NOSIGNAL);
        self.send = Some(compio::runtime::submit(op));
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rpos < this.rbuf.len() {
                // SAFETY: we only write initialised bytes into the slice and
                // advance by exactly their count.
                let dst: &mut [MaybeUninit<u8>] = unsafe { cursor.as_mut() };
                let n = dst.len().min(this.rbuf.len() - this.rpos);
                let src = &this.rbuf[this.rpos..this.rpos + n];
                // SAFETY: `MaybeUninit<u8>` has the layout of `u8`.
                dst[..n]
                    .copy_from_slice(unsafe { std::slice::from_raw_parts(src.as_ptr().cast(), n) });
                unsafe { cursor.advance(n) };
                this.rpos += n;
                if this.rpos == this.rbuf.len() {
                    this.rbuf.clear();
                    this.rpos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.recv.is_none() {
                let mut buf = mem::take(&mut this.rbuf);
                buf.clear();
                if buf.capacity() < this.buf_size {
                    buf.reserve_exact(this.buf_size);
                }
                this.rpos = 0;
                let op = Recv::new(this.fd.clone(), buf, RecvFlags::empty());
                this.recv = Some(compio::runtime::submit(op));
            }
            let op = this.recv.as_mut().expect("recv in flight");
            let compio::BufResult(res, op) = ready!(Pin::new(op).poll(cx));
            this.recv = None;
            let mut buf = compio::buf::IntoInner::into_inner(op);
            match res {
                Ok(n) => {
                    // SAFETY: the kernel wrote `n` bytes at the start of the
                    // (empty) buffer; `n` never exceeds its capacity.
                    unsafe { buf.set_len(n.min(buf.capacity())) };
                    if n == 0 {
                        this.eof = true;
                    } else {
                        if let Some(c) = &this.clock {
                            c.received();
                        }
                        if let Some(t) = &this.received {
                            t.set(t.get() + n as u64);
                        }
                    }
                    this.rbuf = buf;
                }
                Err(e) => {
                    this.rbuf = buf;
                    this.rbuf.clear();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if this.wbuf.len() >= WRITE_HIGH_WATER {
            this.start_send();
            ready!(this.poll_send(cx))?;
        }
        let room = WRITE_HIGH_WATER.saturating_sub(this.wbuf.len()).max(1);
        let mut total = 0;
        for b in bufs {
            let n = b.len().min(room - total);
            this.wbuf.extend_from_slice(&b[..n]);
            total += n;
            if total == room {
                break;
            }
        }
        this.note_unsent();
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_send(cx))?;
            if this.wbuf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.start_send();
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        // A plain `shutdown(2)`: it does not block.
        let r = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

/// Parking an idle client connection (see `crate::park`): added for it,
/// used between two hyper connections over the same stream.
impl Stream {
    /// Waits for the `Recv` in flight, if any, to complete. Ready when no
    /// receive is in flight. The bytes it received are appended to the
    /// buffered ones (served first by the next read); end of stream is
    /// remembered. An error is returned.
    pub(crate) fn poll_settle_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.recv.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let compio::BufResult(res, op) = ready!(Pin::new(op).poll(cx));
        self.recv = None;
        let mut buf = compio::buf::IntoInner::into_inner(op);
        let n = res?;
        // SAFETY: as in `poll_read`: the kernel wrote `n` bytes at the start
        // of the empty buffer.
        unsafe { buf.set_len(n.min(buf.capacity())) };
        if n == 0 {
            self.eof = true;
        } else {
            if let Some(c) = &self.clock {
                c.received();
            }
            if let Some(t) = &self.received {
                t.set(t.get() + n as u64);
            }
        }
        if self.rpos < self.rbuf.len() {
            // Bytes kept from before the receive come first.
            self.rbuf.extend_from_slice(&buf);
        } else {
            self.rbuf = buf;
            self.rpos = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether a receive is in flight.
    pub(crate) fn receiving(&self) -> bool {
        self.recv.is_some()
    }

    /// Whether a read would return at once: unread bytes, or end of
    /// stream seen.
    pub(crate) fn has_input(&self) -> bool {
        self.eof || self.rpos < self.rbuf.len()
    }

    /// Frees the write buffer and the read buffer (capacity 0), keeping
    /// `prefix` followed by the unread bytes (exactly sized) to be read
    /// first. A receive in flight keeps its own buffer. Call with nothing
    /// left to send.
    pub(crate) fn park(&mut self, prefix: &[u8]) {
        debug_assert!(self.send.is_none() && self.wbuf.is_empty());
        let unread = &self.rbuf[self.rpos.min(self.rbuf.len())..];
        let mut kept = Vec::with_capacity(prefix.len() + unread.len());
        kept.extend_from_slice(prefix);
        kept.extend_from_slice(unread);
        self.rbuf = kept;
        self.rpos = 0;
        self.wbuf = Vec::new();
    }
}
