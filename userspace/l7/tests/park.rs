//! Parking idle keep-alive client connections (`ProxyConfig::park_after`):
//! after the park delay the proxy frees hyper's connection and every
//! buffer, waits for readability, and serves the next request with a new
//! hyper connection over the same socket. These tests check, on real
//! loopback sockets and on both drivers, that parking is observable
//! (`ProxyStats::parked`) and changes nothing a client can see: no byte
//! lost, pipelining, half-close, timeouts, shutdown, upgrades.
//!
//! Where the kernel refuses io_uring, the io_uring variants say so on
//! stderr and pass, unless `FULCRUM_REQUIRE_IO_URING=1`.

#[macro_use]
mod drivers;
use drivers::tokio_rt;

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fulcrum_l7::*;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};

/// A hyper backend answering `path=<path>` (so a test sees which request
/// a response belongs to); `/ws` with Upgrade becomes an echo tunnel that
/// upper-cases what it gets.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    fn start() -> Backend {
        let listener = tokio_rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio_rt().spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(h.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, hits }
    }
}

async fn answer(
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    if req.uri().path() == "/ws" && req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(up) = on.await else { return };
            let mut io = hyper_util::rt::TokioIo::new(up);
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                buf[..n].make_ascii_uppercase();
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let body = format!("path={}", req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// One response head and its Content-Length body, read byte by byte so
/// nothing of the next response is consumed. Returns (status, body).
fn read_one(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("reading a response head after {head:?}: {e}"));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// Waits for `cond` up to 5 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// A proxy with one worker on `driver` in front of `backend`, with the
/// configuration adjusted by `tweak`.
fn proxy(driver: DriverChoice, backend: &Backend, tweak: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let snap = shared(Snapshot::default());
    let mut cfg = ProxyConfig::new(vec!["127.0.0.1:0".parse().unwrap()]);
    cfg.driver = driver;
    cfg.park_after = Duration::from_millis(50);
    tweak(&mut cfg);
    let proxy = Proxy::start(cfg, snap.clone()).expect("proxy starts");
    let s = Snapshot {
        listeners: vec![ListenerRoutes {
            address: proxy.local_addrs()[0],
            routes: vec![Route {
                host: HostMatch::Any,
                path_prefix: "/".into(),
                pool: 0,
                preserve_host: false,
                proxy_pass_reverse: false,
            }],
        }],
        pools: vec![Pool::new(
            "p",
            LbMethod::ByRequests,
            vec![Member::new(backend.addr, 1)],
        )],
    };
    s.validate().unwrap();
    snap.store(Arc::new(s));
    proxy
}

fn connect(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect(p.local_addrs()[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn parked(p: &Proxy) -> u64 {
    p.stats().parked.load(Ordering::Relaxed)
}


both_drivers!(
    idle_connection_is_parked_and_served_again,
    busy_connection_is_not_parked,
    bytes_arriving_while_parking_are_not_lost,
    pipelining_across_a_park,
    half_close_while_parked,
    idle_timeout_closes_a_parked_connection,
    head_timeout_after_a_park_gets_408,
    shutdown_closes_parked_connections_at_once,
    upgrade_after_a_park,
    many_connections_park_wake_and_park_again,
    back_to_back_requests_then_idle_parks,
    hot_connection_going_idle_is_parked,
    bytes_arriving_while_a_hot_receive_is_cancelled_are_not_lost,
);

fn idle_connection_is_parked_and_served_again(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    let mut s = connect(&p);
    for i in 1..=3u64 {
        s.write_all(get(&format!("/r{i}")).as_bytes()).unwrap();
        assert_eq!(read_one(&mut s), (200, format!("path=/r{i}")));
        wait_for("the connection to park", || parked(&p) == i);
    }
    // One client connection throughout, every request reached the member.
    assert_eq!(p.stats().connections.load(Ordering::Relaxed), 1);
    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
    p.shutdown();
}

fn busy_connection_is_not_parked(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |c| c.park_after = Duration::from_millis(300));
    let mut s = connect(&p);
    // Requests 50 ms apart for about a second: never idle 300 ms.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(1) {
        s.write_all(get("/busy").as_bytes()).unwrap();
        assert_eq!(read_one(&mut s).0, 200);
        n += 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(n >= 5);
    assert_eq!(parked(&p), 0);
    // Then idle: parked.
    wait_for("the connection to park", || parked(&p) == 1);
    p.shutdown();
}

fn bytes_arriving_while_parking_are_not_lost(driver: DriverChoice) {
    assert!(sweep_across_the_park(driver, 120, Duration::from_millis(15), false) > 0, "the sweep never reached the park delay");
}

/// Sends a request after each of `steps` delays rising by 0.1 ms from
/// `from`, across the moment the proxy parks (`park_after` 20 ms, plus
/// the timer's and the scheduler's slack), so some land while it takes
/// the connection apart (and, with `hot`, while it cancels the receive
/// of the connection made hot before each delay). Half of the requests
/// are split in two writes: a head whose start may be taken by the
/// cancelled receive and whose end arrives after the park. Each must be
/// answered (a lost byte would leave the client waiting, read timeout 5
/// s), over the one connection. Returns how many times it was parked.
fn sweep_across_the_park(driver: DriverChoice, steps: u32, from: Duration, hot: bool) -> u64 {
    let b = Backend::start();
    let p = proxy(driver, &b, |c| c.park_after = Duration::from_millis(20));
    let mut s = connect(&p);
    s.write_all(get("/first").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).0, 200);
    let mut answered = 1;
    for step in 0..steps {
        if hot {
            heat(&mut s, &format!("s{step}"));
            answered += 8;
        }
        thread::sleep(from + Duration::from_micros(100 * u64::from(step)));
        let path = format!("/n{step}");
        if step % 2 == 0 {
            s.write_all(get(&path).as_bytes()).unwrap();
        } else {
            let req = get(&path);
            let (a, z) = req.as_bytes().split_at(7);
            s.write_all(a).unwrap();
            thread::sleep(Duration::from_millis(1));
            s.write_all(z).unwrap();
        }
        assert_eq!(read_one(&mut s), (200, format!("path={path}")), "step {step}");
        answered += 1;
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), answered);
    assert_eq!(p.stats().connections.load(Ordering::Relaxed), 1);
    let parked = parked(&p);
    p.shutdown();
    parked
}

fn pipelining_across_a_park(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    let mut s = connect(&p);
    s.write_all(get("/one").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).1, "path=/one");
    wait_for("the first park", || parked(&p) == 1);
    // Two pipelined requests and the start of a third in one write.
    let third = get("/four");
    let (start, rest) = third.as_bytes().split_at(10);
    let mut burst = format!("{}{}", get("/two"), get("/three")).into_bytes();
    burst.extend_from_slice(start);
    s.write_all(&burst).unwrap();
    assert_eq!(read_one(&mut s).1, "path=/two");
    assert_eq!(read_one(&mut s).1, "path=/three");
    // The partial head is what hyper had read ahead: parked with it.
    wait_for("the park with a partial head", || parked(&p) == 2);
    s.write_all(rest).unwrap();
    assert_eq!(read_one(&mut s).1, "path=/four");
    assert_eq!(b.hits.load(Ordering::SeqCst), 4);
    p.shutdown();
}

fn half_close_while_parked(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    // A request and the client's FIN after a park: answered, then closed.
    let mut s = connect(&p);
    s.write_all(get("/a").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).1, "path=/a");
    wait_for("the park", || parked(&p) == 1);
    s.write_all(get("/b").as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_one(&mut s).1, "path=/b");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // A bare FIN on a parked connection: the proxy closes it too.
    let mut s = connect(&p);
    s.write_all(get("/c").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).1, "path=/c");
    wait_for("the park", || parked(&p) == 2);
    s.shutdown(Shutdown::Write).unwrap();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
    p.shutdown();
}

fn idle_timeout_closes_a_parked_connection(driver: DriverChoice) {
    let b = Backend::start();
    let keepalive = Duration::from_millis(600);
    let p = proxy(driver, &b, |c| {
        c.keepalive_timeout = keepalive;
        // The watchdog's first sleep is the shorter of the two limits.
        c.header_read_timeout = Duration::from_millis(300);
    });
    let mut s = connect(&p);
    s.write_all(get("/a").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).0, 200);
    let idle_from = Instant::now();
    wait_for("the park", || parked(&p) == 1);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // Counted from the end of the response, parked or not.
    let idle = idle_from.elapsed();
    assert!(idle >= keepalive - Duration::from_millis(50), "closed after {idle:?}");
    assert!(idle < Duration::from_secs(3), "closed after {idle:?}");
    assert_eq!(p.stats().idle_closed.load(Ordering::Relaxed), 1);
    assert_eq!(p.stats().violations(Violation::RequestTimeout), 0);
    p.shutdown();
}

fn head_timeout_after_a_park_gets_408(driver: DriverChoice) {
    let b = Backend::start();
    let timeout = Duration::from_millis(300);
    let p = proxy(driver, &b, |c| c.header_read_timeout = timeout);
    let mut s = connect(&p);
    s.write_all(get("/a").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).0, 200);
    wait_for("the park", || parked(&p) == 1);
    // Half a head after the park, then silence: 408 as on a fresh
    // connection.
    let t = Instant::now();
    s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (status, _) = read_one(&mut s);
    assert_eq!(status, 408);
    assert!(t.elapsed() >= timeout - Duration::from_millis(20));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(p.stats().violations(Violation::RequestTimeout), 1);
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
    p.shutdown();
}

fn shutdown_closes_parked_connections_at_once(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |c| c.drain_timeout = Duration::from_secs(10));
    let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(&p)).collect();
    for s in &mut conns {
        s.write_all(get("/a").as_bytes()).unwrap();
        assert_eq!(read_one(s).0, 200);
    }
    wait_for("every connection to park", || parked(&p) == 5);
    let t = Instant::now();
    let stopper = thread::spawn(move || p.shutdown());
    for s in &mut conns {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
    stopper.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "shutdown took {:?}", t.elapsed());
}

fn upgrade_after_a_park(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    let mut s = connect(&p);
    s.write_all(get("/a").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s).0, 200);
    wait_for("the park", || parked(&p) == 1);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_one(&mut s).0, 101);
    // Past the park delay: a tunnel is not an idle HTTP connection.
    thread::sleep(Duration::from_millis(150));
    s.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"HELLO");
    assert_eq!(parked(&p), 1);
    p.shutdown();
}

/// More parked connections than the lot takes from its epoll set in one
/// call, all woken at once, each answered on its own connection; then all
/// parked again in the slots freed (their generations bumped); then
/// closed by the shutdown.
fn many_connections_park_wake_and_park_again(driver: DriverChoice) {
    const N: usize = 150;
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    let mut conns: Vec<TcpStream> = (0..N).map(|_| connect(&p)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(get(&format!("/a{i}")).as_bytes()).unwrap();
        assert_eq!(read_one(s), (200, format!("path=/a{i}")));
    }
    wait_for("every connection parked", || parked(&p) == N as u64);
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(get(&format!("/b{i}")).as_bytes()).unwrap();
    }
    for (i, s) in conns.iter_mut().enumerate() {
        assert_eq!(read_one(s), (200, format!("path=/b{i}")));
    }
    wait_for("every connection parked again", || parked(&p) == 2 * N as u64);
    assert_eq!(b.hits.load(Ordering::SeqCst), 2 * N);
    assert_eq!(p.stats().connections.load(Ordering::Relaxed), N as u64);
    p.shutdown();
    for s in &mut conns {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
}

/// Requests back to back (a hot connection: it may wait with a receive,
/// which is not parked), then idle, a request, idle again: parked by then
/// at the latest, and served again.
fn back_to_back_requests_then_idle_parks(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    let mut s = connect(&p);
    for i in 0..50 {
        s.write_all(get(&format!("/hot{i}")).as_bytes()).unwrap();
        assert_eq!(read_one(&mut s), (200, format!("path=/hot{i}")));
    }
    // Longer than the park delay (50 ms): the next request ends a long
    // wait, so the connection is cold, and parks when idle again.
    thread::sleep(Duration::from_millis(200));
    s.write_all(get("/slow").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), (200, "path=/slow".to_string()));
    wait_for("the park", || parked(&p) >= 1);
    s.write_all(get("/again").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), (200, "path=/again".to_string()));
    assert_eq!(b.hits.load(Ordering::SeqCst), 52);
    p.shutdown();
}

/// Makes the connection hot: requests back to back, each sent as soon as
/// the previous answer is read (see `park::ParkIo`).
fn heat(s: &mut TcpStream, tag: &str) {
    for i in 0..8 {
        let path = format!("/{tag}-hot{i}");
        s.write_all(get(&path).as_bytes()).unwrap();
        assert_eq!(read_one(s), (200, format!("path={path}")));
    }
}

/// A hot connection that then goes idle waits with a receive in flight;
/// past the park delay the proxy takes the receive back (on io_uring) and
/// parks the connection, which then serves its next request as before.
/// On the polling driver the receive cannot be taken back: the connection
/// is not parked, and still serves.
fn hot_connection_going_idle_is_parked(driver: DriverChoice) {
    let b = Backend::start();
    let p = proxy(driver, &b, |_| {});
    let mut s = connect(&p);
    heat(&mut s, "a");
    if driver == DriverChoice::Polling {
        thread::sleep(Duration::from_millis(300));
        assert_eq!(parked(&p), 0);
    } else {
        wait_for("the hot connection to park", || parked(&p) == 1);
    }
    s.write_all(get("/after").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), (200, "path=/after".to_string()));
    assert_eq!(b.hits.load(Ordering::SeqCst), 9);
    assert_eq!(p.stats().connections.load(Ordering::Relaxed), 1);
    p.shutdown();
}

/// As `bytes_arriving_while_parking_are_not_lost`, with the connection
/// made hot before each wait: a receive that completed before its cancel
/// must give its bytes to hyper, a cancelled one must lose none.
fn bytes_arriving_while_a_hot_receive_is_cancelled_are_not_lost(driver: DriverChoice) {
    let parked = sweep_across_the_park(driver, 80, Duration::from_millis(18), true);
    // On the polling driver a hot connection's receive is not taken back.
    if driver != DriverChoice::Polling {
        assert!(parked > 0, "the sweep never reached the park delay");
    }
}
