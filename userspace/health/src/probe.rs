//! One health check of one backend: a TCP connect, or an HTTP/1.1 request
//! whose response status must match.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use humantime_serde::re::humantime;
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use fulcrum_config::CheckKind;

/// The User-Agent of HTTP checks, so backends can tell them from clients
/// in their logs.
pub const USER_AGENT_VALUE: &str = concat!("fulcrum-health/", env!("CARGO_PKG_VERSION"));

/// Why a check failed. `Display` is short, for operators and logs:
/// `connect: Connection refused`, `timed out after 500ms`,
/// `HTTP 503, expected 200`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection could not be established.
    #[error("connect: {}", without_os_code(.0))]
    Connect(#[source] io::Error),
    /// The check did not complete within its timeout.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The HTTP exchange failed (the backend closed the connection, sent no
    /// valid HTTP, ...).
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    /// The backend answered with another status than expected.
    #[error("HTTP {status}, expected {expected}")]
    Status { status: u16, expected: u16 },
    /// The request could not be built from the check (invalid method, path
    /// or host); the config validation prevents this for loaded configs.
    #[error("invalid request: {0}")]
    Request(#[source] hyper::http::Error),
}

/// `io::Error`'s `Display` appends "(os error 111)", noise for an operator
/// who wants to read "Connection refused".
fn without_os_code(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Checks `target` once; `Ok` means the check passed.
///
/// - [`CheckKind::Tcp`]: passes when the TCP handshake completes.
/// - [`CheckKind::Http`]: sends `method path` over HTTP/1.1 with `Host`
///   (the configured host, else `target` as `addr:port`), `User-Agent:`
///   [`USER_AGENT_VALUE`] and `Connection: close`, and passes when the
///   response status equals `expect_status`. The body is not read: the
///   connection is closed once the status is known.
///
/// The whole check (connect, and for HTTP the exchange up to the response
/// head) is bounded by `timeout`.
pub async fn probe(
    target: SocketAddr,
    check: &CheckKind,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let check = async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(ProbeError::Connect)?;
        match check {
            CheckKind::Tcp => Ok(()),
            CheckKind::Http {
                method,
                path,
                expect_status,
                host,
            } => {
                http_check(
                    stream,
                    target,
                    method,
                    path,
                    *expect_status,
                    host.as_deref(),
                )
                .await
            }
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| ProbeError::TimedOut(timeout))?
}

async fn http_check(
    stream: TcpStream,
    target: SocketAddr,
    method: &str,
    path: &str,
    expected: u16,
    host: Option<&str>,
) -> Result<(), ProbeError> {
    let host = host.map_or_else(|| target.to_string(), str::to_owned);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::Request)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Http)?;
    // Drive the connection in this future rather than a spawned task, so
    // that the caller's timeout (or dropping the probe) also ends it.
    let response = sender.send_request(request);
    tokio::pin!(response, connection);
    let response = tokio::select! {
        biased;
        r = &mut response => r,
        c = &mut connection => {
            c.map_err(ProbeError::Http)?;
            // The connection ended cleanly: the response, or why there is
            // none, is already in the request's channel.
            response.await
        }
    }
    .map_err(ProbeError::Http)?;
    let status = response.status().as_u16();
    if status == expected {
        Ok(())
    } else {
        Err(ProbeError::Status { status, expected })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::TcpListener;

    use crate::test_server::TestServer;
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn http(method: &str, path: &str, expect_status: u16, host: Option<&str>) -> CheckKind {
        CheckKind::Http {
            method: method.into(),
            path: path.into(),
            expect_status,
            host: host.map(Into::into),
        }
    }

    #[tokio::test]
    async fn tcp_connects() {
        // The kernel completes the handshake from the backlog; no accept needed.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe(listener.local_addr().unwrap(), &CheckKind::Tcp, SECOND)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn tcp_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = probe(addr, &CheckKind::Tcp, SECOND).await.unwrap_err();
        assert!(matches!(e, ProbeError::Connect(_)), "{e:?}");
        assert_eq!(e.to_string(), "connect: Connection refused");
    }

    #[tokio::test]
    async fn times_out_when_the_backend_never_answers() {
        let server = TestServer::start(None).await;
        let started = Instant::now();
        let e = probe(
            server.addr,
            &http("GET", "/", 200, None),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ProbeError::TimedOut(_)), "{e:?}");
        assert_eq!(e.to_string(), "timed out after 200ms");
        assert!(started.elapsed() < 5 * SECOND);
    }

    #[tokio::test]
    async fn http_status_decides() {
        let server = TestServer::start(Some(200)).await;
        probe(server.addr, &http("GET", "/", 200, None), SECOND)
            .await
            .unwrap();

        let e = probe(server.addr, &http("GET", "/", 204, None), SECOND)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "HTTP 200, expected 204");

        server.set_status(Some(503));
        let e = probe(server.addr, &http("GET", "/", 200, None), SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ProbeError::Status {
                    status: 503,
                    expected: 200
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "HTTP 503, expected 200");
        probe(server.addr, &http("GET", "/", 503, None), SECOND)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn http_sends_method_path_and_headers() {
        let server = TestServer::start(Some(200)).await;
        probe(
            server.addr,
            &http("HEAD", "/health?deep=1", 200, Some("example.org")),
            SECOND,
        )
        .await
        .unwrap();
        probe(server.addr, &http("GET", "/", 200, None), SECOND)
            .await
            .unwrap();
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        let first = requests[0].to_ascii_lowercase();
        assert!(
            first.starts_with("head /health?deep=1 http/1.1\r\n"),
            "{first}"
        );
        assert!(first.contains("\r\nhost: example.org\r\n"), "{first}");
        assert!(first.contains(&format!(
            "\r\nuser-agent: fulcrum-health/{}\r\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(first.contains("\r\nconnection: close\r\n"), "{first}");
        let second = requests[1].to_ascii_lowercase();
        assert!(second.starts_with("get / http/1.1\r\n"), "{second}");
        assert!(
            second.contains(&format!("\r\nhost: {}\r\n", server.addr)),
            "{second}"
        );
    }

    #[tokio::test]
    async fn http_garbage_is_a_failure() {
        let server = TestServer::start_raw(b"SSH-2.0-OpenSSH\r\n").await;
        let e = probe(server.addr, &http("GET", "/", 200, None), SECOND)
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::Http(_)), "{e:?}");
    }
}
