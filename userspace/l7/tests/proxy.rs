//! The proxy on loopback against real hyper backends (on a tokio runtime in
//! the test harness), driven by a raw HTTP/1.1 client over std sockets so
//! that tests can send exactly the bytes they mean, malformed ones too.
//!
//! Every scenario runs twice, on the io_uring driver and on the polling
//! driver (the fallback). Where the kernel refuses io_uring, the io_uring
//! variants say so on stderr and pass, unless `FULCRUM_REQUIRE_IO_URING=1`
//! makes them fail.

#[macro_use]
mod drivers;
use drivers::tokio_rt;

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fulcrum_l7::*;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};

// ---------------------------------------------------------------- backends

/// What a backend saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body_len: usize,
}

/// An HTTP/1.1 backend answering with its own name. `/sleep/<ms>` waits
/// that long before answering. Every response carries a hop-by-hop field
/// (`X-Hop`, named in Connection) that the proxy must remove.
#[derive(Clone)]
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, every answer is a 500 (a member failing fast).
    fail: Arc<std::sync::atomic::AtomicBool>,
    /// The accept loop and every connection task, for `kill`.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
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
            conns: Arc::default(),
            seen: Arc::default(),
            fail: Arc::default(),
            tasks: Arc::default(),
        };
        let bb = b.clone();
        let accept = tokio_rt().spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                bb.conns.fetch_add(1, Ordering::SeqCst);
                let b2 = bb.clone();
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| b2.clone().answer(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                });
                bb.tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        b.tasks.lock().unwrap().push(accept.abort_handle());
        b
    }

    /// The process dies: the listener closes and every connection is
    /// dropped mid-exchange.
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn answer(self, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if req.uri().path() == "/ws" && req.headers().contains_key("upgrade") {
            // A tunnel that echoes what it gets in upper case (the proxy
            // copies bytes; it does not look at WebSocket frames).
            self.seen.lock().unwrap().push(Seen {
                path: "/ws".into(),
                headers: req.headers().clone(),
                body_len: 0,
            });
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(up) = on.await else { return };
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf[..n].make_ascii_uppercase();
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            return Ok(Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
        let path = req.uri().path().to_string();
        let headers = req.headers().clone();
        let body_len = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map_or(usize::MAX, |b| b.to_bytes().len());
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body_len,
        });
        if let Some((_, ms)) = path.split_once("/sleep/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        let mut resp = Response::builder();
        if self.fail.load(Ordering::SeqCst) {
            resp = resp.status(500);
        }
        if path == "/redirect" {
            // Links to itself by address, as a member behind a proxy
            // without ProxyPreserveHost does.
            resp = resp
                .status(302)
                .header("location", format!("http://{}/moved?x=1", self.addr))
                .header("content-location", format!("http://{}/c", self.addr))
                .header("uri", "http://elsewhere.example/u");
        }
        if path == "/login" {
            // An application session cookie carrying the route, as
            // Tomcat's jvmRoute does.
            resp = resp.header("set-cookie", format!("JSESSIONID=s1.{}; Path=/", self.name));
        }
        let resp = resp
            .header("x-backend", self.name)
            .header("connection", "x-hop")
            .header("x-hop", "must not reach the client")
            .body(Full::new(Bytes::from(self.name)))
            .unwrap();
        Ok(resp)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens (a port just released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ------------------------------------------------------------------ client

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `raw` on a new connection and reads one response until the
/// server closes (requests carry `Connection: close`).
fn send_raw(addr: SocketAddr, raw: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse(&buf)
}

fn parse(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// GET `path` with extra header lines (each ending in CRLF).
fn get_with(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    send_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// Waits for `cond` up to 5 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------- setup

fn pool(name: &str, members: &[(SocketAddr, u32)]) -> Pool {
    Pool::new(
        name,
        LbMethod::ByRequests,
        members.iter().map(|&(a, w)| Member::new(a, w)).collect(),
    )
}

fn route(host: &str, prefix: &str, pool: usize) -> Route {
    Route {
        host: HostMatch::parse(host),
        path_prefix: prefix.into(),
        pool,
        preserve_host: false,
        proxy_pass_reverse: false,
    }
}

struct Harness {
    proxy: Proxy,
    snap: SharedSnapshot,
    addr: SocketAddr,
}

impl Harness {
    /// A proxy on 127.0.0.1:0 with `workers` workers on `driver`, serving
    /// `pools` through `routes` (the listener address is filled in once
    /// bound).
    fn start(
        driver: DriverChoice,
        workers: usize,
        pools: Vec<Pool>,
        routes: Vec<Route>,
    ) -> Harness {
        Harness::start_with(driver, workers, pools, routes, |_| {})
    }

    /// [`Harness::start`] with the configuration adjusted by `tweak`.
    fn start_with(
        driver: DriverChoice,
        workers: usize,
        pools: Vec<Pool>,
        routes: Vec<Route>,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Harness {
        let snap = shared(Snapshot::default());
        let mut cfg = ProxyConfig::new(vec!["127.0.0.1:0".parse().unwrap()]);
        cfg.workers = workers;
        cfg.driver = driver;
        cfg.connect_timeout = Duration::from_secs(1);
        cfg.response_timeout = Duration::from_millis(500);
        tweak(&mut cfg);
        let proxy = Proxy::start(cfg, snap.clone()).expect("proxy starts");
        let expected = match driver {
            DriverChoice::Polling => DriverKind::Polling,
            _ => DriverKind::IoUring,
        };
        assert_eq!(proxy.driver(), expected);
        let addr = proxy.local_addrs()[0];
        let h = Harness { proxy, snap, addr };
        h.set(pools, routes);
        h
    }

    fn set(&self, pools: Vec<Pool>, routes: Vec<Route>) {
        let s = Snapshot {
            listeners: vec![ListenerRoutes {
                address: self.addr,
                routes,
            }],
            pools,
        };
        s.validate().unwrap();
        self.snap.store(Arc::new(s));
    }

    fn member(&self, pool: usize, m: usize) -> Member {
        self.snap.load().pools[pool].members[m].clone()
    }
}


both_drivers!(
    routes_by_host_and_path,
    byrequests_spreads_by_weight,
    forwarded_request_is_rewritten,
    unusable_member_gets_nothing,
    connect_failure_is_retried_on_another_member,
    error_statuses,
    backend_timeout_is_504_and_the_proxy_recovers,
    snapshot_swap_spares_requests_in_flight,
    malformed_request_gets_400_and_service_continues,
    keep_alive_reuses_upstream_connections,
    request_bodies_are_forwarded,
    bybusyness_avoids_busy_members,
    bytraffic_evens_bytes_per_weight,
    byip_keeps_a_client_on_one_member,
    p2c_avoids_a_member_failing_fast,
    sticky_cookie_is_inserted_and_honoured,
    sticky_app_cookie_and_url_parameter,
    sticky_failover_restamps_the_cookie,
    sticky_nofailover_gives_503,
    limits_get_their_statuses,
    slow_request_head_gets_408,
    idle_keep_alive_is_closed,
    slow_request_body_gets_408,
    ambiguous_requests_are_refused,
    both_framings_are_forwarded_chunked_and_close,
    pipelined_requests_are_answered_in_order,
    rfc7239_forwarded_is_added,
    proxy_pass_reverse_rewrites_member_urls,
    shutdown_drains_requests_in_flight,
    shutdown_drain_is_bounded,
    access_log_combined_and_json,
    access_log_reopens_for_rotation,
    websocket_is_tunnelled_both_ways,
    expect_100_continue,
    only_idempotent_requests_are_retried_after_a_reset,
    backend_killed_under_wrk_loses_no_idempotent_request,
    timeouts_under_load_never_touch_reused_descriptors,
    broken_request_body_is_the_clients_fault,
);

// --------------------------------------------------------------- scenarios

fn routes_by_host_and_path(driver: DriverChoice) {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let h = Harness::start(
        driver,
        2,
        vec![
            pool("a", &[(a.addr, 1)]),
            pool("b", &[(b.addr, 1)]),
            pool("c", &[(c.addr, 1)]),
        ],
        vec![
            route("api.example.com", "/v2/", 1),
            route("api.example.com", "/", 0),
            route("*.example.com", "/", 2),
        ],
    );
    assert_eq!(get(h.addr, "api.example.com", "/v1/x").body, "a");
    assert_eq!(get(h.addr, "API.Example.com:8080", "/v2/x").body, "b");
    assert_eq!(get(h.addr, "www.example.com", "/v2/x").body, "c");
    assert_eq!(get(h.addr, "x.y.example.com", "/").body, "c");
    // The bare domain matches neither the exact name nor the wildcard.
    assert_eq!(get(h.addr, "example.com", "/").status, 404);
    assert_eq!(c.seen.lock().unwrap()[0].path, "/v2/x");
    h.proxy.shutdown();
}

fn byrequests_spreads_by_weight(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // One worker: its smooth round robin is exact over each cycle.
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1), (b.addr, 2)])],
        vec![route("*", "/", 0)],
    );
    let mut got = HashMap::<String, usize>::new();
    for _ in 0..30 {
        let r = get(h.addr, "x", "/");
        assert_eq!(r.status, 200);
        *got.entry(r.body).or_default() += 1;
    }
    assert_eq!((got["a"], got["b"]), (10, 20));
    // The counters the control plane reads agree.
    let (ma, mb) = (h.member(0, 0), h.member(0, 1));
    assert_eq!(MemberStats::get(&ma.stats.requests), 10);
    assert_eq!(MemberStats::get(&mb.stats.requests), 20);
    assert_eq!(MemberStats::get(&mb.stats.responses[1]), 20);
    assert_eq!(MemberStats::get(&mb.stats.bytes_received), 20);
    wait_for("outstanding back to 0", || {
        MemberStats::get(&ma.stats.outstanding) + MemberStats::get(&mb.stats.outstanding) == 0
    });
    h.proxy.shutdown();

    // Two workers: each worker follows the weights, so the sum does too,
    // up to one unfinished cycle per worker.
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let h = Harness::start(
        driver,
        2,
        vec![pool("p", &[(a.addr, 1), (b.addr, 2)])],
        vec![route("*", "/", 0)],
    );
    for _ in 0..60 {
        assert_eq!(get(h.addr, "x", "/").status, 200);
    }
    assert!(
        (a.hits() as i64 - 20).abs() <= 2,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
    h.proxy.shutdown();
}

fn forwarded_request_is_rewritten(driver: DriverChoice) {
    let a = Backend::start("a");
    let mut keep = route("keep.example", "/", 0);
    keep.preserve_host = true;
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![keep, route("*", "/", 0)],
    );
    let r = send_raw(
        h.addr,
        "GET /p?q=1 HTTP/1.1\r\nHost: www.example\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\
         Keep-Alive: timeout=300\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
         Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Forwarded-For: 192.0.2.9\r\n\
         X-Forwarded-Proto: https\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // Response side: the backend's hop-by-hop field is gone.
    assert_eq!(r.headers.get("x-backend").map(String::as_str), Some("a"));
    assert!(!r.headers.contains_key("x-hop"), "{:?}", r.headers);
    let seen = a.seen.lock().unwrap().pop().unwrap();
    let hd = &seen.headers;
    assert_eq!(seen.path, "/p");
    for gone in [
        "x-drop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(hd.get(gone).is_none(), "{gone} reached the backend: {hd:?}");
    }
    // hyper's client adds its own keep-alive framing; the client's
    // Connection options never pass.
    assert!(
        hd.get_all("connection")
            .iter()
            .all(|v| v != "close, X-Drop"),
        "{hd:?}"
    );
    assert_eq!(hd["x-kept"], "yes");
    assert_eq!(hd["x-forwarded-for"], "192.0.2.9, 127.0.0.1");
    assert_eq!(hd["x-forwarded-proto"], "http");
    assert_eq!(hd["x-forwarded-host"], "www.example");
    assert_eq!(hd["host"], a.addr.to_string().as_str());

    let r = get(h.addr, "keep.example", "/");
    assert_eq!(r.status, 200);
    let seen = a.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen.headers["host"], "keep.example");
    h.proxy.shutdown();
}

fn unusable_member_gets_nothing(driver: DriverChoice) {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let mut p = pool("p", &[(a.addr, 1), (b.addr, 1), (c.addr, 1)]);
    p.members[1].usable = false;
    let h = Harness::start(driver, 2, vec![p], vec![route("*", "/", 0)]);
    for _ in 0..20 {
        assert_eq!(get(h.addr, "x", "/").status, 200);
    }
    assert_eq!(b.hits(), 0);
    assert_eq!(a.hits() + c.hits(), 20);
    h.proxy.shutdown();
}

fn connect_failure_is_retried_on_another_member(driver: DriverChoice) {
    let a = Backend::start("a");
    let dead = dead_addr();
    // The dead member has the larger weight, so it is picked first often.
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(dead, 3), (a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    for _ in 0..8 {
        let r = get(h.addr, "x", "/");
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
    let d = h.member(0, 0);
    assert!(MemberStats::get(&d.stats.failures) >= 6);
    assert_eq!(MemberStats::get(&d.stats.requests), 0);
    h.proxy.shutdown();
}

fn error_statuses(driver: DriverChoice) {
    let a = Backend::start("a");
    let mut down = pool("down", &[(a.addr, 1)]);
    down.members[0].usable = false;
    let h = Harness::start(
        driver,
        1,
        vec![
            down,
            pool("dead", &[(dead_addr(), 1), (dead_addr(), 1)]),
            pool("zero", &[(a.addr, 0)]),
        ],
        vec![
            route("down", "/", 0),
            route("dead", "/", 1),
            route("zero", "/", 2),
            route("*", "/only/", 0),
        ],
    );
    assert_eq!(get(h.addr, "down", "/").status, 503);
    assert_eq!(get(h.addr, "zero", "/").status, 503);
    assert_eq!(get(h.addr, "dead", "/").status, 502);
    assert_eq!(get(h.addr, "other", "/").status, 404);
    // A listener the snapshot does not know: 404 as well.
    h.snap.store(Arc::new(Snapshot::default()));
    assert_eq!(get(h.addr, "down", "/").status, 404);
    assert_eq!(a.hits(), 0);
    h.proxy.shutdown();
}

fn backend_timeout_is_504_and_the_proxy_recovers(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let t = Instant::now();
    assert_eq!(get(h.addr, "x", "/sleep/3000").status, 504);
    assert!(t.elapsed() < Duration::from_secs(2));
    let m = h.member(0, 0);
    assert_eq!(MemberStats::get(&m.stats.failures), 1);
    // The timed-out connection is not reused: the next request gets a
    // clean exchange.
    for _ in 0..5 {
        let r = get(h.addr, "x", "/");
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
    wait_for("outstanding back to 0", || {
        MemberStats::get(&m.stats.outstanding) == 0
    });
    h.proxy.shutdown();
}

fn snapshot_swap_spares_requests_in_flight(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let h = Harness::start(
        driver,
        2,
        vec![pool("a", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let addr = h.addr;
    let slow = thread::spawn(move || get(addr, "x", "/sleep/300"));
    wait_for("the slow request to reach a", || a.hits() == 1);
    h.set(vec![pool("b", &[(b.addr, 1)])], vec![route("*", "/", 0)]);
    assert_eq!(get(h.addr, "x", "/").body, "b");
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    assert_eq!(a.hits(), 1);
    h.proxy.shutdown();
}

fn malformed_request_gets_400_and_service_continues(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    // A client that sent half a request and waits holds its connection;
    // other clients must be served meanwhile.
    let mut idle = TcpStream::connect(h.addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    for bad in [
        "GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "NOT-HTTP\r\n\r\n",
    ] {
        assert_eq!(send_raw(h.addr, bad).status, 400, "{bad:?}");
        let r = get(h.addr, "x", "/");
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
    assert_eq!(a.hits(), 3);
    drop(idle);
    h.proxy.shutdown();
}

fn keep_alive_reuses_upstream_connections(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    // Sequential requests, on one client connection and then on new ones,
    // all travel over the one upstream connection the worker keeps idle
    // between them.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..5 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_one(&mut s);
        assert_eq!((r.status, r.body.as_str()), (200, "a"), "request {i}");
    }
    drop(s);
    for _ in 0..5 {
        assert_eq!(get(h.addr, "x", "/").status, 200);
    }
    assert_eq!(a.hits(), 10);
    assert_eq!(a.conns.load(Ordering::SeqCst), 1);
    h.proxy.shutdown();
}

fn request_bodies_are_forwarded(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let body = "x".repeat(100_000);
    let r = send_raw(
        h.addr,
        &format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 200);
    // Chunked from the client: hyper re-frames it for the member.
    let r = send_raw(
        h.addr,
        "POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = a.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.body_len).collect::<Vec<_>>(),
        vec![100_000, 11]
    );
    assert_eq!(seen[0].headers["content-length"], "100000");
    let m = h.member(0, 0);
    assert_eq!(MemberStats::get(&m.stats.bytes_sent), 100_011);
    h.proxy.shutdown();
}

/// Reads one response with a Content-Length body from a kept-alive
/// connection.
fn read_one(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = parse(&buf);
    let len: usize = head.headers["content-length"].parse().unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    Reply {
        body: String::from_utf8(body).unwrap(),
        ..head
    }
}

#[test]
fn io_uring_probe_and_auto_choice_agree() {
    let snap = shared(Snapshot::default());
    let proxy = Proxy::start(ProxyConfig::new(vec!["127.0.0.1:0".parse().unwrap()]), snap).unwrap();
    let expected = if probe_io_uring().is_ok() {
        DriverKind::IoUring
    } else {
        DriverKind::Polling
    };
    assert_eq!(proxy.driver(), expected);
    proxy.shutdown();
}

// ------------------------------------------------- balancing methods, sticky

fn method_pool(method: LbMethod, members: &[(SocketAddr, u32)]) -> Pool {
    let mut p = pool("p", members);
    p.lbmethod = method;
    p
}

fn bybusyness_avoids_busy_members(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let h = Harness::start(
        driver,
        1,
        vec![method_pool(
            LbMethod::ByBusyness,
            &[(a.addr, 1), (b.addr, 1)],
        )],
        vec![route("*", "/", 0)],
    );
    // Idle members alternate (ties by round robin).
    for _ in 0..4 {
        assert_eq!(get(h.addr, "x", "/").status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (2, 2));
    // Two slow requests in flight: the first goes to a (the round robin's
    // turn), the second to the idle b.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = h.addr;
            let t = thread::spawn(move || get(addr, "x", "/sleep/400").body);
            // Let the proxy send it before the next one arrives.
            thread::sleep(Duration::from_millis(100));
            t
        })
        .collect();
    let busy: Vec<u64> = (0..2)
        .map(|i| MemberStats::get(&h.member(0, i).stats.outstanding))
        .collect();
    assert_eq!(busy, vec![1, 1]);
    // Make a busier: a third slow request goes to a (round robin among
    // the tied), then quick requests go to b only while a has more.
    let addr = h.addr;
    let third = thread::spawn(move || get(addr, "x", "/sleep/400").body);
    wait_for("third request in flight", || {
        (0..2)
            .map(|i| MemberStats::get(&h.member(0, i).stats.outstanding))
            .sum::<u64>()
            == 3
    });
    let busier = if MemberStats::get(&h.member(0, 0).stats.outstanding) == 2 {
        0
    } else {
        1
    };
    let idler = ["a", "b"][1 - busier];
    for _ in 0..5 {
        assert_eq!(get(h.addr, "x", "/").body, idler);
    }
    let mut bodies: Vec<String> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    bodies.push(third.join().unwrap());
    bodies.sort();
    assert_eq!(
        bodies.iter().filter(|b| *b == "a").count() + bodies.iter().filter(|b| *b == "b").count(),
        3
    );
    h.proxy.shutdown();
}

fn bytraffic_evens_bytes_per_weight(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let h = Harness::start(
        driver,
        1,
        vec![method_pool(
            LbMethod::ByTraffic,
            &[(a.addr, 1), (b.addr, 3)],
        )],
        vec![route("*", "/", 0)],
    );
    // Each response body is one byte: bytes per weight even out at 1:3.
    for _ in 0..40 {
        assert_eq!(get(h.addr, "x", "/").status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (10, 30));
    // A large request body to b counts against it: a catches up first.
    let body = "x".repeat(60);
    let r = send_raw(
        h.addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\nConnection: close\r\n\r\n{body}"
        ),
    );
    let big = r.body.clone();
    let before = (a.hits(), b.hits());
    for _ in 0..10 {
        get(h.addr, "x", "/");
    }
    let (da, db) = (a.hits() - before.0, b.hits() - before.1);
    if big == "b" {
        assert_eq!((da, db), (10, 0));
    } else {
        // 60 + 1 bytes on a (weight 1) outweighs 10 more bytes on b.
        assert_eq!((da, db), (0, 10));
    }
    h.proxy.shutdown();
}

fn byip_keeps_a_client_on_one_member(driver: DriverChoice) {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let names = ["a", "b", "c"];
    let p = method_pool(LbMethod::ByIp, &[(a.addr, 1), (b.addr, 1), (c.addr, 1)]);
    let client: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    // The member the hash gives this client, and its second choice.
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by(|&x, &y| {
        ByIp::score(&p.members[y], client).total_cmp(&ByIp::score(&p.members[x], client))
    });
    let h = Harness::start(driver, 2, vec![p.clone()], vec![route("*", "/", 0)]);
    for _ in 0..10 {
        assert_eq!(get(h.addr, "x", "/").body, names[order[0]]);
    }
    // Its member leaves: the client moves to its second choice, and comes
    // back when the member does.
    let mut gone = p.clone();
    gone.members[order[0]].usable = false;
    h.set(vec![gone], vec![route("*", "/", 0)]);
    for _ in 0..5 {
        assert_eq!(get(h.addr, "x", "/").body, names[order[1]]);
    }
    h.set(vec![p], vec![route("*", "/", 0)]);
    assert_eq!(get(h.addr, "x", "/").body, names[order[0]]);
    h.proxy.shutdown();
}

fn p2c_avoids_a_member_failing_fast(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.fail.store(true, Ordering::SeqCst);
    let h = Harness::start(
        driver,
        1,
        vec![method_pool(LbMethod::P2c, &[(a.addr, 1), (b.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let mut statuses = Vec::new();
    for _ in 0..50 {
        statuses.push(get(h.addr, "x", "/").status);
    }
    // a answers 500 at once, but its first 500 records the 1 s penalty:
    // after at most one probe each, b (about 1 ms) wins every draw.
    assert!(a.hits() <= 2, "a={} b={}", a.hits(), b.hits());
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), a.hits());
    let la = h
        .member(0, 0)
        .stats
        .latency_us(fulcrum_l7::snapshot::clock_ms())
        .unwrap();
    let lb = h
        .member(0, 1)
        .stats
        .latency_us(fulcrum_l7::snapshot::clock_ms())
        .unwrap();
    assert!(la > 900_000.0 && lb < 200_000.0, "a {la} us, b {lb} us");
    h.proxy.shutdown();
}

fn sticky_pool(name: &str, stickysession: &str, backends: &[&Backend]) -> Pool {
    let mut p = pool(
        name,
        &backends.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
    );
    for (m, b) in p.members.iter_mut().zip(backends) {
        m.route = b.name.to_string();
    }
    p.sticky = Some(Sticky::parse(stickysession).unwrap());
    p
}

fn sticky_cookie_is_inserted_and_honoured(driver: DriverChoice) {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let p = sticky_pool("p", "ROUTEID", &[&a, &b, &c]);
    let h = Harness::start(driver, 2, vec![p.clone()], vec![route("*", "/", 0)]);
    // A new client gets the cookie of the member that served it.
    let r = get(h.addr, "x", "/");
    let served = r.body.clone();
    assert_eq!(
        r.headers["set-cookie"],
        format!("ROUTEID=.{served}; Path=/; HttpOnly")
    );
    // Later requests with it stay there, without a new cookie.
    for _ in 0..10 {
        let r = get_with(
            h.addr,
            "/",
            &format!("Cookie: other=1; ROUTEID=.{served}\r\n"),
        );
        assert_eq!(r.body, served);
        assert!(!r.headers.contains_key("set-cookie"));
    }
    // The backend sees the client's cookie unchanged.
    let seen = [&a, &b, &c]
        .iter()
        .find(|x| x.name == served)
        .unwrap()
        .seen
        .lock()
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        seen.headers["cookie"],
        format!("other=1; ROUTEID=.{served}")
    );
    // sticky_secure adds Secure.
    let mut secure = p;
    secure.sticky.as_mut().unwrap().secure = true;
    h.set(vec![secure], vec![route("*", "/", 0)]);
    let r = get(h.addr, "x", "/");
    assert_eq!(
        r.headers["set-cookie"],
        format!("ROUTEID=.{}; Path=/; HttpOnly; Secure", r.body)
    );
    // An unknown route is balanced as usual and re-stamped.
    let r = get_with(h.addr, "/", "Cookie: ROUTEID=.zz\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["set-cookie"],
        format!("ROUTEID=.{}; Path=/; HttpOnly; Secure", r.body)
    );
    h.proxy.shutdown();
}

fn sticky_app_cookie_and_url_parameter(driver: DriverChoice) {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let h = Harness::start(
        driver,
        1,
        vec![sticky_pool("p", "JSESSIONID|jsessionid", &[&a, &b, &c])],
        vec![route("*", "/", 0)],
    );
    for _ in 0..3 {
        let r = get_with(h.addr, "/", "Cookie: JSESSIONID=abc.b\r\n");
        assert_eq!(r.body, "b");
        assert!(!r.headers.contains_key("set-cookie"));
        assert_eq!(get(h.addr, "x", "/app;jsessionid=abc.c").body, "c");
        assert_eq!(get(h.addr, "x", "/app?q=1&jsessionid=abc.a").body, "a");
    }
    // The URL parameter wins over the cookie, as in Apache.
    assert_eq!(
        get_with(h.addr, "/;jsessionid=x.a", "Cookie: JSESSIONID=abc.c\r\n").body,
        "a"
    );
    // The path parameter reaches the member unchanged.
    assert_eq!(c.seen.lock().unwrap()[0].path, "/app;jsessionid=abc.c");
    // The application's own session cookie is left alone (not doubled).
    let r = get(h.addr, "x", "/login");
    assert_eq!(
        r.headers["set-cookie"],
        format!("JSESSIONID=s1.{}; Path=/", r.body)
    );
    h.proxy.shutdown();
}

fn sticky_failover_restamps_the_cookie(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut p = sticky_pool("p", "JSESSIONID|jsessionid", &[&a, &b]);
    p.members[0].usable = false;
    let h = Harness::start(driver, 1, vec![p.clone()], vec![route("*", "/", 0)]);
    // a is down: b serves, and the cookie now names b, session id kept.
    let r = get_with(h.addr, "/", "Cookie: JSESSIONID=abc.a\r\n");
    assert_eq!(r.body, "b");
    assert_eq!(
        r.headers["set-cookie"],
        "JSESSIONID=abc.b; Path=/; HttpOnly"
    );
    // A member that refuses connections: likewise, after the retry.
    let mut dead = p.clone();
    dead.members[0].usable = true;
    dead.members[0].address = dead_addr();
    h.set(vec![dead], vec![route("*", "/", 0)]);
    let r = get_with(h.addr, "/", "Cookie: JSESSIONID=abc.a\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    assert_eq!(
        r.headers["set-cookie"],
        "JSESSIONID=abc.b; Path=/; HttpOnly"
    );
    // Draining (weight 0): no new sessions, but its own sessions stay.
    let mut drain = p;
    drain.members[0].usable = true;
    drain.members[0].weight = 0;
    h.set(vec![drain], vec![route("*", "/", 0)]);
    let r = get_with(h.addr, "/", "Cookie: JSESSIONID=abc.a\r\n");
    assert_eq!(r.body, "a");
    assert!(!r.headers.contains_key("set-cookie"));
    for _ in 0..4 {
        assert_eq!(get(h.addr, "x", "/").body, "b");
    }
    h.proxy.shutdown();
}

fn sticky_nofailover_gives_503(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut p = sticky_pool("p", "ROUTEID", &[&a, &b]);
    p.sticky.as_mut().unwrap().nofailover = true;
    let h = Harness::start(driver, 1, vec![p.clone()], vec![route("*", "/", 0)]);
    assert_eq!(get_with(h.addr, "/", "Cookie: ROUTEID=.a\r\n").body, "a");
    // Unusable member: 503, nothing sent anywhere.
    let mut down = p.clone();
    down.members[0].usable = false;
    h.set(vec![down], vec![route("*", "/", 0)]);
    let hits = (a.hits(), b.hits());
    assert_eq!(get_with(h.addr, "/", "Cookie: ROUTEID=.a\r\n").status, 503);
    // Refusing connections: 503 as well, no retry elsewhere.
    let mut dead = p.clone();
    dead.members[0].address = dead_addr();
    h.set(vec![dead], vec![route("*", "/", 0)]);
    assert_eq!(get_with(h.addr, "/", "Cookie: ROUTEID=.a\r\n").status, 503);
    // A route no member has (Apache: 503 too).
    assert_eq!(get_with(h.addr, "/", "Cookie: ROUTEID=.zz\r\n").status, 503);
    assert_eq!((a.hits(), b.hits()), hits);
    // Without a route, a request is balanced as usual and stamped.
    let r = get(h.addr, "x", "/");
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    assert_eq!(r.headers["set-cookie"], "ROUTEID=.b; Path=/; HttpOnly");
    h.proxy.shutdown();
}

// ------------------------------------------------- timeouts, limits, hygiene

/// Sends `raw` and reads until the proxy closes the connection: each
/// refusal below must close (the framing of what follows is unknown).
fn refused(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    // A reset after the response (unread request bytes) still leaves the
    // response readable before it.
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

fn limits_get_their_statuses(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| {
            c.max_uri_len = 100;
            c.max_header_size = 2048;
            c.max_headers = 20;
            c.max_body_size = 1000;
        },
    );
    let stats = h.proxy.stats();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(150));
    let big_field = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(3000));
    let huge_head = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(100_000));
    let many: String = (0..30).map(|i| format!("X-F{i}: 1\r\n")).collect();
    let many_fields = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let declared = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n{}", "d".repeat(1001));
    let chunk = format!("{:x}\r\n{}\r\n", 600, "c".repeat(600));
    let chunked = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n");
    for (raw, status) in [
        (&long_uri, 414),
        (&big_field, 431),
        (&huge_head, 431),
        (&many_fields, 431),
        (&declared, 413),
        (&chunked, 413),
    ] {
        let r = refused(h.addr, raw.as_bytes());
        assert_eq!(r.status, status, "{}", &raw[..40]);
        // The proxy keeps serving.
        let ok = get(h.addr, "x", "/");
        assert_eq!((ok.status, ok.body.as_str()), (200, "a"));
    }
    // Only the chunked body can have started towards the member (the
    // proxy cannot know its size in advance); it never arrived whole.
    assert!(a.seen.lock().unwrap().iter().all(|s| s.body_len < 1200 || s.body_len == usize::MAX));
    // Within the limits, the same shapes pass.
    let r = send_raw(h.addr, &format!("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n{}", "d".repeat(1000)));
    assert_eq!(r.status, 200);
    assert_eq!(stats.violations(Violation::UriTooLong), 1);
    assert_eq!(stats.violations(Violation::HeaderFieldsTooLarge), 3);
    assert_eq!(stats.violations(Violation::PayloadTooLarge), 2);
    assert_eq!(stats.violations(Violation::BadRequest), 0);
    h.proxy.shutdown();
}

fn slow_request_head_gets_408(driver: DriverChoice) {
    let a = Backend::start("a");
    let timeout = Duration::from_millis(300);
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| c.header_read_timeout = timeout,
    );
    let stats = h.proxy.stats();
    // Half a head, then silence: 408 and the connection closes.
    let t = Instant::now();
    let r = refused(h.addr, b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(r.status, 408);
    assert_eq!(r.headers["connection"], "close");
    assert!(t.elapsed() >= timeout);
    // A connection that never sends a byte is closed without an answer.
    let mut silent = TcpStream::connect(h.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    silent.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "{buf:?}");
    // A slowloris feeding a byte at a time gets no more than the timeout.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
        if t.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let _ = s.read_to_end(&mut answer);
    assert_eq!(parse(&answer).status, 408);
    assert!(t.elapsed() < Duration::from_secs(5), "the slow head was not cut");
    assert_eq!(stats.violations(Violation::RequestTimeout), 2);
    assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
    assert_eq!(a.hits(), 0);
    h.proxy.shutdown();
}

fn idle_keep_alive_is_closed(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| {
            c.header_read_timeout = Duration::from_millis(200);
            c.keepalive_timeout = Duration::from_millis(800);
        },
    );
    let stats = h.proxy.stats();
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_one(&mut s).status, 200);
    // Idle for longer than the header timeout but within keep-alive: the
    // connection is still there.
    thread::sleep(Duration::from_millis(400));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_one(&mut s).status, 200);
    // Then past keep-alive: closed, silently.
    let t = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(700));
    assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.violations(Violation::RequestTimeout), 0);
    h.proxy.shutdown();
}

fn slow_request_body_gets_408(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| {
            c.request_timeout = Duration::from_millis(400);
            c.response_timeout = Duration::from_secs(5);
        },
    );
    let stats = h.proxy.stats();
    let r = refused(h.addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(r.status, 408);
    assert_eq!(r.headers["connection"], "close");
    assert_eq!(stats.violations(Violation::RequestTimeout), 1);
    // The member saw at most a truncated request, never a complete one.
    assert!(a.seen.lock().unwrap().iter().all(|s| s.body_len != 10));
    assert_eq!(get(h.addr, "x", "/").status, 200);
    h.proxy.shutdown();
}

fn ambiguous_requests_are_refused(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let stats = h.proxy.stats();
    // Another client's keep-alive connection, served between the bad ones.
    let mut other = TcpStream::connect(h.addr).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cases: [&[u8]; 11] = [
        // HTTP/1.1 without Host; with two.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        // Absolute form naming another host than Host.
        b"GET http://y/ HTTP/1.1\r\nHost: x\r\n\r\n",
        // Differing and invalid Content-Length.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        // obs-fold (RFC 9112 section 5.2).
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
        // Transfer-Encoding whose last coding is not chunked; unknown; in
        // HTTP/1.0.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A space before the colon (RFC 9112 section 5.1: must be 400).
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    ];
    for (i, raw) in cases.iter().enumerate() {
        let r = refused(h.addr, raw);
        assert_eq!(r.status, 400, "case {i}: {}", String::from_utf8_lossy(raw));
        other.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_one(&mut other).status, 200, "after case {i}");
    }
    assert_eq!(a.hits(), cases.len(), "only the other client's requests");
    assert_eq!(stats.violations(Violation::BadRequest), cases.len() as u64);
    // No tunnels to hosts the client names.
    let r = refused(h.addr, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(a.hits(), cases.len());
    // HTTP/1.0 without Host is valid; the same absolute form with a
    // matching Host is too.
    assert_eq!(send_raw(h.addr, "GET / HTTP/1.0\r\n\r\n").status, 200);
    assert_eq!(send_raw(h.addr, "GET http://x:80/p HTTP/1.1\r\nHost: X\r\nConnection: close\r\n\r\n").status, 200);
    assert_eq!(a.seen.lock().unwrap().last().unwrap().path, "/p");
    h.proxy.shutdown();
}

fn both_framings_are_forwarded_chunked_and_close(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    // A smuggling attempt: a front end trusting Content-Length would see
    // one request with a 36-byte body; chunked framing sees an empty body
    // and then `GET /smuggled`. The proxy reads it chunked (RFC 9112
    // section 6.3), forwards only chunked framing and closes afterwards,
    // so the bytes after the chunked body are never read as a request.
    let raw = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 36\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let r = refused(h.addr, raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["connection"], "close");
    let seen = a.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/up");
    assert_eq!(seen[0].body_len, 0);
    assert!(seen[0].headers.get("content-length").is_none_or(|v| v == "0"));
    // Repeated identical Content-Length is folded into one by hyper.
    let r = send_raw(h.addr, "POST /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.status, 200);
    let seen = a.seen.lock().unwrap().clone();
    assert_eq!(seen[1].headers.get_all("content-length").iter().count(), 1);
    assert_eq!(seen[1].body_len, 3);
    h.proxy.shutdown();
}

fn pipelined_requests_are_answered_in_order(driver: DriverChoice) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let h = Harness::start(
        driver,
        1,
        vec![pool("a", &[(a.addr, 1)]), pool("b", &[(b.addr, 1)])],
        vec![route("*", "/a", 0), route("*", "/b", 1)],
    );
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The first is the slowest: answers still come in request order.
    s.write_all(
        b"GET /a/sleep/200 HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let bodies: Vec<String> = (0..3).map(|_| read_one(&mut s).body).collect();
    assert_eq!(bodies, ["a", "b", "a"]);
    h.proxy.shutdown();
}

fn rfc7239_forwarded_is_added(driver: DriverChoice) {
    for (fields, xff, fwd) in [
        (ForwardedFields::Rfc7239, false, true),
        (ForwardedFields::Both, true, true),
        (ForwardedFields::XForwarded, true, false),
    ] {
        let a = Backend::start("a");
        let h = Harness::start_with(
            driver,
            1,
            vec![pool("p", &[(a.addr, 1)])],
            vec![route("*", "/", 0)],
            |c| c.forwarded = fields,
        );
        let r = send_raw(
            h.addr,
            "GET / HTTP/1.1\r\nHost: www.example:8080\r\nForwarded: for=192.0.2.9;proto=https\r\n\
             X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        let seen = a.seen.lock().unwrap().pop().unwrap();
        let hd = &seen.headers;
        if fwd {
            assert_eq!(
                hd["forwarded"],
                "for=192.0.2.9;proto=https, for=127.0.0.1;proto=http;host=\"www.example:8080\"",
                "{fields:?}"
            );
        } else {
            assert_eq!(hd["forwarded"], "for=192.0.2.9;proto=https", "{fields:?}");
        }
        if xff {
            assert_eq!(hd["x-forwarded-for"], "127.0.0.1", "{fields:?}");
            assert_eq!(hd["x-forwarded-proto"], "http", "{fields:?}");
        } else {
            // The client's claim of https is not passed on as if vouched for.
            assert!(hd.get("x-forwarded-for").is_none(), "{fields:?}");
            assert!(hd.get("x-forwarded-proto").is_none(), "{fields:?}");
        }
        h.proxy.shutdown();
    }
}

fn proxy_pass_reverse_rewrites_member_urls(driver: DriverChoice) {
    let a = Backend::start("a");
    let mut rev = route("rev.example", "/", 0);
    rev.proxy_pass_reverse = true;
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![rev, route("*", "/", 0)],
    );
    let r = get(h.addr, "rev.example:8443", "/redirect");
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "http://rev.example:8443/moved?x=1");
    assert_eq!(r.headers["content-location"], "http://rev.example:8443/c");
    // Not a member's URL: untouched.
    assert_eq!(r.headers["uri"], "http://elsewhere.example/u");
    // A route without proxy_pass_reverse passes the member's URL through.
    let r = get(h.addr, "plain.example", "/redirect");
    assert_eq!(r.headers["location"], format!("http://{}/moved?x=1", a.addr));
    h.proxy.shutdown();
}

fn shutdown_drains_requests_in_flight(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        2,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let addr = h.addr;
    // An idle keep-alive connection, and requests still being answered.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_one(&mut idle).status, 200);
    let slow: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || get(addr, "x", "/sleep/400")))
        .collect();
    wait_for("the slow requests to reach a", || a.hits() == 5);
    let stopper = thread::spawn(move || h.proxy.shutdown());
    // The idle connection is closed without waiting for the others.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    for t in slow {
        let r = t.join().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
    stopper.join().unwrap();
    // Nobody listens any more.
    assert!(TcpStream::connect(addr).is_err());
}

fn shutdown_drain_is_bounded(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| {
            c.response_timeout = Duration::from_secs(30);
            c.drain_timeout = Duration::from_millis(300);
        },
    );
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /sleep/10000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    wait_for("the request to reach a", || a.hits() == 1);
    let t = Instant::now();
    h.proxy.shutdown();
    // Cut at the drain timeout, long before the member would answer.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// Log rotation: the file is renamed away, `reopen_access_log` is called
/// (the daemon does on SIGHUP), and the next records go to a new file at
/// the configured path while the earlier one stays in the renamed file.
fn access_log_reopens_for_rotation(driver: DriverChoice) {
    let a = Backend::start("a");
    let path = std::env::temp_dir().join(format!("fulcrum-l7-rotate-{}-{driver:?}.log", std::process::id()));
    let rotated = path.with_extension("log.1");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
    let h = Harness::start_with(driver, 1, vec![pool("p", &[(a.addr, 1)])], vec![route("www.example", "/", 0)], |c| {
        c.access_log = Some(AccessLogConfig { path: path.clone(), format: AccessLogFormat::Combined })
    });
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(get(h.addr, "www.example", "/before").status, 200);
    // The writer flushes each batch: wait for the line, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lines(&path).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first record was never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::rename(&path, &rotated).unwrap();
    h.proxy.reopen_access_log();
    assert_eq!(get(h.addr, "www.example", "/after").status, 200);
    h.proxy.shutdown();
    let (old, new) = (lines(&rotated), lines(&path));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
    assert!(old.len() == 1 && old[0].contains("/before"), "rotated file: {old:?}");
    assert!(new.len() == 1 && new[0].contains("/after"), "new file: {new:?}");
}

fn access_log_combined_and_json(driver: DriverChoice) {
    for format in [AccessLogFormat::Combined, AccessLogFormat::Json] {
        let a = Backend::start("a");
        let path = std::env::temp_dir().join(format!(
            "fulcrum-l7-access-{}-{:?}-{format:?}.log",
            std::process::id(),
            driver
        ));
        let _ = std::fs::remove_file(&path);
        let h = Harness::start_with(
            driver,
            2,
            vec![pool("p", &[(a.addr, 1)])],
            vec![route("www.example", "/", 0)],
            |c| {
                c.access_log = Some(AccessLogConfig {
                    path: path.clone(),
                    format,
                })
            },
        );
        let r = send_raw(
            h.addr,
            "GET /x?y=1 HTTP/1.1\r\nHost: www.example\r\nUser-Agent: test/1 \"q\"\r\n\
             Referer: http://r.example/\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(get(h.addr, "other.example", "/none").status, 404);
        // Shutdown writes out every record.
        h.proxy.shutdown();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (ok, missing) = if lines[0].contains("/x?y=1") {
            (lines[0], lines[1])
        } else {
            (lines[1], lines[0])
        };
        match format {
            AccessLogFormat::Combined => {
                let prefix = "127.0.0.1 - - [";
                assert!(ok.starts_with(prefix), "{ok}");
                assert!(
                    ok.contains("] \"GET /x?y=1 HTTP/1.1\" 200 1 \"http://r.example/\" \"test/1 \\\"q\\\"\" upstream="),
                    "{ok}"
                );
                assert!(ok.contains(&format!("upstream={} request_us=", a.addr)), "{ok}");
                assert!(!ok.ends_with("upstream_us=-"), "{ok}");
                assert!(missing.contains("\"GET /none HTTP/1.1\" 404 "), "{missing}");
                assert!(missing.contains("upstream=- "), "{missing}");
            }
            AccessLogFormat::Json => {
                let v: serde_json::Value = serde_json::from_str(ok).unwrap();
                assert_eq!(v["status"], 200);
                assert_eq!(v["bytes"], 1);
                assert_eq!(v["target"], "/x?y=1");
                assert_eq!(v["host"], "www.example");
                assert_eq!(v["user_agent"], "test/1 \"q\"");
                assert_eq!(v["upstream"], a.addr.to_string());
                assert!(v["upstream_us"].as_u64().is_some());
                let v: serde_json::Value = serde_json::from_str(missing).unwrap();
                assert_eq!(v["status"], 404);
                assert!(v["upstream"].is_null());
            }
        }
    }
}

/// Reads a response head (through the blank line) byte by byte, leaving
/// what follows unread.
fn read_head(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    parse(&buf)
}

fn websocket_is_tunnelled_both_ways(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| c.websocket_idle_timeout = Duration::from_millis(500),
    );
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The first bytes of the new protocol come right behind the head.
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly",
    )
    .unwrap();
    let r = read_head(&mut s);
    assert_eq!(r.status, 101);
    assert_eq!(r.headers["upgrade"], "websocket");
    assert_eq!(r.headers["connection"], "upgrade");
    assert_eq!(r.headers["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"EARLY");
    for msg in [&b"ping"[..], b"a longer message", b"x"] {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.to_ascii_uppercase());
    }
    let seen = a.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["connection"], "upgrade");
    assert_eq!(seen.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    // Idle past its own timeout: closed.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // Other upgrades are not tunnelled: a plain request without Upgrade.
    let r = send_raw(
        h.addr,
        "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    let seen = a.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.path, "/plain");
    assert!(seen.headers.get("upgrade").is_none());
    // The proxy still serves after the tunnel.
    assert_eq!(get(h.addr, "x", "/").status, 200);
    h.proxy.shutdown();
}

fn expect_100_continue(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| c.max_body_size = 100,
    );
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    // The client waits for the interim answer before sending its body.
    let r = read_head(&mut s);
    assert_eq!(r.status, 100);
    s.write_all(b"hello").unwrap();
    let r = read_one(&mut s);
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    let seen = a.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.body_len, 5);
    assert!(seen.headers.get("expect").is_none());
    // Too large: refused at once, no 100, the body never sent.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert_eq!(parse(&all).status, 413);
    assert_eq!(a.hits(), 1);
    h.proxy.shutdown();
}

/// A member that reads a request head and closes the connection without a
/// byte of answer, counting the heads it got.
fn closing_member() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let h = heads.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                if s.read_exact(&mut byte).is_err() {
                    break;
                }
                buf.push(byte[0]);
            }
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, heads)
}

fn only_idempotent_requests_are_retried_after_a_reset(driver: DriverChoice) {
    let (closer, heads) = closing_member();
    let good = Backend::start("good");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(closer, 1), (good.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    // Smooth round robin with equal weights takes the first member first.
    for method in ["GET", "HEAD", "DELETE"] {
        let before = heads.load(Ordering::SeqCst);
        let r = send_raw(h.addr, &format!("{method} /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert_eq!(r.status, 200, "{method}");
        // Whichever member came first, the request got its answer; when
        // it was the closing one, it was asked once only.
        assert!(heads.load(Ordering::SeqCst) - before <= 1);
    }
    assert!(heads.load(Ordering::SeqCst) >= 1, "the closing member was never tried");
    let served = good.hits();
    // Not idempotent, or with a body: never sent twice, 502.
    let mut posts = 0;
    let mut refused = 0;
    for _ in 0..4 {
        let before = heads.load(Ordering::SeqCst);
        let r = send_raw(h.addr, "POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc");
        posts += 1;
        if heads.load(Ordering::SeqCst) > before {
            assert_eq!(r.status, 502);
            refused += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!(refused >= 1 && refused < posts + 1);
    assert_eq!(good.hits(), served + (posts - refused), "a refused POST reached the other member");
    h.proxy.shutdown();
}

/// Parses wrk's summary: (requests, non-2xx/3xx responses, socket errors).
fn wrk_summary(out: &str) -> (u64, u64, u64) {
    let requests = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{out}"));
    let non_2xx = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let socket_errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last())
                .map(|n| n.parse::<u64>().unwrap())
                .sum()
        });
    (requests, non_2xx, socket_errors)
}

fn backend_killed_under_wrk_loses_no_idempotent_request(driver: DriverChoice) {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("SKIPPED: wrk is not installed");
        return;
    }
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let h = Harness::start_with(
        driver,
        2,
        vec![pool("p", &[(a.addr, 1), (b.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| c.response_timeout = Duration::from_secs(5),
    );
    // Bounded: 3 s, 16 connections; each request waits 2 ms at the
    // member so that some are in flight when `a` dies.
    let wrk = std::process::Command::new("wrk")
        .args(["-t2", "-c16", "-d3s", "--timeout", "2s"])
        .arg(format!("http://{}/sleep/2", h.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("load on a", || a.hits() > 200);
    a.kill();
    let killed_at = (a.hits(), b.hits());
    let out = wrk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let (requests, non_2xx, socket_errors) = wrk_summary(&text);
    assert_eq!((non_2xx, socket_errors), (0, 0), "{text}");
    assert!(requests > killed_at.0 as u64, "{text}");
    // `b` carried the load after the kill.
    assert!(b.hits() > killed_at.1 + 100, "b={} {text}", b.hits());
    h.proxy.shutdown();
}

fn timeouts_under_load_never_touch_reused_descriptors(driver: DriverChoice) {
    // Connections cut by timeouts (their receive cancelled) while new
    // connections keep arriving: descriptor numbers are reused at once, so
    // a late completion on a closed descriptor would land on a new
    // connection and garble or cut its exchange.
    let a = Backend::start("a");
    let h = Harness::start_with(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
        |c| {
            c.header_read_timeout = Duration::from_millis(100);
            c.keepalive_timeout = Duration::from_millis(100);
        },
    );
    let addr = h.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 2000 {
                    let r = get(addr, "x", "/");
                    assert_eq!((r.status, r.body.as_str()), (200, "a"));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut slow = 0;
    while Instant::now() < deadline && slow < 200 {
        let batch: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect();
        for mut s in batch {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            // Exactly the 408, never another connection's answer.
            assert_eq!(parse(&buf).status, 408);
            assert!(buf.ends_with(b"408 Request Timeout\n"), "{}", String::from_utf8_lossy(&buf));
            slow += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(served > 0 && slow > 0);
    assert_eq!(h.proxy.stats().violations(Violation::RequestTimeout), slow as u64);
    h.proxy.shutdown();
}

fn broken_request_body_is_the_clients_fault(driver: DriverChoice) {
    let a = Backend::start("a");
    let h = Harness::start(
        driver,
        1,
        vec![pool("p", &[(a.addr, 1)])],
        vec![route("*", "/", 0)],
    );
    let r = refused(h.addr, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(MemberStats::get(&h.member(0, 0).stats.failures), 0);
    assert_eq!(h.proxy.stats().violations(Violation::BadRequest), 1);
    h.proxy.shutdown();
}
