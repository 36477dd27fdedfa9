//! Parking idle keep-alive client connections.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and the boxed
//! request handler for the life of a connection, and the connection's
//! task holds its future (~1.5 KB) and a watchdog timer: most of the
//! ~18 KB an idle client connection cost (`bench/RESULTS.md`, l7). HAProxy
//! and nginx hold about 1 KB because they release their buffers between
//! requests. Parking does the same on top of hyper: after
//! [`crate::ProxyConfig::park_after`] idle, the serve task
//! (`runtime::serve`) asks hyper to close the idle connection
//! (`graceful_shutdown`; hyper writes nothing when no request is in
//! progress), takes it apart (`into_parts`), frees every buffer, hands the
//! socket (with the bytes hyper read ahead, if any) to its worker's
//! [`Lot`], and ends. A parked connection is an entry in the lot's table,
//! not a task: the socket, the kept bytes, the connection's identity and a
//! readability poll in flight that holds no buffer (compio's `PollOnce`:
//! `IORING_OP_POLL_ADD`, or epoll on the polling driver). The lot's one
//! task spawns a new serve task for an entry whose socket became readable
//! (a new hyper connection, the kept bytes first), and closes entries whose
//! keep-alive time ran out, with one timer for all of them.
//!
//! No receive (and no receive buffer) is in flight at the park: [`ParkIo`]
//! waits for readability before it lets the stream submit a receive when
//! the next bytes are not expected soon (after a request's head, see
//! [`ParkIo`]). A receive could not be taken back without risking the
//! bytes it carries (`docs/l7.md`, "Parking idle connections").
//!
//! This module holds [`ParkIo`], the stream as hyper sees it, [`ParkCtl`],
//! what the serve loop shares with it, and the [`Lot`].

use std::{
    cell::{Cell, RefCell},
    cmp::Reverse,
    collections::BinaryHeap,
    future::Future,
    io,
    pin::Pin,
    rc::Rc,
    task::{ready, Context, Poll, RawWaker, RawWakerVTable, Waker},
    time::Instant,
};

use compio::{
    driver::{
        op::{Interest, PollOnce},
        SharedFd,
    },
    runtime::Submit,
};

use crate::{io::Stream, limits::ConnClock};

/// A readability poll in flight on a client socket: it owns nothing but a
/// reference to the descriptor.
pub(crate) type Readable = Submit<PollOnce<SharedFd<socket2::Socket>>>;

/// Submits a readability poll on `fd`.
pub(crate) fn readable(fd: &SharedFd<socket2::Socket>) -> Readable {
    compio::runtime::submit(PollOnce::new(fd.clone(), Interest::Readable))
}

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
/// at the park; a readability poll holds none, and the receive follows
/// when it completes. It costs one more operation per keep-alive request
/// (measured in `bench/RESULTS.md`, l7mem). The first request's head and
/// a head in progress are read at once (their bytes are expected now).
pub(crate) struct ParkIo {
    pub(crate) stream: Stream,
    ctl: Rc<ParkCtl>,
    clock: Rc<ConnClock>,
    /// The readability poll in flight, if any; handed to the [`Lot`] at
    /// the park.
    pub(crate) readable: Option<Readable>,
}

impl ParkIo {
    pub(crate) fn new(stream: Stream, ctl: Rc<ParkCtl>, clock: Rc<ConnClock>) -> ParkIo {
        ParkIo {
            stream,
            ctl,
            clock,
            readable: None,
        }
    }

    /// Whether the next read waits for readability first (see the type's
    /// docs).
    fn poll_first(&self) -> bool {
        self.ctl.requests.get() > 0
            && !self.clock.reading_head()
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
        if this.readable.is_none() && this.poll_first() {
            this.readable = Some(readable(this.stream.fd()));
        }
        if let Some(op) = this.readable.as_mut() {
            let compio::BufResult(r, _) = ready!(Pin::new(op).poll(cx));
            this.readable = None;
            r?;
        }
        let r = Pin::new(&mut this.stream).poll_read(cx, cursor);
        this.ctl.receiving.set(this.stream.receiving());
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

/// What happened to a parked connection (see [`Lot::poll_event`]).
pub(crate) enum Event<T> {
    /// Its socket is readable (a request, the end of the stream), or its
    /// poll failed: serve it again, or close it on the error.
    Readable(T, io::Result<()>),
    /// Its keep-alive time ran out: close it.
    Expired(T),
}

/// A worker's parked connections (see the module docs): a table of
/// entries, each a connection `T` (what the serve loop needs to serve it
/// again: the socket, kept bytes, addresses, ...) with its readability
/// poll in flight and its deadline, and one timer for all deadlines.
///
/// The entries' polls wake the lot's task through a waker that carries
/// the entry's slot and generation (no allocation per entry; see
/// [`entry_waker`]). Deadlines are a min-heap of (deadline, slot,
/// generation); a connection that leaves the lot leaves its heap record
/// behind, dropped when it comes up (or when stale records outnumber the
/// live ones).
pub(crate) struct Lot<T> {
    inner: RefCell<Inner<T>>,
}

struct Inner<T> {
    slots: Vec<Slot<T>>,
    /// Free slots, reused last in first out.
    free: Vec<u32>,
    len: usize,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// When to return freed memory to the kernel (see [`TRIM_DELAY`]).
    trim_at: Option<Instant>,
    /// The lot's one timer (the earliest deadline or `trim_at`), and
    /// when it fires.
    timer: Option<(Instant, Pin<Box<dyn Future<Output = ()>>>)>,
}

/// After a park, the lot gives the memory the allocator holds free back
/// to the kernel (`malloc_trim`) this much later, so at most once per
/// this interval while connections park. Why: a connection is parked
/// after `park_after` of being served, so under a wave of new
/// connections hundreds of hyper connections (~20 KB each) are live at
/// once; after they park, glibc keeps their freed pages resident (it
/// returns only the top of its heap by itself), which was most of the
/// memory per idle connection (`bench/RESULTS.md`, l7mem). One trim walks
/// the allocator's free lists: about a millisecond here per 10 MB free.
const TRIM_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

struct Slot<T> {
    /// Bumped whenever the slot is vacated, so a wake or a heap record for
    /// a previous occupant is recognised and ignored.
    generation: u32,
    entry: Option<Entry<T>>,
}

struct Entry<T> {
    conn: T,
    readable: Readable,
    deadline: Instant,
}

thread_local! {
    /// Entries whose poll woke (packed slot and generation, see
    /// [`entry_waker`]), for this thread's lot. One lot per worker thread.
    static WOKEN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// The waker of this thread's lot task.
    static LOT_TASK: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

// Slot and generation are packed into a waker's data word.
const _: () = assert!(usize::BITS >= 64);

fn pack(slot: u32, generation: u32) -> usize {
    ((generation as usize) << 32) | slot as usize
}

fn unpack(word: usize) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

static ENTRY_WAKER: RawWakerVTable =
    RawWakerVTable::new(entry_waker_clone, entry_wake, entry_wake, entry_waker_drop);

/// The waker an entry's poll is registered with: its data word is the
/// entry's packed slot and generation (no allocation). Waking it records
/// the entry in this thread's `WOKEN` list and wakes the lot's task. The
/// driver wakes it on the worker's thread, where the lot lives.
fn entry_waker(slot: u32, generation: u32) -> Waker {
    let data = std::ptr::without_provenance::<()>(pack(slot, generation));
    // SAFETY: the vtable's functions only copy or read the data word,
    // which is not a pointer; cloning and waking are valid on any thread
    // (a wake on another thread would only be lost, not unsound).
    unsafe { Waker::from_raw(RawWaker::new(data, &ENTRY_WAKER)) }
}

unsafe fn entry_waker_clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &ENTRY_WAKER)
}

unsafe fn entry_wake(data: *const ()) {
    WOKEN.with(|w| w.borrow_mut().push(data.addr()));
    LOT_TASK.with(|t| {
        if let Some(t) = t.borrow().as_ref() {
            t.wake_by_ref();
        }
    });
}

unsafe fn entry_waker_drop(_: *const ()) {}

impl<T> Lot<T> {
    /// An empty lot. One per worker thread (the entries' wakers find it
    /// through thread-local state).
    pub(crate) fn new() -> Lot<T> {
        Lot {
            inner: RefCell::new(Inner {
                slots: Vec::new(),
                free: Vec::new(),
                len: 0,
                deadlines: BinaryHeap::new(),
                trim_at: None,
                timer: None,
            }),
        }
    }

    /// Parks `conn` until `readable` completes (its socket's readability
    /// poll, already in flight or not yet submitted) or `deadline` passes.
    pub(crate) fn park(&self, conn: T, readable: Readable, deadline: Instant) {
        let mut inner = self.inner.borrow_mut();
        let slot = match inner.free.pop() {
            Some(s) => s,
            None => {
                inner.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                u32::try_from(inner.slots.len() - 1).expect("fewer than 2^32 parked connections")
            }
        };
        let s = &mut inner.slots[slot as usize];
        s.entry = Some(Entry {
            conn,
            readable,
            deadline,
        });
        let generation = s.generation;
        inner.len += 1;
        if inner.trim_at.is_none() {
            inner.trim_at = Some(Instant::now() + TRIM_DELAY);
        }
        inner.deadlines.push(Reverse((deadline, slot, generation)));
        if inner.deadlines.len() > 2 * inner.len + 1024 {
            // Stale records (connections that left) outnumber live ones.
            let Inner { slots, deadlines, .. } = &mut *inner;
            deadlines.retain(|Reverse((_, s, g))| {
                let s = &slots[*s as usize];
                s.generation == *g && s.entry.is_some()
            });
        }
        drop(inner);
        // Its first poll (submission, or a completion that already came)
        // happens in the lot's task, with the entry's own waker.
        WOKEN.with(|w| w.borrow_mut().push(pack(slot, generation)));
        LOT_TASK.with(|t| {
            if let Some(t) = t.borrow().as_ref() {
                t.wake_by_ref();
            }
        });
    }

    fn take(inner: &mut Inner<T>, slot: u32) -> Entry<T> {
        let s = &mut inner.slots[slot as usize];
        let e = s.entry.take().expect("an occupied slot");
        s.generation = s.generation.wrapping_add(1);
        inner.free.push(slot);
        inner.len -= 1;
        e
    }

    /// The next event: an entry whose socket is readable, or one past its
    /// deadline. The entry leaves the lot. Pending otherwise, with this
    /// task woken by the next readable entry or the earliest deadline.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Event<T>> {
        LOT_TASK.with(|t| {
            let mut t = t.borrow_mut();
            if !t.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *t = Some(cx.waker().clone());
            }
        });
        loop {
            let Some(word) = WOKEN.with(|w| w.borrow_mut().pop()) else {
                break;
            };
            let (slot, generation) = unpack(word);
            let mut inner = self.inner.borrow_mut();
            let Some(s) = inner.slots.get_mut(slot as usize) else {
                continue;
            };
            if s.generation != generation {
                continue;
            }
            let Some(e) = s.entry.as_mut() else { continue };
            let waker = entry_waker(slot, generation);
            let polled = Pin::new(&mut e.readable).poll(&mut Context::from_waker(&waker));
            if let Poll::Ready(compio::BufResult(r, _)) = polled {
                let e = Self::take(&mut inner, slot);
                return Poll::Ready(Event::Readable(e.conn, r.map(drop)));
            }
        }
        let mut inner = self.inner.borrow_mut();
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
                let current = s.generation == generation
                    && s.entry.as_ref().is_some_and(|e| e.deadline == deadline);
                if !current {
                    inner.deadlines.pop();
                    continue;
                }
                if now >= deadline {
                    inner.deadlines.pop();
                    let e = Self::take(&mut inner, slot);
                    return Poll::Ready(Event::Expired(e.conn));
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

    /// Takes every parked connection out of the lot (their polls are
    /// cancelled when the returned entries are dropped).
    pub(crate) fn close_all(&self) -> Vec<T> {
        let mut inner = self.inner.borrow_mut();
        let mut out = Vec::with_capacity(inner.len);
        for slot in 0..inner.slots.len() {
            if inner.slots[slot].entry.is_some() {
                out.push(Self::take(&mut inner, slot as u32).conn);
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

impl<T> Drop for Lot<T> {
    fn drop(&mut self) {
        // The worker's runtime is going away: forget its task's waker and
        // any wakes of entries that no longer exist.
        LOT_TASK.with(|t| t.borrow_mut().take());
        WOKEN.with(|w| w.borrow_mut().clear());
    }
}
