//! What each request gets: the routing table and the round trip to the
//! daemon loop.
use bytes::Bytes;
use fulcrum_api::STATS_PATH;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, ALLOW, CONTENT_TYPE},
    Method, Request, Response, StatusCode,
};
use tokio::sync::{mpsc, oneshot};

use crate::{AdminCounters, AdminRequest, Limits, RateLimit, WARN_INTERVAL};

/// What every connection of one server shares.
pub(crate) struct Ctx {
    pub(crate) limits: Limits,
    pub(crate) counters: AdminCounters,
    requests: mpsc::Sender<AdminRequest>,
    reply_timeout_warnings: RateLimit,
}

impl Ctx {
    pub(crate) fn new(limits: Limits, counters: AdminCounters, requests: mpsc::Sender<AdminRequest>) -> Self {
        Self { limits, counters, requests, reply_timeout_warnings: RateLimit::new(WARN_INTERVAL) }
    }
}

pub(crate) async fn handle(req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    if req.uri().path() != STATS_PATH {
        return text(StatusCode::NOT_FOUND, "not found; the admin API serves GET /stats\n");
    }
    // HEAD gets the GET answer: hyper then sends its headers, content-length
    // included (from the body's exact size), and leaves the body out.
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET or HEAD\n");
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    stats(ctx).await
}

async fn stats(ctx: &Ctx) -> Response<Full<Bytes>> {
    let ask = async {
        let (tx, rx) = oneshot::channel();
        ctx.requests.send(AdminRequest::Stats(tx)).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(ctx.limits.reply_timeout, ask).await {
        Ok(Some(report)) => {
            let body = serde_json::to_string_pretty(&report).expect("plain data serialises") + "\n";
            reply(StatusCode::OK, "application/json", body.into())
        }
        Ok(None) => text(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down\n"),
        Err(_) => {
            AdminCounters::bump(&ctx.counters.0.reply_timeouts);
            if let Some(suppressed) = ctx.reply_timeout_warnings.check() {
                tracing::warn!(
                    timeout = ?ctx.limits.reply_timeout,
                    timeouts_since_last_warning = suppressed + 1,
                    "admin: the daemon loop did not answer in time, answering 503"
                );
            }
            text(StatusCode::SERVICE_UNAVAILABLE, "the daemon did not answer in time\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", Bytes::from_static(body.as_bytes()))
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
