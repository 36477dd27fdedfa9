//! The datapath writer: a thread of its own that applies [`Plan`]s, so no
//! table write ever delays the control loop (health events, the admin API,
//! and later VRRP adverts).
//!
//! The control loop [`submit`](Writer::submit)s a plan and returns at once.
//! Plans submitted while an apply runs replace each other: a burst of
//! health events becomes one apply of the newest plan. A failed apply is
//! reported and retried with backoff (100 ms doubling to 5 s), or at once
//! when a newer plan arrives; the maps keep a consistent older state
//! meanwhile, and [`WriterStatus`] says so. Nothing is ever dropped
//! silently.
use std::{
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Applied, Datapath, Plan};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One completed apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The generation written.
    pub generation: u64,
    /// From the oldest submission it covers (its `since`) to the last flip.
    pub latency: Duration,
    /// Wall time of the write.
    pub wall: Duration,
    /// CPU time the writer thread spent (user + system).
    pub cpu: Duration,
    /// VIP entries written; unchanged VIPs are skipped.
    pub vips_written: u32,
    /// Maglev tables built (identical member sets share one).
    pub tables_built: u32,
}

/// What the writer has done so far.
#[derive(Debug, Clone, Default)]
pub struct WriterStatus {
    /// The newest generation submitted.
    pub generation: u64,
    /// The newest generation the maps hold.
    pub applied_generation: u64,
    /// Completed applies.
    pub applies: u64,
    pub last: Option<ApplyReport>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// What the maps hold.
    pub applied: Applied,
}

struct Pending {
    plan: Option<(u64, Plan, Instant)>,
    shutdown: bool,
}

/// Called once the maps hold a given generation (or a later one).
type Waiter = (u64, Box<dyn FnOnce() + Send>);

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    status: Mutex<WriterStatus>,
    waiters: Mutex<Vec<Waiter>>,
}

/// Owns the [`Datapath`] on its own thread; see the module doc.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Datapath>>,
    generation: u64,
}

impl Writer {
    /// Moves `datapath` to a new writer thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn(datapath: Datapath) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { plan: None, shutdown: false }),
            wake: Condvar::new(),
            status: Mutex::new(WriterStatus { applied: datapath.applied(), ..WriterStatus::default() }),
            waiters: Mutex::new(Vec::new()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fulcrum-l4-writer".into())
            .spawn(move || run(datapath, &thread_shared))?;
        Ok(Writer { shared, thread: Some(thread), generation: 0 })
    }

    /// Hands `plan` to the writer and returns its generation at once.
    /// `since` is when the oldest observation behind it arrived; if this
    /// plan replaces one not yet applied, the older `since` is kept, so
    /// the reported latency covers the whole burst.
    pub fn submit(&mut self, plan: Plan, since: Instant) -> u64 {
        self.generation += 1;
        let mut pending = lock(&self.shared.pending);
        let since = match &pending.plan {
            Some((_, _, older)) => since.min(*older),
            None => since,
        };
        pending.plan = Some((self.generation, plan, since));
        lock(&self.shared.status).generation = self.generation;
        self.shared.wake.notify_one();
        self.generation
    }

    /// Runs `then` on the writer thread as soon as the maps hold
    /// generation `generation` or a later one (at once if they already
    /// do). For work that must follow the datapath, never precede it: a
    /// new VRRP MASTER claims its addresses only once it forwards them.
    pub fn when_applied(&self, generation: u64, then: Box<dyn FnOnce() + Send>) {
        let mut waiters = lock(&self.shared.waiters);
        if lock(&self.shared.status).applied_generation >= generation {
            drop(waiters);
            then();
            return;
        }
        waiters.push((generation, then));
    }

    /// A copy of the writer's status.
    pub fn status(&self) -> WriterStatus {
        lock(&self.shared.status).clone()
    }

    /// Stops the thread after the apply in progress, if any, and gives the
    /// datapath back (to detach it). Plans not yet applied are dropped.
    pub fn shutdown(mut self) -> Datapath {
        self.stop().expect("the writer thread runs until stopped")
    }

    fn stop(&mut self) -> Option<Datapath> {
        lock(&self.shared.pending).shutdown = true;
        self.shared.wake.notify_one();
        let thread = self.thread.take()?;
        match thread.join() {
            Ok(datapath) => Some(datapath),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Joining drops the datapath, which detaches the program.
        let _ = self.stop();
    }
}

fn run(mut datapath: Datapath, shared: &Shared) -> Datapath {
    let mut retry = RETRY_FIRST;
    let mut failed: Option<(u64, Plan, Instant)> = None;
    loop {
        let (generation, plan, since) = {
            let mut pending = lock(&shared.pending);
            let deadline = failed.as_ref().map(|_| Instant::now() + retry);
            loop {
                if pending.shutdown {
                    return datapath;
                }
                if let Some(next) = pending.plan.take() {
                    break next;
                }
                match deadline {
                    None => pending = shared.wake.wait(pending).unwrap_or_else(PoisonError::into_inner),
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break failed.take().expect("a deadline means a failed plan");
                        }
                        pending = shared.wake.wait_timeout(pending, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
                    }
                }
            }
        };
        let cpu_before = thread_cpu_time();
        let started = Instant::now();
        // A panic here is a bug, but it must not leave a dead thread that
        // silently stops applying: it is reported and retried like an error.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| datapath.apply(&plan)))
            .unwrap_or_else(|panic| Err(crate::DatapathError::Panic(panic_message(&panic))));
        let done = Instant::now();
        let mut status = lock(&shared.status);
        status.applied = datapath.applied();
        match result {
            Ok(counts) => {
                retry = RETRY_FIRST;
                failed = None;
                let report = ApplyReport {
                    generation,
                    latency: done - since,
                    wall: done - started,
                    cpu: thread_cpu_time().saturating_sub(cpu_before),
                    vips_written: counts.vips_written,
                    tables_built: counts.tables_built,
                };
                status.applied_generation = generation;
                status.applies += 1;
                status.last = Some(report);
                status.last_error = None;
                if counts.vips_written > 0 {
                    tracing::info!(
                        generation,
                        vips = counts.vips_written,
                        tables = counts.tables_built,
                        latency_us = report.latency.as_micros() as u64,
                        "datapath tables written"
                    );
                }
            }
            Err(err) => {
                tracing::error!(generation, error = %err, retry_ms = retry.as_millis() as u64, "writing the datapath maps failed; retrying");
                status.last_error = Some(err.to_string());
                failed = Some((generation, plan, since));
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
        // `when_applied` takes the waiters' lock, then the status lock: take
        // them the other way round here and the two threads could deadlock.
        let applied = status.applied_generation;
        drop(status);
        let due: Vec<Waiter> = {
            let mut waiters = lock(&shared.waiters);
            let (due, later) = std::mem::take(&mut *waiters).into_iter().partition(|(g, _)| *g <= applied);
            *waiters = later;
            due
        };
        for (_, then) in due {
            then();
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// CPU time (user + system) of the calling thread, from `getrusage(2)`
/// with `RUSAGE_THREAD`.
fn thread_cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed value we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
