//! Worker threads: one compio runtime (one ring) per thread, each with its
//! own `SO_REUSEPORT` listener on every listening address.

use std::{
    collections::HashSet,
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    pin::{pin, Pin},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    task::{Poll, Waker},
    thread,
    time::Duration,
};

use compio::{
    driver::{DriverType, ProactorBuilder},
    net::TcpListener,
    runtime::RuntimeBuilder,
};
use cyper_core::CompioTimer;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    limits::{self, ConnClock, Expired, ProxyStats, Violation},
    park::{Event, Lot, ParkCtl},
    proxy::Worker,
    snapshot::SharedSnapshot,
    ProxyConfig,
};

/// Which compio driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring if the kernel lets this process create a ring, else the
    /// polling driver with one warning.
    #[default]
    Auto,
    /// io_uring or fail to start.
    IoUring,
    /// The polling driver (epoll), even where io_uring works. For tests of
    /// the fallback path and for comparison.
    Polling,
}

/// The driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring: every socket operation is a submission on the worker's
    /// ring, completions carry the results.
    IoUring,
    /// compio's polling driver (epoll readiness, then the syscall).
    Polling,
}

impl DriverKind {
    fn compio(self) -> DriverType {
        match self {
            DriverKind::IoUring => DriverType::IoUring,
            DriverKind::Polling => DriverType::Poll,
        }
    }
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work (no listener, no worker).
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    /// `driver = IoUring` was asked for and the kernel refused a ring.
    #[error("io_uring is unavailable: {0}")]
    IoUringUnavailable(io::Error),
    /// A listening socket could not be created, bound or put to listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The socket call's error.
        source: io::Error,
    },
    /// The access log file could not be opened.
    #[error("access log {path}: {source}")]
    AccessLog {
        /// The configured file.
        path: std::path::PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A worker thread or its runtime could not start.
    #[error("worker {worker}: {source}")]
    Worker {
        /// Worker index.
        worker: usize,
        /// The error.
        source: io::Error,
    },
}

/// Tries to create an io_uring with compio's driver. This is the probe:
/// `io_uring_setup` fails with EPERM when `kernel.io_uring_disabled` is 2
/// (or 1 for a process outside `io_uring_group`), with ENOSYS under a
/// seccomp filter that blocks it.
pub fn probe_io_uring() -> io::Result<()> {
    ProactorBuilder::new()
        .driver_type(DriverType::IoUring)
        .build()
        .map(drop)
}

/// Decides the driver from the configured choice and the probe's result.
/// Returns the driver and, when falling back, the one warning to log.
pub fn choose_driver(
    choice: DriverChoice,
    probe: impl FnOnce() -> io::Result<()>,
) -> Result<(DriverKind, Option<String>), StartError> {
    match choice {
        DriverChoice::Polling => Ok((DriverKind::Polling, None)),
        DriverChoice::IoUring => probe()
            .map(|()| (DriverKind::IoUring, None))
            .map_err(StartError::IoUringUnavailable),
        DriverChoice::Auto => Ok(match probe() {
            Ok(()) => (DriverKind::IoUring, None),
            Err(e) => (
                DriverKind::Polling,
                Some(format!(
                    "io_uring is unavailable ({e}; see kernel.io_uring_disabled and seccomp); \
                     the L7 proxy falls back to the polling driver (epoll)"
                )),
            ),
        }),
    }
}

/// Wakes every worker's accept loops once, from any thread.
#[derive(Default)]
pub(crate) struct Shutdown {
    stopped: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Shutdown {
    fn trigger(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for w in self.wakers.lock().expect("shutdown wakers").drain(..) {
            w.wake();
        }
    }

    /// Ready once `trigger` was called. The flag is checked after the
    /// waker is registered, so a trigger between the two is not missed.
    fn poll(&self, waker: &Waker) -> Poll<()> {
        if self.stopped.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        {
            let mut ws = self.wakers.lock().expect("shutdown wakers");
            if !ws.iter().any(|w| w.will_wake(waker)) {
                ws.push(waker.clone());
            }
        }
        if self.stopped.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A worker's live client connections, for the graceful drain at
/// shutdown: each connection task registers here, and once `draining` is
/// set every one is asked to finish its request in flight and close
/// (hyper's `graceful_shutdown`; a parked connection closes at once).
#[derive(Default)]
pub(crate) struct Drain {
    draining: std::cell::Cell<bool>,
    live: std::cell::Cell<usize>,
    /// Wakers of the live connection tasks (to see `draining`), indexed by
    /// connection id: cleared when the connection ends, so a finished
    /// task's waker (and with it the task's memory) is not kept. A slab,
    /// not a map: it is looked up on every wake-up of every connection.
    wakers: std::cell::RefCell<Vec<Option<Waker>>>,
    /// Ids of ended connections, for reuse.
    free_ids: std::cell::RefCell<Vec<usize>>,
    /// The worker waiting for `live` to reach 0.
    idle: std::cell::RefCell<Option<Waker>>,
}

impl Drain {
    fn start(&self) {
        self.draining.set(true);
        let wakers: Vec<Waker> = self.wakers.borrow_mut().iter_mut().filter_map(Option::take).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether the drain has begun; if not, connection `id`'s `waker` is
    /// woken when it does.
    fn draining(&self, id: usize, waker: &Waker) -> bool {
        if self.draining.get() {
            return true;
        }
        let mut wakers = self.wakers.borrow_mut();
        let slot = &mut wakers[id];
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
        false
    }

    /// Ready when no connection is left.
    fn poll_idle(&self, waker: &Waker) -> Poll<()> {
        if self.live.get() == 0 {
            return Poll::Ready(());
        }
        *self.idle.borrow_mut() = Some(waker.clone());
        Poll::Pending
    }
}

/// Counts one connection as live for as long as it exists; `.1` is its
/// id in [`Drain`].
struct Live(Rc<Drain>, usize);

impl Live {
    fn new(d: Rc<Drain>) -> Live {
        d.live.set(d.live.get() + 1);
        let id = d.free_ids.borrow_mut().pop().unwrap_or_else(|| {
            let mut w = d.wakers.borrow_mut();
            w.push(None);
            w.len() - 1
        });
        Live(d, id)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.wakers.borrow_mut()[self.1] = None;
        self.0.free_ids.borrow_mut().push(self.1);
        self.0.live.set(self.0.live.get() - 1);
        if self.0.live.get() == 0 {
            if let Some(w) = self.0.idle.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// A running proxy: its worker threads and how to stop them.
///
/// Dropping it stops the workers too (and waits for them).
pub struct Proxy {
    threads: Vec<thread::JoinHandle<()>>,
    shutdown: Arc<Shutdown>,
    local_addrs: Vec<SocketAddr>,
    driver: DriverKind,
    stats: Arc<ProxyStats>,
    /// Joined after the workers, so every record they sent is written.
    access_log: Option<crate::access_log::Writer>,
}

impl Proxy {
    /// Opens the listening sockets, starts `config.workers` threads and
    /// returns once every worker's runtime is up (connections that arrive
    /// before a worker accepts wait in the socket's backlog).
    ///
    /// Requests are routed with whatever `snapshot` holds when each request
    /// starts; the control plane may `store` a new one at any time.
    ///
    /// Errors: [`StartError`]. On error nothing keeps running.
    pub fn start(config: ProxyConfig, snapshot: SharedSnapshot) -> Result<Proxy, StartError> {
        if config.listen.is_empty() {
            return Err(StartError::Config("no listen address".into()));
        }
        if config.workers == 0 {
            return Err(StartError::Config("workers must be at least 1".into()));
        }
        let (driver, warning) = choose_driver(config.driver, probe_io_uring)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }

        // sockets[w][l]: worker w's socket on listen address l. All sockets
        // of one address share the port: with port 0, the first bind picks
        // it and the others reuse it through SO_REUSEPORT.
        let mut local_addrs = Vec::with_capacity(config.listen.len());
        let mut sockets: Vec<Vec<std::net::TcpListener>> =
            (0..config.workers).map(|_| Vec::new()).collect();
        for &addr in &config.listen {
            let mut bound = addr;
            for per_worker in sockets.iter_mut() {
                let s = listen_socket(bound, config.backlog)
                    .map_err(|source| StartError::Listen { addr, source })?;
                bound = s
                    .local_addr()
                    .map_err(|source| StartError::Listen { addr, source })?;
                per_worker.push(s);
            }
            local_addrs.push(bound);
        }

        let shutdown = Arc::new(Shutdown::default());
        let stats = Arc::new(ProxyStats::default());
        let (log_sender, log_writer) = match &config.access_log {
            None => (None, None),
            Some(c) => {
                let (s, w) = crate::access_log::start(c, stats.clone()).map_err(|source| {
                    StartError::AccessLog {
                        path: c.path.clone(),
                        source,
                    }
                })?;
                (Some(s), Some(w))
            }
        };
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<()>)>();
        let mut proxy = Proxy {
            threads: Vec::new(),
            shutdown: shutdown.clone(),
            local_addrs: local_addrs.clone(),
            driver,
            stats: stats.clone(),
            access_log: log_writer,
        };
        for (w, listeners) in sockets.into_iter().enumerate() {
            let cpu = config
                .cpu_affinity
                .as_ref()
                .filter(|c| !c.is_empty())
                .map(|c| c[w % c.len()]);
            let args = WorkerArgs {
                index: w,
                listeners,
                addrs: local_addrs.clone(),
                driver,
                cpu,
                snapshot: snapshot.clone(),
                config: config.clone(),
                shutdown: shutdown.clone(),
                stats: stats.clone(),
                access_log: log_sender.clone(),
            };
            let tx = ready_tx.clone();
            let t = thread::Builder::new()
                .name(format!("fulcrum-l7-{w}"))
                .spawn(move || worker_main(args, tx))
                .map_err(|source| StartError::Worker { worker: w, source })?;
            proxy.threads.push(t);
        }
        drop(ready_tx);
        // Only the workers hold senders now: the writer ends after them.
        drop(log_sender);
        for _ in 0..config.workers {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((worker, Err(source))) => return Err(StartError::Worker { worker, source }),
                Err(_) => {
                    return Err(StartError::Worker {
                        worker: usize::MAX,
                        source: io::Error::other("a worker exited before reporting"),
                    })
                }
            }
        }
        tracing::info!(workers = config.workers, ?driver, listen = ?local_addrs, "L7 proxy started");
        Ok(proxy)
    }

    /// The bound listening addresses, in the order of
    /// [`ProxyConfig::listen`] (the actual port where 0 was configured).
    /// Routes are looked up by these addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The driver the workers run on.
    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    /// The proxy-wide counters (refused requests by status, idle closes).
    pub fn stats(&self) -> Arc<ProxyStats> {
        self.stats.clone()
    }

    /// Opens the access log's file again (for log rotation) before the
    /// next records are written; nothing without an access log.
    pub fn reopen_access_log(&self) {
        if let Some(w) = &self.access_log {
            w.reopen();
        }
    }

    /// Graceful stop: closes the listeners (new connections are refused),
    /// lets every request in flight finish (its response says
    /// `Connection: close`), closes idle keep-alive connections at once,
    /// and cuts whatever is still open after
    /// [`ProxyConfig::drain_timeout`]. Returns when all worker threads
    /// have exited. Dropping the `Proxy` does the same.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let shutdown = self.shutdown.clone();
        let threads: Vec<_> = self.threads.drain(..).collect();
        let stop = move || {
            shutdown.trigger();
            for t in threads {
                let _ = t.join();
            }
        };
        if thread::panicking() {
            // Dropped while unwinding (a failed assertion in a test, say):
            // compio aborts the process when a task is woken from a
            // panicking thread (its `panic_guard` cannot tell where the
            // panic came from), so the wake-up comes from a fresh thread.
            let _ = thread::spawn(stop).join();
        } else {
            stop();
        }
        self.access_log.take();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listening TCP socket with `SO_REUSEPORT` (and `SO_REUSEADDR`, so a
/// restart does not wait for TIME_WAIT), bound and listening.
fn listen_socket(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // Predictable on every host: `[::]` means IPv6 only; list
        // `0.0.0.0` separately for IPv4.
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

struct WorkerArgs {
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    addrs: Vec<SocketAddr>,
    driver: DriverKind,
    cpu: Option<usize>,
    snapshot: SharedSnapshot,
    config: Arc<ProxyConfig>,
    shutdown: Arc<Shutdown>,
    stats: Arc<ProxyStats>,
    access_log: Option<crate::access_log::Sender>,
}

fn worker_main(args: WorkerArgs, ready: mpsc::Sender<(usize, io::Result<()>)>) {
    // io_uring: this thread is the ring's only submitter, and completions'
    // task work waits until the worker asks for completions
    // (`IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`, Linux
    // 6.1). Without it every completion that the network stack produces on
    // another CPU interrupts this worker with an IPI to run its task work;
    // with it the worker reaps them in batches when it enters the ring.
    // On a kernel that refuses the flags, the plain ring.
    let rt = match build_runtime(&args, true) {
        Err(_) if args.driver == DriverKind::IoUring => build_runtime(&args, false),
        r => r,
    };
    let rt = match rt {
        // compio ignores a forced driver type only when built without the
        // fusion driver; check so `Proxy::driver` can never lie.
        Ok(rt) if rt.driver_type() == args.driver.compio() => rt,
        Ok(rt) => {
            let e = io::Error::other(format!(
                "asked compio for {:?}, got {:?}",
                args.driver,
                rt.driver_type()
            ));
            let _ = ready.send((args.index, Err(e)));
            return;
        }
        Err(e) => {
            let _ = ready.send((args.index, Err(e)));
            return;
        }
    };
    let WorkerArgs {
        index,
        listeners,
        addrs,
        snapshot,
        config,
        shutdown,
        stats,
        access_log,
        ..
    } = args;
    rt.block_on(async move {
        let mut compio_listeners = Vec::new();
        for l in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => compio_listeners.push(l),
                Err(e) => {
                    let _ = ready.send((index, Err(e)));
                    return;
                }
            }
        }
        let worker = Rc::new(Worker::new(snapshot, &config, stats, access_log));
        let drain = Rc::new(Drain::default());
        let lot = match Lot::new() {
            Ok(l) => Rc::new(l),
            Err(e) => {
                let _ = ready.send((index, Err(e)));
                return;
            }
        };
        compio::runtime::spawn(run_lot(lot.clone(), drain.clone(), worker.clone(), config.clone()))
            .detach();
        let loops: Vec<_> = compio_listeners
            .into_iter()
            .zip(addrs)
            .map(|(l, addr)| {
                compio::runtime::spawn(accept_loop(
                    l,
                    addr,
                    Ctx {
                        worker: worker.clone(),
                        config: config.clone(),
                        lot: lot.clone(),
                    },
                    shutdown.clone(),
                    drain.clone(),
                ))
            })
            .collect();
        let _ = ready.send((index, Ok(())));
        for l in loops {
            let _ = l.await;
        }
        // The listeners are closed: drain the connections, bounded.
        drain.start();
        let drained = compio::time::timeout(
            config.drain_timeout,
            poll_fn(|cx| drain.poll_idle(cx.waker())),
        )
        .await;
        if drained.is_err() {
            tracing::warn!(
                worker = index,
                connections = drain.live.get(),
                "L7 drain timeout: cutting the connections still open"
            );
        }
    });
    // Dropping the runtime cancels the connection tasks still running.
}

fn build_runtime(args: &WorkerArgs, defer_taskrun: bool) -> io::Result<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.driver_type(args.driver.compio());
    if defer_taskrun && args.driver == DriverKind::IoUring {
        proactor.single_issuer(true).defer_taskrun(true);
    }
    let mut builder = RuntimeBuilder::new();
    builder.with_proactor(proactor);
    if let Some(cpu) = args.cpu {
        builder.thread_affinity(HashSet::from([cpu]));
    }
    builder.build()
}

/// What every connection task of a worker shares.
#[derive(Clone)]
struct Ctx {
    worker: Rc<Worker>,
    config: Arc<ProxyConfig>,
    lot: Rc<Lot<Parked>>,
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    ctx: Ctx,
    shutdown: Arc<Shutdown>,
    drain: Rc<Drain>,
) {
    loop {
        let mut accept = pin!(listener.accept());
        let next = poll_fn(|cx| {
            if shutdown.poll(cx.waker()).is_ready() {
                return Poll::Ready(None);
            }
            accept.as_mut().poll(cx).map(Some)
        })
        .await;
        match next {
            None => return,
            Some(Ok((stream, peer))) => {
                let _ = stream.set_nodelay(true);
                ctx.worker
                    .stats
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let client = Client {
                    socket: stream,
                    kept: Box::default(),
                    listener: addr,
                    peer,
                    live: Live::new(drain.clone()),
                    idle_since: None,
                };
                compio::runtime::spawn(serve(client, ctx.clone())).detach();
            }
            Some(Err(e)) => {
                // EMFILE, ENFILE, ENOBUFS: back off instead of spinning on
                // an error that persists until a descriptor is freed.
                tracing::warn!(listen = %addr, error = %e, "accept failed");
                compio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A client connection between tasks: accepted, or parked in the
/// worker's [`Lot`] and about to be served again.
struct Client {
    socket: compio::net::TcpStream,
    /// Bytes read ahead before the park (a partial pipelined head, say),
    /// served first; empty (no allocation) otherwise.
    kept: Box<[u8]>,
    listener: SocketAddr,
    peer: SocketAddr,
    live: Live,
    /// `Some` once parked: when its last response ended (the keep-alive
    /// timeout counts from there).
    idle_since: Option<std::time::Instant>,
}

/// A connection in the worker's [`Lot`] (see [`crate::park`]).
struct Parked {
    /// Its own descriptor of the socket (a duplicate: compio's is closed
    /// with the operations that named it).
    fd: std::os::fd::OwnedFd,
    kept: Box<[u8]>,
    listener: SocketAddr,
    peer: SocketAddr,
    live: Live,
    idle_since: std::time::Instant,
}

/// For connections that go to the parking lot.
impl Live {
    /// Whether the drain has begun (without registering for it).
    fn draining_now(&self) -> bool {
        self.0.draining.get()
    }

    /// Forgets the waker this connection registered: its task is ending
    /// and the connection goes to the parking lot, whose task the drain
    /// wakes instead (a kept waker would keep the ended task's memory).
    fn forget_waker(&self) {
        self.0.wakers.borrow_mut()[self.1] = None;
    }
}

/// The worker's parking lot task (see [`crate::park`]): serves a parked
/// connection again when its socket is readable, closes it when its
/// keep-alive time runs out, and closes every parked connection at once
/// when the worker drains.
async fn run_lot(lot: Rc<Lot<Parked>>, drain: Rc<Drain>, worker: Rc<Worker>, config: Arc<ProxyConfig>) {
    // Registered with the drain like a connection, and counted live until
    // it has closed what it holds.
    let live = Live::new(drain);
    let ctx = Ctx {
        worker,
        config,
        lot: lot.clone(),
    };
    loop {
        let event = poll_fn(|cx| {
            if live.0.draining(live.1, cx.waker()) {
                return Poll::Ready(None);
            }
            lot.poll_event(cx).map(Some)
        })
        .await;
        match event {
            None => {
                // Idle: nothing in flight to finish.
                drop(lot.close_all());
                return;
            }
            Some(Event::Readable(p)) => {
                let socket = match compio::net::TcpStream::from_std(std::net::TcpStream::from(p.fd)) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(client = %p.peer, error = %e, "parked connection failed");
                        continue;
                    }
                };
                let client = Client {
                    socket,
                    kept: p.kept,
                    listener: p.listener,
                    peer: p.peer,
                    live: p.live,
                    idle_since: Some(p.idle_since),
                };
                compio::runtime::spawn(serve(client, ctx.clone())).detach();
            }
            Some(Event::Expired(_)) => {
                ctx.worker
                    .stats
                    .idle_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// One client connection: hyper serves it; after `park_after` idle it is
/// parked in the worker's [`Lot`] (see [`crate::park`]) and this task
/// ends; the lot spawns a new one with a new hyper connection on its next
/// byte, as often as it goes idle, until it closes, times out, or the
/// worker drains.
async fn serve(client: Client, ctx: Ctx) {
    let Client {
        socket,
        kept,
        listener,
        peer,
        live,
        idle_since,
    } = client;
    let Ctx { worker, config, lot } = ctx;
    let clock = Rc::new(match idle_since {
        None => ConnClock::new(config.header_read_timeout),
        Some(t) => ConnClock::resumed(t, config.keepalive_timeout),
    });
    // Kept to write a 408 after hyper's connection is gone; compio closes
    // the descriptor only when this and every operation naming it are
    // done.
    let fd = compio::driver::ToSharedFd::to_shared_fd(&socket);
    let ctl = Rc::new(ParkCtl::default());
    let client_ip = http::HeaderValue::from_str(&peer.ip().to_string())
        .expect("an IP address is a valid header value");
    let slot = crate::proxy::UpgradeSlot::default();
    let mut svc = {
        let worker = worker.clone();
        let clock = clock.clone();
        let keepalive = config.keepalive_timeout;
        let slot = slot.clone();
        let ctl = ctl.clone();
        hyper::service::service_fn(move |req| {
            ctl.requests.set(ctl.requests.get() + 1);
            let worker = worker.clone();
            let clock = clock.clone();
            let client_ip = client_ip.clone();
            let slot = slot.clone();
            async move {
                let log = worker
                    .access_log
                    .clone()
                    .map(|sender| crate::proxy::PendingLog::new(&req, peer.ip(), sender));
                let resp = worker
                    .handle(req, listener, peer, client_ip, clock.clone(), slot)
                    .await?;
                let log = log.map(|l| l.responded(&resp));
                Ok::<_, std::convert::Infallible>(resp.map(|body| crate::proxy::Tracked {
                    body,
                    clock,
                    keepalive,
                    log,
                }))
            }
        })
    };
    let mut stream = crate::io::Stream::resumed(socket, crate::io::CLIENT_BUF, clock.clone(), kept);
    let mut watch = pin!(limits::watch(&clock, config.header_read_timeout));
    let conn = Conn {
        peer,
        worker: &worker,
        config: &config,
        live: &live,
        clock: &clock,
        ctl: &ctl,
        slot: &slot,
        fd: &fd,
    };
    let stream = loop {
        // Boxed: hyper's connection is the bulk of this task's state.
        let round = Box::pin(run_http(&conn, stream, svc, watch.as_mut())).await;
        let Round::Parked {
            stream: s,
            service,
            fresh,
        } = round
        else {
            return;
        };
        if !fresh {
            break s;
        }
        stream = s;
        svc = service;
    };
    if live.draining_now() {
        // The lot's task closes what it holds and parks nothing new.
        return;
    }
    let (Some(since), Some(deadline)) = (clock.idle_since(), clock.idle_deadline()) else {
        return;
    };
    let (socket, kept) = stream.into_parked(&[]);
    // The lot's own descriptor: compio's may stay open a little longer,
    // until the cancelled poll of hyper's last read completes.
    let fd = match std::os::fd::AsFd::as_fd(&socket).try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "could not park a connection");
            return;
        }
    };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    live.forget_waker();
    let parked = Parked {
        fd,
        kept,
        listener,
        peer,
        live,
        idle_since: since,
    };
    match lot.park(parked, raw, deadline) {
        Ok(()) => {
            worker
                .stats
                .parked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err((_, e)) => tracing::debug!(client = %peer, error = %e, "could not park a connection"),
    }
}

/// What one client connection's serve loop and its hyper rounds share.
struct Conn<'a> {
    peer: SocketAddr,
    worker: &'a Rc<Worker>,
    config: &'a ProxyConfig,
    live: &'a Live,
    clock: &'a Rc<ConnClock>,
    ctl: &'a Rc<ParkCtl>,
    slot: &'a crate::proxy::UpgradeSlot,
    fd: &'a compio::driver::SharedFd<socket2::Socket>,
}

/// How one hyper connection over a client connection ended.
// Returned once per hyper connection and unpacked at once: boxing the
// large variant would only add an allocation per park.
#[allow(clippy::large_enum_variant)]
enum Round<S> {
    /// Closed, timed out, failed, or upgraded and tunnelled to its end:
    /// the client connection is done.
    Done,
    /// Parked: hyper's connection is gone; `stream` holds the bytes hyper
    /// had read ahead (if any) in front of its unread ones, and no
    /// receive. `fresh`: the stream had input hyper had not read (unread
    /// bytes, end of stream): serve it at once.
    Parked {
        stream: crate::io::Stream,
        service: S,
        fresh: bool,
    },
}

/// Serves one hyper connection over `stream` until it ends or is parked
/// (see [`crate::park`]).
async fn run_http<S, B, W>(
    c: &Conn<'_>,
    stream: crate::io::Stream,
    svc: S,
    mut watch: Pin<&mut W>,
) -> Round<S>
where
    S: hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
    >,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    W: Future<Output = Expired>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our own clock replaces hyper's header timer (see `limits`).
    http.timer(CompioTimer)
        .header_read_timeout(None)
        .keep_alive(true)
        // A client that sends its request and then its FIN (`shutdown(WR)`)
        // still gets the answer, as from HAProxy (without `option
        // abortonclose`) and nginx; hyper's default drops the request.
        .half_close(true)
        .max_buf_size(c.config.max_header_size.max(8192))
        .max_header_size(c.config.max_header_size)
        .max_headers(c.config.max_headers);
    c.ctl.parking.set(false);
    // Parked only once a request completed on this hyper connection (see
    // `ParkCtl::requests`).
    let first_request = c.ctl.requests.get();
    let park_after = c.config.park_after;
    // Not pinned on the stack: after a 101, or when parking, the
    // connection is taken apart (`into_parts`) to get the stream back.
    let mut conn = http.serve_connection(
        crate::park::ParkIo::new(stream, c.ctl.clone(), c.clock.clone()),
        svc,
    );
    let outcome = {
        let mut conn = Pin::new(&mut conn);
        let mut asked_to_close = false;
        // Armed when the connection goes idle and kept when a request
        // comes (not re-armed per request: a timer costs an insertion and
        // a removal in compio's timer map); when it fires the idle period
        // is checked again (it may have ended and a new one begun), so a
        // busy connection sets at most one timer per `park_after`.
        let mut park_timer: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
        // The idle period whose receive `ParkIo` was asked to cancel.
        let mut cancel_asked = None;
        poll_fn(|cx| loop {
            if !asked_to_close && c.live.0.draining(c.live.1, cx.waker()) {
                // Finish the request in flight (if any), then close.
                asked_to_close = true;
                c.ctl.parking.set(false);
                conn.as_mut().graceful_shutdown();
            }
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            if let Poll::Ready(e) = watch.as_mut().poll(cx) {
                return Poll::Ready(Err(e));
            }
            if asked_to_close || c.ctl.parking.get() {
                return Poll::Pending;
            }
            let idle = c
                .clock
                .idle_since()
                .filter(|_| c.ctl.requests.get() > first_request && !c.clock.unsent());
            let Some(since) = idle else {
                return Poll::Pending;
            };
            // Gated: this closure runs on every wake-up of the connection.
            let timer = park_timer.get_or_insert_with(|| {
                Box::pin(limits::Gated::new(compio::time::sleep_until(since + park_after)))
            });
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            park_timer = None;
            if std::time::Instant::now() < since + park_after {
                // A later idle period than the one the timer was set for.
                continue;
            }
            if c.ctl.receiving.get() {
                // A hot connection's receive waits: not parked with it
                // (its buffer and bytes would be lost), but taken back
                // by `ParkIo`'s next read, once per idle period; the
                // connection parks here when it ended cancelled.
                if cancel_asked == Some(since) {
                    return Poll::Pending;
                }
                cancel_asked = Some(since);
                c.ctl.cancel_receive.set(true);
                continue;
            }
            // hyper closes an idle connection at once, writing nothing;
            // `ParkIo` keeps it from shutting the socket down.
            c.ctl.parking.set(true);
            conn.as_mut().graceful_shutdown();
        })
        .await
    };
    let upgraded = c.slot.borrow_mut().take();
    match (&outcome, upgraded) {
        (Ok(Ok(())), Some(up)) => {
            let client = conn.into_parts();
            if let Some(member) = crate::proxy::upgraded(up).await {
                let end = crate::websocket::tunnel(
                    (client.io.stream, client.read_buf),
                    member,
                    c.config.websocket_idle_timeout,
                )
                .await;
                match end {
                    crate::websocket::End::Failed(e) => {
                        tracing::debug!(client = %c.peer, error = %e, "upgraded connection failed")
                    }
                    end => tracing::debug!(client = %c.peer, ?end, "upgraded connection ended"),
                }
            }
            return Round::Done;
        }
        (Ok(Ok(())), None) if c.ctl.parking.get() => {
            let parts = conn.into_parts();
            // hyper's last read may have left a readability poll in
            // flight: dropped with `parts.io`, which cancels it (a poll
            // carries no data; the lot polls again).
            let mut stream = parts.io.stream;
            // Received bytes hyper has not seen (or the end of the
            // stream): serve them at once, with no wait.
            let fresh = stream.has_input();
            if !parts.read_buf.is_empty() {
                // hyper's read-ahead (a partial head) is read first.
                let (socket, kept) = stream.into_parked(&parts.read_buf);
                stream = crate::io::Stream::resumed(socket, crate::io::CLIENT_BUF, c.clock.clone(), kept);
            }
            return Round::Parked {
                stream,
                service: parts.service,
                fresh,
            };
        }
        _ => {}
    }
    // The connection (and its stream) is dropped here: compio cancels a
    // receive in flight and keeps its buffer and descriptor until the
    // cancellation completes.
    drop(conn);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // hyper has answered what it could not parse (400, 431, 414)
            // and closed; anything else is the client going away.
            let v = if e.is_parse_too_large() {
                Some(Violation::HeaderFieldsTooLarge)
            } else if e.is_parse() {
                Some(Violation::BadRequest)
            } else {
                None
            };
            match v {
                Some(v) => c.worker.refused(v, c.peer, &e),
                None => {
                    tracing::debug!(client = %c.peer, error = %e, "client connection ended with an error")
                }
            }
        }
        Err(e) => c.expired(e).await,
    }
    Round::Done
}

impl Conn<'_> {
    /// Ends a connection its watchdog expired: silently when idle, with a
    /// 408 when a request head was too slow.
    async fn expired(&self, e: Expired) {
        match e {
            Expired::Idle => {
                self.worker
                    .stats
                    .idle_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Expired::Head => {
                self.worker.refused(
                    Violation::RequestTimeout,
                    self.peer,
                    &"request head not received in time",
                );
                if !self.clock.unsent() {
                    let op = compio::driver::op::Send::new(
                        self.fd.clone(),
                        limits::REQUEST_TIMEOUT_RESPONSE.to_vec(),
                        compio::driver::op::SendFlags::NOSIGNAL,
                    );
                    // Best effort and bounded: a client that does not read
                    // gets no more time than this.
                    let _ = compio::time::timeout(Duration::from_secs(1), compio::runtime::submit(op))
                        .await;
                    let _ = socket2::SockRef::from(self.fd).shutdown(std::net::Shutdown::Write);
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_choice() {
        let refuse = || Err(io::Error::from_raw_os_error(libc::EPERM));
        let (d, w) = choose_driver(DriverChoice::Auto, refuse).unwrap();
        assert_eq!(d, DriverKind::Polling);
        assert!(w.unwrap().contains("falls back to the polling driver"));
        assert_eq!(
            choose_driver(DriverChoice::Auto, || Ok(())).unwrap(),
            (DriverKind::IoUring, None)
        );
        assert!(matches!(
            choose_driver(DriverChoice::IoUring, refuse),
            Err(StartError::IoUringUnavailable(_))
        ));
        let never = || -> io::Result<()> { panic!("the polling choice does not probe") };
        assert_eq!(
            choose_driver(DriverChoice::Polling, never).unwrap(),
            (DriverKind::Polling, None)
        );
    }
}
