//! The admin API's contract: the JSON of `GET /stats` as Rust types, their
//! operator-readable rendering, and the client half that `fulcrum stats`,
//! the lab, the benchmarks and the tests use.
//!
//! Owns only the wire format. It does not compute anything: the daemon
//! fills a [`StatsReport`] from its effective state and the datapath's
//! counters, and `fulcrum-admin` serves it.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// The path of the statistics snapshot.
pub const STATS_PATH: &str = "/stats";

/// Everything `GET /stats` shows. Counters are XDP packet and byte counts
/// (frame bytes, Ethernet header included) summed over CPUs since the
/// daemon started (or since the VIP or backend got its datapath id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsReport {
    /// One entry per configured VIP, in configuration order.
    pub vips: Vec<VipStats>,
    /// One entry per configured pool, in configuration order.
    pub pools: Vec<PoolStats>,
    /// Frames per datapath reason (`tx`, `pass_not_vip`, ...).
    pub reasons: BTreeMap<String, u64>,
    /// How the control plane keeps up: generations, applies, stalls.
    pub control: ControlStats,
    /// The L7 proxy's listeners, in configuration order; empty without L7.
    #[serde(default)]
    pub listeners: Vec<ListenerStats>,
    /// The XDP connection table's counters.
    #[serde(default)]
    pub conn_table: ConnTableStats,
    /// VRRP instances, in configuration order; empty without VRRP.
    #[serde(default)]
    pub vrrp: Vec<VrrpStats>,
    /// The L7 proxy's own counters; zero without L7.
    #[serde(default)]
    pub l7: L7ProxyStats,
}

/// The L7 proxy's counters over all its workers since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct L7ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections closed for idling (keep-alive timeout, or nothing sent
    /// within the header read timeout).
    pub idle_closed: u64,
    /// Access log records dropped because the writer fell behind.
    pub access_log_dropped: u64,
    /// Requests the proxy refused or could not serve, by kind:
    /// `bad_request` (400), `method_not_allowed` (405, CONNECT), `request_timeout` (408), `payload_too_large`
    /// (413), `uri_too_long` (414), `header_fields_too_large` (431),
    /// `bad_gateway` (502), `service_unavailable` (503),
    /// `gateway_timeout` (504).
    pub refused: BTreeMap<String, u64>,
}

/// One VRRP instance on this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VrrpStats {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    /// `MASTER`, `BACKUP`, `INIT` or `FAULT` (keepalived's names).
    pub state: String,
    /// The effective priority now (tracking may lower the configured one).
    pub priority: u8,
    /// The priority in the configuration, before tracking.
    #[serde(default)]
    pub configured_priority: u8,
    /// The current Master's primary address: this node's own while
    /// MASTER, else the source of the last accepted advert from the
    /// Master; `None` before any.
    #[serde(default)]
    pub master_address: Option<String>,
    /// The addresses it owns while MASTER, `a.b.c.d/len`.
    pub addresses: Vec<String>,
    /// Advertisements this node sent.
    pub adverts_sent: u64,
    /// Valid advertisements received from the other routers.
    pub adverts_accepted: u64,
    /// State changes since start.
    pub transitions: u64,
    /// Received packets dropped, by the receive check that failed
    /// (RFC 9568 section 7.1: `ttl`, `checksum`, `auth_password`, ...).
    pub discards: BTreeMap<String, u64>,
}

/// The XDP connection table (5-tuple -> backend): VIP packets forwarded
/// since start, by what the table did for them. Every forwarded VIP
/// packet is in exactly one of these counters.
///
/// `evictions` counts flows, not packets: flows whose way another flow's
/// write took. An evicted flow that sends again also shows up in
/// `misses` (a non-SYN packet without an entry); `misses` also counts
/// flows this node never saw (started before it took over the VIP) and
/// every UDP flow's first packet.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnTableStats {
    /// `[datapath] conn_table_size`: flows per address family (each table
    /// holds it rounded up to a power of two of 4-flow sets).
    pub size: u32,
    /// Packets that found a usable entry and followed it.
    pub hits: u64,
    /// Packets other than a TCP SYN without an entry: Maglev pick, written.
    pub misses: u64,
    /// TCP SYNs: always a fresh Maglev pick, written.
    pub syn_picks: u64,
    /// Packets whose entry named a real no longer usable for the VIP
    /// (removed from the pool, down under `repick`, id reused): re-picked.
    pub stale_repicks: u64,
    /// UDP packets whose entry was idle past `udp_idle_timeout`: re-picked.
    pub expired: u64,
    /// Entries that could not be written (the packet was still forwarded).
    pub write_failures: u64,
    /// Flows evicted to make room for new ones (not packets: see above).
    #[serde(default)]
    pub evictions: u64,
}

/// An L7 listener and its routes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenerStats {
    pub name: String,
    /// `address:port` as text.
    pub address: String,
    /// In the order they are tried.
    pub routes: Vec<RouteStats>,
}

/// One L7 route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteStats {
    /// Exact host, `*.suffix`, or absent for any.
    pub host: Option<String>,
    /// Path prefix.
    pub path: String,
    pub pool: String,
}

/// What the L7 proxy did with one member since start (summed over
/// workers). Bytes are message bodies, not headers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct L7MemberStats {
    /// Requests sent to the member.
    pub requests: u64,
    /// Requests in flight now (a gauge).
    pub outstanding: u64,
    /// Connect failures, timeouts and broken exchanges.
    pub failures: u64,
    /// Request body bytes sent to the member.
    pub bytes_sent: u64,
    /// Response body bytes received from the member.
    pub bytes_received: u64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// In error (Apache `E`) by the proxy's passive health checks now.
    #[serde(default)]
    pub in_error: bool,
    /// Milliseconds of In error left (0 when not In error).
    #[serde(default)]
    pub error_remaining_ms: u64,
    /// Times passive health put the member In error since start.
    #[serde(default)]
    pub times_in_error: u64,
}

/// One VIP as the datapath holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipStats {
    pub name: String,
    /// IPv4 or IPv6 address as text.
    pub address: String,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `maglev` or `ip-hash`.
    pub scheduler: String,
    pub pool: String,
    /// Maglev table size M in slots of the table in the kernel; 0 when no
    /// backend is in it (the VIP drops) or before its first write.
    pub table_size: u32,
    /// Backends holding slots in the table in the kernel.
    pub backends_in_table: usize,
    /// Frames addressed to this VIP that reached the XDP program, whatever
    /// happened to them (forwarded, or dropped for lack of a backend).
    pub packets: u64,
    pub bytes: u64,
    /// Slots of the table in the kernel per backend.
    pub backends: Vec<VipBackendSlots>,
    /// A digest of the table in the kernel (16 hex digits) that names each
    /// slot's owner by address: nodes that agree on it send every flow to
    /// the same backend. Absent when the table is empty.
    pub table_digest: Option<String>,
    /// This VIP's share of the connection table's counters.
    #[serde(default)]
    pub conn_table: VipConnStats,
}

/// [`ConnTableStats`] for one VIP: its forwarded packets by what the
/// connection table did, since the VIP got its datapath id, and the flows
/// (of any VIP) evicted to make room for this VIP's flows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipConnStats {
    pub hits: u64,
    pub misses: u64,
    pub syn_picks: u64,
    pub stale_repicks: u64,
    pub expired: u64,
    pub write_failures: u64,
    #[serde(default)]
    pub evictions: u64,
}

/// A backend's share of a VIP's Maglev table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipBackendSlots {
    pub address: String,
    pub slots: u32,
}

/// A pool (Apache: balancer) and its members.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolStats {
    pub name: String,
    pub backends: Vec<BackendStats>,
}

/// A pool member (Apache: BalancerMember) and what the node thinks of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendStats {
    /// IPv4 or IPv6 address as text.
    pub address: String,
    /// Apache loadfactor; 0 drains.
    pub weight: u32,
    /// `up`, `down` or `unknown` (first check not finished).
    pub health: String,
    /// What the last change of health was about, such as
    /// `HTTP 503, expected 200`; absent before the first verdict.
    pub check: Option<String>,
    /// Why it takes no new traffic, if so: `health_unknown`, `down`,
    /// `drained` (from the effective state) or `no_mac` (the L4 datapath
    /// cannot address it).
    pub excluded: Option<String>,
    /// The MAC L2 DSR sends to: configured, else from the neighbour table.
    pub mac: Option<String>,
    /// Frames XDP forwarded to this address (all VIPs and pools sharing it).
    pub packets: u64,
    pub bytes: u64,
    /// The port the L7 proxy connects to.
    #[serde(default)]
    pub port: u16,
    /// The L7 proxy's counters, when the proxy runs.
    #[serde(default)]
    pub l7: Option<L7MemberStats>,
    /// Apache status flags set (configured or at run time): letters of
    /// `D` disabled, `S` stopped, `N` draining, `H` hot standby, `R` hot
    /// spare; empty for none. `E` (In error) is in [`L7MemberStats`].
    #[serde(default)]
    pub status: String,
    /// Apache `lbset`.
    #[serde(default)]
    pub lbset: u8,
}

/// The control plane's own figures. A "generation" is one effective state
/// the control loop computed and handed to the datapath writer; bursts of
/// observations are coalesced, so generations may be skipped by applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlStats {
    /// The newest generation handed to the writer.
    pub generation: u64,
    /// The newest generation the BPF maps hold; equal to `generation` when
    /// nothing is pending.
    pub applied_generation: u64,
    /// Applies that completed since start.
    pub applies: u64,
    /// The last completed apply.
    pub last_apply: Option<ApplyStats>,
    /// The last failed apply's error; cleared by the next success. A failed
    /// apply is retried with backoff; the maps keep a consistent older state.
    pub last_error: Option<String>,
    /// Longest lateness of the control loop's 10 ms heartbeat since start,
    /// in microseconds: how long the loop could not react to anything.
    pub max_loop_stall_us: u64,
    /// The admin API's own connection counters.
    pub admin: AdminStats,
}

/// The admin API's connections since start: how its limits were used.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminStats {
    /// Connections taken on within the connection limit.
    pub accepted: u64,
    /// Connections being served now (a gauge, not a count).
    pub open: u64,
    /// Connections closed at once because the limit was reached.
    pub refused: u64,
    /// Connections closed for not sending a request head in time.
    pub header_timeouts: u64,
    /// Keep-alive connections closed after the idle timeout.
    pub idle_timeouts: u64,
    /// Connections shut down for reaching the maximum connection age.
    pub age_limited: u64,
    /// Requests answered 503 because the daemon loop did not answer in time.
    pub reply_timeouts: u64,
}

/// One apply: an effective state written into the BPF maps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyStats {
    /// The generation written.
    pub generation: u64,
    /// From the oldest observation it contains that was not yet in the
    /// maps (a health verdict arriving, a neighbour change, a reload, the
    /// start) to the last VIP flipped to its new table, in microseconds.
    pub latency_us: u64,
    /// Wall time of the write itself, in microseconds.
    pub wall_us: u64,
    /// CPU time the writer thread spent on it (user + system), in microseconds.
    pub cpu_us: u64,
    /// VIPs whose table or entry was rewritten; unchanged VIPs are skipped.
    pub vips_written: u32,
    /// Maglev tables built (identical member sets share one build).
    pub tables_built: u32,
}

impl StatsReport {
    /// The VIP called `name`.
    pub fn vip(&self, name: &str) -> Option<&VipStats> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// The first backend with this address, in any pool.
    pub fn backend(&self, address: &str) -> Option<&BackendStats> {
        self.pools.iter().flat_map(|p| &p.backends).find(|b| b.address == address)
    }

    /// A datapath reason counter, 0 if absent.
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons.get(name).copied().unwrap_or(0)
    }
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
        let req = Request::get(STATS_PATH).header("host", admin.to_string()).body(http_body_util::Empty::<Bytes>::new())?;
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
        let t = &vip.conn_table;
        let _ = writeln!(
            out,
            "  conn table: hits={} misses={} syn-picks={} stale-repicks={} expired={} write-failures={} evictions={}",
            t.hits, t.misses, t.syn_picks, t.stale_repicks, t.expired, t.write_failures, t.evictions
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
    let c = &report.control;
    let _ = writeln!(
        out,
        "control: generation={} applied={} applies={} max-loop-stall={}us admin-refused={}{}",
        c.generation,
        c.applied_generation,
        c.applies,
        c.max_loop_stall_us,
        c.admin.refused,
        c.last_error.as_deref().map(|e| format!("  last-error: {e}")).unwrap_or_default()
    );
    for v in &report.vrrp {
        let discarded: u64 = v.discards.values().sum();
        let _ = writeln!(
            out,
            "VRRP {} vrid={} on {} {} priority={} (configured {}) master={} addresses={} adverts sent={} received={} discarded={}",
            v.name, v.vrid, v.interface, v.state, v.priority, v.configured_priority, v.master_address.as_deref().unwrap_or("-"), v.addresses.join(","), v.adverts_sent, v.adverts_accepted, discarded
        );
    }
    if !report.listeners.is_empty() {
        let l7 = &report.l7;
        let refused: Vec<String> = l7.refused.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            out,
            "L7 connections={} idle_closed={} access_log_dropped={} refused: {}",
            l7.connections,
            l7.idle_closed,
            l7.access_log_dropped,
            if refused.is_empty() { "none".to_owned() } else { refused.join(" ") }
        );
    }
    for listener in &report.listeners {
        let _ = writeln!(out, "L7 listener {} {}", listener.name, listener.address);
        for route in &listener.routes {
            let _ = writeln!(out, "  route host={} path={} -> pool {}", route.host.as_deref().unwrap_or("*"), route.path, route.pool);
        }
    }
    for pool in &report.pools {
        if pool.backends.iter().all(|b| b.l7.is_none()) {
            continue;
        }
        let _ = writeln!(out, "L7 pool {}", pool.name);
        let _ = writeln!(out, "  {:<46} {:<8} {:>6} {:>10} {:>6} {:>8} {:>8}", "member", "health", "weight", "requests", "busy", "failures", "5xx");
        for b in &pool.backends {
            let l7 = b.l7.unwrap_or_default();
            let member = format!("{}:{}", b.address, b.port);
            let _ = writeln!(
                out,
                "  {:<46} {:<8} {:>6} {:>10} {:>6} {:>8} {:>8}",
                member, b.health, b.weight, l7.requests, l7.outstanding, l7.failures, l7.responses[4]
            );
        }
    }
    let t = &report.conn_table;
    let _ = writeln!(
        out,
        "conn table: size={} hits={} misses={} syn-picks={} stale-repicks={} expired={} write-failures={} evictions={}",
        t.size, t.hits, t.misses, t.syn_picks, t.stale_repicks, t.expired, t.write_failures, t.evictions
    );
    let _ = writeln!(out, "datapath reasons (frames):");
    for (name, frames) in &report.reasons {
        let _ = writeln!(out, "  {name:<18} {frames:>12}");
    }
    out
}
