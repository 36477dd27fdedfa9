//! A worker's timeouts of one fixed length (the response timeout), without
//! a compio timer per request.
//!
//! compio keeps its timers in one `BTreeMap` per runtime: a timer per
//! request costs a clock read and an insertion when armed, a removal when
//! dropped, and two map searches each time the future waiting on it is
//! polled. That was 2.4% of the proxy's CPU time per request for the
//! response timeout alone (bench/RESULTS.md, "l7cpu"). Every response
//! timeout of a worker has the same length, so deadlines arrive in the
//! order they are armed: a FIFO queue holds them sorted for free. Arming
//! is a push and a slot in a slab; disarming frees the slot (O(1)); one
//! task per worker (the sweeper, [`Deadlines::sweep`]) sleeps on a single
//! compio timer until the oldest deadline still armed, marks what expired
//! and wakes its waiter.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::{poll_fn, Future},
    pin::pin,
    rc::Rc,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

/// One worker's timeouts, all `length` long (see the module docs).
pub(crate) struct Deadlines {
    length: Duration,
    inner: RefCell<Inner>,
}

/// The timeout elapsed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

struct Inner {
    /// Armed deadlines in arming order, hence in deadline order. Entries
    /// whose slot was disarmed since are skipped (and dropped from the
    /// front as soon as they get there).
    queue: VecDeque<Queued>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots in use (armed or expired and not yet disarmed).
    used: usize,
    /// The sweeper, waiting for a deadline to be armed.
    sweeper: Option<Waker>,
}

struct Queued {
    deadline: Instant,
    slot: usize,
    generation: u64,
}

#[derive(Default)]
struct Slot {
    /// Changes each time the slot is freed, so a stale queue entry never
    /// matches the slot's next use.
    generation: u64,
    state: State,
    waker: Option<Waker>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Free,
    Armed,
    Expired,
}

/// An armed deadline; dropping it disarms it.
struct Armed<'a> {
    deadlines: &'a Deadlines,
    slot: usize,
    generation: u64,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.deadlines.inner.borrow_mut().disarm(self.slot, self.generation);
    }
}

impl Inner {
    fn live(&self, q: &Queued) -> bool {
        let s = &self.slots[q.slot];
        s.generation == q.generation && s.state == State::Armed
    }

    /// Drops disarmed entries from the front of the queue.
    fn pop_settled(&mut self) {
        while let Some(q) = self.queue.front() {
            if self.live(q) {
                break;
            }
            self.queue.pop_front();
        }
    }

    fn disarm(&mut self, slot: usize, generation: u64) {
        let s = &mut self.slots[slot];
        debug_assert_eq!(s.generation, generation);
        s.generation = s.generation.wrapping_add(1);
        s.state = State::Free;
        s.waker = None;
        self.free.push(slot);
        self.used -= 1;
        self.pop_settled();
        // A deadline stuck at the front (a member that never answers)
        // keeps the disarmed ones behind it queued; bound them to a
        // multiple of the armed ones (amortised O(1) per disarm).
        if self.queue.len() > 64 + 4 * self.used {
            let mut queue = std::mem::take(&mut self.queue);
            queue.retain(|q| self.live(q));
            self.queue = queue;
        }
    }

    /// Marks every armed deadline up to `now` expired and wakes its waiter.
    fn expire(&mut self, now: Instant) {
        while let Some(q) = self.queue.front() {
            if q.deadline > now {
                break;
            }
            let q = self.queue.pop_front().expect("front exists");
            let s = &mut self.slots[q.slot];
            if s.generation == q.generation && s.state == State::Armed {
                s.state = State::Expired;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
    }
}

impl Deadlines {
    /// Timeouts `length` long. [`Deadlines::sweep`] must run on the same
    /// runtime for any of them to expire.
    pub(crate) fn new(length: Duration) -> Rc<Deadlines> {
        Rc::new(Deadlines {
            length,
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                slots: Vec::new(),
                free: Vec::new(),
                used: 0,
                sweeper: None,
            }),
        })
    }

    fn arm(&self) -> Armed<'_> {
        let deadline = Instant::now() + self.length;
        let mut i = self.inner.borrow_mut();
        let slot = match i.free.pop() {
            Some(s) => s,
            None => {
                i.slots.push(Slot::default());
                i.slots.len() - 1
            }
        };
        let s = &mut i.slots[slot];
        s.state = State::Armed;
        let generation = s.generation;
        i.used += 1;
        i.queue.push_back(Queued {
            deadline,
            slot,
            generation,
        });
        if let Some(w) = i.sweeper.take() {
            w.wake();
        }
        Armed {
            deadlines: self,
            slot,
            generation,
        }
    }

    /// Whether `a` expired; if not, `waker` is woken when it does.
    fn poll_expired(&self, a: &Armed<'_>, waker: &Waker) -> bool {
        let mut i = self.inner.borrow_mut();
        let s = &mut i.slots[a.slot];
        if s.state == State::Expired {
            return true;
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        false
    }

    /// `fut`, or [`Elapsed`] if it has not completed `length` after this
    /// call. Dropping the returned future drops `fut` and disarms the
    /// deadline.
    pub(crate) async fn timeout<F: Future>(&self, fut: F) -> Result<F::Output, Elapsed> {
        let armed = self.arm();
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            if self.poll_expired(&armed, cx.waker()) {
                return Poll::Ready(Err(Elapsed));
            }
            Poll::Pending
        })
        .await
    }

    /// The sweeper: sleeps until the oldest armed deadline, expires what
    /// is due, and waits for a deadline to be armed when none is. Runs for
    /// the life of the worker (spawn it and keep the handle).
    pub(crate) async fn sweep(self: Rc<Deadlines>) {
        loop {
            let next = poll_fn(|cx| {
                let mut i = self.inner.borrow_mut();
                i.pop_settled();
                match i.queue.front() {
                    Some(q) => Poll::Ready(q.deadline),
                    None => {
                        if !i.sweeper.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            i.sweeper = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                }
            })
            .await;
            // Deadlines armed meanwhile are later than `next`: nothing can
            // become due before it.
            compio::time::sleep_until(next).await;
            self.inner.borrow_mut().expire(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        task::{Context, Wake},
    };

    use super::*;

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The queue's bookkeeping without a runtime: expiry in deadline
    /// order, disarmed entries skipped, slots reused, the queue bounded
    /// while its front is stuck.
    #[test]
    fn expire_disarm_and_bound() {
        let d = Deadlines::new(Duration::from_secs(60));
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let a = d.arm();
        let b = d.arm();
        let c = d.arm();
        assert!(!d.poll_expired(&a, &waker));
        assert!(!d.poll_expired(&c, &waker));
        drop(b);
        let now = Instant::now();
        d.inner.borrow_mut().expire(now);
        assert!(!d.poll_expired(&a, &waker), "not due yet");
        d.inner.borrow_mut().expire(now + Duration::from_secs(61));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 2, "a and c woken, b not");
        assert!(d.poll_expired(&a, &waker) && d.poll_expired(&c, &waker));
        assert!(d.inner.borrow().queue.is_empty());
        drop((a, c));
        // A freed slot is reused, with a new generation.
        let e = d.arm();
        assert_eq!(d.inner.borrow().slots.len(), 3);
        assert!(e.generation > 0);
        // A stuck front: later deadlines disarmed one by one never pile
        // up beyond the bound.
        let mut max = 0;
        for _ in 0..10_000 {
            drop(d.arm());
            max = max.max(d.inner.borrow().queue.len());
        }
        assert!(max <= 64 + 4 * 2 + 1, "queue grew to {max}");
        drop(e);
        assert!(d.inner.borrow().queue.is_empty());
        assert_eq!(d.inner.borrow().used, 0);
    }

    /// On a runtime: a future that never finishes gets `Elapsed` (armed
    /// while the sweeper waits on an empty queue, so the arm wakes it);
    /// futures that finish get their output.
    #[test]
    fn timeout_on_runtime() {
        let rt = compio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let d = Deadlines::new(Duration::from_millis(20));
            let _sweeper = compio::runtime::spawn(d.clone().sweep());
            // Let the sweeper park on the empty queue first.
            compio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(d.timeout(async { 7 }).await, Ok(7));
            let never = std::future::pending::<()>();
            assert_eq!(d.timeout(never).await, Err(Elapsed));
            // Pending once (it wakes itself), then done: no timer involved.
            let polled = Cell::new(false);
            let once = poll_fn(|cx: &mut Context<'_>| {
                if polled.replace(true) {
                    Poll::Ready(3)
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            });
            assert_eq!(d.timeout(once).await, Ok(3));
            assert_eq!(d.inner.borrow().used, 0);
        });
    }
}
