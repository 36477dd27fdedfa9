//! Parking idle keep-alive client connections.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and the boxed
//! request handler for the life of a connection, and a connection's task
//! holds its future (~1.5 KB) and a watchdog timer: most of the ~18 KB an
//! idle client connection cost (`bench/RESULTS.md`, l7). HAProxy and nginx
//! hold about 1 KB because they release their buffers between requests.
//! Parking does the same on top of hyper: after
//! [`crate::ProxyConfig::park_after`] idle, the serve task
//! (`runtime::serve`) asks hyper to close the idle connection
//! (`graceful_shutdown`; hyper writes nothing when no request is in
//! progress), takes it apart (`into_parts`), frees every buffer, hands a
//! descriptor of the socket (with the bytes hyper read ahead, if any) to
//! its worker's [`Lot`], and ends. A parked connection is a slot in the
//! lot's table and an item in the lot's epoll set, not a task, an
//! operation or an allocation. The lot's one task spawns a new serve task
//! for an entry whose socket became readable (a new hyper connection, the
//! kept bytes first), and closes entries whose keep-alive time ran out,
//! with one timer for all of them.
//!
//! No receive (and no receive buffer) is in flight at the park: [`ParkIo`]
//! waits for readability before it lets the stream submit a receive when
//! the next bytes are not expected soon (see [`ParkIo`]). A receive could
//! not be taken back without risking the bytes it carries (`docs/l7.md`,
//! "Parking idle connections"); a poll can.
//!
//! This module holds [`ParkIo`], the stream as hyper sees it, [`ParkCtl`],
//! what the serve loop shares with it, and the [`Lot`].

use std::{
    cell::{Cell, RefCell},
    cmp::Reverse,
    collections::BinaryHeap,
    future::Future,
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::Pin,
    rc::Rc,
    task::{ready, Context, Poll, Waker},
    time::{Duration, Instant},
};

use compio::{
    driver::{
        op::{Interest, PollOnce},
        SharedFd,
    },
    runtime::Submit,
};

use crate::{
    io::{CancelRecv, Stream},
    limits::ConnClock,
};

/// A wait for the next request shorter than this counts towards a hot
/// connection (see [`ParkIo`]). Loopback round trips under load are tens
/// to hundreds of µs; a client across a network, or a person, takes
/// longer.
const HOT_GAP: Duration = Duration::from_millis(1);

/// Consecutive short waits that make a connection hot (see [`ParkIo`]).
const HOT_AFTER: u8 = 3;

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
    /// A receive is in flight on the stream (after the last read hyper
    /// asked for): the connection is not parked then, its buffer and
    /// bytes would be lost.
    pub(crate) receiving: Cell<bool>,
    /// Set by the serve loop when a hot connection's receive has waited
    /// past the park delay: the next read takes the receive back (see
    /// [`ParkIo`]), and the connection parks if it ended cancelled.
    pub(crate) cancel_receive: Cell<bool>,
}

/// The client stream as hyper's server connection sees it: keeps hyper
/// from shutting the socket down when the connection is being parked, and
/// waits for readability before a receive when the connection is between
/// requests.
///
/// The wait: a read that finds nothing buffered, once a request has been
/// read on this connection and no request head is in progress, is hyper
/// waiting for the next request (or watching for the end of the stream
/// while it answers). A receive submitted then would hold its buffer
/// (4 KiB) for as long as the client idles, and could not be taken back
/// at the park; a readability poll (compio's `PollOnce`) holds none, and
/// when it completes the bytes are read at once (see
/// [`ParkIo::read_ready`]). The first request's head and a head in
/// progress are read with the stream's receive (their bytes are expected
/// now).
///
/// A *hot* connection, whose last [`HOT_AFTER`] requests each came within
/// [`HOT_GAP`] of the previous response's end (a load generator, a client
/// next to the proxy in a busy loop), also waits with the stream's
/// receive: the poll and the `recv(2)` cost one system call more per
/// request than the one receive (~0.5 µs, 2-4% of a proxied request,
/// `bench/RESULTS.md`, l7mem). When that receive has waited past the park
/// delay, the serve loop sets [`ParkCtl::cancel_receive`] and the next
/// read submits [`CancelRecv`] and waits for the receive to end: ended
/// cancelled, the connection is cold again, waits with a readability poll
/// and parks; completed first, its bytes are read as usual. On the polling
/// driver the cancel does nothing, and such a connection keeps its
/// receive until its next request or the keep-alive timeout.
pub(crate) struct ParkIo {
    pub(crate) stream: Stream,
    ctl: Rc<ParkCtl>,
    clock: Rc<ConnClock>,
    /// Consecutive waits for a request that ended within [`HOT_GAP`]
    /// (saturating at [`HOT_AFTER`]).
    short_waits: u8,
    /// The readability poll in flight, if any (cancelled with the
    /// connection at the park: a poll carries no data).
    readable: Option<Submit<PollOnce<SharedFd<socket2::Socket>>>>,
    /// The cancel of the stream's receive in flight, if any; kept until
    /// it completes (it holds the descriptor).
    cancel: Option<Submit<CancelRecv>>,
    /// Between the cancel's submission and the end of it and the receive.
    cancelling: bool,
    /// The receive ended cancelled (while the cancel was still in flight).
    recv_cancelled: bool,
}

impl ParkIo {
    pub(crate) fn new(stream: Stream, ctl: Rc<ParkCtl>, clock: Rc<ConnClock>) -> ParkIo {
        ParkIo {
            stream,
            ctl,
            clock,
            short_waits: 0,
            readable: None,
            cancel: None,
            cancelling: false,
            recv_cancelled: false,
        }
    }

    /// After the readability poll: reads what is there straight into
    /// hyper's buffer with a non-blocking `recv(2)`. `None` when nothing
    /// was there after all (the stream's receive follows).
    ///
    /// Why not the stream's receive: it would be a second operation, and a
    /// second wake-up of the connection, per keep-alive request; the
    /// readability poll alone, with this read, costs what the stream's one
    /// receive cost (`bench/RESULTS.md`, l7mem), and copies once less.
    fn read_ready(&mut self, cursor: &mut hyper::rt::ReadBufCursor<'_>) -> Option<io::Result<()>> {
        // SAFETY: only initialised bytes are written into the slice (by
        // the kernel), and the cursor is advanced by exactly their count.
        let dst = unsafe { cursor.as_mut() };
        if dst.is_empty() {
            return None;
        }
        // SAFETY: `dst` is valid for writes of `dst.len()` bytes; the
        // descriptor is open (the stream owns it).
        let n = unsafe {
            libc::recv(
                self.stream.fd().as_raw_fd(),
                dst.as_mut_ptr().cast(),
                dst.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            // End of stream: hyper sees a read of nothing.
            Ok(0) => Some(Ok(())),
            Ok(n) => {
                // SAFETY: the kernel wrote `n` bytes at the slice's start.
                unsafe { cursor.advance(n) };
                self.clock.received();
                Some(Ok(()))
            }
            Err(_) => {
                let e = io::Error::last_os_error();
                (e.kind() != io::ErrorKind::WouldBlock).then_some(Err(e))
            }
        }
    }

    /// After a read that ended a wait for the next request (the
    /// connection was idle since `idle_since`): counts whether the request
    /// came within [`HOT_GAP`].
    fn count_wait(&mut self, idle_since: Option<Instant>) {
        if let (Some(idle), Some(head)) = (idle_since, self.clock.head_since()) {
            self.short_waits = if head.saturating_duration_since(idle) < HOT_GAP {
                self.short_waits.saturating_add(1).min(HOT_AFTER)
            } else {
                0
            };
        }
    }

    /// Whether the next read waits for readability first (see the type's
    /// docs).
    fn poll_first(&self) -> bool {
        self.ctl.requests.get() > 0
            && self.short_waits < HOT_AFTER
            && self.clock.head_since().is_none()
            && !self.stream.has_input()
            && !self.stream.receiving()
    }
}

impl hyper::rt::Read for ParkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Set when this read is the wait for the next request (read before
        // a cancelled receive's bytes, if any, end the wait).
        let idle_since = this.clock.idle_since();
        if this.ctl.cancel_receive.replace(false) && this.stream.receiving() && !this.cancelling {
            this.cancel = Some(compio::runtime::submit(CancelRecv::new(this.stream.fd().clone())));
            this.cancelling = true;
        }
        if this.cancelling {
            // Polled first: a `Submit` is submitted at its first poll.
            if let Some(op) = this.cancel.as_mut() {
                if Pin::new(op).poll(cx).is_ready() {
                    this.cancel = None;
                }
            }
            if ready!(this.stream.poll_recv_cancelled(cx)) {
                this.recv_cancelled = true;
            }
            if this.cancel.is_some() {
                return Poll::Pending;
            }
            this.cancelling = false;
            this.ctl.receiving.set(false);
            if mem::take(&mut this.recv_cancelled) {
                // Idle past the park delay: cold, so the read below waits
                // with a readability poll.
                this.short_waits = 0;
            }
        }
        if this.readable.is_none() && this.poll_first() {
            let op = PollOnce::new(this.stream.fd().clone(), Interest::Readable);
            this.readable = Some(compio::runtime::submit(op));
        }
        let mut cursor = cursor;
        if let Some(op) = this.readable.as_mut() {
            let compio::BufResult(r, _) = ready!(Pin::new(op).poll(cx));
            this.readable = None;
            r?;
            if let Some(r) = this.read_ready(&mut cursor) {
                this.count_wait(idle_since);
                return Poll::Ready(r);
            }
        }
        let r = Pin::new(&mut this.stream).poll_read(cx, cursor);
        this.ctl.receiving.set(this.stream.receiving());
        if r.is_ready() {
            this.count_wait(idle_since);
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

/// A worker's parked connections (see the module docs): a table of
/// entries, each a connection `T` (what the serve loop needs to serve it
/// again: its own descriptor, kept bytes, addresses, ...), and
///
/// - an epoll set holding every parked socket (`EPOLLIN | EPOLLRDHUP`,
///   one-shot), its event's data word the entry's slot and generation;
///   the lot waits for the epoll descriptor's readability with one
///   compio `PollOnce` for all entries, then collects the ready ones with
///   a non-blocking `epoll_wait`. No operation, buffer or allocation per
///   entry: what a parked connection holds is its slot in the table and
///   the kernel's epoll item (which is not process memory). Not the
///   request path: a socket enters the set at the park and leaves it
///   when its connection is served again;
/// - a min-heap of (deadline, slot, generation) and one timer for the
///   earliest: a connection that leaves the lot leaves its heap record
///   behind, dropped when it comes up (or when stale records outnumber
///   live ones).
pub(crate) struct Lot<T> {
    inner: RefCell<Inner<T>>,
    epoll: SharedFd<OwnedFd>,
}

struct Inner<T> {
    slots: Vec<Slot<T>>,
    /// Free slots, reused last in first out.
    free: Vec<u32>,
    len: usize,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Data words of epoll events not handled yet.
    ready: Vec<u64>,
    /// The poll for the epoll descriptor's readability, once submitted.
    wait: Option<Submit<PollOnce<SharedFd<OwnedFd>>>>,
    /// When to return freed memory to the kernel (see [`TRIM_DELAY`]).
    trim_at: Option<Instant>,
    /// The lot's one timer (the earliest deadline or `trim_at`), and
    /// when it fires.
    timer: Option<(Instant, Sleep)>,
    /// The lot's task, woken when an entry comes in (its deadline may be
    /// the earliest).
    task: Option<Waker>,
}

/// A compio timer.
type Sleep = Pin<Box<dyn Future<Output = ()>>>;

struct Slot<T> {
    /// Bumped whenever the slot is vacated, so an event or a heap record
    /// for a previous occupant is recognised and ignored.
    generation: u32,
    /// The parked socket (owned by `conn`).
    fd: RawFd,
    conn: Option<T>,
}

/// After a park, the lot gives the memory the allocator holds free back
/// to the kernel (`malloc_trim`) this much later, so at most once per
/// this interval while connections park. Why: a connection is parked
/// after `park_after` of being served, so under a wave of new
/// connections hundreds of hyper connections (~20 KB each) are live at
/// once; after they park, glibc keeps their freed pages resident (it
/// returns only the top of its heap by itself), which was most of the
/// memory per idle connection (`bench/RESULTS.md`, l7mem). A trim walks
/// the allocator's free lists (see there for its cost).
const TRIM_DELAY: Duration = Duration::from_millis(200);

/// Events taken per `epoll_wait` call.
const EVENTS: usize = 64;

fn pack(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

fn unpack(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

/// What happened to a parked connection (see [`Lot::poll_event`]).
pub(crate) enum Event<T> {
    /// Its socket is readable (a request, the end of the stream, an
    /// error): serve it again.
    Readable(T),
    /// Its keep-alive time ran out: close it.
    Expired(T),
}

impl<T> Lot<T> {
    /// An empty lot with its epoll set. Errors: `epoll_create1`'s.
    pub(crate) fn new() -> io::Result<Lot<T>> {
        // SAFETY: a plain syscall; the descriptor is owned from here on.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a new descriptor nothing else owns.
        let epoll = SharedFd::new(unsafe { OwnedFd::from_raw_fd(ep) });
        Ok(Lot {
            inner: RefCell::new(Inner {
                slots: Vec::new(),
                free: Vec::new(),
                len: 0,
                deadlines: BinaryHeap::new(),
                ready: Vec::new(),
                wait: None,
                trim_at: None,
                timer: None,
                task: None,
            }),
            epoll,
        })
    }

    /// Parks `conn`, whose socket is `fd` (owned by `conn`), until the
    /// socket is readable or `deadline` passes. Gives `conn` back if the
    /// socket cannot join the epoll set (it is then closed by the caller).
    pub(crate) fn park(&self, conn: T, fd: RawFd, deadline: Instant) -> Result<(), (T, io::Error)> {
        let mut inner = self.inner.borrow_mut();
        let slot = match inner.free.pop() {
            Some(s) => s,
            None => {
                inner.slots.push(Slot {
                    generation: 0,
                    fd: -1,
                    conn: None,
                });
                u32::try_from(inner.slots.len() - 1).expect("fewer than 2^32 parked connections")
            }
        };
        let generation = inner.slots[slot as usize].generation;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: pack(slot, generation),
        };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            inner.free.push(slot);
            return Err((conn, io::Error::last_os_error()));
        }
        let s = &mut inner.slots[slot as usize];
        s.fd = fd;
        s.conn = Some(conn);
        inner.len += 1;
        inner.deadlines.push(Reverse((deadline, slot, generation)));
        if inner.deadlines.len() > 2 * inner.len + 1024 {
            let Inner { slots, deadlines, .. } = &mut *inner;
            deadlines.retain(|Reverse((_, s, g))| {
                let s = &slots[*s as usize];
                s.generation == *g && s.conn.is_some()
            });
        }
        if inner.trim_at.is_none() {
            inner.trim_at = Some(Instant::now() + TRIM_DELAY);
        }
        if let Some(t) = inner.task.as_ref() {
            t.wake_by_ref();
        }
        Ok(())
    }

    /// Takes slot `slot`'s connection out of the lot and its socket out of
    /// the epoll set.
    fn take(&self, inner: &mut Inner<T>, slot: u32) -> T {
        let s = &mut inner.slots[slot as usize];
        let conn = s.conn.take().expect("an occupied slot");
        // SAFETY: `s.fd` is still open (owned by `conn`). An error (the
        // socket is not in the set) changes nothing.
        unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, s.fd, std::ptr::null_mut());
        }
        s.generation = s.generation.wrapping_add(1);
        s.fd = -1;
        inner.free.push(slot);
        inner.len -= 1;
        conn
    }

    /// Moves the epoll set's ready events to `inner.ready` (non-blocking).
    fn collect(&self, inner: &mut Inner<T>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: `events` has room for `EVENTS` entries.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, 0) };
            if n <= 0 {
                // Nothing ready, or EINTR: the poll is armed again and
                // reports what is left.
                return;
            }
            let n = n as usize;
            inner.ready.extend(events[..n].iter().map(|e| e.u64));
            if n < EVENTS {
                return;
            }
        }
    }

    /// The next event: an entry whose socket is readable, or one past its
    /// deadline. The entry leaves the lot. Pending otherwise, with this
    /// task woken by a readable entry, the earliest deadline or a new
    /// entry.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Event<T>> {
        let mut inner = self.inner.borrow_mut();
        if !inner.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.task = Some(cx.waker().clone());
        }
        // Readiness of the epoll descriptor that yielded no event (not
        // expected): bounded, so the task cannot spin.
        let mut empty = 0;
        loop {
            while let Some(word) = inner.ready.pop() {
                let (slot, generation) = unpack(word);
                let current = inner
                    .slots
                    .get(slot as usize)
                    .is_some_and(|s| s.generation == generation && s.conn.is_some());
                if current {
                    return Poll::Ready(Event::Readable(self.take(&mut inner, slot)));
                }
            }
            let epoll = &self.epoll;
            let wait = inner
                .wait
                .get_or_insert_with(|| compio::runtime::submit(PollOnce::new(epoll.clone(), Interest::Readable)));
            match Pin::new(wait).poll(cx) {
                Poll::Ready(compio::BufResult(r, _)) => {
                    inner.wait = None;
                    if let Err(e) = r {
                        // Not expected; the next poll is submitted anyway.
                        tracing::warn!(error = %e, "L7 parking lot: poll of the epoll set failed");
                    }
                    self.collect(&mut inner);
                    if inner.ready.is_empty() {
                        empty += 1;
                        if empty > 1 {
                            // Yield, and poll again on the next run.
                            cx.waker().wake_by_ref();
                            break;
                        }
                    }
                    // The loop submits the next poll: one must be in
                    // flight whenever the task waits.
                }
                Poll::Pending => break,
            }
        }
        loop {
            let now = Instant::now();
            if inner.trim_at.is_some_and(|t| now >= t) {
                inner.trim_at = None;
                trim();
            }
            // The earliest deadline of a connection still parked.
            let mut next = None;
            while let Some(&Reverse((deadline, slot, generation))) = inner.deadlines.peek() {
                let s = &inner.slots[slot as usize];
                if s.generation != generation || s.conn.is_none() {
                    inner.deadlines.pop();
                    continue;
                }
                if now >= deadline {
                    inner.deadlines.pop();
                    return Poll::Ready(Event::Expired(self.take(&mut inner, slot)));
                }
                next = Some(deadline);
                break;
            }
            let Some(at) = next.into_iter().chain(inner.trim_at).min() else {
                inner.timer = None;
                return Poll::Pending;
            };
            if inner.timer.as_ref().is_none_or(|(t, _)| *t != at) {
                inner.timer = Some((at, Box::pin(compio::time::sleep_until(at))));
            }
            let (_, timer) = inner.timer.as_mut().expect("just set");
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            inner.timer = None;
        }
    }

    /// Takes every parked connection out of the lot.
    pub(crate) fn close_all(&self) -> Vec<T> {
        let mut inner = self.inner.borrow_mut();
        let mut out = Vec::with_capacity(inner.len);
        for slot in 0..inner.slots.len() {
            if inner.slots[slot].conn.is_some() {
                out.push(self.take(&mut inner, slot as u32));
            }
        }
        inner.deadlines.clear();
        inner.timer = None;
        out
    }
}

/// Returns the allocator's free memory to the kernel (see [`TRIM_DELAY`]).
fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases glibc's free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
