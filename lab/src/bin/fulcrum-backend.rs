//! `fulcrum-backend`: the lab's real server.
//!
//! A small HTTP/1.1 server (keep-alive, fast enough to be driven by wrk)
//! that says who it is, so tests and the demo can see which backend served
//! each request through the load balancer:
//!
//! - every path answers `200` with body `"<name>\n"` and the header
//!   `X-Served-By: <name>`; `/slow/<ms>` does so after `<ms>` milliseconds
//!   (at most 10 s), to hold a request in flight;
//! - `/health` answers `200 ok`, or `503 unhealthy` while the health file
//!   exists. Creating or removing that file is how the lab (a different
//!   process, possibly in another network namespace) flips the backend's
//!   health without talking to it.
//!
//! With `--udp-port PORT` it also answers UDP on that port: every
//! datagram gets one back carrying `"<name>\n"` followed by the datagram's
//! payload. As named does, it binds one socket per address the host has at
//! start (IPv6 link-local ones excepted) rather than a wildcard, so each
//! answer leaves from the address its datagram was sent to: from the VIP
//! held on `lo`, as L2 DSR needs.
//!
//! It exits with status 0 on SIGTERM or SIGINT.
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "fulcrum-backend", about = "Lab HTTP backend that answers with its own name")]
struct Args {
    /// The name this backend answers with (body and `X-Served-By`).
    #[arg(long)]
    name: String,
    /// Address to listen on, e.g. `0.0.0.0:80` or `[::]:80`; repeatable.
    #[arg(long = "listen", required = true)]
    listen: Vec<SocketAddr>,
    /// While this file exists, `/health` answers 503.
    #[arg(long)]
    health_file: PathBuf,
    /// Also answer UDP on this port, on every address the host has at
    /// start: each datagram with `"<name>\n"` and its own payload.
    #[arg(long)]
    udp_port: Option<u16>,
}

/// What every connection's service needs; shared read-only.
struct Identity {
    /// Body for ordinary paths: the name plus a newline.
    body: Bytes,
    /// The `X-Served-By` value, validated once at start.
    served_by: HeaderValue,
    health_file: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let identity = Arc::new(Identity {
        body: Bytes::from(format!("{}\n", args.name)),
        served_by: HeaderValue::from_str(&args.name).context("--name must be a valid header value")?,
        health_file: args.health_file,
    });
    // Bound before the TCP listeners: whoever sees the HTTP port accept
    // connections (the lab waits for that) may send datagrams too.
    if let Some(port) = args.udp_port {
        if args.name.len() > 1024 {
            bail!("--name is too long to answer datagrams with");
        }
        for socket in bind_udp(port)? {
            let addr = socket.local_addr()?;
            let name = args.name.clone();
            std::thread::Builder::new()
                .name(format!("udp {addr}"))
                .spawn(move || udp_echo(&socket, &name))
                .context("starting a UDP thread")?;
        }
    }
    // One thread: three backends share two cores with the balancer and the
    // load generator, and a single thread easily saturates what wrk can send.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(serve(args.listen, identity))
}

async fn serve(addrs: Vec<SocketAddr>, identity: Arc<Identity>) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut accept_loops = tokio::task::JoinSet::new();
    for addr in addrs {
        let listener = TcpListener::from_std(bind_listener(addr)?)?;
        let identity = identity.clone();
        accept_loops.spawn(accept_loop(listener, identity));
    }
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        Some(res) = accept_loops.join_next() => {
            res.context("accept loop panicked")?.context("accept loop failed")
        }
    }
}

/// Binds a listening socket. IPv6 sockets are made v6-only so that
/// `0.0.0.0:80` and `[::]:80` can both be bound, as the lab does.
fn bind_listener(addr: SocketAddr) -> Result<StdTcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd: OwnedFd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))
        .with_context(|| format!("bind {addr}"))?;
    listen(&fd, Backlog::new(1024)?).with_context(|| format!("listen {addr}"))?;
    Ok(StdTcpListener::from(fd))
}

async fn accept_loop(listener: TcpListener, identity: Arc<Identity>) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of file descriptors or a connection reset before accept:
            // transient, keep serving the others.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, identity.clone()));
            // Connection errors (client resets, wrk stopping mid-request)
            // are normal under load and say nothing about the backend.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    identity: Arc<Identity>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(ms) = req.uri().path().strip_prefix("/slow/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(10_000))).await;
    }
    let (status, body) = if req.uri().path() == "/health" {
        if identity.health_file.exists() {
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"unhealthy\n"))
        } else {
            (StatusCode::OK, Bytes::from_static(b"ok\n"))
        }
    } else {
        (StatusCode::OK, identity.body.clone())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert("x-served-by", identity.served_by.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

/// One UDP socket on `port` per address of the host's interfaces, IPv6
/// link-local addresses excepted (they would need a scope).
fn bind_udp(port: u16) -> Result<Vec<UdpSocket>> {
    let mut addrs: Vec<IpAddr> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            if v6.ip().segments()[0] & 0xffc0 == 0xfe80 {
                continue;
            }
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        bail!("--udp-port {port}: the host has no address to bind");
    }
    addrs
        .into_iter()
        .map(|ip| {
            let addr = SocketAddr::new(ip, port);
            UdpSocket::bind(addr).with_context(|| format!("bind udp {addr}"))
        })
        .collect()
}

/// Answers every datagram on `socket` with `"<name>\n"` and its payload.
/// Runs until the process exits; errors are logged and the loop goes on
/// (a client gone away is not the server's problem).
fn udp_echo(socket: &UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65536];
    let prefix = name.len() + 1;
    buf[..name.len()].copy_from_slice(name.as_bytes());
    buf[name.len()] = b'\n';
    loop {
        match socket.recv_from(&mut buf[prefix..]) {
            Ok((len, peer)) => {
                if let Err(e) = socket.send_to(&buf[..prefix + len], peer) {
                    eprintln!("udp: send to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("udp: recv: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
