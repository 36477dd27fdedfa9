//! The access log: one line per request, in Apache's combined format or
//! as JSON, written by a thread of its own so that a slow disk never
//! stalls a worker.
//!
//! Workers hand finished records to a bounded channel with `try_send`:
//! when the writer falls behind by [`QUEUE`] records, further records are
//! dropped and counted ([`crate::ProxyStats::access_log_dropped`]) rather
//! than delaying requests. The writer appends to the file, flushing after
//! each batch it finds queued. [`crate::Proxy::reopen_access_log`] (the
//! daemon calls it on SIGHUP, as nginx reopens its logs on USR1 and Apache
//! on a graceful restart) makes the writer open the path again before its
//! next batch, so `logrotate` can rename the file and have new records go
//! to a fresh one. A request is logged when its response has
//! been written out (or abandoned by the client), with the bytes of body
//! sent. Requests that hyper refuses before they reach the proxy (a head
//! it cannot parse) and heads that time out are counted in
//! [`crate::ProxyStats`] but not logged here: there is no request line to
//! log.

use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread,
    time::SystemTime,
};

use http::{Method, Version};

use crate::ProxyStats;

/// Records queued for the writer before new ones are dropped.
pub const QUEUE: usize = 64 * 1024;

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// Apache's `combined` (`%h %l %u %t "%r" %>s %b "%{Referer}i"
    /// "%{User-Agent}i"`), followed by ` upstream=ADDR request_us=N
    /// upstream_us=N` (`-` where there is none), the way nginx appends
    /// `$upstream_addr`: parsers of the combined format read the prefix
    /// and ignore the rest. Times in UTC.
    #[default]
    Combined,
    /// One JSON object per line with the same fields, named `client`,
    /// `time` (RFC 3339, UTC), `method`, `target`, `version`, `host`,
    /// `status`, `bytes`, `referer`, `user_agent`, `upstream`,
    /// `request_us`, `upstream_us`.
    Json,
}

/// Where and how to write the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// The file, opened for appending (created if missing).
    pub path: PathBuf,
    /// The line format.
    pub format: AccessLogFormat,
}

/// What is logged of one request.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub client: IpAddr,
    /// When the request head was parsed.
    pub time: SystemTime,
    pub method: Method,
    pub target: String,
    pub version: Version,
    pub host: Option<String>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
    /// Response body bytes handed to the connection.
    pub bytes: u64,
    /// The member that answered, if one did.
    pub upstream: Option<SocketAddr>,
    /// Request head parsed to response written, microseconds.
    pub request_us: u64,
    /// Request sent to the member until its response head, microseconds.
    pub upstream_us: Option<u64>,
}

/// The workers' end of the log: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: SyncSender<Record>,
    stats: Arc<ProxyStats>,
}

impl Sender {
    pub(crate) fn send(&self, r: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(r) {
            self.stats.access_log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread; joined (after every [`Sender`] is gone) on drop.
pub(crate) struct Writer {
    thread: Option<thread::JoinHandle<()>>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    /// Asks the writer to open the path again before its next batch.
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the file and starts the writer thread; records the queue has no
/// room for are counted in `stats`.
pub(crate) fn start(config: &AccessLogConfig, stats: Arc<ProxyStats>) -> io::Result<(Sender, Writer)> {
    let file = open(&config.path)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let reopen = Arc::new(AtomicBool::new(false));
    let (path, format, flag) = (config.path.clone(), config.format, reopen.clone());
    let thread = thread::Builder::new()
        .name("fulcrum-l7-log".into())
        .spawn(move || write_loop(rx, file, &path, format, &flag))?;
    Ok((
        Sender { tx, stats },
        Writer {
            thread: Some(thread),
            reopen,
        },
    ))
}

fn open(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(rx: Receiver<Record>, file: File, path: &std::path::Path, format: AccessLogFormat, reopen: &AtomicBool) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut line = String::new();
    let mut failed = false;
    // Ends when every worker (every Sender) is gone.
    while let Ok(first) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            // Everything queued before the request goes to the old file.
            let _ = out.flush();
            match open(path) {
                Ok(f) => out = BufWriter::with_capacity(64 * 1024, f),
                Err(e) => tracing::error!(path = %path.display(), error = %e, "reopening the access log failed; still writing to the old file"),
            }
        }
        let mut next = Some(first);
        while let Some(r) = next {
            line.clear();
            render(&r, format, &mut line);
            if let Err(e) = out.write_all(line.as_bytes()) {
                if !failed {
                    tracing::error!(error = %e, "access log write failed; records are lost until it works again");
                }
                failed = true;
            }
            next = rx.try_recv().ok();
        }
        match out.flush() {
            Ok(()) => failed = false,
            Err(e) if !failed => {
                tracing::error!(error = %e, "access log write failed; records are lost until it works again");
                failed = true;
            }
            Err(_) => {}
        }
    }
}

/// Appends `r` as one line (with its newline) to `out`.
pub(crate) fn render(r: &Record, format: AccessLogFormat, out: &mut String) {
    let time = time::OffsetDateTime::from(r.time);
    match format {
        AccessLogFormat::Combined => {
            let ts = time
                .format(time::macros::format_description!(
                    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
                ))
                .unwrap_or_default();
            let _ = write!(out, "{} - - [{ts}] \"", r.client);
            escape(&format!("{} {} {:?}", r.method, r.target, r.version), out);
            let _ = write!(out, "\" {} ", r.status);
            if r.bytes == 0 {
                out.push('-');
            } else {
                let _ = write!(out, "{}", r.bytes);
            }
            for v in [&r.referer, &r.user_agent] {
                out.push_str(" \"");
                escape(v.as_deref().unwrap_or("-"), out);
                out.push('"');
            }
            let _ = write!(out, " upstream=");
            match r.upstream {
                Some(u) => {
                    let _ = write!(out, "{u}");
                }
                None => out.push('-'),
            }
            let _ = write!(out, " request_us={} upstream_us=", r.request_us);
            match r.upstream_us {
                Some(u) => {
                    let _ = write!(out, "{u}");
                }
                None => out.push('-'),
            }
            out.push('\n');
        }
        AccessLogFormat::Json => {
            let ts = time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let v = serde_json::json!({
                "client": r.client.to_string(),
                "time": ts,
                "method": r.method.as_str(),
                "target": r.target,
                "version": format!("{:?}", r.version),
                "host": r.host,
                "status": r.status,
                "bytes": r.bytes,
                "referer": r.referer,
                "user_agent": r.user_agent,
                "upstream": r.upstream.map(|u| u.to_string()),
                "request_us": r.request_us,
                "upstream_us": r.upstream_us,
            });
            out.push_str(&v.to_string());
            out.push('\n');
        }
    }
}

/// Apache's escaping of logged request text (`ap_escape_logitem`): `"`
/// and `\` get a backslash, control and non-ASCII bytes become `\xhh`, so
/// a client cannot forge a line or a field.
fn escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record() -> Record {
        Record {
            client: "192.0.2.7".parse().unwrap(),
            // 2000-10-10 13:55:36 UTC, Apache's documentation example.
            time: UNIX_EPOCH + Duration::from_secs(971_186_136),
            method: Method::GET,
            target: "/apache_pb.gif?a=\"b\"".into(),
            version: Version::HTTP_11,
            host: Some("www.example.com".into()),
            referer: Some("http://www.example.com/start.html".into()),
            user_agent: Some("Mozilla/4.08 [en] (Win98; I ;Nav)\n".into()),
            status: 200,
            bytes: 2326,
            upstream: Some("198.18.0.11:8080".parse().unwrap()),
            request_us: 1500,
            upstream_us: Some(1200),
        }
    }

    #[test]
    fn combined_line() {
        let mut s = String::new();
        render(&record(), AccessLogFormat::Combined, &mut s);
        assert_eq!(
            s,
            "192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif?a=\\\"b\\\" HTTP/1.1\" 200 2326 \
             \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\\x0a\" \
             upstream=198.18.0.11:8080 request_us=1500 upstream_us=1200\n"
        );
        let mut r = record();
        (r.bytes, r.upstream, r.upstream_us, r.referer, r.status) = (0, None, None, None, 404);
        s.clear();
        render(&r, AccessLogFormat::Combined, &mut s);
        assert!(s.contains("\" 404 - \"-\" \"Mozilla"), "{s}");
        assert!(s.ends_with("upstream=- request_us=1500 upstream_us=-\n"), "{s}");
    }

    #[test]
    fn json_line() {
        let mut s = String::new();
        render(&record(), AccessLogFormat::Json, &mut s);
        assert!(s.ends_with('\n') && s.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["time"], "2000-10-10T13:55:36Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 2326);
        assert_eq!(v["upstream"], "198.18.0.11:8080");
        assert_eq!(v["target"], "/apache_pb.gif?a=\"b\"");
        assert_eq!(v["user_agent"], "Mozilla/4.08 [en] (Win98; I ;Nav)\n");
        assert_eq!(v["upstream_us"], 1200);
    }
}
