//! Parking idle keep-alive client connections.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and the boxed
//! request handler for the life of a connection, and our stream's receive
//! in flight holds its own buffer: ~18 KB per idle client connection
//! (`bench/RESULTS.md`, l7). HAProxy and nginx hold about 1 KB because
//! they release buffers between requests. Parking does the same on top of
//! hyper: after [`crate::ProxyConfig::park_after`] idle, the serve loop
//! (`runtime::serve`) asks hyper to close the idle connection
//! (`graceful_shutdown`; hyper writes nothing when no request is in
//! progress), takes it apart (`into_parts`: our stream, the bytes hyper
//! read ahead, the service), cancels the receive in flight and waits for
//! its completion (bytes that raced with the cancellation are kept, never
//! dropped), frees every buffer, and waits for readability with a poll
//! (`IORING_OP_POLL_ADD`, or epoll on the fallback driver) that holds no
//! buffer. On readability a new hyper connection serves the same socket,
//! the kept bytes first. See `docs/l7.md`, "Parking idle connections".
//!
//! This module holds the two pieces hyper's connection owns while it
//! runs: [`ParkIo`], the stream as hyper sees it, which keeps hyper from
//! shutting the socket down when the connection is being parked and
//! submits each receive under a cancel token; and [`ParkCtl`], what the
//! serve loop shares with it.

use std::{
    cell::{Cell, RefCell},
    future::{poll_fn, Future},
    io,
    pin::{pin, Pin},
    task::{Context, Poll},
};

use compio::runtime::{CancelToken, WithCancel};

use crate::io::Stream;

/// What the serve loop shares with the [`ParkIo`] inside hyper's
/// connection (one per client connection).
#[derive(Default)]
pub(crate) struct ParkCtl {
    /// Set while the connection is being parked: hyper's final
    /// `poll_shutdown` then only flushes, the socket stays open.
    pub(crate) parking: Cell<bool>,
    /// The token the receive in flight was submitted under, to cancel it
    /// when parking. A fresh token per receive: a token keeps a weak
    /// reference to every operation registered with it (and so that
    /// operation's allocation) until it is dropped.
    pub(crate) recv_token: RefCell<Option<CancelToken>>,
    /// Requests this connection has started (all hyper connections over
    /// it): hyper closes at `graceful_shutdown` without writing only once
    /// a request has completed on its connection (before that it is not
    /// "idle" in hyper's sense and would answer the first request with
    /// `Connection: close`), so only such connections are parked.
    pub(crate) requests: Cell<u64>,
}

impl ParkCtl {
    /// Cancels the receive in flight, if one was submitted under the
    /// current token. Its completion still arrives: data or `ECANCELED`.
    pub(crate) fn cancel_recv(&self) {
        if let Some(t) = self.recv_token.borrow_mut().take() {
            t.cancel();
        }
    }
}

/// The client stream as hyper's server connection sees it (see the module
/// docs).
pub(crate) struct ParkIo {
    pub(crate) stream: Stream,
    ctl: std::rc::Rc<ParkCtl>,
    /// The last read returned: the next one may submit a new receive, so
    /// it gets a new token.
    renew: bool,
}

impl ParkIo {
    pub(crate) fn new(stream: Stream, ctl: std::rc::Rc<ParkCtl>) -> ParkIo {
        ParkIo {
            stream,
            ctl,
            renew: true,
        }
    }
}

impl hyper::rt::Read for ParkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.renew {
            *this.ctl.recv_token.borrow_mut() = Some(CancelToken::new());
            this.renew = false;
        }
        let token = this
            .ctl
            .recv_token
            .borrow()
            .clone()
            .unwrap_or_default();
        // compio registers an operation with the token in the context when
        // it is first polled (submitted), so only the receive, not the
        // sends or the member side's operations, is polled under it.
        let stream = &mut this.stream;
        let mut cursor = Some(cursor);
        let read = poll_fn(move |cx| {
            let cursor = cursor.take().expect("polled once");
            hyper::rt::Read::poll_read(Pin::new(&mut *stream), cx, cursor)
        });
        let r = pin!(WithCancel::new(read, token)).poll(cx);
        if r.is_ready() {
            this.renew = true;
        }
        r
    }
}

impl hyper::rt::Write for ParkIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ctl.parking.get() {
            // hyper is done with an idle connection we are parking: the
            // client must not see a FIN.
            Pin::new(&mut this.stream).poll_flush(cx)
        } else {
            Pin::new(&mut this.stream).poll_shutdown(cx)
        }
    }
}
