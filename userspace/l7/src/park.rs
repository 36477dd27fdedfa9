//! Parking idle keep-alive client connections.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and the boxed
//! request handler for the life of a connection: most of the ~18 KB an
//! idle client connection cost (`bench/RESULTS.md`, l7). HAProxy and nginx
//! hold about 1 KB because they release buffers between requests. Parking
//! does the same on top of hyper: after [`crate::ProxyConfig::park_after`]
//! idle, the serve loop (`runtime::serve`) asks hyper to close the idle
//! connection (`graceful_shutdown`; hyper writes nothing when no request
//! is in progress), takes it apart (`into_parts`: our stream, the bytes
//! hyper read ahead, the service), frees the stream's write and read
//! buffers, and waits for the receive hyper left in flight to complete
//! (or, with none in flight, for readability with a poll that holds no
//! buffer). Then a new hyper connection serves the same socket, the kept
//! bytes first. The receive in flight keeps its 4 KiB buffer: it is not
//! cancelled, because no cancellation available here returns its bytes
//! when data races it (see `docs/l7.md`, "Parking idle connections").
//!
//! This module holds the two pieces hyper's connection owns while it
//! runs: [`ParkIo`], the stream as hyper sees it, which keeps hyper from
//! shutting the socket down when the connection is being parked; and
//! [`ParkCtl`], what the serve loop shares with it.

use std::{
    cell::Cell,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use crate::io::Stream;

/// What the serve loop shares with the [`ParkIo`] inside hyper's
/// connection (one per client connection).
#[derive(Default)]
pub(crate) struct ParkCtl {
    /// Set while the connection is being parked: hyper's final
    /// `poll_shutdown` then only flushes, the socket stays open.
    pub(crate) parking: Cell<bool>,
    /// Requests this connection has started (all hyper connections over
    /// it): hyper closes at `graceful_shutdown` without writing only once
    /// a request has completed on its connection (before that it is not
    /// "idle" in hyper's sense and would answer the first request with
    /// `Connection: close`), so only such connections are parked.
    pub(crate) requests: Cell<u64>,
}

/// The client stream as hyper's server connection sees it (see the module
/// docs).
pub(crate) struct ParkIo {
    pub(crate) stream: Stream,
    ctl: std::rc::Rc<ParkCtl>,
}

impl ParkIo {
    pub(crate) fn new(stream: Stream, ctl: std::rc::Rc<ParkCtl>) -> ParkIo {
        ParkIo { stream, ctl }
    }
}

impl hyper::rt::Read for ParkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, cursor)
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
