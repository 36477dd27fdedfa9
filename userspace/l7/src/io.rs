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
/// is held by the `recv` in flight while it waits (an idle keep-alive
/// connection waits without one, see `crate::park`); most request heads
/// fit, larger ones take more reads.
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
    /// The error of a receive that ended while no read waited for it
    /// ([`Stream::poll_recv_cancelled`]), for the next read.
    failed: Option<io::Error>,
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
            failed: None,
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
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Err(e));
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
            ready!(this.poll_recv(cx))?;
        }
    }
}

impl Stream {
    /// Drives the `Recv` in flight to its end: its bytes (or the end of
    /// the stream) into the read buffer, or its error.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let op = self.recv.as_mut().expect("recv in flight");
        let compio::BufResult(res, op) = ready!(Pin::new(op).poll(cx));
        self.recv = None;
        let mut buf = compio::buf::IntoInner::into_inner(op);
        match res {
            Ok(n) => {
                // SAFETY: the kernel wrote `n` bytes at the start of the
                // (empty) buffer; `n` never exceeds its capacity.
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
                self.rbuf = buf;
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                self.rbuf = buf;
                self.rbuf.clear();
                Poll::Ready(Err(e))
            }
        }
    }

    /// After [`CancelRecv`] was submitted for this stream: waits for the
    /// `Recv` in flight to end. `true` if it ended cancelled (nothing was
    /// received, no receive is in flight now); `false` if it completed
    /// first (its bytes, end of stream or error are kept for the next
    /// read), or if none was in flight.
    pub(crate) fn poll_recv_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.recv.is_none() {
            return Poll::Ready(false);
        }
        Poll::Ready(match ready!(self.poll_recv(cx)) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => true,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        })
    }
}

/// `IORING_OP_ASYNC_CANCEL` of every operation on a stream's socket
/// (`IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL`, Linux 5.19): takes
/// back a `Recv` without dropping its future, so its completion is still
/// read ([`Stream::poll_recv_cancelled`]): `ECANCELED`, or its bytes when
/// it completed first. Dropping the future instead (compio's own
/// cancellation) would discard those bytes. The operation holds the
/// descriptor open until it completes, so its number cannot name a newer
/// socket by then. On the polling driver it completes at once and cancels
/// nothing (the receive ends only when bytes come).
pub(crate) struct CancelRecv {
    fd: Fd,
}

impl CancelRecv {
    pub(crate) fn new(fd: Fd) -> CancelRecv {
        CancelRecv { fd }
    }
}

// SAFETY: the entry names only the descriptor, which the operation keeps
// open; it carries no buffer.
unsafe impl compio::driver::IourOpCode for CancelRecv {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> compio::driver::OpEntry {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = io_uring::types::Fd(self.fd.as_fd().as_raw_fd());
        io_uring::opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::fd(fd).all()).build().into()
    }
}

// SAFETY: completes at once, touching nothing.
unsafe impl compio::driver::PollOpCode for CancelRecv {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<compio::driver::Decision> {
        Ok(compio::driver::Decision::Completed(0))
    }

    fn operate(&mut self, _: &mut ()) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
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
/// used between two hyper connections over the same socket.
impl Stream {
    /// The socket's shared descriptor (for a readability poll).
    pub(crate) fn fd(&self) -> &Fd {
        &self.fd
    }

    /// Whether a receive is in flight.
    pub(crate) fn receiving(&self) -> bool {
        self.recv.is_some()
    }

    /// Whether a read would return at once: unread bytes, or end of
    /// stream seen.
    pub(crate) fn has_input(&self) -> bool {
        self.eof || self.failed.is_some() || self.rpos < self.rbuf.len()
    }

    /// Takes the stream apart for parking: the socket, and `prefix`
    /// followed by the unread bytes in one exactly sized buffer (empty,
    /// and no allocation, when there are none). Both buffers are freed.
    /// Call with nothing left to send and no receive in flight (a
    /// receive's buffer and bytes would be lost with it).
    pub(crate) fn into_parked(self, prefix: &[u8]) -> (TcpStream, Box<[u8]>) {
        debug_assert!(self.send.is_none() && self.wbuf.is_empty() && self.recv.is_none());
        let unread = &self.rbuf[self.rpos.min(self.rbuf.len())..];
        let mut kept = Vec::with_capacity(prefix.len() + unread.len());
        kept.extend_from_slice(prefix);
        kept.extend_from_slice(unread);
        (self.stream, kept.into_boxed_slice())
    }

    /// A client stream over a socket that was parked: `kept` (from
    /// [`Stream::into_parked`]) is read first.
    pub(crate) fn resumed(stream: TcpStream, buf: usize, clock: Rc<ConnClock>, kept: Box<[u8]>) -> Stream {
        let mut s = Stream::with_clock(stream, buf, Some(clock));
        s.rbuf = kept.into_vec();
        s
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::poll_fn,
        io::Read,
        net::TcpListener as StdListener,
        sync::mpsc,
        thread,
        time::{Duration, Instant},
    };

    use compio::driver::{DriverType, ProactorBuilder};
    use hyper::rt::Write as _;

    use super::*;

    /// A runtime on `driver` as the workers build it, or `None` (said on
    /// stderr) where the kernel refuses io_uring, unless
    /// `FULCRUM_REQUIRE_IO_URING=1`.
    fn runtime(driver: DriverType) -> Option<compio::runtime::Runtime> {
        let mut proactor = ProactorBuilder::new();
        proactor.driver_type(driver);
        if driver == DriverType::IoUring {
            proactor.single_issuer(true).defer_taskrun(true);
        }
        match compio::runtime::RuntimeBuilder::new().with_proactor(proactor).build() {
            Ok(rt) if rt.driver_type() == driver => Some(rt),
            r => {
                let why = r.err().map_or("fell back to another driver".to_string(), |e| e.to_string());
                if std::env::var("FULCRUM_REQUIRE_IO_URING").is_ok_and(|v| v == "1") {
                    panic!("{driver:?} unavailable: {why}");
                }
                eprintln!("SKIPPED: {driver:?} unavailable here ({why})");
                None
            }
        }
    }

    /// A byte pattern that shows loss and reordering.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A reader thread on the accepted end of a loopback connection: waits
    /// for `go`, reads to EOF (bounded by 10 s), returns what it read.
    fn reader(listener: StdListener, go: mpsc::Receiver<()>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            go.recv().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        })
    }

    /// Waits (polling the runtime's timer) until the reader thread ends.
    async fn join(h: &thread::JoinHandle<Vec<u8>>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "the reader did not finish");
            compio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Many writes (short and past the high-water mark) and flushes in a
    /// row, then shutdown: every byte arrives, in order, and the peer sees
    /// EOF.
    fn flushes_then_shutdown(driver: DriverType) {
        let Some(rt) = runtime(driver) else { return };
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, wait) = mpsc::channel();
        let h = reader(listener, wait);
        let data = pattern(3 * 1024 * 1024 + 17);
        rt.block_on(async {
            let mut s = Stream::new(TcpStream::connect(addr).await.unwrap(), CLIENT_BUF);
            go.send(()).unwrap();
            let mut sent = 0;
            // Alternately small writes each flushed, and 100 KB written in
            // one go (past WRITE_HIGH_WATER: sends while writing) and
            // flushed only with the next small one.
            let mut rest = &data[..];
            for i in 0.. {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at(rest.len().min(if i % 2 == 0 { 7 * 1024 + 3 } else { 100_003 }));
                rest = tail;
                let mut off = 0;
                while off < chunk.len() {
                    off += poll_fn(|cx| Pin::new(&mut s).poll_write(cx, &chunk[off..])).await.unwrap();
                }
                if i % 2 == 0 {
                    poll_fn(|cx| Pin::new(&mut s).poll_flush(cx)).await.unwrap();
                }
                sent += chunk.len();
            }
            assert_eq!(sent, data.len());
            poll_fn(|cx| Pin::new(&mut s).poll_shutdown(cx)).await.unwrap();
            join(&h).await;
        });
        assert!(h.join().unwrap() == data, "bytes lost or reordered");
    }

    #[test]
    fn flushes_then_shutdown_io_uring() {
        flushes_then_shutdown(DriverType::IoUring);
    }

    #[test]
    fn flushes_then_shutdown_polling() {
        flushes_then_shutdown(DriverType::Poll);
    }
}
