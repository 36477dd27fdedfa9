//! The operator's configuration file: TOML in, a validated [`Config`] out.
//!
//! Owns the file format, its defaults and every check that can be made
//! without touching the system (names unique, pools exist, sizes within the
//! datapath's maps, health check parameters sane). It does not resolve
//! neighbours, open sockets or touch BPF maps: the daemon turns a `Config`
//! into desired state.
//!
//! Every problem is reported with the file, line and column (1-based) of the
//! offending value, and all problems are reported at once, so an operator
//! fixes a file in one round. The format:
//!
//! ```toml
//! interface = "eth0"            # required: the NIC the XDP program attaches to
//!
//! [admin]                       # optional
//! listen = "127.0.0.1:9180"     # default 127.0.0.1:9180
//!
//! [datapath]                    # optional; changing it needs a restart
//! conn_table_size = 1000000     # default 1000000; 1024..=67108864 flows per address family (IPv4 ~113, IPv6 ~137 bytes each)
//!
//! [[vip]]
//! name = "web"                  # unique
//! address = "198.18.1.1"        # unicast IPv4 or IPv6; IPv4 as a.b.c.d, never ::ffff:a.b.c.d
//! port = 80
//! protocol = "tcp"              # "tcp" | "udp"
//! scheduler = "maglev"          # "maglev" (5-tuple hash) | "ip-hash" (source address)
//! pool = "web"                  # names a [[pool]]
//! maglev_table_size = 65537     # optional, default 65537; a prime in 3..=65537
//! on_marked_down = "keep"       # optional: "keep" (default) | "repick": established
//!                               # flows of a backend that fails its checks
//! udp_idle_timeout = "30s"      # udp only; default 30s; 1s..=1h: a UDP flow idle this
//!                               # long takes a fresh pick
//! vlan = 200                    # optional 802.1Q VLAN id 1..=4094 the VIP is reached on;
//!                               # default: untagged frames only; same for every VIP of an address
//!
//! [[pool]]
//! name = "web"                  # unique
//! lbmethod = "byrequests"       # L7 only: "byrequests" (default) | "bybusyness" |
//!                               # "bytraffic" | "byip" | "p2c"
//! stickysession = "ROUTEID"     # L7 only, optional: cookie (and URL parameter) naming
//!                               # a backend's route; "JSESSIONID|jsessionid" = cookie|param
//! nofailover = false            # with stickysession: 503 when the named backend cannot serve
//! sticky_secure = false         # with stickysession: the cookie the proxy sets is Secure
//! failonstatus = [502, 503]     # L7 passive health (any of these five keys turns it on):
//!                               # statuses counted as failures (Apache failonstatus=)
//! failontimeout = false         # a response timeout counts as a failure (Apache)
//! error_limit = 1               # default 1; 1..=32: failures within error_window that
//!                               # put a backend In error (E) (HAProxy error-limit)
//! error_window = "10s"          # default 10s; 100ms..=1h
//! retry = "60s"                 # default 60s; 100ms..=1h: how long E lasts (Apache retry=)
//! slow_start = "30s"            # optional; 100ms..=1h: a backend coming back ramps its
//!                               # L7 weight up over this time (HAProxy slowstart)
//! [pool.health_check]           # optional; default: a TCP connect check
//! type = "http"                 # "tcp" (connect) | "http"
//! method = "GET"                # http only; default GET
//! path = "/health"              # http only; default "/"
//! expect_status = 200           # http only; default 200
//! host = "example.org"          # http only; default: the backend's address
//! port = 80                     # default: the port of the VIPs using the pool
//! interval = "1s"               # default 2s; 100ms..=1h
//! timeout = "500ms"             # default 1s; 10ms..=interval
//! rise = 2                      # default 2; 1..=100
//! fall = 3                      # default 3; 1..=100
//! [[pool.backend]]
//! address = "198.18.0.11"       # unicast IPv4 or IPv6, as for a VIP; unique within the pool
//! weight = 1                    # default 1; 0..=256, 0 = drained
//! mac = "02:00:00:00:00:11"     # optional, unicast; else from the neighbour table;
//!                               # one MAC per address over all pools
//! port = 80                     # L7 only: the port the proxy connects to;
//!                               # default the pool's health check port
//! route = "real1"               # optional sticky-session id (Apache route=)
//! status = "+H"                 # optional Apache status flags: D disabled, S stopped,
//!                               # N draining, H hot standby, R hot spare ("+D+N", "-D")
//! lbset = 0                     # default 0; 0..=99: lower sets are used first (Apache)
//!
//! # The L7 proxy (HTTP). A pool serves L4 VIPs and L7 routes alike; a pool
//! # used by no VIP checks the port its backends share, unless
//! # health_check.port says otherwise.
//! [l7]                          # optional
//! workers = 2                   # default: the number of CPUs; 1..=256
//! connect_timeout = "5s"        # to a member; then the next member, at last 502
//! response_timeout = "60s"      # request sent to response head; then 504
//! header_read_timeout = "10s"   # a request head (slowloris); then 408
//! keepalive_timeout = "15s"     # idle client connection; then closed
//! request_timeout = "60s"       # a whole request with its body; then 408
//! drain_timeout = "10s"         # at shutdown, for requests in flight
//! websocket_idle_timeout = "1h" # an upgraded connection with no traffic
//! park_after = "250ms"          # idle client connection: its buffers freed
//! max_header_size = 32768       # bytes; then 431
//! max_headers = 100             # header fields; then 431
//! max_uri_len = 8190            # bytes; then 414
//! max_body_size = 1073741824    # bytes, 0 = no limit; then 413
//! forwarded = "x-forwarded"     # x-forwarded | rfc7239 | both
//! access_log = "/var/log/fulcrum/access.log"   # optional, absolute path
//! access_log_format = "combined"  # combined (Apache's + upstream, timings) | json
//!
//! [[listener]]
//! name = "www"                  # unique
//! address = "198.18.0.2:8080"   # unique; reloadable (a new proxy starts, the old drains)
//! [[listener.route]]            # tried in file order, at least one
//! host = "*.example.com"        # optional: exact, or *.suffix; default any
//! path = "/app/"                # optional path prefix; default "/"
//! pool = "web"                  # names a [[pool]]
//! preserve_host = false         # Apache ProxyPreserveHost; default false
//! proxy_pass_reverse = false    # Apache ProxyPassReverse; default false
//!
//! # VRRP (RFC 9568; RFC 3768 for version 2), keepalived's vrrp_instance.
//! # The MASTER adds the addresses to its interface and announces them; a
//! # [[vip]] at one of them is forwarded only while this node is MASTER.
//! [[vrrp]]
//! name = "vi4"                  # unique
//! vrid = 51                     # 1..=255; unique per interface and family
//! priority = 150                # 1..=255, 255 = address owner
//! version = 3                   # 3 (default) | 2 (IPv4 only)
//! advert_interval = "1s"        # v3: 10ms..=40.95s in whole centiseconds; v2: 1..=255 whole seconds
//! preempt = true                # default true
//! preempt_delay = "0s"          # optional, at most 1h
//! password = "secret"           # v2 only, 1..=8 bytes (simple text)
//! interface = "eth0"            # default: the top-level interface
//! unicast_peers = ["198.18.0.3"]  # optional, else multicast 224.0.0.18 / ff02::12
//! addresses = ["198.18.1.1/32"] # one family; each address in one instance
//! virtual_mac = false           # default false (keepalived's default): VIPs on the
//!                               # interface, its own MAC; true: RFC 9568 virtual MAC
//!                               # 00:00:5e:00:01:VRID (IPv6 :02:) on a macvlan vrrp.VRID
//! notify_master = ["/usr/local/bin/notify", "master"]  # argv, never a shell string;
//!                               # also notify_backup, notify_fault, notify_stop
//! [[vrrp.track]]                # keepalived's track_* with weight
//! kind = "pool"                 # "pool" | "interface" | "script" | "xdp" | "l7"
//! pool = "web"                  # pool: at least min_up members take traffic
//! min_up = 2                    # default 1
//! weight = -60                  # -254..=254: negative counts while failing,
//!                               # positive while holding, 0 (default) = FAULT on failure
//! # interface = "eth0"          # interface: operstate up
//! # command = ["/usr/local/bin/check"], interval = "2s", timeout = "1s"   # script
//! # xdp: fulcrum's XDP program is still attached to `interface` (no fields)
//! # l7: every [[listener]] accepts a connection (no fields; needs listeners)
//! # auth_key_file = "/etc/fulcrum/vrrp.key"  # NON-STANDARD HMAC-SHA256 trailer,
//! #                             # fulcrum-to-fulcrum only; off by default; or
//! #                             # auth_key = "..." inline (warned at start)
//!
//! [[vrrp_sync_group]]           # keepalived's vrrp_sync_group: fail over together
//! name = "g"                    # unique
//! instances = ["vi4", "vi6"]    # at least 2 [[vrrp]] names, each in one group
//! ```
//!
//! A `[[pool]]` may set `lbmethod`, how the L7 proxy balances it, by
//! Apache mod_proxy_balancer's names: `"byrequests"` (smooth weighted
//! round robin, the default), `"bybusyness"` (least outstanding requests),
//! `"bytraffic"` (least bytes per weight), `"byip"` (consistent hash of the
//! client address) and `"p2c"` (power of two choices over a Peak-EWMA
//! latency; not in Apache). `stickysession` (Apache `stickysession=`)
//! makes its sessions sticky: the proxy sets the cookie `NAME=.route` and
//! honours a `.route` suffix in that cookie or URL parameter; it needs at
//! least one backend with a `route`, and routes unique within the pool.
//! `nofailover` and `sticky_secure` need `stickysession`.
//!
//! Members fail over as in mod_proxy_balancer: the lowest `lbset` with a
//! usable member serves; in it, each unusable member (down, `D`, `S`,
//! draining, In error) is replaced by one usable hot spare (`R`), and hot
//! standbys (`H`) serve only when nothing else of the set can (the rule is
//! `fulcrum_common::failover`). What each flag means for L4 VIPs and L7
//! routes is documented in `fulcrum_state`. Passive health and
//! `slow_start` are the L7 proxy's (`fulcrum_l7`): passive errors (`E`)
//! do not take a backend out of L4 VIPs.
//!
//! Addresses that cannot name one host are rejected, for VIPs and backends
//! alike: the unspecified addresses (`0.0.0.0`, `::`), multicast addresses,
//! the IPv4 broadcast address `255.255.255.255`, and IPv4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`). The datapath stores every IPv4 address in
//! that mapped form, so `::ffff:198.18.1.1` would be a second name for
//! `198.18.1.1`; write the IPv4 form instead.
//!
//! # Health check bounds
//!
//! Like HAProxy (`inter`, in milliseconds, default 2 s; `rise` 2, `fall` 3)
//! and keepalived (`delay_loop` and `connect_timeout`, in seconds), the
//! interval and timeout are durations, here written with units (`"500ms"`,
//! `"2s"`). Values outside these bounds are rejected rather than clamped:
//!
//! | setting    | minimum                   | maximum                        |
//! |------------|---------------------------|--------------------------------|
//! | `interval` | [`MIN_INTERVAL`], 100 ms  | [`MAX_INTERVAL`], 1 h          |
//! | `timeout`  | [`MIN_TIMEOUT`], 10 ms    | the pool's `interval`          |
//! | `rise`     | 1                         | [`MAX_RISE_FALL`], 100         |
//! | `fall`     | 1                         | [`MAX_RISE_FALL`], 100         |
//!
//! The constants' documentation gives the reasons.

#![warn(missing_docs)]

mod raw;
mod resolve;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub use fulcrum_common::failover::Role;
use fulcrum_common::Mac;
use serde::Deserialize;

/// Admin API listen address used when `[admin]` or its `listen` is absent.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";
/// Maglev lookup table size, in slots, when a VIP does not set one: the
/// largest the datapath supports ([`fulcrum_common::MAGLEV_MAX_TABLE_SIZE`]).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = fulcrum_common::MAGLEV_MAX_TABLE_SIZE;
/// Connection table entries (flows) per address family when `[datapath]
/// conn_table_size` is not set: [`fulcrum_common::DEFAULT_CONN_TABLE_SIZE`],
/// one million.
pub const DEFAULT_CONN_TABLE_SIZE: u32 = fulcrum_common::DEFAULT_CONN_TABLE_SIZE;
/// Smallest connection table: 1024 flows (256 sets of 4). Much smaller,
/// a few busy seconds evict every established flow.
pub const MIN_CONN_TABLE_SIZE: u32 = 1024;
/// Largest connection table: 2^26 (67,108,864) flows per address family,
/// about 9.5 GiB of kernel memory preallocated at start for both (64
/// bytes an IPv4 flow, 88 an IPv6 one). Sizes are rounded up to a power
/// of two of 4-flow sets (`fulcrum_common::conn_sets`).
pub const MAX_CONN_TABLE_SIZE: u32 = 1 << 26;
/// How long a UDP flow may be idle before it takes a fresh pick, when a
/// UDP VIP does not set `udp_idle_timeout`: 30 s, Katran's
/// `LRU_UDP_TIMEOUT`. IPVS keeps UDP entries 300 s, but IPVS has no
/// consistent hash to fall back on; here an expired flow gets the Maglev
/// pick, the same real unless the table changed meanwhile, so a short
/// timeout costs little and frees ways for live flows sooner.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest `udp_idle_timeout`: 1 s. The datapath marks a flow's
/// last-seen tick on every packet (at most one store a tick, see
/// [`fulcrum_common::ConnEntry::seen`]), so a flow expires a timeout
/// after its last packet, to the tick.
pub const MIN_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `udp_idle_timeout`: 1 h. Longer, and a flood of one-packet
/// UDP flows holds connection-table ways that live flows need.
pub const MAX_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Largest backend weight. Weights are relative (Apache `loadfactor`); 256
/// gives enough resolution while keeping a Maglev table of a few hundred
/// backends well filled.
pub const MAX_WEIGHT: u32 = 256;
/// Health check interval when a pool does not set one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Health check timeout when a pool does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive passes that bring a DOWN backend UP, unless set.
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failures that take an UP backend DOWN, unless set.
pub const DEFAULT_FALL: u32 = 3;
/// Shortest health check interval: 100 ms.
///
/// Every check is a new TCP connection to the backend (and for HTTP a
/// request), per backend and per pool. At 100 ms a full datapath of
/// [`fulcrum_common::MAX_REALS`] backends already costs about 40 000
/// connections a second on the load balancer and ten a second on each
/// backend; shorter intervals spend the CPU on checks rather than traffic,
/// while detection still takes `fall` intervals, so they buy little.
/// HAProxy's `inter` has millisecond resolution and keepalived's
/// `delay_loop` accepts fractions of a second; sub-second intervals are
/// legitimate, nanoseconds are a mistake.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest health check interval: 1 hour.
///
/// A backend that dies stays in its VIPs' tables for up to `fall`
/// intervals, so beyond an hour the check has all but stopped and the
/// value is far more likely a wrong unit than an intent. An hour still
/// leaves room for expensive health endpoints that must be checked rarely.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Shortest health check timeout: 10 ms. The longest is the pool's
/// interval, so that a check ends before the next one is due.
///
/// A check must finish a TCP handshake (and for HTTP an exchange) within
/// the timeout. Below 10 ms ordinary scheduling delays and a busy
/// backend's latency fail healthy backends, which then flap in and out of
/// the tables.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Largest `rise` and `fall`, in consecutive checks; the smallest is 1.
///
/// The backend changes state only after that many checks in a row, so
/// 100 already means over three minutes at the default 2 s interval (and
/// over four days at [`MAX_INTERVAL`]); larger counts are typos, not
/// tuning. HAProxy's defaults, `rise 2` and `fall 3`, are ours.
pub const MAX_RISE_FALL: u32 = 100;

// The defaults skip the checks, so they must satisfy the bounds by
// construction.
const _: () = assert!(
    MIN_INTERVAL.as_nanos() <= DEFAULT_INTERVAL.as_nanos()
        && DEFAULT_INTERVAL.as_nanos() <= MAX_INTERVAL.as_nanos()
        && MIN_TIMEOUT.as_nanos() <= DEFAULT_TIMEOUT.as_nanos()
        && DEFAULT_TIMEOUT.as_nanos() <= DEFAULT_INTERVAL.as_nanos()
        && 1 <= DEFAULT_RISE
        && DEFAULT_RISE <= MAX_RISE_FALL
        && 1 <= DEFAULT_FALL
        && DEFAULT_FALL <= MAX_RISE_FALL
);

/// Reads and validates the configuration file at `path`.
///
/// Errors name the file as `path` is displayed. A file that cannot be read
/// gives a [`ConfigError`] with a single, position-less diagnostic.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Err(ConfigError {
            origin,
            diagnostics: vec![Diagnostic {
                line: 0,
                column: 0,
                message: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// Parses and validates configuration `text`; `origin` (usually the file
/// name) prefixes every reported error.
///
/// A TOML syntax or type error stops the parse and is reported alone, as
/// the toml crate gives one error per parse; once the text is well formed,
/// every validation error is reported.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let fail = |diagnostics: Vec<Diagnostic>| ConfigError {
        origin: origin.to_owned(),
        diagnostics,
    };
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        fail(vec![Diagnostic::at(
            text,
            offset,
            e.message().trim_end().to_owned(),
        )])
    })?;
    resolve::resolve(raw, text).map_err(fail)
}

/// Why a configuration was rejected: every problem found, with positions.
///
/// `Display` prints one line per problem, `origin:line:col: message`
/// (`origin: message` when the problem has no position, such as an
/// unreadable file), ordered by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// The problems, ordered by position in the file.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The file name (or other origin) the problems refer to.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line == 0 {
                write!(f, "{}: {}", self.origin, d.message)?;
            } else {
                write!(f, "{}:{}:{}: {}", self.origin, d.line, d.column, d.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// 1-based line of the offending value; 0 when the problem concerns the
    /// whole file (it could not be read).
    pub line: usize,
    /// 1-based column, in characters (not bytes); 0 with `line` 0.
    pub column: usize,
    /// What is wrong, for an operator.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at byte `offset` of `text`.
    fn at(text: &str, offset: usize, message: String) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Diagnostic {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message,
        }
    }
}

/// The validated configuration, with every default applied and every
/// reference resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The network interface the XDP program attaches to.
    pub interface: String,
    /// The admin API.
    pub admin: AdminConfig,
    /// In file order; at most [`fulcrum_common::MAX_VIPS`].
    pub vips: Vec<VipConfig>,
    /// In file order; each has at least one backend, and at most
    /// [`fulcrum_common::MAX_REALS`] backends exist over all pools.
    pub pools: Vec<PoolConfig>,
    /// The L7 proxy's listeners, in file order; names and addresses unique.
    pub listeners: Vec<ListenerConfig>,
    /// The L7 proxy's own settings.
    pub l7: L7Config,
    /// The XDP datapath's node-wide settings (`[datapath]`).
    pub datapath: DatapathSettings,
    /// VRRP instances, in file order; names unique, (interface, VRID,
    /// family) unique, each address owned by one instance.
    pub vrrp: Vec<VrrpConfig>,
}

/// A VRRP instance (`[[vrrp]]`, keepalived's `vrrp_instance`): one virtual
/// router that owns `addresses` while it is MASTER (RFC 9568; RFC 3768 for
/// version 2). A `[[vip]]` whose address is among them is forwarded by
/// this node only while the instance is MASTER here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VrrpConfig {
    /// Unique among instances.
    pub name: String,
    /// Where adverts go and the addresses are added; default the top-level
    /// `interface`.
    pub interface: String,
    /// Virtual Router Identifier, 1..=255 (RFC 9568 section 5.2.3).
    pub vrid: u8,
    /// 2 (RFC 3768, IPv4 only) or 3 (RFC 9568), default 3.
    pub version: u8,
    /// 1..=255; 255 is the address owner (RFC 9568 section 5.2.4).
    pub priority: u8,
    /// Advertisement interval: version 3 in whole centiseconds, 10 ms to
    /// 40.95 s; version 2 in whole seconds, 1 to 255 s. Default 1 s.
    pub advert_interval: Duration,
    /// Whether a higher-priority backup takes over (Preempt_Mode); default
    /// true (keepalived's `nopreempt` is false).
    pub preempt: bool,
    /// keepalived's `preempt_delay`: how long a higher-priority backup
    /// waits before preempting; default 0, at most 1 h.
    pub preempt_delay: Duration,
    /// Version 2 simple text password (RFC 2338 Auth Type 1), 1..=8 bytes.
    pub password: Option<String>,
    /// The virtual addresses with their prefix lengths, one family, at
    /// least one.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Send adverts to these instead of the multicast group (keepalived's
    /// `unicast_peer`); same family as the addresses.
    pub unicast_peers: Vec<IpAddr>,
    /// Commands run on entering a state (keepalived's `notify_master` and
    /// friends), as argument vectors: never through a shell.
    pub notify: VrrpNotify,
    /// Conditions that lower the priority or put the instance in FAULT
    /// (keepalived's `track_*` with `weight`).
    pub track: Vec<TrackConfig>,
    /// The key of fulcrum's NON-STANDARD HMAC-SHA256 advert trailer
    /// (`auth_key_file` or `auth_key`; fulcrum-vrrp's `auth` module).
    /// Only fulcrum nodes sharing the key understand it: a keepalived or
    /// other RFC peer discards the longer adverts, so groups with such
    /// peers must leave it unset (the default).
    pub auth_key: Option<VrrpAuthKey>,
    /// The `[[vrrp_sync_group]]` this instance belongs to, if any: its
    /// members fail over together (keepalived's `vrrp_sync_group`).
    pub sync_group: Option<String>,
    /// Use the RFC 9568 virtual router MAC (section 7.3:
    /// 00:00:5e:00:01:VRID for IPv4, 00:00:5e:00:02:VRID for IPv6) on a
    /// macvlan of `interface` (`vrrp.VRID` / `vrrp6.VRID`), up only while
    /// MASTER, holding the addresses. Default false, keepalived's default
    /// (no `use_vmac`): the addresses go on `interface` and clients learn
    /// each Master's own MAC. See fulcrum-vrrp's
    /// `shell::InstanceConfig::virtual_mac`.
    pub virtual_mac: bool,
}

/// Shortest HMAC key accepted, bytes: SHA-256's output length (RFC 2104
/// section 3: shorter keys are "strongly discouraged").
pub const MIN_VRRP_AUTH_KEY_LEN: usize = 32;

/// Where a VRRP instance's HMAC key comes from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum VrrpAuthKey {
    /// `auth_key_file`: read by the daemon at start (its contents, trailing
    /// whitespace removed, at least [`MIN_VRRP_AUTH_KEY_LEN`] bytes). The
    /// recommended form: the key stays out of the configuration file.
    File(std::path::PathBuf),
    /// `auth_key`: the key inline, at least [`MIN_VRRP_AUTH_KEY_LEN`]
    /// bytes. Works, but the daemon warns: configuration files get copied
    /// and shown around.
    Inline(String),
}

// Never print a key into a log or an error.
impl std::fmt::Debug for VrrpAuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VrrpAuthKey::File(p) => f.debug_tuple("File").field(p).finish(),
            VrrpAuthKey::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

/// One `[[vrrp_sync_group]]`, as [`Config::vrrp_sync_groups`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VrrpSyncGroup {
    /// The group's name.
    pub name: String,
    /// Its instances' names, in [`Config::vrrp`] order.
    pub instances: Vec<String>,
}

/// Notify commands of a VRRP instance, each an argument vector whose first
/// element is the program. They run with `FULCRUM_VRRP_INSTANCE`,
/// `FULCRUM_VRRP_VRID`, `FULCRUM_VRRP_STATE` and `FULCRUM_VRRP_REASON` in
/// their environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VrrpNotify {
    /// On becoming MASTER.
    pub master: Option<Vec<String>>,
    /// On becoming BACKUP.
    pub backup: Option<Vec<String>>,
    /// On entering FAULT (a weight-0 track failed).
    pub fault: Option<Vec<String>>,
    /// On a graceful stop of the instance.
    pub stop: Option<Vec<String>>,
}

/// One tracked condition (`[[vrrp.track]]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackConfig {
    /// The condition.
    pub kind: TrackKind,
    /// keepalived's semantics: a positive weight is added to the priority
    /// while the condition holds, a negative one while it fails; 0 (the
    /// default) puts the instance in FAULT while it fails. -254..=254.
    pub weight: i32,
}

/// What is tracked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// At least `min_up` members of `pool` take traffic.
    Pool {
        /// A pool in [`Config::pools`].
        pool: String,
        /// 1 or more; default 1.
        min_up: u32,
    },
    /// The interface is up (operstate `up` or `unknown`).
    Interface {
        /// The interface name.
        name: String,
    },
    /// The command exits 0 within `timeout`, run every `interval`.
    Script {
        /// Argument vector, program first; never run through a shell.
        command: Vec<String>,
        /// Between the starts of two runs; 100 ms..=1 h, default 2 s.
        interval: Duration,
        /// A run still going after it fails (and is killed); 10 ms..=interval,
        /// default 1 s.
        timeout: Duration,
    },
    /// fulcrum's XDP program is still attached to `interface`: the
    /// top-level `interface`, where the daemon attaches it (`kind = "xdp"`).
    Xdp {
        /// The top-level interface.
        interface: String,
    },
    /// Every L7 listener (`[[listener]]`) accepts a TCP connection
    /// (`kind = "l7"`); needs at least one listener.
    L7,
}

impl Config {
    /// The `[[vrrp_sync_group]]`s, in order of their first instance in
    /// [`Config::vrrp`]. Recorded on each instance
    /// ([`VrrpConfig::sync_group`]), so that any change to a group changes
    /// its instances.
    pub fn vrrp_sync_groups(&self) -> Vec<VrrpSyncGroup> {
        let mut groups: Vec<VrrpSyncGroup> = Vec::new();
        for v in &self.vrrp {
            let Some(name) = &v.sync_group else { continue };
            match groups.iter_mut().find(|g| &g.name == name) {
                Some(g) => g.instances.push(v.name.clone()),
                None => groups.push(VrrpSyncGroup { name: name.clone(), instances: vec![v.name.clone()] }),
            }
        }
        groups
    }

    /// The VRRP instance that owns `address`, if any.
    pub fn vrrp_owning(&self, address: IpAddr) -> Option<&VrrpConfig> {
        let address = address.to_canonical();
        self.vrrp.iter().find(|v| v.addresses.iter().any(|&(a, _)| a.to_canonical() == address))
    }
}

/// The XDP datapath's node-wide settings (`[datapath]`), fixed at start:
/// they size kernel maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatapathSettings {
    /// Connection table entries (flows) of each address family's table,
    /// [`MIN_CONN_TABLE_SIZE`]..=[`MAX_CONN_TABLE_SIZE`]; default
    /// [`DEFAULT_CONN_TABLE_SIZE`]. The datapath rounds it up to a power
    /// of two of 4-flow sets (`fulcrum_common::conn_sets`: 1,000,000 ->
    /// 1,048,576).
    pub conn_table_size: u32,
    /// `ipip_source_v4 = "a.b.c.d/len"`: the outer source addresses of
    /// IPIP packets, one per flow: the prefix with its host bits taken
    /// from the flow hash, so the reals' RSS spreads flows. Length
    /// 8..=32 (/32: one fixed source). Required when an IPv4 VIP has
    /// `forwarding = "ipip"`. Host bits of the address must be zero.
    pub ipip_source_v4: Option<(std::net::Ipv4Addr, u8)>,
    /// `ipip_source_v6 = "prefix/len"`: as `ipip_source_v4`, for IP6IP6;
    /// length 96..=128 (only the last 32 bits vary).
    pub ipip_source_v6: Option<(std::net::Ipv6Addr, u8)>,
}

impl Default for DatapathSettings {
    fn default() -> Self {
        DatapathSettings { conn_table_size: DEFAULT_CONN_TABLE_SIZE, ipip_source_v4: None, ipip_source_v6: None }
    }
}

/// How the XDP datapath sends a VIP's packets to its reals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// L2 direct server return: only the Ethernet addresses change; reals
    /// share the balancer's L2 segment.
    #[default]
    Dsr,
    /// Encapsulated to the real's address: IPIP (RFC 2003) for an IPv4
    /// VIP, IP6IP6 (RFC 2473) for an IPv6 one, 20 or 40 bytes more per
    /// packet. Reals may sit on another L3 network and run `fulcrum
    /// decap`; their address family must be the VIP's, and `mac` (or
    /// the neighbour table) gives the next hop's MAC.
    Ipip,
}

/// What happens to the established flows of a backend that fails its
/// health checks (HAProxy `on-marked-down`, IPVS `expire_nodest_conn`).
/// A backend removed from the pool always loses its flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMarkedDown {
    /// They stay on it (IPVS's default): a failing check does not mean its
    /// connections are dead, and moving them resets them anyway.
    #[default]
    Keep,
    /// They take a fresh pick (HAProxy `shutdown-sessions`, IPVS
    /// `expire_nodest_conn=1`): for backends whose failure kills their
    /// connections, so clients learn at once.
    Repick,
}

/// The L7 proxy's settings (`[l7]`). Timeouts and limits apply to every
/// listener; the proxy answers each violation with its status (see
/// `fulcrum_l7::Violation`). Durations are written like `"10s"` or
/// `"500ms"`, 10 ms..=24 h.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct L7Config {
    /// Proxy worker threads, one io_uring each, 1..=[`MAX_L7_WORKERS`];
    /// default: the number of CPUs.
    pub workers: usize,
    /// TCP connect to a member; a failure tries another member, then
    /// 502. Default 5 s (Apache `connectiontimeout=`).
    pub connect_timeout: Duration,
    /// Request sent to a member until its response head; then 504.
    /// Default 60 s (Apache `ProxyTimeout`).
    pub response_timeout: Duration,
    /// First byte of a request to the end of its head (and a new
    /// connection's first byte); then 408. Default 10 s (HAProxy `timeout
    /// http-request`).
    pub header_read_timeout: Duration,
    /// A client's keep-alive connection between requests; then closed.
    /// Default 15 s (Apache `KeepAliveTimeout`).
    pub keepalive_timeout: Duration,
    /// First byte of a request until its body is in; then 408. Default
    /// 60 s.
    pub request_timeout: Duration,
    /// At shutdown, how long requests in flight may finish before they
    /// are cut. Default 10 s.
    pub drain_timeout: Duration,
    /// A client's keep-alive connection idle this long is parked: hyper's
    /// connection and its buffers are freed until the next request
    /// arrives (`docs/l7.md`, "Parking idle connections"). Default
    /// [`DEFAULT_PARK_AFTER`].
    pub park_after: Duration,
    /// A WebSocket tunnel with no byte either way is closed after this.
    /// Default 1 h (HAProxy `timeout tunnel`).
    pub websocket_idle_timeout: Duration,
    /// Largest request head, bytes, 1 KiB..=1 MiB; default 32 KiB; over: 431.
    pub max_header_size: usize,
    /// Most request header fields, 1..=1000; default 100
    /// (Apache `LimitRequestFields`); over: 431.
    pub max_headers: usize,
    /// Longest request target, bytes, 64..=65534; default 8190 (Apache
    /// `LimitRequestLine`); over: 414.
    pub max_uri_len: usize,
    /// Largest request body, bytes; 0 = no limit; default 1 GiB (Apache
    /// `LimitRequestBody`); over: 413.
    pub max_body_size: u64,
    /// Which forwarding fields the proxy adds to requests.
    pub forwarded: ForwardedFields,
    /// The access log file (absolute path), if any; written by its own
    /// thread.
    pub access_log: Option<std::path::PathBuf>,
    /// `combined` (Apache's, plus upstream and timings) or `json`.
    pub access_log_json: bool,
}

/// The fields that tell a member about the client (`[l7] forwarded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ForwardedFields {
    /// `x-forwarded`: X-Forwarded-For, -Proto and -Host, as Apache and
    /// nginx set them (the default).
    #[default]
    XForwarded,
    /// `rfc7239`: the standard `Forwarded` field (RFC 7239) only.
    Rfc7239,
    /// `both`: both kinds.
    Both,
}

impl ForwardedFields {
    /// Every value with its configuration name.
    pub const ALL: [(&'static str, ForwardedFields); 3] = [
        ("x-forwarded", ForwardedFields::XForwarded),
        ("rfc7239", ForwardedFields::Rfc7239),
        ("both", ForwardedFields::Both),
    ];
}

/// `[l7] park_after` when not set: 250 ms, long beyond the gap between a
/// busy client's requests, short against a keep-alive timeout.
pub const DEFAULT_PARK_AFTER: Duration = Duration::from_millis(250);

/// Most L7 worker threads.
pub const MAX_L7_WORKERS: usize = 256;

/// An L7 listener (`[[listener]]`): where the proxy accepts HTTP, and its
/// routes, like a `<VirtualHost>` with `ProxyPass` lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerConfig {
    /// Unique among listeners.
    pub name: String,
    /// The socket address to listen on; unique among listeners.
    pub address: SocketAddr,
    /// Tried in file order; the first that matches a request takes it.
    /// At least one.
    pub routes: Vec<RouteConfig>,
}

/// A route (`[[listener.route]]`): requests whose Host and path match go
/// to `pool`, like `ProxyPass /app/ balancer://app/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteConfig {
    /// `None` matches any Host; else an exact host name or `*.suffix`
    /// (which does not match the bare suffix), lower case, without port.
    pub host: Option<String>,
    /// A path prefix starting with `/`; `/` matches every path.
    pub path: String,
    /// The name of a pool in [`Config::pools`].
    pub pool: String,
    /// Send the client's Host to the backend (Apache `ProxyPreserveHost
    /// On`) instead of the member's address.
    pub preserve_host: bool,
    /// Rewrite Location, Content-Location and URI response fields that
    /// point at a member of the pool back to the Host the client asked
    /// for (Apache `ProxyPassReverse`).
    pub proxy_pass_reverse: bool,
}

/// How the L7 proxy picks a member of a pool for a request, by Apache
/// mod_proxy_balancer's names (`lbmethod=`). The algorithms are
/// documented in `fulcrum_l7::balancer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbMethod {
    /// `byrequests`: weighted round robin over requests (smooth, as nginx
    /// does); weight is Apache's loadfactor.
    ByRequests,
    /// `bybusyness`: least outstanding requests; ties by weighted round
    /// robin.
    ByBusyness,
    /// `bytraffic`: least bytes transferred per unit of weight.
    ByTraffic,
    /// `byip`: weighted rendezvous hash of the client's address, so a
    /// backend leaving moves only its own clients.
    ByIp,
    /// `p2c`: power of two choices over outstanding requests and a
    /// Peak-EWMA latency with a failure penalty (Finagle, linkerd).
    P2c,
}

impl LbMethod {
    /// Every method with its configuration name.
    pub const ALL: [(&'static str, LbMethod); 5] = [
        ("byrequests", LbMethod::ByRequests),
        ("bybusyness", LbMethod::ByBusyness),
        ("bytraffic", LbMethod::ByTraffic),
        ("byip", LbMethod::ByIp),
        ("p2c", LbMethod::P2c),
    ];
}

/// Sticky sessions of a pool (Apache `stickysession=`, `nofailover=`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StickyConfig {
    /// The cookie that carries the route (`ROUTEID`, or `JSESSIONID` in
    /// `JSESSIONID|jsessionid`); an HTTP token.
    pub cookie: String,
    /// The URL parameter that carries the route: the part after `|`, else
    /// the cookie name, as in Apache.
    pub param: String,
    /// `nofailover = true`: answer 503 when the backend a request names
    /// cannot serve it, instead of choosing another. Default false.
    pub nofailover: bool,
    /// `sticky_secure = true`: the cookie the proxy sets carries `Secure`.
    /// Default false.
    pub secure: bool,
}

impl Config {
    /// The pool called `name`. Every [`VipConfig::pool`] names one.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// The admin API / stats endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdminConfig {
    /// Where the admin HTTP API listens; default [`DEFAULT_ADMIN_LISTEN`].
    pub listen: SocketAddr,
}

/// A virtual service: traffic to (`address`, `port`, `protocol`) is spread
/// over the backends of `pool`. (address, port, protocol) is unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipConfig {
    /// Unique among VIPs.
    pub name: String,
    /// A unicast address: not unspecified, multicast or the IPv4
    /// broadcast address, and IPv4 always as [`IpAddr::V4`], never in
    /// IPv4-mapped IPv6 form.
    pub address: IpAddr,
    /// 1..=65535.
    pub port: u16,
    /// The transport protocol served.
    pub protocol: Protocol,
    /// How a packet's backend is chosen.
    pub scheduler: Scheduler,
    /// The name of a pool in [`Config::pools`].
    pub pool: String,
    /// Maglev lookup table size in slots: a prime in
    /// 3..=[`fulcrum_common::MAGLEV_MAX_TABLE_SIZE`].
    pub maglev_table_size: u32,
    /// Established flows of a backend marked down: kept (default) or re-picked.
    pub on_marked_down: OnMarkedDown,
    /// UDP only: a flow idle this long takes a fresh pick,
    /// [`MIN_UDP_IDLE_TIMEOUT`]..=[`MAX_UDP_IDLE_TIMEOUT`]; default
    /// [`DEFAULT_UDP_IDLE_TIMEOUT`] (also the value held for TCP VIPs,
    /// where it is unused).
    pub udp_idle_timeout: Duration,
    /// `forwarding = "dsr" | "ipip"`; default DSR.
    pub forwarding: Forwarding,
    /// The IEEE 802.1Q VLAN id (1..=4094) the VIP is reached on; `None`
    /// (the default): untagged frames only (or priority-tagged, VID 0).
    /// All VIPs of one address share it: an address lives on one segment.
    pub vlan: Option<u16>,
}

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, IP protocol 6.
    Tcp,
    /// UDP, IP protocol 17.
    Udp,
}

impl Protocol {
    /// The IP protocol number (IANA): 6 for TCP, 17 for UDP.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How a VIP picks a backend for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Maglev consistent hashing over the 5-tuple: a flow sticks to its
    /// backend, and few flows move when the backend set changes.
    Maglev,
    /// Maglev consistent hashing over the source address only: every flow
    /// of a client goes to the same backend.
    IpHash,
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::Maglev => "maglev",
            Scheduler::IpHash => "ip-hash",
        })
    }
}

/// A pool of backends (Apache: balancer) with its health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolConfig {
    /// Unique among pools.
    pub name: String,
    /// How every backend of the pool is checked.
    pub health_check: HealthCheckConfig,
    /// How the L7 proxy balances requests over the pool (L4 VIPs use their
    /// own scheduler); default `byrequests`.
    pub lbmethod: LbMethod,
    /// Sticky sessions (L7), when `stickysession` is set.
    pub sticky: Option<StickyConfig>,
    /// Passive health checks of the L7 proxy, when any of their keys is
    /// set (`failonstatus`, `failontimeout`, `error_limit`,
    /// `error_window`, `retry`); `None`: off.
    pub passive: Option<PassiveConfig>,
    /// HAProxy `slowstart`: a member coming back ramps its weight from
    /// nearly 0 to its configured weight over this time (L7 weighted
    /// methods). `None`: off.
    pub slow_start: Option<Duration>,
    /// In file order, at least one; addresses unique within the pool.
    pub backends: Vec<BackendConfig>,
}

/// A backend (real, Apache: member).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendConfig {
    /// A unicast address, under the same rules as [`VipConfig::address`].
    /// The same address may serve in several pools.
    pub address: IpAddr,
    /// Relative share of new flows (Apache: loadfactor), 0..=[`MAX_WEIGHT`].
    /// 0 drains the backend: it is still health checked but gets no new
    /// traffic.
    pub weight: u32,
    /// The backend's MAC address when configured: never a group
    /// (multicast or broadcast) address, and the same in every pool that
    /// configures one for this address. `None` means the daemon resolves
    /// it from the neighbour table.
    pub mac: Option<Mac>,
    /// The port the L7 proxy connects to; default the pool's health check
    /// port. (L4 forwards to the VIP's port and needs none.)
    pub port: u16,
    /// The member's route, the sticky-session id (Apache `route=`).
    pub route: Option<String>,
    /// Apache status flags set in the configuration (`status = "+H"`).
    pub status: MemberStatus,
    /// Apache `lbset`, 0..=[`MAX_LBSET`]: members of the lowest set that
    /// has a usable member take the traffic. Default 0.
    pub lbset: u8,
}

/// Largest `lbset` (Apache's limit).
pub const MAX_LBSET: u8 = 99;

/// A member's Apache mod_proxy_balancer status flags that an operator
/// sets (`status = "+D"`, `"+H"`, `"+N+R"`; Apache's syntax: each flag
/// letter, case-insensitive, after `+` to set it or `-` to clear it, a
/// letter without sign sets it). `E` (in error) is not configurable: the
/// L7 proxy's passive health sets it (see [`PassiveConfig`]).
///
/// What each flag means is decided in the effective state
/// (`fulcrum_state`), for L4 and L7 alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MemberStatus {
    /// `D`: disabled, takes no new traffic (sticky sessions fail over).
    pub disabled: bool,
    /// `S`: administratively stopped, takes no new traffic.
    pub stopped: bool,
    /// `N`: draining, only sessions already stuck to it (like weight 0).
    pub draining: bool,
    /// `H` (hot standby) or `R` (hot spare); at most one of the two.
    pub role: Role,
}

impl MemberStatus {
    /// Apache's letters of the flags set, as its balancer-manager shows
    /// them: `""` for none, else e.g. `"DH"`.
    pub fn letters(&self) -> String {
        let mut s = String::new();
        for (on, c) in [
            (self.disabled, 'D'),
            (self.stopped, 'S'),
            (self.draining, 'N'),
            (self.role == Role::HotStandby, 'H'),
            (self.role == Role::HotSpare, 'R'),
        ] {
            if on {
                s.push(c);
            }
        }
        s
    }
}

/// Passive health checks of a pool, judged by the L7 proxy on real
/// requests (Apache `failonstatus=`/`failontimeout=`/`retry=`, HAProxy
/// `observe layer7` with `error-limit`): `error_limit` failures of a
/// member within `error_window` put it In error (`E`) for `retry`, after
/// which it takes traffic again. A failure is a connect failure or
/// timeout, a broken exchange, a response status listed in
/// `failonstatus`, and with `failontimeout` a response timeout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PassiveConfig {
    /// Response statuses that count as failures (100..=599); default none.
    pub failonstatus: Vec<u16>,
    /// A response timeout (504 to the client) counts as a failure.
    /// Default false (Apache's default).
    pub failontimeout: bool,
    /// Failures within `error_window` that put the member in error,
    /// 1..=[`MAX_ERROR_LIMIT`]; default 1 (Apache: one failure).
    pub error_limit: u32,
    /// The window `error_limit` counts in; default 10 s, 100 ms..=1 h.
    pub error_window: Duration,
    /// How long a member stays in error (Apache `retry=`); default 60 s,
    /// 100 ms..=1 h.
    pub retry: Duration,
}

/// Largest `error_limit`.
pub const MAX_ERROR_LIMIT: u32 = 32;
/// Default `error_window`.
pub const DEFAULT_ERROR_WINDOW: Duration = Duration::from_secs(10);
/// Default `retry` (Apache's).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);

/// The active health check of a pool's backends, with the rise/fall
/// semantics of HAProxy and Apache `mod_proxy_hcheck` (implemented by the
/// `fulcrum-health` crate).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckConfig {
    /// What one check does.
    pub check: CheckKind,
    /// The backend port probed: the configured one, else the port shared by
    /// every VIP using the pool.
    pub port: u16,
    /// Time between the starts of two checks, [`MIN_INTERVAL`] (100 ms)
    /// ..=[`MAX_INTERVAL`] (1 h). Default [`DEFAULT_INTERVAL`] (2 s).
    pub interval: Duration,
    /// Bound on one whole check (connect, and for HTTP the exchange up to
    /// the response status), [`MIN_TIMEOUT`] (10 ms)..=`interval`. Default
    /// [`DEFAULT_TIMEOUT`] (1 s).
    pub timeout: Duration,
    /// Consecutive passes that bring a DOWN backend UP,
    /// 1..=[`MAX_RISE_FALL`]. Default [`DEFAULT_RISE`] (2).
    pub rise: u32,
    /// Consecutive failures that take an UP backend DOWN,
    /// 1..=[`MAX_RISE_FALL`]. Default [`DEFAULT_FALL`] (3).
    pub fall: u32,
}

/// What one health check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Passes when a TCP connection is established.
    Tcp,
    /// Passes when an HTTP/1.1 request gets a response with status
    /// `expect_status`.
    Http {
        /// An HTTP method token (RFC 9110 section 9); default `GET`.
        method: String,
        /// Origin-form request target, starting with `/`; default `/`.
        path: String,
        /// 100..=599; default 200.
        expect_status: u16,
        /// Host header; `None` sends the backend's `address:port`.
        host: Option<String>,
    },
}
