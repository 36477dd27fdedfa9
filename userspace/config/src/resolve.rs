//! Validation and resolution of the raw file into a [`Config`].
//!
//! Checks keep going after a problem so every problem is reported; an
//! invalid value is replaced by a placeholder that is never returned,
//! because any diagnostic makes the whole result an error.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::str::FromStr;
use std::time::Duration;

use fulcrum_common::{Mac, MAGLEV_MAX_TABLE_SIZE, MAX_REALS, MAX_VIPS};
use humantime_serde::re::humantime;
use hyper::http::uri::PathAndQuery;
use hyper::http::HeaderValue;
use toml::Spanned;

use super::raw::{CheckType, RawBackend, RawConfig, RawDatapath, RawHealthCheck, RawL7, RawListener, RawPool, RawRoute, RawTrack, RawVip, RawVrrp, RawVrrpSyncGroup};
use super::{
    DatapathSettings, DEFAULT_CONN_TABLE_SIZE, DEFAULT_UDP_IDLE_TIMEOUT, MAX_CONN_TABLE_SIZE, MAX_UDP_IDLE_TIMEOUT,
    MIN_CONN_TABLE_SIZE, MIN_UDP_IDLE_TIMEOUT,
};
use super::{
    ForwardedFields, L7Config, DEFAULT_PARK_AFTER, LbMethod, MemberStatus, PassiveConfig, Role, DEFAULT_ERROR_WINDOW, DEFAULT_RETRY, MAX_ERROR_LIMIT, MAX_LBSET, ListenerConfig, StickyConfig, RouteConfig, TrackConfig, TrackKind, VrrpAuthKey, VrrpConfig, VrrpNotify, MAX_L7_WORKERS, MIN_VRRP_AUTH_KEY_LEN,
    AdminConfig, BackendConfig, CheckKind, Config, Diagnostic, HealthCheckConfig, PoolConfig,
    VipConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_MAGLEV_TABLE_SIZE,
    DEFAULT_RISE, DEFAULT_TIMEOUT, MAX_INTERVAL, MAX_RISE_FALL, MAX_WEIGHT, MIN_INTERVAL,
    MIN_TIMEOUT,
};

/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

pub(super) fn resolve(raw: RawConfig, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut c = Checker {
        text,
        diagnostics: Vec::new(),
    };
    let interface = c.interface(&raw.interface);
    let listen = match raw.admin.and_then(|a| a.listen) {
        Some(listen) => c.socket_addr(&listen, "admin listen address"),
        None => DEFAULT_ADMIN_LISTEN
            .parse()
            .expect("the default listen address parses"),
    };
    let vips = c.vips(&raw.vip, &raw.pool);
    let pools = c.pools(&raw.pool, &raw.vip);
    let listeners = c.listeners(&raw.listener, &raw.pool);
    let l7 = c.l7(raw.l7.as_ref());
    let mut vrrp = c.vrrps(&raw.vrrp, &interface, &raw.pool, !raw.listener.is_empty());
    c.vrrp_sync_groups(&raw.vrrp_sync_group, &raw.vrrp, &mut vrrp);
    let datapath = c.datapath(raw.datapath.as_ref());
    c.check_ipip(&raw.vip, &raw.pool, raw.datapath.as_ref(), &datapath);

    if c.diagnostics.is_empty() {
        Ok(Config {
            interface,
            admin: AdminConfig { listen },
            vips,
            pools,
            listeners,
            l7,
            datapath,
            vrrp,
        })
    } else {
        c.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(c.diagnostics)
    }
}

struct Checker<'a> {
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        self.diagnostics
            .push(Diagnostic::at(self.text, span.start, message));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        Diagnostic::at(self.text, span.start, String::new()).line
    }

    fn interface(&mut self, name: &Spanned<String>) -> String {
        let n = name.get_ref();
        // The kernel's own rule (dev_valid_name): these names can never
        // exist, so reject them here rather than at attach time.
        if n.is_empty()
            || n.len() > MAX_IFNAME_LEN
            || n == "."
            || n == ".."
            || n.chars()
                .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace())
        {
            self.error(
                name.span(),
                format!(
                    "invalid interface name {n:?}: must be 1 to {MAX_IFNAME_LEN} bytes \
                     without '/', ':' or whitespace"
                ),
            );
        }
        n.clone()
    }

    fn socket_addr(&mut self, value: &Spanned<String>, what: &str) -> SocketAddr {
        value.get_ref().parse().unwrap_or_else(|_| {
            self.error(
                value.span(),
                format!(
                    "invalid {what} {:?}: expected address:port, such as 127.0.0.1:9180 or [::1]:9180",
                    value.get_ref()
                ),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn ip(&mut self, value: &Spanned<String>, what: &str) -> Option<IpAddr> {
        match value.get_ref().parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(
                    value.span(),
                    format!(
                        "invalid {what} {:?}: expected an IPv4 or IPv6 address",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// `value` as an address, reported if it cannot name one host. Such an
    /// address is still returned, so that duplicate checks see it.
    fn host_address(&mut self, value: &Spanned<String>, what: &str) -> Option<IpAddr> {
        let address = self.ip(value, what)?;
        if let Some(why) = not_one_host(address) {
            self.error(value.span(), format!("{what} {:?} {why}", value.get_ref()));
        }
        Some(address)
    }

    /// `value` if it lies in `range`, else an error and `None`.
    fn int_in<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        range: RangeInclusive<i64>,
        what: &str,
    ) -> Option<T> {
        let v = *value.get_ref();
        if range.contains(&v) {
            T::try_from(v).ok()
        } else {
            self.error(
                value.span(),
                format!(
                    "{what} {v} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    fn name(
        &mut self,
        name: &Spanned<String>,
        kind: &str,
        seen: &mut HashMap<String, Range<usize>>,
    ) {
        let n = name.get_ref();
        if n.is_empty() {
            self.error(name.span(), format!("{kind} name must not be empty"));
        } else if let Some(first) = seen.get(n) {
            let line = self.line_of(first);
            self.error(
                name.span(),
                format!("duplicate {kind} name {n:?} (first defined at line {line})"),
            );
        } else {
            seen.insert(n.clone(), name.span());
        }
    }

    fn vips(&mut self, raw: &[RawVip], pools: &[RawPool]) -> Vec<VipConfig> {
        let mut names = HashMap::new();
        // Keyed by the canonical address, as the datapath keys its VIPs
        // (IPv4 in mapped form), so no second spelling of an address
        // makes a second VIP.
        let mut services: HashMap<(IpAddr, u16, super::Protocol), Range<usize>> = HashMap::new();
        // The VLAN of each address's first VIP, and where it was said.
        let mut vlans: HashMap<IpAddr, (Option<u16>, Range<usize>)> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            if i == MAX_VIPS as usize {
                self.error(
                    v.name.span(),
                    format!("too many VIPs: the datapath has room for {MAX_VIPS}, this is VIP number {}", i + 1),
                );
            }
            self.name(&v.name, "VIP", &mut names);
            let address = self.host_address(&v.address, "VIP address");
            let port = self.int_in::<u16>(&v.port, 1..=65535, "port");
            if let (Some(address), Some(port)) = (address, port) {
                let address = address.to_canonical();
                let key = (address, port, v.protocol);
                if let Some(first) = services.get(&key) {
                    let line = self.line_of(first);
                    self.error(
                        v.address.span(),
                        format!(
                            "duplicate VIP {} port {port}/{}: already defined at line {line}",
                            address, v.protocol
                        ),
                    );
                } else {
                    services.insert(key, v.address.span());
                }
            }
            if !pools.iter().any(|p| p.name.get_ref() == v.pool.get_ref()) {
                self.error(
                    v.pool.span(),
                    format!(
                        "unknown pool {:?}: no [[pool]] has this name",
                        v.pool.get_ref()
                    ),
                );
            }
            let maglev_table_size = match &v.maglev_table_size {
                Some(size) => self.table_size(size),
                None => DEFAULT_MAGLEV_TABLE_SIZE,
            };
            let udp_idle_timeout = match (&v.udp_idle_timeout, v.protocol) {
                (Some(t), super::Protocol::Tcp) => {
                    self.error(t.span(), "`udp_idle_timeout` applies only to protocol = \"udp\" VIPs (TCP entries live until the connection table evicts them)".to_owned());
                    DEFAULT_UDP_IDLE_TIMEOUT
                }
                (t, _) => self
                    .duration(t.as_ref(), DEFAULT_UDP_IDLE_TIMEOUT, MIN_UDP_IDLE_TIMEOUT..=MAX_UDP_IDLE_TIMEOUT, "udp_idle_timeout")
                    .unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT),
            };
            let vlan = v.vlan.as_ref().and_then(|id| self.int_in::<u16>(id, 1..=4094, "vlan"));
            if let Some(address) = address {
                let span = v.vlan.as_ref().map_or_else(|| v.address.span(), |id| id.span());
                match vlans.get(&address.to_canonical()) {
                    Some((first, at)) if *first != vlan => {
                        let line = self.line_of(at);
                        let name = |id: Option<u16>| id.map_or_else(|| "untagged".to_owned(), |id| format!("vlan {id}"));
                        self.error(
                            span,
                            format!(
                                "VIP address {address} is {} here but {} at line {line}: every VIP of an address must be on one VLAN",
                                name(vlan),
                                name(*first)
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        vlans.insert(address.to_canonical(), (vlan, span));
                    }
                }
            }
            out.push(VipConfig {
                name: v.name.get_ref().clone(),
                address: address.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                port: port.unwrap_or(0),
                protocol: v.protocol,
                scheduler: v.scheduler,
                pool: v.pool.get_ref().clone(),
                maglev_table_size,
                on_marked_down: v.on_marked_down.unwrap_or_default(),
                udp_idle_timeout,
                forwarding: v.forwarding.as_ref().map(|f| *f.get_ref()).unwrap_or_default(),
                vlan,
            });
        }
        out
    }

    /// An IPIP VIP encapsulates in its own family only (IPv4 in IPv4,
    /// IPv6 in IPv6), so its pool's backends must have the VIP's family,
    /// and the outer source prefix of that family must be configured.
    fn check_ipip(&mut self, vips: &[RawVip], pools: &[RawPool], raw: Option<&RawDatapath>, settings: &DatapathSettings) {
        for v in vips {
            let Some(forwarding) = &v.forwarding else { continue };
            if *forwarding.get_ref() != super::Forwarding::Ipip {
                continue;
            }
            let Ok(address) = v.address.get_ref().parse::<IpAddr>() else { continue };
            let v4 = address.to_canonical().is_ipv4();
            let (family, other, missing) = if v4 {
                ("IPv4", "IPv6", settings.ipip_source_v4.is_none() && raw.and_then(|d| d.ipip_source_v4.as_ref()).is_none())
            } else {
                ("IPv6", "IPv4", settings.ipip_source_v6.is_none() && raw.and_then(|d| d.ipip_source_v6.as_ref()).is_none())
            };
            if missing {
                let key = if v4 { "ipip_source_v4" } else { "ipip_source_v6" };
                self.error(
                    forwarding.span(),
                    format!("forwarding = \"ipip\" for an {family} VIP needs `[datapath] {key}`, the prefix its outer source addresses come from"),
                );
            }
            let backends = pools.iter().filter(|p| p.name.get_ref() == v.pool.get_ref()).flat_map(|p| &p.backend);
            for b in backends {
                let Ok(backend) = b.address.get_ref().parse::<IpAddr>() else { continue };
                if backend.to_canonical().is_ipv4() != v4 {
                    let line = self.line_of(&b.address.span());
                    self.error(
                        forwarding.span(),
                        format!(
                            "forwarding = \"ipip\" encapsulates {family} in {family}, but backend {} of pool {:?} (line {line}) is {other}",
                            b.address.get_ref(),
                            v.pool.get_ref()
                        ),
                    );
                }
            }
        }
    }

    /// `addr/len` with `len` in `lengths` and no host bits set.
    fn prefix(&mut self, value: &Spanned<String>, lengths: RangeInclusive<u8>, v4: bool, what: &str) -> Option<(IpAddr, u8)> {
        let text = value.get_ref();
        let parsed = text.split_once('/').and_then(|(a, l)| Some((a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?)));
        let Some((address, len)) = parsed else {
            self.error(value.span(), format!("{what} {text:?} is not a prefix like {}", if v4 { "\"198.18.2.0/24\"" } else { "\"fd00:18:2::/112\"" }));
            return None;
        };
        if address.is_ipv4() != v4 {
            self.error(value.span(), format!("{what} {text:?} is not an {} prefix", if v4 { "IPv4" } else { "IPv6" }));
            return None;
        }
        if !lengths.contains(&len) {
            self.error(value.span(), format!("{what} {text:?}: prefix length {len} is out of range {}..={}", lengths.start(), lengths.end()));
            return None;
        }
        let bits: u128 = match address {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        };
        if len < 128 && bits << len != 0 {
            self.error(value.span(), format!("{what} {text:?} has host bits set: the flow hash fills them"));
            return None;
        }
        Some((address, len))
    }

    fn datapath(&mut self, raw: Option<&RawDatapath>) -> DatapathSettings {
        let conn_table_size = match raw.and_then(|d| d.conn_table_size.as_ref()) {
            Some(size) => self
                .int_in(size, i64::from(MIN_CONN_TABLE_SIZE)..=i64::from(MAX_CONN_TABLE_SIZE), "conn_table_size")
                .unwrap_or(DEFAULT_CONN_TABLE_SIZE),
            None => DEFAULT_CONN_TABLE_SIZE,
        };
        let ipip_source_v4 = raw.and_then(|d| d.ipip_source_v4.as_ref()).and_then(|p| {
            match self.prefix(p, 8..=32, true, "ipip_source_v4")? {
                (IpAddr::V4(a), len) => Some((a, len)),
                _ => None,
            }
        });
        let ipip_source_v6 = raw.and_then(|d| d.ipip_source_v6.as_ref()).and_then(|p| {
            match self.prefix(p, 96..=128, false, "ipip_source_v6")? {
                (IpAddr::V6(a), len) => Some((a, len)),
                _ => None,
            }
        });
        DatapathSettings { conn_table_size, ipip_source_v4, ipip_source_v6 }
    }

    fn table_size(&mut self, size: &Spanned<i64>) -> u32 {
        let Some(n) = self.int_in::<u32>(
            size,
            3..=i64::from(MAGLEV_MAX_TABLE_SIZE),
            "maglev_table_size",
        ) else {
            return 0;
        };
        // Maglev's permutation fills every slot only when the table size is
        // prime (Eisenbud et al., NSDI 2016, section 3.4).
        if !is_prime(n) {
            self.error(
                size.span(),
                format!("maglev_table_size {n} is not a prime (try 65537, 16381, 4093 or 251)"),
            );
        }
        n
    }

    fn pools(&mut self, raw: &[RawPool], vips: &[RawVip]) -> Vec<PoolConfig> {
        let mut names = HashMap::new();
        let mut total_backends = 0usize;
        let mut macs = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for p in raw {
            self.name(&p.name, "pool", &mut names);
            if p.backend.is_empty() {
                self.error(
                    p.name.span(),
                    format!(
                        "pool {:?} has no backends: add at least one [[pool.backend]]",
                        p.name.get_ref()
                    ),
                );
            }
            let mut addresses = HashMap::new();
            let mut backends = Vec::with_capacity(p.backend.len());
            for b in &p.backend {
                total_backends += 1;
                if total_backends == MAX_REALS as usize + 1 {
                    self.error(
                        b.address.span(),
                        format!("too many backends: the datapath has room for {MAX_REALS} over all pools"),
                    );
                }
                backends.push(self.backend(b, p, &mut addresses, &mut macs));
            }
            let health_check = self.health_check(p, vips);
            for (backend, raw) in backends.iter_mut().zip(&p.backend) {
                if raw.port.is_none() {
                    backend.port = health_check.port;
                }
            }
            let lbmethod = self.lbmethod(p.lbmethod.as_ref());
            let sticky = self.sticky(p, &backends);
            let passive = self.passive(p);
            let slow_start = p.slow_start.as_ref().and_then(|v| {
                self.duration(Some(v), Duration::ZERO, Duration::from_millis(100)..=Duration::from_secs(3600), "slow_start")
            });
            out.push(PoolConfig {
                name: p.name.get_ref().clone(),
                health_check,
                lbmethod,
                sticky,
                passive,
                slow_start,
                backends,
            });
        }
        out
    }

    /// `seen` holds the addresses met so far in this pool, `macs` the MAC
    /// configured for each address in any pool so far.
    fn backend<'r>(
        &mut self,
        b: &'r RawBackend,
        pool: &'r RawPool,
        seen: &mut HashMap<IpAddr, Range<usize>>,
        macs: &mut HashMap<IpAddr, (Mac, &'r RawPool, Range<usize>)>,
    ) -> BackendConfig {
        // Canonical, as the datapath keys its backends: IPv4 in mapped form.
        let address = self
            .host_address(&b.address, "backend address")
            .map(|a| a.to_canonical());
        let mut duplicate = false;
        if let Some(a) = address {
            if let Some(first) = seen.get(&a) {
                let line = self.line_of(first);
                self.error(
                    b.address.span(),
                    format!("duplicate backend {a} in this pool (first defined at line {line})"),
                );
                duplicate = true;
            } else {
                seen.insert(a, b.address.span());
            }
        }
        let weight = match &b.weight {
            Some(w) => self
                .int_in(w, 0..=i64::from(MAX_WEIGHT), "weight")
                .unwrap_or(0),
            None => 1,
        };
        let mac = b.mac.as_ref().and_then(|m| self.mac(m));
        // The datapath keeps one MAC per backend address, whatever pools
        // it serves in: a second one would be ignored. A duplicate within
        // the pool is already reported.
        if let (Some(a), Some(mac), Some(m), false) = (address, mac, &b.mac, duplicate) {
            match macs.get(&a) {
                Some((other, other_pool, other_span)) if *other != mac => {
                    let line = self.line_of(other_span);
                    self.error(
                        m.span(),
                        format!(
                            "backend {a} has MAC {mac} here but {other} in pool {:?} (line {line}): \
                             an address has one MAC over all pools",
                            other_pool.name.get_ref()
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    macs.insert(a, (mac, pool, m.span()));
                }
            }
        }
        let port = b.port.as_ref().and_then(|p| self.int_in(p, 1..=65535, "port")).unwrap_or(0);
        let route = b.route.as_ref().map(|r| {
            let text = r.get_ref();
            // The route travels in a cookie value and a URL parameter.
            if text.is_empty() || !text.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
                self.error(r.span(), format!("invalid route {text:?}: use letters, digits, '-', '_' and '.'"));
            }
            text.clone()
        });
        let status = b.status.as_ref().map(|s| self.status(s)).unwrap_or_default();
        let lbset = b.lbset.as_ref().and_then(|l| self.int_in(l, 0..=i64::from(MAX_LBSET), "lbset")).unwrap_or(0);
        BackendConfig {
            address: address.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            weight,
            mac,
            port,
            route,
            status,
            lbset,
        }
    }

    /// Apache's `status=` syntax: flag letters, each set after `+` (or
    /// without sign) and cleared after `-`.
    fn status(&mut self, value: &Spanned<String>) -> MemberStatus {
        let text = value.get_ref();
        let mut status = MemberStatus::default();
        let (mut standby, mut spare) = (false, false);
        let mut set = true;
        let mut flags = 0;
        for c in text.chars() {
            match c.to_ascii_uppercase() {
                '+' => set = true,
                '-' => set = false,
                'D' => status.disabled = set,
                'S' => status.stopped = set,
                'N' => status.draining = set,
                'H' => standby = set,
                'R' => spare = set,
                'E' => {
                    self.error(value.span(), format!("invalid status {text:?}: E (in error) is set by passive health checks, not configured"));
                    return MemberStatus::default();
                }
                _ => {
                    self.error(
                        value.span(),
                        format!("invalid status {text:?}: {c:?} is not a flag; use D (disabled), S (stopped), N (draining), H (hot standby), R (hot spare), each after + or -, e.g. \"+H\""),
                    );
                    return MemberStatus::default();
                }
            }
            if c.is_ascii_alphabetic() {
                flags += 1;
            }
        }
        if flags == 0 {
            self.error(value.span(), format!("invalid status {text:?}: no flag; use e.g. \"+H\" or \"+D\""));
        }
        status.role = match (standby, spare) {
            (true, true) => {
                self.error(value.span(), format!("invalid status {text:?}: a member is a hot standby (H) or a hot spare (R), not both"));
                Role::Active
            }
            (true, false) => Role::HotStandby,
            (false, true) => Role::HotSpare,
            (false, false) => Role::Active,
        };
        status
    }

    /// The passive health keys of pool `p`; `None` when none is set.
    fn passive(&mut self, p: &RawPool) -> Option<PassiveConfig> {
        if p.failonstatus.is_none() && p.failontimeout.is_none() && p.error_limit.is_none() && p.error_window.is_none() && p.retry.is_none() {
            return None;
        }
        let mut failonstatus = Vec::new();
        for s in p.failonstatus.as_ref().map_or(&[][..], |v| v.get_ref().as_slice()) {
            if let Some(code) = self.int_in::<u16>(s, 100..=599, "failonstatus") {
                if failonstatus.contains(&code) {
                    self.error(s.span(), format!("failonstatus lists {code} twice"));
                }
                failonstatus.push(code);
            }
        }
        let error_limit = p.error_limit.as_ref().and_then(|l| self.int_in(l, 1..=i64::from(MAX_ERROR_LIMIT), "error_limit")).unwrap_or(1);
        let bounds = Duration::from_millis(100)..=Duration::from_secs(3600);
        let error_window = self.duration(p.error_window.as_ref(), DEFAULT_ERROR_WINDOW, bounds.clone(), "error_window").unwrap_or(DEFAULT_ERROR_WINDOW);
        let retry = self.duration(p.retry.as_ref(), DEFAULT_RETRY, bounds, "retry").unwrap_or(DEFAULT_RETRY);
        Some(PassiveConfig {
            failonstatus,
            failontimeout: p.failontimeout.as_ref().is_some_and(|f| *f.get_ref()),
            error_limit,
            error_window,
            retry,
        })
    }

    fn mac(&mut self, value: &Spanned<String>) -> Option<Mac> {
        let why = match value.get_ref().parse::<Mac>() {
            // The group bit: frames to such an address reach many hosts,
            // never one backend.
            Ok(mac) if mac.is_group() => {
                "a multicast or broadcast address cannot be a backend".to_owned()
            }
            Ok(mac) => return Some(mac),
            Err(e) => e.to_string(),
        };
        self.error(
            value.span(),
            format!("invalid MAC address {:?}: {why}", value.get_ref()),
        );
        None
    }

    fn track(
        &mut self,
        t: &RawTrack,
        pools: &[RawPool],
        command: impl Fn(&mut Self, &Option<Spanned<Vec<String>>>) -> Option<Vec<String>>,
        xdp_interface: &str,
        has_listeners: bool,
    ) -> Option<TrackConfig> {
        let weight = t.weight.as_ref().map_or(Some(0), |w| self.int_in(w, -254..=254, "weight"));
        let missing = |c: &mut Self, field: &str| {
            c.error(t.kind.span(), format!("a {:?} track needs `{field}`", t.kind.get_ref()));
            None
        };
        let kind = match t.kind.get_ref().as_str() {
            "pool" => {
                let Some(pool) = &t.pool else { return missing(self, "pool") };
                if !pools.iter().any(|p| p.name.get_ref() == pool.get_ref()) {
                    self.error(pool.span(), format!("track names pool {:?}, which is not defined", pool.get_ref()));
                }
                let min_up = t.min_up.as_ref().map_or(Some(1), |m| self.int_in(m, 1..=i64::from(MAX_REALS), "min_up"))?;
                TrackKind::Pool { pool: pool.get_ref().clone(), min_up }
            }
            "interface" => {
                let Some(name) = &t.interface else { return missing(self, "interface") };
                TrackKind::Interface { name: self.interface(name) }
            }
            "script" => {
                if t.command.is_none() {
                    return missing(self, "command");
                }
                let command = command(self, &t.command)?;
                let interval = self.duration(t.interval.as_ref(), Duration::from_secs(2), Duration::from_millis(100)..=Duration::from_secs(3600), "interval")?;
                let timeout = self.duration(t.timeout.as_ref(), Duration::from_secs(1), Duration::from_millis(10)..=interval, "timeout")?;
                TrackKind::Script { command, interval, timeout }
            }
            "xdp" => TrackKind::Xdp { interface: xdp_interface.to_owned() },
            "l7" => {
                if !has_listeners {
                    self.error(t.kind.span(), "an \"l7\" track needs at least one [[listener]]".to_owned());
                    return None;
                }
                TrackKind::L7
            }
            other => {
                self.error(t.kind.span(), format!("unknown track kind {other:?}: \"pool\", \"interface\", \"script\", \"xdp\" or \"l7\""));
                return None;
            }
        };
        Some(TrackConfig { kind, weight: weight? })
    }

    fn vrrps(&mut self, raw: &[RawVrrp], default_interface: &str, pools: &[RawPool], has_listeners: bool) -> Vec<VrrpConfig> {
        let mut names = HashMap::new();
        let mut routers: HashMap<(String, u8, bool), Range<usize>> = HashMap::new();
        let mut owners: HashMap<IpAddr, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for v in raw {
            self.name(&v.name, "vrrp instance", &mut names);
            let interface = match &v.interface {
                Some(i) => self.interface(i),
                None => default_interface.to_owned(),
            };
            let vrid = self.int_in(&v.vrid, 1..=255, "vrid").unwrap_or(1);
            let version = match &v.version {
                Some(ver) if *ver.get_ref() == 2 || *ver.get_ref() == 3 => *ver.get_ref() as u8,
                Some(ver) => {
                    self.error(ver.span(), format!("unknown VRRP version {}: 2 (RFC 3768) or 3 (RFC 9568)", ver.get_ref()));
                    3
                }
                None => 3,
            };
            let priority = self.int_in(&v.priority, 1..=255, "priority").unwrap_or(100);
            let advert_interval = match version {
                2 => self.duration(v.advert_interval.as_ref(), Duration::from_secs(1), Duration::from_secs(1)..=Duration::from_secs(255), "advert_interval"),
                _ => self.duration(v.advert_interval.as_ref(), Duration::from_secs(1), Duration::from_millis(10)..=Duration::from_millis(40_950), "advert_interval"),
            };
            let unit = if version == 2 { Duration::from_secs(1) } else { Duration::from_millis(10) };
            if let (Some(value), Some(interval)) = (&v.advert_interval, advert_interval) {
                if interval.as_nanos() % unit.as_nanos() != 0 {
                    let unit_name = if version == 2 { "whole seconds" } else { "whole centiseconds (10 ms)" };
                    self.error(value.span(), format!("advert_interval {:?} is not in {unit_name}, the unit VRRPv{version} carries", value.get_ref()));
                }
            }
            let preempt_delay = self.duration(v.preempt_delay.as_ref(), Duration::ZERO, Duration::ZERO..=Duration::from_secs(3600), "preempt_delay");
            let password = v.password.as_ref().map(|p| {
                if version != 2 {
                    self.error(p.span(), "password is VRRPv2 authentication (RFC 3768); VRRPv3 has none".to_owned());
                } else if p.get_ref().is_empty() || p.get_ref().len() > 8 {
                    self.error(p.span(), "password must be 1 to 8 bytes (RFC 2338 Auth Type 1)".to_owned());
                }
                p.get_ref().clone()
            });
            let mut addresses = Vec::new();
            for a in v.addresses.get_ref() {
                let (ip_text, prefix_text) = a.get_ref().split_once('/').unwrap_or((a.get_ref(), ""));
                let ip = match ip_text.parse::<IpAddr>() {
                    Ok(ip) if not_one_host(ip).is_none() => ip,
                    _ => {
                        self.error(a.span(), format!("invalid VRRP address {:?}: expected a unicast address with optional /prefix", a.get_ref()));
                        continue;
                    }
                };
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix = if prefix_text.is_empty() { Some(max) } else { prefix_text.parse::<u8>().ok().filter(|p| *p <= max) };
                let Some(prefix) = prefix else {
                    self.error(a.span(), format!("invalid prefix length in {:?}: 0..={max}", a.get_ref()));
                    continue;
                };
                if let Some(first) = owners.get(&ip) {
                    let line = self.line_of(first);
                    self.error(a.span(), format!("address {ip} already belongs to a VRRP instance (line {line})"));
                } else {
                    owners.insert(ip, a.span());
                }
                addresses.push((ip, prefix));
            }
            if v.addresses.get_ref().is_empty() {
                self.error(v.addresses.span(), "a VRRP instance needs at least one address".to_owned());
            }
            let v4 = addresses.first().is_none_or(|(a, _)| a.is_ipv4());
            if addresses.iter().any(|(a, _)| a.is_ipv4() != v4) {
                self.error(v.addresses.span(), "a VRRP instance's addresses are of one family: use one instance per family".to_owned());
            }
            if version == 2 && !v4 {
                self.error(v.addresses.span(), "VRRPv2 (RFC 3768) is IPv4 only: use version = 3 for IPv6".to_owned());
            }
            let mut unicast_peers = Vec::new();
            for p in &v.unicast_peers {
                match p.get_ref().parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == v4 => unicast_peers.push(ip),
                    _ => self.error(p.span(), format!("invalid unicast peer {:?}: an address of the instance's family", p.get_ref())),
                }
            }
            let router = (interface.clone(), vrid, v4);
            if let Some(first) = routers.get(&router) {
                let line = self.line_of(first);
                self.error(v.vrid.span(), format!("VRID {vrid} is already used on {interface} for this family (line {line})"));
            } else {
                routers.insert(router, v.vrid.span());
            }
            let command = |c: &mut Self, value: &Option<Spanned<Vec<String>>>| {
                let value = value.as_ref()?;
                if value.get_ref().first().is_none_or(|program| program.is_empty()) {
                    c.error(value.span(), "a command is an argument list whose first element is the program, such as [\"/usr/local/bin/notify\", \"master\"]".to_owned());
                }
                Some(value.get_ref().clone())
            };
            let notify = VrrpNotify {
                master: command(self, &v.notify_master),
                backup: command(self, &v.notify_backup),
                fault: command(self, &v.notify_fault),
                stop: command(self, &v.notify_stop),
            };
            let track = v.track.iter().filter_map(|t| self.track(t, pools, command, default_interface, has_listeners)).collect();
            let auth_key = self.vrrp_auth_key(v);
            out.push(VrrpConfig {
                auth_key,
                sync_group: None,
                notify,
                track,
                name: v.name.get_ref().clone(),
                interface,
                vrid,
                version,
                priority,
                advert_interval: advert_interval.unwrap_or(Duration::from_secs(1)),
                preempt: v.preempt.unwrap_or(true),
                preempt_delay: preempt_delay.unwrap_or_default(),
                password,
                addresses,
                unicast_peers,
                virtual_mac: v.virtual_mac.unwrap_or(false),
            });
        }
        out
    }

    /// `auth_key_file` or `auth_key` (not both). The file is only named
    /// here: the daemon reads it at start, so the key never sits in the
    /// parsed configuration.
    fn vrrp_auth_key(&mut self, v: &RawVrrp) -> Option<VrrpAuthKey> {
        match (&v.auth_key_file, &v.auth_key) {
            (Some(_), Some(inline)) => {
                self.error(inline.span(), "auth_key and auth_key_file are exclusive: keep auth_key_file".to_owned());
                None
            }
            (Some(file), None) => {
                let path = std::path::PathBuf::from(file.get_ref());
                if !path.is_absolute() {
                    self.error(file.span(), format!("auth_key_file {:?} must be an absolute path", file.get_ref()));
                }
                Some(VrrpAuthKey::File(path))
            }
            (None, Some(inline)) => {
                // The message never quotes the key.
                let len = inline.get_ref().trim_end().len();
                if len < MIN_VRRP_AUTH_KEY_LEN {
                    self.error(inline.span(), format!("auth_key is {len} bytes; at least {MIN_VRRP_AUTH_KEY_LEN} are needed (e.g. `openssl rand -base64 32`)"));
                }
                Some(VrrpAuthKey::Inline(inline.get_ref().trim_end().to_owned()))
            }
            (None, None) => None,
        }
    }

    /// `[[vrrp_sync_group]]`: records each group on its instances
    /// (`resolved` is `raw_vrrp` resolved, same order).
    fn vrrp_sync_groups(&mut self, raw: &[RawVrrpSyncGroup], raw_vrrp: &[RawVrrp], resolved: &mut [VrrpConfig]) {
        let mut names = HashMap::new();
        // Instance name -> where it was first put in a group.
        let mut member_of: HashMap<String, Range<usize>> = HashMap::new();
        for g in raw {
            self.name(&g.name, "vrrp sync group", &mut names);
            if g.instances.get_ref().len() < 2 {
                self.error(g.instances.span(), "a sync group needs at least two instances".to_owned());
            }
            for i in g.instances.get_ref() {
                let name = i.get_ref();
                let Some(index) = raw_vrrp.iter().position(|v| v.name.get_ref() == name) else {
                    self.error(i.span(), format!("VRRP instance {name:?} is not defined"));
                    continue;
                };
                if let Some(first) = member_of.get(name) {
                    let line = self.line_of(first);
                    self.error(i.span(), format!("VRRP instance {name:?} is already in a sync group (line {line})"));
                    continue;
                }
                member_of.insert(name.clone(), i.span());
                if let Some(v) = resolved.get_mut(index) {
                    v.sync_group = Some(g.name.get_ref().clone());
                }
            }
        }
    }

    fn lbmethod(&mut self, value: Option<&Spanned<String>>) -> LbMethod {
        let Some(value) = value else { return LbMethod::ByRequests };
        if let Some((_, m)) = LbMethod::ALL.iter().find(|(name, _)| name == value.get_ref()) {
            return *m;
        }
        let names: Vec<String> = LbMethod::ALL.iter().map(|(n, _)| format!("{n:?}")).collect();
        self.error(
            value.span(),
            format!("unknown lbmethod {:?}: supported are {}", value.get_ref(), names.join(", ")),
        );
        LbMethod::ByRequests
    }

    /// `stickysession`, `nofailover` and `sticky_secure` of pool `p`,
    /// whose backends resolved to `backends`.
    fn sticky(&mut self, p: &RawPool, backends: &[BackendConfig]) -> Option<StickyConfig> {
        let Some(value) = &p.stickysession else {
            // The two flags mean nothing without it: say so rather than
            // let an operator believe sessions are sticky.
            for (flag, name) in [(&p.nofailover, "nofailover"), (&p.sticky_secure, "sticky_secure")] {
                if let Some(f) = flag {
                    self.error(f.span(), format!("{name} needs stickysession in this pool"));
                }
            }
            return None;
        };
        let text = value.get_ref();
        let (cookie, param) = text.split_once('|').unwrap_or((text, text));
        // RFC 9110 token characters, as a cookie name (RFC 6265) must be.
        let token = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`~".contains(&c));
        if !token(cookie) || !token(param) {
            self.error(
                value.span(),
                format!("invalid stickysession {text:?}: use NAME or COOKIE|param, names of letters, digits and !#$%&'*+-.^_`~"),
            );
        }
        // Routes name backends: one name, one backend.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, b) in backends.iter().enumerate() {
            let Some(r) = b.route.as_deref() else { continue };
            if let Some(first) = seen.insert(r, i) {
                let span = p.backend[i].route.as_ref().map_or_else(|| value.span(), Spanned::span);
                let line = self.line_of(&p.backend[first].route.as_ref().map_or_else(|| value.span(), Spanned::span));
                self.error(span, format!("duplicate route {r:?} in this sticky pool (first at line {line})"));
            }
        }
        if seen.is_empty() {
            self.error(value.span(), "stickysession needs at least one backend with a route in this pool".to_owned());
        }
        Some(StickyConfig {
            cookie: cookie.to_owned(),
            param: param.to_owned(),
            nofailover: p.nofailover.as_ref().is_some_and(|f| *f.get_ref()),
            secure: p.sticky_secure.as_ref().is_some_and(|f| *f.get_ref()),
        })
    }

    fn l7(&mut self, raw: Option<&RawL7>) -> L7Config {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = raw
            .and_then(|r| r.workers.as_ref())
            .and_then(|w| self.int_in(w, 1..=MAX_L7_WORKERS as i64, "workers"))
            .unwrap_or(cpus);
        let limit = Duration::from_millis(10)..=Duration::from_secs(24 * 3600);
        let mut d = |v: Option<&Spanned<String>>, default: u64, what: &str| {
            self.duration(v, Duration::from_secs(default), limit.clone(), what).unwrap_or(Duration::from_secs(default))
        };
        let connect_timeout = d(raw.and_then(|r| r.connect_timeout.as_ref()), 5, "connect_timeout");
        let response_timeout = d(raw.and_then(|r| r.response_timeout.as_ref()), 60, "response_timeout");
        let header_read_timeout = d(raw.and_then(|r| r.header_read_timeout.as_ref()), 10, "header_read_timeout");
        let keepalive_timeout = d(raw.and_then(|r| r.keepalive_timeout.as_ref()), 15, "keepalive_timeout");
        let request_timeout = d(raw.and_then(|r| r.request_timeout.as_ref()), 60, "request_timeout");
        let drain_timeout = d(raw.and_then(|r| r.drain_timeout.as_ref()), 10, "drain_timeout");
        let websocket_idle_timeout = d(raw.and_then(|r| r.websocket_idle_timeout.as_ref()), 3600, "websocket_idle_timeout");
        let park_after = self
            .duration(raw.and_then(|r| r.park_after.as_ref()), DEFAULT_PARK_AFTER, limit.clone(), "park_after")
            .unwrap_or(DEFAULT_PARK_AFTER);
        let mut n = |v: Option<&Spanned<i64>>, range: RangeInclusive<i64>, default: i64, what: &str| {
            v.and_then(|v| self.int_in::<i64>(v, range, what)).unwrap_or(default)
        };
        let max_header_size = n(raw.and_then(|r| r.max_header_size.as_ref()), 1024..=1 << 20, 32 * 1024, "max_header_size") as usize;
        let max_headers = n(raw.and_then(|r| r.max_headers.as_ref()), 1..=1000, 100, "max_headers") as usize;
        let max_uri_len = n(raw.and_then(|r| r.max_uri_len.as_ref()), 64..=65534, 8190, "max_uri_len") as usize;
        let max_body_size = n(raw.and_then(|r| r.max_body_size.as_ref()), 0..=i64::MAX, 1 << 30, "max_body_size") as u64;
        let forwarded = match raw.and_then(|r| r.forwarded.as_ref()) {
            None => ForwardedFields::default(),
            Some(v) => match ForwardedFields::ALL.iter().find(|(name, _)| name == v.get_ref()) {
                Some((_, f)) => *f,
                None => {
                    self.error(v.span(), format!("unknown forwarded {:?}: supported are \"x-forwarded\", \"rfc7239\", \"both\"", v.get_ref()));
                    ForwardedFields::default()
                }
            },
        };
        let access_log = raw.and_then(|r| r.access_log.as_ref()).and_then(|p| {
            let path = std::path::PathBuf::from(p.get_ref());
            if path.is_absolute() {
                Some(path)
            } else {
                self.error(p.span(), format!("access_log {:?} must be an absolute path", p.get_ref()));
                None
            }
        });
        let access_log_json = match raw.and_then(|r| r.access_log_format.as_ref()) {
            None => false,
            Some(f) if f.get_ref() == "combined" => false,
            Some(f) if f.get_ref() == "json" => true,
            Some(f) => {
                self.error(f.span(), format!("unknown access_log_format {:?}: supported are \"combined\", \"json\"", f.get_ref()));
                false
            }
        };
        L7Config {
            access_log,
            access_log_json,
            workers,
            connect_timeout,
            response_timeout,
            header_read_timeout,
            keepalive_timeout,
            request_timeout,
            drain_timeout,
            websocket_idle_timeout,
            park_after,
            max_header_size,
            max_headers,
            max_uri_len,
            max_body_size,
            forwarded,
        }
    }

    fn listeners(&mut self, raw: &[RawListener], pools: &[RawPool]) -> Vec<ListenerConfig> {
        let mut names = HashMap::new();
        let mut addresses: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for l in raw {
            self.name(&l.name, "listener", &mut names);
            let address = self.socket_addr(&l.address, "listener address");
            if let Some(first) = addresses.get(&address) {
                let line = self.line_of(first);
                self.error(l.address.span(), format!("duplicate listener address {address} (first defined at line {line})"));
            } else {
                addresses.insert(address, l.address.span());
            }
            if l.route.is_empty() {
                self.error(l.name.span(), format!("listener {:?} has no routes: add at least one [[listener.route]]", l.name.get_ref()));
            }
            let routes = l.route.iter().map(|r| self.route(r, pools)).collect();
            out.push(ListenerConfig { name: l.name.get_ref().clone(), address, routes });
        }
        out
    }

    fn route(&mut self, r: &RawRoute, pools: &[RawPool]) -> RouteConfig {
        let host = r.host.as_ref().map(|h| {
            let text = h.get_ref().to_ascii_lowercase();
            let name = text.strip_prefix("*.").unwrap_or(&text);
            let valid = !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty() && label.len() <= 63 && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                });
            if !valid {
                self.error(h.span(), format!("invalid host {:?}: a host name or *.suffix, without port", h.get_ref()));
            }
            text
        });
        let path = match &r.path {
            Some(p) if !p.get_ref().starts_with('/') || PathAndQuery::from_str(p.get_ref()).is_err() || p.get_ref().contains('?') => {
                self.error(p.span(), format!("invalid path {:?}: a path prefix starting with '/'", p.get_ref()));
                "/".to_owned()
            }
            Some(p) => p.get_ref().clone(),
            None => "/".to_owned(),
        };
        if !pools.iter().any(|p| p.name.get_ref() == r.pool.get_ref()) {
            self.error(r.pool.span(), format!("route names pool {:?}, which is not defined", r.pool.get_ref()));
        }
        RouteConfig {
            host,
            path,
            pool: r.pool.get_ref().clone(),
            preserve_host: r.preserve_host.unwrap_or(false),
            proxy_pass_reverse: r.proxy_pass_reverse.unwrap_or(false),
        }
    }

    fn health_check(&mut self, pool: &RawPool, vips: &[RawVip]) -> HealthCheckConfig {
        let Some(h) = &pool.health_check else {
            let port = self.check_port(pool, None, vips);
            return HealthCheckConfig {
                check: CheckKind::Tcp,
                port,
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                rise: DEFAULT_RISE,
                fall: DEFAULT_FALL,
            };
        };
        let check = match h.kind.get_ref() {
            CheckType::Tcp => {
                for (field, span) in [
                    ("method", h.method.as_ref().map(Spanned::span)),
                    ("path", h.path.as_ref().map(Spanned::span)),
                    ("expect_status", h.expect_status.as_ref().map(Spanned::span)),
                    ("host", h.host.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.error(
                            span,
                            format!("`{field}` applies only to type = \"http\" checks"),
                        );
                    }
                }
                CheckKind::Tcp
            }
            CheckType::Http => self.http_check(h),
        };
        let port = self.check_port(pool, Some(h), vips);
        let interval = self.duration(
            h.interval.as_ref(),
            DEFAULT_INTERVAL,
            MIN_INTERVAL..=MAX_INTERVAL,
            "interval",
        );
        // The upper bound is the interval, checked below with its own
        // message.
        let timeout = self.duration(
            h.timeout.as_ref(),
            DEFAULT_TIMEOUT,
            MIN_TIMEOUT..=Duration::MAX,
            "timeout",
        );
        // A check must end before the next one is due. Comparing with a
        // value already reported as invalid would only repeat that problem.
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                let (span, message) = match (&h.timeout, &h.interval) {
                    (Some(t), _) => (
                        t.span(),
                        format!(
                            "timeout {} is longer than the interval {}",
                            humantime::format_duration(timeout),
                            humantime::format_duration(interval)
                        ),
                    ),
                    (None, Some(i)) => (
                        i.span(),
                        format!(
                            "interval {} is shorter than the default timeout {}: set a timeout",
                            humantime::format_duration(interval),
                            humantime::format_duration(timeout)
                        ),
                    ),
                    (None, None) => {
                        unreachable!("the default timeout is within the default interval")
                    }
                };
                self.error(span, message);
            }
        }
        let rise = h.rise.as_ref().map_or(Some(DEFAULT_RISE), |r| {
            self.int_in(r, 1..=i64::from(MAX_RISE_FALL), "rise")
        });
        let fall = h.fall.as_ref().map_or(Some(DEFAULT_FALL), |f| {
            self.int_in(f, 1..=i64::from(MAX_RISE_FALL), "fall")
        });
        HealthCheckConfig {
            check,
            port,
            interval: interval.unwrap_or(Duration::ZERO),
            timeout: timeout.unwrap_or(Duration::ZERO),
            rise: rise.unwrap_or(0),
            fall: fall.unwrap_or(0),
        }
    }

    fn http_check(&mut self, h: &RawHealthCheck) -> CheckKind {
        let method = match &h.method {
            Some(m) => {
                if !is_token(m.get_ref()) {
                    self.error(
                        m.span(),
                        format!(
                            "invalid HTTP method {:?}: must be a token such as GET or HEAD",
                            m.get_ref()
                        ),
                    );
                }
                m.get_ref().clone()
            }
            None => "GET".to_owned(),
        };
        let path = match &h.path {
            Some(p) => {
                let valid =
                    p.get_ref().starts_with('/') && PathAndQuery::from_str(p.get_ref()).is_ok();
                if !valid {
                    self.error(
                        p.span(),
                        format!("invalid path {:?}: must start with '/' and contain no spaces or control characters", p.get_ref()),
                    );
                }
                p.get_ref().clone()
            }
            None => "/".to_owned(),
        };
        let expect_status = match &h.expect_status {
            Some(s) => self.int_in(s, 100..=599, "expect_status").unwrap_or(0),
            None => 200,
        };
        let host = h.host.as_ref().map(|host| {
            if host.get_ref().is_empty() || HeaderValue::from_str(host.get_ref()).is_err() {
                self.error(
                    host.span(),
                    format!(
                        "invalid host {:?}: not a valid Host header value",
                        host.get_ref()
                    ),
                );
            }
            host.get_ref().clone()
        });
        CheckKind::Http {
            method,
            path,
            expect_status,
            host,
        }
    }

    /// The configured port, else the one port every VIP using the pool
    /// listens on: a check on the served port tests what clients get.
    fn check_port(&mut self, pool: &RawPool, h: Option<&RawHealthCheck>, vips: &[RawVip]) -> u16 {
        if let Some(port) = h.and_then(|h| h.port.as_ref()) {
            return self.int_in(port, 1..=65535, "port").unwrap_or(0);
        }
        let name = pool.name.get_ref();
        let mut ports: Vec<(i64, &str)> = vips
            .iter()
            .filter(|v| v.pool.get_ref() == name)
            .map(|v| (*v.port.get_ref(), v.name.get_ref().as_str()))
            .collect();
        ports.sort_unstable();
        ports.dedup_by_key(|(port, _)| *port);
        let span = h.map_or_else(|| pool.name.span(), |h| h.kind.span());
        match ports.as_slice() {
            [(port, _)] => u16::try_from(*port).unwrap_or(0),
            [] => {
                // An L7-only pool: check the port the proxy connects to.
                let mut backend_ports: Vec<i64> = pool.backend.iter().filter_map(|b| b.port.as_ref().map(|p| *p.get_ref())).collect();
                backend_ports.sort_unstable();
                backend_ports.dedup();
                match (backend_ports.as_slice(), pool.backend.iter().all(|b| b.port.is_some())) {
                    ([port], true) => u16::try_from(*port).unwrap_or(0),
                    _ => {
                        self.error(span, format!("pool {name:?} is used by no VIP and its backends do not share one port, so its health check port is unknown: set health_check.port"));
                        0
                    }
                }
            }
            several => {
                let list: Vec<String> = several
                    .iter()
                    .map(|(port, vip)| format!("{port} ({vip})"))
                    .collect();
                self.error(
                    span,
                    format!(
                        "the VIPs using pool {name:?} listen on different ports, {}: set health_check.port",
                        list.join(", ")
                    ),
                );
                0
            }
        }
    }

    /// The configured duration, else `default`; `None` once a value that
    /// is not a duration within `bounds` has been reported.
    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        default: Duration,
        bounds: RangeInclusive<Duration>,
        what: &str,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        let d = match humantime::parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    value.span(),
                    format!(
                        "invalid {what} {:?}: {e} (write e.g. \"500ms\" or \"2s\")",
                        value.get_ref()
                    ),
                );
                return None;
            }
        };
        let problem = if d.is_zero() {
            format!("{what} must be longer than zero")
        } else if d < *bounds.start() {
            format!(
                "{what} {} is shorter than the minimum {}",
                humantime::format_duration(d),
                humantime::format_duration(*bounds.start())
            )
        } else if d > *bounds.end() {
            format!(
                "{what} {} is longer than the maximum {}",
                humantime::format_duration(d),
                humantime::format_duration(*bounds.end())
            )
        } else {
            return Some(d);
        };
        self.error(value.span(), problem);
        None
    }
}

fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2u64..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// RFC 9110 section 5.6.2 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why `address` cannot name one host, as the rest of a sentence about it;
/// `None` when it can.
fn not_one_host(address: IpAddr) -> Option<String> {
    let mapped = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        IpAddr::V4(_) => None,
    };
    let canonical = address.to_canonical();
    let kind = if canonical.is_unspecified() {
        "the unspecified address"
    } else if canonical.is_multicast() {
        "a multicast address"
    } else if canonical == IpAddr::V4(Ipv4Addr::BROADCAST) {
        "the IPv4 broadcast address"
    } else {
        return mapped.map(|v4| {
            format!(
                "is IPv4-mapped IPv6, which the datapath stores exactly as {v4}: \
                 write the IPv4 form \"{v4}\""
            )
        });
    };
    Some(match mapped {
        Some(v4) => format!("is {kind} {v4} in IPv4-mapped form: it cannot name one host"),
        None => format!("is {kind}: it cannot name one host"),
    })
}
