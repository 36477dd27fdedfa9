//! The server over real loopback sockets, with a fake daemon loop and
//! limits short enough for tests. Clients speak raw HTTP/1.1 where what is
//! on the wire is the point (HEAD bodies, half heads, closes).
use std::{collections::BTreeMap, future::Future, net::SocketAddr, time::Duration};

use fulcrum_api::{ControlStats, StatsReport};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

use crate::{serve_with_counters, AdminCounters, AdminCountersSnapshot, AdminRequest, Limits};

/// Upper bound on anything that should happen "soon" in these tests; far
/// above the limits used, so a slow CI machine does not fail them.
const PATIENCE: Duration = Duration::from_secs(5);

fn report() -> StatsReport {
    StatsReport {
        vips: Vec::new(),
        pools: Vec::new(),
        reasons: BTreeMap::from([("tx".to_owned(), 42)]),
        control: ControlStats { generation: 7, applied_generation: 7, applies: 3, ..Default::default() },
        listeners: Vec::new(),
        vrrp: Vec::new(),
        conn_table: Default::default(),
        l7: Default::default(),
    }
}

fn limits() -> Limits {
    Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        reply_timeout: Duration::from_secs(5),
        max_connection_age: Duration::from_secs(60),
    }
}

enum Daemon {
    /// Answers every request with [`report`].
    Answers,
    /// Answers every request with this.
    AnswersWith(Box<StatsReport>),
    /// Has exited: the channel's receiver is dropped.
    Gone,
    /// Takes requests and never answers them.
    Wedged,
}

struct Server {
    addr: SocketAddr,
    counters: AdminCounters,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Server {
    async fn start(limits: Limits, daemon: Daemon) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let daemon = match daemon {
            Daemon::Answers | Daemon::AnswersWith(_) => tokio::spawn(async move {
                let answer = match daemon {
                    Daemon::AnswersWith(answer) => *answer,
                    _ => report(),
                };
                while let Some(AdminRequest::Stats(reply)) = rx.recv().await {
                    let _ = reply.send(answer.clone());
                }
            }),
            Daemon::Gone => {
                drop(rx);
                tokio::spawn(async {})
            }
            Daemon::Wedged => tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some(request) = rx.recv().await {
                    held.push(request);
                }
            }),
        };
        let counters = AdminCounters::new();
        let server = tokio::spawn(serve_with_counters(listener, limits, counters.clone(), tx));
        Self { addr, counters, tasks: vec![daemon, server] }
    }

    fn counters(&self) -> AdminCountersSnapshot {
        self.counters.snapshot()
    }

    /// Waits until the counters satisfy `ok`, failing after [`PATIENCE`].
    async fn counters_until(&self, what: &str, ok: impl Fn(&AdminCountersSnapshot) -> bool) -> AdminCountersSnapshot {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.counters();
            if ok(&now) {
                return now;
            }
            assert!(Instant::now() < deadline, "counters never got to {what}: {now:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connect(&self) -> Client {
        Client { stream: TcpStream::connect(self.addr).await.unwrap(), buf: Vec::new() }
    }
}

struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn content_length(&self) -> usize {
        self.header("content-length").expect("a content-length").parse().unwrap()
    }
}

/// How a connection the test expected to be closed ended.
#[derive(Debug)]
enum Closed {
    Eof,
    Reset,
    /// It sent this first (then closed).
    Sent(String),
}

/// A raw HTTP/1.1 client that keeps what it read past one response.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, work).await.unwrap_or_else(|_| panic!("{what}: no result within {PATIENCE:?}"))
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn request(&mut self, method: &str, path: &str) -> Response {
        self.send(format!("{method} {path} HTTP/1.1\r\nhost: admin\r\n\r\n").as_bytes()).await;
        self.response(method == "HEAD").await
    }

    /// Reads one response; a HEAD response has no body whatever its
    /// content-length says.
    async fn response(&mut self, to_head: bool) -> Response {
        within("reading a response", async {
            let head_len = loop {
                if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                self.fill().await;
            };
            let head = String::from_utf8(self.buf[..head_len].to_vec()).unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let mut response = Response { status, head, body: Vec::new() };
            let body_len = if to_head { 0 } else { response.content_length() };
            while self.buf.len() < head_len + body_len {
                self.fill().await;
            }
            response.body = self.buf[head_len..head_len + body_len].to_vec();
            self.buf.drain(..head_len + body_len);
            response
        })
        .await
    }

    async fn fill(&mut self) {
        let mut chunk = [0; 4096];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed; unparsed: {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Waits for the server to close the connection, failing after [`PATIENCE`].
    async fn closed(&mut self) -> Closed {
        within("waiting for the server to close", async {
            let mut got = std::mem::take(&mut self.buf);
            let mut chunk = [0; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) if got.is_empty() => return Closed::Eof,
                    Ok(0) => return Closed::Sent(String::from_utf8_lossy(&got).into_owned()),
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Closed::Reset,
                    Err(err) => panic!("reading: {err}"),
                }
            }
        })
        .await
    }
}

#[tokio::test]
async fn get_stats_answers_the_daemons_report_as_json() {
    let server = Server::start(limits(), Daemon::Answers).await;
    assert_eq!(fulcrum_api::fetch_stats(server.addr).await.unwrap(), report());
    let resp = server.connect().await.request("GET", "/stats").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<StatsReport>(&resp.body).unwrap(), report());
}

#[tokio::test]
async fn head_stats_has_the_get_headers_and_no_body() {
    let server = Server::start(limits(), Daemon::Answers).await;
    let mut client = server.connect().await;
    let head = client.request("HEAD", "/stats").await;
    // Any body bytes sent for HEAD would precede this response and break it.
    let get = client.request("GET", "/stats").await;
    assert_eq!((head.status, get.status), (200, 200), "{}\n{}", head.head, get.head);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.content_length(), get.body.len());
    assert!(get.body.len() > 2);
    assert!(client.buf.is_empty(), "bytes after the GET answer: {:?}", client.buf);
}

#[tokio::test]
async fn other_methods_on_stats_get_405_with_allow() {
    let server = Server::start(limits(), Daemon::Answers).await;
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let mut client = server.connect().await;
        client.send(format!("{method} /stats HTTP/1.1\r\nhost: admin\r\ncontent-length: 2\r\n\r\n{{}}").as_bytes()).await;
        let resp = client.response(false).await;
        assert_eq!(resp.status, 405, "{method}: {}", resp.head);
        assert_eq!(resp.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

#[tokio::test]
async fn other_paths_get_404() {
    let server = Server::start(limits(), Daemon::Answers).await;
    let mut client = server.connect().await;
    for (method, path) in [("GET", "/nope"), ("GET", "/stats/x"), ("GET", "/"), ("HEAD", "/nope"), ("POST", "/nope")] {
        let resp = client.request(method, path).await;
        assert_eq!(resp.status, 404, "{method} {path}: {}", resp.head);
    }
}

#[tokio::test]
async fn stats_is_503_when_the_daemon_loop_is_gone() {
    let server = Server::start(limits(), Daemon::Gone).await;
    assert_eq!(server.connect().await.request("GET", "/stats").await.status, 503);
}

#[tokio::test]
async fn stats_is_503_after_reply_timeout_when_the_daemon_loop_is_wedged() {
    let reply_timeout = Duration::from_millis(300);
    let server = Server::start(Limits { reply_timeout, ..limits() }, Daemon::Wedged).await;
    let mut client = server.connect().await;
    let start = Instant::now();
    let resp = client.request("GET", "/stats").await;
    assert_eq!(resp.status, 503, "{}", resp.head);
    assert!(start.elapsed() >= reply_timeout, "{:?}", start.elapsed());
    assert_eq!(server.counters().reply_timeouts, 1);
    // The connection stays usable.
    assert_eq!(client.request("GET", "/nope").await.status, 404);
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(200);
    let server = Server::start(Limits { header_read_timeout, ..limits() }, Daemon::Answers).await;
    let start = Instant::now();
    let mut client = server.connect().await;
    client.send(b"GET /stats HTTP/1.1\r\nhost: ad").await;
    let closed = client.closed().await;
    let elapsed = start.elapsed();
    assert!(matches!(closed, Closed::Eof | Closed::Reset), "{closed:?}");
    assert!(elapsed >= header_read_timeout, "closed early: {elapsed:?}");
    // Well below idle_timeout (5 s): it was the header timeout that fired.
    assert!(elapsed < Duration::from_secs(2), "closed late: {elapsed:?}");
    let c = server.counters_until("one header timeout", |c| c.header_timeouts == 1).await;
    assert_eq!(c.idle_timeouts, 0);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(200);
    let server = Server::start(Limits { header_read_timeout, ..limits() }, Daemon::Answers).await;
    let start = Instant::now();
    let mut client = server.connect().await;
    client.closed().await;
    let elapsed = start.elapsed();
    assert!(elapsed >= header_read_timeout && elapsed < Duration::from_secs(2), "{elapsed:?}");
    server.counters_until("one header timeout", |c| c.header_timeouts == 1).await;
}

#[tokio::test]
async fn half_a_second_request_head_is_closed_after_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(300);
    let server = Server::start(Limits { header_read_timeout, ..limits() }, Daemon::Answers).await;
    let mut client = server.connect().await;
    assert_eq!(client.request("GET", "/stats").await.status, 200);
    client.send(b"GET /stats HT").await;
    let start = Instant::now();
    client.closed().await;
    let elapsed = start.elapsed();
    assert!(elapsed >= header_read_timeout, "closed early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "closed late (idle_timeout is 5 s): {elapsed:?}");
    let c = server.counters_until("one header timeout", |c| c.header_timeouts == 1).await;
    assert_eq!(c.idle_timeouts, 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let header_read_timeout = Duration::from_millis(150);
    let idle_timeout = Duration::from_millis(700);
    let server = Server::start(Limits { header_read_timeout, idle_timeout, ..limits() }, Daemon::Answers).await;
    let mut client = server.connect().await;
    assert_eq!(client.request("GET", "/stats").await.status, 200);
    // Idle for more than the header timeout: hyper's own timer would have
    // closed the connection by now (see `connection`); ours must not.
    tokio::time::sleep(header_read_timeout * 2).await;
    assert_eq!(client.request("GET", "/stats").await.status, 200);
    let answered = Instant::now();
    client.closed().await;
    let elapsed = answered.elapsed();
    // The server's clock starts at its write, a little before our read.
    assert!(elapsed >= idle_timeout - Duration::from_millis(100), "closed early: {elapsed:?}");
    assert!(elapsed < idle_timeout + Duration::from_secs(2), "closed late: {elapsed:?}");
    let c = server.counters_until("one idle timeout", |c| c.idle_timeouts == 1).await;
    assert_eq!(c.header_timeouts, 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_closed_after_idle_timeout() {
    // Far more than loopback's socket buffers take, so the server's write stalls.
    let mut big = report();
    big.reasons = (0..400).map(|i| (format!("{i:05}{}", "x".repeat(64 * 1024)), i)).collect();
    let idle_timeout = Duration::from_millis(500);
    let server = Server::start(Limits { idle_timeout, ..limits() }, Daemon::AnswersWith(Box::new(big))).await;
    let mut client = server.connect().await;
    let start = Instant::now();
    client.send(b"GET /stats HTTP/1.1\r\nhost: admin\r\n\r\n").await;
    let c = server.counters_until("one idle timeout", |c| c.idle_timeouts == 1).await;
    assert!(start.elapsed() >= idle_timeout, "{:?}", start.elapsed());
    assert_eq!((c.header_timeouts, c.open), (0, 0), "{c:?}");
}

#[tokio::test]
async fn connections_over_max_connections_are_refused_at_once_and_counted() {
    let idle_timeout = Duration::from_millis(800);
    let limits = Limits { max_connections: 2, idle_timeout, ..limits() };
    let server = Server::start(limits, Daemon::Answers).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = server.connect().await;
        assert_eq!(client.request("GET", "/stats").await.status, 200);
        held.push(client);
    }

    let start = Instant::now();
    let mut extra = server.connect().await;
    // The request may be refused before or after it is written.
    let _ = extra.stream.write_all(b"GET /stats HTTP/1.1\r\nhost: admin\r\n\r\n").await;
    let closed = extra.closed().await;
    let elapsed = start.elapsed();
    match &closed {
        Closed::Eof | Closed::Reset => {}
        Closed::Sent(text) => assert!(text.starts_with("HTTP/1.1 503 "), "{text}"),
    }
    // Not queued until a slot frees up (the held ones idle for 800 ms).
    assert!(elapsed < Duration::from_millis(400), "refused late: {elapsed:?}");
    let c = server.counters_until("one refusal", |c| c.refused == 1).await;
    assert_eq!((c.accepted, c.open), (2, 2));

    for client in &mut held {
        client.closed().await;
    }
    server.counters_until("no connection open", |c| c.open == 0).await;
    let mut client = server.connect().await;
    assert_eq!(client.request("GET", "/stats").await.status, 200);
    let c = server.counters();
    assert_eq!((c.accepted, c.refused, c.idle_timeouts, c.header_timeouts), (3, 1, 2, 0), "{c:?}");
}

#[tokio::test]
async fn a_connection_is_shut_down_after_max_connection_age() {
    let max_connection_age = Duration::from_millis(500);
    let server = Server::start(Limits { max_connection_age, ..limits() }, Daemon::Answers).await;
    let start = Instant::now();
    let mut client = server.connect().await;
    assert_eq!(client.request("GET", "/stats").await.status, 200);
    tokio::time::sleep(max_connection_age / 3).await;
    assert_eq!(client.request("GET", "/stats").await.status, 200);
    client.closed().await;
    let elapsed = start.elapsed();
    assert!(elapsed >= max_connection_age, "closed early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "closed late (idle and header timeouts are 5 s): {elapsed:?}");
    let c = server.counters_until("one age limit", |c| c.age_limited == 1).await;
    assert_eq!((c.idle_timeouts, c.header_timeouts), (0, 0));
}

#[tokio::test]
async fn an_oversized_request_head_is_rejected_without_waiting_for_the_timeout() {
    let server = Server::start(limits(), Daemon::Answers).await;
    let mut client = server.connect().await;
    let start = Instant::now();
    let mut head = b"GET /stats HTTP/1.1\r\nhost: admin\r\nx-filler: ".to_vec();
    head.resize(64 * 1024, b'a');
    // The server may close before it has read it all.
    let _ = client.stream.write_all(&head).await;
    match client.closed().await {
        Closed::Eof | Closed::Reset => {}
        Closed::Sent(text) => assert!(text.starts_with("HTTP/1.1 431 "), "{text}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[test]
fn limits_default_to_the_documented_values() {
    let l = Limits::default();
    assert_eq!(l.max_connections, 64);
    assert_eq!(l.header_read_timeout, Duration::from_secs(5));
    assert_eq!(l.idle_timeout, Duration::from_secs(30));
    assert_eq!(l.reply_timeout, Duration::from_secs(5));
    assert_eq!(l.max_connection_age, Duration::from_secs(300));
}
