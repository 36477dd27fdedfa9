//! A tiny HTTP backend on 127.0.0.1 for the probe and engine tests: records
//! each request head and answers with a status the test can change.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy)]
enum Reply {
    /// An empty response with this status.
    Status(u16),
    /// Accept, read the request, never answer.
    Silent,
    /// These bytes instead of HTTP.
    Raw(&'static [u8]),
}

pub(super) struct TestServer {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Answers every request with `status`, or never when `None`.
    pub async fn start(status: Option<u16>) -> Self {
        Self::with(status.map_or(Reply::Silent, Reply::Status)).await
    }

    /// Answers every connection with `bytes`.
    pub async fn start_raw(bytes: &'static [u8]) -> Self {
        Self::with(Reply::Raw(bytes)).await
    }

    async fn with(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, reply.clone(), requests.clone()));
        TestServer {
            addr,
            reply,
            requests,
            task,
        }
    }

    pub fn set_status(&self, status: Option<u16>) {
        *self.reply.lock().unwrap() = status.map_or(Reply::Silent, Reply::Status);
    }

    /// The request heads received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, reply: Arc<Mutex<Reply>>, requests: Arc<Mutex<Vec<String>>>) {
    // Silent connections are kept open until the server is dropped.
    let mut held: Vec<TcpStream> = Vec::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let head = tokio::time::timeout(Duration::from_secs(2), read_head(&mut stream)).await;
        let Ok(head) = head else { continue };
        requests.lock().unwrap().push(head);
        let reply = *reply.lock().unwrap();
        match reply {
            Reply::Status(status) => {
                let response = format!(
                    "HTTP/1.1 {status} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
            Reply::Raw(bytes) => {
                let _ = stream.write_all(bytes).await;
            }
            Reply::Silent => held.push(stream),
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
