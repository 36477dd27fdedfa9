//! Members and failover through the real proxy on loopback, against real
//! hyper backends: status flags (draining with sticky sessions), `lbset`,
//! hot spares and standbys, passive health (In error for `retry`, then
//! back), slow start, and retries that fall over to a spare.
//!
//! Every scenario runs on the io_uring driver and on the polling fallback
//! (io_uring variants are skipped with a note where the kernel refuses it,
//! unless `FULCRUM_REQUIRE_IO_URING=1`).

#[macro_use]
mod drivers;
use drivers::tokio_rt;

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fulcrum_l7::{
    members::{publish, PassiveConfig, Role},
    *,
};
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};

/// A backend answering its name with a settable status (200 at first)
/// after a settable delay (none at first).
#[derive(Clone)]
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let listener = tokio_rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let b = Backend {
            name,
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
        };
        let bb = b.clone();
        tokio_rt().spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let bb = bb.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| bb.clone().answer(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        b
    }

    async fn answer(self, _req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok(Response::builder()
            .status(self.status.load(Ordering::SeqCst))
            .body(Full::new(Bytes::from(self.name)))
            .unwrap())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A member that promises 100 body bytes, sends 5 and closes: every
/// response breaks midway. Serves connections until the process ends.
fn truncating_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
        }
    });
    (addr, hits)
}

/// An address where nothing listens (a port just released).
fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    set_cookie: Option<String>,
    body: String,
}

/// GET / with extra header lines, on a new connection (`Connection: close`).
fn get(addr: SocketAddr, extra: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let set_cookie = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_owned());
    Reply { status, set_cookie, body: body.to_owned() }
}

/// The bodies (member names) of `n` plain requests.
fn serve(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(addr, "");
            assert_eq!(r.status, 200, "{r:?}");
            r.body
        })
        .collect()
}

fn count(bodies: &[String], name: &str) -> usize {
    bodies.iter().filter(|b| b.as_str() == name).count()
}

/// Waits for `cond` up to 5 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn member(addr: SocketAddr, route: &str, lbset: u8, role: Role) -> Member {
    let mut m = Member::new(addr, 1);
    m.route = route.to_owned();
    m.lbset = lbset;
    m.role = role;
    m
}

struct Harness {
    proxy: Option<Proxy>,
    snap: SharedSnapshot,
    addr: SocketAddr,
}

impl Drop for Harness {
    /// Stops the workers at the end of a test. While a failed assertion
    /// unwinds, the proxy is leaked instead: stopping it wakes a worker
    /// through compio's remote waker, which aborts the process when called
    /// during a panic, and that would hide the assertion's message.
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            if std::thread::panicking() {
                std::mem::forget(p);
            } else {
                p.shutdown();
            }
        }
    }
}

impl Harness {
    /// One worker (so `byrequests` is exactly predictable) on `driver`.
    fn start(driver: DriverChoice, pool: Pool) -> Harness {
        let snap = shared(Snapshot::default());
        let mut cfg = ProxyConfig::new(vec!["127.0.0.1:0".parse().unwrap()]);
        cfg.driver = driver;
        cfg.connect_timeout = Duration::from_secs(1);
        cfg.response_timeout = Duration::from_millis(500);
        let proxy = Proxy::start(cfg, snap.clone()).expect("proxy starts");
        let addr = proxy.local_addrs()[0];
        let h = Harness { proxy: Some(proxy), snap, addr };
        h.set(pool);
        h
    }

    /// Publishes `pool` behind a catch-all route, as the daemon does.
    fn set(&self, pool: Pool) {
        let s = Snapshot {
            listeners: vec![ListenerRoutes {
                address: self.addr,
                routes: vec![Route {
                    host: HostMatch::Any,
                    path_prefix: "/".into(),
                    pool: 0,
                    preserve_host: false,
                    proxy_pass_reverse: false,
                }],
            }],
            pools: vec![pool],
        };
        s.validate().unwrap();
        publish(&self.snap, s);
    }

    fn pool(&self) -> Pool {
        self.snap.load().pools[0].clone()
    }
}


both_drivers!(
    hot_spares_replace_failed_members_and_standbys_come_last,
    lowest_lbset_serves_and_the_next_takes_over,
    draining_keeps_sticky_sessions_disabled_does_not,
    failonstatus_puts_a_member_in_error_until_retry,
    failontimeout_puts_a_slow_member_in_error,
    a_response_body_broken_midway_counts_as_a_failure,
    connect_failures_put_a_member_in_error_and_a_spare_takes_the_retry,
    slow_start_ramps_a_member_back_in,
);

// --------------------------------------------------------------- scenarios

fn hot_spares_replace_failed_members_and_standbys_come_last(driver: DriverChoice) {
    let [a, b, r1, r2, h] = ["a", "b", "r1", "r2", "h"].map(Backend::start);
    let pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![
            member(a.addr, "a", 0, Role::Active),
            member(b.addr, "b", 0, Role::Active),
            member(r1.addr, "r1", 0, Role::HotSpare),
            member(r2.addr, "r2", 0, Role::HotSpare),
            member(h.addr, "h", 0, Role::HotStandby),
        ],
    );
    let hs = Harness::start(driver, pool.clone());
    // All up: only the actives serve, evenly.
    let got = serve(hs.addr, 20);
    assert_eq!((count(&got, "a"), count(&got, "b")), (10, 10), "{got:?}");
    // a fails its checks: exactly one spare (the first) replaces it.
    let mut p = pool.clone();
    p.members[0].usable = false;
    hs.set(p.clone());
    let got = serve(hs.addr, 20);
    assert_eq!((count(&got, "b"), count(&got, "r1")), (10, 10), "{got:?}");
    // b goes too: both spares.
    p.members[1].usable = false;
    hs.set(p.clone());
    let got = serve(hs.addr, 20);
    assert_eq!((count(&got, "r1"), count(&got, "r2")), (10, 10), "{got:?}");
    // The spares fail as well: the standby takes everything.
    p.members[2].usable = false;
    p.members[3].usable = false;
    hs.set(p.clone());
    assert_eq!(count(&serve(hs.addr, 10), "h"), 10);
    // Nothing usable: 503.
    p.members[4].usable = false;
    hs.set(p);
    assert_eq!(get(hs.addr, "").status, 503);
    // And back: the standby and spares are idle again.
    hs.set(pool);
    let before = (r1.hits(), r2.hits(), h.hits());
    let got = serve(hs.addr, 10);
    assert_eq!(count(&got, "a") + count(&got, "b"), 10);
    assert_eq!((r1.hits(), r2.hits(), h.hits()), before);
}

fn lowest_lbset_serves_and_the_next_takes_over(driver: DriverChoice) {
    let [a, b, c] = ["a", "b", "c"].map(Backend::start);
    let pool = Pool::new(
        "p",
        LbMethod::ByBusyness,
        vec![
            member(c.addr, "c", 2, Role::Active),
            member(a.addr, "a", 0, Role::Active),
            member(b.addr, "b", 1, Role::Active),
        ],
    );
    let hs = Harness::start(driver, pool.clone());
    assert_eq!(count(&serve(hs.addr, 10), "a"), 10);
    let mut p = pool.clone();
    p.members[1].usable = false;
    hs.set(p.clone());
    assert_eq!(count(&serve(hs.addr, 10), "b"), 10);
    // Set 1 draining: set 2 takes new requests.
    p.members[2].draining = true;
    hs.set(p);
    assert_eq!(count(&serve(hs.addr, 10), "c"), 10);
    hs.set(pool);
    assert_eq!(count(&serve(hs.addr, 10), "a"), 10);
}

fn draining_keeps_sticky_sessions_disabled_does_not(driver: DriverChoice) {
    let [a, b] = ["a", "b"].map(Backend::start);
    let mut pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![member(a.addr, "a", 0, Role::Active), member(b.addr, "b", 0, Role::Active)],
    );
    pool.sticky = Some(Sticky::parse("ROUTEID").unwrap());
    let hs = Harness::start(driver, pool.clone());
    // a draining (N): its session stays, no cookie change; new sessions
    // go to b.
    let mut p = pool.clone();
    p.members[0].draining = true;
    hs.set(p.clone());
    for _ in 0..5 {
        let r = get(hs.addr, "Cookie: ROUTEID=.a\r\n");
        assert_eq!((r.status, r.body.as_str(), r.set_cookie), (200, "a", None));
    }
    let got = serve(hs.addr, 6);
    assert_eq!(count(&got, "b"), 6, "{got:?}");
    // a disabled (D, the control plane makes it unusable): its sessions
    // fail over and the cookie is re-stamped.
    p.members[0].draining = false;
    p.members[0].usable = false;
    hs.set(p);
    let r = get(hs.addr, "Cookie: ROUTEID=.a\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    assert_eq!(r.set_cookie.as_deref(), Some("ROUTEID=.b; Path=/; HttpOnly"));
}

fn failonstatus_puts_a_member_in_error_until_retry(driver: DriverChoice) {
    let [a, b] = ["a", "b"].map(Backend::start);
    let mut pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![member(a.addr, "a", 0, Role::Active), member(b.addr, "b", 0, Role::Active)],
    );
    pool.sticky = Some(Sticky::parse("ROUTEID").unwrap());
    pool.passive = Some(PassiveConfig {
        failonstatus: vec![503],
        failontimeout: false,
        error_limit: 3,
        error_window_ms: 10_000,
        retry_ms: 800,
    });
    let hs = Harness::start(driver, pool);
    a.status.store(503, Ordering::SeqCst);
    // Round robin: a answers 503 three times (its error_limit) among the
    // first six requests, then is In error and gets nothing more.
    let statuses: Vec<u16> = (0..6).map(|_| get(hs.addr, "").status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 3, "{statuses:?}");
    let stats = hs.pool().members[0].stats.clone();
    assert!(stats.passive.in_error_now());
    assert_eq!(stats.passive.times_in_error(), 1);
    let a_hits = a.hits();
    assert_eq!(count(&serve(hs.addr, 10), "b"), 10);
    // Its sticky session fails over while it is In error.
    let r = get(hs.addr, "Cookie: ROUTEID=.a\r\n");
    assert_eq!((r.body.as_str(), r.set_cookie.as_deref()), ("b", Some("ROUTEID=.b; Path=/; HttpOnly")));
    assert_eq!(a.hits(), a_hits);
    // It recovers (200 again); after `retry` it takes its share again.
    a.status.store(200, Ordering::SeqCst);
    wait_for("the retry interval to end", || !stats.passive.in_error_now());
    let got = serve(hs.addr, 10);
    assert_eq!(count(&got, "a"), 5, "{got:?}");
}

fn connect_failures_put_a_member_in_error_and_a_spare_takes_the_retry(driver: DriverChoice) {
    let [b, r] = ["b", "r"].map(Backend::start);
    let dead = dead_addr();
    let mut pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![
            member(dead, "d", 0, Role::Active),
            member(b.addr, "b", 0, Role::Active),
            member(r.addr, "r", 0, Role::HotSpare),
        ],
    );
    // Weight 3 on the dead member: without passive health it would be
    // tried first on most requests (as proxy.rs's retry test shows).
    pool.members[0].weight = 3;
    pool.passive = Some(PassiveConfig {
        failonstatus: vec![],
        failontimeout: false,
        error_limit: 1,
        error_window_ms: 10_000,
        retry_ms: 60_000,
    });
    let hs = Harness::start(driver, pool);
    // The first request tries the dead member, which goes In error at
    // once (Apache's default: one failure); the retry counts it as
    // unusable, so the spare is in the rotation with b.
    let first = get(hs.addr, "");
    assert_eq!(first.status, 200);
    let got = serve(hs.addr, 20);
    assert_eq!(count(&got, "b") + count(&got, "r"), 20);
    assert_eq!((count(&got, "b"), count(&got, "r")), (10, 10), "{got:?}");
    // One connect attempt in all, not one per request.
    let d = &hs.pool().members[0];
    assert_eq!(MemberStats::get(&d.stats.failures), 1);
    assert!(d.stats.passive.in_error_now());
}

fn slow_start_ramps_a_member_back_in(driver: DriverChoice) {
    let [a, b] = ["a", "b"].map(Backend::start);
    let mut pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![member(a.addr, "a", 0, Role::Active), member(b.addr, "b", 0, Role::Active)],
    );
    // Long enough that the ramp stays at its first step during the test.
    for m in &mut pool.members {
        m.slow_start_ms = 600_000;
    }
    let hs = Harness::start(driver, pool.clone());
    // At start nobody ramps: 1:1.
    let got = serve(hs.addr, 10);
    assert_eq!(count(&got, "b"), 5, "{got:?}");
    // b goes down, then comes back: it starts at 1/16 of its weight.
    let mut down = pool.clone();
    down.members[1].usable = false;
    hs.set(down);
    assert_eq!(count(&serve(hs.addr, 4), "a"), 4);
    hs.set(pool.clone());
    let got = serve(hs.addr, 34);
    assert_eq!(count(&got, "b"), 2, "{got:?}");
    // Without slow start the comeback is at full weight at once.
    let mut plain = pool;
    for m in &mut plain.members {
        m.slow_start_ms = 0;
    }
    hs.set(plain);
    let got = serve(hs.addr, 10);
    assert_eq!(count(&got, "b"), 5, "{got:?}");
}

fn failontimeout_puts_a_slow_member_in_error(driver: DriverChoice) {
    let [a, b] = ["a", "b"].map(Backend::start);
    let mut pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![member(a.addr, "a", 0, Role::Active), member(b.addr, "b", 0, Role::Active)],
    );
    let passive = PassiveConfig {
        failonstatus: vec![],
        failontimeout: true,
        error_limit: 1,
        error_window_ms: 10_000,
        retry_ms: 60_000,
    };
    pool.passive = Some(PassiveConfig { failontimeout: false, ..passive.clone() });
    let hs = Harness::start(driver, pool.clone());
    // a answers after the proxy's 500 ms response timeout: 504.
    a.delay_ms.store(2_000, Ordering::SeqCst);
    let statuses: Vec<u16> = (0..2).map(|_| get(hs.addr, "").status).collect();
    assert_eq!(statuses, [504, 200]);
    // Without failontimeout a timeout is not a failure: a is tried again.
    assert!(!hs.pool().members[0].stats.passive.in_error_now());
    assert_eq!(get(hs.addr, "").status, 504);
    // With it, one timeout puts a In error; b takes everything.
    pool.passive = Some(passive);
    hs.set(pool);
    let mut statuses: Vec<u16> = (0..2).map(|_| get(hs.addr, "").status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 504]);
    assert!(hs.pool().members[0].stats.passive.in_error_now());
    assert_eq!(count(&serve(hs.addr, 6), "b"), 6);
}

fn a_response_body_broken_midway_counts_as_a_failure(driver: DriverChoice) {
    let b = Backend::start("b");
    let (broken, broken_hits) = truncating_backend();
    let mut pool = Pool::new(
        "p",
        LbMethod::ByRequests,
        vec![member(broken, "x", 0, Role::Active), member(b.addr, "b", 0, Role::Active)],
    );
    pool.passive = Some(PassiveConfig {
        failonstatus: vec![],
        failontimeout: false,
        error_limit: 2,
        error_window_ms: 10_000,
        retry_ms: 60_000,
    });
    let hs = Harness::start(driver, pool);
    // The client sees the truncated responses as broken connections; the
    // proxy counts each as a failure of the member, and after two of
    // them (its error_limit) the member is In error.
    let stats = hs.pool().members[0].stats.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    for tries in 0.. {
        if stats.passive.in_error_now() {
            break;
        }
        assert!(
            Instant::now() < deadline && tries < 100,
            "never In error: {} hits",
            broken_hits.load(Ordering::SeqCst)
        );
        let mut s = TcpStream::connect(hs.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    assert_eq!(broken_hits.load(Ordering::SeqCst), 2);
    let before = broken_hits.load(Ordering::SeqCst);
    assert_eq!(count(&serve(hs.addr, 6), "b"), 6);
    assert_eq!(broken_hits.load(Ordering::SeqCst), before);
}
