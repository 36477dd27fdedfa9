//! The admin API: an HTTP/1.1 server on `[admin] listen` (default
//! 127.0.0.1:9180), and the client half that `fulcrum stats` uses.
//!
//! `GET /stats` answers a [`StatsReport`] as JSON. The server owns no
//! state: it asks the daemon loop over a channel and serialises the answer,
//! so the loop stays the single owner of the datapath.
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// A request from the admin server to the daemon loop.
pub enum AdminRequest {
    /// Reply with the current counters and state.
    Stats(oneshot::Sender<StatsReport>),
}

/// Everything `GET /stats` shows. Counters are XDP packet and byte counts
/// (frame bytes, Ethernet header included) summed over CPUs since the
/// daemon started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsReport {
    pub vips: Vec<VipStats>,
    pub pools: Vec<PoolStats>,
    /// Frames per datapath reason (`tx`, `pass_not_vip`, ...).
    pub reasons: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipStats {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub scheduler: String,
    pub pool: String,
    /// Maglev table size M in slots; 0 when no backend is in the table.
    pub table_size: u32,
    pub backends_in_table: usize,
    pub packets: u64,
    pub bytes: u64,
    /// Slots of the live table per backend.
    pub backends: Vec<VipBackendSlots>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipBackendSlots {
    pub address: String,
    pub slots: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolStats {
    pub name: String,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendStats {
    pub address: String,
    pub weight: u32,
    /// "up", "down" or "unknown" (first check not finished).
    pub health: String,
    /// Why it takes no new flows (`down`, `drained`, `no_mac`, ...), if so.
    pub excluded: Option<String>,
    pub mac: Option<String>,
    /// Forwarded to this backend (all VIPs and pools sharing its address).
    pub packets: u64,
    pub bytes: u64,
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<AdminRequest>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, requests.clone()));
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "admin: connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, requests: mpsc::Sender<AdminRequest>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.method() != Method::GET || req.uri().path() != "/stats" {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "try GET /stats\n".into()));
    }
    let (tx, rx) = oneshot::channel();
    if requests.send(AdminRequest::Stats(tx)).await.is_err() {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".into()));
    }
    Ok(match rx.await {
        Ok(report) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&report).expect("plain data serialises") + "\n",
        ),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".into()),
    })
}

/// Fetches `GET /stats` from a daemon's admin API at `admin`.
///
/// # Errors
/// Connection refused (no daemon there), timeout (5 s), non-200, bad JSON.
pub async fn fetch_stats(admin: SocketAddr) -> anyhow::Result<StatsReport> {
    use anyhow::Context;
    let work = async {
        let stream = TcpStream::connect(admin).await.with_context(|| format!("connecting to the admin API at {admin} (is `fulcrum run` up?)"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get("/stats").header("host", admin.to_string()).body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status == StatusCode::OK, "admin API answered {status}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).context("admin API sent malformed JSON")
    };
    tokio::time::timeout(Duration::from_secs(5), work).await.context("admin API timed out after 5 s")?
}

/// The report as an operator-readable table.
pub fn render(report: &StatsReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for vip in &report.vips {
        let _ = writeln!(
            out,
            "VIP {} {}:{}/{} scheduler={} pool={} table={} in-table={}  packets={} bytes={}",
            vip.name, vip.address, vip.port, vip.protocol, vip.scheduler, vip.pool, vip.table_size,
            vip.backends_in_table, vip.packets, vip.bytes
        );
        if let Some(pool) = report.pools.iter().find(|p| p.name == vip.pool) {
            let _ = writeln!(out, "  {:<40} {:<8} {:>6} {:>7} {:>12} {:>14}  note", "backend", "health", "weight", "slots", "packets", "bytes");
            for b in &pool.backends {
                let slots = vip.backends.iter().find(|s| s.address == b.address).map_or(0, |s| s.slots);
                let _ = writeln!(
                    out,
                    "  {:<40} {:<8} {:>6} {:>7} {:>12} {:>14}  {}",
                    b.address, b.health, b.weight, slots, b.packets, b.bytes,
                    b.excluded.as_deref().unwrap_or("")
                );
            }
        }
    }
    let _ = writeln!(out, "datapath reasons (frames):");
    for (name, frames) in &report.reasons {
        let _ = writeln!(out, "  {name:<18} {frames:>12}");
    }
    out
}
